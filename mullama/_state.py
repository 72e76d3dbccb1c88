"""The saved-state format of a Context (``Context.save_state`` and friends).

A state is llama.cpp's per-sequence blob (``llama_state_seq_get_data`` of
sequence 0: the KV cache cells, their positions and their keys and values)
wrapped in a header of our own, so that a file from another model, a
truncated or a corrupted one is refused before llama.cpp reads it.  Every
integer is little-endian; Node's ``lib/_state.js`` writes the same bytes.

====================  =================================================================
``magic``             14 bytes, ``b"MULLAMA-STATE\\0"``
``version``           u32, 1
fingerprint           for each of :data:`FINGERPRINT` in order: a string as u32 length and
                      its bytes (architecture, name, description), a number as u64
``n_tokens``          u32: how many tokens the cache holds
``tokens``            ``n_tokens`` i32 token ids, in order
``blob_len``          u64: the length of llama.cpp's blob
``sha256``            32 bytes: SHA-256 of everything above, then of the blob
``blob``              ``blob_len`` bytes: llama.cpp's state of the sequence
====================  =================================================================
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import tempfile
from collections.abc import Sequence
from typing import Any, Final, Union

from . import _backend

MAGIC: Final = b"MULLAMA-STATE\0"
VERSION: Final = 1
_SHA_LEN: Final = 32
# The fields that identify a model cheaply, in the order the header holds them.
FINGERPRINT: Final = ("architecture", "name", "description", "n_vocab", "n_embd", "n_layer", "n_head",
                      "n_head_kv", "n_params", "size")
_STRINGS: Final = ("architecture", "name", "description")

Field = Union[bytes, int]


class StateError(ValueError):
    """A saved state that cannot be loaded here (bad bytes or another model); the message says why."""


def fingerprint(model_ptr: int, n_vocab: int) -> dict[str, Field]:
    """The model's fingerprint; strings are kept as llama.cpp's raw bytes (Node reads the same)."""
    L = _backend.lib()

    def meta(key: bytes) -> bytes:
        n = int(L.llama_model_meta_val_str(model_ptr, key, None, 0))
        if n < 0:
            return b""
        buf = ctypes.create_string_buffer(n + 1)
        L.llama_model_meta_val_str(model_ptr, key, buf, n + 1)
        return buf.raw[:n]

    desc = ctypes.create_string_buffer(256)
    n = int(L.llama_model_desc(model_ptr, desc, len(desc)))
    return {
        "architecture": meta(b"general.architecture"),
        "name": meta(b"general.name"),
        "description": desc.raw[:max(0, min(n, len(desc) - 1))],
        "n_vocab": n_vocab,
        "n_embd": int(L.llama_model_n_embd(model_ptr)),
        "n_layer": int(L.llama_model_n_layer(model_ptr)),
        "n_head": int(L.llama_model_n_head(model_ptr)),
        "n_head_kv": int(L.llama_model_n_head_kv(model_ptr)),
        "n_params": int(L.llama_model_n_params(model_ptr)),
        "size": int(L.llama_model_size(model_ptr)),
    }


def header(fp: dict[str, Field], tokens: Sequence[int], blob_len: int) -> bytes:
    """Everything before the checksum."""
    parts = [MAGIC, struct.pack("<I", VERSION)]
    for name in FINGERPRINT:
        value = fp[name]
        if isinstance(value, bytes):
            parts += [struct.pack("<I", len(value)), value]
        else:
            parts.append(struct.pack("<Q", value))
    parts.append(struct.pack(f"<I{len(tokens)}i", len(tokens), *tokens))
    parts.append(struct.pack("<Q", blob_len))
    return b"".join(parts)


def checksum(head: bytes, blob: Any) -> bytes:
    h = hashlib.sha256(head)
    h.update(blob)
    return h.digest()


class Parsed:
    """A state read and checked: its tokens and where its blob is."""

    __slots__ = ("tokens", "blob_offset", "blob_len")

    def __init__(self, tokens: list[int], blob_offset: int, blob_len: int) -> None:
        self.tokens = tokens
        self.blob_offset = blob_offset
        self.blob_len = blob_len


def _show(value: Field) -> str:
    return repr(value.decode("utf-8", "replace")) if isinstance(value, bytes) else str(value)


def parse(data: bytes, fp: dict[str, Field], what: str) -> Parsed:
    """Check ``data`` against this model (magic, version, length, checksum, fingerprint, token ids).

    Raises :class:`StateError` naming the problem; ``what`` names the input
    in messages ("the state file x", "the state bytes").
    """
    size = len(data)
    if data[:len(MAGIC)] != MAGIC[:size]:
        raise StateError(f"{what} is not a mullama state (it does not start with {MAGIC!r})")
    pos = 0

    def take(n: int, field: str) -> bytes:
        nonlocal pos
        if pos + n > size:
            raise StateError(f"{what} is truncated: it ends at byte {size}, inside its {field} "
                             f"(which needs {pos + n} bytes)")
        out = data[pos:pos + n]
        pos += n
        return out

    take(len(MAGIC), "magic")
    (version,) = struct.unpack("<I", take(4, "format version"))
    if version != VERSION:
        raise StateError(f"{what} has format version {version}, but this mullama reads version {VERSION} "
                         f"(save it again with this version)")
    saved: dict[str, Field] = {}
    for name in FINGERPRINT:
        if name in _STRINGS:
            (n,) = struct.unpack("<I", take(4, name))
            saved[name] = take(n, name)
        else:
            (saved[name],) = struct.unpack("<Q", take(8, name))
    (n_tokens,) = struct.unpack("<I", take(4, "token count"))
    tokens = list(struct.unpack(f"<{n_tokens}i", take(4 * n_tokens, "tokens")))
    (blob_len,) = struct.unpack("<Q", take(8, "state length"))
    head_end = pos
    digest = take(_SHA_LEN, "checksum")
    if size < pos + blob_len:
        raise StateError(f"{what} is truncated: it has {size} bytes, its header announces {pos + blob_len}")
    if size > pos + blob_len:
        raise StateError(f"{what} has {size - pos - blob_len} unexpected bytes after its end "
                         f"(it has {size} bytes, its header announces {pos + blob_len})")
    view = memoryview(data)
    if checksum(bytes(view[:head_end]), view[pos:]) != digest:
        raise StateError(f"{what} is corrupted: its SHA-256 checksum does not match its contents")
    diffs = [f"{name} is {_show(saved[name])} in the state but {_show(fp[name])} in this model"
             for name in FINGERPRINT if saved[name] != fp[name]]
    if diffs:
        raise StateError(f"{what} was saved from another model: " + "; ".join(diffs))
    n_vocab = int(fp["n_vocab"])
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise StateError(f"{what} holds token id {bad}, outside the vocabulary (0..{n_vocab - 1})")
    return Parsed(tokens, pos, blob_len)


def write_file(path: str, parts: Sequence[Any]) -> None:
    """Write ``parts`` (bytes-like) to ``path`` atomically: a temporary file beside it, then a rename.

    The file is readable by its owner only (it holds a conversation).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
