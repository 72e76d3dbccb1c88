#!/usr/bin/env python3
"""Embedding throughput, side by side in one run: mullama (Python and Node.js) vs sentence-transformers vs llama-cpp-python.

    python benchmarks/embeddings.py [--texts 1000] [--threads 2] [--rounds 3]

All three embed the same real sentences (tests/data/sentences.txt, cycled to
--texts) with all-MiniLM-L6-v2 on the CPU with the same thread count:
mullama and llama-cpp-python on the GGUF converted by llama.cpp's converter,
sentence-transformers (PyTorch) on the original safetensors.  Rounds are
interleaved; the median texts/s of each and the ratios are printed and, with
--markdown FILE, appended as a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import cpu_name  # noqa: E402


def _node_runner(gguf: Path, texts: list[str], threads: int) -> Callable[[], object] | None:
    """mullama's Node binding in a child process (benchmarks/node_embed_worker.js), run by a line each time."""
    import json
    import shutil
    import subprocess
    import tempfile
    if not shutil.which("node") or not (ROOT / "node" / "node_modules").is_dir():
        print("Node.js runner skipped: node or node/node_modules missing (cd node && npm ci)", file=sys.stderr)
        return None
    texts_file = Path(tempfile.mkdtemp(prefix="mullama-emb-")) / "texts.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    proc = subprocess.Popen(["node", str(ROOT / "benchmarks" / "node_embed_worker.js"), str(gguf), str(texts_file),
                             str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the Node.js embedding worker did not start")

    def run() -> object:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("run\n")
        proc.stdin.flush()
        return proc.stdout.readline()
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--markdown", type=Path, help="append the result table to this file")
    args = ap.parse_args()

    from convert_minilm import ensure_minilm, minilm_hf_dir

    gguf = ensure_minilm()
    lines = [s for s in (ROOT / "tests/data/sentences.txt").read_text(encoding="utf-8").splitlines() if s]
    texts = [lines[i % len(lines)] for i in range(args.texts)]

    runners: dict[str, Callable[[], object]] = {}

    from mullama import EmbeddingGenerator, Model, quantize
    model = Model.load(gguf)
    gen = EmbeddingGenerator(model, n_threads=args.threads)
    runners["mullama"] = lambda: gen.embed_matrix(texts)
    # The same weights in bf16 (AVX512-BF16 dot products where the CPU has them).
    bf16_path = gguf.with_name(gguf.name.replace("-f16", "-bf16"))
    if not bf16_path.exists():
        quantize(gguf, bf16_path, "bf16")
    gen_bf16 = EmbeddingGenerator(Model.load(bf16_path), n_threads=args.threads)
    runners["mullama (bf16 GGUF)"] = lambda: gen_bf16.embed_matrix(texts)

    node = _node_runner(gguf, texts, args.threads)
    if node is not None:
        runners["mullama (Node.js)"] = node

    try:
        import torch
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(args.threads)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        st = SentenceTransformer(str(minilm_hf_dir()), device="cpu")
        runners["sentence-transformers"] = lambda: st.encode(texts, batch_size=32, normalize_embeddings=True)
    except ImportError as e:
        print(f"sentence-transformers not available: {e}", file=sys.stderr)

    try:
        import llama_cpp
        llm = llama_cpp.Llama(str(gguf), embedding=True, n_threads=args.threads, n_threads_batch=args.threads,
                              n_ctx=512, n_batch=512, verbose=False)
        runners["llama-cpp-python"] = lambda: llm.embed(texts, normalize=True)
    except ImportError as e:
        print(f"llama-cpp-python not available: {e}", file=sys.stderr)

    for run in runners.values():  # warm-up
        run()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            rates[name].append(len(texts) / (time.perf_counter() - t))

    med = {name: statistics.median(r) for name, r in rates.items()}
    rows = [f"| {name} | {med[name]:.0f} | {min(r):.0f}–{max(r):.0f} | {med['mullama'] / med[name]:.2f}× |"
            for name, r in rates.items()]
    table = "\n".join([
        f"### Embeddings: all-MiniLM-L6-v2, {len(texts)} sentences, {args.threads} threads",
        "",
        f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} CPUs visible. "
        f"Command: `python benchmarks/embeddings.py --texts {args.texts} --threads {args.threads} "
        f"--rounds {args.rounds}`",
        "",
        "| implementation | texts/s (median) | range | mullama is |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
    ])
    print(table)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
