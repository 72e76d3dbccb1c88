"""pip builds a platform wheel with the libraries inside, which works from a fresh virtual environment."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("MULLAMA_LIB", "PYTHONPATH")}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, env=env, capture_output=True, text=True)
    wheels = list(out.glob("mullama-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_is_platform_specific_and_carries_the_libraries(wheel: Path) -> None:
    assert wheel.name.startswith("mullama-0.1.0-py3-none-linux_")
    names = zipfile.ZipFile(wheel).namelist()
    for lib in ("libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so", "build_info.json", "LICENSE.llama.cpp"):
        assert f"mullama/lib/{lib}" in names
    assert "mullama/py.typed" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_runs_outside_the_source_tree(wheel: Path, tmp_path: Path, smollm_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MULLAMA_LIB", "PYTHONPATH")}
    code = f"""
import mullama
from mullama import Model, Context, SamplerParams
m = Model.load({str(smollm_path)!r})
print(mullama.__file__)
print(mullama._backend.lib().path)
print(Context(m, n_ctx=256).generate("Hello", max_tokens=4, params=SamplerParams.greedy()) != "")
"""
    r = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    module, lib, ok = r.stdout.split()
    assert str(venv) in module and str(venv) in lib and ok == "True"
    cli = subprocess.run([str(venv / "bin" / "mullama"), "tokenize", str(smollm_path), "Hello, world!"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert cli.stdout.strip() == "[19556, 28, 905, 17]", cli.stderr
