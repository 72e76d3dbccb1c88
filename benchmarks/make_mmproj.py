#!/usr/bin/env python3
"""Make a SmolVLM (idefics3) vision projector GGUF with random weights, for benchmarks.

    python3 benchmarks/make_mmproj.py --n-embd 2048 --out /tmp/mmproj-base.gguf
    python3 benchmarks/make_mmproj.py --preset tiny --n-embd 256 --out /tmp/mmproj-tiny.gguf

Encode time depends on the vision tower's shapes, not on its weights, and a
real SmolVLM projector (93 M parameters) cannot travel to the GPU machine, so
this writes one there in seconds: the keys and tensors that llama.cpp's
``convert_hf_to_gguf.py --mmproj`` writes for Idefics3/SmolVLM (the tiny
test projector of scripts/make_vision_model.py is the model for the names),
with the shapes of a preset, F16 matrices and F32 embeddings and norms.  Its
output width (``--n-embd``) must be the text model's (benchmarks/make_model.py).

Presets:
  base  SigLIP-B/16 at 512 px, 12 layers, hidden 768, FFN 3072, 12 heads, pixel
        shuffle 4 (64 embeddings per 512x512 tile), longest edge 1024 (a 4:3
        photo: 2x2 tiles and the overview, 320 embeddings): SmolVLM-256M's tower
  tiny  the test model's tower (64 px, 2 layers, hidden 32), for a quick check
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_model import import_gguf  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    "base": dict(image_size=512, patch_size=16, hidden=768, ffn=3072, layers=12, heads=12, scale_factor=4,
                 longest_edge=1024),
    "tiny": dict(image_size=64, patch_size=16, hidden=32, ffn=64, layers=2, heads=2, scale_factor=2,
                 longest_edge=128),
}


def write(out: Path, preset: dict[str, Any], n_embd: int, seed: int = 0) -> None:
    gguf = import_gguf()
    rng = np.random.default_rng(seed)
    p = preset
    n_patches = (p["image_size"] // p["patch_size"]) ** 2
    w = gguf.GGUFWriter(str(out), "clip")
    w.add_string("general.type", "mmproj")
    w.add_string("general.name", "mullama-bench-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_uint32("clip.vision.projection_dim", n_embd)
    w.add_uint32("clip.vision.image_size", p["image_size"])
    w.add_uint32("clip.vision.patch_size", p["patch_size"])
    w.add_uint32("clip.vision.embedding_length", p["hidden"])
    w.add_uint32("clip.vision.feed_forward_length", p["ffn"])
    w.add_uint32("clip.vision.block_count", p["layers"])
    w.add_uint32("clip.vision.attention.head_count", p["heads"])
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    w.add_string("clip.projector_type", "idefics3")
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projector.scale_factor", p["scale_factor"])
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.preproc_image_size", p["longest_edge"])

    def matrix(name: str, rows: int, cols: int) -> None:
        # gguf-py takes NumPy's row-major shape: (out, in) for a ggml tensor of ne = [in, out]
        w.add_tensor(name, (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16))

    def vector(name: str, n: int, value: float | None = None) -> None:
        data = np.full(n, value, np.float32) if value is not None else (rng.standard_normal(n) * 0.02).astype(np.float32)
        w.add_tensor(name, data)

    h, ps = p["hidden"], p["patch_size"]
    matrix("mm.model.fc.weight", n_embd, h * p["scale_factor"] ** 2)
    vector("v.patch_embd.bias", h, 0.0)
    w.add_tensor("v.patch_embd.weight", (rng.standard_normal((h, 3, ps, ps)) * 0.02).astype(np.float32))
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_patches, h)) * 0.02).astype(np.float32))
    for i in range(p["layers"]):
        b = f"v.blk.{i}"
        for norm in ("ln1", "ln2"):
            vector(f"{b}.{norm}.weight", h, 1.0)
            vector(f"{b}.{norm}.bias", h, 0.0)
        matrix(f"{b}.ffn_up.weight", p["ffn"], h)
        vector(f"{b}.ffn_up.bias", p["ffn"], 0.0)
        matrix(f"{b}.ffn_down.weight", h, p["ffn"])
        vector(f"{b}.ffn_down.bias", h, 0.0)
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            matrix(f"{b}.{proj}.weight", h, h)
            vector(f"{b}.{proj}.bias", h, 0.0)
    vector("v.post_ln.weight", h, 1.0)
    vector("v.post_ln.bias", h, 0.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-embd", type=int, required=True, help="the text model's embedding width")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="base")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    write(a.out, PRESETS[a.preset], a.n_embd, a.seed)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
