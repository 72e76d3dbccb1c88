"""Tokenizer fidelity: llama.cpp's own test vectors for every vocab-only GGUF, round trips, Unicode."""

from __future__ import annotations

from pathlib import Path

import pytest

from mullama import Model

from .conftest import LLAMA_SRC

VOCABS = sorted(p for p in (LLAMA_SRC / "models").glob("ggml-vocab-*.gguf") if Path(str(p) + ".inp").exists())
SEP = "\n__ggml_vocab_test__\n"


def _cases(vocab: Path) -> list[tuple[str, list[int]]]:
    raw = Path(str(vocab) + ".inp").read_text(encoding="utf-8")
    texts, pos = [], 0
    while pos < len(raw):  # the same split as tests/test-tokenizer-0.cpp
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    outs = Path(str(vocab) + ".out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(outs), vocab.name
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


def test_there_are_vocab_vectors() -> None:
    assert len(VOCABS) >= 15


@pytest.mark.parametrize("vocab", VOCABS, ids=lambda p: p.name.removeprefix("ggml-vocab-").removesuffix(".gguf"))
def test_llama_cpp_tokenizer_vectors(vocab: Path) -> None:
    with Model.load(vocab, vocab_only=True) as m:
        failures = []
        cases = _cases(vocab)
        for text, expected in cases:
            got = m.tokenize(text, add_bos=False)
            if got != expected:
                failures.append(f"{text!r}: expected {expected}, got {got}")
            # detokenize agrees with the ids llama.cpp expects
            assert m.detokenize(got) == m.detokenize(expected)
        assert not failures, "\n".join(failures[:5])
        assert len(cases) > 10


# Vocabularies whose decoding is lossless.  The others apply Hugging Face's
# clean_up_tokenization_spaces (" ?" -> "?") or normalise (BERT lowercases),
# exactly as their reference tokenizers do, so they cannot round-trip every text.
BYTE_LEVEL = ["qwen2", "qwen35", "deepseek-coder", "deepseek-llm", "command-r", "llama-spm", "phi-3"]


@pytest.mark.parametrize("name", BYTE_LEVEL)
def test_byte_level_vocabs_round_trip_exactly(name: str) -> None:
    vocab = LLAMA_SRC / "models" / f"ggml-vocab-{name}.gguf"
    with Model.load(vocab, vocab_only=True) as m:
        for text, _ in _cases(vocab):
            assert m.detokenize(m.tokenize(text, add_bos=False)) == text


UNICODE = ["café naïve", "日本語のテキスト", "🦙🚀 emoji 👩‍👩‍👧", "e\u0301 combining", "Ω≈ç√∫", "\u200b zero width",
           "mixed ASCII and 中文 and العربية", "tab\tnew\nline  spaces"]


@pytest.mark.parametrize("text", UNICODE)
def test_unicode_round_trips_on_the_real_model(model: Model, text: str) -> None:
    assert model.detokenize(model.tokenize(text, add_bos=False)) == text


def test_lone_surrogate_is_a_clear_error(model: Model) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        model.tokenize("bad \ud800 text")


def test_special_tokens(model: Model) -> None:
    text = "<|im_start|>user"
    assert model.tokenize(text, add_bos=False, special=True) == [1, 4093]
    assert 1 not in model.tokenize(text, add_bos=False, special=False)
    assert model.detokenize([1, 4093]) == "user"  # special tokens are not rendered by default
    assert model.detokenize([1, 4093], unparse_special=True) == "<|im_start|>user"


def test_known_ids(model: Model) -> None:
    assert model.tokenize("Hello, world!") == [19556, 28, 905, 17]
    assert model.detokenize([19556, 28, 905, 17]) == "Hello, world!"
    assert model.tokenize("") == []


def test_out_of_vocabulary_ids_raise_value_error(model: Model) -> None:
    for bad in ([49152], [-1], [5, 2**31], [1, 2, 10**12]):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model.detokenize(bad)


@pytest.mark.parametrize("bad", ["abc", [1.5], [None], 7, [True]])
def test_wrong_token_types_raise_type_error(model: Model, bad: object) -> None:
    with pytest.raises(TypeError):
        model.detokenize(bad)  # type: ignore[arg-type]


def test_tokenize_type_errors(model: Model) -> None:
    with pytest.raises(TypeError):
        model.tokenize(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        model.tokenize("x", add_bos=1)  # type: ignore[arg-type]


def test_numpy_token_arrays_are_accepted(model: Model) -> None:
    import numpy as np
    assert model.detokenize(np.array([19556, 28, 905, 17], dtype=np.int32)) == "Hello, world!"


def test_long_text(model: Model) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 2000
    ids = model.tokenize(text, add_bos=False)
    assert 20000 <= len(ids) <= 20001
    assert model.detokenize(ids) == text
