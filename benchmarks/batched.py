#!/usr/bin/env python3
"""Continuous batching, side by side in one run: llama-batched-bench vs mullama's Engine vs ``mullama serve``.

    python benchmarks/batched.py --model MODEL.gguf [--threads 2] [--ngl 0] [--batch 1,4,8,16,32] [--reps 3]

For each batch size B, every tool generates 128 tokens for each of B
sequences after a 128-token prompt each (random token ids, greedy, end of
generation ignored):

* llama-batched-bench (same library build): ``-npp 128 -ntg 128 -npl B``;
* the Engine, in this process: B requests submitted at once;
* the server, in a child process (``python -m mullama serve --parallel B``):
  B streaming /v1/completions clients over HTTP at once.

Generation speed is tokens per second over the generation phase only (from
the moment every sequence has its first token to the end), as batched-bench's
S_TG is.  Tools alternate within each repetition; medians are reported.  Then
time to first token under load: 16 clients each send 4 requests back to back
to a 16-slot server, so new requests arrive while the others generate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import cpu_name, default_cache_dir, lib_dir, read_build_info  # noqa: E402

N_PROMPT, N_GEN = 128, 128


def batched_bench_exe(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    key = read_build_info(lib_dir()).get("build_key")
    exe = default_cache_dir() / "build" / str(key) / "bin" / "llama-batched-bench"
    if not exe.is_file():
        sys.exit(f"{exe} is missing: build with `python3 scripts/build_lib.py --bench` (and MULLAMA_LIB pointing at "
                 f"its install dir), or pass --batched-bench PATH")
    return exe


def run_batched_bench(exe: Path, a: argparse.Namespace, b: int) -> float:
    cmd = [str(exe), "-m", a.model, "-c", str((N_PROMPT + N_GEN + 16) * b), "-b", "2048", "-ub", "512",
           "-npp", str(N_PROMPT), "-ntg", str(N_GEN), "-npl", str(b), "-t", str(a.threads), "-ngl", str(a.ngl),
           "--output-format", "jsonl"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(exe.parent)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    rows = [json.loads(line) for line in (out.stdout + out.stderr).splitlines() if line.startswith("{")]
    return float(rows[-1]["speed_tg"])


def prompts(n_vocab: int, b: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, n_vocab) for _ in range(N_PROMPT)] for _ in range(b)]


def run_engine(model: Any, a: argparse.Namespace, b: int, seed: int) -> float:
    from mullama import SamplerParams
    from mullama.engine import Engine
    params = SamplerParams.greedy() if a.params == "greedy" else SamplerParams()
    with Engine(model, parallel=b, n_ctx=N_PROMPT + N_GEN + 16, n_threads=a.threads, sampling=a.sampling) as eng:
        eng.generate([1, 2, 3], 4, params)  # warm-up
        reqs = [eng.submit(p, N_GEN, params, ignore_eos=True) for p in prompts(model.n_vocab, b, seed)]
        for r in reqs:
            r.text()
        start = max(r.first_piece_at or 0.0 for r in reqs)
        end = max(r.finished_at or 0.0 for r in reqs)
        return b * (N_GEN - 1) / (end - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, a: argparse.Namespace, parallel: int, n_ctx: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mullama", "serve", a.model, "--port", str(self.port), "--parallel", str(parallel),
             "--n-ctx", str(n_ctx), "--threads", str(a.threads), "--n-gpu-layers", str(a.ngl)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])},
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)

    def stream(self, prompt: list[int], max_tokens: int) -> tuple[float, float, float, int]:
        """(sent, first piece, end, pieces) of one streaming completion."""
        body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                           "stream": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        sent = time.monotonic()
        first, n = 0.0, 0
        with urllib.request.urlopen(req, timeout=600) as r:
            for line in r:
                if line.startswith(b"data: {") and b'"text": ""' not in line:
                    n += 1
                    if not first:
                        first = time.monotonic()
        return sent, first, time.monotonic(), n

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def run_server(a: argparse.Namespace, b: int, n_vocab: int, seed: int) -> float:
    srv = ServerProcess(a, b, N_PROMPT + N_GEN + 16)
    try:
        srv.stream([1, 2, 3], 4)  # warm-up
        results: list[tuple[float, float, float, int]] = [(0.0, 0.0, 0.0, 0)] * b
        ps = prompts(n_vocab, b, seed)

        def client(i: int) -> None:
            results[i] = srv.stream(ps[i], N_GEN)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        start, end = max(r[1] for r in results), max(r[2] for r in results)
        return b * (N_GEN - 1) / (end - start)
    finally:
        srv.close()


def ttft_under_load(a: argparse.Namespace, n_vocab: int, clients: int = 16,
                    per_client: int = 4) -> tuple[list[float], float]:
    srv = ServerProcess(a, clients, 256)
    try:
        srv.stream([1, 2, 3], 4)
        ttfts: list[float] = []
        rng = random.Random(7)

        def client() -> None:
            for _ in range(per_client):
                # arrivals spread out, so that each new request meets 15 others mid-generation
                time.sleep(rng.uniform(0.0, 1.0))
                sent, first, _, _ = srv.stream([rng.randrange(100, n_vocab) for _ in range(64)], 32)
                ttfts.append(first - sent)
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=30).read().decode()
        vals = {ln.split()[0]: float(ln.split()[1]) for ln in metrics.splitlines() if ln.startswith("mullama_time_to")}
        # the engine's own view (submission to first piece), warm-up request included
        engine_mean = vals["mullama_time_to_first_token_seconds_sum"] / vals["mullama_time_to_first_token_seconds_count"]
        return sorted(ttfts), engine_mean
    finally:
        srv.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("--batch", default="1,4,8,16,32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batched-bench", help="path of llama-batched-bench (default: beside the library's build)")
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument("--sampling", default="auto", choices=["auto", "cpu", "device"],
                    help="where the engine's sampler chains run (default auto)")
    ap.add_argument("--params", default="greedy", choices=["greedy", "default"],
                    help="greedy, or SamplerParams() (penalties, top-k/p, min-p, temperature)")
    ap.add_argument("--ttft-only", action="store_true", help="only the time-to-first-token measurement")
    ap.add_argument("--no-ttft", action="store_true", help="skip the time-to-first-token measurement")
    ap.add_argument("--markdown", type=Path, help="append the result table to this file")
    a = ap.parse_args()
    from mullama import Model
    exe = batched_bench_exe(a.batched_bench)
    model = Model.load(a.model, n_gpu_layers=a.ngl)
    sizes = [int(x) for x in a.batch.split(",")]
    speeds: dict[tuple[str, int], list[float]] = {}
    for rep in range(0 if a.ttft_only else a.reps):
        for b in sizes:
            tools = ["llama-batched-bench", "engine"] + ([] if a.no_server else ["server"])
            k = rep % len(tools)
            for tool in tools[k:] + tools[:k]:
                if tool == "llama-batched-bench":
                    v = run_batched_bench(exe, a, b)
                elif tool == "engine":
                    v = run_engine(model, a, b, seed=rep)
                else:
                    v = run_server(a, b, model.n_vocab, seed=rep)
                speeds.setdefault((tool, b), []).append(v)
                print(f"[batched] rep {rep + 1} B={b:2d} {tool:20s} {v:9.1f} tok/s", file=sys.stderr, flush=True)
    med = {key: statistics.median(v) for key, v in speeds.items()}
    header = "| tool | " + " | ".join(f"B={b}" for b in sizes) + " |"
    lines = [f"### Continuous batching: {Path(a.model).name}, {a.threads} threads, ngl {a.ngl}, {cpu_name()}", "",
             f"{time.strftime('%Y-%m-%d')}; generation tokens/s (all sequences together), medians of {a.reps}; "
             f"{N_PROMPT}-token prompts, {N_GEN} tokens each. Command: `{' '.join(sys.argv)}`", "",
             header, "|---|" + "---|" * len(sizes)]
    for tool in ("llama-batched-bench", "engine", "server"):
        if (tool, sizes[0]) not in med or a.ttft_only:
            continue
        cells = []
        for b in sizes:
            ratio = "" if tool == "llama-batched-bench" else f" ({med[(tool, b)] / med[('llama-batched-bench', b)]:.2f}×"
            if tool == "server":
                ratio += f"; {med[(tool, b)] / med[('engine', b)]:.2f}× engine"
            ratio += ")" if ratio else ""
            cells.append(f"{med[(tool, b)]:.1f}{ratio}")
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    if not a.no_server and not a.no_ttft:
        t, engine_mean = ttft_under_load(a, model.n_vocab)
        p = lambda q: 1e3 * t[min(len(t) - 1, int(q * len(t)))]  # noqa: E731
        lines += ["", f"Time to first token under load (16-slot server, 16 clients × 4 requests, each after a "
                      f"random 0–1 s pause, 64-token prompts, 32 tokens each): p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms, max {1e3 * t[-1]:.0f} ms "
                      f"over {len(t)} requests, as the clients saw it; {1e3 * engine_mean:.0f} ms on average inside the engine "
                      f"(submission to first piece)."]
    table = "\n".join(lines) + "\n"
    print(table)
    if a.markdown:
        with open(a.markdown, "a", encoding="utf-8") as f:
            f.write("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
