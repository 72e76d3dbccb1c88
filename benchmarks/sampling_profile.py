#!/usr/bin/env python3
"""Where the time of a sampled token goes, per sampling path (CUDA builds).

    python3 benchmarks/sampling_profile.py --model llama-1b.Q4_K_M.gguf --out prof/

For each parameter set and path it times ``--n-gen`` tokens (median of
``--reps``), then traces ``--n-trace`` tokens with PyTorch's profiler, which
records through CUPTI every kernel, copy and CUDA runtime call of the process,
those of ggml's CUDA backend included.  Per token it prints the GPU time of the
kernels (by kernel, largest first), the copies, and the wall time the GPU sat
idle; ``--out`` keeps the figures (and with ``--traces`` the traces).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "greedy host": ("cpu", dict(temperature=0.0, penalty_repeat=1.0)),
    "greedy device": ("device", dict(temperature=0.0, penalty_repeat=1.0)),
    "default host": ("cpu", {}),
    "default device": ("device", {}),
    "default without penalties, device": ("device", dict(penalty_repeat=1.0)),
    "penalties + greedy, device": ("device", dict(temperature=0.0)),
    "top-k only, device": ("device", dict(temperature=1.0, top_k=40, top_p=1.0, min_p=0.0, penalty_repeat=1.0)),
    "dist only, device": ("device", dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, penalty_repeat=1.0)),
}


def summarize(trace: dict[str, Any], n_tokens: int, wall_s: float) -> dict[str, Any]:
    kernels: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    api: collections.Counter[str] = collections.Counter()
    api_n: collections.Counter[str] = collections.Counter()
    busy = []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X":
            continue
        cat, name, dur = ev.get("cat", ""), ev.get("name", ""), float(ev.get("dur", 0.0))
        if cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            key = name if cat == "kernel" else f"[{cat}] {name}"
            kernels[key[:90]] += dur
            counts[key[:90]] += 1
            busy.append((float(ev["ts"]), float(ev["ts"]) + dur))
        elif cat == "cuda_runtime" or cat == "cuda_driver":
            api[name] += dur
            api_n[name] += 1
    busy.sort()
    merged = 0.0
    end = -1.0
    for s, e in busy:
        if s > end:
            merged += e - s
            end = e
        elif e > end:
            merged += e - end
            end = e
    per = 1.0 / n_tokens
    return {
        "wall_us_per_token": wall_s * 1e6 * per,
        "gpu_busy_us_per_token": merged * per,
        "kernels_us_per_token": {k: round(v * per, 2) for k, v in kernels.most_common(25)},
        "kernel_launches_per_token": {k: round(counts[k] * per, 2) for k, _ in kernels.most_common(25)},
        "api_us_per_token": {k: round(v * per, 2) for k, v in api.most_common(12)},
        "api_calls_per_token": {k: round(api_n[k] * per, 2) for k, _ in api.most_common(12)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ngl", type=int, default=-1)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--n-trace", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", default=";".join(MODES), help="';'-separated subset of: " + "; ".join(MODES))
    ap.add_argument("--out", type=Path, default=None, help="folder for profile.json")
    ap.add_argument("--traces", action="store_true", help="also write each mode's trace (gzipped) to --out")
    a = ap.parse_args()

    import torch
    from mullama import Context, Model, SamplerParams

    torch.cuda.init()
    model = Model.load(a.model, n_gpu_layers=a.ngl)
    bos = model.token_bos if model.token_bos >= 0 else 0
    modes = [m.strip() for m in a.modes.split(";") if m.strip()]
    ctxs = {m: Context(model, n_ctx=1024, sampling=MODES[m][0]) for m in modes}
    params = {m: SamplerParams(seed=1234, **MODES[m][1]) for m in modes}

    def gen(m: str, n: int) -> float:
        ctx = ctxs[m]
        ctx.clear_cache()
        t = time.perf_counter()
        for _ in ctx.generate_stream([bos], max_tokens=n, params=params[m], ignore_eos=True):
            pass
        return time.perf_counter() - t

    speeds: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:
        gen(m, 16)
    for _ in range(a.reps):
        for m in modes:
            speeds[m].append(a.n_gen / gen(m, a.n_gen))
    base = statistics.median(speeds[modes[0]])
    print(f"{'mode':34s} tok/s   vs {modes[0]}   ms/token")
    for m in modes:
        s = statistics.median(speeds[m])
        print(f"{m:34s} {s:7.1f}  {s / base:6.3f}   {1e3 / s:.3f}")

    result: dict[str, Any] = {"speeds": speeds, "profile": {}}
    from torch.profiler import ProfilerActivity, profile
    for m in modes:
        gen(m, 8)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            wall = gen(m, a.n_trace)
        tmp = Path(f"/tmp/trace-{modes.index(m)}.json")
        prof.export_chrome_trace(str(tmp))
        trace = json.loads(tmp.read_text())
        s = summarize(trace, a.n_trace, wall)
        result["profile"][m] = s
        print(f"\n== {m}: wall {s['wall_us_per_token']:.1f} us/token (traced), GPU busy {s['gpu_busy_us_per_token']:.1f}")
        for k, v in s["kernels_us_per_token"].items():
            print(f"   {v:8.2f} us  x{s['kernel_launches_per_token'][k]:<6} {k}")
        print("   runtime API (us/token, calls/token):")
        for k, v in s["api_us_per_token"].items():
            print(f"   {v:8.2f} us  x{s['api_calls_per_token'][k]:<6} {k}")
        if a.out and a.traces:
            a.out.mkdir(parents=True, exist_ok=True)
            with gzip.open(a.out / f"trace-{modes.index(m)}.json.gz", "wt") as f:
                f.write(tmp.read_text())
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "profile.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
