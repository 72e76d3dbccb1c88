"""scripts/build_dist.py and scripts/zig_cc.py: what the prebuilt packages are named and how they are built.

The packages themselves are built and run by scripts/check_dist.py (a long,
documented check); these tests hold the parts that must agree with the
bindings, and the compiler-flag translations, on any machine.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


build_dist = _script("build_dist")
zig_cc = _script("zig_cc")


def test_npm_platform_packages_are_the_ones_the_node_loader_looks_for() -> None:
    out = subprocess.run(["node", "-e", "console.log(JSON.stringify(require('./node/lib/_lib').PLATFORM_PACKAGES))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    node = json.loads(out)
    built = {f"{t.npm_os}-{t.npm_cpu}": t.npm_package for t in build_dist.TARGETS.values()}
    assert built == node


def test_cuda_plugin_packages_are_the_ones_the_loaders_look_for() -> None:
    import mullama._lib as L

    majors = sorted(f.major for f in build_dist.CUDA_FLAVOURS.values())
    assert list(L.PLUGIN_PACKAGES) == [f"mullama_cuda{m}" for m in majors]
    src = (ROOT / "node" / "lib" / "_lib.js").read_text()
    for m in majors:
        assert f"'mullama-linux-x64-cuda{m}'" in src


def test_cuda_runpath_reaches_mullama_and_nvidia_wheels_from_the_plugin_folder() -> None:
    f = build_dist.CUDA_FLAVOURS["cuda13-linux-x64"]
    assert f.runpath.split(":") == ["$ORIGIN/../../mullama/lib", "$ORIGIN/../../nvidia/cu13/lib"]
    assert build_dist.CUDA_FLAVOURS["cuda12-linux-x64"].runpath.endswith("nvidia/cublas/lib")


def test_wheel_tags_are_the_platforms_the_spec_lists() -> None:
    tags = sorted(t.wheel_platform for t in build_dist.TARGETS.values())
    assert tags == ["macosx_11_0_arm64", "macosx_11_0_x86_64", "manylinux2014_aarch64", "manylinux2014_x86_64",
                    "win_amd64"]


def test_cpu_builds_are_portable() -> None:
    for t in build_dist.TARGETS.values():
        d = build_dist.cpu_defines(t)
        assert "-DGGML_NATIVE=OFF" in d and "-DGGML_BACKEND_DL=ON" in d and "-DGGML_CPU_ALL_VARIANTS=ON" in d


@pytest.mark.parametrize("march, mcpu", [
    ("armv8-a", "generic+v8a"),
    ("armv8.2-a+dotprod", "generic+v8_2a+dotprod"),
    ("armv8.2-a+dotprod+fp16+sve", "generic+v8_2a+dotprod+fullfp16+sve"),
    ("armv8.6-a+dotprod+fp16+sve+i8mm+sve2", "generic+v8_6a+dotprod+fullfp16+sve+i8mm+sve2"),
    ("armv9.2-a+dotprod+i8mm+nosve+sme", "generic+v9_2a+dotprod+i8mm-sve+sme"),
])
def test_aarch64_march_becomes_zig_cpu_features(march: str, mcpu: str) -> None:
    assert zig_cc.aarch64_march(march) == mcpu
    assert zig_cc.translate("aarch64-linux-gnu.2.17", ["-O3", f"-march={march}", "-c"]) == ["-O3", f"-mcpu={mcpu}", "-c"]
    # Apple Silicon starts at the M1
    apple = "apple_m1" + mcpu[len("generic"):]
    assert zig_cc.translate("aarch64-macos.11.0", [f"-march={march}"]) == [f"-mcpu={apple}"]


def test_x86_gets_512_bit_vectors_and_macos_modules_become_dylibs() -> None:
    assert zig_cc.translate("x86_64-linux-gnu.2.17", ["-mavx512f"]) == ["-mevex512", "-mavx512f"]
    # and find each other wherever they are installed: named @rpath/<file>, RPATH @loader_path
    assert zig_cc.translate("aarch64-macos.11.0", ["-bundle", "-o", "bin/x.so", "-install_name", "/abs/bin/x.so"]) == [
        "-shared", "-o", "bin/x.so", "-Wl,-install_name,@rpath/x.so", "-Wl,-rpath,@loader_path"]
    assert zig_cc.translate("aarch64-macos.11.0", ["-c", "x.c", "-o", "x.o"]) == ["-c", "x.c", "-o", "x.o"]
    assert zig_cc.translate("x86_64-windows-gnu", ["-bundle"]) == ["-mevex512", "-bundle"]


def _tiny_pe(names: list[str]) -> bytes:
    """A PE32+ image with one section holding an export directory that names ``names``."""
    sect_rva, sect_raw = 0x1000, 0x200
    blob = bytearray()
    names_blob = b"".join(n.encode() + b"\0" for n in names)
    dir_off = 0
    name_ptrs_off = 40
    strings_off = name_ptrs_off + 4 * len(names)
    blob += struct.pack("<IIHHIIIIIII", 0, 0, 0, 0, 0, 1, 0, len(names), 0, sect_rva + name_ptrs_off, 0)
    pos = sect_rva + strings_off
    for n in names:
        blob += struct.pack("<I", pos)
        pos += len(n) + 1
    blob += names_blob
    assert dir_off == 0
    head = bytearray(sect_raw)
    struct.pack_into("<I", head, 0x3C, 0x40)
    head[0x40:0x44] = b"PE\0\0"
    opt_size = 112 + 16 * 8
    struct.pack_into("<HH", head, 0x44, 0x8664, 1)
    struct.pack_into("<H", head, 0x44 + 16, opt_size)
    opt = 0x58
    struct.pack_into("<H", head, opt, 0x20B)
    struct.pack_into("<II", head, opt + 112, sect_rva, len(blob))
    sect = opt + opt_size
    struct.pack_into("<IIII", head, sect + 8, len(blob), sect_rva, len(blob), sect_raw)
    return bytes(head) + bytes(blob)


def test_pe_exports_reads_the_export_names(tmp_path: Path) -> None:
    dll = tmp_path / "x.dll"
    dll.write_bytes(_tiny_pe(["atexit", "ggml_init", "llama_decode"]))
    assert zig_cc.pe_exports(dll) == ["atexit", "ggml_init", "llama_decode"]


def test_a_toolkit_from_debians_packages_is_laid_out_as_nvidias(tmp_path: Path) -> None:
    """cuda_toolkit_debian.lay_out on a tree shaped like the unpacked Debian packages (with NVIDIA's
    symlink chains, and libcublasLt matched by two patterns): every tool, header and library in its
    place under one folder, links kept as links, cuBLAS' static archives left out."""
    toolkit = _script("cuda_toolkit_debian")
    usr = tmp_path / "root" / "usr"
    tk = usr / "lib" / "nvidia-cuda-toolkit"
    multiarch = usr / "lib" / "x86_64-linux-gnu"
    for f in (tk / "bin" / "nvcc", tk / "bin" / "cicc", tk / "bin" / "crt" / "link.stub",
              tk / "libdevice" / "libdevice.10.bc", usr / "bin" / "ptxas", usr / "bin" / "fatbinary",
              usr / "include" / "cuda_runtime.h", usr / "include" / "nv" / "target",
              multiarch / "libnvvm.so.4.0.0", multiarch / "stubs" / "libcuda.so",
              multiarch / "libcudart_static.a", multiarch / "libcublasLt_static.a"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f.name)
    for name, version in (("libcudart", "12.4.127"), ("libcublas", "12.4.5.8"), ("libcublasLt", "12.4.5.8")):
        (multiarch / f"{name}.so.{version}").write_text(name)
        (multiarch / f"{name}.so.12").symlink_to(f"{name}.so.{version}")
        (multiarch / f"{name}.so").symlink_to(f"{name}.so.12")
    (multiarch / "libnvvm.so").symlink_to("libnvvm.so.4.0.0")
    dest = tmp_path / "cuda"
    toolkit.lay_out(tmp_path / "root", dest)
    for f in ("bin/nvcc", "bin/crt/link.stub", "bin/ptxas", "bin/fatbinary", "nvvm/bin/cicc",
              "nvvm/libdevice/libdevice.10.bc", "nvvm/lib64/libnvvm.so", "include/cuda_runtime.h", "include/nv/target",
              "lib64/libcudart_static.a", "lib64/stubs/libcuda.so"):
        assert (dest / f).is_file(), f
    assert "$(TOP)/nvvm/libdevice" in (dest / "bin" / "nvcc.profile").read_text()
    for name in ("libcudart", "libcublas", "libcublasLt"):
        assert (dest / "lib64" / f"{name}.so").is_symlink()
        assert (dest / "lib64" / f"{name}.so").resolve().read_text() == name
    assert not (dest / "lib64" / "libcublasLt_static.a").exists()


def test_the_release_workflow_builds_and_tests_every_package_the_scripts_know() -> None:
    """.github/workflows/release.yml against build_dist's targets: a platform or CUDA flavour added to
    the scripts but not to the workflow would never be published (or published untested)."""
    import yaml  # requirements-dev.txt
    build_dist = _script("build_dist")
    jobs = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())["jobs"]
    assert any("build_dist.py all" in step.get("run", "") for step in jobs["build"]["steps"])
    cuda = {m["target"] for m in jobs["build-cuda"]["strategy"]["matrix"]["include"]}
    assert cuda == set(build_dist.CUDA_FLAVOURS)
    for m in jobs["build-cuda"]["strategy"]["matrix"]["include"]:
        major = build_dist.CUDA_FLAVOURS[m["target"]].major
        assert m["image"].startswith(f"nvidia/cuda:{major}."), m  # nvcc of the flavour's major version
    tested = {(m["wheel"], m["npm"]) for m in jobs["test"]["strategy"]["matrix"]["include"]}
    assert tested == {(t.wheel_platform, t.npm_package) for t in build_dist.TARGETS.values()}
    assert set(jobs["publish"]["needs"]) == {"build", "build-cuda", "test"}
