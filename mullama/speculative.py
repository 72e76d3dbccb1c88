"""Speculative decoding: guess the next tokens cheaply, let the model check them all in one decode.

A *drafter* proposes the tokens that may follow the text so far; the
target model decodes the sampled token and the drafts together, with an
output at each, and the sequence's token loop samples from those outputs
in turn.  While the sampled token equals the next draft, that draft is
already in the cache and its outputs already computed: it costs no decode
of its own.  At the first token that differs, the remaining drafts are
dropped from the cache and the sampled token goes on as usual.

Every token is still sampled by the sequence's own chain from the target
model's logits, given exactly the tokens kept before it, so the output has
the target's distribution: greedy output is the same token for token, and
a seeded sampler draws the same numbers.  This is the accept/reject rule
of llama.cpp's speculative example for a draft distribution that is one
token (both drafters here propose their single best guess): the draft is
kept with probability p(draft), and a rejection leaves p without the
draft, which is what sampling from p and finding another token gives.

Two drafters:

* :class:`PromptLookup`: the tokens that followed the last earlier
  occurrence of the text's final n-gram (prompt and output so far); no
  second model.  It helps where the answer copies from the prompt
  (rewriting, editing, extracting, code).
* :class:`DraftModel`: a small model with the same vocabulary, run
  greedily in its own context, as long as its best token's probability
  stays at or above ``p_min``.

A drafter is given to :class:`~mullama.Context` or :class:`~mullama.Engine`
as ``draft=``; each makes its own per-context state from it.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import _backend, _lib, _validate
from .model import Model

if TYPE_CHECKING:
    from .context import Context

MAX_DRAFT = 64  # drafts per step: beyond this a miss wastes more than a hit saves
# llama.cpp's check of two vocabularies (common/speculative.cpp): sizes may differ by
# this much (padding), and the tokens both have must be the same text
_VOCAB_SIZE_SLACK = 128


class PromptLookup:
    """Draft by copying from the text so far: up to ``draft_max`` tokens that followed the last earlier
    occurrence of its final ``n`` tokens (then ``n - 1``, down to ``n_min``; by default only whole
    ``n``-grams: shorter matches are right too seldom to pay for the tokens they add to a decode)."""

    def __init__(self, n: int = 3, draft_max: int = 10, *, n_min: int | None = None) -> None:
        self.n = _validate.integer("n", n, 1, 64)
        self.n_min = self.n if n_min is None else _validate.integer("n_min", n_min, 1, self.n)
        self.draft_max = _validate.integer("draft_max", draft_max, 1, MAX_DRAFT)

    def _start(self, target: Context, n_seq: int) -> _LookupDrafter:
        return _LookupDrafter(self)

    def __repr__(self) -> str:
        return f"PromptLookup(n={self.n}, draft_max={self.draft_max}, n_min={self.n_min})"


class DraftModel:
    """Draft with a smaller ``model`` of the same vocabulary: its greedy tokens, up to ``draft_max``,
    while the probability of each stays at least ``p_min``. The defaults (16, 0.75) make long drafts that
    stop where the draft model is unsure; the pinned llama.cpp's own defaults are 3 and 0.0."""

    def __init__(self, model: Model, draft_max: int = 16, *, p_min: float = 0.75) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a mullama.Model, not {type(model).__name__}")
        model.ptr()
        self.model = model
        self.draft_max = _validate.integer("draft_max", draft_max, 1, MAX_DRAFT)
        if isinstance(p_min, bool) or not isinstance(p_min, (int, float)):
            raise TypeError(f"p_min must be a float, not {type(p_min).__name__}")
        if not 0.0 <= p_min <= 1.0:
            raise ValueError(f"p_min must be between 0 and 1, not {p_min}")
        self.p_min = float(p_min)

    def _start(self, target: Context, n_seq: int) -> _ModelDrafter:
        check_vocabularies(target.model, self.model)
        return _ModelDrafter(self, target, n_seq)

    def __repr__(self) -> str:
        return f"DraftModel({self.model!r}, draft_max={self.draft_max}, p_min={self.p_min})"


Draft = Union[PromptLookup, DraftModel]


def check_draft(draft: object) -> Draft | None:
    if draft is None or isinstance(draft, (PromptLookup, DraftModel)):
        return draft
    raise TypeError(f"draft must be a mullama.DraftModel, a mullama.PromptLookup or None, not {type(draft).__name__}")


def check_vocabularies(target: Model, draft: Model) -> None:
    """ValueError unless ``draft`` tokenizes as ``target`` does (llama.cpp's rule for a draft model)."""
    L = _backend.lib()
    tv, dv = target._vocab, draft._vocab
    problems = []
    if L.llama_vocab_type(tv) != L.llama_vocab_type(dv):
        problems.append("another tokenizer type")
    if abs(target._n_vocab - draft._n_vocab) > _VOCAB_SIZE_SLACK:
        problems.append(f"{draft._n_vocab} tokens against the target's {target._n_vocab}")
    for what, fn in (("BOS", L.llama_vocab_bos), ("EOS", L.llama_vocab_eos)):
        if fn(tv) != fn(dv):
            problems.append(f"{what} token {fn(dv)} against the target's {fn(tv)}")
    if L.llama_vocab_get_add_bos(tv) != L.llama_vocab_get_add_bos(dv):
        problems.append("a different add-BOS setting")
    if not problems:
        text = L.llama_vocab_get_text
        for tok in range(min(target._n_vocab, draft._n_vocab)):
            if text(tv, tok) != text(dv, tok):
                problems.append(f"token {tok} is {text(dv, tok)!r} against the target's {text(tv, tok)!r}")
                break
    if problems:
        raise ValueError("the draft model's vocabulary is not the target model's: " + "; ".join(problems))


class _LookupDrafter:
    def __init__(self, spec: PromptLookup) -> None:
        self.spec = spec
        self.draft_max = spec.draft_max

    def draft(self, histories: dict[int, list[int]], room: dict[int, int]) -> dict[int, list[int]]:
        return {seq: lookup(h, self.spec.n, self.spec.n_min, min(room[seq], self.draft_max))
                for seq, h in histories.items()}

    def forget(self, seq: int) -> None:
        pass

    def move(self, src: int, dst: int) -> None:
        pass

    def close(self) -> None:
        pass


def lookup(history: list[int], n: int, n_min: int, limit: int) -> list[int]:
    """The tokens after the last earlier occurrence of ``history``'s final k-gram, for k = n .. n_min."""
    if limit <= 0 or len(history) < n_min + 1:
        return []
    arr = np.asarray(history, dtype=np.int32)
    for k in range(min(n, len(arr) - 1), n_min - 1, -1):
        tail = arr[-k:]
        windows = sliding_window_view(arr[:-1], k)  # every k-gram that has a token after it
        hits = np.flatnonzero((windows == tail).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + k
            return [int(t) for t in arr[start:start + limit]]
    return []


class _ModelDrafter:
    """A draft model's own context, with one sequence per target sequence, kept in step with them."""

    def __init__(self, spec: DraftModel, target: Context, n_seq: int) -> None:
        from .context import Context
        self.spec = spec
        self.draft_max = spec.draft_max
        self.ctx = Context(spec.model, n_ctx=target.n_ctx, n_batch=target.n_batch, n_threads=target.n_threads,
                           n_seq_max=n_seq, kv_unified=False if n_seq > 1 else None)
        self._cached: dict[int, list[int]] = {}  # what the draft cache holds, per sequence
        self._n_vocab = min(target.model._n_vocab, spec.model._n_vocab)

    def close(self) -> None:
        self.ctx.close()

    def move(self, src: int, dst: int) -> None:
        """Sequence ``src``'s draft cache becomes ``dst``'s (the engine moved its request there)."""
        _backend.lib().llama_memory_seq_cp(self.ctx._mem, src, dst, -1, -1)
        self._cached[dst] = list(self._cached.get(src, []))

    def forget(self, seq: int) -> None:
        _backend.lib().llama_memory_seq_rm(self.ctx._mem, seq, -1, -1)
        self._cached.pop(seq, None)

    def draft(self, histories: dict[int, list[int]], room: dict[int, int]) -> dict[int, list[int]]:
        """Catch each sequence's draft cache up with its history, then draft its greedy tokens, all
        sequences in each decode."""
        L = _backend.lib()
        ctx = self.ctx._acquire()
        try:
            mem = self.ctx._mem
            todo: dict[int, list[int]] = {}
            for seq, history in histories.items():
                cached = self._cached.setdefault(seq, [])
                common, limit = 0, min(len(cached), len(history) - 1)
                while common < limit and cached[common] == history[common]:
                    common += 1
                if common < len(cached):
                    if not L.llama_memory_seq_rm(mem, seq, common, -1):
                        L.llama_memory_seq_rm(mem, seq, -1, -1)
                        common = 0
                    del cached[common:]
                todo[seq] = history[common:]
            drafts: dict[int, list[int]] = {seq: [] for seq in histories}
            want = {seq: min(room[seq], self.draft_max) for seq in histories}
            out = self._decode(ctx, todo)  # seq -> its output's batch index
            p_min = self.spec.p_min
            while out:
                nxt: dict[int, list[int]] = {}
                for seq, idx in out.items():
                    row = self._row(ctx, idx)
                    tok = int(row.argmax())
                    if tok >= self._n_vocab or (p_min > 0 and _top_probability(row, tok) < p_min):
                        continue
                    drafts[seq].append(tok)
                    if len(drafts[seq]) < want[seq]:
                        nxt[seq] = [tok]
                out = self._decode(ctx, nxt) if nxt else {}
            return drafts
        finally:
            self.ctx._release()

    def _decode(self, ctx: int, todo: dict[int, list[int]]) -> dict[int, int]:
        """Decode each sequence's tokens after its cache (n_batch at a time); the batch index of each
        sequence's last token in the final decode."""
        L = _backend.lib()
        batch = self.ctx._batch
        cap = batch.capacity
        left = {seq: list(toks) for seq, toks in todo.items() if toks}
        out: dict[int, int] = {}
        while left:
            n = 0
            out = {}
            for seq in sorted(left):
                toks = left[seq]
                k = min(len(toks), cap - n)
                if k <= 0:
                    break
                cached = self._cached[seq]
                batch.token[n:n + k] = toks[:k]
                batch.pos[n:n + k] = np.arange(len(cached), len(cached) + k, dtype=np.int32)
                batch.seq[n:n + k] = seq
                batch.logits[n:n + k] = 0
                if k == len(toks):
                    batch.logits[n + k - 1] = 1
                    out[seq] = n + k - 1
                cached += toks[:k]
                del toks[:k]
                n += k
            left = {s: t for s, t in left.items() if t}
            batch.struct.n_tokens = n
            rc = L.llama_decode(ctx, batch.struct)
            if rc != 0:
                for seq in todo:  # the draft cache no longer matches: start those sequences over
                    self.forget(seq)
                raise RuntimeError(f"the draft model's decode failed with status {rc}: "
                                   f"{_lib.take_errors() or 'see the mullama log'}")
        return out

    def _row(self, ctx: int, idx: int) -> np.ndarray:
        addr = _backend.lib().llama_get_logits_ith(ctx, idx)
        return np.ctypeslib.as_array(ctypes.cast(addr, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.spec.model._n_vocab,))


def _top_probability(row: np.ndarray, top: int) -> float:
    """softmax(row)[top], without forming the whole distribution."""
    return float(1.0 / np.exp(row - row[top]).sum())


Drafter = Union[_LookupDrafter, _ModelDrafter]


def from_options(draft_model: str | None, lookup_n: int, draft_max: int | None, p_min: float,
                 n_gpu_layers: int) -> Draft | None:
    """The drafter that the command line's ``--draft-model`` / ``--lookup`` options describe (or None)."""
    if draft_model is not None and lookup_n:
        raise ValueError("--draft-model and --lookup are two ways of drafting: use one")
    if draft_model is not None:
        model = Model.load(draft_model, n_gpu_layers=n_gpu_layers)
        return DraftModel(model, 16 if draft_max is None else draft_max, p_min=p_min)
    if lookup_n:
        return PromptLookup(n=lookup_n, draft_max=10 if draft_max is None else draft_max)
    if draft_max is not None:
        raise ValueError("--draft-max needs --draft-model or --lookup")
    return None

__all__ = ["DraftModel", "PromptLookup", "check_draft", "check_vocabularies", "from_options", "lookup"]
