#!/usr/bin/env python3
"""Where mullama's per-token time goes, outside llama_decode.

    python3 benchmarks/per_token.py --model MODEL.gguf [--ngl all] [--threads 2] [--profile]

Times, in microseconds per call, each step of Context's generation loop on
its own (the same logits sampled again and again, the same token turned
into text again and again), then a whole generation three ways:

  decode only      batch.set_one + llama_decode + llama_synchronize in a
                   bare Python loop (what llama-bench's tg measures)
  decode + sample  the same plus the greedy sampler (llama_sampler_sample)
  generate_stream  mullama's streaming API, greedy, ignore_eos

The differences are the sampler's cost and the rest of the Python loop.
``--profile`` adds a cProfile of generate_stream.
"""

from __future__ import annotations

import argparse
import codecs
import cProfile
import ctypes
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_call(fn, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ngl", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    from mullama import Context, Model, SamplerParams, _backend

    ngl = -1 if a.ngl == "all" else int(a.ngl)
    model = Model.load(a.model, n_gpu_layers=ngl)
    ctx = Context(model, n_ctx=1024, n_threads=a.threads)
    L = _backend.lib()
    greedy = SamplerParams.greedy()
    chain = ctx._chain(greedy)
    smpl = chain.ptr()
    c = ctx.ptr()
    vocab = model._vocab
    bos = model.token_bos
    ctx.decode([bos])
    buf = ctx._piece_buf
    tok = L.llama_sampler_sample(smpl, c, -1)
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    batch = ctx._batch
    n_vocab = model.n_vocab

    print(f"model {Path(a.model).name}: n_vocab {model.n_vocab}, {model.description}; threads {a.threads}, ngl {a.ngl}")
    print("per call (best of 5), µs:")
    rows = [
        ("llama_sampler_sample (greedy, n_vocab logits)", lambda: L.llama_sampler_sample(smpl, c, -1), 2000),
        ("llama_get_logits_ith", lambda: L.llama_get_logits_ith(c, -1), 20000),
        ("llama_vocab_is_eog", lambda: L.llama_vocab_is_eog(vocab, tok), 20000),
        ("llama_token_to_piece + string_at", lambda: ctypes.string_at(buf, L.llama_token_to_piece(vocab, tok, buf, 256, 0, False)), 20000),
        ("utf-8 incremental decode", lambda: utf8.decode(b"abc"), 20000),
        ("batch.set_one (4 numpy scalar stores)", lambda: batch.set_one(tok, 5), 20000),
        ("ctypes no-op call (llama_n_ctx)", lambda: L.llama_n_ctx(c), 20000),
        ("numpy argmax over the logits (greedy alternative)", lambda: int(np.frombuffer(
            (ctypes.c_float * n_vocab).from_address(ctypes.addressof(L.llama_get_logits_ith(c, -1).contents)),
            dtype=np.float32).argmax()), 5000),
    ]
    for name, fn, n in rows:
        print(f"  {name:48s} {per_call(fn, n):8.2f}")

    # The abort callback that Context installs for prompt evaluation is a Python function that
    # ggml's CPU backend calls once per graph node.
    def one_by_one(use_ctx: bool, count: int = 48) -> float:
        ctx.clear_cache()
        t = time.perf_counter()
        for i in range(count):
            if use_ctx:
                ctx.decode([bos])
            else:
                batch.set_one(bos, i)
                L.llama_decode(c, batch.struct)
                L.llama_synchronize(c)
        dt = time.perf_counter() - t
        ctx._tokens = [bos] * count
        return dt / count * 1e6

    one_by_one(False)
    raw_d, ctx_d = [], []
    for _ in range(a.reps):
        raw_d.append(one_by_one(False))
        ctx_d.append(one_by_one(True))
    print(f"1-token decode, µs: bare llama_decode {statistics.median(raw_d):.1f}, Context.decode "
          f"{statistics.median(ctx_d):.1f} (abort callback + checks: {statistics.median(ctx_d) - statistics.median(raw_d):+.1f})")

    n = a.n_gen

    def argmax() -> int:
        p = L.llama_get_logits_ith(c, -1)
        return int(np.frombuffer((ctypes.c_float * n_vocab).from_address(ctypes.addressof(p.contents)),
                                 dtype=np.float32).argmax())

    def bare(sample: bool | str) -> float:
        ctx.clear_cache()
        ctx.decode([bos])
        t = time.perf_counter()
        token = bos
        for i in range(n):
            if sample == "argmax":
                token = argmax()
            elif sample:
                token = L.llama_sampler_sample(smpl, c, -1)
            batch.set_one(token, i + 1)
            L.llama_decode(c, batch.struct)
            L.llama_synchronize(c)
        dt = time.perf_counter() - t
        ctx._tokens = ctx._tokens[:1] + [bos] * n  # keep the bookkeeping consistent for clear_cache
        return dt / n * 1e6

    def stream() -> float:
        ctx.clear_cache()
        marks = []
        for _ in ctx.generate_stream([bos], max_tokens=n + 1, params=greedy, ignore_eos=True):
            marks.append((time.perf_counter(), len(ctx._tokens)))
        marks.append((time.perf_counter(), len(ctx._tokens)))
        (t0, n0), (t1, n1) = marks[0], marks[-1]
        return (t1 - t0) / (n1 - n0) * 1e6

    bare(False)
    res: dict[str, list[float]] = {"decode only": [], "decode + sample": [], "generate_stream": [],
                                   "decode + np.argmax": []}
    for _ in range(a.reps):
        res["decode only"].append(bare(False))
        res["decode + sample"].append(bare(True))
        res["generate_stream"].append(stream())
        res["decode + np.argmax"].append(bare("argmax"))
    print(f"whole generation of {n} tokens, µs/token (median of {a.reps}, interleaved):")
    med = {k: statistics.median(v) for k, v in res.items()}
    for k, v in med.items():
        print(f"  {k:18s} {v:9.1f}")
    print(f"  sampler cost       {med['decode + sample'] - med['decode only']:+9.1f}")
    print(f"  rest of the loop   {med['generate_stream'] - med['decode + sample']:+9.1f}")
    print(f"  argmax instead     {med['decode + np.argmax'] - med['decode only']:+9.1f}  (greedy through numpy)")

    if a.profile:
        ctx.clear_cache()
        pr = cProfile.Profile()
        pr.enable()
        for _ in ctx.generate_stream([bos], max_tokens=n + 1, params=greedy, ignore_eos=True):
            pass
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
