"""Images in the prompt: encode time and tokens per image, mullama against llama-mtmd-cli, in one run.

    python3 benchmarks/multimodal.py --model TEXT.gguf --mmproj MMPROJ.gguf --bin-dir DIR
        [--ngl N] [--threads T] [--reps 3] [--json out.json]

For each image (llama.cpp's test-1.jpeg, a square 1024 px PNG and a wide
2048 x 512 PNG, made here) both evaluate the same one-turn prompt: mullama
in this process (a Context with a Projector; each repetition on an empty
cache), and ``llama-mtmd-cli`` from the same build (``--bin-dir``, which
``scripts/build_lib.py --bench`` fills) as a fresh process per repetition.
Both projectors run a warm-up encode at load.  The times are libmtmd's own,
read from its log in both processes: the vision tower's ("image slice
encoded in N ms" per media chunk for mullama, which encodes each with
libmtmd's helper; "mtmd batch encoding done in N ms" for llama-mtmd-cli,
which batches media chunks that no text separates) and the text model's
over the embeddings ("image decoded (batch) in N ms"), summed per image; the median over the
repetitions is reported, with the ratio mullama / llama-mtmd-cli.  Tokens
per image are the embeddings decoded (the same count in both, or the run
fails).

Models: any SmolVLM-style pair; ``benchmarks/make_mmproj.py`` makes a
random SigLIP-B/16 projector for a random text model of
``benchmarks/make_model.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mullama import Context, Model, Projector, SamplerParams, system_info  # noqa: E402

# mullama encodes each media chunk with libmtmd's helper (mtmd_encode_chunk); llama-mtmd-cli puts runs of
# media chunks with no text between them into one mtmd_batch: each logs its own line
ENCODED = re.compile(r"(?:image|audio) slice encoded in (\d+) ms|mtmd batch encoding done in (\d+) ms")
DECODED = re.compile(r"(?:image|audio) decoded \(batch \d+/\d+\) in (\d+) ms")
BATCH = re.compile(r"decoding (?:image|audio) batch \d+/\d+, n_tokens_batch = (\d+)")
USER = "<__media__>Describe this image."


def make_images(folder: Path) -> dict[str, Path]:
    from images import pattern, png  # tests/images.py: a lossless PNG of a seeded pattern
    llama_src = ROOT / "native" / "llama.cpp"
    if not llama_src.is_dir():
        llama_src = ROOT / ".devsrc" / "llama.cpp"
    out = {"test-1.jpeg (640x488)": llama_src / "tools" / "mtmd" / "test-1.jpeg"}
    for name, (h, w) in (("square (1024x1024)", (1024, 1024)), ("wide (2048x512)", (512, 2048))):
        path = folder / f"{name.split()[0]}.png"
        path.write_bytes(png(pattern(h, w, 7)))
        out[name] = path
    return out


class LogLines(logging.Handler):
    """libmtmd's log lines, as mullama's log bridge passes them on."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def times(text: str) -> dict[str, Any]:
    return {"encode_ms": sum(int(a or b) for a, b in ENCODED.findall(text)),
            "decode_ms": sum(int(x) for x in DECODED.findall(text)),
            "tiles": len(ENCODED.findall(text)),
            "tokens": sum(int(x) for x in BATCH.findall(text))}


def ours(model: Model, proj: Projector, image: Path, reps: int, threads: int) -> list[dict[str, Any]]:
    prompt = f"<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\n"
    logger = logging.getLogger("mullama")
    handler = LogLines()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    runs = []
    try:
        with Context(model, n_ctx=min(4096, model.n_ctx_train), n_threads=threads, projector=proj) as ctx:
            for _ in range(reps):
                ctx.clear_cache()
                handler.lines.clear()
                t0 = time.perf_counter()
                ctx.generate(prompt, 0, SamplerParams.greedy(), media=[image])
                run = times("\n".join(handler.lines))
                run["wall_ms"] = (time.perf_counter() - t0) * 1e3
                runs.append(run)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    return runs


def cli(exe: Path, model: Path, mmproj: Path, image: Path, reps: int, threads: int, ngl: int,
        n_ctx: int) -> list[dict[str, Any]]:
    cmd = [str(exe), "-m", str(model), "--mmproj", str(mmproj), "--image", str(image), "-p", USER, "-n", "1",
           "--temp", "0", "-t", str(threads), "-ngl", str(ngl), "-c", str(n_ctx), "-lv", "4"]
    runs = []
    for _ in range(reps):
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"llama-mtmd-cli failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
        runs.append(times(proc.stderr))
    return runs


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--mmproj", type=Path, required=True)
    ap.add_argument("--bin-dir", type=Path, required=True, help="holds llama-mtmd-cli from the same source")
    ap.add_argument("--ngl", type=int, default=0, help="model layers on the GPU (-1: all; the projector follows)")
    ap.add_argument("--threads", "-t", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from mullama._cpus import usable_cpus
    threads = a.threads or usable_cpus()
    exe = a.bin_dir / "llama-mtmd-cli"
    model = Model.load(a.model, n_gpu_layers=a.ngl)
    proj = Projector.load(a.mmproj, model, n_threads=threads, warmup=True)
    ngl_cli = 999 if a.ngl < 0 else a.ngl
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, image in make_images(Path(tmp)).items():
            mine = ours(model, proj, image, a.reps, threads)
            ref = cli(exe, a.model, a.mmproj, image, a.reps, threads, ngl_cli, min(4096, model.n_ctx_train))
            if mine[0]["tokens"] != ref[0]["tokens"]:
                raise SystemExit(f"{name}: mullama decoded {mine[0]['tokens']} embeddings, llama-mtmd-cli "
                                 f"{ref[0]['tokens']}")
            row = {"image": name, "tokens": mine[0]["tokens"], "tiles": mine[0]["tiles"],
                   "mullama_encode_ms": median(mine, "encode_ms"), "cli_encode_ms": median(ref, "encode_ms"),
                   "mullama_decode_ms": median(mine, "decode_ms"), "cli_decode_ms": median(ref, "decode_ms"),
                   "mullama_prompt_wall_ms": median(mine, "wall_ms"), "runs": {"mullama": mine, "cli": ref}}
            row["encode_ratio"] = row["mullama_encode_ms"] / max(row["cli_encode_ms"], 1e-9)
            results.append(row)
            print(f"{name}: {row['tokens']} tokens in {row['tiles']} tiles; encode {row['mullama_encode_ms']:.0f} ms "
                  f"vs llama-mtmd-cli {row['cli_encode_ms']:.0f} ms ({row['encode_ratio']:.3f}x); decode "
                  f"{row['mullama_decode_ms']:.0f} vs {row['cli_decode_ms']:.0f} ms; whole prompt "
                  f"{row['mullama_prompt_wall_ms']:.0f} ms", flush=True)
    print("\n| image | tokens (tiles) | encode, mullama | encode, llama-mtmd-cli | ratio | decode, mullama | "
          "decode, llama-mtmd-cli |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['image']} | {r['tokens']} ({r['tiles']}) | {r['mullama_encode_ms']:.0f} ms | "
              f"{r['cli_encode_ms']:.0f} ms | {r['encode_ratio']:.3f} | {r['mullama_decode_ms']:.0f} ms | "
              f"{r['cli_decode_ms']:.0f} ms |")
    if a.json:
        a.json.write_text(json.dumps({"model": str(a.model.name), "mmproj": str(a.mmproj.name), "ngl": a.ngl,
                                      "threads": threads, "reps": a.reps,
                                      # (without the library's path on this machine)
                                      "system_info": "\n".join(line for line in system_info().splitlines()
                                                                if not line.startswith("library:")),
                                      "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
