#!/usr/bin/env python3
"""llama.cpp's command-line tools, built from the pinned source for the scripts that need them.

    python scripts/llama_tools.py llama-mtmd-cli     # prints the tool's path, building it first when absent

    from llama_tools import ensure_tool
    exe = ensure_tool("llama-export-lora")

All tools share one static build tree per pin, <cache>/build/<commit>-tools-<digest>/, configured once
with TOOL_DEFINES (no shared libraries, no network, no server); each tool is built on first use, only
its own target, so a second tool reuses the objects the first one compiled.  <cache> is MULLAMA_CACHE
(default ~/.cache/mullama), as for scripts/build_lib.py.

Needs cmake, a C++ compiler and the llama.cpp source in native/llama.cpp
(python scripts/build_lib.py fetches it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_lib import available_cpus, default_cache_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "native"
PIN_FILE = NATIVE_DIR / "pin.json"
DEFAULT_SOURCE_DIR = NATIVE_DIR / "llama.cpp"

# Only what the tools need: static libraries, no network, no server.  Part of the build folder's
# name (tool_build_dir): changing them starts a new build tree.
TOOL_DEFINES = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_RPC=OFF",
    "-DGGML_BACKEND_DL=OFF",
)

# A source file of each tool the scripts use, to say "fetch the source" rather than let cmake fail
# on a missing target.  Other targets of the tools tree build too; they are only not checked first.
TOOL_SOURCES = {
    "llama-export-lora": "tools/export-lora/export-lora.cpp",
    "llama-mtmd-cli": "tools/mtmd/mtmd-cli.cpp",
    "llama-perplexity": "tools/perplexity/perplexity.cpp",
}


class ToolError(RuntimeError):
    """Building a tool failed; the message says what happened and what to do."""


def log(msg: str) -> None:
    print(f"[llama_tools] {msg}", file=sys.stderr, flush=True)


def llama_cpp_commit() -> str:
    try:
        with open(PIN_FILE, encoding="utf-8") as f:
            return str(json.load(f)["llama_cpp_commit"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def run(cmd: Sequence[str], what: str, *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        verbose: bool = False, error: type[RuntimeError] = ToolError) -> str:
    """Run cmd and return its output; on failure raise ``error`` with the tail of that output
    (the model-making scripts pass their own error class)."""
    if verbose:
        returncode = subprocess.run(list(cmd), cwd=cwd, env=env).returncode
        output = ""
    else:
        proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
        returncode = proc.returncode
        output = (proc.stdout or "") + (proc.stderr or "")
    if returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-20:])
        raise error(f"{what} failed (exit {returncode}): {' '.join(cmd)}" + (f"\n{tail}" if tail else ""))
    return output


def tool_build_dir(cache_dir: Path, commit: str) -> Path:
    """<cache>/build/<commit>-tools-<digest>: one tree per pin, defines and compiler."""
    material = json.dumps({
        "commit": commit,
        "defines": TOOL_DEFINES,
        "cc": os.environ.get("CC", ""),
        "cxx": os.environ.get("CXX", ""),
    }, sort_keys=True)
    digest = hashlib.sha256(material.encode()).hexdigest()[:12]
    return cache_dir / "build" / f"{commit[:10]}-tools-{digest}"


def ensure_tool(name: str, cache_dir: Path | None = None, *, source_dir: Path | None = None,
                jobs: int | None = None, verbose: bool = False) -> Path:
    """<cache>/build/<commit>-tools-<digest>/bin/<name>, configured and built when absent.

    A marker per tool, written after a successful build, tells a finished executable from one whose
    link was interrupted.
    """
    cache = cache_dir or default_cache_dir()
    src = source_dir or DEFAULT_SOURCE_DIR
    probe = src / TOOL_SOURCES.get(name, "CMakeLists.txt")
    if not probe.is_file():
        raise ToolError(f"the llama.cpp source is missing ({probe} not found); "
                        f"run `python scripts/build_lib.py` first, it fetches the pinned source")
    if not shutil.which("cmake"):
        raise ToolError("cmake was not found on PATH; install CMake 3.14 or newer")
    commit = llama_cpp_commit()
    build = tool_build_dir(cache, commit)
    exe = build / "bin" / name
    done = build / f".mullama-built-{name}"
    if exe.is_file() and done.is_file():
        return exe
    build.mkdir(parents=True, exist_ok=True)
    if not (build / "CMakeCache.txt").is_file():
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        log(f"configuring llama.cpp tools in {build}")
        run(["cmake", "-S", str(src), "-B", str(build), *gen, *TOOL_DEFINES], "cmake configure", verbose=verbose)
    n = jobs or available_cpus()
    log(f"building {name} with {n} jobs (minutes the first time, less once another tool was built)")
    run(["cmake", "--build", str(build), "--target", name, "-j", str(n)], f"building {name}", verbose=verbose)
    if not exe.is_file():
        raise ToolError(f"the build finished but {exe} is missing")
    done.write_text(commit + "\n", encoding="utf-8")
    return exe


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("tools", nargs="+", help="targets to build, e.g. llama-mtmd-cli")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: $MULLAMA_CACHE or ~/.cache/mullama)")
    parser.add_argument("--source-dir", type=Path, default=None,
                        help=f"llama.cpp source (default: {DEFAULT_SOURCE_DIR})")
    parser.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: usable CPUs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the build's output")
    args = parser.parse_args(argv)
    try:
        for name in args.tools:
            print(ensure_tool(name, args.cache_dir, source_dir=args.source_dir, jobs=args.jobs,
                              verbose=args.verbose))
    except ToolError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
