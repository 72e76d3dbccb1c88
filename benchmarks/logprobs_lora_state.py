#!/usr/bin/env python3
"""What token probabilities, LoRA adapters and saved state cost, measured side by side in one run.

    python3 benchmarks/logprobs_lora_state.py --model MODEL.gguf [--lora ADAPTER.gguf --lora-base BASE.gguf]
        [--ngl all] [--threads 2] [--out results.json]

* logprobs: generation speed of ``Context.complete`` with ``logprobs=5``
  against none, greedy and default sampling, on one Context and on an Engine
  with 8 sequences (reported as tokens per second and as the ratio);
* LoRA: an Engine with 4 requests that share one adapter against 4 requests
  of which 2 use the adapter and 2 none (llama.cpp applies adapters to a
  whole context, so the mixed load is decoded in alternating steps), and the
  same Context switching its adapter on every request;
* saved state: the file size and the time to save and load a 4096-token
  context (``Context.save_state`` / ``load_state``), against evaluating the
  same prompt.

Runs alternate (A, B, A, B…) and the best of ``--reps`` is kept, so that a
busy machine slows both sides alike.  The model for the LoRA part is the
adapter's base (tests use scripts/make_lora.py's SmolLM2 F32 and its adapter).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "The history of the printing press begins"


def best_of(reps: int, fns: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each function returns a rate (higher is better); they run in turn, ``reps`` times; the best is kept."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            out[k].append(fn())
    return {k: max(v) for k, v in out.items()}


def timed_rate(fn: Callable[[], int]) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter()
        n = fn()
        return n / (time.perf_counter() - t)
    return run


def bench_logprobs(model: Any, threads: int, n_gen: int, reps: int) -> dict[str, Any]:
    from mullama import Context, SamplerParams
    from mullama.engine import Engine
    ctx = Context(model, n_ctx=1024, n_threads=threads)
    res: dict[str, Any] = {}
    for mode, params in (("greedy", SamplerParams.greedy()), ("default", SamplerParams())):
        r = best_of(reps, {
            "none": timed_rate(lambda: len(ctx.complete(PROMPT, n_gen, params, ignore_eos=True).tokens)),
            "logprobs5": timed_rate(lambda: len(ctx.complete(PROMPT, n_gen, params, logprobs=5,
                                                             ignore_eos=True).tokens)),
        })
        res[f"context_{mode}"] = {**r, "ratio": r["logprobs5"] / r["none"]}
    eng = Engine(model, parallel=8, n_ctx=512, n_threads=threads)

    def engine_run(k: int) -> int:
        reqs = [eng.submit(f"{PROMPT} ({i})", n_gen, SamplerParams.greedy(), ignore_eos=True, logprobs=k)
                for i in range(8)]
        return sum(len(r.completion().tokens) for r in reqs)
    r = best_of(reps, {"none": timed_rate(lambda: engine_run(0)), "logprobs5": timed_rate(lambda: engine_run(5))})
    res["engine8_greedy"] = {**r, "ratio": r["logprobs5"] / r["none"]}
    eng.close()
    ctx.close()
    return res


def bench_lora(base_path: str, adapter_path: str, ngl: int, threads: int, n_gen: int, reps: int) -> dict[str, Any]:
    from mullama import Context, Model, SamplerParams
    from mullama.engine import Engine
    base = Model.load(base_path, n_gpu_layers=ngl)
    adapter = base.load_lora(adapter_path)
    g = SamplerParams.greedy()
    eng = Engine(base, parallel=4, n_ctx=256, n_threads=threads)

    def engine_run(sets: list[dict[Any, float] | None]) -> int:
        reqs = [eng.submit(f"{PROMPT} ({i})", n_gen, g, ignore_eos=True, loras=lo) for i, lo in enumerate(sets)]
        return sum(len(r.completion().tokens) for r in reqs)
    one = [{adapter: 1.0}] * 4
    mixed = [{adapter: 1.0}, None, {adapter: 1.0}, None]
    r = best_of(reps, {"same_adapter": timed_rate(lambda: engine_run(one)),
                       "mixed": timed_rate(lambda: engine_run(mixed))})
    switches_before = eng.stats["lora_switches"]
    engine_run(mixed)
    per_run = eng.stats["lora_switches"] - switches_before
    eng.close()
    res: dict[str, Any] = {"engine4": {**r, "ratio": r["mixed"] / r["same_adapter"], "switches_per_run": per_run}}

    ctx = Context(base, n_ctx=256, n_threads=threads)
    short = 16

    def ctx_run(switch: bool) -> int:
        n = 0
        for i in range(4):
            if switch:
                ctx.set_loras({adapter: 1.0} if i % 2 else None)
            n += len(ctx.complete(PROMPT, short, g, ignore_eos=True).tokens)
        return n
    ctx.set_loras({adapter: 1.0})
    r = best_of(reps, {"same_adapter": timed_rate(lambda: ctx_run(False)),
                       "switching": timed_rate(lambda: ctx_run(True))})
    res["context_16_token_requests"] = {**r, "ratio": r["switching"] / r["same_adapter"]}
    ctx.close()
    base.close()
    return res


def bench_state(model: Any, threads: int, n_tokens: int, reps: int) -> dict[str, Any]:
    from mullama import Context, SamplerParams
    ctx = Context(model, n_ctx=n_tokens + 256, n_threads=threads)
    words = (Path(__file__).read_text() * 50).split()
    prompt = model.tokenize(" ".join(words), add_bos=True)[:n_tokens]
    t = time.perf_counter()
    ctx.complete(prompt, 0, SamplerParams.greedy())
    evaluate = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ctx.state")
        saves, loads = [], []
        other = Context(model, n_ctx=n_tokens + 256, n_threads=threads)
        for _ in range(reps):
            t = time.perf_counter()
            ctx.save_state(path)
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            other.load_state(path)
            loads.append(time.perf_counter() - t)
        size = os.path.getsize(path)
        # the loaded context continues as the original would
        same = (other.complete(prompt + [11], 8, SamplerParams.greedy()).tokens
                == ctx.complete(prompt + [11], 8, SamplerParams.greedy()).tokens)
    return {"tokens": len(prompt), "file_bytes": size, "bytes_per_token": size / len(prompt),
            "save_s": min(saves), "load_s": min(loads), "save_s_median": statistics.median(saves),
            "load_s_median": statistics.median(loads), "evaluate_prompt_s": evaluate,
            "load_vs_evaluate": evaluate / min(loads), "continues_identically": same}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--lora", help="a LoRA adapter GGUF for --lora-base")
    ap.add_argument("--lora-base", help="the adapter's base model")
    ap.add_argument("--ngl", default="0")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--state-tokens", type=int, default=4096)
    ap.add_argument("--parts", default="logprobs,lora,state", help="which parts to run (comma-separated)")
    ap.add_argument("--out")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    import mullama
    from mullama import Model
    ngl = -1 if a.ngl == "all" else int(a.ngl)
    model = Model.load(a.model, n_gpu_layers=ngl)
    out: dict[str, Any] = {"model": Path(a.model).name, "ngl": a.ngl, "threads": a.threads,
                           # the system without the library's local path
                           "system": "\n".join(line for line in mullama.system_info().splitlines()
                                                if not line.startswith("library:")),
                           "n_gen": a.n_gen, "reps": a.reps}
    if "logprobs" in parts:
        out["logprobs"] = bench_logprobs(model, a.threads, a.n_gen, a.reps)
        print(json.dumps(out["logprobs"], indent=1), flush=True)
    if a.lora and a.lora_base and "lora" in parts:
        out["lora"] = bench_lora(a.lora_base, a.lora, ngl, a.threads, a.n_gen, a.reps)
        print(json.dumps(out["lora"], indent=1), flush=True)
    if "state" in parts:
        out["state"] = bench_state(model, a.threads, a.state_tokens, a.reps)
        print(json.dumps(out["state"], indent=1), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
