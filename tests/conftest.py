"""Shared fixtures: the real models, fetched (hash-checked) into the user cache once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LLAMA_SRC = ROOT / "native" / "llama.cpp"
if not (LLAMA_SRC / "include").is_dir() and (ROOT / ".devsrc" / "llama.cpp" / "include").is_dir():
    LLAMA_SRC = ROOT / ".devsrc" / "llama.cpp"  # the trimmed copy benchmarks/gpu_suite.sh carries
sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    from mullama._download import ensure_model
    return ensure_model(quiet=True)


@pytest.fixture(scope="session")
def model(smollm_path: Path):  # type: ignore[no-untyped-def]
    from mullama import Model
    m = Model.load(smollm_path)
    yield m
    m.close()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from convert_minilm import ensure_minilm
    return ensure_minilm()


@pytest.fixture(scope="session")
def lib_dir() -> Path:
    import mullama._lib as L
    return L.load().path.parent


@pytest.fixture(scope="session")
def c_compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.fail("a C compiler is required by the native cross-checks (install gcc)")
    return cc


def compile_c(cc: str, source: Path, out: Path, lib_dir: Path) -> Path:
    """Compile a C program against the pinned llama.h and link it to the library under test."""
    cmd = [cc, "-O1", "-o", str(out), str(source), f"-I{LLAMA_SRC / 'include'}", f"-I{LLAMA_SRC / 'ggml' / 'include'}",
           f"-I{LLAMA_SRC / 'tools' / 'mtmd'}",
           f"-L{lib_dir}", "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib_dir}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def run_python(code: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter (for crash-safety and exit-time checks)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full_env)


def unique_stop_piece(model: Any, generated: list[int], text: str) -> tuple[int, str]:
    """A token of ``generated`` (the tokens of ``text``) whose piece is 3+ characters and first occurs where
    that token starts: ``(its index, its piece)``, to end a generation there with a stop string."""
    for k in range(5, len(generated)):
        piece = model.token_to_piece(generated[k]).decode("utf-8", "replace")
        if len(piece.strip()) >= 3 and text.find(piece) == len(model.detokenize(generated[:k])):
            return k, piece
    raise AssertionError("no token with a unique piece of 3+ characters in the answer")


@pytest.fixture(scope="session")
def lora_files() -> dict[str, Path]:
    """SmolLM2 as F32, a LoRA adapter for it (PEFT, converted by llama.cpp), the merged model (llama.cpp's
    llama-export-lora) and an adapter for another shape: made once by scripts/make_lora.py, cached."""
    from make_lora import ensure_lora
    return ensure_lora()
