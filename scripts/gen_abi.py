#!/usr/bin/env python3
"""Write ``mullama/abi.json``: the C API of the pinned llama.cpp, as both bindings declare it.

    python3 scripts/gen_abi.py [--source-dir native/llama.cpp] [--out mullama/abi.json] [--check]

A real C parser (libclang, from PyPI's ``libclang`` wheel) reads the public headers and records:

- ``functions``: every function of ``llama.h``, ``ggml-backend.h``, ``ggml-rpc.h`` and (where the
  source has them) ``mtmd.h`` / ``mtmd-helper.h``: return type, parameter names and types, the header,
  and whether it is deprecated;
- ``callbacks``: the function-pointer typedefs those use, with their prototypes;
- ``structs``: every struct defined there, with each field's type and offset, its size and alignment
  for the target (x86-64 Linux by default; the LP64/LLP64 64-bit targets we ship lay these structs out
  alike, since llama.h uses fixed-width types); ``opaque``: the structs only ever handled by pointer;
- ``enums`` (also ggml.h's) and ``constants`` (integer ``#define``s of llama.h and mtmd.h).

Types are written in one small grammar that both bindings map to their FFI: ``void``, ``bool``,
``char``, ``int``, ``float``, ``double``, the ``<stdint.h>`` names and ``size_t``; ``struct NAME``
(by value); ``enum NAME``; ``fn NAME`` (a callback typedef); ``T *`` with ``const `` kept on the
pointee; ``T[N]`` for array fields.  Typedefs are resolved (``llama_token`` is ``int32_t``,
``ggml_backend_dev_t`` is ``struct ggml_backend_device *``) except the stdint names and callbacks.

The standard headers are small stand-ins written here (clang predefines the type macros they
need), so the output depends only on llama.cpp's headers and the target, not on this machine's C
library.  ``--check`` compares instead of writing and fails when the file is out of date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "mullama" / "abi.json"
TARGET = "x86_64-unknown-linux-gnu"

# header -> whether its functions are recorded (ggml.h only lends its enums)
HEADERS = {
    "include/llama.h": True,
    "ggml/include/ggml.h": False,
    "ggml/include/ggml-backend.h": True,
    "ggml/include/ggml-rpc.h": True,
    "tools/mtmd/mtmd.h": True,
    "tools/mtmd/mtmd-helper.h": True,
}
CONSTANT_HEADERS = ("llama.h", "mtmd.h")
STDINT = ("int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t", "uint64_t",
          "size_t", "intptr_t", "uintptr_t", "ptrdiff_t")

SHIMS = {
    "stdbool.h": "#pragma once\n#define bool _Bool\n#define true 1\n#define false 0\n",
    "stddef.h": "#pragma once\ntypedef __SIZE_TYPE__ size_t;\ntypedef __PTRDIFF_TYPE__ ptrdiff_t;\n"
                "#define NULL ((void *)0)\n#define offsetof(t, f) __builtin_offsetof(t, f)\n",
    "stdint.h": "#pragma once\n" + "".join(
        f"typedef __{m}_TYPE__ {n};\n" for n, m in (
            ("int8_t", "INT8"), ("uint8_t", "UINT8"), ("int16_t", "INT16"), ("uint16_t", "UINT16"),
            ("int32_t", "INT32"), ("uint32_t", "UINT32"), ("int64_t", "INT64"), ("uint64_t", "UINT64"),
            ("intptr_t", "INTPTR"), ("uintptr_t", "UINTPTR"))),
    "stdio.h": "#pragma once\n#include <stddef.h>\ntypedef struct _FILE FILE;\n",
    "stdarg.h": "#pragma once\ntypedef __builtin_va_list va_list;\n",
    "inttypes.h": "#pragma once\n#include <stdint.h>\n",
}


def _clang() -> Any:
    try:
        import clang.cindex as ci
    except ImportError:
        sys.exit("gen_abi: needs libclang (python3 -m pip install libclang)")
    return ci


class Reader:
    def __init__(self, ci: Any) -> None:
        self.ci = ci
        self.callbacks: dict[str, Any] = {}
        self.structs_seen: dict[str, Any] = {}

    def type(self, t: Any) -> str:
        K = self.ci.TypeKind
        if t.kind == K.ELABORATED:
            return self.type(t.get_named_type())
        if t.kind == K.TYPEDEF:
            decl = t.get_declaration()
            name = decl.spelling
            if name in STDINT:
                return name
            under = decl.underlying_typedef_type
            canon = under.get_canonical()
            if canon.kind == K.POINTER and canon.get_pointee().kind in (K.FUNCTIONPROTO, K.FUNCTIONNOPROTO):
                self.callbacks[name] = (canon.get_pointee(), self.callback_names(name, decl))
                return f"fn {name}"
            if canon.kind == K.VOID and name == "va_list":
                return "va_list"
            return self.type(under)
        if t.kind == K.POINTER:
            p = t.get_pointee()
            if p.kind in (K.FUNCTIONPROTO, K.FUNCTIONNOPROTO):
                return "void *"  # an unnamed function pointer: passed as an address
            inner = self.type(p)
            const = "const " if p.is_const_qualified() and not inner.endswith("*") else ""
            return f"{const}{inner}{'*' if inner.endswith('*') else ' *'}"
        if t.kind == K.RECORD:
            decl = t.get_declaration()
            self.structs_seen[decl.spelling] = decl
            return f"struct {decl.spelling}"
        if t.kind == K.ENUM:
            return f"enum {t.get_declaration().spelling}"
        if t.kind == K.CONSTANTARRAY:
            return f"{self.type(t.get_array_element_type())}[{t.get_array_size()}]"
        if t.kind == K.INCOMPLETEARRAY:
            return f"{self.type(t.get_array_element_type())} *"
        builtin = {K.VOID: "void", K.BOOL: "bool", K.CHAR_S: "char", K.SCHAR: "char", K.UCHAR: "uint8_t",
                   K.INT: "int", K.UINT: "unsigned int", K.FLOAT: "float", K.DOUBLE: "double",
                   K.LONG: "long", K.ULONG: "unsigned long", K.LONGLONG: "int64_t", K.ULONGLONG: "uint64_t",
                   K.SHORT: "int16_t", K.USHORT: "uint16_t"}
        if t.kind in builtin:
            return builtin[t.kind]
        if t.kind == K.RECORD or t.get_canonical().kind != t.kind:
            return self.type(t.get_canonical())
        raise ValueError(f"gen_abi: no spelling for type {t.spelling} ({t.kind})")

    def callback_names(self, name: str, decl: Any) -> list[str]:
        return [c.spelling for c in decl.get_children() if c.kind == self.ci.CursorKind.PARM_DECL]

    def proto(self, fn_type: Any, names: list[str] | None = None) -> dict[str, Any]:
        args = list(fn_type.argument_types()) if fn_type.kind == self.ci.TypeKind.FUNCTIONPROTO else []
        names = names or [f"arg{i}" for i in range(len(args))]
        return {"returns": self.type(fn_type.get_result()),
                "params": [[n or f"arg{i}", self.type(a)] for i, (n, a) in enumerate(zip(names, args))]}


def _constant(tokens: list[str]) -> int | None:
    text = "".join(tokens)
    text = text.strip("()")
    m = re.fullmatch(r"(-?)(0[xX][0-9a-fA-F]+|\d+)[uUlL]*", text)
    if not m:
        return None
    return int(m.group(1) + m.group(2), 0)


def generate(src: Path, target: str = TARGET) -> dict[str, Any]:
    ci = _clang()
    pin = json.loads((ROOT / "native" / "pin.json").read_text())
    reader = Reader(ci)
    out: dict[str, Any] = {
        "llama_cpp_commit": pin.get("commit") or pin.get("llama_cpp_commit"),
        "target": target,
        "generated_by": "scripts/gen_abi.py",
        "headers": [],
        "functions": {}, "callbacks": {}, "structs": {}, "opaque": [], "enums": {}, "constants": {},
    }
    with tempfile.TemporaryDirectory() as shim_dir:
        for name, text in SHIMS.items():
            (Path(shim_dir) / name).write_text(text)
        includes = [f"-I{src / d}" for d in ("include", "ggml/include", "tools/mtmd")]
        for rel, record_functions in HEADERS.items():
            path = src / rel
            if not path.exists():
                continue
            out["headers"].append(rel)
            tu = ci.Index.create().parse(
                str(path), args=["-x", "c", "-std=c11", f"--target={target}", "-nostdinc",
                                 f"-isystem{shim_dir}", *includes],
                options=ci.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD)
            errors = [str(d) for d in tu.diagnostics if d.severity >= ci.Diagnostic.Error]
            if errors:
                raise SystemExit("gen_abi: " + rel + ":\n" + "\n".join(errors))
            here = path.name
            for c in tu.cursor.get_children():
                if not c.location.file or Path(c.location.file.name).name != here:
                    continue
                if c.kind == ci.CursorKind.FUNCTION_DECL and record_functions:
                    entry = reader.proto(c.type, [a.spelling for a in c.get_arguments()])
                    entry["header"] = here
                    if c.availability == ci.AvailabilityKind.DEPRECATED:
                        entry["deprecated"] = True
                    out["functions"][c.spelling] = entry
                elif c.kind == ci.CursorKind.ENUM_DECL and c.spelling and not c.spelling.startswith("enum "):
                    out["enums"][c.spelling] = {e.spelling: e.enum_value for e in c.get_children()
                                                if e.kind == ci.CursorKind.ENUM_CONSTANT_DECL}
                elif c.kind == ci.CursorKind.STRUCT_DECL and c.spelling and c.is_definition():
                    reader.structs_seen[c.spelling] = c
                elif c.kind == ci.CursorKind.TYPEDEF_DECL:
                    reader.type(c.type)  # records callbacks and structs reached through typedefs
                elif c.kind == ci.CursorKind.MACRO_DEFINITION and here in CONSTANT_HEADERS:
                    value = _constant([t.spelling for t in c.get_tokens()][1:])
                    if value is not None:
                        out["constants"][c.spelling] = value
    # structs: every one reached, with fields (which may reach more); those without a body are opaque
    done: set[str] = set()
    while set(reader.structs_seen) - done:
        for name in sorted(set(reader.structs_seen) - done):
            done.add(name)
            decl = reader.structs_seen[name]
            definition = decl.get_definition()
            if definition is None:
                out["opaque"].append(name)
                continue
            t = definition.type
            fields = [[f.spelling, reader.type(f.type), f.get_field_offsetof() // 8]
                      for f in definition.get_children() if f.kind == ci.CursorKind.FIELD_DECL]
            out["structs"][name] = {"size": t.get_size(), "align": t.get_align(), "fields": fields}
    for name, (fn_type, names) in sorted(reader.callbacks.items()):
        out["callbacks"][name] = reader.proto(fn_type, names)
    out["opaque"] = sorted(set(out["opaque"]))
    for key in ("functions", "callbacks", "structs", "enums", "constants"):
        out[key] = dict(sorted(out[key].items()))
    return out


def dumps(desc: dict[str, Any]) -> str:
    # one function, struct field or enum per line: diffs of an upgrade read like the API's changes
    text = json.dumps(desc, indent=1)
    text = re.sub(r"\[\n\s*([^\[\]{}]*?)\n\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    return text + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-dir", type=Path, default=ROOT / "native" / "llama.cpp")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--target", default=TARGET)
    ap.add_argument("--check", action="store_true", help="fail if --out differs from what the headers give")
    a = ap.parse_args()
    text = dumps(generate(a.source_dir, a.target))
    if a.check:
        if not a.out.exists() or a.out.read_text() != text:
            print(f"gen_abi: {a.out} is out of date; run python3 scripts/gen_abi.py", file=sys.stderr)
            return 1
        return 0
    a.out.write_text(text)
    print(f"gen_abi: wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
