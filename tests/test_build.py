"""scripts/build_lib.py: arguments, environment, the sdist hash check, and the built library's exports."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_lib", ROOT / "scripts" / "build_lib.py")
assert spec and spec.loader
build_lib = importlib.util.module_from_spec(spec)
sys.modules["build_lib"] = build_lib
spec.loader.exec_module(build_lib)


def test_pin_is_recorded_once() -> None:
    pin = build_lib.load_pin()
    assert pin["llama_cpp_commit"] == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert pin["sdist"]["sha256"] == "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
    import mullama._lib as L
    assert L.PINNED_COMMIT == pin["llama_cpp_commit"]


def test_default_is_native_cpu() -> None:
    cfg = build_lib.parse_args([], env={})
    assert cfg.backend == "cpu" and not cfg.portable
    assert "-DGGML_NATIVE=ON" in cfg.cmake_defines()
    assert not any(d.startswith("-DGGML_CUDA") for d in cfg.cmake_defines())


def test_portable_uses_loadable_cpu_variants() -> None:
    d = build_lib.parse_args(["--portable"], env={}).cmake_defines()
    assert "-DGGML_NATIVE=OFF" in d and "-DGGML_BACKEND_DL=ON" in d and "-DGGML_CPU_ALL_VARIANTS=ON" in d


@pytest.mark.parametrize("var,backend", [("LLAMA_CUDA", "cuda"), ("LLAMA_METAL", "metal"),
                                          ("LLAMA_VULKAN", "vulkan"), ("LLAMA_HIPBLAS", "hip")])
def test_backend_from_environment(var: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_lib, "detect_cuda_arch", lambda: None)
    cfg = build_lib.parse_args([], env={var: "1"})
    assert cfg.backend == backend
    assert build_lib.parse_args([], env={var: "0"}).backend == "cpu"


def test_cuda_arch_default_and_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_lib, "detect_cuda_arch", lambda: None)
    cfg = build_lib.parse_args(["--backend", "cuda"], env={})
    assert f"-DCMAKE_CUDA_ARCHITECTURES={build_lib.DEFAULT_CUDA_ARCHS}" in cfg.cmake_defines()
    monkeypatch.setattr(build_lib, "detect_cuda_arch", lambda: "90")
    assert build_lib.parse_args(["--backend", "cuda"], env={}).cuda_arch == "90"
    cfg = build_lib.parse_args(["--backend", "cuda", "--cuda-arch", "80;90"], env={})
    assert "-DGGML_CUDA=ON" in cfg.cmake_defines() and cfg.cuda_arch == "80;90"


@pytest.mark.parametrize("argv,env,msg", [
    (["--cuda-arch", "90"], {}, "only applies"),
    (["--backend", "cpu"], {"LLAMA_CUDA": "1"}, "contradicts"),
    ([], {"LLAMA_CUDA": "1", "LLAMA_VULKAN": "1"}, "more than one backend"),
    (["--backend", "cuda", "--cuda-arch", "9;0;rm -rf"], {}, "not a list"),
    (["--jobs", "0"], {}, "at least 1"),
    ([], {"CMAKE_ARGS": "-DX='unterminated"}, "CMAKE_ARGS"),
])
def test_bad_arguments_are_refused(argv: list[str], env: dict[str, str], msg: str) -> None:
    with pytest.raises(build_lib.BuildError, match=msg):
        build_lib.parse_args(argv, env=env)


def _fake_toolkit(tmp: Path, version: int | None) -> str:
    nvcc = tmp / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("")
    if version is not None:
        h = tmp / "cuda" / "include" / "cccl" / "cuda" / "std" / "__cccl" / "version.h"
        h.parent.mkdir(parents=True)
        h.write_text(f"#pragma once\n#define CCCL_VERSION {version}\n#define CCCL_MAJOR_VERSION (CCCL_VERSION / 1000000)\n")
    return str(nvcc)


def test_cuda_builds_take_cccl_headers_with_device_topk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A toolkit whose CCCL predates DeviceTopK (3.2) gets the pinned headers; newer ones and CPU builds do not."""
    monkeypatch.setattr(build_lib, "detect_cuda_arch", lambda: "90")
    monkeypatch.setattr(build_lib.platform, "system", lambda: "Linux")
    monkeypatch.setattr(build_lib.platform, "machine", lambda: "x86_64")
    pin = build_lib.load_pin()
    spec = pin["cuda_cccl"]
    assert build_lib.toolkit_cccl_version(_fake_toolkit(tmp_path / "a", 3000001)) == 3000001
    assert build_lib.toolkit_cccl_version(_fake_toolkit(tmp_path / "b", None)) == 0
    cache = tmp_path / "cache"
    # the headers as ensure_cccl leaves them once fetched (no download here)
    (cache / "cccl" / spec["version"] / spec["include"]).mkdir(parents=True)
    cuda = build_lib.parse_args(["--backend", "cuda", "--cache-dir", str(cache)], env={})
    old = build_lib.ensure_cccl(cuda, pin, _fake_toolkit(tmp_path / "c", 3000001))
    flag = f"-DCMAKE_CUDA_FLAGS=-I{(cache / 'cccl' / spec['version'] / spec['include']).resolve().as_posix()}"
    assert flag in old.cmake_defines()
    commit = pin["llama_cpp_commit"]
    assert old.key(commit) != cuda.key(commit)
    new = build_lib.ensure_cccl(cuda, pin, _fake_toolkit(tmp_path / "d", spec["min_toolkit_cccl"]))
    assert new == cuda and not any(d.startswith("-DCMAKE_CUDA_FLAGS") for d in new.cmake_defines())
    opt_out = build_lib.parse_args(["--backend", "cuda", "--toolkit-cccl", "--cache-dir", str(cache)], env={})
    assert build_lib.ensure_cccl(opt_out, pin, _fake_toolkit(tmp_path / "e", 3000001)).cuda_include is None
    cpu = build_lib.parse_args(["--cache-dir", str(cache)], env={})
    assert build_lib.ensure_cccl(cpu, pin, None) == cpu


def test_cmake_args_are_passed_and_change_the_build_key() -> None:
    plain = build_lib.parse_args([], env={})
    extra = build_lib.parse_args([], env={"CMAKE_ARGS": "-DGGML_OPENMP=OFF -DFOO='a b'"})
    assert extra.cmake_defines()[-2:] == ["-DGGML_OPENMP=OFF", "-DFOO=a b"]
    commit = build_lib.load_pin()["llama_cpp_commit"]
    assert plain.key(commit) != extra.key(commit)
    assert plain.key(commit) != build_lib.parse_args(["--portable"], env={}).key(commit)
    assert plain.key(commit) == build_lib.parse_args([], env={}).key(commit)


def test_rpc_is_on_by_default_with_any_backend_and_can_be_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_lib, "detect_cuda_arch", lambda: None)
    commit = build_lib.load_pin()["llama_cpp_commit"]
    default = build_lib.parse_args([], env={})
    assert default.rpc and "-DGGML_RPC=ON" in default.cmake_defines()
    assert build_lib.parse_args(["--rpc"], env={}).key(commit) == default.key(commit)
    cuda = build_lib.parse_args(["--backend", "cuda", "--rpc"], env={}).cmake_defines()
    assert "-DGGML_RPC=ON" in cuda and "-DGGML_CUDA=ON" in cuda
    without = build_lib.parse_args(["--no-rpc"], env={})
    assert "-DGGML_RPC=OFF" in without.cmake_defines() and without.key(commit) != default.key(commit)
    with pytest.raises(SystemExit):
        build_lib.parse_args(["--rpc", "--no-rpc"], env={})


def test_rpc_library_is_bundled_and_exports_the_rpc_functions(lib_dir: Path) -> None:
    import mullama._lib as L
    assert json.loads((lib_dir / "build_info.json").read_text())["rpc"] is True
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib_dir / "libggml-rpc.so")],
                         capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert set(L.declared_rpc_functions()) <= exported
    assert L.load().has_rpc


def test_missing_nvcc_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_lib, "find_nvcc", lambda env=None: None)
    cfg = build_lib.parse_args(["--backend", "cuda", "--cuda-arch", "90"], env={})
    with pytest.raises(build_lib.BuildError, match="nvcc"):
        build_lib.check_tools(cfg, env={})


def test_missing_cmake_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_lib.shutil, "which", lambda name: None)
    with pytest.raises(build_lib.BuildError, match="cmake"):
        build_lib.check_tools(build_lib.parse_args([], env={}), env={})


def _fake_sdist(path: Path, with_subdir: bool = True) -> str:
    with tarfile.open(path, "w:gz") as tar:
        names = ["pkg-1/vendor/llama.cpp/CMakeLists.txt", "pkg-1/vendor/llama.cpp/src/a.c", "pkg-1/other.txt"]
        for name in names if with_subdir else names[2:]:
            data = f"content of {name}".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pin(sha: str, filename: str) -> dict[str, object]:
    return {"llama_cpp_commit": "c0ffee", "sdist": {"name": "pkg", "version": "1", "filename": filename,
                                                   "sha256": sha, "subdir": "vendor/llama.cpp"}}


def test_sdist_is_verified_then_only_the_subdir_extracted(tmp_path: Path) -> None:
    sdist_dir = tmp_path / "cache" / "sdist"
    sdist_dir.mkdir(parents=True)
    sha = _fake_sdist(sdist_dir / "pkg-1.tar.gz")
    src = tmp_path / "native" / "llama.cpp"
    build_lib.ensure_source(src, tmp_path / "cache", _pin(sha, "pkg-1.tar.gz"))
    assert (src / "CMakeLists.txt").read_text() == "content of pkg-1/vendor/llama.cpp/CMakeLists.txt"
    assert (src / "src" / "a.c").exists() and not (src / "other.txt").exists()
    assert (src / build_lib.PIN_MARKER).read_text().strip() == "c0ffee"


def test_corrupted_sdist_is_refused(tmp_path: Path) -> None:
    sdist_dir = tmp_path / "cache" / "sdist"
    sdist_dir.mkdir(parents=True)
    archive = sdist_dir / "pkg-1.tar.gz"
    sha = _fake_sdist(archive)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    src = tmp_path / "native" / "llama.cpp"
    with pytest.raises(build_lib.BuildError, match="sha256"):
        build_lib.ensure_source(src, tmp_path / "cache", _pin(sha, "pkg-1.tar.gz"))
    assert not src.exists() and not archive.exists()  # moved aside, never extracted


def test_archive_without_the_folder_is_refused(tmp_path: Path) -> None:
    sdist_dir = tmp_path / "cache" / "sdist"
    sdist_dir.mkdir(parents=True)
    sha = _fake_sdist(sdist_dir / "pkg-1.tar.gz", with_subdir=False)
    with pytest.raises(build_lib.BuildError, match="no folder"):
        build_lib.ensure_source(tmp_path / "src", tmp_path / "cache", _pin(sha, "pkg-1.tar.gz"))


def test_unreachable_registry_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(*a: object, **k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version (network unreachable)")
    monkeypatch.setattr(build_lib.subprocess, "run", failing_run)
    with pytest.raises(build_lib.BuildError, match=r"could not download pkg==1 .*network unreachable"):
        build_lib.download_sdist(_pin("0" * 64, "pkg-1.tar.gz"), tmp_path)


def test_build_info_names_the_pin(lib_dir: Path) -> None:
    info = json.loads((lib_dir / "build_info.json").read_text())
    assert info["llama_cpp_commit"] == build_lib.load_pin()["llama_cpp_commit"]


def test_library_exports_every_declared_function(lib_dir: Path) -> None:
    import mullama._lib as L
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib_dir / "libllama.so")],
                         capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    missing = [name for name in L.declared_functions() if name not in exported]
    assert not missing, f"libllama does not export: {missing}"


def test_libraries_find_each_other_through_origin(lib_dir: Path) -> None:
    out = subprocess.run(["readelf", "-d", str(lib_dir / "libllama.so")], capture_output=True, text=True).stdout
    assert "$ORIGIN" in out
    assert "libggml.so]" in out  # plain names, no version symlinks


def test_second_build_is_a_noop() -> None:
    # Nothing is compiled or linked again: every object file and library in
    # the cached build tree keeps its modification time.
    cfg = build_lib.parse_args([])
    build_dir = cfg.cache_dir / "build" / cfg.key(str(build_lib.load_pin()["llama_cpp_commit"]))

    def outputs() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in build_dir.rglob("*")
                if p.is_file() and (p.suffix in (".o", ".obj", ".so", ".dylib", ".dll") or ".so." in p.name)}

    before = outputs()
    assert any(p.name.startswith("libllama") for p in before), f"no built libllama under {build_dir}"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_lib.py")], check=True, capture_output=True)
    after = outputs()
    assert after == before, sorted(str(p.relative_to(build_dir)) for p in after if after[p] != before.get(p))
