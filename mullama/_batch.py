"""A reusable ``llama_batch`` whose arrays are NumPy buffers owned by Python.

Filling a batch is then a few vectorised slice assignments instead of a
Python loop per token, and nothing needs a native free.
"""

from __future__ import annotations

import ctypes

import numpy as np

from . import _lib


class Batch:
    """Room for ``capacity`` tokens, each in exactly one sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        base = self.seq.ctypes.data
        self._seq_ptrs = (ctypes.c_void_p * capacity)(*[base + 4 * i for i in range(capacity)])
        self.struct = _lib.llama_batch(
            0,
            self.token.ctypes.data_as(ctypes.POINTER(_lib.llama_token)),
            None,
            self.pos.ctypes.data_as(ctypes.POINTER(_lib.llama_pos)),
            self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            ctypes.cast(self._seq_ptrs, ctypes.POINTER(ctypes.POINTER(_lib.llama_seq_id))),
            self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    def fill(self, tokens: list[int] | np.ndarray, start_pos: int, seq_id: int = 0,
             output_last: bool = True, output_all: bool = False) -> None:
        """One sequence's consecutive tokens from position ``start_pos``."""
        n = len(tokens)
        self.token[:n] = tokens
        self.pos[:n] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        self.seq[:n] = seq_id
        self.logits[:n] = 1 if output_all else 0
        if output_last and n:
            self.logits[n - 1] = 1
        self.struct.n_tokens = n

    def fill_sequences(self, seqs: list[list[int]]) -> None:
        """Several sequences side by side, each from position 0, every token an output."""
        lengths = [len(s) for s in seqs]
        n = sum(lengths)
        self.token[:n] = np.concatenate(seqs)
        self.pos[:n] = np.concatenate([np.arange(k, dtype=np.int32) for k in lengths])
        self.seq[:n] = np.repeat(np.arange(len(seqs), dtype=np.int32), lengths)
        self.logits[:n] = 1
        self.struct.n_tokens = n

    def set_one(self, token: int, pos: int, seq_id: int = 0) -> None:
        """A single token with its output requested (the per-token path of generation)."""
        self.token[0] = token
        self.pos[0] = pos
        self.seq[0] = seq_id
        self.logits[0] = 1
        self.struct.n_tokens = 1
