"""The per-sequence token loop shared by :class:`Context` and the batched :class:`Engine`.

One sequence's generation is a generator: it samples a token from the logits
at the output index it is given, turns it into text (whole UTF-8 characters
only, stop strings held back until they cannot match), and yields

* ``str``: a piece of text for the caller, then, unless it has finished,
* ``int``: the sampled token, which the driver must decode.  The driver
  ``send``s back the output index of that token's logits once it is decoded
  (``-1`` for the last output of a single-sequence batch).

Context drives one sequence with one ``llama_decode`` per token; the Engine
packs the tokens of every running sequence into one ``llama_decode`` per
step.  Sampling, end-of-generation, detokenizing, UTF-8 and stop strings
exist only here.
"""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Union

import numpy as np

from . import _backend

if TYPE_CHECKING:
    from .model import Model
    from .sampling import SamplerChain

Step = Union[str, int]

# Why a sequence ended (OpenAI's finish_reason where one exists).
FINISH_STOP = "stop"  # an end-of-generation token or a stop string
FINISH_LENGTH = "length"  # max_tokens


class Finish:
    """Filled in by the loop when it ends: why, and how many tokens it sampled."""

    __slots__ = ("reason", "n_sampled")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.n_sampled = 0


def sampler(ctx: int, chain: SamplerChain, n_vocab: int) -> Callable[[int], int]:
    """``sample(idx)``: the chain's token from the logits at output ``idx``."""
    L = _backend.lib()
    if not chain.argmax_only:
        smpl = chain.ptr()
        native = L.llama_sampler_sample
        return lambda idx: int(native(smpl, ctx, idx))
    # Greedy without penalties: the first largest logit, exactly what
    # llama.cpp's greedy sampler returns, read in place (no copy, no
    # candidate array of the whole vocabulary).
    get_logits = L.llama_get_logits_ith
    views: dict[int, np.ndarray] = {}

    def argmax(idx: int) -> int:
        addr = get_logits(ctx, idx)
        view = views.get(addr)
        if view is None:
            view = views[addr] = np.ctypeslib.as_array(ctypes.cast(addr, ctypes.POINTER(ctypes.c_float)),
                                                        shape=(n_vocab,))
        return int(view.argmax())
    return argmax


def token_loop(model: Model, sample: Callable[[int], int], first_idx: int, max_tokens: int,
               stops: tuple[str, ...], ignore_eos: bool, finish: Finish) -> Generator[Step, int, None]:
    """One sequence's generation, from the logits of its prompt at ``first_idx``; see the module doc."""
    piece_of = model._piece_or_eog  # bytes of a token, or None at end-of-generation tokens (cached)
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    held = ""  # text withheld because it may be the start of a stop string
    idx = first_idx
    finish.reason = FINISH_LENGTH
    for i in range(max_tokens):
        tok = sample(idx)
        finish.n_sampled = i + 1
        piece = piece_of(tok)
        if piece is None:
            if not ignore_eos:
                finish.reason = FINISH_STOP
                break
            piece = model._piece(tok, False)
        text = utf8.decode(piece)
        if stops:
            text, hit = apply_stops(held + text, stops)
            text, held = (text, "") if hit else hold_back(text, stops)
            if text:
                yield text
            if hit:
                finish.reason = FINISH_STOP
                return
        elif text:
            yield text
        if i + 1 == max_tokens:
            break
        idx = yield tok
    tail = held + utf8.decode(b"", final=True)
    if tail:
        yield tail


def check_stops(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise TypeError("stop must be a list of str")
    if any(not s for s in stop):
        raise ValueError("stop strings must not be empty")
    return tuple(stop)


def apply_stops(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def hold_back(text: str, stops: tuple[str, ...]) -> tuple[str, str]:
    """Split off the longest tail of ``text`` that could begin a stop string."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), keep, -1):
            if s.startswith(text[-k:]):
                keep = k
                break
    return (text[:-keep], text[-keep:]) if keep else (text, "")
