"""Argument checks shared by the public classes: wrong type -> TypeError, bad value -> ValueError."""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    v = operator.index(value)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def token_list(name: str, tokens: Any, n_vocab: int) -> list[int]:
    """A sequence of ints, each a valid token id (checked here, so C never sees a bad id)."""
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence) and not hasattr(tokens, "tolist"):
        raise TypeError(f"{name} must be a list of int token ids, not {type(tokens).__name__}")
    if hasattr(tokens, "tolist"):  # numpy arrays
        tokens = tokens.tolist()
    out = list(tokens)
    for t in out:
        if isinstance(t, bool) or not isinstance(t, int):
            if hasattr(t, "__index__") and not isinstance(t, bool):
                break  # numpy scalar types: convert below
            raise TypeError(f"{name} must contain ints, found {type(t).__name__}")
    else:
        if out and (min(out) < 0 or max(out) >= n_vocab):
            bad = next(t for t in out if t < 0 or t >= n_vocab)
            raise ValueError(f"token id {bad} in {name} is outside the vocabulary (0..{n_vocab - 1})")
        return out
    return token_list(name, [operator.index(t) for t in out], n_vocab)
