"""EmbeddingGenerator on all-MiniLM-L6-v2 (converted by llama.cpp's converter) against sentence-transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mullama import Context, EmbeddingGenerator, Model, cosine_similarity

REF = np.load(Path(__file__).parent / "data" / "minilm_reference.npz")
SENTENCES = [str(s) for s in REF["sentences"]]


@pytest.fixture(scope="module")
def minilm(minilm_path: Path) -> Model:
    m = Model.load(minilm_path)
    yield m  # type: ignore[misc]
    m.close()


@pytest.fixture(scope="module")
def gen(minilm: Model) -> EmbeddingGenerator:
    return EmbeddingGenerator(minilm)


def _hf_ids(i: int) -> list[int]:
    off = REF["hf_token_offsets"]
    return REF["hf_token_ids"][off[i]:off[i + 1]].tolist()


def test_model_declares_mean_pooling(minilm: Model) -> None:
    assert minilm.architecture == "bert" and minilm.n_embd == 384
    assert minilm.meta("bert.pooling_type") == "1"


def test_matches_sentence_transformers(gen: EmbeddingGenerator, minilm: Model) -> None:
    same_tokens = [i for i in range(len(SENTENCES)) if minilm.tokenize(SENTENCES[i]) == _hf_ids(i)]
    # llama.cpp's WordPiece differs from Hugging Face's only where HF decomposes Hangul syllables.
    differing = sorted(set(range(len(SENTENCES))) - set(same_tokens))
    assert all(any("\uac00" <= ch <= "\ud7a3" for ch in SENTENCES[i]) for i in differing), differing
    assert len(same_tokens) >= 200
    matrix = gen.embed_matrix([SENTENCES[i] for i in same_tokens])
    cos = np.einsum("ij,ij->i", matrix, REF["embeddings"][same_tokens])
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.999, f"{SENTENCES[same_tokens[worst]]!r}: cosine {cos.min()}"


def test_bf16_copy_stays_accurate(minilm_path: Path, minilm: Model, tmp_path: Path) -> None:
    from mullama import quantize
    bf16 = quantize(minilm_path, tmp_path / "minilm-bf16.gguf", "bf16")
    same_tokens = [i for i in range(len(SENTENCES)) if minilm.tokenize(SENTENCES[i]) == _hf_ids(i)]
    with Model.load(bf16) as m:
        matrix = EmbeddingGenerator(m).embed_matrix([SENTENCES[i] for i in same_tokens])
    assert np.einsum("ij,ij->i", matrix, REF["embeddings"][same_tokens]).min() >= 0.999


def test_quantize_errors(tmp_path: Path, minilm_path: Path) -> None:
    from mullama import quantize
    with pytest.raises(ValueError, match="unknown ftype"):
        quantize(minilm_path, tmp_path / "x.gguf", "q9_9")
    with pytest.raises(RuntimeError, match="No such file"):
        quantize(tmp_path / "missing.gguf", tmp_path / "x.gguf")
    with pytest.raises(TypeError):
        quantize(42, tmp_path / "x.gguf")  # type: ignore[arg-type]


def test_batch_equals_one_by_one(gen: EmbeddingGenerator) -> None:
    texts = SENTENCES[:40]
    batch = np.stack(gen.embed_batch(texts))
    single = np.stack([gen.embed(t) for t in texts])
    # Packing changes only the floating-point summation order.
    assert np.abs(batch - single).max() < 1e-3
    assert np.einsum("ij,ij->i", batch, single).min() > 0.99999


def test_shapes_dtype_and_norm(gen: EmbeddingGenerator) -> None:
    e = gen.embed("Hello, world!")
    assert isinstance(e, np.ndarray) and e.dtype == np.float32 and e.shape == (384,)
    assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    assert gen.n_embd == 384
    m = gen.embed_matrix(["a", "b", "c"])
    assert m.shape == (3, 384) and m.dtype == np.float32
    assert gen.embed_batch([]) == []


def test_unnormalized(minilm: Model, gen: EmbeddingGenerator) -> None:
    raw = EmbeddingGenerator(minilm, normalize=False).embed("Hello there")
    assert abs(np.linalg.norm(raw) - 1.0) > 0.01
    assert cosine_similarity(raw, gen.embed("Hello there")) == pytest.approx(1.0, abs=1e-5)


def test_semantic_search_ranks_like_sentence_transformers(gen: EmbeddingGenerator) -> None:
    docs = [str(d) for d in REF["search_documents"]]
    scores = gen.embed_matrix(docs) @ gen.embed(str(REF["search_query"]))
    assert np.argsort(-scores).tolist() == REF["search_order"].tolist()
    assert np.allclose(scores, REF["search_doc_scores"], atol=2e-3)


def test_errors(gen: EmbeddingGenerator, minilm: Model) -> None:
    with pytest.raises(ValueError, match="empty"):
        gen.embed("")
    with pytest.raises(TypeError):
        gen.embed(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        gen.embed_batch("not a list")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        gen.embed_batch(["ok", None])  # type: ignore[list-item]
    long_text = "word " * 600
    with pytest.raises(ValueError, match=r"has \d+ tokens, more than the 512"):
        gen.embed(long_text)
    assert gen.embed(long_text, truncate=True).shape == (384,)
    small = EmbeddingGenerator(minilm, n_ctx=16)
    with pytest.raises(ValueError, match="more than the 16"):
        small.embed("This sentence is certainly longer than sixteen word pieces, it goes on and on and on.")
    with pytest.raises(TypeError):
        EmbeddingGenerator("model.gguf")  # type: ignore[arg-type]


def test_cosine_similarity() -> None:
    a = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert cosine_similarity(a, a) == pytest.approx(1.0)
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)
    assert cosine_similarity([1, 0], [0, 1]) == 0.0
    assert cosine_similarity(np.zeros(3), a) == 0.0  # a zero vector has no direction
    with pytest.raises(ValueError, match="Vectors must have the same length"):
        cosine_similarity(a, np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(ValueError):
        cosine_similarity(np.ones((2, 2)), np.ones((2, 2)))


def test_context_embeddings_api(minilm: Model, gen: EmbeddingGenerator) -> None:
    ctx = Context(minilm, n_ctx=512, embeddings=True)
    assert ctx.get_embeddings() is None  # nothing decoded yet
    ctx.decode(minilm.tokenize("Hello, world!"))
    e = ctx.get_embeddings()
    assert e is not None and e.shape == (384,) and e.dtype == np.float32
    assert cosine_similarity(e, gen.embed("Hello, world!")) == pytest.approx(1.0, abs=1e-5)
    plain = Context(minilm, n_ctx=512)
    plain.decode(minilm.tokenize("Hello"))
    assert plain.get_embeddings() is None


def test_generative_model_embeds_with_mean_pooling(model: Model) -> None:
    g = EmbeddingGenerator(model, n_ctx=256)
    a, b, c = g.embed_batch(["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell."])
    assert a.shape == (576,)
    assert cosine_similarity(a, b) > cosine_similarity(a, c)
    assert cosine_similarity(g.embed("The cat sat on the mat."), a) > 0.9999


def test_embed_tokens_is_embed_matrix_of_the_texts(gen: EmbeddingGenerator, minilm: Model) -> None:
    """Token lists embed exactly as their texts do; bad lists are refused by name (Node: the same test)."""
    texts = ["The cat sat on the mat.", "A quick brown fox", "Embeddings from token ids"]
    ids = [minilm.tokenize(t, add_bos=True) for t in texts]
    assert gen.model is minilm
    assert np.array_equal(gen.embed_tokens(ids), gen.embed_matrix(texts))
    with pytest.raises(ValueError, match=r"token_lists\[1\] is empty"):
        gen.embed_tokens([ids[0], []])
    with pytest.raises(ValueError, match=r"token_lists\[0\]\[1\]"):
        gen.embed_tokens([[ids[0][0], minilm.n_vocab]])
    with pytest.raises(ValueError, match=r"at most"):
        gen.embed_tokens([ids[0] * (gen.max_tokens // len(ids[0]) + 1)])
    with pytest.raises(TypeError, match="token_lists"):
        gen.embed_tokens("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"token_lists\[0\]\[0\]"):
        gen.embed_tokens([[1.5]])  # type: ignore[list-item]
