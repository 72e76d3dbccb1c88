#!/usr/bin/env python3
"""KV-cache types: the memory a context's cache takes, and generation speed with it, side by side in one run.

    python3 benchmarks/kv_cache.py --model MODEL.gguf [--ngl all] [--threads 0] [--out results.json]

For each (type_k, type_v) pair, with flash attention on: ``Context.kv_bytes`` at 4096 and 32768 tokens
(the model's training context permitting), and tok/s of 64 greedy tokens after a 1024-token prompt
(pairs run in turn, best of ``--reps``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAIRS = [("f16", "f16"), ("bf16", "bf16"), ("q8_0", "q8_0"), ("q5_1", "q5_1"), ("q4_0", "q4_0"), ("q8_0", "q4_0")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ngl", default="0")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    from mullama import Context, Model, SamplerParams
    model = Model.load(a.model, n_gpu_layers=-1 if a.ngl == "all" else int(a.ngl))
    words = (Path(__file__).read_text() * 40).split()
    prompt = model.tokenize(" ".join(words), add_bos=True)[:1024]
    rows: dict[str, dict[str, float]] = {}
    ctxs = {}
    for k, v in PAIRS:
        name = f"{k}/{v}"
        sizes = {}
        for n in (4096, 32768):
            if model.n_ctx_train and n > model.n_ctx_train:
                # beyond what the model may hold: the same formula, at n cells (kv_bytes is linear in n_ctx)
                c = Context(model, n_ctx=4096, n_threads=a.threads, type_k=k, type_v=v, flash_attn=True)
                sizes[f"kv_mib_{n}_computed"] = c.kv_bytes * n / c.n_ctx / 2**20
            else:
                c = Context(model, n_ctx=n, n_threads=a.threads, type_k=k, type_v=v, flash_attn=True)
                sizes[f"kv_mib_{n}"] = c.kv_bytes / 2**20
            c.close()
        rows[name] = sizes
        ctxs[name] = Context(model, n_ctx=2048, n_threads=a.threads, type_k=k, type_v=v, flash_attn=True)
    best: dict[str, float] = {}
    for _ in range(a.reps):
        for name, c in ctxs.items():
            c.clear_cache()
            c.complete(prompt, 0)
            t = time.perf_counter()
            n = len(c.complete(prompt, 64, SamplerParams.greedy(), ignore_eos=True).tokens)
            best[name] = max(best.get(name, 0.0), n / (time.perf_counter() - t))
    for name in rows:
        rows[name]["tg_tok_s"] = best[name]
        rows[name]["tg_vs_f16"] = best[name] / best["f16/f16"]
        print(name, json.dumps(rows[name]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"model": Path(a.model).name, "ngl": a.ngl, "prompt_tokens": len(prompt),
                                           "flash_attn": True, "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
