"""The `mullama` command line, driven as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mullama", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=300)


def test_run_streams_greedy_text(smollm_path: Path) -> None:
    from mullama import Context, Model, SamplerParams
    expected = Context(Model.load(smollm_path), n_ctx=512).generate("Once upon a time", max_tokens=20,
                                                                    params=SamplerParams.greedy())
    r = cli("run", str(smollm_path), "Once upon a time", "--preset", "greedy", "-n", "20", "--ctx", "512")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"


def test_default_model_is_used_for_dash(smollm_path: Path) -> None:
    r = cli("tokenize", "-", "Hello, world!")
    assert r.stdout.strip() == "[19556, 28, 905, 17]", r.stderr


def test_tokenize_pieces(smollm_path: Path) -> None:
    r = cli("tokenize", str(smollm_path), "<|im_start|>Hi", "--special", "--show-pieces")
    assert r.stdout.splitlines()[0] == "1 '<|im_start|>'"


def test_info(smollm_path: Path) -> None:
    r = cli("info", str(smollm_path))
    assert r.returncode == 0, r.stderr
    assert "libllama" in r.stdout and "0c1e57098bba43ac29e6e3b677cdceebdd22334f" in r.stdout
    assert "architecture: llama" in r.stdout and "n_params: 134515008" in r.stdout
    assert "general.name: Smollm2" in r.stdout


def test_embed_json_and_npy(minilm_path: Path, tmp_path: Path) -> None:
    r = cli("embed", str(minilm_path), "first text", "second text")
    vectors = json.loads(r.stdout)
    assert len(vectors) == 2 and len(vectors[0]) == 384
    out = tmp_path / "v.npy"
    cli("embed", str(minilm_path), "first text", "second text", "-o", str(out))
    arr = np.load(out)
    assert arr.shape == (2, 384) and np.allclose(arr, np.array(vectors, dtype=np.float32), atol=1e-6)


def test_chat_with_reset_and_quit(smollm_path: Path) -> None:
    r = cli("chat", str(smollm_path), "--preset", "greedy", "-n", "16", "--ctx", "1024",
            stdin="Hello!\n/reset\nName a fruit.\n/quit\nnot read\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Assistant: ") == 2 and "[Conversation reset]" in r.stdout


def test_errors_are_reported_not_raised(tmp_path: Path) -> None:
    r = cli("run", str(tmp_path / "missing.gguf"), "Hi")
    assert r.returncode == 1
    assert r.stderr.strip() == f"mullama: error: Failed to load model: No such file or directory: {tmp_path}/missing.gguf"
    r = cli("run", "-", "Hi", "--temperature", "-1")
    assert r.returncode == 1 and "temperature must be >= 0.0" in r.stderr


def test_run_with_a_quantized_cache(smollm_path: Path) -> None:
    from mullama import Context, Model, SamplerParams
    expected = Context(Model.load(smollm_path), n_ctx=512, type_k="q8_0", type_v="q8_0", flash_attn=True).generate(
        "Once upon a time", max_tokens=12, params=SamplerParams.greedy())
    r = cli("run", str(smollm_path), "Once upon a time", "--preset", "greedy", "-n", "12", "--ctx", "512",
            "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--flash-attn", "on")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"
    r = cli("run", str(smollm_path), "Hi", "-n", "2", "--cache-type-v", "q4_0", "--flash-attn", "off")
    assert r.returncode != 0 and "needs flash attention" in r.stderr


def test_run_with_drafts(smollm_path: Path) -> None:
    from mullama import Context, Model, SamplerParams
    prompt = "Say it twice: the cat sat on the mat. the cat sat on the mat. the cat"
    expected = Context(Model.load(smollm_path), n_ctx=512).generate(prompt, max_tokens=16,
                                                                    params=SamplerParams.greedy())
    for flags in (["--lookup", "3", "--draft-max", "6"], ["--draft-model", str(smollm_path), "--draft-max", "4"]):
        r = cli("run", str(smollm_path), prompt, "--preset", "greedy", "-n", "16", "--ctx", "512", *flags)
        assert r.returncode == 0, r.stderr
        assert r.stdout == expected + "\n"
    r = cli("run", str(smollm_path), "Hi", "-n", "2", "--lookup", "3", "--draft-model", str(smollm_path))
    assert r.returncode != 0 and "use one" in r.stderr
    r = cli("run", str(smollm_path), "Hi", "-n", "2", "--draft-max", "4")
    assert r.returncode != 0 and "--draft-max needs --draft-model or --lookup" in r.stderr
