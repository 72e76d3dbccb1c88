#!/usr/bin/env python3
"""Where one Engine step's time goes: a per-phase breakdown at B concurrent sequences.

    python benchmarks/engine_steps.py --model MODEL.gguf [--ngl 99] [--threads 8] [--batch 8,32]

B greedy requests (128-token random prompts, 128 tokens each, end of
generation ignored) run through one Engine; every generation step is timed
in phases by wrapping the engine's own methods (nothing else changes):

* ``decode``: the ``llama_decode`` call (graph build and launch; on a GPU it
  returns before the computation ends);
* ``loops``: every sequence's token loop takes the token it sent and makes
  its text (overlaps the device's work);
* ``wait``: the engine's one ``llama_synchronize`` per step: the device time
  not hidden by the loops;
* ``argmax``: every greedy row's argmax, read at once;
* ``pick``: the per-sequence check that picks each greedy token;
* ``sample``: loops that sample themselves (a prompt's first token, the
  tokens that end a generation);
* ``other``: the rest of the step (the batch, the scheduler, the wake-ups).

A second run with ``llama_synchronize`` called right after the decode
separates the device's time (``device wait``) from the rest.  Medians per
step over the steps where every sequence generates (and their mean step time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_PROMPT, N_GEN = 128, 128


def profile(model: Any, b: int, threads: int, sync: bool) -> dict[str, float]:
    import random

    from mullama import SamplerParams, _backend
    from mullama.engine import Engine
    L = _backend.lib()
    rng = random.Random(1)
    prompts = [[rng.randrange(100, model.n_vocab) for _ in range(N_PROMPT)] for _ in range(b)]
    phases: dict[str, float] = {}
    rows: list[dict[str, float]] = []

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    decode, synchronize = L.llama_decode, L.llama_synchronize

    def decode_then_wait(ctx: int, batch: Any) -> int:
        rc = int(decode(ctx, batch))
        t = time.perf_counter()
        synchronize(ctx)
        phases["device wait"] = phases.get("device wait", 0.0) + time.perf_counter() - t
        return rc

    with Engine(model, parallel=b, n_ctx=N_PROMPT + N_GEN + 16, n_threads=threads, sampling="cpu") as eng:
        eng.generate([1, 2, 3], 4, SamplerParams.greedy())
        step = eng._step
        L.llama_decode = timed("decode", decode_then_wait if sync else decode)
        L.llama_synchronize = timed("wait", synchronize)
        eng._take_picked = timed("loops", eng._take_picked)  # type: ignore[method-assign]
        eng._text = timed("loops", eng._text)  # type: ignore[method-assign]
        assert eng._rows is not None
        eng._rows.new_step = timed("argmax", eng._rows.new_step)  # type: ignore[method-assign]
        eng._pick = timed("pick", eng._pick)  # type: ignore[method-assign]
        eng._sample = timed("sample", eng._sample)  # type: ignore[method-assign]
        eng._wake = timed("wake", eng._wake)  # type: ignore[method-assign]
        last = [0.0]

        def timed_step(ctx: int) -> None:
            phases.clear()
            t = time.perf_counter()
            step(ctx)
            end = time.perf_counter()
            generating = sum(s.request is not None and not s.todo for s in eng._slots)
            if last[0] and generating == b:
                rows.append({**phases, "step": end - last[0]})
            last[0] = end
        eng._step = timed_step  # type: ignore[method-assign]
        try:
            reqs = [eng.submit(p, N_GEN, SamplerParams.greedy(), ignore_eos=True) for p in prompts]
            for r in reqs:
                r.text()
        finally:
            L.llama_decode, L.llama_synchronize = decode, synchronize
    keys = sorted({k for r in rows for k in r})
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) * 1e3 for k in keys}
    if sync:
        med["decode"] -= med.get("device wait", 0.0)
    med["other"] = med["step"] - sum(v for k, v in med.items() if k != "step")
    med["mean step"] = statistics.fmean(r["step"] for r in rows) * 1e3
    med["steps"] = len(rows)
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="8,32")
    a = ap.parse_args()
    from mullama import Model
    model = Model.load(a.model, n_gpu_layers=a.ngl)
    phases = ("decode", "device wait", "loops", "wait", "argmax", "pick", "sample", "wake", "other")
    print("| B | llama_synchronize after decode | step ms (mean) | median | " + " | ".join(phases) + " |")
    print("|---" * (4 + len(phases)) + "|")
    for b in (int(x) for x in a.batch.split(",")):
        for sync in (False, True):
            m = profile(model, b, a.threads, sync)
            cells = " | ".join(f"{m.get(k, 0.0):.3f}" for k in phases)
            print(f"| {b} | {'yes' if sync else 'no'} | {m['mean step']:.3f} | {m['step']:.3f} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
