"""The C API of the pinned llama.cpp, read from ``abi.json`` and mapped to ctypes.

``abi.json`` is written by ``scripts/gen_abi.py`` from llama.cpp's headers with a C parser (libclang);
Node's ``lib/_abi.js`` reads the same file.  Here each recorded C type becomes a ctypes type by a few
rules, so that ``_lib`` only lists the names it uses:

- ``char *`` / ``const char *``: ``c_char_p``; ``uint8_t *``: ``c_void_p`` (byte buffers: any buffer,
  bytearray or NumPy array passes);
- a pointer to a scalar or to a struct that ``_lib`` mirrors: ``POINTER`` of it, and ``T **`` a
  ``POINTER`` of ``T *``'s type; any other pointer (opaque handles, ``void *``): ``c_void_p``;
- ``enum NAME``: ``c_int``; ``struct NAME`` by value: the mirrored class; ``fn NAME``: a ``CFUNCTYPE``
  built from the recorded prototype.
"""

from __future__ import annotations

import ctypes
import json
from ctypes import CFUNCTYPE, POINTER, Structure
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, TypeVar

_S = TypeVar("_S", bound=type[Structure])

PATH: Final = Path(__file__).resolve().parent / "abi.json"

SCALARS: Final[dict[str, Any]] = {
    "bool": ctypes.c_bool, "char": ctypes.c_char, "int": ctypes.c_int, "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long, "unsigned long": ctypes.c_ulong, "float": ctypes.c_float, "double": ctypes.c_double,
    "int8_t": ctypes.c_int8, "uint8_t": ctypes.c_uint8, "int16_t": ctypes.c_int16, "uint16_t": ctypes.c_uint16,
    "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32, "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t, "intptr_t": ctypes.c_ssize_t,
    "uintptr_t": ctypes.c_size_t, "ptrdiff_t": ctypes.c_ssize_t,
}


@lru_cache(maxsize=1)
def description() -> dict[str, Any]:
    """The parsed ``abi.json``."""
    data: dict[str, Any] = json.loads(PATH.read_text(encoding="utf-8"))
    return data


class Mapper:
    """Maps the description's type spellings to ctypes, given the structs mirrored so far."""

    def __init__(self) -> None:
        self.structs: dict[str, type[Structure]] = {}
        self._callbacks: dict[str, Any] = {}

    def callback(self, name: str) -> Any:
        """The ``CFUNCTYPE`` of callback typedef ``name``."""
        if name not in self._callbacks:
            proto = description()["callbacks"][name]
            self._callbacks[name] = CFUNCTYPE(self.ctype(proto["returns"]),
                                              *(self.ctype(t) for _, t in proto["params"]))
        return self._callbacks[name]

    def ctype(self, spelling: str) -> Any:
        t = spelling.strip()
        if t == "void":
            return None
        if t in SCALARS:
            return SCALARS[t]
        if t.startswith("enum "):
            return ctypes.c_int
        if t.startswith("fn "):
            return self.callback(t[3:])
        if t.endswith("]"):
            inner, n = t[:-1].rsplit("[", 1)
            return self.ctype(inner) * int(n)
        if t.endswith("*"):
            inner = t[:-1].strip()
            bare = inner.removeprefix("const ")
            if bare == "char":
                return ctypes.c_char_p
            if bare == "uint8_t" or bare == "void":
                return ctypes.c_void_p
            if bare in SCALARS:
                return POINTER(SCALARS[bare])
            if bare.startswith("struct ") and not bare.endswith("*"):
                cls = self.structs.get(bare[len("struct "):])
                return ctypes.c_void_p if cls is None else POINTER(cls)
            if bare.endswith("*"):
                return POINTER(self.ctype(bare))
            return ctypes.c_void_p
        if t.startswith("struct "):
            name = t[len("struct "):]
            if name not in self.structs:
                raise KeyError(f"struct {name} is passed by value but not mirrored")
            return self.structs[name]
        raise ValueError(f"abi.json: no ctypes mapping for {spelling!r}")

    def fields(self, struct: str) -> list[tuple[str, Any]]:
        """``_fields_`` for the mirror of ``struct``, in the header's order."""
        return [(name, self.ctype(t)) for name, t, _ in description()["structs"][struct]["fields"]]

    def struct(self, cls: _S) -> _S:
        """Register ``cls`` (named as its C struct) so later types can refer to it; returns it."""
        self.structs[cls.__name__] = cls
        return cls

    def signature(self, name: str, overrides: dict[str, Any] | None = None) -> tuple[Any, tuple[Any, ...]]:
        """``(restype, argtypes)`` of function ``name``; ``overrides`` replaces ``"returns"`` or a
        parameter by its name."""
        fn = description()["functions"].get(name)
        if fn is None:
            raise KeyError(f"{name} is not in abi.json (not in the pinned headers)")
        o = overrides or {}
        restype = o["returns"] if "returns" in o else self.ctype(fn["returns"])
        return restype, tuple(o[p] if p in o else self.ctype(t) for p, t in fn["params"])

    def table(self, names: tuple[str, ...], overrides: dict[str, dict[str, Any]] | None = None,
              ) -> dict[str, tuple[Any, tuple[Any, ...]]]:
        o = overrides or {}
        unknown = set(o) - set(names)
        if unknown:
            raise KeyError(f"overrides for functions not used: {sorted(unknown)}")
        return {n: self.signature(n, o.get(n)) for n in names}


def enum(name: str) -> dict[str, int]:
    """The members of C enum ``name`` and their values."""
    values: dict[str, int] = description()["enums"][name]
    return values


def constant(name: str) -> int:
    """An integer ``#define`` of llama.h / mtmd.h."""
    value: int = description()["constants"][name]
    return value
