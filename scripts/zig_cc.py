#!/usr/bin/env python3
"""The C/C++ compiler that scripts/build_dist.py gives CMake: `zig cc` / `zig c++` for one target.

    zig_cc.py ZIG TARGET cc|c++ [compiler arguments...]

Zig's clang driver takes almost every flag ggml's build passes; this wrapper
mends the few it does not:

* AArch64: ggml names each CPU variant with GCC's `-march=armv8.2-a+dotprod+fp16`;
  zig reads -march as a CPU model name, so it becomes
  `-mcpu=generic+v8_2a+dotprod+fullfp16` (the same features in zig's names;
  on macOS from the Apple M1 up rather than a generic core).
* x86-64: zig spells out every feature of its baseline CPU, 512-bit vectors
  (evex512) among those turned off, and -mavx512f alone does not bring them
  back; -mevex512 does, and enables nothing by itself.
* macOS: CMake links ggml's loadable backends with -bundle, which zig's Mach-O
  linker does not make; they are linked as ordinary dylibs (-shared), which
  dlopen loads the same way.  CMake names each library by its absolute path
  in the build tree (-install_name) and adds no RPATH for a cross build;
  each gets `@rpath/<its file name>` and the RPATH `@loader_path`, so that
  the libraries find each other in whatever folder they are installed.
* Windows (MinGW ABI): every symbol of a DLL is exported, so the C runtime's
  startup symbols (atexit, ...) linked into each DLL appear in its import
  library, and the next DLL linked against it meets them twice.  After a DLL
  is linked, its import library is written again without them.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

AARCH64_FEATURES = {"fp16": "fullfp16", "dotprod": "dotprod", "sve": "sve", "sve2": "sve2", "i8mm": "i8mm",
                    "sme": "sme"}
# C runtime symbols each MinGW DLL carries for itself (crt2/dllcrt2, libunwind)
MINGW_CRT_EXPORTS = {"atexit", "_CRT_INIT", "___chkstk", "__chkstk", "__mingw_module_is_dll",
                     "__unw_getcontext", "unw_getcontext"}


def aarch64_march(value: str, base_cpu: str = "generic") -> str:
    """`armv8.2-a+dotprod+nosve` -> `generic+v8_2a+dotprod-sve`.

    On macOS the base is the Apple M1, the oldest Apple Silicon, whose
    features zig's intrinsic headers expect there (AES and the rest).
    """
    base, *tags = value.split("+")
    m = re.fullmatch(r"armv(\d+)(?:\.(\d+))?-a", base)
    if not m:
        raise SystemExit(f"zig_cc: cannot translate -march={value}")
    version = f"v{m.group(1)}" + (f"_{m.group(2)}" if m.group(2) and m.group(2) != "0" else "") + "a"
    out = f"{base_cpu}+{version}"
    for tag in tags:
        if tag.startswith("no"):
            out += "-" + AARCH64_FEATURES.get(tag[2:], tag[2:])
        else:
            out += "+" + AARCH64_FEATURES.get(tag, tag)
    return out


def translate(target: str, args: list[str]) -> list[str]:
    macos = "macos" in target
    linking = macos and ("-shared" in args or "-bundle" in args or "-dynamiclib" in args) and "-o" in args
    out = []
    skip = False
    for a in args:
        if skip:  # the value of -install_name, replaced below
            skip = False
            continue
        if linking and a == "-install_name":
            skip = True
            continue
        if target.startswith("aarch64") and a.startswith("-march=armv"):
            out.append("-mcpu=" + aarch64_march(a.split("=", 1)[1], "apple_m1" if "macos" in target else "generic"))
        elif "macos" in target and a == "-bundle":
            out.append("-shared")
        else:
            out.append(a)
    if target.startswith("x86_64"):
        out.insert(0, "-mevex512")
    if linking:
        # found through the loading library's own folder wherever the package is installed
        name = Path(args[args.index("-o") + 1]).name
        out += ["-Wl,-install_name,@rpath/" + name, "-Wl,-rpath,@loader_path"]
    return out


def pe_exports(dll: Path) -> list[str]:
    """The names in a PE file's export table."""
    data = dll.read_bytes()
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    n_sections, opt_size = struct.unpack_from("<H", data, pe + 6)[0], struct.unpack_from("<H", data, pe + 20)[0]
    opt = pe + 24
    magic = struct.unpack_from("<H", data, opt)[0]
    dirs = opt + (112 if magic == 0x20B else 96)
    export_rva = struct.unpack_from("<I", data, dirs)[0]
    if export_rva == 0:
        return []
    sections = [struct.unpack_from("<IIII", data, opt + opt_size + 40 * i + 8) for i in range(n_sections)]

    def offset(rva: int) -> int:
        for vsize, vaddr, rawsize, rawptr in sections:
            if vaddr <= rva < vaddr + max(vsize, rawsize):
                return rva - vaddr + rawptr
        raise ValueError(f"RVA {rva:#x} is in no section of {dll}")

    exp = offset(export_rva)
    n_names, _, names_rva = struct.unpack_from("<III", data, exp + 24)
    names = []
    for i in range(n_names):
        name_rva = struct.unpack_from("<I", data, offset(names_rva) + 4 * i)[0]
        start = offset(name_rva)
        names.append(data[start:data.index(b"\0", start)].decode())
    return names


def rewrite_import_library(zig: str, dll: Path, implib: Path) -> None:
    names = [n for n in pe_exports(dll) if n not in MINGW_CRT_EXPORTS]
    with tempfile.TemporaryDirectory() as tmp:
        deffile = Path(tmp) / (dll.stem + ".def")
        deffile.write_text(f"LIBRARY {dll.name}\nEXPORTS\n" + "".join(f"    {n}\n" for n in names))
        subprocess.run([zig, "dlltool", "-m", "i386:x86-64", "-d", str(deffile), "-D", dll.name, "-l", str(implib)],
                       check=True)


def main() -> int:
    zig, target, mode, *args = sys.argv[1:]
    cmd = [zig, mode, "-target", target, *translate(target, args)]
    if not ("windows" in target and "-shared" in args):
        os.execv(zig, cmd)
    code = subprocess.run(cmd).returncode
    if code != 0:
        return code
    dll = Path(args[args.index("-o") + 1]) if "-o" in args else None
    implib = next((a[len("-Wl,--out-implib,"):] for a in args if a.startswith("-Wl,--out-implib,")), None)
    if dll is not None and implib is not None and dll.suffix.lower() == ".dll":
        rewrite_import_library(zig, dll, Path(implib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
