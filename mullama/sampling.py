"""``SamplerParams`` and the native llama.cpp sampler chain built from them."""

from __future__ import annotations

import collections
import ctypes
import math
from typing import Any, Final

import numpy as np

from . import _backend, _lib, _rules, _validate
from ._handle import NativeHandle

LLAMA_DEFAULT_SEED: Final = 0xFFFFFFFF  # llama.cpp draws a fresh random seed on every reset

# name -> (default, kind, lo, hi); checked on construction and on every assignment
# name -> (default, kind, lowest, highest), shared with Node (rules.json)
_FIELDS: Final = _rules.SAMPLER_FIELDS


class SamplerParams:
    """Sampling settings.  Every field is readable and writable, and validated.

    The chain applied, in llama.cpp's order: repetition penalties, top-k,
    typical, top-p, min-p, temperature, then a seeded random pick (or the
    most likely token when ``temperature`` is 0).  ``seed=0`` draws a new
    random seed for every generation; any other seed reproduces the output.
    """

    __slots__ = tuple(f"_{name}" for name in _FIELDS)

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    typical_p: float
    penalty_repeat: float
    penalty_freq: float
    penalty_present: float
    penalty_last_n: int
    seed: int

    def __init__(
        self,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        penalty_repeat: float = 1.1,
        penalty_freq: float = 0.0,
        penalty_present: float = 0.0,
        penalty_last_n: int = 64,
        seed: int = 0,
    ) -> None:
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.min_p = min_p
        self.typical_p = typical_p
        self.penalty_repeat = penalty_repeat
        self.penalty_freq = penalty_freq
        self.penalty_present = penalty_present
        self.penalty_last_n = penalty_last_n
        self.seed = seed

    def __setattr__(self, name: str, value: Any) -> None:
        spec = _FIELDS.get(name)
        if spec is None:
            raise AttributeError(f"SamplerParams has no field {name!r}; fields: {', '.join(_FIELDS)}")
        _, kind, lo, hi = spec
        if kind == "int":
            v: Any = _validate.integer(name, value, None if lo is None else int(lo), None if hi is None else int(hi))
        else:
            v = _validate.number(name, value, lo, hi)
            if name == "penalty_repeat" and v <= 0:
                raise ValueError(f"penalty_repeat must be > 0, got {v}")
            if name in ("top_p", "typical_p") and v <= 0:
                raise ValueError(f"{name} must be > 0 (1.0 disables it), got {v}")
        object.__setattr__(self, f"_{name}", v)

    def __getattr__(self, name: str) -> Any:
        if name in _FIELDS:
            return object.__getattribute__(self, f"_{name}")
        raise AttributeError(f"SamplerParams has no field {name!r}")

    # -- presets (values as the Node.js API documents them) ------------------------

    @staticmethod
    def greedy() -> SamplerParams:
        """Deterministic: always the most likely token."""
        return SamplerParams(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, penalty_repeat=1.0)

    @staticmethod
    def creative() -> SamplerParams:
        """High randomness."""
        return SamplerParams(temperature=1.2, top_k=100, top_p=0.95, min_p=0.0, penalty_repeat=1.0)

    @staticmethod
    def precise() -> SamplerParams:
        """Low randomness, mild repetition penalty."""
        return SamplerParams(temperature=0.3, top_k=20, top_p=0.8, min_p=0.05, penalty_repeat=1.1)

    # -- value semantics ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def key(self) -> tuple[Any, ...]:
        """A hashable snapshot, used to reuse an already-built native chain."""
        return tuple(getattr(self, name) for name in _FIELDS)

    def copy(self) -> SamplerParams:
        return SamplerParams(**self.to_dict())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SamplerParams):
            return NotImplemented
        return self.key() == other.key()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return "SamplerParams(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"

    @property
    def is_greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    @property
    def uses_penalties(self) -> bool:
        """Whether the repetition penalties change anything (a window and a non-neutral penalty)."""
        return self.penalty_last_n != 0 and (
            self.penalty_repeat != 1.0 or self.penalty_freq != 0.0 or self.penalty_present != 0.0)


SAMPLING_MODES: Final = ("auto", "cpu", "device")


def check_sampling(sampling: object) -> str:
    """Validate a ``sampling=`` argument: where sampler chains run."""
    if not isinstance(sampling, str):
        raise TypeError(f"sampling must be one of {', '.join(map(repr, SAMPLING_MODES))}, not {type(sampling).__name__}")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {', '.join(map(repr, SAMPLING_MODES))}, not {sampling!r}")
    return sampling


class SamplerChain(NativeHandle):
    """A native sampler chain for one parameter set (built once, reset per generation).

    The same chain runs on either path:

    * host: llama.cpp applies it to the logits copied out of the decode.  When
      ``top_k`` is set, only the ``top_k`` largest logits (and the tokens the
      penalties look at) are handed to it, which gives the same token as the
      whole vocabulary would (see :meth:`candidates`) at a cost that does not grow
      with the vocabulary;
    * device: attached to a sequence of the context (``llama_set_sampler``),
      its leading samplers run inside the decode graph, on the device that
      holds the output layer; the rest run on the host over the candidates the
      device part left (llama.cpp's split of an attached chain).  With
      ``top_k`` set and penalties that only lower logits (the usual case), the
      device part is one cut, the ``top_k`` largest logits plus one per token
      of the penalty window (:attr:`device_cut`), and the host finishes the
      whole chain on those few: exactly the host path's tokens, for one
      top-k kernel and a copy of a hundred values instead of the vocabulary.
      Otherwise the whole chain runs in the graph (llama.cpp's device samplers,
      drawing their own random numbers) up to the first sampler it lacks
      (typical-p), and only the chosen token comes back.  A chain can be
      attached once in its life (llama.cpp initialises its device state once),
      so the context that attaches it owns it from then on (:meth:`hand_over`).
    """

    def __init__(self, params: SamplerParams, n_vocab: int, n_ctx: int = 0, *, device: bool = False) -> None:
        L = _backend.lib()
        self.params_key = params.key()
        self.device = device
        # llama.cpp's penalties treat a negative window as "disabled"; -1 means the whole context here.
        last_n = params.penalty_last_n if params.penalty_last_n >= 0 else max(n_ctx, 1)
        self.uses_penalties = params.uses_penalties
        self.penalty_last_n = last_n
        self.argmax_only = False
        self.owned_by_context = 0  # the native pointer, once a context owns it (hand_over)
        # host path: how many of the largest logits the chain needs to see (0: all of them)
        self.top_k = params.top_k if 0 < params.top_k < n_vocab and not params.is_greedy else 0
        self.recent: collections.deque[int] = collections.deque(maxlen=last_n if self.uses_penalties else 0)
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if not chain:
            raise RuntimeError("could not create a sampler chain")
        self._attach(chain, L.llama_sampler_free)
        add = L.llama_sampler_chain_add

        def _add(sampler: int | None, what: str) -> None:
            if not sampler:
                raise RuntimeError(f"llama.cpp could not create the {what} sampler")
            add(chain, sampler)  # the chain owns it from here on

        def _add_penalties() -> None:
            if self.uses_penalties:
                _add(L.llama_sampler_init_penalties(n_vocab, last_n, params.penalty_repeat,
                                                    params.penalty_freq, params.penalty_present), "penalties")

        self.device_cut = 0
        if params.is_greedy:
            _add_penalties()
            _add(L.llama_sampler_init_greedy(), "greedy")
            # Nothing in the chain reshapes or remembers: picking the largest
            # logit directly gives the same token without the native sampler
            # building a candidate list of the whole vocabulary per token.
            self.argmax_only = not self.uses_penalties and not device
            return
        # Penalties only lower logits unless one of them is negative (or the
        # repeat penalty below 1): then a token outside the raw top
        # (top_k + window) cannot reach the top_k after them.
        lowers_only = params.penalty_repeat >= 1.0 and params.penalty_freq >= 0.0 and params.penalty_present >= 0.0
        cut = params.top_k + (min(last_n, n_ctx or last_n) if self.uses_penalties else 0)
        self.device_cut = cut if device and params.top_k > 0 and lowers_only and cut < n_vocab else 0
        if self.device_cut:
            _add(L.llama_sampler_init_top_k(self.device_cut), "top-k cut")
            # top-n-sigma with n = inf masks nothing (max - inf * std is -inf,
            # or NaN) and has no device version: the device part of the chain
            # ends here, the rest runs on the host
            _add(L.llama_sampler_init_top_n_sigma(math.inf), "host boundary")
        _add_penalties()
        if params.top_k > 0:
            _add(L.llama_sampler_init_top_k(params.top_k), "top-k")
        if params.typical_p < 1.0:
            _add(L.llama_sampler_init_typical(params.typical_p, 1), "typical")
        if params.top_p < 1.0:
            _add(L.llama_sampler_init_top_p(params.top_p, 1), "top-p")
        if params.min_p > 0.0:
            _add(L.llama_sampler_init_min_p(params.min_p, 1), "min-p")
        _add(L.llama_sampler_init_temp(params.temperature), "temperature")
        _add(L.llama_sampler_init_dist(params.seed or LLAMA_DEFAULT_SEED), "dist")

    def start(self, prompt: list[int]) -> None:
        """Reset for a new generation; the penalties see the prompt's last tokens first."""
        L = _backend.lib()
        smpl = self.ptr()
        L.llama_sampler_reset(smpl)
        self.recent.clear()
        if self.uses_penalties:
            window = prompt[-self.penalty_last_n:]
            self.recent.extend(window)
            for t in window:
                L.llama_sampler_accept(smpl, t)

    def accept(self, token: int) -> None:
        """Record a token the host path chose (the penalties' history, the random state)."""
        _backend.lib().held.llama_sampler_accept(self.ptr(), token)  # a few values: keeps the GIL
        if self.uses_penalties:
            self.recent.append(token)

    def candidates(self, logits: np.ndarray, out: np.ndarray) -> int:
        """Fill ``out`` with the candidates the host chain must see; returns how many.

        With top-k set, the chain keeps only the ``top_k`` best tokens after the
        penalties, and the penalties change only the logits of recent tokens:
        every token the chain can choose is then among the ``top_k + len(recent)``
        largest raw logits or among the recent tokens, so those alone give the
        chain exactly what the whole vocabulary would.  (Ties at the cut are
        all kept, so the chain's own top-k breaks them.)
        """
        recent = np.fromiter(set(self.recent), dtype=np.int32) if self.recent else None
        ids, kth = _largest(logits, self.top_k + (0 if recent is None else len(recent)))
        if recent is not None:
            # the recent tokens not already chosen are exactly those below the cut
            extra = recent[logits[recent] < kth]
            if len(extra):
                ids = np.concatenate((ids, extra))
                ids.sort()  # ascending ids, as in the whole vocabulary: ties break alike
        n = len(ids)
        out["id"][:n] = ids
        out["logit"][:n] = logits[ids]
        out["p"][:n] = 0.0
        return n

    def describe(self) -> list[str]:
        """The names of the samplers in the chain, in order.

        Once the chain is attached to a context, llama.cpp marks each name
        ``+`` (runs on the device) or ``-`` (its operations are missing there).
        """
        L = _backend.lib()
        chain = self.ptr()
        return [(L.llama_sampler_name(L.llama_sampler_chain_get(chain, i)) or b"").decode()
                for i in range(L.llama_sampler_chain_n(chain))]

    def hand_over(self) -> int:
        """Give the native chain to a context that attaches it; this object then only borrows it."""
        ptr = self.ptr()
        if self._finalizer is not None:
            self._finalizer.detach()
        self.owned_by_context = ptr
        return ptr

    def forget(self) -> None:
        """Mark closed without freeing: the owner (the context) frees the native chain."""
        self._pointer = None
        self._close_requested = True


def _largest(x: np.ndarray, m: int) -> tuple[np.ndarray, float]:
    """The ascending indices of the ``m`` largest values of ``x``, plus any tied with the smallest of them; and that value.

    Every ``s``-th value is a sample; its ``m``-th largest value ``t`` has at
    least ``m`` values of ``x`` at or above it (those of the sample), so the
    ``m`` largest are all among ``x >= t``: one pass over ``x``, then partial
    sorts of about ``sqrt(n m)`` values each, whatever the logits look like.
    """
    n = x.shape[0]
    if m >= n:
        return np.arange(n, dtype=np.int32), -np.inf
    stride = max(1, int((n / max(m, 1)) ** 0.5))
    sample = x[::stride]
    if len(sample) > m:
        t = np.partition(sample, len(sample) - m)[len(sample) - m]
        sel = np.flatnonzero(x >= t)
    else:
        sel = np.arange(n)
    vals = x[sel]
    kth = float(np.partition(vals, len(vals) - m)[len(vals) - m])
    chosen: np.ndarray = sel[vals >= kth].astype(np.int32)
    return chosen, kth


class GrammarState(NativeHandle):
    """llama.cpp's grammar sampler for one generation: which tokens may come next, advanced per token."""

    def __init__(self, model: Any, text: bytes, root: bytes) -> None:
        L = _backend.lib()
        model.ptr()
        _lib.take_errors()
        ptr = L.llama_sampler_init_grammar(model._vocab, text, root)
        if not ptr:
            raise ValueError(f"invalid grammar: {_lib.take_errors() or 'llama.cpp could not build it'}")
        self._attach(ptr, L.llama_sampler_free, parent=model)
        self._one = (_lib.llama_token_data * 1)()
        self._one_array = _lib.llama_token_data_array(self._one, 1, -1, False)
        self._vocab = model._vocab
        self._end_token = int(L.llama_vocab_eos(model._vocab))
        if self._end_token < 0:
            self._end_token = int(L.llama_vocab_eot(model._vocab))

    def allows(self, token: int) -> bool:
        """Whether ``token`` may come next."""
        one, arr = self._one, self._one_array
        one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
        arr.size, arr.selected, arr.sorted = 1, -1, False
        _backend.lib().llama_sampler_apply(self.ptr(), ctypes.byref(arr))
        return bool(one[0].logit != -math.inf)

    def accept(self, token: int) -> None:
        """Advance past ``token``, which must be allowed (llama.cpp aborts the process otherwise).

        End-of-generation tokens end the text rather than advance it.
        """
        L = _backend.lib()
        if not L.llama_vocab_is_eog(self._vocab, token):
            L.llama_sampler_accept(self.ptr(), token)

    def complete(self) -> bool:
        """Whether the text so far is a whole sentence of the grammar (it may end here)."""
        return self._end_token >= 0 and self.allows(self._end_token)
