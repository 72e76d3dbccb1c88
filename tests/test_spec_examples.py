"""The examples of the API spec (shared/spec/python-api.md) run as written; only model paths change."""

from __future__ import annotations

import asyncio
import builtins
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from .spec_examples import COPY_SPEC, SHARED_SPEC, example, with_models


def _run(code: str, name: str = "__spec__", **extra: Any) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": name, **extra}
    exec(compile(code, "<spec example>", "exec"), ns)
    return ns


def test_spec_copy_is_current() -> None:
    if SHARED_SPEC.exists():
        assert COPY_SPEC.read_text(encoding="utf-8") == SHARED_SPEC.read_text(encoding="utf-8"), \
            "tests/data/spec/python-api.md is out of date: copy shared/spec/python-api.md over it"


def test_type_stub_snippet(smollm_path: Path) -> None:
    ns = _run(with_models(example("Type Stubs"), smollm_path))
    assert type(ns["model"]).__name__ == "Model"


def test_quick_start(smollm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(RuntimeWarning):  # n_gpu_layers=-1 on a CPU build says so
        ns = _run(with_models(example("Quick Start"), smollm_path))
    assert isinstance(ns["text"], str) and ns["text"]
    assert capsys.readouterr().out.strip()


def test_streaming_output(smollm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(RuntimeWarning):
        ns = _run(with_models(example("Streaming Output"), smollm_path))
    assert capsys.readouterr().out.strip()
    assert ns["ctx"].n_ctx == 4096


def test_model_and_context_reference_snippets(smollm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load = with_models("from mullama import Model\n" + example("`Model.load(path, ...)`", 1), smollm_path)
    with pytest.warns(RuntimeWarning):
        _run(load)
    ns = _run(with_models("from mullama import Model\n" + example("Properties"), smollm_path))
    assert ns["model"].architecture == "llama"
    out = capsys.readouterr().out
    assert "Architecture: llama" in out and "Model(name=" in out


def test_generate_reference_snippets(model: Any) -> None:
    from mullama import Context, SamplerParams
    ns = {"model": model, "ctx": Context(model, n_ctx=1024), "SamplerParams": SamplerParams}
    exec(example("`ctx.generate(prompt, max_tokens=100, params=None)`", 1), ns)
    assert ns["text"]
    exec(example("Preset Class Methods", 3), ns)
    assert ns["summary"] is not None
    exec(example("`SamplerParams(...)`", 1), ns)
    assert ns["params"].top_k == 50


def test_chat_conversations(smollm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(RuntimeWarning):
        ns = _run(with_models(example("Chat Conversations"), smollm_path))
    roles = [r for r, _ in ns["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert all(c for _, c in ns["messages"])


def test_production_chatbot_with_scripted_input(smollm_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    lines: Iterator[str] = iter(["Hello!", "", "What is 2+2?", "/reset", "Name a fruit.", "/quit", "never read"])

    def scripted_input(prompt: str = "") -> str:
        print(prompt, end="")
        return next(lines)
    monkeypatch.setattr(builtins, "input", scripted_input)
    _run(with_models(example("Complete Production Chatbot"), smollm_path), name="__main__")
    out = capsys.readouterr().out
    assert out.count("Assistant: ") == 3 and "[Conversation reset]" in out
    assert "Architecture: llama" in out and "GPU: CPU only" in out
    assert next(lines) == "never read"


def test_error_handling(smollm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(with_models(example("Error Handling"), smollm_path))
    out = capsys.readouterr().out
    assert "Failed to load: Failed to load model: No such file or directory: ./nonexistent.gguf" in out
    assert "Generation error:" in out
    assert "Similarity error: Vectors must have the same length" in out


def test_memory_management(smollm_path: Path) -> None:
    ns = _run(with_models(example("Context Manager Pattern"), smollm_path))
    assert ns["generate_response"]("Hi")
    _run(example("Explicit Cleanup"))


def test_async_support(smollm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = with_models(example("Async Support"), smollm_path).replace("max_tokens: int = 200", "max_tokens: int = 40")
    with pytest.warns(RuntimeWarning):
        _run(code)
    assert capsys.readouterr().out.count("...") == 3
    asyncio.set_event_loop(asyncio.new_event_loop())


def test_embeddings_and_semantic_search(smollm_path: Path, minilm_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    ns = _run(with_models(example("Embeddings and Semantic Search"), smollm_path, minilm_path))
    assert ns["embedding_matrix"].shape == (6, 384)
    docs = ns["documents"]
    assert docs[ns["ranked_indices"][0]] == "Python is a high-level programming language"
    assert "Search results:" in capsys.readouterr().out


def test_numpy_integration(smollm_path: Path, minilm_path: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ns = _run(with_models(example("NumPy Integration for Embeddings"), smollm_path, minilm_path))
    assert ns["matrix"].shape == (3, 384) and ns["similarity_matrix"].shape == (3, 3)
    assert np.array_equal(ns["loaded"], ns["matrix"])


def test_complete_rag_example(smollm_path: Path, minilm_path: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code = with_models(example("Complete RAG Example with NumPy"), smollm_path, minilm_path)
    with pytest.warns(RuntimeWarning):
        ns = _run(code)
    result = ns["result"]
    assert result["answer"]
    # sentence-transformers ranks these documents 1, 2, 0 (scores 0.4647, 0.3633, 0.3044)
    docs = ns["rag"].documents
    assert [docs.index(s["text"]) for s in result["sources"]] == [1, 2, 0]
    scores = [s["score"] for s in result["sources"]]
    assert np.allclose(scores, [0.4647, 0.3633, 0.3044], atol=2e-3), scores  # the accuracy bar, not more digits
    assert (tmp_path / "mullama_docs.npy").exists()
    assert "Indexed 7 documents" in capsys.readouterr().out
