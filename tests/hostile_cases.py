"""Bad inputs across the public API, run in a child process by tests/test_reliability.py.

Each case is (name, expected exception class name or None, message substring,
callable).  The child prints one JSON line per case, flushed before the next
starts, so a crash names the case that caused it.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

import mullama
from mullama import Context, EmbeddingGenerator, Model, SamplerParams, cosine_similarity

Case = tuple[str, "str | None", str, Callable[[], Any]]


def gguf(*, version: int = 3, n_tensors: int = 0, n_kv: int = 0, body: bytes = b"", magic: bytes = b"GGUF") -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv) + body


def kv_string(key: str, value: bytes, claimed: int | None = None) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(value) if claimed is None else claimed) + value


def cases(smollm: Path, minilm: Path, tmp: Path) -> list[Case]:
    model = Model.load(smollm)
    ctx = Context(model, n_ctx=256)
    closed_model = Model.load(smollm, vocab_only=True)
    closed_model.close()
    closed_ctx = Context(model, n_ctx=256)
    closed_ctx.close()
    emb = EmbeddingGenerator(Model.load(minilm))
    real = smollm.read_bytes()[:1 << 20]

    def file(name: str, data: bytes) -> Path:
        p = tmp / name
        p.write_bytes(data)
        return p

    def load(data: bytes, name: str) -> Callable[[], Any]:
        return lambda: Model.load(file(name, data))

    rnd = np.random.default_rng(0).bytes(8192)
    corrupt_count = bytearray(real)
    corrupt_count[16:24] = struct.pack("<Q", 2**60)  # n_kv
    bad_string = gguf(n_kv=1, body=kv_string("general.name", b"x", claimed=2**40))
    bad_dims = gguf(n_tensors=1, body=struct.pack("<Q", 1) + b"t" + struct.pack("<I", 9) + b"\0" * 80)
    bad_type = gguf(n_tensors=1, body=struct.pack("<Q", 1) + b"t" + struct.pack("<IQI", 1, 4, 999) + b"\0" * 16)
    bad_kv_type = gguf(n_kv=1, body=struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77) + b"\0" * 16)
    # Found by the fuzz test: llama.cpp aborts (GGML_ASSERT) on a vocabulary with a repeated token.
    gpt2 = (Path(__file__).resolve().parent.parent / "native/llama.cpp/models/ggml-vocab-gpt-2.gguf").read_bytes()
    dup_at = gpt2.index(struct.pack("<Q", 1) + b'"')  # the second token, '"', becomes '!' (the first)
    duplicate = gpt2[:dup_at + 8] + b"!" + gpt2[dup_at + 9:]
    huge_array = gguf(n_kv=1, body=struct.pack("<Q", 1) + b"a" + struct.pack("<IIQ", 9, 4, 2**50))
    return [
        # files
        ("missing file", "RuntimeError", "No such file", lambda: Model.load(tmp / "nope.gguf")),
        ("directory", "RuntimeError", "directory", lambda: Model.load(tmp)),
        ("empty path", "RuntimeError", "the path is empty", lambda: Model.load("")),
        ("empty file", "RuntimeError", "empty", load(b"", "empty.gguf")),
        ("random bytes", "RuntimeError", "magic", load(rnd, "random.gguf")),
        ("wrong magic", "RuntimeError", "magic", load(b"GGML" + real[4:4096], "magic.gguf")),
        ("truncated header", "RuntimeError", "not a valid GGUF file", load(real[:4000], "trunc.gguf")),
        ("truncated model", "RuntimeError", "Failed to load model", load(real, "trunc2.gguf")),
        ("unsupported version", "RuntimeError", "version", load(gguf(version=1234), "ver.gguf")),
        ("absurd key count", "RuntimeError", "key/value", load(bytes(corrupt_count[:4096]), "kv.gguf")),
        ("absurd tensor count", "RuntimeError", "tensors", load(gguf(n_tensors=2**62), "tensors.gguf")),
        ("string past the end", "RuntimeError", "claims a length", load(bad_string, "str.gguf")),
        ("too many dimensions", "RuntimeError", "dimensions", load(bad_dims, "dims.gguf")),
        ("unknown tensor type", "RuntimeError", "unknown type", load(bad_type, "ttype.gguf")),
        ("unknown value type", "RuntimeError", "unknown value type", load(bad_kv_type, "vtype.gguf")),
        ("huge array", "RuntimeError", "elements", load(huge_array, "arr.gguf")),
        ("duplicate vocabulary token", "RuntimeError", "twice", load(duplicate, "dup.gguf")),
        # Model.load arguments
        ("path int", "TypeError", "path", lambda: Model.load(42)),  # type: ignore[arg-type]
        ("path None", "TypeError", "path", lambda: Model.load(None)),  # type: ignore[arg-type]
        ("path bytes", "TypeError", "path", lambda: Model.load(b"m.gguf")),  # type: ignore[arg-type]
        ("n_gpu_layers str", "TypeError", "n_gpu_layers", lambda: Model.load(smollm, n_gpu_layers="1")),
        ("n_gpu_layers -2", "ValueError", "n_gpu_layers", lambda: Model.load(smollm, n_gpu_layers=-2)),
        ("use_mmap str", "TypeError", "use_mmap", lambda: Model.load(smollm, use_mmap="yes")),
        ("vocab_only None", "TypeError", "vocab_only", lambda: Model.load(smollm, vocab_only=None)),
        ("progress not callable", "TypeError", "progress_callback", lambda: Model.load(smollm, progress_callback=5)),
        # Context
        ("context of None", "TypeError", "model", lambda: Context(None)),  # type: ignore[arg-type]
        ("n_ctx negative", "ValueError", "n_ctx", lambda: Context(model, n_ctx=-1)),
        ("n_ctx str", "TypeError", "n_ctx", lambda: Context(model, n_ctx="512")),
        ("n_ctx absurd", "ValueError", "n_ctx", lambda: Context(model, n_ctx=10**12)),
        ("n_ctx over training", "ValueError", "n_ctx_train", lambda: Context(model, n_ctx=8193)),
        ("n_batch zero", "ValueError", "n_batch", lambda: Context(model, n_batch=0)),
        ("n_batch negative", "ValueError", "n_batch", lambda: Context(model, n_batch=-5)),
        ("n_batch absurd", "ValueError", "n_batch", lambda: Context(model, n_batch=10**10)),
        ("n_threads negative", "ValueError", "n_threads", lambda: Context(model, n_threads=-1)),
        ("embeddings str", "TypeError", "embeddings", lambda: Context(model, embeddings="yes")),
        ("pooling bogus", "ValueError", "pooling", lambda: Context(model, pooling="bogus")),
        # SamplerParams
        ("temperature negative", "ValueError", "temperature", lambda: SamplerParams(temperature=-1)),
        ("temperature str", "TypeError", "temperature", lambda: SamplerParams(temperature="hot")),
        ("top_p above 1", "ValueError", "top_p", lambda: SamplerParams(top_p=2.0)),
        ("top_k negative", "ValueError", "top_k", lambda: SamplerParams(top_k=-3)),
        ("min_p above 1", "ValueError", "min_p", lambda: SamplerParams(min_p=1.5)),
        ("typical_p zero", "ValueError", "typical_p", lambda: SamplerParams(typical_p=0.0)),
        ("penalty_repeat zero", "ValueError", "penalty_repeat", lambda: SamplerParams(penalty_repeat=0.0)),
        ("penalty_last_n -7", "ValueError", "penalty_last_n", lambda: SamplerParams(penalty_last_n=-7)),
        ("seed negative", "ValueError", "seed", lambda: SamplerParams(seed=-1)),
        ("seed float", "TypeError", "seed", lambda: SamplerParams(seed=1.5)),
        ("nan temperature", "ValueError", "temperature", lambda: SamplerParams(temperature=float("nan"))),
        # generation
        ("prompt None", "TypeError", "prompt", lambda: ctx.generate(None)),  # type: ignore[arg-type]
        ("prompt int", "TypeError", "prompt", lambda: ctx.generate(123)),  # type: ignore[arg-type]
        ("prompt ids out of vocab", "ValueError", "outside the vocabulary", lambda: ctx.generate([1, 10**9])),
        ("prompt ids negative", "ValueError", "outside the vocabulary", lambda: ctx.generate([-1])),
        ("empty prompt", "RuntimeError", "empty", lambda: ctx.generate("")),
        ("overlong prompt", "RuntimeError", "n_ctx", lambda: ctx.generate("word " * 1000)),
        ("max_tokens negative", "ValueError", "max_tokens", lambda: ctx.generate("Hi", max_tokens=-1)),
        ("max_tokens huge", "RuntimeError", "context is full",
         lambda: ctx.generate("Hi", max_tokens=10**15, ignore_eos=True, params=SamplerParams.greedy())),
        ("max_tokens str", "TypeError", "max_tokens", lambda: ctx.generate("Hi", max_tokens="9")),
        ("params wrong type", "TypeError", "params", lambda: ctx.generate("Hi", params="greedy")),
        ("stop not strings", "TypeError", "stop", lambda: ctx.generate("Hi", stop=[1])),
        ("decode empty", "ValueError", "empty", lambda: ctx.decode([])),
        # tokenizer
        ("tokenize None", "TypeError", "text", lambda: model.tokenize(None)),  # type: ignore[arg-type]
        ("detokenize out of vocab", "ValueError", "outside the vocabulary", lambda: model.detokenize([49152])),
        ("detokenize str", "TypeError", "tokens", lambda: model.detokenize("abc")),  # type: ignore[arg-type]
        ("detokenize floats", "TypeError", "ints", lambda: model.detokenize([1.5])),  # type: ignore[list-item]
        ("token_is_eog -1", "ValueError", "token", lambda: model.token_is_eog(-1)),
        ("lone surrogate", "ValueError", "surrogate", lambda: model.tokenize("\ud800")),
        ("chat messages None", "TypeError", "messages", lambda: model.apply_chat_template(None)),
        ("chat message short", "TypeError", "messages[0]", lambda: model.apply_chat_template([("user",)])),
        ("chat template int", "TypeError", "template", lambda: model.apply_chat_template([("u", "x")], template=5)),
        # embeddings and vectors
        ("embed empty", "ValueError", "empty", lambda: emb.embed("")),
        ("embed int", "TypeError", "str", lambda: emb.embed(5)),  # type: ignore[arg-type]
        ("embed_batch str", "TypeError", "list", lambda: emb.embed_batch("abc")),
        ("embed overlong", "ValueError", "tokens", lambda: emb.embed("word " * 2000)),
        ("vectors mismatched", "ValueError", "same length", lambda: cosine_similarity([1, 2, 3], [1, 2])),
        ("vectors 2-D", "ValueError", "1-D", lambda: cosine_similarity(np.ones((2, 2)), np.ones((2, 2)))),
        # lifetime
        ("model use after close", "RuntimeError", "closed", lambda: closed_model.tokenize("x")),
        ("context use after close", "RuntimeError", "closed", lambda: closed_ctx.generate("x")),
        ("context on closed model", "RuntimeError", "closed", lambda: Context(closed_model)),
        ("double close", None, "", lambda: (closed_model.close(), closed_ctx.close())),
        ("backend_free twice", None, "", lambda: (mullama.backend_free(), mullama.backend_free())),
    ]


def main() -> None:
    smollm, minilm = Path(sys.argv[1]), Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        for name, _, _, call in cases(smollm, minilm, Path(tmp)):
            print(json.dumps({"start": name}), flush=True)
            try:
                call()
                result: dict[str, Any] = {"case": name, "raised": None, "message": ""}
            except Exception as e:  # noqa: BLE001 - recorded for the parent to judge
                result = {"case": name, "raised": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
                          "message": str(e)}
            print(json.dumps(result), flush=True)
    print(json.dumps({"done": True, "pid": os.getpid()}), flush=True)


if __name__ == "__main__":
    main()
