#!/usr/bin/env python3
"""Sampled generation against greedy, on each sampling path, side by side in one run.

    python3 benchmarks/sampling.py --model ~/.cache/mullama/models/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 benchmarks/sampling.py --model llama-1b.Q4_K_M.gguf --ngl -1      # CUDA build

Every repetition, in a rotating order, generates ``--n-gen`` tokens after a
BOS prompt (ignore_eos, an emptied cache) with:

* mullama greedy: the host argmax, and a greedy chain on the device path;
* mullama with the default ``SamplerParams()`` (penalties 1.1, top-k 40,
  top-p 0.95, min-p 0.05, temperature 0.8) on the host path (``sampling="cpu"``)
  and on the device path (``sampling="device"``: the chain in the decode graph);
* llama-bench ``tg`` (``-p 0 -n N``; greedy decoding with no sampling at all),
  when its binary is found (``--bench`` builds);
* llama-cpp-python greedy and with the same default parameters, when it
  imports (a worker process; on a GPU, point LLAMA_CPP_LIB_PATH at mullama's
  library so that both run the same libllama).

It prints tokens/s (medians), each against llama-bench, and the per-token
cost of sampling: (1/sampled - 1/greedy) of the same tool.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, penalty_repeat=1.1, penalty_last_n=64)


def mullama_runs(a: argparse.Namespace) -> dict[str, Any]:
    from mullama import Context, Model, SamplerParams

    model = Model.load(a.model, n_gpu_layers=a.ngl)
    bos = model.token_bos if model.token_bos >= 0 else 0
    # One context per tool, as a user keeps one per parameter set: a context
    # that switches parameters rebuilds its graph (and on CUDA re-captures it)
    # whenever the chain attached to it changes.
    names = ("greedy", "greedy (device)", "sampled (host)", "sampled (device)")
    ctxs = {n: Context(model, n_ctx=a.n_ctx, n_threads=a.threads, sampling="device" if "device" in n else "cpu")
            for n in names}
    greedy = SamplerParams.greedy()
    sampled = SamplerParams(seed=1234)

    def tg(ctx: Context, params: SamplerParams) -> float:
        ctx.clear_cache()
        t = time.perf_counter()
        for _ in ctx.generate_stream([bos], max_tokens=a.n_gen, params=params, ignore_eos=True):
            pass
        return a.n_gen / (time.perf_counter() - t)

    return {
        "mullama greedy": lambda: tg(ctxs["greedy"], greedy),
        "mullama greedy (device)": lambda: tg(ctxs["greedy (device)"], greedy),
        "mullama sampled (host)": lambda: tg(ctxs["sampled (host)"], sampled),
        "mullama sampled (device)": lambda: tg(ctxs["sampled (device)"], sampled),
    }


def llama_bench_run(a: argparse.Namespace) -> Any:
    import run as runpy  # benchmarks/run.py

    try:
        exe = runpy.find_llama_bench(a.llama_bench, runpy.read_build_info(runpy.lib_dir()))
    except runpy.BenchError as e:
        print(f"llama-bench: skipped ({e})", file=sys.stderr)
        return None

    def once() -> float:
        cmd = [str(exe), "-m", a.model, "-p", "0", "-n", str(a.n_gen), "-r", "1", "-t", str(a.threads),
               "-ngl", str(99 if a.ngl < 0 else a.ngl), "-o", "json"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=runpy.bench_env(exe)).stdout
        return float(json.loads(out)[0]["avg_ts"])
    return once


LCP_WORKER = r"""
import sys, time, json, llama_cpp
model, ngl, n_ctx, threads, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(model_path=model, n_gpu_layers=ngl, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                      verbose=False, seed=1234)
bos = llm.token_bos()
kw = {"greedy": dict(top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0),
      "sampled": dict(top_k=40, top_p=0.95, min_p=0.05, temp=0.8, repeat_penalty=1.1)}
def tg(k):
    llm.reset()
    t = time.perf_counter(); n = 0
    for tok in llm.generate([bos], reset=True, **kw[k]):
        llm.detokenize([tok]); n += 1
        if n == n_gen:
            break
    return n_gen / (time.perf_counter() - t)
tg("greedy"); tg("sampled")
for line in sys.stdin:
    print(json.dumps(tg(line.strip())), flush=True)
"""


def lcp_runs(a: argparse.Namespace) -> dict[str, Any]:
    if a.no_llama_cpp_python:
        return {}
    try:
        proc = subprocess.Popen([sys.executable, "-c", LCP_WORKER, a.model, str(a.ngl), str(a.n_ctx), str(a.threads),
                                 str(a.n_gen)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    except OSError:
        return {}

    def ask(kind: str) -> float:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(kind + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("llama-cpp-python worker exited (is llama_cpp importable?)")
        return float(json.loads(line))
    try:
        ask("greedy")
    except RuntimeError as e:
        print(f"llama-cpp-python: skipped ({e})", file=sys.stderr)
        return {}
    return {"llama-cpp-python greedy": lambda: ask("greedy"), "llama-cpp-python sampled": lambda: ask("sampled")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ngl", type=int, default=0, help="GPU layers (-1: all)")
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--reps", "-r", type=int, default=5)
    ap.add_argument("--n-gen", "-n", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--llama-bench", default=None)
    ap.add_argument("--no-llama-cpp-python", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)

    tools: dict[str, Any] = mullama_runs(a)
    lb = llama_bench_run(a)
    if lb is not None:
        tools["llama-bench tg"] = lb
    tools.update(lcp_runs(a))
    for f in tools.values():  # warm-up
        f()
    results: dict[str, list[float]] = {k: [] for k in tools}
    names = list(tools)
    for r in range(a.reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            results[k].append(tools[k]())
    med = {k: statistics.median(v) for k, v in results.items()}
    ref = med.get("llama-bench tg")
    print(f"{a.model} ngl={a.ngl} threads={a.threads} n_gen={a.n_gen} reps={a.reps}")
    for k, v in med.items():
        vs = f"  {v / ref:.3f}x llama-bench" if ref else ""
        print(f"  {k:28s} {v:8.1f} tok/s  (min {min(results[k]):.1f}, max {max(results[k]):.1f}){vs}")
    for tool in ("mullama", "llama-cpp-python"):
        g = med.get(f"{tool} greedy")
        for k, v in med.items():
            if g and k.startswith(tool) and "sampled" in k:
                print(f"  sampling cost, {k}: {1e3 / v - 1e3 / g:+.3f} ms/token ({v / g:.3f}x greedy)")
    if a.json:
        # file names only: the results say which model, not where it lay
        args = vars(a) | {"json": a.json.name, "model": Path(a.model).name}
        a.json.write_text(json.dumps({"args": args, "runs": results, "median": med}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
