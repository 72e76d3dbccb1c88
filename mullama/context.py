"""``Context``: a KV cache over a Model, and text generation with the native sampler chain."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import weakref
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from typing import Any, cast

import numpy as np

from . import _backend, _lib, _rules, _sequence, _state, _validate, kv_cache
from ._batch import Batch
from ._cpus import usable_cpus
from ._handle import NativeHandle, hold, let_go
from .completion import Completion, CompletionChunk, Recorder, TokenLogprob, check_logprobs
from .grammar import Grammar, GrammarIncompleteError, check_grammar
from .lora import LoraAdapter, LoraSet, check_loras
from .lora import apply as apply_loras
from .model import Model
from .multimodal import MediaPrompt, MediaSource, Projector, media_prompt
from .sampling import SamplerChain, SamplerParams, check_sampling
from .speculative import Draft, Drafter, check_draft

MAX_N_CTX = _rules.N_CTX_MAX
_POOLING = {"none": _lib.LLAMA_POOLING_TYPE_NONE, "mean": _lib.LLAMA_POOLING_TYPE_MEAN,
            "cls": _lib.LLAMA_POOLING_TYPE_CLS, "last": _lib.LLAMA_POOLING_TYPE_LAST}
MAX_N_BATCH = _rules.N_BATCH_MAX


class ContextFullError(RuntimeError, ValueError):
    """The tokens do not fit in the context window (both a RuntimeError and a ValueError)."""


class GenerationCancelled(RuntimeError):
    """Generation was stopped through :meth:`Context.cancel` or a ``cancel`` event."""


class _Cancel:
    """Cancellation state shared with the native abort callback (holds no Context)."""

    __slots__ = ("requested", "interrupted", "event")

    def __init__(self) -> None:
        self.requested = False
        self.interrupted = False
        self.event: threading.Event | None = None

    def should_stop(self) -> bool:
        return self.requested or self.interrupted or (self.event is not None and self.event.is_set())


def _make_abort_callback(state: _Cancel) -> Any:
    def _abort(_data: Any) -> bool:
        return state.should_stop()
    return _lib.ggml_abort_callback(_abort)


class Context(NativeHandle):
    """An inference context: a KV cache of ``n_ctx`` tokens over a :class:`Model`.

    It remembers which tokens its cache holds, so a prompt that starts with
    them (the next turn of a chat) evaluates only what is new.  Use one
    Context from one thread at a time; a second thread gets a RuntimeError.
    """

    def __init__(
        self,
        model: Model,
        n_ctx: int = 0,
        n_batch: int = 2048,
        n_threads: int = 0,
        embeddings: bool = False,
        *,
        n_ubatch: int = 0,
        n_seq_max: int = 1,
        pooling: str | None = None,
        kv_unified: bool | None = None,
        sampling: str = "auto",
        type_k: str = "f16",
        type_v: str = "f16",
        flash_attn: bool | str = "auto",
        draft: Draft | None = None,
        projector: Projector | None = None,
        _all_outputs: bool = False,
    ) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a mullama.Model, not {type(model).__name__}")
        model.ptr()
        n_ctx = _validate.integer("n_ctx", n_ctx, 0, MAX_N_CTX)
        n_batch = _validate.integer("n_batch", n_batch, 1, MAX_N_BATCH)
        n_threads = _validate.integer("n_threads", n_threads, 0, _rules.N_THREADS_MAX)
        embeddings = _validate.boolean("embeddings", embeddings)
        sampling = check_sampling(sampling)
        type_k = kv_cache.check_type("type_k", type_k)
        type_v = kv_cache.check_type("type_v", type_v)
        flash_attn = kv_cache.check_flash_attn(flash_attn)
        kv_cache.check_combination(type_v, flash_attn)
        draft = check_draft(draft)
        if draft is not None and sampling == "device":
            raise ValueError("sampling='device' cannot verify drafts: each drafted token is checked against a "
                             "token sampled on the host (use sampling='auto', which samples on the host here)")
        if draft is not None and embeddings:
            raise ValueError("draft= is for generation; an embeddings context generates nothing")
        if projector is not None:
            if not isinstance(projector, Projector):
                raise TypeError(f"projector must be a mullama.Projector, not {type(projector).__name__}")
            if projector.model is not model:
                raise ValueError("the projector was loaded for another Model; load it for this one")
            projector.ptr()
            if embeddings:
                raise ValueError("projector= is for generation; an embeddings context takes no media")
        n_ubatch = _validate.integer("n_ubatch", n_ubatch, 0, MAX_N_BATCH)
        L = _backend.lib()
        n_seq_max = _validate.integer("n_seq_max", n_seq_max, 1, int(L.llama_max_parallel_sequences()))
        train = model.n_ctx_train
        # With several sequences, n_ctx is the unified cache they share; each stays within n_ctx_train.
        if train > 0 and n_ctx > train * n_seq_max:
            raise ValueError(f"n_ctx={n_ctx} exceeds the model's training context n_ctx_train={train}"
                             + (f" times n_seq_max={n_seq_max}" if n_seq_max > 1 else "")
                             + f"; reduce n_ctx to at most {train * n_seq_max}")
        self._model = model
        self._embeddings = embeddings
        self._is_encoder = bool(L.llama_model_has_encoder(model.ptr()) and not L.llama_model_has_decoder(model.ptr()))
        threads = n_threads or usable_cpus()
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        # Non-causal (embedding) models need a whole sequence in one micro-batch.
        cp.n_ubatch = n_ubatch or (n_batch if embeddings else min(n_batch, 512))
        cp.n_seq_max = n_seq_max
        # By default one cache shared by all sequences (not n_ctx / n_seq_max
        # each), so that packed sequences of any length fit.
        cp.kv_unified = n_seq_max > 1 if kv_unified is None else _validate.boolean("kv_unified", kv_unified)
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.type_k = kv_cache.KV_TYPES[type_k][0]
        cp.type_v = kv_cache.KV_TYPES[type_v][0]
        cp.flash_attn_type = kv_cache.FLASH_ATTN[flash_attn]
        cp.embeddings = embeddings
        if embeddings or _all_outputs or draft is not None:
            # every token's logits: for mullama.perplexity (_all_outputs), and for checking drafts
            cp.n_outputs_max_per_seq = 0
        else:
            # One output per sequence per decode is all generation asks for, and
            # what llama.cpp's device penalties sampler requires.
            cp.n_outputs_max_per_seq = 1
        if pooling is not None:
            if pooling not in _POOLING:
                raise ValueError(f"pooling must be one of {', '.join(_POOLING)}, not {pooling!r}")
            cp.pooling_type = _POOLING[pooling]
        model._check_servers()
        _lib.take_errors()
        ptr = L.llama_init_from_model(model.ptr(), cp)
        if not ptr:
            why = _lib.take_errors() or "llama.cpp could not create it (out of memory?)"
            raise RuntimeError(f"Failed to create context (n_ctx={n_ctx or train}, n_batch={n_batch}): {why}")
        # Sampler chains attached to sequences (device sampling) must outlive
        # the context: its finalizer frees them after it (the list holds raw
        # pointers, not this object).
        self._device_chains: list[int] = []
        # The LoRA adapters the context refers to: held until it is freed (or they are replaced); and
        # its projector, held until it is freed.
        self._held_loras: list[LoraAdapter] = []
        self._held_others: list[NativeHandle] = []
        self._attach(ptr, _free_context_then(model._free_guard(L.llama_free), self._device_chains, L.llama_sampler_free,
                                             self._held_loras, self._held_others),
                     parent=model)
        self._loras: LoraSet = ()  # the adapters applied from the next decode on
        self._kv_loras: LoraSet | None = ()  # those the cached tokens were decoded with (None: a mix)
        self._sampling = sampling
        self._attached: dict[int, SamplerChain] = {}  # sequence -> its device chain
        self._mem = L.llama_get_memory(ptr)
        self._n_ctx = int(L.llama_n_ctx(ptr))
        self._n_batch = int(L.llama_n_batch(ptr))
        self._n_threads = threads
        self._type_k, self._type_v = type_k, type_v
        self._batch = Batch(self._n_batch)
        self._tokens: list[int] = []  # what the KV cache holds, in order (sequence 0): one id per position
        # Media in the cache that take more cells than positions (M-RoPE models: an image of n_tokens
        # embeddings spans n_pos < n_tokens positions): (first position, extra cells) each.
        self._media_cells: list[tuple[int, int]] = []
        self._last_prompt_evaluated = 0
        self._chains: dict[tuple[Any, ...], SamplerChain] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self._cancel = _Cancel()
        self._abort_cb = _make_abort_callback(self._cancel)
        self._owner: int | None = None
        self._owner_lock = threading.Lock()
        self._active_stream: weakref.ref[Generator[Any, None, None]] | None = None
        # what drafted tokens did (see mullama.speculative): drafted, accepted, and the target's decodes
        self.draft_stats = {"drafted": 0, "accepted": 0, "decodes": 0}
        self._drafter: Drafter | None = None
        self._projector = projector
        if projector is not None:  # closed while this context lives, it is freed after it
            hold(projector)
            self._held_others.append(projector)
        if draft is not None:
            self._drafter = draft._start(self, n_seq_max)

    # -- properties --------------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._model

    @property
    def n_ctx(self) -> int:
        """Context size in tokens."""
        self.ptr()
        return self._n_ctx

    @property
    def type_k(self) -> str:
        """The type the KV cache stores keys as."""
        return self._type_k

    @property
    def type_v(self) -> str:
        """The type the KV cache stores values as."""
        return self._type_v

    @property
    def kv_bytes(self) -> int:
        """The memory the KV cache takes: ``n_ctx`` cells of every layer's keys and values (0 without one)."""
        if not self._mem:
            return 0
        m = self._model
        L = _backend.lib()
        head_k = int(m.meta(f"{m.architecture}.attention.key_length") or 0) or m.n_embd // max(m.n_head, 1)
        head_v = int(m.meta(f"{m.architecture}.attention.value_length") or 0) or head_k
        n_kv = int(L.llama_model_n_head_kv(m.ptr()))
        return kv_cache.cache_bytes(self._n_ctx, m.n_layer, n_kv * head_k, n_kv * head_v, self._type_k, self._type_v)

    @property
    def n_batch(self) -> int:
        """Most tokens evaluated in one ``llama_decode`` call."""
        self.ptr()
        return self._n_batch

    @property
    def n_threads(self) -> int:
        self.ptr()
        return self._n_threads

    @property
    def tokens(self) -> list[int]:
        """The tokens the KV cache holds, in order."""
        self.ptr()
        return list(self._tokens)

    @property
    def n_past(self) -> int:
        """How many tokens the KV cache holds."""
        self.ptr()
        return len(self._tokens)

    @property
    def sampling(self) -> str:
        """Where sampler chains run: "auto", "cpu" (host) or "device" (inside the decode graph)."""
        return self._sampling

    @property
    def last_prompt_evaluated(self) -> int:
        """Prompt tokens actually evaluated by the last generation (the rest came from the cache)."""
        return self._last_prompt_evaluated

    # -- thread ownership ------------------------------------------------------------

    def _acquire(self) -> int:
        ptr = self.ptr()
        self._model.ptr()
        self._model._check_servers()  # a dead RPC server: an error here, not an abort in ggml
        me = threading.get_ident()
        with self._owner_lock:
            if self._owner is not None and self._owner != me:
                raise RuntimeError("this Context is in use by another thread; use one Context per thread")
            stream = self._active_stream() if self._active_stream is not None else None
        if stream is not None and not getattr(stream, "gi_running", False):
            stream.close()  # a stream abandoned on this thread: finish it before starting anew
        with self._owner_lock:  # check and take ownership in one step
            if self._owner is not None and self._owner != me:
                raise RuntimeError("this Context is in use by another thread; use one Context per thread")
            self._owner = me
        self._cancel.requested = False
        self._cancel.interrupted = False
        return ptr

    def _release(self) -> None:
        with self._owner_lock:
            self._owner = None
        self._cancel.event = None

    def cancel(self) -> None:
        """Ask a running generation or prompt evaluation (in another thread) to stop.

        The running call raises :class:`GenerationCancelled` within about one
        token or one batch, and the Context stays usable.
        """
        self._cancel.requested = True

    # -- KV cache ------------------------------------------------------------------

    @property
    def draft(self) -> Draft | None:
        """The drafter this context was made with (``draft=``), or None."""
        return None if self._drafter is None else self._drafter.spec

    def close(self) -> None:
        if self._drafter is not None:
            self._drafter.close()
        super().close()

    def clear_cache(self) -> None:
        """Empty the KV cache (start of a new, unrelated conversation).

        A stream left suspended on this thread is finished first; from another
        thread while this Context is busy it raises RuntimeError.
        """
        self._acquire()
        try:
            self._clear()
        finally:
            self._release()

    @property
    def loras(self) -> dict[LoraAdapter, float]:
        """The LoRA adapters this context applies, with their scales."""
        return dict(self._loras)

    def set_loras(self, loras: dict[LoraAdapter, float] | None) -> None:
        """Apply these LoRA adapters (``{adapter: scale}``; None or ``{}``: none) from the next token on.

        Scale 0 leaves an adapter out.  Tokens already in the cache keep
        what they were computed with; a later prompt that starts with them
        is evaluated again when the adapters differ, so its output is what
        these adapters give.
        """
        loras_set = check_loras(self._model, loras)
        self._acquire()
        try:
            self._set_loras(loras_set)
        finally:
            self._release()

    def _set_loras(self, loras: LoraSet) -> None:
        if loras == self._loras:
            return
        apply_loras(self.ptr(), loras)
        old = list(self._held_loras)
        self._held_loras[:] = [a for a, _ in loras]
        for a in self._held_loras:
            hold(a)
        for a in old:  # llama.cpp refers to them no more
            let_go(a)
        self._loras = loras

    def _clear(self) -> None:
        if self._mem:
            _backend.lib().llama_memory_clear(self._mem, True)
        self._tokens.clear()  # in place: a running loop holds this list
        self._media_cells.clear()

    def _cells(self) -> int:
        """KV cells the cache holds: a position each, and the extra cells of M-RoPE media."""
        return len(self._tokens) + sum(extra for _, extra in self._media_cells)

    def _truncate_cache(self, keep: int) -> int:
        """Keep the first ``keep`` cached tokens, drop the rest; returns how many were kept."""
        if keep >= len(self._tokens):
            return len(self._tokens)
        L = _backend.lib()
        if self._mem and keep > 0 and L.llama_memory_seq_rm(self._mem, 0, keep, -1):
            del self._tokens[keep:]
            self._media_cells[:] = [m for m in self._media_cells if m[0] < keep]
            return keep
        self._clear()  # partial removal unsupported (e.g. recurrent state): start over
        return 0

    def _decode_chunks(self, ctx: int, tokens: list[int], output_all: bool = False, logits: bool = True) -> None:
        """Evaluate tokens at the end of the cache, n_batch at a time; outputs for the last (or all; or
        none, without ``logits``)."""
        L = _backend.lib()
        run = L.llama_encode if self._is_encoder else L.llama_decode
        batch = self._batch
        n = len(tokens)
        if self._cells() + n > self._n_ctx:
            raise ContextFullError(
                f"{n} tokens do not fit in the context: it holds {self._cells()} of n_ctx={self._n_ctx}; "
                f"use a larger n_ctx or a shorter prompt")
        if self._is_encoder and n > self._n_batch:
            raise ContextFullError(f"{n} tokens exceed n_batch={self._n_batch}, which an embedding model "
                                   f"must evaluate at once; use a larger n_batch")
        if n:
            self._note_loras()
        interruptible = _SigintGuard(self._cancel)
        L.llama_set_abort_callback(ctx, self._abort_cb, None)
        try:
            with interruptible:
                for start in range(0, n, self._n_batch):
                    chunk = tokens[start:start + self._n_batch]
                    batch.fill(chunk, len(self._tokens), output_last=logits and start + len(chunk) == n,
                               output_all=output_all)
                    rc = run(ctx, batch.struct)
                    if rc != 0:
                        self._after_failed_decode(rc, len(self._tokens))
                    self._tokens.extend(int(t) for t in chunk)
        finally:
            L.llama_set_abort_callback(ctx, _lib.ggml_abort_callback(), None)

    def _drop_after(self, n_before: int) -> None:
        # Whatever part of a failed batch reached the cache is dropped, so that
        # the cache and self._tokens agree again.
        self._truncate_cache(n_before)
        if self._mem:
            _backend.lib().llama_memory_seq_rm(self._mem, 0, len(self._tokens), -1)

    def _note_loras(self) -> None:
        """Before something is added to the cache: record which adapters it is decoded with."""
        if self._tokens and self._kv_loras != self._loras:
            self._kv_loras = None  # a cache decoded partly with other adapters: no prompt may reuse it
        elif not self._tokens:
            self._kv_loras = self._loras

    def _after_failed_decode(self, rc: int, n_before: int) -> None:
        self._drop_after(n_before)
        self._raise_if_cancelled()
        if rc == 1:
            raise ContextFullError(f"no room left in the KV cache (n_ctx={self._n_ctx}); use a larger n_ctx")
        raise RuntimeError(f"llama_decode failed with status {rc}: {_lib.take_errors() or 'see the mullama log'}")

    def _raise_if_cancelled(self) -> None:
        if self._cancel.interrupted:
            self._cancel.interrupted = False
            raise KeyboardInterrupt
        if self._cancel.requested or (self._cancel.event is not None and self._cancel.event.is_set()):
            self._cancel.requested = False
            raise GenerationCancelled("generation was cancelled")

    def decode(self, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to the context and evaluate them (logits/embeddings of the last are kept)."""
        ctx = self._acquire()
        try:
            ids = _validate.token_list("tokens", tokens, self._model._n_vocab)
            if not ids:
                raise ValueError("tokens is empty")
            if self._is_encoder or (self._embeddings and not self._mem):
                self._tokens.clear()  # encoder-only models keep no cache: each call stands alone
            self._decode_chunks(ctx, ids, output_all=self._embeddings)
        finally:
            self._release()

    def get_embeddings(self) -> np.ndarray | None:
        """The embedding of the last decoded tokens (pooled per the model, else the last token's).

        Returns a float32 array of shape ``(n_embd,)``, or None when this
        Context was not created with ``embeddings=True`` or nothing was decoded.
        """
        ctx = self.ptr()
        if not self._embeddings or not self._tokens and not self._is_encoder:
            return None
        L = _backend.lib()
        n = int(L.llama_model_n_embd_out(self._model.ptr())) or self._model.n_embd
        if L.llama_pooling_type(ctx) != _lib.LLAMA_POOLING_TYPE_NONE:
            p = L.llama_get_embeddings_seq(ctx, 0)
        else:
            p = L.llama_get_embeddings_ith(ctx, -1)
        if not p:
            return None
        return np.ctypeslib.as_array(p, shape=(n,)).copy()

    # -- saved state ----------------------------------------------------------------

    def state_bytes(self) -> bytes:
        """The state of this Context as bytes: its KV cache and the tokens it holds.

        What is saved is sequence 0 (a Context's only one, unless ``n_seq_max
        > 1``): llama.cpp's copy of its cache (positions, keys and values of
        every cell), the token ids that :attr:`tokens` lists, and a
        fingerprint of the model.  Sampler state, the logits of the last
        token and the parameters of the Context are not saved.  After
        :meth:`load_state_bytes` of these bytes into a Context over the same
        model, a prompt that starts with the saved tokens continues exactly as
        it would have here, evaluating only its last token again.  The format
        (magic, version, fingerprint, tokens, checksum, llama.cpp's blob) is
        the Node binding's too.  RuntimeError while another thread uses this
        Context.
        """
        self._acquire()
        try:
            head, blob = self._state_parts()
            return b"".join((head, _state.checksum(head, blob), blob))
        finally:
            self._release()

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_bytes` to the file ``path``, atomically (a temporary file, then a rename).

        The file is created readable by its owner only; an existing one is
        replaced.  OSError when it cannot be written.
        """
        fspath = _state_path(path)
        self._acquire()
        try:
            head, blob = self._state_parts()
            _state.write_file(fspath, (head, _state.checksum(head, blob), blob))
        finally:
            self._release()

    def load_state_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Replace this Context's cache (sequence 0) with a state from :meth:`state_bytes`.

        Everything is checked before llama.cpp reads it: ValueError for data
        that is not a mullama state, is truncated or corrupted (checksum), or
        was saved from another model (naming the fields that differ);
        :class:`ContextFullError` (a ValueError) when it holds more tokens
        than this Context's ``n_ctx``; RuntimeError when llama.cpp refuses it
        (a cache of another type or layout), and then the cache is left
        empty.  After any error the Context still generates.  TypeError when
        ``data`` is not bytes-like.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, bytearray or memoryview, not {type(data).__name__}")
        self._load_state(data if isinstance(data, bytes) else bytes(data), "the state bytes")

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Load a state file written by :meth:`save_state` (errors as for :meth:`load_state_bytes`).

        OSError when the file cannot be read.
        """
        fspath = _state_path(path)
        with open(fspath, "rb") as f:
            data = f.read()
        self._load_state(data, f"the state file {fspath!r}")

    def _fingerprint(self) -> dict[str, _state.Field]:
        return _state.fingerprint(self._model.ptr(), self._model._n_vocab)

    def _state_parts(self, seq: int = 0, tokens: list[int] | None = None) -> tuple[bytes, Any]:
        """The header (before the checksum) and llama.cpp's blob of sequence ``seq``, which holds ``tokens``
        (the Engine saves its slots through this; a Context, sequence 0 and its tokens)."""
        ctx = self.ptr()
        tokens = self._tokens if tokens is None else tokens
        if not self._mem:
            raise RuntimeError("this Context keeps no KV cache (an embedding model's): it has no state to save")
        if any(t < 0 for t in tokens):
            raise ValueError("the cache holds images or sounds, which a saved state cannot record (only token ids); "
                             "save it before the first medium, or clear_cache()")
        L = _backend.lib()
        if int(L.llama_memory_seq_pos_max(self._mem, seq)) != len(tokens) - 1:
            raise RuntimeError("the KV cache and the tokens this Context tracks disagree; call clear_cache()")
        _lib.take_errors()
        n = int(L.llama_state_seq_get_size(ctx, seq))
        blob = (ctypes.c_ubyte * n)()
        if n == 0 or int(L.llama_state_seq_get_data(ctx, ctypes.addressof(blob), n, seq)) != n:
            raise RuntimeError(f"llama.cpp could not save the state: {_lib.take_errors() or 'see the mullama log'}")
        return _state.header(self._fingerprint(), tokens, n), blob

    def _load_state(self, data: bytes, what: str) -> None:
        self._acquire()
        try:
            self._load_state_into(data, what, 0, self._tokens, self._n_ctx)
            self._kv_loras = self._loras  # a state does not say which adapters made it: taken as the ones applied
        finally:
            self._release()

    def _load_state_into(self, data: bytes, what: str, seq: int, tokens: list[int], n_ctx: int) -> None:
        """Replace sequence ``seq``'s cache, whose tokens ``tokens`` lists (updated in place), with a state."""
        ctx = self.ptr()
        parsed = _state.parse(data, self._fingerprint(), what)
        n_tokens = len(parsed.tokens)
        if n_tokens > n_ctx:
            raise ContextFullError(f"{what} holds {n_tokens} tokens, more than this Context's "
                                   f"n_ctx={n_ctx}; load it into a Context with n_ctx >= {n_tokens}")
        if not self._mem:
            raise RuntimeError("this Context keeps no KV cache (an embedding model's): it cannot load a state")
        L = _backend.lib()
        keep = ctypes.c_char_p(data)  # points into data, no copy
        src = (ctypes.cast(keep, ctypes.c_void_p).value or 0) + parsed.blob_offset
        # the sequence is emptied first: llama.cpp leaves it as it was when the state holds no cell
        L.llama_memory_seq_rm(self._mem, seq, -1, -1)
        tokens.clear()
        _lib.take_errors()
        read = int(L.llama_state_seq_set_data(ctx, src, parsed.blob_len, seq))
        n_cached = int(L.llama_memory_seq_pos_max(self._mem, seq)) + 1
        if read != parsed.blob_len or n_cached != n_tokens:
            L.llama_memory_seq_rm(self._mem, seq, -1, -1)
            if not read:
                why = _lib.take_errors() or "see the mullama log"
            elif read != parsed.blob_len:
                why = f"it read {read} of {parsed.blob_len} bytes"
            else:
                why = f"the state lists {n_tokens} tokens but its cache holds {n_cached}"
            if "n_stream" in why:
                why += ("; it was saved from a cache with another number of KV streams: an Engine's cache loads "
                        "only into an Engine with the same parallel, a Context's only into a Context")
            raise RuntimeError(f"llama.cpp could not load {what} into this Context ({why}); "
                               f"its cache is now empty")
        tokens[:] = parsed.tokens
        if tokens is self._tokens:
            self._media_cells.clear()  # (a saved state does not say which positions held M-RoPE media)

    # -- generation ---------------------------------------------------------------

    def _prompt_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise RuntimeError("the prompt is empty: there is nothing to generate from")
            return self._model.tokenize(prompt, add_bos=True, special=True)
        ids = _validate.token_list("prompt", prompt, self._model._n_vocab)
        if not ids:
            raise RuntimeError("the prompt is empty: there is nothing to generate from")
        return ids

    def _check_params(self, params: SamplerParams | None) -> SamplerParams:
        if params is None:
            return _DEFAULT_PARAMS
        if not isinstance(params, SamplerParams):
            raise TypeError(f"params must be a SamplerParams or None, not {type(params).__name__}")
        return params

    def _on_device(self, params: SamplerParams, grammar: Grammar | None, logprobs: bool = False) -> bool:
        """Whether this generation's chain runs inside the decode graph (see ``sampling``)."""
        if self._sampling == "cpu":
            return False
        if grammar is not None:
            if self._sampling == "device":
                raise ValueError("sampling='device' cannot apply a grammar: the grammar sampler runs on the host "
                                 "(use sampling='auto', which samples grammars on the host)")
            return False
        if logprobs:
            # The log-probabilities need the raw logits on the host, which a
            # device chain keeps on the device.
            if self._sampling == "device":
                raise ValueError("sampling='device' cannot report logprobs: they are read from the logits on the "
                                 "host (use sampling='auto', which samples such requests on the host)")
            return False
        if self._sampling == "device":
            return True
        # auto: where the output layer's logits are on a GPU, except plain greedy,
        # whose host argmax reads the logits in place
        return self._model._output_on_device and not (params.is_greedy and not params.uses_penalties)

    def _chain(self, params: SamplerParams, seq: int = 0, device: bool = False, shared: bool = True) -> SamplerChain:
        """The chain for ``params``: a host chain, or one attached to sequence ``seq``.

        Host chains are cached per parameter set (``shared``), except for the
        slots of a batched engine, which each need one of their own.
        """
        if device:
            return self._attach_chain(seq, params)
        self._detach_chain(seq)  # a device chain would keep the logits on the device
        if not shared:
            return SamplerChain(params, self._model._n_vocab, self._n_ctx)
        key = params.key()
        chain = self._chains.get(key)
        if chain is None:
            if len(self._chains) >= 8:
                self._chains.pop(next(iter(self._chains))).close()
            chain = self._chains[key] = SamplerChain(params, self._model._n_vocab, self._n_ctx)
        return chain

    def _attach_chain(self, seq: int, params: SamplerParams) -> SamplerChain:
        """Run ``params``' chain inside the decode graph for sequence ``seq`` (kept until replaced).

        Attaching makes llama.cpp rebuild its graphs at the next decode, so a
        chain stays attached while the same parameters keep coming.
        """
        current = self._attached.get(seq)
        if current is not None and current.params_key == params.key():
            return current
        L = _backend.lib()
        chain = SamplerChain(params, self._model._n_vocab, self._n_ctx, device=True)
        native = chain.hand_over()
        self._device_chains.append(native)
        _lib.take_errors()
        if not L.llama_set_sampler(self.ptr(), seq, native):
            self._free_chain(chain)
            why = _lib.take_errors() or "llama.cpp refused it"
            raise RuntimeError(f"cannot sample on the device here ({why}); use sampling='cpu' or 'auto'")
        if current is not None:  # replaced in llama.cpp's table: nothing refers to it any more
            self._free_chain(current)
        self._attached[seq] = chain
        return chain

    def _detach_chain(self, seq: int) -> None:
        current = self._attached.pop(seq, None)
        if current is not None:
            _backend.lib().llama_set_sampler(self.ptr(), seq, None)
            self._free_chain(current)

    def _free_chain(self, chain: SamplerChain) -> None:
        native = chain.owned_by_context
        self._device_chains.remove(native)
        chain.forget()
        _backend.lib().llama_sampler_free(native)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 100,
        params: SamplerParams | None = None,
        *,
        stop: Sequence[str] | None = None,
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,
        grammar: Grammar | None = None,
        media: Sequence[MediaSource] | None = None,
    ) -> str:
        """Generate up to ``max_tokens`` tokens after ``prompt`` (text or token ids).

        Stops early at an end-of-generation token (unless ``ignore_eos``) or
        at the first of the ``stop`` strings (which is not included).
        ``cancel`` is an Event another thread may set to stop the generation.  A string prompt is
        tokenized with the model's BOS and with special tokens parsed, so a
        prompt from :meth:`Model.apply_chat_template` works as is.

        ``grammar`` (a :class:`~mullama.grammar.Grammar`) constrains the text to
        its language; generation then ends when the grammar's text is complete,
        and raises :class:`~mullama.grammar.GrammarIncompleteError` if
        ``max_tokens`` runs out before (a stop string ends it as asked).

        ``media`` (images or sounds: paths, bytes, arrays or
        :class:`~mullama.Media`) go where the prompt's markers
        (:attr:`Projector.marker`) are, one marker each, in order; the context
        must have a ``projector``.  The cache keeps them like tokens: a
        follow-up prompt that starts with the same text and media does not
        encode them again.
        """
        return "".join(cast(Iterator[str], self._stream(prompt, max_tokens, params, stop, cancel, ignore_eos, grammar,
                                                        media=media)))

    def generate_stream(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 100,
        params: SamplerParams | None = None,
        *,
        stop: Sequence[str] | None = None,
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,
        grammar: Grammar | None = None,
        media: Sequence[MediaSource] | None = None,
    ) -> Generator[str, None, None]:
        """Like :meth:`generate`, but yields each piece of text as soon as its token is sampled.

        Pieces never split a UTF-8 character, and ``"".join(pieces)`` equals
        what :meth:`generate` returns.  Leaving the loop early is fine.
        """
        gen = cast(Generator[str, None, None], self._stream(prompt, max_tokens, params, stop, cancel, ignore_eos,
                                                            grammar, media=media))
        self._active_stream = weakref.ref(gen)
        return gen

    def complete(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 100,
        params: SamplerParams | None = None,
        *,
        logprobs: int = 0,
        stop: Sequence[str] | None = None,
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,
        grammar: Grammar | None = None,
        media: Sequence[MediaSource] | None = None,
    ) -> Completion:
        """Like :meth:`generate`, but returns a :class:`~mullama.Completion`: the text, its tokens, why it ended.

        ``logprobs=k`` (1 to 20) adds each token's log-probability and the
        ``k`` most probable tokens at its position: the model's own
        distribution (a log-softmax of the logits, before the samplers), as
        OpenAI reports it.  Such a generation samples on the host (with
        ``sampling="device"`` it raises ValueError).
        """
        text: list[str] = []
        tokens: list[int] = []
        probs: list[TokenLogprob] | None = [] if logprobs else None
        reason = _sequence.FINISH_LENGTH
        for chunk in self.complete_stream(prompt, max_tokens, params, logprobs=logprobs, stop=stop, cancel=cancel,
                                          ignore_eos=ignore_eos, grammar=grammar, media=media):
            text.append(chunk.text)
            tokens += chunk.tokens
            if probs is not None and chunk.logprobs is not None:
                probs += chunk.logprobs
            reason = chunk.finish_reason or reason
        return Completion("".join(text), tokens, reason, probs)

    def complete_stream(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 100,
        params: SamplerParams | None = None,
        *,
        logprobs: int = 0,
        stop: Sequence[str] | None = None,
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,
        grammar: Grammar | None = None,
        media: Sequence[MediaSource] | None = None,
    ) -> Generator[CompletionChunk, None, None]:
        """:meth:`complete`, one :class:`~mullama.CompletionChunk` per token as it is sampled.

        Each chunk holds one token (its log-probabilities with ``logprobs``)
        and the text released with it; the last chunk has ``finish_reason``.
        """
        outcome = _Outcome(check_logprobs(logprobs) or None)
        gen = self._stream(prompt, max_tokens, params, stop, cancel, ignore_eos, grammar, outcome, media)
        chunks = _chunks(gen, outcome)
        self._active_stream = weakref.ref(chunks)
        return chunks

    def _stream(
        self,
        prompt: str | Sequence[int],
        max_tokens: int,
        params: SamplerParams | None,
        stop: Sequence[str] | None,
        cancel: threading.Event | None,
        ignore_eos: bool = False,
        grammar: Grammar | None = None,
        outcome: _Outcome | None = None,
        media: Sequence[MediaSource] | None = None,
    ) -> Generator[str | None, None, None]:
        # Arguments are checked before the first piece is asked for, so that
        # generate_stream() raises at the call for bad input.
        max_tokens = _validate.integer("max_tokens", max_tokens, 0)
        ignore_eos = _validate.boolean("ignore_eos", ignore_eos)
        stops = _sequence.check_stops(stop)
        grammar = check_grammar(grammar)
        if cancel is not None and not isinstance(cancel, threading.Event):
            raise TypeError("cancel must be a threading.Event or None")
        self.ptr()
        plan = self._media_prompt(prompt, media)
        tokens = self._prompt_tokens(prompt) if plan is None else plan.cache_ids
        params = self._check_params(params)
        device = self._on_device(params, grammar, outcome is not None and outcome.k is not None)
        n_cells = len(tokens) if plan is None else plan.n_tokens  # (M-RoPE media: more cells than positions)
        if n_cells > self._n_ctx:
            raise ContextFullError(f"the prompt has {n_cells} tokens but the context holds n_ctx={self._n_ctx}; "
                                   f"use a larger n_ctx or a shorter prompt")
        return self._generate(tokens, max_tokens, params, device, stops, cancel, ignore_eos, grammar, outcome, plan)

    def _media_prompt(self, prompt: str | Sequence[int], media: Sequence[MediaSource] | None) -> MediaPrompt | None:
        """The prompt split by the projector into text and media chunks, when media are given."""
        return media_prompt(prompt, media, self._projector, self._drafter is not None)

    def _generate(self, tokens: list[int], max_tokens: int, params: SamplerParams, device: bool,
                  stops: tuple[str, ...], cancel: threading.Event | None,
                  ignore_eos: bool, grammar: Grammar | None,
                  outcome: _Outcome | None = None,
                  plan: MediaPrompt | None = None) -> Generator[str | None, None, None]:
        ctx = self._acquire()
        self._cancel.event = cancel
        state = None
        try:
            # before the prompt: with the chain in the graph, the prompt's decode samples the first token
            chain = self._chain(params, 0, device)
            chain.start(tokens if plan is None else plan.text_tokens)
            self._eval_prompt(ctx, tokens, plan)
            if max_tokens == 0:
                return
            state = grammar.state(self._model) if grammar is not None else None
            rows = _sequence.LogitRows(ctx, self._model._n_vocab)
            sample = _sequence.sampler(ctx, chain, rows, state)
            finish = _sequence.Finish()
            # Under a grammar the end-of-generation token means "the text is complete": it always ends.
            ignore_eos = ignore_eos and state is None
            if outcome is not None:
                outcome.finish = finish
                outcome.recorder = rec = Recorder(self._model, outcome.k, rows.view, not ignore_eos)
                sample = rec.wrap(sample)
            loop = _sequence.token_loop(self._model, sample, -1, max_tokens, stops, ignore_eos, finish)
            marks = outcome is not None
            if state is None:
                yield from self._drive(ctx, loop, finish, marks, max_tokens)
                return
            pieces: list[str] = []
            for piece in self._drive(ctx, loop, finish, marks, max_tokens):
                if piece is not None:
                    pieces.append(piece)
                yield piece
            if finish.reason == _sequence.FINISH_LENGTH and not state.complete():
                raise GrammarIncompleteError(
                    f"max_tokens={max_tokens} ran out before the grammar's text was complete "
                    f"({finish.n_sampled} tokens generated); raise max_tokens", "".join(pieces))
        finally:
            if state is not None:
                state.close()
            self._release()

    def _eval_prompt(self, ctx: int, tokens: list[int], plan: MediaPrompt | None = None) -> None:
        # Reuse the longest cached prefix; the last prompt token is always
        # evaluated again so that its logits are fresh.
        # (only from a cache decoded with the adapters applied now)
        cached = self._tokens
        limit = min(len(cached), len(tokens) - 1) if self._kv_loras == self._loras else 0
        if plan is None:
            common = _common_prefix(cached, tokens, limit)
            kept = self._truncate_cache(common)
            self._last_prompt_evaluated = len(tokens) - kept
            self._decode_chunks(ctx, tokens[kept:])
            return
        segments = plan.segments()  # (the last is text: multimodal.media_prompt)
        common = _common_prefix(cached, tokens, limit)
        # never keep part of a medium: back off to its start
        for start, chunk, _ in segments:
            if chunk.kind != "text" and start < common < start + chunk.n_pos:
                common = start
        kept = self._truncate_cache(common)
        self._last_prompt_evaluated = len(tokens) - kept
        for i, (start, chunk, native) in enumerate(segments):
            end = start + chunk.n_pos
            if end <= kept:
                continue
            if chunk.kind == "text":  # (outputs for the prompt's last token only)
                self._decode_chunks(ctx, list(chunk.tokens[max(kept - start, 0):]), logits=i == len(segments) - 1)
            else:
                self._decode_media(ctx, chunk.n_tokens, chunk.n_pos, native, tokens[start:end])

    def _decode_media(self, ctx: int, n_tokens: int, n_pos: int, native: int, ids: list[int]) -> None:
        """Encode one media chunk with the projector and decode its embeddings at the end of the cache."""
        assert self._projector is not None
        n_before = len(self._tokens)
        if self._cells() + n_tokens > self._n_ctx:
            raise ContextFullError(
                f"a medium of {n_tokens} embeddings does not fit in the context: it holds {self._cells()} of "
                f"n_ctx={self._n_ctx}; use a larger n_ctx or fewer media")
        self._note_loras()
        try:
            end = self._projector.evaluate(ctx, native, n_before, 0, self._n_batch)
        except BaseException:  # (a KeyboardInterrupt too: the cache must agree with self._tokens again)
            self._drop_after(n_before)
            raise
        if end != n_before + n_pos:
            self._drop_after(n_before)
            raise RuntimeError(f"libmtmd placed a medium of {n_pos} positions at {n_before}..{end}")
        self._tokens.extend(ids)
        if n_tokens > n_pos:
            self._media_cells.append((n_before, n_tokens - n_pos))

    def _drive(self, ctx: int, loop: Generator[_sequence.Step, int, None],
               finish: _sequence.Finish, marks: bool = False,
               max_tokens: int = 0) -> Generator[str | None, None, None]:
        """Run one sequence's token loop, decoding each token it asks for alone, or with drafts.

        With ``marks``, also yields None each time a token's text is done
        (before the next token is sampled): :meth:`complete_stream` cuts
        its chunks there.  With a drafter (``draft=``), each decoded token
        goes with the drafts that may follow it (at most ``max_tokens`` in
        all), every one an output; a token the loop samples that equals the
        next draft is already decoded, and the first that differs drops the
        drafts left (see :mod:`mullama.speculative`).
        """
        L = _backend.lib()
        run = L.llama_decode
        batch = self._batch
        cached = self._tokens
        n_ctx = self._n_ctx - (self._cells() - len(cached))  # positions left for tokens (M-RoPE media hold more)
        cancel = self._cancel
        drafter = self._drafter
        stats = self.draft_stats
        drafts: list[int] = []  # decoded after ``cached``, not yet checked
        batch_end = 0  # outputs in the last decode
        with _SigintGuard(cancel):
            try:
                step = next(loop)
                while True:
                    if isinstance(step, str):
                        yield step
                        step = next(loop)
                        continue
                    if step is None:  # ready to sample: at once, with one sequence
                        if marks:
                            yield None
                        step = next(loop)
                        continue
                    if drafts:
                        if step == drafts[0]:  # decoded already, its logits at the next output
                            del drafts[0]
                            cached.append(step)
                            stats["accepted"] += 1
                            step = loop.send(batch_end - len(drafts) - 1)
                            continue
                        L.llama_memory_seq_rm(self._mem, 0, len(cached), -1)
                        drafts.clear()
                    if cancel.requested or cancel.interrupted or (cancel.event is not None and cancel.event.is_set()):
                        self._raise_if_cancelled()
                    if len(cached) >= n_ctx:
                        raise ContextFullError(
                            f"the context is full (n_ctx={self._n_ctx}) after {len(cached)} tokens; "
                            f"use a larger n_ctx, fewer max_tokens or a shorter prompt")
                    if drafter is None:
                        batch.set_one(step, len(cached))
                    else:
                        # (the last token to sample is never decoded: no draft for it)
                        room = min(n_ctx - len(cached) - 1, max_tokens - finish.n_sampled - 1, batch.capacity - 1)
                        drafts = drafter.draft({0: cached + [step]}, {0: room})[0] if room > 0 else []
                        batch.fill([step] + drafts, len(cached), output_all=True)
                        batch_end = len(drafts) + 1
                        stats["drafted"] += len(drafts)
                    rc = run(ctx, batch.struct)
                    stats["decodes"] += 1
                    if rc != 0:
                        drafts.clear()
                        self._after_failed_decode(rc, len(cached))
                    cached.append(step)
                    step = loop.send(0 if drafts else -1)
            except StopIteration:
                pass
            finally:
                if drafts:  # drafts never checked (the loop ended or failed first) leave the cache
                    L.llama_memory_seq_rm(self._mem, 0, len(cached), -1)
            if finish.overran:
                # a stop string ended the text of a token already decoded: the cache drops it
                L.llama_memory_seq_rm(self._mem, 0, len(cached) - 1, -1)
                cached.pop()

    async def agenerate(self, prompt: str | Sequence[int], max_tokens: int = 100,
                        params: SamplerParams | None = None, **kwargs: Any) -> str:
        """Awaitable :meth:`generate`, run in a worker thread (see :mod:`mullama.aio`)."""
        from .aio import agenerate
        return await agenerate(self, prompt, max_tokens, params, **kwargs)

    def agenerate_stream(self, prompt: str | Sequence[int], max_tokens: int = 100,
                         params: SamplerParams | None = None, **kwargs: Any) -> AsyncIterator[str]:
        """Async iterator over the pieces of :meth:`generate_stream` (see :mod:`mullama.aio`)."""
        from .aio import agenerate_stream
        return agenerate_stream(self, prompt, max_tokens, params, **kwargs)

    def __repr__(self) -> str:
        if self.closed:
            return "Context(closed)"
        return f"Context(n_ctx={self._n_ctx}, n_batch={self._n_batch}, n_past={len(self._tokens)})"


_DEFAULT_PARAMS = SamplerParams()


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


class _Outcome:
    """What a completion records beside its text, filled in by ``Context._generate``."""

    __slots__ = ("k", "recorder", "finish")

    def __init__(self, k: int | None) -> None:
        self.k = k  # alternatives per token; None: no log-probabilities
        self.recorder: Recorder | None = None
        self.finish: _sequence.Finish | None = None


def _chunks(gen: Generator[str | None, None, None], outcome: _Outcome) -> Generator[CompletionChunk, None, None]:
    """Cut a marked text stream into one chunk per token (see ``Context._drive``)."""
    sent = 0
    text: list[str] = []

    def cut(finish_reason: str | None) -> CompletionChunk:
        nonlocal sent
        rec = outcome.recorder
        if rec is not None:
            rec.settle()  # (the next token's decode is under way)
        tokens = rec.tokens[sent:] if rec is not None else []
        probs = rec.logprobs[sent:] if rec is not None and rec.logprobs is not None else None
        if outcome.k is not None and probs is None:
            probs = []
        sent += len(tokens)
        chunk = CompletionChunk("".join(text), tokens, probs, finish_reason)
        text.clear()
        return chunk

    try:
        for item in gen:
            if item is None:
                yield cut(None)
            else:
                text.append(item)
    finally:
        gen.close()
    finish = outcome.finish
    yield cut(finish.reason if finish is not None and finish.reason else _sequence.FINISH_LENGTH)


def _state_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    fspath = os.fspath(path)
    if not isinstance(fspath, str):
        raise TypeError(f"path must be a str or os.PathLike of str, not {type(fspath).__name__}")
    if not fspath:
        raise ValueError("path is empty")
    return fspath


def _free_context_then(free_context: Any, chains: list[int], free_chain: Any, loras: list[LoraAdapter],
                       others: list[NativeHandle]) -> Any:
    """The context's free function: the context first, then the chains attached to it, then its hold on
    its adapters and its projector."""
    def free(pointer: int) -> None:
        free_context(pointer)
        for c in chains:
            free_chain(c)
        chains.clear()
        for h in [*loras, *others]:
            let_go(h)
        loras.clear()
        others.clear()
    return free


class _SigintGuard:
    """While native code runs on the main thread, Ctrl-C sets a flag the abort callback sees.

    The previous handler comes back afterwards and the interrupt is raised
    as KeyboardInterrupt once llama.cpp has stopped cleanly.
    """

    def __init__(self, state: _Cancel) -> None:
        self.state = state
        self.previous: Any = None
        self.active = False

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
            self.active = True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.state.interrupted = True

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.active = False
            try:
                signal.signal(signal.SIGINT, self.previous)
            except ValueError:
                # A suspended stream finished from another thread (closed by the
                # garbage collector there): only the main thread may restore it.
                pass
        if self.state.interrupted and exc[0] is None:
            self.state.interrupted = False
            raise KeyboardInterrupt


class EngineAccess:
    """The part of a :class:`Context` that the batched engine drives directly, and nothing more.

    The engine runs many sequences over one Context: it takes the native context for its scheduler
    thread, edits the KV memory of each sequence, fills the Context's batch, and uses the same prompt
    and sampler steps as the Context's own token loop.  This is that interface, in one place, so that
    the Context's other members stay its own.  Internal: not part of the public API.
    """

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def acquire(self) -> int:
        """The native context, owned by the calling thread from now on."""
        return self._ctx._acquire()

    @property
    def memory(self) -> int:
        """The context's ``llama_memory_t`` (every sequence's cache)."""
        return int(self._ctx._mem)

    @property
    def batch(self) -> Batch:
        """The context's token batch, reused at every step."""
        return self._ctx._batch

    def prompt_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        """A prompt as the tokens the Context would evaluate, checked the same way."""
        return self._ctx._prompt_tokens(prompt)

    def on_device(self, params: SamplerParams, grammar: Grammar | None, logprobs: bool = False) -> bool:
        """Whether a generation with these settings samples in the decode graph (refusing what cannot)."""
        return self._ctx._on_device(params, grammar, logprobs)

    def chain(self, params: SamplerParams, seq: int = 0, device: bool = False, shared: bool = True) -> SamplerChain:
        """The sampler chain for ``params`` (attached to sequence ``seq`` when ``device``)."""
        return self._ctx._chain(params, seq, device, shared)

    def release(self) -> None:
        """Give the native context back (the scheduler thread is ending)."""
        self._ctx._release()

    @property
    def drafter(self) -> Drafter | None:
        """The context's drafter (from its ``draft=``), which drafts for every sequence."""
        return self._ctx._drafter

    @property
    def attached(self) -> dict[int, SamplerChain]:
        """Sequence -> the device chain attached to it (read-only use)."""
        return self._ctx._attached

    def detach_chain(self, seq: int) -> None:
        """Detach sequence ``seq``'s device chain, if it has one."""
        self._ctx._detach_chain(seq)

    @property
    def loras(self) -> LoraSet:
        """The adapters applied from the next decode on."""
        return self._ctx._loras

    def set_loras(self, loras: LoraSet) -> None:
        self._ctx._set_loras(loras)

    def state_parts(self, seq: int, tokens: list[int]) -> tuple[bytes, Any]:
        """Sequence ``seq``'s saved-state header and llama.cpp's blob for it."""
        return self._ctx._state_parts(seq, tokens)

    def load_state_into(self, data: bytes, what: str, seq: int, tokens: list[int], n_ctx: int) -> None:
        """Load a saved state into sequence ``seq`` (checked as :meth:`Context.load_state_bytes` checks)."""
        self._ctx._load_state_into(data, what, seq, tokens, n_ctx)
