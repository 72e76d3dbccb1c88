#!/usr/bin/env python3
"""The cost of one sampling call on fixed logits, without decoding (the host paths only).

    python3 benchmarks/sampling_cost.py --model ~/.cache/mullama/models/SmolLM2-135M-Instruct.Q4_1.gguf

Prints the best of 5 x N calls, in microseconds, of: the greedy argmax; the
default ``SamplerParams()`` over the top-k candidates (mullama's host path);
the same chain through ``llama_sampler_sample`` over the whole vocabulary
(llama.cpp's own path, and mullama's before).  Being one thread's work on
fixed data, the ratios hold on a busy machine better than end-to-end runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mullama import Context, Model, SamplerParams, _backend, _sequence  # noqa: E402
from mullama.sampling import SamplerChain  # noqa: E402


def best(f: Callable[[], object], n: int) -> float:
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            f()
        runs.append((time.perf_counter() - t) / n)
    return min(runs) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--calls", type=int, default=300)
    a = ap.parse_args()
    m = Model.load(a.model)
    c = Context(m, n_ctx=256, n_threads=1, sampling="cpu")
    toks = m.tokenize("Once upon a time, in a small village by the sea,", add_bos=True)
    c.decode(toks)
    L = _backend.lib()
    p = SamplerParams(seed=1)
    topk = SamplerChain(p, m.n_vocab, 256)
    topk.start(toks)
    whole = SamplerChain(p, m.n_vocab, 256)
    whole.start(toks)
    rows = _sequence.LogitRows(c.ptr(), m.n_vocab)
    greedy = _sequence.sampler(c.ptr(), SamplerChain(SamplerParams.greedy(), m.n_vocab, 256), rows)
    host = _sequence.sampler(c.ptr(), topk, rows)
    print(f"greedy argmax                                   {best(lambda: greedy(-1), a.calls):8.1f} us")
    print(f"default params, top-k candidates (host path)    {best(lambda: host(-1), a.calls):8.1f} us")
    print(f"default params, whole vocabulary (llama.cpp)    "
          f"{best(lambda: L.llama_sampler_sample(whole.ptr(), c.ptr(), -1), a.calls // 3):8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
