"""Perplexity of a text, by llama.cpp's method (``llama-perplexity``), for comparing models and KV-cache types.

The text's tokens are cut into chunks of ``chunk`` tokens (the remainder is
dropped, as llama.cpp drops it); each chunk is evaluated from an empty cache
(with the model's BOS in place of its first token when the vocabulary adds
one), and the tokens of its second half are scored: the mean negative
log-likelihood of each given the ones before it.  Perplexity is the
exponential of that mean over all chunks.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _backend, _validate
from .context import Context
from .model import Model


@dataclass(frozen=True)
class Perplexity:
    value: float  # exp(nll)
    nll: float  # mean negative log-likelihood per scored token
    n_scored: int
    n_chunks: int


def perplexity(model: Model, text: str | Sequence[int], *, chunk: int = 512, n_threads: int = 0,
               type_k: str = "f16", type_v: str = "f16", flash_attn: bool | str = "auto") -> Perplexity:
    """The perplexity of ``text`` (or token ids) under ``model``; at least two chunks of tokens are needed."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a mullama.Model, not {type(model).__name__}")
    chunk = _validate.integer("chunk", chunk, 16, 1 << 16)
    if isinstance(text, str):
        tokens = model.tokenize(text, add_bos=True, special=False)
    else:
        tokens = _validate.token_list("text", text, model.n_vocab)
    n_chunks = len(tokens) // chunk
    if n_chunks < 2:
        raise ValueError(f"the text has {len(tokens)} tokens; perplexity with chunk={chunk} needs at least "
                         f"{2 * chunk} (use a longer text or a smaller chunk)")
    ctx = Context(model, n_ctx=chunk, n_batch=chunk, n_threads=n_threads, type_k=type_k, type_v=type_v,
                  flash_attn=flash_attn, _all_outputs=True)
    L = _backend.lib()
    bos = model.token_bos if model.add_bos else -1
    first = chunk // 2
    n_vocab = model.n_vocab
    nll, count = 0.0, 0
    try:
        ptr = ctx._acquire()
        try:
            for c in range(n_chunks):
                part = tokens[c * chunk:(c + 1) * chunk]
                if bos >= 0:
                    part = [bos] + part[1:]
                ctx._clear()
                ctx._batch.fill(part, 0, output_last=False, output_all=True)
                rc = L.llama_decode(ptr, ctx._batch.struct)
                if rc != 0:
                    raise RuntimeError(f"llama_decode failed with status {rc}")
                addr = L.llama_get_logits(ptr)
                logits = np.ctypeslib.as_array(ctypes.cast(addr, ctypes.POINTER(ctypes.c_float)),
                                               shape=(chunk, n_vocab))[first:chunk - 1].astype(np.float64)
                m = logits.max(axis=1, keepdims=True)
                lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
                targets = np.asarray(tokens[c * chunk + first + 1:(c + 1) * chunk])
                nll -= float((logits[np.arange(len(targets)), targets] - lse).sum())
                count += len(targets)
        finally:
            ctx._release()
    finally:
        ctx.close()
    mean = nll / count
    return Perplexity(math.exp(mean), mean, count, n_chunks)


__all__ = ["Perplexity", "perplexity"]
