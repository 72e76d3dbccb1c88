#!/usr/bin/env python3
"""mullama against llama.cpp's llama-bench (and llama-cpp-python, when importable).

    python3 scripts/build_lib.py --bench            # once: libllama + llama-bench
    python3 benchmarks/run.py --model ~/.cache/mullama/models/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 benchmarks/run.py --model llama-1b.Q4_K_M.gguf --ngl all   # CUDA build

One run interleaves ``--reps`` repetitions of every tool (the order rotates
each repetition, so drift and noise fall on all of them alike):

* llama-bench: ``-p 512 -n 128 -r 1 -t T -ngl N -o json`` (a fresh process
  each time; it warms up itself).
* mullama and llama-cpp-python: one worker process each, kept alive across
  repetitions, with the model loaded once and warmed up.  Each repetition
  measures, on an emptied KV cache:
    pp    ``decode()`` of n_prompt tokens (BOS + random ids) + synchronize;
    tg    greedy generation of n_gen tokens after a 1-token prompt (BOS) with
          ignore_eos, through the streaming API, timed token by token
          (llama-bench's tg also decodes from position 0);
    ttft  time to the first streamed token after an n_prompt-token prompt.

It prints medians with min..max and the ratios to llama-bench, writes the
raw numbers as JSON (``--json``) and replaces this run's section of
BENCHMARKS.md (``--markdown``; sections are keyed by ``--label``).
``--merge results.json`` only renders a saved JSON into the markdown file.
"""

from __future__ import annotations

import argparse
import codecs
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_MD = ROOT / "BENCHMARKS.md"
PROTO = "@@BENCH "  # worker protocol lines on stdout start with this
TOOLS = ("llama-bench", "mullama", "mullama-portable", "mullama-node", "mullama-node-async", "llama-cpp-python")
NODE_TOOLS = {"mullama-node": "sync", "mullama-node-async": "async"}  # benchmarks/node_worker.js modes


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# small helpers


def _portable(text: str) -> str:
    """Results name paths relative to the checkout and the home folder, never this machine's."""
    root = str(Path(__file__).resolve().parent.parent)
    return text.replace(root + "/", "").replace(root, ".").replace(str(Path.home()), "~")
# ---------------------------------------------------------------------------


def rss_kib(field: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status, in KiB (0 if unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``interval`` seconds (from /proc/stat; 0 where unavailable)."""
    def sample() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return f[3] + (f[4] if len(f) > 4 else 0), sum(f[:8])
    try:
        i0, t0 = sample()
        time.sleep(interval)
        i1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(f[:8]) - f[3] - f[4]) / _TICK


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0


def children_cpu_seconds() -> float:
    import resource  # noqa: PLC0415

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_quiet(max_wait: float, threshold: float) -> tuple[float, float]:
    """Wait (up to max_wait s) until other processes leave the CPUs alone; returns (waited s, busy fraction)."""
    start = time.monotonic()
    busy = cpu_busy()
    while busy > threshold and time.monotonic() - start < max_wait:
        time.sleep(1.0)
        busy = cpu_busy()
    return time.monotonic() - start, busy


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return "; ".join(line.strip() for line in out.splitlines() if line.strip()) or None


def default_cache_dir() -> Path:
    if os.environ.get("MULLAMA_CACHE"):
        return Path(os.environ["MULLAMA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mullama"


def lib_dir() -> Path:
    """The folder of the libllama that mullama will load (MULLAMA_LIB, else the package's)."""
    env = os.environ.get("MULLAMA_LIB")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else p.parent
    return ROOT / "mullama" / "lib"


def read_build_info(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / "build_info.json").read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def build_command(info: dict[str, Any]) -> str:
    cmd = "python3 scripts/build_lib.py"
    if info.get("backend") and info["backend"] != "cpu":
        cmd += f" --backend {info['backend']}"
    if info.get("cuda_arch"):
        cmd += f" --cuda-arch {info['cuda_arch']}"
    if info.get("portable"):
        cmd += " --portable"
    return cmd + " --bench"


def find_llama_bench(explicit: str | None, info: dict[str, Any]) -> Path:
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise BenchError(f"--llama-bench {p}: no such file")
        return p
    key = info.get("build_key")
    if not key:
        raise BenchError(f"{lib_dir()} has no build_info.json naming its build tree, so llama-bench cannot be "
                         f"found; build with `{build_command(info)}` or pass --llama-bench PATH")
    tree = default_cache_dir() / "build" / str(key)
    cands = [tree / "bin" / "llama-bench", tree / "llama-bench" / "llama-bench"]
    for p in cands:
        if p.is_file():
            return p
    raise BenchError(f"llama-bench is missing ({cands[0]}): the library in {lib_dir()} was built without it. "
                     f"Run `{build_command(info)}` (this library's build flags plus --bench), or pass --llama-bench PATH")


def bench_env(exe: Path) -> dict[str, str]:
    """llama-bench's RUNPATH is $ORIGIN, but the libraries it needs are in the build tree's bin/."""
    env = dict(os.environ)
    dirs = [str(exe.parent), str(exe.parent.parent / "bin")]
    if env.get("LD_LIBRARY_PATH"):
        dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs)
    return env


# ---------------------------------------------------------------------------
# workers (one process per Python tool)
# ---------------------------------------------------------------------------


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(PROTO + json.dumps(obj) + "\n")
    sys.stdout.flush()


def prompt_tokens(n_vocab: int, bos: int, n: int, seed: int = 1234) -> list[int]:
    import random  # noqa: PLC0415

    rng = random.Random(seed)
    first = [bos] if bos >= 0 else []
    return first + [rng.randrange(n_vocab) for _ in range(n - len(first))]


def model_facts(arch_meta: Any, n_layer: int, n_head: int, n_embd: int, n_head_kv: int, n_ctx: int) -> dict[str, Any]:
    head_dim = int(arch_meta("key_length") or 0) or n_embd // max(n_head, 1)
    head_dim_v = int(arch_meta("value_length") or 0) or head_dim
    # K and V, f16 (2 bytes): 2 * n_layer * n_ctx * n_head_kv * head_dim * 2
    kv = n_layer * n_ctx * n_head_kv * (head_dim + head_dim_v) * 2
    return {"n_layer": n_layer, "n_head": n_head, "n_head_kv": n_head_kv, "n_embd": n_embd,
            "head_dim": head_dim, "kv_bytes": kv}


def worker_mullama(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import mullama  # noqa: PLC0415
    from mullama import Context, Model, SamplerParams, _backend  # noqa: PLC0415

    _backend.lib()  # the native library, loaded (llama_cpp loads its own at import)
    rss0 = rss_kib()
    t0 = time.perf_counter()
    model = Model.load(a.model, n_gpu_layers=a.ngl)
    t_load = time.perf_counter() - t0
    rss_load = rss_kib()
    ctx = Context(model, n_ctx=a.n_ctx, n_batch=2048, n_threads=a.threads)
    rss_ctx = rss_kib()
    L = _backend.lib()
    arch = model.architecture or "llama"

    def arch_meta(k: str) -> str | None:
        return model.meta(f"{arch}.attention.{k}")

    facts = model_facts(arch_meta, model.n_layer, model.n_head, model.n_embd,
                        int(L.llama_model_n_head_kv(model.ptr())), ctx.n_ctx)
    greedy = SamplerParams.greedy()
    bos = model.token_bos
    toks = prompt_tokens(model.n_vocab, bos, a.n_prompt)
    gen_prompt = [bos if bos >= 0 else toks[0]]

    def pp() -> float:
        ctx.clear_cache()
        t = time.perf_counter()
        ctx.decode(toks)
        L.llama_synchronize(ctx.ptr())
        return time.perf_counter() - t

    def ttft() -> float:
        ctx.clear_cache()
        t = time.perf_counter()
        g = ctx.generate_stream(toks, max_tokens=1, params=greedy, ignore_eos=True)
        for _ in g:
            break
        dt = time.perf_counter() - t
        g.close()
        return dt

    def tg(n_gen: int) -> list[tuple[float, int]]:
        ctx.clear_cache()
        marks: list[tuple[float, int]] = []
        clock = time.perf_counter
        held = ctx._tokens  # the list the generation loop appends to (read only, for the count)
        marks.append((clock(), 0))  # the call: the 1-token prompt is decoded after it
        for _piece in ctx.generate_stream(gen_prompt, max_tokens=n_gen + 1, params=greedy, ignore_eos=True):
            marks.append((clock(), len(held)))
        marks.append((clock(), len(held)))
        return marks

    # warm-up (llama-bench warms up too)
    pp()
    tg(8)
    emit({"ready": True, "tool": "mullama", "version": mullama.__version__, "t_load_s": t_load,
          "rss_start_kib": rss0, "rss_load_kib": rss_load, "rss_ctx_kib": rss_ctx, "n_ctx": ctx.n_ctx,
          "model": {"desc": model.description, "n_params": model.n_params, "size": model.size,
                    "n_vocab": model.n_vocab, "name": model.name,
                    "make_model": model.meta("mullama.bench.make_model"), **facts},
          "devices": mullama.devices(), "system_info": mullama.system_info()})
    serve(pp, tg, ttft, a.n_gen)


def worker_llama_cpp_python(a: argparse.Namespace) -> None:
    import llama_cpp  # noqa: PLC0415

    rss0 = rss_kib()

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=a.model, n_gpu_layers=a.ngl, n_ctx=a.n_ctx, n_batch=2048, n_ubatch=512,
                          n_threads=a.threads, n_threads_batch=a.threads, flash_attn=True, verbose=False)
    t_load = time.perf_counter() - t0
    rss_ctx = rss_kib()  # Llama() loads the model and creates the context in one step
    bos = llm.token_bos()
    toks = prompt_tokens(llm.n_vocab(), bos, a.n_prompt)
    gen_prompt = [bos if bos >= 0 else toks[0]]
    sample_kw = dict(top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)

    def pp() -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(toks)
        llama_cpp.llama_synchronize(llm.ctx)
        return time.perf_counter() - t

    def ttft() -> float:
        llm.reset()
        t = time.perf_counter()
        for tok in llm.generate(toks, reset=True, **sample_kw):
            llm.detokenize([tok])
            break
        return time.perf_counter() - t

    def tg(n_gen: int) -> list[tuple[float, int]]:
        # the same work per token as mullama's stream: sample, detokenize, decode UTF-8, evaluate
        llm.reset()
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        marks: list[tuple[float, int]] = []
        clock = time.perf_counter
        n = 0
        marks.append((clock(), 0))
        for tok in llm.generate(gen_prompt, reset=True, **sample_kw):
            utf8.decode(llm.detokenize([tok]))
            n += 1
            marks.append((clock(), llm.n_tokens))
            if n == n_gen + 1:
                break
        return marks

    pp()
    tg(8)
    lib_path = getattr(getattr(llama_cpp.llama_cpp, "_lib", None), "_name", None)
    emit({"ready": True, "tool": "llama-cpp-python", "version": llama_cpp.__version__, "t_load_s": t_load,
          "lib": lib_path,
          "rss_start_kib": rss0, "rss_load_kib": None, "rss_ctx_kib": rss_ctx, "n_ctx": llm.n_ctx()})
    serve(pp, tg, ttft, a.n_gen)


def serve(pp: Any, tg: Any, ttft: Any, n_gen: int) -> None:
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "rep":
            pp()  # untimed warm-up: the process sat idle while the other tools ran (llama-bench warms up too)
            emit({"pp_s": pp(), "tg_marks": tg(n_gen), "ttft_s": ttft()})
        elif cmd == "quit":
            emit({"rss_peak_kib": rss_kib("VmHWM"), "rss_end_kib": rss_kib()})
            return


class Worker:
    def __init__(self, tool: str, a: argparse.Namespace) -> None:
        self.tool = tool
        common = ["--model", a.model, "--threads", str(a.threads), "--ngl", str(a.ngl_int), "--n-ctx", str(a.n_ctx),
                  "--n-prompt", str(a.n_prompt), "--n-gen", str(a.n_gen)]
        env = None
        if tool in NODE_TOOLS:
            cmd = ["node", str(Path(__file__).resolve().parent / "node_worker.js"), "--mode", NODE_TOOLS[tool], *common]
        elif tool == "mullama-portable":
            # the same worker over another libllama (a prebuilt package's, all CPU variants)
            cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--worker", "mullama", *common]
            env = dict(os.environ, MULLAMA_LIB=str(Path(a.portable_lib).resolve()))
        else:
            cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--worker", tool, *common]
        self.stderr_path = Path(a.log_dir) / f"{tool}.stderr.log"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, bufsize=1, env=env)
        self.info = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PROTO):
                return json.loads(line[len(PROTO):])
        self.proc.wait()
        self.stderr.flush()
        tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-6:]
        raise BenchError(f"{self.tool} worker exited ({self.proc.returncode}): " + " | ".join(tail))

    def rep(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("rep\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> dict[str, Any]:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            out = self.read()
        except (BenchError, OSError, ValueError):
            out = {}
        self.proc.wait(timeout=60)
        self.stderr.close()
        return out


def tg_stats(marks: list[list[float]], n_gen: int) -> tuple[float, float, list[float]]:
    """Generation speed two ways, and the per-token intervals (s).

    ``marks`` are (time, tokens in the cache): the call (0), each streamed
    piece, the end.  Steady state: tokens decoded between the first piece and
    the end (n_gen) over that time.  Full: the first n_gen decodes from the
    call on (the 1-token prompt's included, as llama-bench's tg counts them),
    extrapolated from the last mark with the steady-state time per token.
    """
    if len(marks) < 3:
        return float("nan"), float("nan"), []
    (t_c, _), (t_a, n_a), (t_b, n_b) = marks[0], marks[1], marks[-1]
    steps = []
    for (t0, n0), (t1, n1) in zip(marks[1:], marks[2:]):
        if n1 > n0:
            steps += [(t1 - t0) / (n1 - n0)] * int(n1 - n0)
    per = (t_b - t_a) / max(1, n_b - n_a)
    full = (t_b - t_c) - per * (n_b - n_gen)  # n_b = n_gen + 1 decodes at the end; drop the extra one
    return (n_b - n_a) / (t_b - t_a), n_gen / full, steps


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------


def run_llama_bench(exe: Path, a: argparse.Namespace) -> dict[str, float]:
    cmd = [str(exe), "-m", a.model, "-p", str(a.n_prompt), "-n", str(a.n_gen), "-r", "1", "-t", str(a.threads),
           "-ngl", str(a.ngl_bench), "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=bench_env(exe))
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
        raise BenchError(f"llama-bench failed ({proc.returncode}): {tail}")
    rows = json.loads(proc.stdout)
    out: dict[str, Any] = {}
    for r in rows:
        if r.get("n_prompt") and not r.get("n_gen"):
            out["pp_tps"] = float(r["avg_ts"])
        elif r.get("n_gen") and not r.get("n_prompt"):
            out["tg_tps"] = float(r["avg_ts"])
        out.setdefault("meta", {k: r.get(k) for k in ("build_commit", "cpu_info", "gpu_info", "backends",
                                                       "model_type", "model_size", "model_n_params",
                                                       "n_threads", "n_gpu_layers", "flash_attn", "n_batch",
                                                       "n_ubatch", "type_k", "type_v")})
    return out


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians, min and max per tool and metric, and the ratios to llama-bench."""
    out: dict[str, Any] = {}
    for tool, d in raw["tools"].items():
        reps = d.get("reps", [])
        if not reps:
            continue
        s: dict[str, Any] = {}
        for m in ("pp_tps", "tg_tps", "tg_full_tps", "ttft_ms", "tok_p50_ms", "tok_p90_ms"):
            xs = [r[m] for r in reps if r.get(m) is not None]
            if xs:
                s[m] = {"median": median(xs), "min": min(xs), "max": max(xs)}
        out[tool] = s
    ref = out.get("llama-bench", {})
    for tool, s in out.items():
        if tool == "llama-bench" or not ref:
            continue
        for m in ("pp_tps", "tg_tps", "tg_full_tps"):
            rk = "tg_tps" if m == "tg_full_tps" else m  # llama-bench's tg counts every decode
            if m in s and rk in ref:
                s[m]["ratio"] = s[m]["median"] / ref[rk]["median"]
        if "tg_tps" in s and "tg_tps" in ref:
            s["overhead_us"] = 1e6 / s["tg_tps"]["median"] - 1e6 / ref["tg_tps"]["median"]
    return out


def measure(a: argparse.Namespace) -> dict[str, Any]:
    info = read_build_info(lib_dir())
    bench_exe = None if a.no_llama_bench else find_llama_bench(a.llama_bench, info)
    Path(a.log_dir).mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = {
        "label": a.label, "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "gpu": gpu_names(),
                    "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()},
        "threads": a.threads, "ngl": a.ngl, "n_prompt": a.n_prompt, "n_gen": a.n_gen, "n_ctx": a.n_ctx,
        "reps": a.reps, "max_others": a.max_others, "model_path": a.model, "model_file_bytes": Path(a.model).stat().st_size,
        "build": info, "lib_dir": str(lib_dir()), "mullama_lib_env": os.environ.get("MULLAMA_LIB"), "llama_bench": str(bench_exe) if bench_exe else None,
        "argv": sys.argv[1:], "notes": a.note or [], "repro": a.repro, "tools": {}, "skipped": {},
    }
    workers: dict[str, Worker] = {}
    for tool in ("mullama", "mullama-portable", *NODE_TOOLS, "llama-cpp-python"):
        if tool == "mullama-portable" and not a.portable_lib:
            continue
        if tool == "llama-cpp-python" and a.no_llama_cpp_python:
            raw["skipped"][tool] = "--no-llama-cpp-python"
            continue
        if tool in NODE_TOOLS and a.no_node:
            raw["skipped"][tool] = "--no-node"
            continue
        print(f"[run] starting {tool} worker ...", file=sys.stderr, flush=True)
        try:
            workers[tool] = Worker(tool, a)
        except BenchError as e:
            if tool == "mullama":
                raise
            raw["skipped"][tool] = str(e)
            print(f"[run] {tool} skipped: {e}", file=sys.stderr, flush=True)
            continue
        raw["tools"][tool] = {"info": workers[tool].info, "reps": []}
    if bench_exe:
        raw["tools"]["llama-bench"] = {"reps": []}
    order = [t for t in TOOLS if t in raw["tools"]]
    try:
        for i in range(a.reps):
            k = i % len(order)
            for tool in order[k:] + order[:k]:
                for attempt in range(a.retries + 1):
                    waited, busy = wait_quiet(a.quiet_wait, a.quiet_threshold) if a.quiet_wait > 0 else (0.0, 0.0)
                    if busy > a.quiet_threshold:
                        print(f"[run] warning: CPUs {100 * busy:.0f}% busy before {tool} rep {i + 1} "
                              f"(other processes); its numbers may be disturbed", file=sys.stderr, flush=True)
                    # CPU time that other processes take during the measurement (all CPUs' busy time
                    # minus the measured process's own): a disturbed repetition is measured again.
                    t0, b0 = time.monotonic(), busy_seconds()
                    own0 = children_cpu_seconds() if tool == "llama-bench" else proc_cpu_seconds(workers[tool].proc.pid)
                    if tool == "llama-bench":
                        assert bench_exe is not None
                        r = run_llama_bench(bench_exe, a)
                        raw["tools"][tool].setdefault("meta", r.pop("meta", None))
                        row = {"pp_tps": r.get("pp_tps"), "tg_tps": r.get("tg_tps")}
                        own = children_cpu_seconds() - own0
                    else:
                        w = workers[tool].rep()
                        own = proc_cpu_seconds(workers[tool].proc.pid) - own0
                        tps, full, steps = tg_stats(w["tg_marks"], a.n_gen)
                        steps.sort()
                        row = {"pp_tps": a.n_prompt / w["pp_s"], "tg_tps": tps, "tg_full_tps": full,
                               "ttft_ms": 1e3 * w["ttft_s"],
                               "tok_p50_ms": 1e3 * steps[len(steps) // 2] if steps else None,
                               "tok_p90_ms": 1e3 * steps[int(len(steps) * 0.9)] if steps else None}
                    wall = time.monotonic() - t0
                    others = max(0.0, busy_seconds() - b0 - own) / max(wall, 1e-9)  # in CPUs
                    row.update(cpu_busy_before=round(busy, 3), waited_s=round(waited, 1),
                               others_cpus=round(others, 3), attempt=attempt)
                    if others <= a.max_others or attempt == a.retries:
                        break
                    print(f"[run] rep {i + 1}/{a.reps} {tool}: other processes took {others:.2f} CPUs during "
                          f"it (pp {row['pp_tps']:.1f}, tg {row['tg_tps']:.2f}); measuring again",
                          file=sys.stderr, flush=True)
                    raw["tools"][tool].setdefault("discarded", []).append(row)
                raw["tools"][tool]["reps"].append(row)
                print(f"[run] rep {i + 1}/{a.reps} {tool:17s} pp {row['pp_tps']:9.1f} t/s   "
                      f"tg {row['tg_tps']:8.2f} t/s" + (f"   ttft {row['ttft_ms']:7.1f} ms" if "ttft_ms" in row else ""),
                      file=sys.stderr, flush=True)
    finally:
        for tool, worker in workers.items():
            raw["tools"][tool]["end"] = worker.close()
    raw["machine"]["loadavg_end"] = os.getloadavg()
    raw["summary"] = summarize(raw)
    return raw


# ---------------------------------------------------------------------------
# report: console and markdown
# ---------------------------------------------------------------------------


def spread(s: dict[str, float], nd: int = 1) -> str:
    return f"{s['median']:.{nd}f} ({s['min']:.{nd}f}–{s['max']:.{nd}f})"


def console(raw: dict[str, Any]) -> str:
    summ = raw["summary"]
    lines = [f"{'tool':17s} {'pp t/s  median (min-max)':>30s} {'tg t/s  median (min-max)':>28s} "
             f"{'pp x':>6s} {'tg x':>6s} {'ovh us/tok':>10s} {'ttft ms':>9s} {'tg full x':>9s}"]
    for tool in TOOLS:
        s = summ.get(tool)
        if not s:
            continue
        pp, tg = s.get("pp_tps"), s.get("tg_tps")
        lines.append(f"{tool:17s} {spread(pp) if pp else '-':>30s} {spread(tg, 2) if tg else '-':>28s} "
                     f"{pp.get('ratio', 1.0) if pp else float('nan'):6.3f} {tg.get('ratio', 1.0) if tg else float('nan'):6.3f} "
                     f"{s.get('overhead_us', 0.0):10.1f} {s['ttft_ms']['median'] if 'ttft_ms' in s else float('nan'):9.1f} "
                     f"{s.get('tg_full_tps', {}).get('ratio', float('nan')):9.3f}")
    for tool, why in raw.get("skipped", {}).items():
        lines.append(f"{tool}: skipped ({why})")
    return "\n".join(lines)


def title_of(raw: dict[str, Any]) -> str:
    b = raw.get("build", {})
    where = (raw["machine"].get("gpu") or "").split(",")[0] if raw["ngl"] not in (0, "0") else raw["machine"]["cpu"]
    return f"{Path(raw['model_path']).name} on {where} ({b.get('backend', '?')} build, {raw['threads']} threads)"


def markdown_section(raw: dict[str, Any]) -> str:
    summ = raw["summary"]
    b = raw.get("build", {})
    m = raw["machine"]
    info = raw["tools"].get("mullama", {}).get("info", {})
    mi = info.get("model", {})
    n_ctx = info.get("n_ctx", raw["n_ctx"])
    P, G = raw["n_prompt"], raw["n_gen"]
    out = [f"### {title_of(raw)}", ""]
    busy = [r.get("cpu_busy_before") for t in raw["tools"].values() for r in t.get("reps", [])]
    busy = [x for x in busy if x is not None]
    out.append(f"- Date: {raw['date']}; {raw['reps']} interleaved repetitions per tool "
               f"(order rotated each repetition); load average {m['loadavg_start'][0]:.2f} at start, "
               f"{m.get('loadavg_end', [float('nan')])[0]:.2f} at end"
               + (f"; CPUs at most {100 * max(busy):.0f}% busy (other processes) before a measurement" if busy else ""))
    others = [r.get("others_cpus") for t in raw["tools"].values() for r in t.get("reps", [])]
    others = [x for x in others if x is not None]
    n_disc = sum(len(t.get("discarded", [])) for t in raw["tools"].values())
    if others:
        out.append(f"- Other processes used at most {max(others):.2f} CPUs during a kept measurement; "
                   f"{n_disc} disturbed measurement(s) (over {raw.get('max_others', 0.1)} CPUs) were repeated")
    out.append(f"- Machine: CPU {m['cpu']} ({m['cpus']} CPUs)" + (f"; GPU {m['gpu']}" if m.get("gpu") else "")
               + f"; {m['os']}; Python {m['python']}")
    out.append(f"- Threads: {raw['threads']}; GPU layers: {raw['ngl']}; n_ctx {n_ctx}; "
               f"n_batch 2048, n_ubatch 512, flash attention auto (all tools)")
    out.append(f"- Model: `{Path(raw['model_path']).name}`: {mi.get('desc', '?')}, "
               f"{(mi.get('n_params') or 0) / 1e6:.0f}M parameters, n_vocab {mi.get('n_vocab', '?')}, "
               f"{mi.get('n_layer', '?')} layers, {mi.get('n_head', '?')}/{mi.get('n_head_kv', '?')} heads (q/kv), "
               f"file {fmt_bytes(raw['model_file_bytes'])}")
    out.append(f"- Library: llama.cpp `{str(b.get('llama_cpp_commit', '?'))[:10]}`, build `{b.get('build_key', '?')}` "
               f"({b.get('backend', '?')}" + (f", CUDA arch {b['cuda_arch']}" if b.get("cuda_arch") else "") + ")")
    lcp = raw["tools"].get("llama-cpp-python", {}).get("info", {})
    if lcp:
        lib = str(lcp.get("lib") or "")
        own = "site-packages" in lib or "dist-packages" in lib
        out.append(f"- llama-cpp-python {lcp.get('version')}, flash_attn=True, "
                   + ("its own bundled libllama (built from source with the same llama.cpp commit)" if own
                      else f"loading `{lib}`"))
    for tool, why in raw.get("skipped", {}).items():
        out.append(f"- {tool}: not measured: {why}")
    for note in raw.get("notes", []):
        out.append(f"- {note}")
    full = any("tg_full_tps" in summ.get(t, {}) for t in TOOLS)
    out += ["", f"| tool | pp{P} tok/s | tg{G} tok/s | pp vs llama-bench | tg vs llama-bench | "
                f"ms/token (p50 / p90) | overhead µs/token | TTFT, {P}-token prompt |"
            + (f" tg{G} incl. 1st decode (vs llama-bench) |" if full else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if full else "")]
    ref = summ.get("llama-bench", {})
    for tool in TOOLS:
        s = summ.get(tool)
        if not s:
            continue
        pp, tg = s.get("pp_tps"), s.get("tg_tps")
        if tool == "llama-bench":
            ms = f"{1e3 / tg['median']:.2f} (mean)" if tg else "-"
            ttft = f"({1e3 * P / pp['median']:.1f} ms = pp{P} time)" if pp else "-"
            out.append(f"| llama-bench | {spread(pp) if pp else '-'} | {spread(tg, 2) if tg else '-'} | 1 | 1 | "
                       f"{ms} | 0 | {ttft} |" + (f" {tg['median']:.2f} (1) |" if full and tg else ""))
            continue
        tf = s.get("tg_full_tps")
        tail = (f" {tf['median']:.2f} ({tf.get('ratio', float('nan')):.3f}) |" if tf else " - |") if full else ""
        ms = (f"{s['tok_p50_ms']['median']:.2f} / {s['tok_p90_ms']['median']:.2f}" if "tok_p50_ms" in s else "-")
        out.append(f"| {tool} | {spread(pp) if pp else '-'} | {spread(tg, 2) if tg else '-'} | "
                   f"{pp.get('ratio', float('nan')):.3f} | {tg.get('ratio', float('nan')):.3f} | {ms} | "
                   f"{s.get('overhead_us', float('nan')):+.0f} | {spread(s['ttft_ms'])} ms |" + tail
                   if ref else
                   f"| {tool} | {spread(pp)} | {spread(tg, 2)} | - | - | {ms} | - | {spread(s['ttft_ms'])} ms |" + tail)
    out += ["", "Memory (resident set of the process, from /proc/self/status):", "",
            "| tool | RSS before load (Python, imports, native library) | RSS after load | RSS after context | peak RSS | model file "
            f"| KV cache (f16, n_ctx {n_ctx}) |", "|---|---|---|---|---|---|---|"]
    kv = mi.get("kv_bytes")
    for tool in ("mullama", *NODE_TOOLS, "llama-cpp-python"):
        t = raw["tools"].get(tool)
        if not t:
            continue
        i, e = t.get("info", {}), t.get("end", {})
        k = lambda v: fmt_bytes(v * 1024) if v else "-"  # noqa: E731
        load = k(i.get("rss_load_kib")) if i.get("rss_load_kib") else "(one step: Llama())"
        out.append(f"| {tool} | {k(i.get('rss_start_kib'))} | {load} | {k(i.get('rss_ctx_kib'))} | {k(e.get('rss_peak_kib'))} | "
                   f"{fmt_bytes(raw['model_file_bytes'])} | {fmt_bytes(kv) if kv else '-'} |")
    out += ["", "Reproduce:", "", "```sh"]
    if raw.get("repro"):
        out += list(raw["repro"])
    else:
        home = str(Path.home())
        tilde = lambda x: "~" + x[len(home):] if x.startswith(home + "/") else x  # noqa: E731
        env_lib = raw.get("mullama_lib_env")
        out.append(build_command(b) + (f" --install-dir {tilde(env_lib)}" if env_lib else ""))
        if mi.get("make_model"):
            out.append(f"python3 benchmarks/make_model.py {mi['make_model']} --out {Path(raw['model_path']).name}")
        out.append((f"MULLAMA_LIB={tilde(env_lib)} " if env_lib else "") + "python3 benchmarks/run.py "
                   + " ".join(shlex.quote(tilde(x)) for x in repro_argv(raw["argv"])))
    out += ["```", ""]
    return "\n".join(out)


def repro_argv(argv: list[str]) -> list[str]:
    """The command line without the options that only say where output goes."""
    drop = {"--json", "--markdown", "--log-dir", "--note"}
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
            continue
        if x in drop:
            skip = True
            continue
        if x.split("=", 1)[0] in drop:
            continue
        out.append(x)
    return out


MD_HEADER = """# Benchmarks

Written by `benchmarks/run.py`; each section below is replaced by the next run with the same label.
"""


def update_markdown(path: Path, label: str, section: str) -> None:
    start, end = f"<!-- bench:{label}:start -->", f"<!-- bench:{label}:end -->"
    block = f"{start}\n{section.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else MD_HEADER
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(_portable(text))


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF model to benchmark")
    ap.add_argument("--threads", "-t", type=int, default=2, help="CPU threads for every tool (default 2)")
    ap.add_argument("--ngl", default="0", help="GPU layers: a number, or 'all' (default 0: CPU only)")
    ap.add_argument("--reps", "-r", type=int, default=5)
    ap.add_argument("--n-prompt", "-p", type=int, default=512)
    ap.add_argument("--n-gen", "-n", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=1024, help="context of the Python tools (llama-bench sizes its own)")
    ap.add_argument("--llama-bench", default=None, help="llama-bench binary (default: from the library's build tree)")
    ap.add_argument("--quiet-wait", type=float, default=120.0,
                    help="before each measurement wait up to this many seconds for other processes to leave "
                         "the CPUs idle (0: don't wait)")
    ap.add_argument("--quiet-threshold", type=float, default=0.25,
                    help="busy fraction of all CPUs counted as quiet (default 0.25)")
    ap.add_argument("--max-others", type=float, default=0.1,
                    help="CPUs that other processes may use during a measurement before it is repeated "
                         "(default 0.1)")
    ap.add_argument("--retries", type=int, default=4, help="repeats of a disturbed measurement (default 4)")
    ap.add_argument("--no-llama-bench", action="store_true")
    ap.add_argument("--portable-lib", default=None, metavar="DIR",
                    help="also measure mullama over this libllama folder (e.g. dist/lib/linux-x64, a prebuilt package's)")
    ap.add_argument("--no-llama-cpp-python", action="store_true")
    ap.add_argument("--no-node", action="store_true", help="leave out mullama's Node.js binding")
    ap.add_argument("--label", default=None, help="section key in the markdown (default: backend-model-threads)")
    ap.add_argument("--note", action="append", help="a line added to the markdown section (repeatable)")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--markdown", default=str(BENCH_MD), help="markdown file to update ('' for none)")
    ap.add_argument("--repro", action="append", help="a reproduction command shown instead of the derived ones")
    ap.add_argument("--merge", default=None, metavar="JSON", help="render a saved JSON into --markdown and exit")
    ap.add_argument("--log-dir", default=None, help="worker stderr logs (default: a temp folder)")
    ap.add_argument("--worker", choices=("mullama", "llama-cpp-python"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        a.ngl = int(a.ngl)
        return a
    if a.merge:
        return a
    if not a.model:
        ap.error("--model is required")
    if not Path(a.model).expanduser().is_file():
        ap.error(f"--model {a.model}: no such file")
    a.model = str(Path(a.model).expanduser().resolve())
    if a.ngl in ("all", "-1"):
        a.ngl_int, a.ngl_bench = -1, 999
    else:
        try:
            a.ngl_int = a.ngl_bench = int(a.ngl)
        except ValueError:
            ap.error("--ngl must be a number or 'all'")
    if a.reps < 1 or a.threads < 1:
        ap.error("--reps and --threads must be at least 1")
    if a.label is None:
        backend = read_build_info(lib_dir()).get("backend", "cpu")
        a.label = re.sub(r"[^a-z0-9_.-]+", "-", f"{backend}-{Path(a.model).stem}-t{a.threads}".lower())
    if a.log_dir is None:
        import tempfile  # noqa: PLC0415

        a.log_dir = tempfile.mkdtemp(prefix="mullama-bench-")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.worker == "mullama":
        worker_mullama(a)
        return 0
    if a.worker == "llama-cpp-python":
        worker_llama_cpp_python(a)
        return 0
    try:
        if a.merge:
            raw = json.loads(Path(a.merge).read_text())
            if a.repro:
                raw["repro"] = a.repro
            if a.note:
                raw["notes"] = list(raw.get("notes") or []) + [n for n in a.note if n not in (raw.get("notes") or [])]
            if a.repro or a.note:
                Path(a.merge).write_text(_portable(json.dumps(raw, indent=1)) + "\n")
        else:
            raw = measure(a)
            if a.json:
                Path(a.json).write_text(_portable(json.dumps(raw, indent=1)) + "\n")
    except BenchError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    print(console(raw))
    if a.markdown:
        update_markdown(Path(a.markdown), raw["label"], markdown_section(raw))
        print(f"[run] updated {a.markdown} (section {raw['label']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
