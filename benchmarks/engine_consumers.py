#!/usr/bin/env python3
"""Does the way requests are consumed slow the Engine?  Three patterns side by side, and llama-batched-bench.

    python benchmarks/engine_consumers.py --model MODEL.gguf [--ngl 99] [--threads 8] [--batch 32] [--reps 2]

B requests (128 random prompt tokens, 128 generated, greedy, end of
generation ignored) submitted at once to one Engine, consumed:

* ``text``: ``req.text()`` for each in turn, in the submitting thread;
* ``threads``: ``for piece in req`` in a thread of its own per request;
* ``asyncio``: ``async for piece in req`` in tasks of one event loop.

Generation speed as ``benchmarks/batched.py`` measures it (from the moment
every sequence has its first token to the end), medians over ``--reps``,
with llama-batched-bench from the same build (``-npp 128 -ntg 128 -npl B``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from batched import N_GEN, N_PROMPT, batched_bench_exe, prompts, run_batched_bench  # noqa: E402


def consume_text(reqs: list[Any]) -> None:
    for r in reqs:
        r.text()


def consume_threads(reqs: list[Any]) -> None:
    def one(r: Any) -> None:
        for _ in r:
            pass
    threads = [threading.Thread(target=one, args=(r,)) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def consume_asyncio(reqs: list[Any]) -> None:
    async def one(r: Any) -> None:
        async for _ in r:
            pass

    async def main() -> None:
        await asyncio.gather(*(one(r) for r in reqs))
    asyncio.run(main())


PATTERNS = {"text": consume_text, "threads": consume_threads, "asyncio": consume_asyncio}


def run(engine: Any, n_vocab: int, b: int, pattern: str, seed: int) -> float:
    from mullama import SamplerParams
    params = SamplerParams.greedy()
    reqs = [engine.submit(p, N_GEN, params, ignore_eos=True) for p in prompts(n_vocab, b, seed)]
    PATTERNS[pattern](reqs)
    start = max(r.first_piece_at or 0.0 for r in reqs)
    end = max(r.finished_at or 0.0 for r in reqs)
    return b * (N_GEN - 1) / (end - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batched-bench", help="llama-batched-bench (default: the --bench build's)")
    ap.add_argument("--no-batched-bench", action="store_true")
    a = ap.parse_args()
    from mullama import Model, SamplerParams
    from mullama.engine import Engine
    model = Model.load(a.model, n_gpu_layers=a.ngl)
    results: dict[str, list[float]] = {name: [] for name in ["llama-batched-bench", *PATTERNS]}
    with Engine(model, parallel=a.batch, n_ctx=N_PROMPT + N_GEN + 16, n_threads=a.threads) as eng:
        eng.generate([1, 2, 3], 4, SamplerParams.greedy())  # warm-up
        for rep in range(a.reps):
            for pattern in PATTERNS:
                results[pattern].append(run(eng, model.n_vocab, a.batch, pattern, seed=rep))
                print(f"rep {rep + 1}: {pattern:8s} {results[pattern][-1]:9.1f} tok/s", flush=True)
            if not a.no_batched_bench:
                results["llama-batched-bench"].append(
                    run_batched_bench(batched_bench_exe(a.batched_bench), a, a.batch))
                print(f"rep {rep + 1}: batched-bench {results['llama-batched-bench'][-1]:9.1f} tok/s", flush=True)
    ref = statistics.median(results["llama-batched-bench"]) if results["llama-batched-bench"] else None
    print(f"\n{Path(a.model).name}, B={a.batch}, medians of {a.reps}:")
    for name, vals in results.items():
        if vals:
            med = statistics.median(vals)
            print(f"  {name:20s} {med:9.1f} tok/s" + (f"  {med / ref:.2f}x of batched-bench" if ref else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
