#!/usr/bin/env python3
"""Load phases on one server: does a small load run as fast after a busy burst as on a fresh server?

    python benchmarks/burst.py --model MODEL.gguf [--ngl -1] [--threads 8] [--parallel 32] [--n-ctx 512]
        [--phases 1,8,32,8,1,32,8] [--modes greedy,default] [--requests 3] [--llama-server PATH]

Clients stream ``/v1/completions`` (about ``--prompt-tokens`` random prompt
tokens each, ``--max-tokens`` generated, end of generation ignored); each of
a phase's N clients sends ``--requests`` requests back to back.  For each
mode (greedy: ``temperature`` 0; default: no sampling fields, the server's
defaults), the phases run in order on one ``mullama serve`` process; then
each distinct load runs again as the first phase of a fresh server.  Every
phase prints its aggregate generation speed (completion tokens over the
phase's wall time), time to first token (p50 / p99) and its ratio to the
fresh server's speed for the same load.

With ``--llama-server PATH`` (llama.cpp's own server, built from the same
source: ``scripts/build_lib.py --bench`` builds it beside llama-bench), the
distinct loads also run on a fresh ``llama-server -np PARALLEL -c
PARALLEL*N_CTX`` with the same clients, for the side-by-side table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from batched import free_port  # noqa: E402
from run import default_cache_dir, lib_dir, read_build_info  # noqa: E402


@dataclass
class Phase:
    server: str  # "mullama (one server)", "mullama (fresh)", "llama-server (fresh)"
    clients: int
    mode: str
    tok_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    seconds: float
    requests: int


class Server:
    """A server process on loopback, stopped by close()."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the server did not start: {' '.join(cmd)}")
            time.sleep(0.2)

    def stream(self, prompt: list[int], max_tokens: int, mode: str) -> tuple[float, float, float]:
        """(sent, first text, end) of one streaming completion."""
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
        if mode == "greedy":
            body["temperature"] = 0
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        sent = time.monotonic()
        first = 0.0
        with urllib.request.urlopen(req, timeout=600) as r:
            for line in r:
                if not first and line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    if any(c.get("text") for c in chunk.get("choices", [])):
                        first = time.monotonic()
        return sent, first or time.monotonic(), time.monotonic()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def mullama_server(a: argparse.Namespace) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return Server([sys.executable, "-m", "mullama", "serve", a.model, "--host", "127.0.0.1", "--port", str(port),
                   "--parallel", str(a.parallel), "--n-ctx", str(a.n_ctx), "--threads", str(a.threads),
                   "--n-gpu-layers", str(a.ngl)], port, env)


def llama_server(a: argparse.Namespace) -> Server:
    port = free_port()
    ngl = "999" if a.ngl < 0 else str(a.ngl)
    return Server([a.llama_server, "-m", a.model, "--host", "127.0.0.1", "--port", str(port), "-np", str(a.parallel),
                   "-c", str(a.parallel * a.n_ctx), "-t", str(a.threads), "-ngl", ngl, "--no-warmup"], port)


def run_phase(srv: Server, label: str, clients: int, mode: str, a: argparse.Namespace, rng: random.Random) -> Phase:
    prompts = [[[rng.randrange(100, a.n_vocab) for _ in range(a.prompt_tokens)] for _ in range(a.requests)]
               for _ in range(clients)]
    ttfts: list[float] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for p in prompts[i]:
                sent, first, _ = srv.stream(p, a.max_tokens, mode)
                ttfts.append(first - sent)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    if errors:
        raise RuntimeError(f"{label}: a client failed: {errors[0]!r}")
    ttfts.sort()
    n = clients * a.requests
    return Phase(label, clients, mode, n * a.max_tokens / wall, 1e3 * statistics.median(ttfts),
                 1e3 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))], wall, n)


def n_vocab(model: str) -> int:
    from mullama import Model
    m = Model.load(model, vocab_only=True)
    try:
        return m.n_vocab
    finally:
        m.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--parallel", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--phases", default="1,8,32,8,1,32,8")
    ap.add_argument("--modes", default="greedy,default")
    ap.add_argument("--requests", type=int, default=3, help="requests per client in a phase, back to back")
    ap.add_argument("--prompt-tokens", type=int, default=150)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary (default: the --bench build's, if any)")
    ap.add_argument("--parts", default="phases,fresh,llama-server",
                    help="what to run: phases (one server), fresh (mullama, fresh servers), llama-server")
    ap.add_argument("--json", help="write every phase here")
    ap.add_argument("--markdown", help="append the tables here")
    a = ap.parse_args()
    if a.llama_server is None:
        exe = default_cache_dir() / "build" / str(read_build_info(lib_dir()).get("build_key")) / "bin" / "llama-server"
        a.llama_server = str(exe) if exe.is_file() else None
    a.n_vocab = n_vocab(a.model)
    phases = [int(x) for x in a.phases.split(",")]
    modes = a.modes.split(",")
    rng = random.Random(7)
    results: list[Phase] = []

    def show(p: Phase, ref: Phase | None = None) -> None:
        ratio = f"  {p.tok_s / ref.tok_s:5.2f}x of fresh" if ref else ""
        print(f"{p.server:24s} {p.mode:8s} {p.clients:3d} clients: {p.tok_s:8.1f} tok/s  TTFT p50 "
              f"{p.ttft_p50_ms:7.1f} ms  p99 {p.ttft_p99_ms:7.1f} ms{ratio}", flush=True)

    parts = set(a.parts.split(","))
    one: list[Phase] = []
    if "phases" in parts:
        srv = mullama_server(a)
        try:
            srv.stream([1, 2, 3], 4, "greedy")  # warm-up
            for mode in modes:
                for c in phases:
                    p = run_phase(srv, "mullama (one server)", c, mode, a, rng)
                    one.append(p)
                    show(p)
        finally:
            srv.close()
    results += one

    fresh: dict[tuple[int, str], Phase] = {}
    servers = [("mullama (fresh)", mullama_server)] if "fresh" in parts else []
    if a.llama_server and "llama-server" in parts:
        servers.append(("llama-server (fresh)", llama_server))
    for label, make in servers:
        for mode in modes:
            for c in sorted(set(phases)):
                srv = make(a)
                try:
                    srv.stream([1, 2, 3], 4, "greedy")
                    p = run_phase(srv, label, c, mode, a, rng)
                finally:
                    srv.close()
                results.append(p)
                if label == "mullama (fresh)":
                    fresh[(c, mode)] = p
                show(p)

    lines = ["", f"Phases on one server ({Path(a.model).name}, --parallel {a.parallel} --n-ctx {a.n_ctx}, "
             f"{a.requests} requests per client, {a.prompt_tokens} prompt tokens, {a.max_tokens} generated):", "",
             "| mode | clients | tok/s | TTFT p50 ms | TTFT p99 ms | vs fresh server |", "|---|---|---|---|---|---|"]
    for p in one:
        ref = fresh.get((p.clients, p.mode))
        lines.append(f"| {p.mode} | {p.clients} | {p.tok_s:.0f} | {p.ttft_p50_ms:.1f} | {p.ttft_p99_ms:.1f} | "
                     f"{p.tok_s / ref.tok_s:.2f}x |" if ref else
                     f"| {p.mode} | {p.clients} | {p.tok_s:.0f} | {p.ttft_p50_ms:.1f} | {p.ttft_p99_ms:.1f} | – |")
    if any(p.server == "llama-server (fresh)" for p in results):
        lines += ["", "Fresh servers, same clients:", "",
                  "| mode | clients | llama-server tok/s | mullama tok/s | ratio | TTFT p50 ms (llama-server / mullama) "
                  "| TTFT p99 ms (llama-server / mullama) |", "|---|---|---|---|---|---|---|"]
        for p in results:
            if p.server != "llama-server (fresh)":
                continue
            m = fresh.get((p.clients, p.mode))
            if m:
                lines.append(f"| {p.mode} | {p.clients} | {p.tok_s:.0f} | {m.tok_s:.0f} | {m.tok_s / p.tok_s:.2f}x | "
                             f"{p.ttft_p50_ms:.1f} / {m.ttft_p50_ms:.1f} | {p.ttft_p99_ms:.1f} / {m.ttft_p99_ms:.1f} |")
    print("\n".join(lines))
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write("\n".join(lines) + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(p) for p in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
