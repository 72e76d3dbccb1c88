"""A bounds-checked walk over a GGUF file's header, before C ever sees it.

llama.cpp's own reader is careful, but a binding that must never take the
process down does not bet on it: this module reads the magic, version, key/
value section and tensor table with every length checked against the file
size, and raises ``GGUFError`` naming the first thing that is wrong.
It also gives cheap access to metadata (e.g. the chat template) without
loading the model.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any, Union

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
GGML_TYPE_COUNT = 43  # GGML_TYPE_COUNT of the pinned ggml.h (tests/test_abi.py checks it)
MAX_STRING = 1 << 30  # as gguf.cpp: GGUF_MAX_STRING_LENGTH
MAX_ARRAY = 1 << 30  # as gguf.cpp: GGUF_MAX_ARRAY_ELEMENTS

# gguf_type -> (struct format, size) for fixed-size scalars
_SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_STRING = 8
_ARRAY = 9

PathLike = Union[str, "os.PathLike[str]"]
Value = Any


class GGUFError(ValueError):
    """The file is not a well-formed GGUF file."""


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"{what} at offset {self.pos} runs past the end of the file ({self.size} bytes)")

    def scalar(self, fmt: str, n: int, what: str) -> Any:
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", 8, what))

    def string(self, what: str, keep: bool = True) -> str | None:
        n = self.u64(f"length of {what}")
        if n > MAX_STRING:
            raise GGUFError(f"{what} claims a length of {n} bytes")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n]) if keep else None
        self.pos += n
        return raw.decode("utf-8", "surrogateescape") if raw is not None else None

    def value(self, typ: int, what: str, keep: bool) -> Value:
        if typ in _SCALARS:
            fmt, n = _SCALARS[typ]
            return self.scalar(fmt, n, what)
        if typ == _STRING:
            return self.string(what, keep)
        if typ == _ARRAY:
            etyp = self.u32(f"element type of {what}")
            count = self.u64(f"length of {what}")
            if count > MAX_ARRAY:
                raise GGUFError(f"{what} claims {count} elements")
            if etyp in _SCALARS:
                fmt, n = _SCALARS[etyp]
                self.need(count * n, what)
                self.pos += count * n
                return None  # arrays of numbers are not needed as Python values
            if etyp == _STRING:
                # each string needs at least its 8-byte length
                self.need(count * 8, what)
                items = [self.string(f"element of {what}", keep) for _ in range(count)]
                return items if keep else None
            raise GGUFError(f"{what} has unsupported element type {etyp}")
        raise GGUFError(f"{what} has unknown value type {typ}")


VOCAB_KEY = "tokenizer.ggml.tokens"


def check_file(path: object, what: str) -> str:
    """``path`` as a text path to a readable GGUF file, or RuntimeError("Failed to load <what>: ...")."""
    fspath = os.fspath(path)  # type: ignore[call-overload]
    if not isinstance(fspath, str):
        raise TypeError("path must be a text path, not bytes")
    if not fspath:  # (Path("") is the current folder)
        raise RuntimeError(f"Failed to load {what}: the path is empty")
    p = Path(fspath)
    if not p.exists():
        raise RuntimeError(f"Failed to load {what}: No such file or directory: {fspath}")
    if p.is_dir():
        raise RuntimeError(f"Failed to load {what}: {fspath} is a directory, not a GGUF file")
    try:
        read_header(p)
    except GGUFError as e:
        raise RuntimeError(f"Failed to load {what}: {fspath} is not a valid GGUF file: {e}") from None
    except OSError as e:
        raise RuntimeError(f"Failed to load {what}: cannot read {fspath}: {e.strerror or e}") from None
    return fspath


def read_header(path: PathLike, keys: frozenset[str] | None = None) -> dict[str, Value]:
    """Validate the whole header of ``path``; return the values of ``keys`` found (scalars and strings).

    Beyond the layout, it checks what llama.cpp asserts on (and would abort
    the process for) while loading a vocabulary: every token text must be
    unique.
    """
    p = Path(os.fspath(path))
    size = p.stat().st_size
    if size == 0:
        raise GGUFError("the file is empty")
    with open(p, "rb") as f:
        if size < 24:
            raise GGUFError(f"the file is only {size} bytes long, too short for a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            found = _walk(_Reader(m, size), (keys or frozenset()) | {VOCAB_KEY})
    tokens = found.get(VOCAB_KEY)
    if isinstance(tokens, list) and len(set(tokens)) != len(tokens):
        seen: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t in seen:
                raise GGUFError(f"{VOCAB_KEY} lists {t!r} twice (ids {seen[t]} and {i}); "
                                f"llama.cpp cannot load a vocabulary with duplicate tokens")
            seen[t] = i
    if keys is None or VOCAB_KEY not in keys:
        found.pop(VOCAB_KEY, None)
    return found


def _walk(r: _Reader, keys: frozenset[str]) -> dict[str, Value]:
    magic = bytes(r.buf[0:4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"bad magic {magic!r}, expected {GGUF_MAGIC!r}: not a GGUF file")
    r.pos = 4
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("key/value count")
    # Every key/value pair takes at least 13 bytes, every tensor info 28.
    if n_kv * 13 > r.size:
        raise GGUFError(f"header claims {n_kv} key/value pairs, more than a {r.size}-byte file can hold")
    if n_tensors * 28 > r.size:
        raise GGUFError(f"header claims {n_tensors} tensors, more than a {r.size}-byte file can hold")
    found: dict[str, Value] = {}
    alignment = 32
    for i in range(n_kv):
        key = r.string(f"key #{i}") or ""
        typ = r.u32(f"type of key {key!r}")
        val = r.value(typ, f"value of {key!r}", keep=key in keys or key == "general.alignment")
        if key == "general.alignment":
            if not isinstance(val, int) or val <= 0 or val & (val - 1):
                raise GGUFError(f"general.alignment is {val!r}, not a power of two")
            alignment = val
        if key in keys:
            found[key] = val
    for i in range(n_tensors):
        name = r.string(f"name of tensor #{i}") or ""
        n_dims = r.u32(f"dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        for d in range(n_dims):
            if r.u64(f"dimension {d} of tensor {name!r}") >= 1 << 62:
                raise GGUFError(f"tensor {name!r} has an absurd dimension")
        ttype = r.u32(f"type of tensor {name!r}")
        if ttype >= GGML_TYPE_COUNT:
            raise GGUFError(f"tensor {name!r} has unknown type {ttype}")
        offset = r.u64(f"offset of tensor {name!r}")
        if offset >= r.size:
            raise GGUFError(f"tensor {name!r} starts at {offset}, past the end of the file")
    data_start = (r.pos + alignment - 1) // alignment * alignment
    if n_tensors and data_start > r.size:
        raise GGUFError("the tensor data section starts past the end of the file")
    return found
