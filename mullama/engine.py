"""``Engine``: continuous batching — many requests, one model, one ``llama_decode`` per step.

One context holds ``parallel`` sequences (each in its own KV stream, by default).  A scheduler
thread runs steps: each step packs one new token for every generating
sequence, plus chunks of newly arrived prompts, into a single batch, decodes
it once, and then lets every sequence with an output sample its next token
through the same per-sequence token loop a :class:`~mullama.Context` uses
(:mod:`mullama._sequence`).  For greedy sequences the engine reads every
argmax at once and queues the next decode first; their loops then take those
tokens while the device works.  Requests join and leave at any step; more
requests than ``parallel`` wait in a queue.  Each sequence has its own sampler
chain, stop strings, ``max_tokens`` and cancellation, and streams its pieces
to its own consumer (a blocking iterator or an ``async for``).  Any way of
consuming them is as fast: ``req.text()`` in turn, ``for piece in req`` in a
thread per request, or ``async for`` in one event loop all ran at 0.78–0.81× of
llama-batched-bench with 32 sequences on a GPU (BENCHMARKS.md); the GIL that the
consumers take is not what separates the two.

The busy sequences are kept one run of consecutive ids.  Each sequence has a
KV stream of its own, and llama.cpp decodes the sequences of a batch in one
pass over the weights only while their ids are consecutive (one pass views a
range of streams): a gap splits the step into one pass per run, which once
made a small load after a busy burst several times slower on a GPU.  So a
new request takes the lowest idle sequence; if another sequence's cache (idle
or busy) shares a longer prefix with its prompt, that cache is copied there
first (one copy of the stream), so the next turn of a conversation, or a
request whose prompt another is generating from, evaluates only what is new.  A gap that a finished request leaves among running ones is
closed by moving the highest running sequence into it (its cache copied, its
state following), except a sequence whose chain runs on the device, whose
device state cannot move.  Each slot may hold ``n_ctx`` tokens; the cache is
sized for all of them, so a running request never waits for cache space.

With ``draft=`` (:mod:`mullama.speculative`), each generating sequence's
token goes into the step with the tokens drafted after it (one draft call
for all sequences), each an output; once the step is decoded, its loop
samples from those outputs in turn while its tokens equal the drafts, and
the drafts it did not keep leave the cache before the next step.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from concurrent.futures import Future
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _backend, _lib, _sequence, _state, _validate
from .completion import Completion, Recorder, TokenLogprob, check_logprobs
from .context import MAX_N_CTX, Context, ContextFullError, EngineAccess, _state_path
from .grammar import Grammar, GrammarIncompleteError, check_grammar
from .lora import LoraAdapter, LoraSet, check_loras
from .model import Model
from .multimodal import KIND_TEXT, MediaPrompt, MediaSource, Projector, media_prompt
from .speculative import Draft
from .sampling import GrammarState, SamplerChain, SamplerParams

FINISH_CANCELLED = "cancelled"
_END = object()
# An idle slot's device chain stays in the graph this many steps, so that the
# next request with the same parameters finds it (attaching one makes llama.cpp
# reserve its graphs again); then it leaves, since every pass would carry it.
_IDLE_CHAIN_STEPS = 64
# A new request takes the cache of another idle sequence when it shares at
# least this many more prompt tokens than the lowest idle sequence's own.
_COPY_MIN_TOKENS = 16
# Requests with different LoRA adapter sets take turns of up to this many
# steps: each change of set makes llama.cpp reserve its graphs again.
_LORA_TURN_STEPS = 8


class Request:
    """One generation submitted to an :class:`Engine`: iterate it for its pieces of text.

    ``for piece in request`` blocks until each piece arrives; ``async for``
    awaits it without blocking the event loop.  ``text()`` waits for the
    whole answer.  Once it has ended, ``finish_reason`` says why ("stop",
    "length" or "cancelled"), and ``prompt_tokens`` / ``completion_tokens``
    are the usage counts, ``tokens`` the sampled tokens (as
    :attr:`~mullama.Completion.tokens`) and, for a request submitted with
    ``logprobs``, ``logprobs`` their :class:`~mullama.TokenLogprob` entries;
    :meth:`completion` waits and returns all of it as a
    :class:`~mullama.Completion`.  A request with a grammar that runs out of tokens
    before the grammar's text is complete raises
    :class:`~mullama.grammar.GrammarIncompleteError` after its last piece
    (finish_reason "length").
    """

    def __init__(self, prompt: list[int], max_tokens: int, params: SamplerParams, stops: tuple[str, ...],
                 ignore_eos: bool, grammar: Grammar | None = None, logprobs: int | None = None,
                 loras: LoraSet = (), media: MediaPrompt | None = None) -> None:
        self.prompt = prompt  # token ids; with media, one id per position (MediaPrompt.cache_ids)
        self.media = media
        self.loras = loras
        self.logprobs_k = logprobs  # alternatives per token; None: no log-probabilities
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if logprobs is not None else None
        self._logprobs_sent = 0  # entries queued for the consumer
        self._recorder: Recorder | None = None
        self.max_tokens = max_tokens
        self.params = params
        self.stops = stops
        self.ignore_eos = ignore_eos
        self.grammar = grammar
        self._text: list[str] | None = [] if grammar is not None else None  # kept for GrammarIncompleteError
        self.finish_reason: str | None = None
        self.prompt_tokens = len(prompt)
        self.prompt_evaluated = 0  # prompt tokens decoded for it (the rest came from the slot's cache)
        self.prompt_decoded = False  # its whole prompt is in the cache (another request may copy it)
        self.completion_tokens = 0
        self.submitted_at = time.monotonic()
        self.first_piece_at: float | None = None
        self.finished_at: float | None = None
        self._cancelled = False
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None  # an async consumer's

    # -- for the engine --------------------------------------------------------------

    def _push_all(self, items: list[str | TokenLogprob]) -> None:
        with self._cond:
            for item in items:
                self._push(item)

    def _push(self, item: Any) -> None:
        """Queue an item; consumers are woken by ``_flush`` (once per engine step)."""
        with self._cond:
            if isinstance(item, str):
                if self.first_piece_at is None:
                    self.first_piece_at = time.monotonic()
                if self._text is not None:
                    self._text.append(item)
            self._items.append(item)

    def _flush(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event] | None:
        """Wake a blocking consumer; return the async consumer's (loop, event) for the engine to set."""
        with self._cond:
            self._cond.notify_all()
            return self._waker

    # -- for the consumer ---------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop this request: it ends at the engine's next step, with finish_reason "cancelled"."""
        self._cancelled = True

    def __iter__(self) -> Iterator[str]:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.popleft()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, str):
                yield item

    def text(self) -> str:
        """Wait for the whole answer."""
        return "".join(self)

    def completion(self) -> Completion:
        """Wait for the whole answer: its text, tokens, finish_reason and (if asked) logprobs."""
        text = self.text()
        return Completion(text, list(self.tokens), self.finish_reason or _sequence.FINISH_LENGTH,
                          list(self.logprobs) if self.logprobs is not None else None)

    async def __aiter__(self) -> AsyncIterator[str]:
        async for pieces in self.batches():
            for piece in pieces:
                yield piece

    async def batches(self) -> AsyncIterator[list[str]]:
        """Async iterator over lists of the pieces that arrived since the last one (never empty).

        One engine step adds at most one piece per request, so a consumer
        that keeps up gets one piece at a time, and one that falls behind
        catches up in a single item (a server sends it as one event).
        """
        items = self.items()
        try:
            async for batch in items:
                pieces = [x for x in batch if isinstance(x, str)]
                if pieces:
                    yield pieces
        finally:
            await items.aclose()  # at once: a consumer that leaves early frees its sequence

    async def items(self) -> AsyncGenerator[list[str | TokenLogprob], None]:
        """Like :meth:`batches`, with each token's :class:`~mullama.TokenLogprob` (for a request with
        ``logprobs``) among the pieces: it follows the token's text, in the same list."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        with self._cond:
            self._waker = (loop, ready)
        try:
            while True:
                with self._cond:
                    items = list(self._items)
                    self._items.clear()
                    if not items:
                        ready.clear()
                if not items:
                    await ready.wait()
                    continue
                end = next((i for i, x in enumerate(items) if x is _END or isinstance(x, BaseException)), len(items))
                if end:
                    yield items[:end]
                if end < len(items):
                    if isinstance(items[end], BaseException):
                        raise items[end]
                    return
        finally:
            with self._cond:
                self._waker = None
            if not self.done:
                self.cancel()  # the consumer left early: free the sequence at the next step

    async def atext(self) -> str:
        return "".join([piece async for piece in self])


@dataclass
class _Slot:
    """One sequence of the shared context."""

    seq: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for this sequence
    request: Request | None = None
    todo: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    loop: Generator[_sequence.Step, Any, None] | None = None  # the running token loop
    finish: _sequence.Finish | None = None
    chain: SamplerChain | None = None
    grammar: GrammarState | None = None
    pending: int | None = None  # the sampled token waiting for the next step's decode
    picked: bool = False  # ``pending`` was picked by the engine; the loop takes it after the next decode
    first_idx: int = -1  # output index of the prompt's last token, for the loop's first sample
    idle_since: int = 0  # the engine's step count when the slot last went idle
    drafts: list[int] = field(default_factory=list)  # decoded after ``pending`` this step, not yet checked
    draft_at: int = -1  # the batch index of ``pending``'s output (the drafts' follow it)
    kv_loras: LoraSet = ()  # the LoRA adapters ``tokens`` were decoded with
    media_from: int = -1  # a request with media: its prompt's media are evaluated from this position on
    extra_cells: int = 0  # cells the cached media take beyond their positions (M-RoPE models)

    @property
    def cells(self) -> int:
        """KV cells this sequence's cache holds."""
        return len(self.tokens) + self.extra_cells

    def take_over(self, src: _Slot) -> None:
        """Take ``src``'s running request and its state; ``src`` goes idle, its cache kept."""
        self.tokens, self.kv_loras, self.extra_cells = list(src.tokens), src.kv_loras, src.extra_cells
        self.request, self.todo, self.loop, self.finish = src.request, src.todo, src.loop, src.finish
        self.chain, self.grammar, self.pending, self.picked = src.chain, src.grammar, src.pending, src.picked
        self.first_idx = src.first_idx
        src.request, src.todo, src.loop, src.finish, src.chain, src.grammar = None, [], None, None, None, None
        src.pending, src.picked = None, False


def _extra_cells_below(plan: MediaPrompt, end: int) -> int:
    """Extra cells (beyond positions) of the prompt's media that lie wholly before position ``end``."""
    return sum(c.n_tokens - c.n_pos for start, c, _ in plan.segments()
               if c.kind != KIND_TEXT and start + c.n_pos <= end)


def _media_boundary(plan: MediaPrompt, common: int) -> int:
    """``common`` moved back to the start of the chunk it falls inside, for every chunk up to the
    prompt's last medium (libmtmd evaluates those whole)."""
    segments = plan.segments()
    media_end = max((start + c.n_pos for start, c, _ in segments if c.kind != KIND_TEXT), default=0)
    for start, chunk, _ in segments:
        if start < media_end and start < common < start + chunk.n_pos:
            return start
    return common


def _common_prefix(cached: list[int], prompt: list[int]) -> int:
    """Tokens at the start of ``prompt`` that ``cached`` holds (at least one prompt token is left to decode)."""
    n, limit = 0, min(len(cached), len(prompt) - 1)
    while n < limit and cached[n] == prompt[n]:
        n += 1
    return n


class Engine:
    """Continuous batching over one model: submit requests from any thread or event loop.

    ``parallel``: sequences decoded together; ``n_ctx``: tokens each sequence
    may hold (prompt and answer; default the model's training context, at
    most 4096); ``n_batch``: most tokens in one step.  ``sampling``: where each
    sequence's sampler chain runs, as for :class:`~mullama.Context` (on the
    device, a slot keeps its chain in the graph while the next request has
    the same parameters).  ``kv_unified=True``
    shares one KV cache among the sequences (llama.cpp's unified cache):
    greedy outputs may then differ from a lone Context's at near-ties.
    ``type_k``, ``type_v``, ``flash_attn``: the KV cache's types and flash
    attention, as for :class:`~mullama.Context`.  ``draft``: a
    :class:`~mullama.PromptLookup` or :class:`~mullama.DraftModel` that drafts
    tokens for every sequence (speculative decoding).
    """

    def __init__(self, model: Model, parallel: int = 4, n_ctx: int = 0, n_batch: int = 2048,
                 n_threads: int = 0, *, kv_unified: bool = False, sampling: str = "auto", type_k: str = "f16",
                 type_v: str = "f16", flash_attn: bool | str = "auto", draft: Draft | None = None,
                 projector: Projector | None = None) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a mullama.Model, not {type(model).__name__}")
        L = _backend.lib()
        parallel = _validate.integer("parallel", parallel, 1, int(L.llama_max_parallel_sequences()))
        n_ctx = _validate.integer("n_ctx", n_ctx, 0, MAX_N_CTX)
        n_batch = _validate.integer("n_batch", n_batch, parallel, 1 << 20)
        train = model.n_ctx_train
        if train > 0 and n_ctx > train:
            raise ValueError(f"n_ctx={n_ctx} exceeds the model's training context n_ctx_train={train}")
        self._n_ctx_seq = n_ctx or (min(train, 4096) if train > 0 else 4096)
        self._model = model
        # One KV stream per sequence (kv_unified off, the default): each
        # sequence's cells are laid out as if it ran alone, so its attention
        # sums in the same order whatever the other sequences do.  A shared
        # cache lets greedy outputs drift at near-ties (benchmarks/divergence.py).
        self._ctx = Context(model, n_ctx=self._n_ctx_seq * parallel, n_batch=n_batch, n_threads=n_threads,
                            n_seq_max=parallel, kv_unified=_validate.boolean("kv_unified", kv_unified),
                            sampling=sampling, type_k=type_k, type_v=type_v, flash_attn=flash_attn, draft=draft,
                            projector=projector)
        self._projector = projector
        # the one interface through which the engine drives its Context
        self._host = EngineAccess(self._ctx)
        self._drafter = self._host.drafter
        self._slots = [_Slot(i) for i in range(parallel)]
        self._rows: _sequence.StepRows | None = None  # the scheduler thread's reader of each step's logits
        # When the output layer is on a device, llama_decode returns once the
        # step is queued: consumers are then woken after the next step's
        # decode is under way, off the path between two decodes.  On the CPU
        # the decode itself computes, and they are woken at once.
        self._wake_late = model._output_on_device
        self._unwoken: list[Request] = []
        self._waiting: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        # split_steps: steps whose sequences were not one run of ids (llama.cpp then makes one pass per run)
        self.stats = {"requests": 0, "requests_finished": 0, "prompt_tokens": 0, "prompt_tokens_evaluated": 0,
                      "completion_tokens": 0, "steps": 0, "split_steps": 0, "cache_copies": 0, "sequence_moves": 0,
                      "lora_switches": 0, "drafted": 0, "drafts_accepted": 0}
        self._last_loras: LoraSet = ()  # the adapter set of the last step
        self._lora_turn = 0  # steps in a row with that set
        self._commands: collections.deque[tuple[Any, Future[Any]]] = collections.deque()  # for the scheduler
        self.finish_reasons: collections.Counter[str] = collections.Counter()
        self.ttft_seconds = [0.0, 0]  # sum and count of submission -> first piece

    # -- properties ---------------------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._model

    @property
    def parallel(self) -> int:
        return len(self._slots)

    @property
    def n_ctx(self) -> int:
        """Tokens each sequence may hold."""
        return self._n_ctx_seq

    @property
    def busy_slots(self) -> int:
        return sum(s.request is not None for s in self._slots)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    # -- submitting -----------------------------------------------------------------------

    def submit(self, prompt: str | Sequence[int], max_tokens: int = 100, params: SamplerParams | None = None, *,
               stop: Sequence[str] | None = None, ignore_eos: bool = False,
               grammar: Grammar | None = None, logprobs: int = 0,
               loras: dict[LoraAdapter, float] | None = None,
               media: Sequence[MediaSource] | None = None) -> Request:
        """Queue a generation; returns its :class:`Request` at once (iterate it for the pieces).

        A prompt longer than ``n_ctx`` raises ContextFullError here; a
        generation that reaches ``n_ctx`` ends with finish_reason "length".
        ``logprobs`` as for :meth:`Context.complete`.  ``loras``: this
        request's LoRA adapters (``{adapter: scale}``); requests with
        different sets are decoded in separate steps (llama.cpp applies
        adapters to the whole context), in turn.  ``media``: images or sounds
        for the prompt's markers, as for :meth:`Context.generate` (the Engine
        needs a ``projector``); they are prepared here, in the caller's
        thread, and encoded when the request gets a sequence.
        """
        k = check_logprobs(logprobs) or None
        lora_set = check_loras(self._model, loras)
        max_tokens = _validate.integer("max_tokens", max_tokens, 0)
        ignore_eos = _validate.boolean("ignore_eos", ignore_eos)
        stops = _sequence.check_stops(stop)
        grammar = check_grammar(grammar)
        if params is None:
            params = SamplerParams()
        elif not isinstance(params, SamplerParams):
            raise TypeError(f"params must be a SamplerParams or None, not {type(params).__name__}")
        self._host.on_device(params, grammar, k is not None)  # what sampling='device' cannot do is refused here
        plan = self._media_prompt(prompt, media)
        tokens = self._host.prompt_tokens(prompt) if plan is None else plan.cache_ids
        n_cells = len(tokens) if plan is None else plan.n_tokens  # (M-RoPE media: more cells than positions)
        if n_cells >= self._n_ctx_seq:
            raise ContextFullError(f"the prompt has {n_cells} tokens but a sequence holds n_ctx="
                                   f"{self._n_ctx_seq}; use a larger n_ctx or a shorter prompt")
        req = Request(tokens, max_tokens, params.copy(), stops, ignore_eos, grammar, k, lora_set, plan)
        with self._cond:
            if self._closed:
                raise RuntimeError("this Engine is closed")
            self._waiting.append(req)
            self.stats["requests"] += 1
            self.stats["prompt_tokens"] += len(tokens)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mullama-engine", daemon=True)
                self._thread.start()
            self._cond.notify()
        return req

    def _media_prompt(self, prompt: str | Sequence[int], media: Sequence[MediaSource] | None) -> MediaPrompt | None:
        return media_prompt(prompt, media, self._projector, self._drafter is not None)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 100, params: SamplerParams | None = None,
                 **kwargs: Any) -> str:
        """Submit and wait for the whole answer."""
        return self.submit(prompt, max_tokens, params, **kwargs).text()

    def close(self, drain: bool = False) -> None:
        """Stop the engine: with ``drain``, after the requests already submitted finish; else cancel them."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if not drain:
                for req in self._waiting:
                    req._cancelled = True
                for slot in self._slots:
                    if slot.request is not None:
                        slot.request._cancelled = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._ctx.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the scheduler -----------------------------------------------------------------------

    def _run(self) -> None:
        ctx = self._host.acquire()  # the scheduler thread owns the context for good
        self._rows = _sequence.StepRows(ctx, self._model._n_vocab)
        try:
            while True:
                with self._cond:
                    while (not self._waiting and not any(s.request for s in self._slots) and not self._closed
                           and not self._commands):
                        self._wake_now()
                        self._cond.wait()
                    commands = list(self._commands)
                    self._commands.clear()
                    if (self._closed and not commands and not self._waiting
                            and not any(s.request for s in self._slots)):
                        return
                for fn, done in commands:  # between two steps, where every slot's cache is what it records
                    try:
                        done.set_result(fn())
                    except Exception as e:  # noqa: BLE001 - the caller gets it
                        done.set_exception(e)
                with self._cond:
                    self._admit()
                self._eval_media(ctx)
                self._compact()
                self._release_idle_chains()
                self._step(ctx)
        except BaseException as e:  # noqa: BLE001 - every waiting consumer learns why
            self._fail_all(e)
        finally:
            with self._cond:
                left, self._commands = self._commands, collections.deque()
            for _, done in left:
                done.set_exception(RuntimeError("this Engine is closed"))
            self._host.release()

    # -- saved caches -------------------------------------------------------------------------

    def save_cache(self, path: str | os.PathLike[str], prompt: str | Sequence[int]) -> int:
        """Evaluate ``prompt`` (unless a sequence's cache holds it) and save that cache to the file ``path``.

        The file has :meth:`Context.save_state`'s format (a Context can load
        it too).  :meth:`load_cache`, in this process or after a restart,
        puts it back in an idle sequence: requests whose prompt starts with
        ``prompt`` (a long system prompt) then evaluate only what follows.
        Caches are saved without LoRA adapters.  Returns the number of
        tokens saved (those of the sequence that held the prompt: it may
        hold more).  Blocks until written.
        """
        tokens = self._host.prompt_tokens(prompt)
        fspath = _state_path(path)
        for _ in range(3):  # another request may take the sequence between the two calls
            self.submit(tokens, 0).text()
            saved = int(self._call(lambda: self._save_sequence(fspath, tokens)))
            if saved:
                return saved
        raise RuntimeError("the engine is too busy to keep the prompt's cache until it is saved; try again")

    def load_cache(self, path: str | os.PathLike[str]) -> int:
        """Load a cache saved by :meth:`save_cache` (or a Context's state) into an idle sequence.

        Returns its number of tokens.  A file that is not a state, is
        corrupted, or was saved from another model is a ValueError; one with
        more tokens than ``n_ctx``, ContextFullError; with every sequence
        busy, RuntimeError.
        """
        fspath = _state_path(path)
        with open(fspath, "rb") as f:
            data = f.read()
        return int(self._call(lambda: self._load_sequence(data, f"the cache file {fspath!r}")))

    def _call(self, fn: Any) -> Any:
        """Run ``fn`` on the scheduler thread between two steps and return its result."""
        done: Future[Any] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("this Engine is closed")
            self._commands.append((fn, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mullama-engine", daemon=True)
                self._thread.start()
            self._cond.notify()
        return done.result()

    def _save_sequence(self, path: str, tokens: list[int]) -> int:
        held = [s for s in self._slots if s.kv_loras == () and s.tokens[:len(tokens)] == tokens]
        if not held:
            return 0
        s = min(held, key=lambda s: (s.request is not None, len(s.tokens)))
        head, blob = self._host.state_parts(s.seq, s.tokens)
        _state.write_file(path, (head, _state.checksum(head, blob), blob))
        return len(s.tokens)

    def _load_sequence(self, data: bytes, what: str) -> int:
        idle = [s for s in self._slots if s.request is None]
        if not idle:
            raise RuntimeError("every sequence is busy: the cache can be loaded once one is idle")
        # the highest idle sequence: new requests take the lowest, and copy a cache that holds their prefix
        s = idle[-1]
        self._host.load_state_into(data, what, s.seq, s.tokens, self._n_ctx_seq)
        s.kv_loras, s.extra_cells = (), 0
        return len(s.tokens)

    def _admit(self) -> None:
        """Give waiting requests the lowest idle sequences, with the best cached prefix (see the module doc)."""
        L = _backend.lib()
        mem = self._host.memory
        while self._waiting:
            idle = [s for s in self._slots if s.request is None]
            if not idle:
                return
            req = self._waiting.popleft()
            if req._cancelled:
                self._end(req, FINISH_CANCELLED)
                continue
            slot = self._first_slot(req) if len(idle) == len(self._slots) else idle[0]
            # a cache decoded with other LoRA adapters is no prefix of this request's
            common = _common_prefix(slot.tokens, req.prompt) if slot.kv_loras == req.loras else 0
            best, best_common = slot, common
            for s in self._slots:  # busy ones too: requests that share a prompt share its cache
                n = _common_prefix(s.tokens, req.prompt) if s is not slot and s.kv_loras == req.loras else 0
                if n > best_common:
                    best, best_common = s, n
            if best_common - common >= _COPY_MIN_TOKENS:
                L.llama_memory_seq_cp(mem, best.seq, slot.seq, -1, -1)  # the whole stream: slot's own cache goes
                slot.tokens = list(best.tokens)
                common = best_common
                self.stats["cache_copies"] += 1
            if req.media is not None:
                common = _media_boundary(req.media, common)
            if not L.llama_memory_seq_rm(mem, slot.seq, common, -1):
                L.llama_memory_seq_rm(mem, slot.seq, -1, -1)
                common = 0
            del slot.tokens[common:]
            # the media kept are the prompt's own (a text prompt shares no media positions with any cache)
            slot.extra_cells = _extra_cells_below(req.media, common) if req.media is not None else 0
            slot.kv_loras = req.loras
            slot.request, slot.todo = req, req.prompt[common:]
            req.prompt_evaluated = len(slot.todo)
            self.stats["prompt_tokens_evaluated"] += len(slot.todo)
            if req.media is not None:  # evaluated by _eval_media, outside the lock
                slot.media_from, slot.todo = common, []
            device = self._host.on_device(req.params, req.grammar, req.logprobs_k is not None)
            slot.chain = self._host.chain(req.params, slot.seq, device, shared=False)
            slot.chain.start(req.prompt if req.media is None else req.media.text_tokens)
            slot.grammar = req.grammar.state(self._model) if req.grammar is not None else None
            slot.finish, slot.loop, slot.pending = _sequence.Finish(), None, None

    def _eval_media(self, ctx: int) -> None:
        """Evaluate the media of newly admitted requests (and the text between them) with libmtmd's
        helper, each into its sequence; the text after the last medium is left to the steps."""
        for s in self._slots:
            req = s.request
            if req is None or s.media_from < 0 or req.media is None:
                continue
            start_from, s.media_from = s.media_from, -1
            try:
                segments = req.media.segments()
                media_end = max(start + c.n_pos for start, c, _ in segments if c.kind != KIND_TEXT)
                todo = [(start, c, native) for start, c, native in segments
                        if start + c.n_pos > start_from and start < media_end]
                if req.loras != self._host.loras:  # decoded with the request's own adapters
                    self._host.set_loras(req.loras)
                    self.stats["lora_switches"] += 1
                need = s.cells + sum(c.n_tokens for _, c, _ in todo)
                if need > self._n_ctx_seq:
                    raise ContextFullError(f"the prompt's media need {need} cells, but a sequence holds "
                                           f"n_ctx={self._n_ctx_seq}")
                assert self._projector is not None
                for start, chunk, native in todo:
                    self._projector.evaluate(ctx, native, len(s.tokens), s.seq, self._host.batch.capacity)
                    s.tokens.extend(req.prompt[start:start + chunk.n_pos])
                    s.extra_cells += chunk.n_tokens - chunk.n_pos
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                _backend.lib().llama_memory_seq_rm(self._host.memory, s.seq, -1, -1)
                s.tokens, s.extra_cells = [], 0
                req._push(e)
                self._finish(s, "error")
                continue
            s.todo = req.prompt[max(media_end, start_from):]  # (a cached prefix may reach past the media)

    def _first_slot(self, req: Request) -> _Slot:
        """With every slot idle, sequence 0 or 1, whichever keeps the device chains as they are.

        Attaching a device chain, or detaching one for a host chain, makes
        llama.cpp reserve its graphs again at the next decode (tens of ms on a
        GPU): a lone client alternating greedy and sampled requests would pay
        it each time.  Either sequence keeps the busy ones one run, since the
        next request takes sequence 0 or the one after it.
        """
        attached = self._host.attached
        device = self._host.on_device(req.params, req.grammar, req.logprobs_k is not None)

        def cost(s: _Slot) -> int:
            chain = attached.get(s.seq)
            if device:
                return 0 if chain is not None and chain.params_key == req.params.key() else 1 if chain is None else 2
            return 0 if chain is None else 1
        return min(self._slots[:2], key=cost)

    def _compact(self) -> None:
        """Close the gaps that finished requests left among running ones (see the module doc)."""
        while True:
            busy = [s for s in self._slots if s.request is not None]
            if not busy or busy[-1].seq - busy[0].seq + 1 == len(busy):
                return
            hole = next(s for s in self._slots[busy[0].seq:] if s.request is None)
            src = next((s for s in reversed(busy) if s.seq > hole.seq and not (s.chain and s.chain.device)), None)
            if src is None:
                return  # only device-sampled sequences lie above the gap: they stay until they end
            L = _backend.lib()
            L.llama_memory_seq_cp(self._host.memory, src.seq, hole.seq, -1, -1)
            if self._drafter is not None:
                self._drafter.move(src.seq, hole.seq)
            self._host.detach_chain(hole.seq)  # an idle device chain kept there would sample for the moved request
            hole.take_over(src)
            src.idle_since = self.stats["steps"]
            self.stats["sequence_moves"] += 1

    def _release_idle_chains(self) -> None:
        """Detach the device chains of slots idle for ``_IDLE_CHAIN_STEPS`` steps (all at once: one graph reserve)."""
        attached = self._host.attached
        if not attached:
            return
        now = self.stats["steps"]
        for s in self._slots:
            if s.request is None and s.seq in attached and now - s.idle_since >= _IDLE_CHAIN_STEPS:
                self._host.detach_chain(s.seq)

    def _step(self, ctx: int) -> None:
        L = _backend.lib()
        for s in self._slots:
            if s.request is not None and s.request._cancelled:
                self._finish(s, FINISH_CANCELLED)
        batch = self._host.batch
        loras = self._step_loras()
        # one new token for every generating sequence, then chunks of the prompts
        # still to evaluate; written in sequence order, so that consecutive
        # sequences share llama.cpp's passes (see the module doc)
        generating: dict[int, int] = {}  # seq -> its next token
        for s in self._slots:
            if s.request is not None and s.pending is not None and s.request.loras == loras:
                if s.cells >= self._n_ctx_seq:
                    self._finish(s, _sequence.FINISH_LENGTH)
                    continue
                generating[s.seq] = s.pending
        budget = batch.capacity - len(generating)
        drafts = self._draft(generating, budget) if self._drafter is not None and generating else {}
        budget -= sum(len(d) for d in drafts.values())
        chunk: dict[int, int] = {}  # seq -> prompt tokens this step
        for s in self._slots:
            if budget <= 0:
                break
            if s.request is not None and s.todo and s.request.loras == loras:
                chunk[s.seq] = k = min(len(s.todo), budget)
                budget -= k
        outputs: list[tuple[_Slot, int]] = []
        out_idx: list[int] = []  # every output's batch index, drafts' too
        prefill: list[tuple[_Slot, int]] = []
        toks: list[int] = []
        poss: list[int] = []
        seqs: list[int] = []
        want: list[int] = []
        last_seq, runs = -2, 0
        for s in self._slots:
            tok = generating.get(s.seq)
            if tok is not None:
                outputs.append((s, len(toks)))
                s.drafts = d = drafts.get(s.seq, [])
                s.draft_at = len(toks)
                out_idx += range(len(toks), len(toks) + 1 + len(d))
                toks.append(tok)
                toks += d
                poss += range(len(s.tokens), len(s.tokens) + 1 + len(d))
                seqs += [s.seq] * (1 + len(d))
                want += [1] * (1 + len(d))
            elif s.seq in chunk:
                k = chunk[s.seq]
                start = len(s.tokens)
                prefill.append((s, k))
                toks += s.todo[:k]
                poss += range(start, start + k)
                seqs += [s.seq] * k
                want += [0] * k
                if k == len(s.todo):
                    want[-1] = 1
                    outputs.append((s, len(toks) - 1))
                    out_idx.append(len(toks) - 1)
            else:
                continue
            runs += s.seq != last_seq + 1
            last_seq = s.seq
        n = len(toks)
        if runs > 1:
            self.stats["split_steps"] += 1
        batch.token[:n], batch.pos[:n], batch.seq[:n], batch.logits[:n] = toks, poss, seqs, want
        if n == 0:
            self._wake_now()
            return
        batch.struct.n_tokens = n
        rc = L.llama_decode(ctx, batch.struct)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}: {_lib.take_errors() or 'see the mullama log'}")
        self.stats["steps"] += 1
        self._wake_now()  # the previous step's pieces, while the device decodes
        # the cache now holds what was decoded
        for s, _ in outputs:
            if s.pending is not None:
                s.tokens.append(s.pending)
                s.pending = None
        for s, k in prefill:
            s.tokens.extend(s.todo[:k])
            del s.todo[:k]
            if not s.todo and s.request is not None:
                s.request.prompt_decoded = True
        touched = [s.request for s, _ in outputs if s.request is not None]
        # While the device decodes, every sequence makes the text of the token it
        # just sent (a loop whose token the engine picked first takes it now);
        # then, after one wait for the decode, each samples its next token.
        for s, idx in outputs:
            if s.picked:
                self._take_picked(s)
            if s.request is not None:
                self._text(s, idx)
        L.llama_synchronize(ctx)
        rows = self._rows
        assert rows is not None
        greedy = [idx for s, idx in outputs if s.chain is not None and s.chain.argmax_only]
        rows.new_step(out_idx, greedy)
        for s, idx in outputs:
            if s.request is not None and not self._pick(s, idx, rows):
                self._sample(s, ctx)
                if s.drafts:
                    self._check_drafts(s)
        self._unwoken += touched
        if not self._wake_late:
            self._wake_now()

    def _draft(self, generating: dict[int, int], budget: int) -> dict[int, list[int]]:
        """Drafts for the generating sequences, in one call: each within its ``max_tokens`` and
        context, and all within the batch's ``budget``."""
        assert self._drafter is not None
        histories: dict[int, list[int]] = {}
        room: dict[int, int] = {}
        for seq in generating:
            s = self._slots[seq]
            req, finish = s.request, s.finish
            assert req is not None and finish is not None
            # the last token to sample is never decoded: no draft for it
            r = min(self._n_ctx_seq - s.cells - 1, req.max_tokens - finish.n_sampled - 1,
                    self._drafter.draft_max, budget)
            if r > 0:
                histories[seq], room[seq] = s.tokens + [generating[seq]], r
                budget -= r
        if not histories:
            return {}
        drafts = self._drafter.draft(histories, room)
        self.stats["drafted"] += sum(len(d) for d in drafts.values())
        return drafts

    def _check_drafts(self, s: _Slot) -> None:
        """The loop has sampled the token after ``pending``: while it equals the next draft, that draft
        is decoded already, so its text is made and the next token sampled from its output at once.
        The drafts not kept leave the cache (also when the request ends meanwhile: ``_finish``)."""
        at = s.draft_at
        while s.drafts and s.request is not None and s.pending == s.drafts[0]:
            del s.drafts[0]
            s.tokens.append(s.pending)
            s.pending = None
            at += 1
            self.stats["drafts_accepted"] += 1
            if self._pump(s, at) is None and s.request is not None:  # its text; then the next token
                s.pending = self._pump(s, None)
        if s.drafts:
            _backend.lib().llama_memory_seq_rm(self._host.memory, s.seq, len(s.tokens), -1)
            s.drafts = []

    def _step_loras(self) -> LoraSet:
        """The LoRA adapters of this step: llama.cpp applies one set to a whole decode, so requests
        with different sets take turns of up to ``_LORA_TURN_STEPS`` steps, in the order of their sequences."""
        sets: list[LoraSet] = []
        for s in self._slots:
            req = s.request
            if req is not None and (s.pending is not None or s.todo) and req.loras not in sets:
                sets.append(req.loras)
        if not sets:
            return self._last_loras
        if self._last_loras in sets and (len(sets) == 1 or self._lora_turn < _LORA_TURN_STEPS):
            loras = self._last_loras
            self._lora_turn += 1
        else:
            i = sets.index(self._last_loras) + 1 if self._last_loras in sets else 0
            loras = sets[i % len(sets)]
            self._lora_turn = 1
        if loras != self._host.loras:
            self._host.set_loras(loras)
            self.stats["lora_switches"] += 1
        self._last_loras = loras
        for s in self._slots:
            if s.picked and s.request is not None and s.request.loras != loras:
                # sits this step out: its loop must take the picked token while the row it came from is kept
                s.picked = False
                tok = self._pump(s, None)
                if tok != s.pending:
                    raise RuntimeError(f"sequence {s.seq}: the engine picked token {s.pending} but its loop "
                                       f"sampled {tok}")
        return loras

    def _pick(self, s: _Slot, idx: int, rows: _sequence.StepRows) -> bool:
        """Pick a greedy sequence's next token without resuming its loop, when the loop would just send it on.

        Between the device's end of one step and the start of the next, only
        the argmax (already read for every greedy row at once) and this check
        run per sequence; the loop itself samples the same token from the
        reader's kept argmax after the next decode is queued
        (``_take_picked``), off that path.  A token that would end the
        generation (end of generation, ``max_tokens``, the context) goes
        through the loop at once instead.
        """
        req, chain, finish = s.request, s.chain, s.finish
        assert req is not None and chain is not None and finish is not None
        if (s.loop is None or s.grammar is not None or not chain.argmax_only or req.logprobs is not None
                or self._drafter is not None):  # (drafts are checked by the loop's own samples)
            return False  # (log-probabilities are read from the row, which the next decode overwrites)
        if finish.n_sampled + 1 >= req.max_tokens or s.cells >= self._n_ctx_seq:
            return False
        tok = rows.argmax(idx)
        if not req.ignore_eos and self._model._piece_or_eog(tok) is None:
            return False
        s.pending, s.picked = tok, True
        return True

    def _take_picked(self, s: _Slot) -> None:
        """The loop samples (from the kept argmax) and sends the token the engine already decoded for it."""
        s.picked = False
        decoded = s.tokens[-1]
        tok = self._pump(s, None)
        if tok != decoded:  # the two must agree, or the cache and the text part ways
            raise RuntimeError(f"sequence {s.seq}: the engine decoded token {decoded} but its loop sampled {tok}")

    def _wake_now(self) -> None:
        if self._unwoken:
            self._wake(self._unwoken)
            self._unwoken = []

    def _wake(self, requests: list[Request]) -> None:
        """Wake each request's consumer once; async consumers with one call per event loop."""
        events: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
        for req in requests:
            waker = req._flush()
            if waker is not None:
                events.setdefault(waker[0], []).append(waker[1])
        for loop, evs in events.items():
            try:
                loop.call_soon_threadsafe(_set_all, evs)
            except RuntimeError:
                pass  # that loop has closed: its consumers are gone

    def _text(self, s: _Slot, idx: int) -> None:
        """Give the slot's loop the output index of the token it sent; it makes that token's text."""
        if s.loop is None:
            s.first_idx = idx  # a prompt just ended: its loop starts at the sampling pass
            return
        self._pump(s, idx)

    def _sample(self, s: _Slot, ctx: int) -> None:
        """Let the slot's loop sample its next token, which waits for the next step's decode."""
        req = s.request
        assert req is not None and s.finish is not None and s.chain is not None
        if s.loop is None:
            if req.max_tokens == 0:
                self._finish(s, _sequence.FINISH_LENGTH)
                return
            assert self._rows is not None
            sample = _sequence.sampler(ctx, s.chain, self._rows, s.grammar)
            # Under a grammar the end-of-generation token means "the text is complete": it always ends.
            ignore_eos = req.ignore_eos and s.grammar is None
            rec = Recorder(self._model, req.logprobs_k, self._rows.view, not ignore_eos)
            rec.tokens, rec.logprobs = req.tokens, req.logprobs  # filled in place, for the consumer
            req._recorder = rec
            s.loop = _sequence.token_loop(self._model, rec.wrap(sample), s.first_idx, req.max_tokens, req.stops,
                                          ignore_eos, s.finish)
        s.pending = self._pump(s, None)  # send(None) is next()

    def _pump(self, s: _Slot, value: int | None) -> int | None:
        """Resume the slot's loop with ``value``, pass on its text, and return where it stopped: a token, or None (ready).

        A finished loop ends the slot's request (and drops from the cache a
        token it decoded for nothing: see ``Finish.overran``).
        """
        req, loop, finish = s.request, s.loop, s.finish
        assert req is not None and loop is not None and finish is not None
        made: list[str | TokenLogprob] = []
        try:
            step = loop.send(value)
            while isinstance(step, str):
                made.append(step)
                step = next(loop)
            req.completion_tokens = finish.n_sampled
            self._pass_on(req, made, isinstance(step, int))
            return step
        except StopIteration:
            req.completion_tokens = finish.n_sampled
            self._pass_on(req, made, False)
            if finish.overran:
                _backend.lib().llama_memory_seq_rm(self._host.memory, s.seq, len(s.tokens) - 1, -1)
                s.tokens.pop()
            self._finish(s, finish.reason or _sequence.FINISH_LENGTH)
            return None

    @staticmethod
    def _pass_on(req: Request, made: list[str | TokenLogprob], sampled: bool) -> None:
        """Queue the text just made, with the log-probabilities of the tokens whose text is now done
        (all recorded but one the loop has just ``sampled``), in one go: a consumer gets them together."""
        probs, rec = req.logprobs, req._recorder
        if probs is not None and rec is not None:
            rec.settle(keep_last=sampled)
            made += probs[req._logprobs_sent:]
            req._logprobs_sent = len(probs)
        if made:
            req._push_all(made)

    def _finish(self, s: _Slot, reason: str) -> None:
        req = s.request
        assert req is not None
        if s.loop is not None:
            s.loop.close()
        if s.chain is not None and not s.chain.device:
            s.chain.close()  # a device chain stays in the graph for the slot's next request
        if s.grammar is not None:
            if reason == _sequence.FINISH_LENGTH and not s.grammar.complete():
                req._push(GrammarIncompleteError(
                    f"max_tokens={req.max_tokens} (or the context) ran out before the grammar's text was complete "
                    f"({req.completion_tokens} tokens generated)", "".join(req._text or [])))
            s.grammar.close()
        if s.drafts:  # drafts decoded after the last kept token
            _backend.lib().llama_memory_seq_rm(self._host.memory, s.seq, len(s.tokens), -1)
            s.drafts = []
        s.request, s.loop, s.chain, s.grammar, s.pending, s.todo = None, None, None, None, None, []
        s.picked = False
        s.idle_since = self.stats["steps"]
        # The cache keeps what was decoded (prefix reuse for the next request of this slot).
        self._end(req, reason)

    def _end(self, req: Request, reason: str) -> None:
        req.finish_reason = reason
        req.finished_at = time.monotonic()
        self.stats["requests_finished"] += 1
        self.stats["completion_tokens"] += req.completion_tokens
        self.finish_reasons[reason] += 1
        if req.first_piece_at is not None:
            self.ttft_seconds[0] += req.first_piece_at - req.submitted_at
            self.ttft_seconds[1] += 1
        req._push(_END)
        self._wake([req])

    def _fail_all(self, e: BaseException) -> None:
        with self._cond:
            self._closed = True
            reqs = [s.request for s in self._slots if s.request is not None] + list(self._waiting)
            self._waiting.clear()
        for s in self._slots:
            s.request = None
        for req in reqs:
            req.finish_reason = "error"
            req._push(e if isinstance(e, Exception) else RuntimeError(f"the engine stopped: {e!r}"))
            req._push(_END)
        self._wake(reqs)


def _set_all(events: list[asyncio.Event]) -> None:
    for e in events:
        e.set()


__all__ = ["Engine", "Request", "FINISH_CANCELLED"]
