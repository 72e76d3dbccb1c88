#!/usr/bin/env python3
"""A model split across two RPC servers in their own network namespaces (Linux, root).

    sudo python3 benchmarks/rpc_netns.py --model ~/.cache/mullama/models/SmolLM2-135M-Instruct.Q4_1.gguf

Each server (``mullama rpc-server``) runs in a namespace of its own, joined to
this one by a veth pair, so that every byte between the client and a server
crosses a network interface, with its own address, routes and counters.  Per
setup (the whole model local; split across the two servers; the same with
``--delay`` of added one-way latency per link, through netem, where the
kernel has it) it reports:

* greedy generation speed after the prompt (tokens/s, median of ``--reps``:
  a run of ``--n-gen`` tokens less a run of one), and the output, which must
  equal the local run's;
* bytes moved per generated token in each direction, from the interfaces'
  counters, the same difference (the model's upload at load time is reported
  separately).

Everything it creates (namespaces, links, processes) is removed on exit.
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

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
PREFIX = "mlrpc"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


class Hosts:
    """Two namespaces, each with a veth link to this one: 10.231.<i>.1 here, 10.231.<i>.2 there."""

    def __init__(self, n: int, threads: int) -> None:
        self.n, self.threads = n, threads
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Hosts:
        try:
            for i in range(1, self.n + 1):
                ns, here, there = f"{PREFIX}{i}", f"{PREFIX}h{i}", f"{PREFIX}n{i}"
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)
                sh("ip", "link", "set", there, "netns", ns)
                sh("ip", "addr", "add", f"10.231.{i}.1/24", "dev", here)
                sh("ip", "link", "set", here, "up")
                sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.231.{i}.2/24", "dev", there)
                sh("ip", "netns", "exec", ns, "ip", "link", "set", there, "up")
                sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                self.procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-m", "mullama", "rpc-server", "--host", f"10.231.{i}.2",
                     "--port", "50052", "--threads", str(self.threads)],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_ready(self) -> None:
        import socket
        for i in range(1, self.n + 1):
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection((f"10.231.{i}.2", 50052), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"rpc-server in {PREFIX}{i} did not start") from None
                    time.sleep(0.2)

    def endpoints(self) -> list[str]:
        return [f"10.231.{i}.2:50052" for i in range(1, self.n + 1)]

    def delay(self, ms: float) -> bool:
        """Add ``ms`` of one-way latency on both ends of every link (False where netem is missing)."""
        for i in range(1, self.n + 1):
            for cmd in (["tc", "qdisc", "replace", "dev", f"{PREFIX}h{i}", "root", "netem", "delay", f"{ms}ms"],
                        ["ip", "netns", "exec", f"{PREFIX}{i}", "tc", "qdisc", "replace", "dev", f"{PREFIX}n{i}",
                         "root", "netem", "delay", f"{ms}ms"]):
                if sh(*cmd, check=False).returncode != 0:
                    return False
        return True

    def counters(self) -> tuple[int, int]:
        """Bytes sent to and received from the servers so far, over all links."""
        tx = rx = 0
        for i in range(1, self.n + 1):
            stats = Path(f"/sys/class/net/{PREFIX}h{i}/statistics")
            tx += int((stats / "tx_bytes").read_text())
            rx += int((stats / "rx_bytes").read_text())
        return tx, rx

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for i in range(1, self.n + 1):
            sh("ip", "link", "del", f"{PREFIX}h{i}", check=False)
            sh("ip", "netns", "del", f"{PREFIX}{i}", check=False)


def run(model_path: str, rpc: list[str] | None, n_gen: int, reps: int, hosts: Hosts | None) -> dict[str, Any]:
    from mullama import Context, Model, SamplerParams
    before = hosts.counters() if hosts else (0, 0)
    model = Model.load(model_path, n_gpu_layers=-1 if rpc else 0, **({"rpc_servers": rpc} if rpc else {}))
    loaded = hosts.counters() if hosts else (0, 0)
    speeds, per_token = [], []
    text = ""
    with Context(model, n_ctx=1024) as ctx:
        def moved(n: int) -> tuple[float, int, int]:
            nonlocal text
            ctx.clear_cache()
            c0 = hosts.counters() if hosts else (0, 0)
            t = time.perf_counter()
            text = ctx.generate(PROMPT, max_tokens=n, params=SamplerParams.greedy(), ignore_eos=True)
            el = time.perf_counter() - t
            c1 = hosts.counters() if hosts else (0, 0)
            return el, c1[0] - c0[0], c1[1] - c0[1]

        for _ in range(reps):
            # the prompt's evaluation and first token alone, then the whole run:
            # the difference is what the n_gen - 1 decoded tokens cost
            t1, s1, r1 = moved(1)
            tn, sn, rn = moved(n_gen)
            speeds.append((n_gen - 1) / (tn - t1))
            per_token.append(((sn - s1) / (n_gen - 1), (rn - r1) / (n_gen - 1)))
    model.close()
    return {
        "tok_s": statistics.median(speeds), "speeds": speeds, "text": text,
        "upload_mb": (loaded[0] - before[0]) / 1e6,
        "bytes_per_token_sent": statistics.median(p[0] for p in per_token),
        "bytes_per_token_received": statistics.median(p[1] for p in per_token),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each rpc-server")
    ap.add_argument("--delay", type=float, default=0.5, help="one-way latency (ms) for the delayed run; 0 skips it")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("rpc_netns.py creates network namespaces: run it as root")
    out: dict[str, Any] = {"model": Path(a.model).name, "n_gen": a.n_gen, "reps": a.reps}
    out["local"] = run(a.model, None, a.n_gen, a.reps, None)
    with Hosts(2, a.threads) as hosts:
        out["two namespaces"] = run(a.model, hosts.endpoints(), a.n_gen, a.reps, hosts)
        if a.delay > 0:
            if hosts.delay(a.delay):
                out[f"two namespaces, +{a.delay} ms each way"] = run(a.model, hosts.endpoints(), a.n_gen, a.reps, hosts)
            else:
                out["netem"] = "unavailable (no sch_netem in this kernel): the delayed run was skipped"
    local = out["local"]
    print(f"{'setup':36s} {'tok/s':>8s} {'vs local':>8s} {'sent B/tok':>11s} {'recv B/tok':>11s} {'upload MB':>9s} same text")
    for name, r in out.items():
        if not isinstance(r, dict):
            continue
        print(f"{name:36s} {r['tok_s']:8.1f} {r['tok_s'] / local['tok_s']:8.3f} {r['bytes_per_token_sent']:11.0f} "
              f"{r['bytes_per_token_received']:11.0f} {r['upload_mb']:9.1f} {r['text'] == local['text']}")
    if "netem" in out:
        print(out["netem"])
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
