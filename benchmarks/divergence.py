#!/usr/bin/env python3
"""How often, and how early, batched greedy output differs from a lone Context's.

    python benchmarks/divergence.py --model MODEL.gguf [--prompts 32] [--parallel 8] [--ngl 0]

Each prompt is answered greedily by a lone Context (the reference), then all
prompts are submitted at once to an Engine with ``--parallel`` slots, with
one KV stream per sequence (mullama's default) and with llama.cpp's unified
cache.  Prints, for each, how many answers differ and at which generated
token the first difference comes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ngl", type=int, default=0)
    a = ap.parse_args()
    from mullama import Context, Model, SamplerParams
    from mullama.engine import Engine
    model = Model.load(a.model, n_gpu_layers=a.ngl)
    g = SamplerParams.greedy()
    prompts = [f"Write one sentence about the number {i}." for i in range(a.prompts)]
    n_ctx = 64 + a.max_tokens
    ctx = Context(model, n_ctx=n_ctx)
    reference: list[tuple[str, list[int]]] = []
    for p in prompts:
        ctx.clear_cache()
        text = ctx.generate(p, a.max_tokens, g, ignore_eos=True)
        reference.append((text, ctx.tokens[len(model.tokenize(p, special=True)):]))
    for unified in (False, True):
        with Engine(model, parallel=a.parallel, n_ctx=n_ctx, kv_unified=unified) as eng:
            reqs = [eng.submit(p, a.max_tokens, g, ignore_eos=True) for p in prompts]
            texts = [r.text() for r in reqs]
        first: list[int] = []
        for (ref_text, ref_ids), text in zip(reference, texts):
            if text == ref_text:
                continue
            c = next((i for i, (x, y) in enumerate(zip(text, ref_text)) if x != y), min(len(text), len(ref_text)))
            # the generated token whose text holds the first differing character
            first.append(next(k for k in range(len(ref_ids) + 1) if len(model.detokenize(ref_ids[:k + 1])) > c))
        label = "unified cache" if unified else "one KV stream per sequence"
        print(f"{label:28s}: {len(first)} of {len(prompts)} greedy answers differ from the lone Context's"
              + (f"; first difference at generated token {sorted(first)}" if first else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
