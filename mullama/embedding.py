"""Sentence embeddings: ``EmbeddingGenerator`` and ``cosine_similarity``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _backend, _lib, _validate
from .context import Context
from .model import Model

# Most sequences packed into one llama_decode call; llama.cpp allows up to 256.
MAX_SEQS_PER_BATCH = 64
# Tokens packed into one call.  Encoder models attend across the whole
# micro-batch (with a mask), so bigger batches waste work quadratically, while
# smaller ones pay the per-call cost more often: 128 was fastest for MiniLM on
# a 2-core AVX-512 machine (a longer text still goes alone in its own call).
DEFAULT_PACK_TOKENS = 128


class EmbeddingGenerator:
    """Turns text into embedding vectors with an embedding model (or a generative one).

    Pooling follows the model's own GGUF metadata (mean, CLS or last token);
    a model that declares none (a generative model) is mean-pooled.  With
    ``normalize=True`` every vector has unit L2 norm, so a dot product is the
    cosine similarity.  Texts longer than ``n_ctx`` tokens raise ValueError
    unless ``truncate=True`` is passed to :meth:`embed`/:meth:`embed_batch`.
    """

    def __init__(self, model: Model, n_ctx: int = 512, normalize: bool = True, *,
                 n_batch: int = 0, n_threads: int = 0) -> None:
        """``n_batch``: tokens packed into one native call (0: 128); ``n_threads``: 0 = all usable CPUs."""
        if not isinstance(model, Model):
            raise TypeError(f"model must be a mullama.Model, not {type(model).__name__}")
        n_ctx = _validate.integer("n_ctx", n_ctx, 1, 1 << 20)
        self._normalize = _validate.boolean("normalize", normalize)
        n_batch = _validate.integer("n_batch", n_batch, 0, 1 << 20)
        train = model.n_ctx_train
        # A text may be as long as the model allows and the caller asked for.
        self._max_tokens = min(n_ctx, train) if train > 0 else n_ctx
        self._pack = n_batch or DEFAULT_PACK_TOKENS
        batch = max(self._pack, self._max_tokens)
        arch = model.architecture or ""
        pooling = None if model.meta(f"{arch}.pooling_type") is not None else "mean"
        self._model = model
        self._ctx = Context(model, n_ctx=batch, n_batch=batch, n_ubatch=batch, n_threads=n_threads,
                            embeddings=True, n_seq_max=MAX_SEQS_PER_BATCH, pooling=pooling)
        L = _backend.lib()
        self._pooling = int(L.llama_pooling_type(self._ctx.ptr()))
        self._n_embd = int(L.llama_model_n_embd_out(model.ptr())) or model.n_embd

    @property
    def n_embd(self) -> int:
        """Embedding dimension."""
        return self._n_embd

    @property
    def model(self) -> Model:
        """The embedding model."""
        return self._model

    @property
    def max_tokens(self) -> int:
        """The longest text, in tokens, that is embedded without truncation."""
        return self._max_tokens

    @property
    def context(self) -> Context:
        return self._ctx

    def close(self) -> None:
        self._ctx.close()

    def __enter__(self) -> EmbeddingGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def embed(self, text: str, *, truncate: bool = False) -> np.ndarray:
        """One text -> float32 vector of shape ``(n_embd,)``."""
        _validate.string("text", text)
        if not text:
            raise ValueError("text is empty; an empty string has no embedding")
        row: np.ndarray = self.embed_matrix([text], truncate=truncate)[0]
        return row

    def embed_batch(self, texts: Sequence[str], *, truncate: bool = False) -> list[np.ndarray]:
        """Many texts -> a list of float32 vectors (rows of one matrix, packed into few native calls)."""
        return list(self.embed_matrix(texts, truncate=truncate))

    def embed_matrix(self, texts: Sequence[str], *, truncate: bool = False) -> np.ndarray:
        """Many texts -> one float32 array of shape ``(len(texts), n_embd)``."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of str, not {type(texts).__name__}")
        _validate.boolean("truncate", truncate)
        return self._embed_rows([self._tokens(i, t, truncate) for i, t in enumerate(texts)])

    def embed_tokens(self, token_lists: Sequence[Sequence[int]]) -> np.ndarray:
        """Texts already tokenized (each non-empty, at most ``max_tokens`` ids of this model) -> one float32
        row each, as :meth:`embed_matrix` gives for the texts."""
        if isinstance(token_lists, (str, bytes)) or not isinstance(token_lists, Sequence):
            raise TypeError(f"token_lists must be a list of lists of token ids, not {type(token_lists).__name__}")
        n_vocab = self._model.n_vocab
        lists: list[list[int]] = []
        for i, ids in enumerate(token_lists):
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
                raise TypeError(f"token_lists[{i}] must be a list of token ids, not {type(ids).__name__}")
            checked = [_validate.integer(f"token_lists[{i}][{j}]", t, 0, n_vocab - 1) for j, t in enumerate(ids)]
            if not checked:
                raise ValueError(f"token_lists[{i}] is empty; an empty text has no embedding")
            if len(checked) > self._max_tokens:
                raise ValueError(f"token_lists[{i}] has {len(checked)} tokens; at most {self._max_tokens} are embedded")
            lists.append(checked)
        return self._embed_rows(lists)

    def _embed_rows(self, token_lists: list[list[int]]) -> np.ndarray:
        out = np.empty((len(token_lists), self._n_embd), dtype=np.float32)
        start = 0
        while start < len(token_lists):
            end, used = start + 1, len(token_lists[start])  # at least one text, however long
            while end < len(token_lists) and end - start < MAX_SEQS_PER_BATCH \
                    and used + len(token_lists[end]) <= self._pack:
                used += len(token_lists[end])
                end += 1
            self._run(token_lists[start:end], out[start:end])
            start = end
        if self._normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out

    def _tokens(self, i: int, text: Any, truncate: bool) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, not {type(text).__name__}")
        if not text:
            raise ValueError(f"texts[{i}] is empty; an empty string has no embedding")
        ids = self._model.tokenize(text, add_bos=True)
        if len(ids) > self._max_tokens:
            if not truncate:
                raise ValueError(f"texts[{i}] has {len(ids)} tokens, more than the {self._max_tokens} this "
                                 f"generator embeds (n_ctx); pass truncate=True to cut it, or raise n_ctx")
            ids = ids[:self._max_tokens]
        return ids

    def _run(self, seqs: list[list[int]], out: np.ndarray) -> None:
        ctx = self._ctx
        c = ctx._acquire()
        try:
            L = _backend.lib()
            if ctx._mem:
                L.llama_memory_clear(ctx._mem, True)
            ctx._tokens.clear()
            ctx._batch.fill_sequences(seqs)
            run = L.llama_encode if ctx._is_encoder else L.llama_decode
            rc = run(c, ctx._batch.struct)
            if rc != 0:
                raise RuntimeError(f"embedding failed (status {rc}): {_lib.take_errors() or 'see the mullama log'}")
            n = self._n_embd
            if self._pooling == _lib.LLAMA_POOLING_TYPE_NONE:
                # Per-token outputs: mean over each sequence's rows.
                rows = np.ctypeslib.as_array(L.llama_get_embeddings(c), shape=(sum(map(len, seqs)), n))
                bounds = np.cumsum([0] + [len(s) for s in seqs])
                for k in range(len(seqs)):
                    out[k] = rows[bounds[k]:bounds[k + 1]].mean(axis=0)
            else:
                for k in range(len(seqs)):
                    p = L.llama_get_embeddings_seq(c, k)
                    if not p:
                        raise RuntimeError(f"llama.cpp returned no embedding for sequence {k}")
                    out[k] = np.ctypeslib.as_array(p, shape=(n,))
            if ctx._mem:
                L.llama_memory_clear(ctx._mem, True)
        finally:
            ctx._release()


def cosine_similarity(a: Any, b: Any) -> float:
    """Cosine similarity of two vectors (NumPy arrays or sequences of numbers).

    Raises ValueError("Vectors must have the same length") on a mismatch.  A
    zero vector has no direction: its similarity with anything is 0.0.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError("cosine_similarity takes two 1-D vectors")
    if x.shape != y.shape:
        raise ValueError("Vectors must have the same length")
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(np.clip(np.dot(x, y) / (nx * ny), -1.0, 1.0))
