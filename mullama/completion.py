"""What a completion returns beside its text: the tokens, why it ended, and their probabilities.

The log-probabilities are the model's own: a log-softmax of the raw logits
at each position, before any sampler (temperature, top-k, penalties, a
grammar) changes them.  That is what OpenAI reports, and what makes them
comparable between requests that sample differently.  The chosen token's
value is its entry in that full distribution, whichever sampler chose it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .model import Model

MAX_LOGPROBS = 20  # alternatives per token, as OpenAI allows


@dataclass(frozen=True)
class TopLogprob:
    """One of the most probable tokens at a position."""

    token: int
    piece: str  # its text (special tokens rendered); a token that is part of a UTF-8 character shows U+FFFD
    bytes: bytes  # its exact bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability, and the ``k`` most probable tokens at its position."""

    token: int
    piece: str
    bytes: bytes
    logprob: float
    top: tuple[TopLogprob, ...]


@dataclass(frozen=True)
class Completion:
    """A whole generation: ``text``, the ``tokens`` it sampled, and why it ended.

    ``finish_reason`` is "stop" (an end-of-generation token or a stop
    string) or "length" (``max_tokens``).  ``tokens`` leaves out an
    end-of-generation token that ended the text; a token whose text
    completed a stop string is in it.  ``logprobs`` has one entry per token
    of ``tokens`` when asked for, else None.
    """

    text: str
    tokens: list[int]
    finish_reason: str
    logprobs: list[TokenLogprob] | None


@dataclass(frozen=True)
class CompletionChunk:
    """One step of a streamed completion: the text released with one token, and that token.

    ``text`` may be empty (a token that ends inside a UTF-8 character, or
    text held back while it may begin a stop string) or hold text of
    earlier tokens released now.  The last chunk has ``finish_reason`` set;
    it may carry no token.  Joining every chunk's ``text`` gives
    :attr:`Completion.text`; concatenating ``tokens`` gives its tokens.
    """

    text: str
    tokens: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None


def check_logprobs(value: object) -> int:
    """``logprobs``: how many alternatives to report per token (0: no log-probabilities)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"logprobs must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_LOGPROBS:
        raise ValueError(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {value}")
    return value


class LogprobReader:
    """Turns a row of raw logits and the token chosen from it into a :class:`TokenLogprob`."""

    def __init__(self, model: Model, k: int) -> None:
        self._model = model
        self.k = k
        self._pieces: dict[int, tuple[str, bytes]] = {}

    def _piece(self, token: int) -> tuple[str, bytes]:
        got = self._pieces.get(token)
        if got is None:
            raw = self._model._piece(token, True)
            got = self._pieces[token] = (raw.decode("utf-8", "replace"), raw)
        return got

    def read(self, logits: np.ndarray, token: int) -> TokenLogprob:
        """The log-softmax of ``logits`` at ``token`` and at the ``k`` largest (ties: lowest id first)."""
        m = float(logits.max())
        # exp in float32 (vectorised), summed in float64: within 1e-6 of a float64 log-softmax
        lse = m + float(np.log(np.exp(logits - np.float32(m)).sum(dtype=np.float64)))
        k = self.k
        if k:
            n = len(logits)
            part = np.argpartition(logits, n - k)[n - k:] if k < n else np.arange(n)
            best = part[np.lexsort((part, -logits[part]))]
            top = tuple(TopLogprob(int(t), *self._piece(int(t)), float(logits[t]) - lse) for t in best)
        else:
            top = ()
        piece, raw = self._piece(token)
        return TokenLogprob(token, piece, raw, float(logits[token]) - lse, top)


class Recorder:
    """Wraps a sequence's ``sample(idx)``: keeps each sampled token and, when asked, its log-probabilities.

    At sampling it copies the row the token was sampled from (the next
    decode overwrites it); the log-softmax and the top ``k`` are computed
    by :meth:`settle`, which the drivers call once that decode is under
    way, so that on a GPU this host work overlaps the device's.  An
    end-of-generation token that ends the text (``eog_ends``) is not
    recorded: it is not part of it.
    """

    def __init__(self, model: Model, k: int | None, rows_view: Callable[[int], np.ndarray], eog_ends: bool) -> None:
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if k is not None else None
        self._reader = LogprobReader(model, k) if k is not None else None
        self._view = rows_view
        self._ends = model._piece_or_eog if eog_ends else None
        self._rows: list[tuple[np.ndarray, int]] = []  # sampled, not yet settled

    def wrap(self, sample: Callable[[int], int]) -> Callable[[int], int]:
        tokens, view, ends, rows = self.tokens, self._view, self._ends, self._rows
        keep_rows = self._reader is not None

        def record(idx: int) -> int:
            tok = sample(idx)
            if ends is not None and ends(tok) is None:
                return tok
            tokens.append(tok)
            if keep_rows:
                rows.append((view(idx).copy(), tok))
            return tok
        return record

    def settle(self, keep_last: bool = False) -> None:
        """Make the entries of the tokens sampled so far (but the last, with ``keep_last``)."""
        rows, reader, out = self._rows, self._reader, self.logprobs
        n = len(rows) - (1 if keep_last and rows else 0)
        if reader is None or out is None or n <= 0:
            return
        out += [reader.read(row, tok) for row, tok in rows[:n]]
        del rows[:n]


__all__ = ["Completion", "CompletionChunk", "MAX_LOGPROBS", "TokenLogprob", "TopLogprob"]
