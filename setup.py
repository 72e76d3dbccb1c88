"""Packaging hook: building the wheel also builds libllama (scripts/build_lib.py) into mullama/lib.

Set LLAMA_CUDA=1 (or --backend through MULLAMA_BUILD_ARGS, e.g. "--backend cuda
--cuda-arch 90") for a GPU build, and MULLAMA_PORTABLE=1 for a build that runs
on any CPU of the architecture (all variants, picked at run time).

scripts/build_dist.py makes the prebuilt wheels through the same hook:
MULLAMA_PREBUILT_LIBS names a folder of libraries built for another platform
(copied instead of building here) and MULLAMA_WHEEL_PLATFORM the platform tag
they really need (e.g. manylinux2014_x86_64).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent


class BuildPyWithLibrary(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "mullama" / "lib"
        prebuilt = os.environ.get("MULLAMA_PREBUILT_LIBS")
        if prebuilt:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(prebuilt, target)
            return
        args = shlex.split(os.environ.get("MULLAMA_BUILD_ARGS", ""))
        if os.environ.get("MULLAMA_PORTABLE", "") not in ("", "0") and "--portable" not in args:
            args.append("--portable")
        subprocess.check_call([sys.executable, str(ROOT / "scripts" / "build_lib.py"), "--install-dir", str(target),
                               *args])


class PlatformWheel(bdist_wheel):
    """ctypes needs no CPython ABI, but the bundled libraries are platform-specific."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        _, _, plat = super().get_tag()
        return "py3", "none", os.environ.get("MULLAMA_WHEEL_PLATFORM") or plat


class BinaryDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel}, distclass=BinaryDistribution)
