"""The ctypes mirror of llama.h is checked against the pinned header, so drift fails here.

A C probe compiled against llama.h prints sizeof/offsetof for every field of
every mirrored struct; the declared function table is compared with the
header's prototypes (argument count and coarse type of each argument).
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import pytest

import mullama._lib as L

from .conftest import LLAMA_SRC, compile_c


def test_struct_layouts_match_the_header(tmp_path: Path, c_compiler: str, lib_dir: Path) -> None:
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "llama.h"', '#include "mtmd.h"',
             '#include "mtmd-helper.h"', "int main(void) {"]
    for cname, cls in L.MIRRORED_STRUCTS.items():
        lines.append(f'printf("%s size %zu\\n", "{cname}", sizeof({cname}));')
        for fname, _ in cls._fields_:
            lines.append(f'printf("%s.%s %zu\\n", "{cname}", "{fname}", offsetof({cname}, {fname}));')
    lines += ["return 0;", "}"]
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines))
    exe = compile_c(c_compiler, src, tmp_path / "probe", lib_dir)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    seen = dict(line.rsplit(" ", 1) for line in out.splitlines())
    mismatches = []
    for cname, cls in L.MIRRORED_STRUCTS.items():
        if int(seen[f"{cname} size"]) != ctypes.sizeof(cls):
            mismatches.append(f"sizeof({cname}): C {seen[f'{cname} size']}, ctypes {ctypes.sizeof(cls)}")
        for fname, _ in cls._fields_:
            c_off = int(seen[f"{cname}.{fname}"])
            py_off = getattr(cls, fname).offset
            if c_off != py_off:
                mismatches.append(f"offsetof({cname}, {fname}): C {c_off}, ctypes {py_off}")
    assert not mismatches, "\n".join(mismatches)


def _prototypes(header_path: Path | tuple[Path, ...] = LLAMA_SRC / "include" / "llama.h", api: str = "LLAMA_API",
                prefix: str = "llama_") -> dict[str, tuple[str, list[str]]]:
    paths = header_path if isinstance(header_path, tuple) else (header_path,)
    header = "\n".join(p.read_text() for p in paths)
    header = re.sub(r"//[^\n]*", "", header)
    header = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    protos: dict[str, tuple[str, list[str]]] = {}
    for m in re.finditer(api + r"\s+([^;{]*?)\b(" + prefix + r"\w+)\s*\(([^;{]*?)\)\s*[;,]", header, flags=re.S):
        ret, name, args = m.group(1), m.group(2), " ".join(m.group(3).split())
        params = [] if args in ("", "void") else [a.strip() for a in args.split(",")]
        protos[name] = (" ".join(ret.split()), params)
    return protos


def _kind_of_c(decl: str) -> str:
    decl = decl.replace("const ", "").strip()
    if "*" in decl or "(" in decl or decl.startswith("llama_memory_t") or "_callback" in decl \
            or decl.startswith("ggml_") and decl.split()[0].endswith("_t"):
        return "pointer"
    if decl.startswith("struct ") or decl.split()[0] in ("llama_batch",):
        return "struct:" + decl.replace("struct ", "").split()[0]
    if decl.split()[0] in ("float", "double"):
        return "float"
    if decl.split()[0] == "bool":
        return "bool"
    return "int"


def _kind_of_ctypes(t: object) -> str:
    if t in (ctypes.c_float, ctypes.c_double):
        return "float"
    if t is ctypes.c_bool:
        return "bool"
    if isinstance(t, type) and issubclass(t, ctypes.Structure):
        return "struct:" + t.__name__
    if t in (ctypes.c_void_p, ctypes.c_char_p) or (isinstance(t, type) and issubclass(
            t, (ctypes._Pointer, ctypes._CFuncPtr))):  # type: ignore[attr-defined]
        return "pointer"
    return "int"


GGML_INCLUDE = LLAMA_SRC / "ggml" / "include"
MTMD_INCLUDE = LLAMA_SRC / "tools" / "mtmd"
HEADERS = {  # the declaration table -> the header it mirrors
    "llama": (L.declared_functions, LLAMA_SRC / "include" / "llama.h", "LLAMA_API", "llama_"),
    "ggml-backend": (L.declared_ggml_functions, GGML_INCLUDE / "ggml-backend.h", "GGML_API", "ggml_"),
    "ggml-rpc": (L.declared_rpc_functions, GGML_INCLUDE / "ggml-rpc.h", "GGML_BACKEND_API", "ggml_"),
    "mtmd": (L.declared_mtmd_functions, (MTMD_INCLUDE / "mtmd.h", MTMD_INCLUDE / "mtmd-helper.h"), "MTMD_API",
             "mtmd_"),
}


@pytest.mark.parametrize("table", sorted(HEADERS))
def test_declared_functions_match_the_header(table: str) -> None:
    declared, header, api, prefix = HEADERS[table]
    protos = _prototypes(header, api, prefix)
    problems = []
    for name, (restype, argtypes) in declared().items():
        if name not in protos:
            problems.append(f"{name}: not in {table}'s header")
            continue
        _, params = protos[name]
        if len(params) != len(argtypes):
            problems.append(f"{name}: header has {len(params)} parameters, binding declares {len(argtypes)}")
            continue
        for i, (c, py) in enumerate(zip(params, argtypes)):
            if _kind_of_c(c) != _kind_of_ctypes(py):
                problems.append(f"{name} parameter {i} ({c}): header {_kind_of_c(c)}, binding {_kind_of_ctypes(py)}")
    assert not problems, "\n".join(problems)


def test_struct_returning_functions_return_structs() -> None:
    for name, (restype, _) in L.declared_functions().items():
        if name.endswith("_default_params"):
            assert isinstance(restype, type) and issubclass(restype, ctypes.Structure), name


@pytest.mark.parametrize("field,expected", [("n_batch", 2048), ("n_ubatch", 512), ("n_seq_max", 1)])
def test_defaults_round_trip_through_the_mirror(field: str, expected: int) -> None:
    assert getattr(L.load().llama_context_default_params(), field) == expected


def test_gguf_reader_knows_every_tensor_type() -> None:
    from mullama import _gguf
    header = (LLAMA_SRC / "ggml" / "include" / "ggml.h").read_text()
    m = re.search(r"GGML_TYPE_COUNT\s*=\s*(\d+)", header)
    assert m and int(m.group(1)) == _gguf.GGML_TYPE_COUNT


def test_description_is_what_the_headers_say() -> None:
    """mullama/abi.json is scripts/gen_abi.py's output for the pinned headers, not edited by hand."""
    pytest.importorskip("clang.cindex", reason="libclang (requirements-dev.txt) parses the headers")
    import sys
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "scripts" / "gen_abi.py"), "--check",
                           "--source-dir", str(LLAMA_SRC)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_description_layouts_are_the_compilers(tmp_path: Path, c_compiler: str, lib_dir: Path) -> None:
    """Every struct of llama.h and mtmd.h in abi.json: the size and field offsets the C compiler gives, which the
    ctypes mirrors (built from the description) also give."""
    from mullama import _abi
    structs = {n: s for n, s in _abi.description()["structs"].items() if n.startswith(("llama_", "mtmd_"))
               and all("[" not in t for _, t, _ in s["fields"])}
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "llama.h"', '#include "mtmd.h"',
             '#include "mtmd-helper.h"', "int main(void) {"]
    for name, s in structs.items():
        lines.append(f'printf("{name} size %zu\\n", sizeof(struct {name}));')
        for field, _, _ in s["fields"]:
            lines.append(f'printf("{name}.{field} %zu\\n", offsetof(struct {name}, {field}));')
    lines += ["return 0;", "}"]
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines))
    exe = compile_c(c_compiler, src, tmp_path / "probe", lib_dir)
    seen = dict(line.rsplit(" ", 1) for line in subprocess.run(
        [str(exe)], capture_output=True, text=True, check=True).stdout.splitlines())
    problems = [f"sizeof({n}): C {seen[f'{n} size']}, abi.json {s['size']}" for n, s in structs.items()
                if int(seen[f"{n} size"]) != s["size"]]
    problems += [f"offsetof({n}, {f}): C {seen[f'{n}.{f}']}, abi.json {off}" for n, s in structs.items()
                 for f, _, off in s["fields"] if int(seen[f"{n}.{f}"]) != off]
    assert len(structs) >= 10 and not problems, "\n".join(problems)
    for cname, cls in L.MIRRORED_STRUCTS.items():
        desc = structs[cname.removeprefix("struct ")]
        assert ctypes.sizeof(cls) == desc["size"], cname
        assert [(f, getattr(cls, f).offset) for f, _, _ in desc["fields"]] == [(f, o) for f, _, o in desc["fields"]]


def test_calls_that_never_wait_are_declared_functions() -> None:
    """rules.json's list of calls bound to keep the GIL names functions the binding declares."""
    from mullama import _rules
    names = _rules.RULES["calls_that_never_wait"]["names"]
    assert names and set(names) <= set(L.declared_functions())
    assert L.HELD_GIL == tuple(names)
    held = L.load().held
    for name in names:
        assert callable(getattr(held, name))
