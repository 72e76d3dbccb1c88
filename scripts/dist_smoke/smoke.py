"""Exercise an installed mullama the way a new user would, and print what happened as JSON.

    python smoke.py MODEL.gguf VOCAB_DIR [N_GPU_LAYERS]

Run on every platform a prebuilt package is made for (natively, under qemu or
Wine) by scripts/check_dist.py, which compares the outputs across platforms:
every llama.cpp tokenizer vector in VOCAB_DIR (ggml-vocab-*.gguf with its .inp
and .out) tokenized, and SmolLM2's greedy answer, twice, with the time from start to its first token.
MULLAMA_SMOKE_SKIP leaves vocabularies out; MULLAMA_SMOKE_REPORT names a file for
the report in place of standard output.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SEP = "\n__ggml_vocab_test__\n"


def vocab_cases(vocab: Path) -> list[tuple[str, list[int]]]:
    raw = Path(str(vocab) + ".inp").read_text(encoding="utf-8")
    texts, pos = [], 0
    while pos < len(raw):  # the split of llama.cpp's tests/test-tokenizer-0.cpp
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    outs = Path(str(vocab) + ".out").read_text(encoding="utf-8").splitlines()
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


def main() -> None:
    started = time.monotonic()
    import mullama
    import mullama._backend
    from mullama import Context, Model, SamplerParams

    model_path, vocab_dir = Path(sys.argv[1]), Path(sys.argv[2])
    n_gpu_layers = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    report: dict[str, object] = {"import_s": round(time.monotonic() - started, 3),
                                 "runtime": f"Python {sys.version.split()[0]}"}
    lib = mullama._lib.load()
    report["library"] = str(lib.path)
    report["build_info"] = {k: lib.build_info.get(k) for k in ("target", "backend", "toolchain")}
    with Model.load(model_path, n_gpu_layers=n_gpu_layers) as model, Context(model, n_ctx=512) as ctx:
        try:
            prompt = model.apply_chat_template([("user", "Name three colours.")])
        except RuntimeError:  # a model without a chat template (random weights)
            prompt = "Name three colours:"
        t0 = time.monotonic()
        pieces = []
        first = None
        # ignore_eos: a model with random weights may well end at once
        for piece in ctx.generate_stream(prompt, 24, SamplerParams.greedy(), ignore_eos=True):
            if first is None:
                first = time.monotonic() - started
            pieces.append(piece)
        report["first_token_s"] = round(first or 0.0, 3)
        report["generate_s"] = round(time.monotonic() - t0, 3)
        # again in a fresh context, so that the same kernels see the same input
        with Context(model, n_ctx=512) as again:
            report["greedy"] = ["".join(pieces), again.generate(prompt, 24, SamplerParams.greedy(), ignore_eos=True)]
        report["devices"] = [f"{d['name']} ({d['type']})" for d in mullama._backend.devices()]
        report["system_info"] = mullama._backend.system_info().splitlines()[0]
    tokens: dict[str, list[list[int]]] = {}
    mismatches: list[str] = []
    # MULLAMA_SMOKE_SKIP: vocabularies left out (comma-separated), for a platform where one is known to fail
    skip = set(filter(None, os.environ.get("MULLAMA_SMOKE_SKIP", "").split(",")))
    for vocab in sorted(vocab_dir.glob("ggml-vocab-*.gguf")):
        if not Path(str(vocab) + ".inp").exists() or vocab.name in skip:
            continue
        with Model.load(vocab, vocab_only=True) as m:
            got = []
            for text, expected in vocab_cases(vocab):
                ids = m.tokenize(text, add_bos=False)
                got.append(ids)
                if ids != expected:
                    mismatches.append(f"{vocab.name}: {text[:40]!r}")
            tokens[vocab.name] = got
    report["tokens"] = tokens
    report["vocab_mismatches"] = mismatches
    # MULLAMA_SMOKE_REPORT: write the report to this file instead (Windows' CPython
    # under Wine starts only with console handles, not with a file or a pipe)
    out = os.environ.get("MULLAMA_SMOKE_REPORT")
    if out:
        Path(out).write_text(json.dumps(report) + "\n", encoding="utf-8")
    else:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
