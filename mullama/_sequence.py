"""The per-sequence token loop shared by :class:`Context` and the batched :class:`Engine`.

One sequence's generation is a generator: it samples a token from the logits
at the output index it is given, hands the token to the driver to decode, and
turns it into text (whole UTF-8 characters only, stop strings held back until
they cannot match) while that decode runs.  It yields

* ``int``: the sampled token, which the driver must decode.  The driver
  ``send``s back the output index of that token's logits (``-1`` for the last
  output of a single-sequence batch) as soon as the decode is under way: the
  logits are read only at the next sample, so on a GPU the text work below
  overlaps the decode;
* ``str``: a piece of text for the caller;
* ``None``: the text of the last token is done and the loop is ready to
  sample the next one; the driver resumes it when it wants that token (the
  Engine first lets every sequence of the step finish its text).

A stop string found in the text of a token that was already sent to the
decoder ends the loop with ``finish.overran`` set: the driver removes that
token from the cache, which then holds exactly what the generation kept.
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

from . import _backend, _lib

if TYPE_CHECKING:
    from .model import Model
    from .sampling import GrammarState, SamplerChain

Step = Union[str, int, None]

# Why a sequence ended (OpenAI's finish_reason where one exists).
FINISH_STOP = "stop"  # an end-of-generation token or a stop string
FINISH_LENGTH = "length"  # max_tokens


class Finish:
    """Filled in by the loop when it ends: why, and how many tokens it sampled."""

    __slots__ = ("reason", "n_sampled", "overran")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.n_sampled = 0
        self.overran = False  # the last token went to the decoder, then a stop string ended the text


class LogitRows:
    """Reads the logits of the last decode's outputs: a row as a NumPy view (no copy), its largest logit.

    This one serves one sequence: each read goes through
    ``llama_get_logits_ith``, which waits for the decode with the GIL released.
    """

    # True when the driver has waited for the decode: the samplers' quick
    # calls may then keep the GIL (``_lib.HELD_GIL``).
    synced = False

    def __init__(self, ctx: int, n_vocab: int) -> None:
        self._ctx = ctx
        self.n_vocab = n_vocab
        self._get: Callable[[int, int], int] = _backend.lib().llama_get_logits_ith
        self._views: dict[int, np.ndarray] = {}

    def view(self, idx: int) -> np.ndarray:
        """The logits at output ``idx``."""
        addr = self._get(self._ctx, idx)
        view = self._views.get(addr)
        if view is None:
            view = self._views[addr] = _floats(addr, (self.n_vocab,))
        return view

    def argmax(self, idx: int) -> int:
        """The first largest logit at output ``idx``: exactly llama.cpp's greedy token."""
        return int(self.view(idx).argmax())


class StepRows(LogitRows):
    """The rows of one batched step, read after the driver's ``llama_synchronize``.

    ``new_step`` makes one ``llama_get_logits`` call (each call waits for the
    device again, a driver call per row otherwise): llama.cpp stores the rows
    of a step's outputs side by side, in the order of their tokens in the
    batch.  It then takes the argmax of every greedy row at once, in one
    NumPy call over the block of rows that holds them, and keeps them:
    ``argmax`` of those rows stays valid after the next decode has been
    queued, when the logits themselves may already be overwritten (the Engine
    resumes a greedy sequence's loop only then).  Its reads keep the GIL
    (``_lib.HELD_GIL``): they cannot wait any more.  (Splitting the block
    between two threads measured no faster on a 16-core host.)
    """

    synced = True

    def __init__(self, ctx: int, n_vocab: int) -> None:
        super().__init__(ctx, n_vocab)
        self._all = _backend.lib().held.llama_get_logits
        self._rows: dict[int, int] = {}  # an output's batch index -> its row
        self._logits = np.empty((0, n_vocab), dtype=np.float32)
        self._read = False  # whether ``_logits`` maps this step's rows
        self._best: dict[int, int] = {}

    def new_step(self, outputs: list[int], greedy: list[int]) -> None:
        """The step just decoded: the batch indices of its ``outputs`` (ascending), and those
        of them whose samplers will ask for ``argmax``, read now."""
        self._rows = {idx: r for r, idx in enumerate(outputs)}
        self._best = {}
        self._read = False
        if not greedy:
            return  # a step whose chains all ran on the device may need no row at all
        logits = self._step_logits()
        rows = [self._rows[i] for i in greedy]
        lo, hi = min(rows), max(rows) + 1
        if hi - lo > 2 * len(rows):  # scattered among many other rows: read them one by one
            self._best = {i: int(logits[r].argmax()) for i, r in zip(greedy, rows)}
        else:
            best = logits[lo:hi].argmax(axis=1).tolist()
            self._best = {i: best[r - lo] for i, r in zip(greedy, rows)}

    def _step_logits(self) -> np.ndarray:
        """Every output row of the step, from one ``llama_get_logits`` call."""
        if not self._read:
            addr = self._all(self._ctx)
            if not addr:
                raise RuntimeError(f"llama.cpp returned no logits for this step: {_lib.take_errors() or 'no outputs'}")
            if addr != self._logits.ctypes.data or len(self._logits) < len(self._rows):
                # llama.cpp keeps its output buffer until a step needs more rows
                self._logits = _floats(addr, (len(self._rows), self.n_vocab))
            self._read = True
        return self._logits

    def view(self, idx: int) -> np.ndarray:
        row: np.ndarray = self._step_logits()[self._rows[idx]]
        return row

    def argmax(self, idx: int) -> int:
        best = self._best.get(idx)
        return int(self.view(idx).argmax()) if best is None else best


def _floats(addr: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.ctypeslib.as_array(ctypes.cast(addr, ctypes.POINTER(ctypes.c_float)), shape=shape)


def sampler(ctx: int, chain: SamplerChain, rows: LogitRows,
            grammar: GrammarState | None = None) -> Callable[[int], int]:
    """``sample(idx)``: the chain's token from the logits ``rows`` reads at output ``idx`` (within ``grammar``)."""
    L = _backend.lib()
    if grammar is not None:
        return _grammar_sampler(chain, rows, grammar)
    if chain.argmax_only:
        # Greedy without penalties: the first largest logit, exactly what
        # llama.cpp's greedy sampler returns, read in place (no copy, no
        # candidate array of the whole vocabulary).
        return rows.argmax
    if chain.top_k and not chain.device:
        return _top_k_sampler(chain, rows)
    # On the device path the chain ran inside the decode and this returns its
    # token (finishing on the host whatever part could not run there).
    smpl = chain.ptr()
    native = L.llama_sampler_sample  # the whole vocabulary (top_k 0 or above it)
    return lambda idx: int(native(smpl, ctx, idx))


def _top_k_sampler(chain: SamplerChain, rows: LogitRows) -> Callable[[int], int]:
    """The host chain over the few candidates that can survive its top-k (:meth:`SamplerChain.candidates`)."""
    cand = np.zeros(rows.n_vocab, dtype=_TOKEN_DATA)
    arr = _lib.llama_token_data_array(cand.ctypes.data_as(ctypes.POINTER(_lib.llama_token_data)), 0, -1, False)
    arr_ref = ctypes.byref(arr)
    L = _backend.lib()
    apply = (L.held if rows.synced else L).llama_sampler_apply  # over ~100 candidates: microseconds
    smpl = chain.ptr()
    ids = cand["id"]
    view = rows.view

    def sample(idx: int) -> int:
        arr.size = chain.candidates(view(idx), cand)
        arr.selected, arr.sorted = -1, False
        apply(smpl, arr_ref)
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError("the sampler chain selected no token")
        tok = int(ids[arr.selected])
        chain.accept(tok)
        return tok
    return sample


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def _grammar_sampler(chain: SamplerChain, rows: LogitRows, grammar: GrammarState) -> Callable[[int], int]:
    """Sampling within a grammar, as llama.cpp's own samplers do it.

    The chain first picks from all tokens; when the grammar allows that
    token it is kept (for greedy chains this is exactly the best allowed
    token).  Only otherwise are the whole vocabulary's candidates masked by
    the grammar and the chain applied again, so that the costly full check
    runs only for the tokens where the model strays.
    """
    L = _backend.lib()
    n_vocab = rows.n_vocab
    logits = rows.view
    cand = np.zeros(n_vocab, dtype=_TOKEN_DATA)
    ids = np.arange(n_vocab, dtype=np.int32)
    arr = _lib.llama_token_data_array(cand.ctypes.data_as(ctypes.POINTER(_lib.llama_token_data)), n_vocab, -1, False)
    arr_ref = ctypes.byref(arr)
    apply = L.llama_sampler_apply
    smpl = chain.ptr()
    gsmpl = grammar.ptr()
    greedy = chain.argmax_only

    def fill(view: np.ndarray) -> None:
        cand["id"] = ids
        cand["logit"] = view
        cand["p"] = 0.0
        arr.data = cand.ctypes.data_as(ctypes.POINTER(_lib.llama_token_data))
        arr.size, arr.selected, arr.sorted = n_vocab, -1, False

    def chosen() -> int:
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError("the sampler chain selected no token")
        return int(arr.data[arr.selected].id)

    def sample(idx: int) -> int:
        view = logits(idx)
        if greedy:
            tok = rows.argmax(idx)
        else:
            fill(view)
            apply(smpl, arr_ref)
            tok = chosen()
        if not grammar.allows(tok):
            fill(view)
            apply(gsmpl, arr_ref)
            masked = cand["logit"][:arr.size]
            best = int(masked.argmax())
            if masked[best] == -np.inf:
                raise RuntimeError("the grammar allows no token here (is it satisfiable with this vocabulary?)")
            if greedy:
                tok = int(cand["id"][best])
            else:
                apply(smpl, arr_ref)
                tok = chosen()
        if not greedy:
            chain.accept(tok)  # the penalties' history, as llama_sampler_sample does
        grammar.accept(tok)
        return tok
    return sample


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
        last = i + 1 == max_tokens
        if not last:
            idx = yield tok  # decoding from here on; its text is made meanwhile
        text = utf8.decode(piece)
        if stops:
            text, hit = apply_stops(held + text, stops)
            text, held = (text, "") if hit else hold_back(text, stops)
            if text:
                yield text
            if hit:
                finish.reason = FINISH_STOP
                finish.overran = not last
                return
        elif text:
            yield text
        if last:
            break
        yield None  # ready to sample
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
