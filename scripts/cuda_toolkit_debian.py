#!/usr/bin/env python3
"""A CUDA 12 toolkit for `build_dist.py cuda12-linux-x64` on a host without one, from Debian's packages.

    export CUDA_HOME=$(python3 scripts/cuda_toolkit_debian.py)
    PATH=$CUDA_HOME/bin:$PATH python3 scripts/build_dist.py cuda12-linux-x64 --cuda-arch 90

Debian trixie ships NVIDIA's CUDA 12.4 toolkit in non-free.  Its packages are
fetched with apt through a private source list and state (nothing is installed
on the host, no root needed beyond apt's download), unpacked, and laid out as
NVIDIA's installer lays out a toolkit -- bin/, nvvm/, include/, lib64/ -- so
that nvcc, CMake's CUDA support and FindCUDAToolkit find everything under one
folder.  The host's gcc is the host compiler (nvcc 12.4 takes gcc up to 13).
The folder is cached (~/.cache/mullama/tools/cuda-12.4-debian) and its path
printed on the last line.  Needs apt-get and dpkg-deb (Debian or Ubuntu).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_lib  # noqa: E402

SUITE = "trixie"
VERSION = "12.4"
# what building ggml's CUDA backend needs: the compiler (nvcc, cicc, ptxas,
# fatbinary, nvlink), libNVVM, the headers, and the runtime, cuBLAS and cuBLASLt
# to link against (the plugin finds them in NVIDIA's wheels at run time)
PACKAGES = ("nvidia-cuda-toolkit", "nvidia-cuda-dev", "libcudart12", "libcublas12", "libcublaslt12", "libnvvm4",
            "libcub-dev", "libthrust-dev", "libcu++-dev")
NVCC_PROFILE = """\
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
"""


def log(msg: str) -> None:
    print(f"[cuda_toolkit_debian] {msg}", file=sys.stderr, flush=True)


def download(work: Path) -> list[Path]:
    """The packages' .deb files, through a private apt configuration for Debian's SUITE."""
    (work / "lists" / "partial").mkdir(parents=True)
    (work / "cache" / "archives" / "partial").mkdir(parents=True)
    sources = work / "sources.list"
    sources.write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                       f"http://deb.debian.org/debian {SUITE} main contrib non-free\n")
    opts = [f"-o=Dir::Etc::SourceList={sources}", "-o=Dir::Etc::SourceParts=/dev/null",
            f"-o=Dir::State::Lists={work / 'lists'}", f"-o=Dir::Cache={work / 'cache'}",
            "-o=APT::Architecture=amd64", "-o=APT::Architectures::=amd64", "-o=APT::Sandbox::User=root"]
    debs = work / "debs"
    debs.mkdir()
    for cmd in (["apt-get", *opts, "update", "-q"], ["apt-get", *opts, "download", "-q", *PACKAGES]):
        log("$ " + " ".join(cmd[:1] + cmd[len(opts) + 1:]))
        subprocess.run(cmd, cwd=debs, check=True, stdout=subprocess.DEVNULL)
    return sorted(debs.glob("*.deb"))


def lay_out(root: Path, dest: Path) -> None:
    """NVIDIA's toolkit layout under dest, from Debian's files unpacked under root."""
    usr = root / "usr"
    tk = usr / "lib" / "nvidia-cuda-toolkit"
    multiarch = usr / "lib" / "x86_64-linux-gnu"
    (dest / "bin").mkdir(parents=True)
    (dest / "nvvm" / "bin").mkdir(parents=True)
    (dest / "nvvm" / "lib64").mkdir(parents=True)
    # Debian's /usr/bin/nvcc is a script that calls the real one in its own folder
    shutil.copy2(tk / "bin" / "nvcc", dest / "bin" / "nvcc")
    shutil.copytree(tk / "bin" / "crt", dest / "bin" / "crt")
    for tool in ("ptxas", "fatbinary", "nvlink", "cudafe++", "bin2c", "cuobjdump", "nvdisasm", "nvprune", "cu++filt"):
        if (usr / "bin" / tool).exists():
            shutil.copy2(usr / "bin" / tool, dest / "bin" / tool)
    (dest / "bin" / "nvcc.profile").write_text(NVCC_PROFILE)
    shutil.copy2(tk / "bin" / "cicc", dest / "nvvm" / "bin" / "cicc")
    shutil.copytree(tk / "libdevice", dest / "nvvm" / "libdevice")
    for lib in multiarch.glob("libnvvm.so*"):
        shutil.copy2(lib, dest / "nvvm" / "lib64" / lib.name, follow_symlinks=False)
    shutil.copytree(usr / "include", dest / "include", symlinks=True)
    lib64 = dest / "lib64"
    lib64.mkdir()
    libs = {lib for pattern in ("libcudart*", "libcublas*", "libcudadevrt*", "libculibos*")
            for lib in multiarch.glob(pattern)
            if not lib.name.startswith("libcublas") or not lib.name.endswith(".a")}  # libcublas* takes in libcublasLt
    for lib in sorted(libs):
        shutil.copy2(lib, lib64 / lib.name, follow_symlinks=False)
    if (multiarch / "stubs").is_dir():
        shutil.copytree(multiarch / "stubs", lib64 / "stubs", symlinks=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, default=None, help="where the toolkit goes (default: in mullama's cache)")
    a = p.parse_args(argv)
    dest: Path = a.dest or build_lib.default_cache_dir() / "tools" / f"cuda-{VERSION}-debian"
    nvcc = dest / "bin" / "nvcc"
    if not nvcc.exists():
        for tool in ("apt-get", "dpkg-deb"):
            if not shutil.which(tool):
                raise SystemExit(f"cuda_toolkit_debian: {tool} is needed (Debian or Ubuntu)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".cuda-") as tmp:
            work = Path(tmp)
            root = work / "root"
            for deb in download(work):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            staging = work / "toolkit"
            lay_out(root, staging)
            shutil.rmtree(dest, ignore_errors=True)
            staging.rename(dest)
    version = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    log(version.strip().splitlines()[-1])
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
