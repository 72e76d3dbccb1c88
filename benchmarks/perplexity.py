#!/usr/bin/env python3
"""Perplexity per KV-cache type, with mullama.perplexity and with llama.cpp's llama-perplexity, in one run.

    python3 benchmarks/perplexity.py --model MODEL.gguf --llama-perplexity BIN [--out results.json]

The text is the Python standard library's LICENSE.txt (its path and SHA-256 are recorded): real English
prose that every CPython installation ships.  Both tools use llama.cpp's method with 512-token chunks and
flash attention on; llama-perplexity gets ``--no-repack`` (weight repacking into the CPU's AMX buffers
crashed it on a host whose kernel does not grant AMX state, and repacking changes no result).
BIN: ``cmake --build <tools build dir> --target llama-perplexity`` in the build tree scripts/make_lora.py
makes for llama-export-lora (same pinned source).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TYPES = [("f16", "f16"), ("bf16", "bf16"), ("q8_0", "q8_0"), ("q5_1", "q5_1"), ("q5_0", "q5_0"), ("q4_1", "q4_1"),
         ("q4_0", "q4_0"), ("iq4_nl", "iq4_nl"), ("q8_0", "q4_0")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--llama-perplexity", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    from mullama import Model
    from mullama.perplexity import perplexity
    text_path = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    text = text_path.read_text()
    model = Model.load(a.model)
    rows = {}
    for k, v in TYPES:
        t = time.perf_counter()
        ours = perplexity(model, text, chunk=512, n_threads=a.threads, type_k=k, type_v=v, flash_attn=True)
        ours_s = time.perf_counter() - t
        t = time.perf_counter()
        r = subprocess.run([a.llama_perplexity, "-m", a.model, "-f", str(text_path), "-c", "512", "-b", "512",
                            "-ctk", k, "-ctv", v, "-fa", "on", "-t", str(a.threads), "--no-repack"],
                           capture_output=True, text=True, env={**os.environ, "LLAMA_LOG_COLORS": "0"})
        theirs_s = time.perf_counter() - t
        m = re.search(r"Final estimate: PPL = ([\d.]+)", r.stdout + r.stderr)
        theirs = float(m.group(1)) if m else None
        row = {"mullama": ours.value, "llama_perplexity": theirs, "scored_tokens": ours.n_scored,
               "chunks": ours.n_chunks, "mullama_s": ours_s, "llama_perplexity_s": theirs_s,
               "relative_difference": abs(ours.value - theirs) / theirs if theirs else None}
        rows[f"{k}/{v}"] = row
        print(f"{k}/{v}", json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({
            "model": Path(a.model).name, "text": f"CPython {sys.version.split()[0]} Lib/LICENSE.txt",
            "text_sha256": hashlib.sha256(text_path.read_bytes()).hexdigest(), "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
