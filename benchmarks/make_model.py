#!/usr/bin/env python3
"""Make a llama-architecture GGUF with random weights, for benchmarks.

    python3 benchmarks/make_model.py --preset 1b --out /tmp/llama-1b.Q4_K_M.gguf
    python3 benchmarks/make_model.py --preset 8b --out /tmp/llama-8b.Q4_K_M.gguf --threads 16
    python3 benchmarks/make_model.py --extract-vocab SmolLM2.gguf --out vocab.gguf

The weights are random (speed does not depend on their values), written as
F16 (norms F32) by gguf-py's GGUFWriter one tensor at a time, in chunks, so
memory stays bounded whatever the model size; the F16 file is then
quantized (default Q4_K_M) through libllama's ``llama_model_quantize``, via
mullama's own bindings (``MULLAMA_LIB`` picks the library as usual).

Vocabulary: every ``tokenizer.*`` key (tokens, types, merges, special ids,
chat template) is copied from a source GGUF: ``--vocab-from``, else
$MULLAMA_BENCH_VOCAB, else the SmolLM2 test model in ~/.cache/mullama/models
(49152 tokens).  ``--extract-vocab`` saves only those keys into a small
vocab-only GGUF (~2 MB) that can travel where the source model cannot.
With no source at all (or ``--synthetic-vocab``) a synthetic SentencePiece
vocabulary is written: <unk>, <s>, </s>, the 256 byte-fallback tokens
<0x00>..<0xFF>, then filler tokens up to ``--n-vocab``; llama.cpp loads it
as an SPM vocab that tokenizes any text through byte fallback.

Presets (llama-3 shapes, but the vocabulary is the source's):
  tiny  n_embd 256,  2 layers,  4 heads, 2 kv heads, ffn 768   (tests)
  1b    n_embd 2048, 16 layers, 32 heads, 8 kv heads, ffn 8192 (Llama-3.2-1B, tied output)
  8b    n_embd 4096, 32 layers, 32 heads, 8 kv heads, ffn 14336 (Llama-3-8B)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VOCAB_SOURCE = Path.home() / ".cache" / "mullama" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=768, tied=False),
    "1b": dict(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192, tied=True),
    "8b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, tied=False),
}

FTYPES = {"f16": 1, "q8_0": 7, "q4_0": 2, "q4_1": 3, "q4_k_m": 15, "q4_k_s": 14, "q5_k_m": 17, "q6_k": 18}


def import_gguf() -> Any:
    """gguf-py from the llama.cpp source tree (or an installed ``gguf``)."""
    cands = [os.environ.get("GGUF_PY", ""), ROOT / "native" / "llama.cpp" / "gguf-py",
             ROOT / ".devsrc" / "llama.cpp" / "gguf-py"]
    for c in cands:
        if c and (Path(c) / "gguf" / "__init__.py").exists():
            sys.path.insert(0, str(c))
            break
    try:
        import gguf  # noqa: PLC0415
    except ImportError:
        sys.exit("make_model: gguf-py not found; put native/llama.cpp/gguf-py on GGUF_PY "
                 "(run scripts/build_lib.py once to fetch the llama.cpp source) or `pip install gguf`")
    return gguf


# -- vocabulary ------------------------------------------------------------------


def read_tokenizer_kv(gguf: Any, path: Path) -> list[tuple[str, Any, Any, Any]]:
    """Every tokenizer.* key of a GGUF as (key, value, type, sub_type), strings as raw bytes."""
    r = gguf.GGUFReader(str(path))
    T = gguf.GGUFValueType
    out = []
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = f.types[0]
        if main == T.ARRAY:
            sub = f.types[-1]
            if sub == T.STRING:
                val: Any = [bytes(f.parts[i]) for i in f.data]
            else:
                val = [x.item() if hasattr(x, "item") else x for x in f.contents()]
            out.append((key, val, main, sub))
        elif main == T.STRING:
            out.append((key, bytes(f.parts[f.data[0]]), main, None))
        else:
            out.append((key, f.contents(), main, None))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
        raise SystemExit(f"make_model: {path} has no tokenizer.ggml.tokens")
    return out


def synthetic_vocab(gguf: Any, n_vocab: int) -> list[tuple[str, Any, Any, Any]]:
    """A SentencePiece ('llama') vocab with byte fallback: loads and tokenizes anything."""
    T = gguf.GGUFValueType
    if n_vocab < 259 + 1:
        raise SystemExit("make_model: --n-vocab must be at least 260 for the synthetic vocab")
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    # "\u2581" (SentencePiece's space), printable ASCII, then filler words in base 26.
    basic = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    seen = set(tokens)
    i = 0
    while len(tokens) < n_vocab:
        if basic:
            piece = basic.pop(0)
        else:
            word, k = "", i
            while True:
                k, r = divmod(k, 26)
                word = chr(97 + r) + word
                if not k:
                    break
            piece = ("\u2581" if i % 2 else "") + word
            i += 1
        if piece.encode() in seen:  # llama.cpp aborts on a duplicate token
            continue
        seen.add(piece.encode())
        tokens.append(piece.encode())
        types.append(1)
        scores.append(-float(len(tokens)))
    return [
        ("tokenizer.ggml.model", b"llama", T.STRING, None),
        ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
        ("tokenizer.ggml.scores", scores, T.ARRAY, T.FLOAT32),
        ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
        ("tokenizer.ggml.unknown_token_id", 0, T.UINT32, None),
        ("tokenizer.ggml.bos_token_id", 1, T.UINT32, None),
        ("tokenizer.ggml.eos_token_id", 2, T.UINT32, None),
        ("tokenizer.ggml.add_bos_token", True, T.BOOL, None),
        ("tokenizer.ggml.add_eos_token", False, T.BOOL, None),
    ]


def n_tokens(kv: list[tuple[str, Any, Any, Any]]) -> int:
    return next(len(v) for k, v, *_ in kv if k == "tokenizer.ggml.tokens")


def add_kv(writer: Any, kv: list[tuple[str, Any, Any, Any]]) -> None:
    for key, val, typ, sub in kv:
        writer.add_key_value(key, val, typ, sub_type=sub)


def extract_vocab(gguf: Any, src: Path, out: Path) -> None:
    kv = read_tokenizer_kv(gguf, src)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("vocab of " + src.name)
    add_kv(w, kv)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    print(f"make_model: wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {n_tokens(kv)} tokens, "
          f"{len(kv)} tokenizer keys from {src.name})")


# -- weights ------------------------------------------------------------------------


class RandomPool:
    """Random float16 weights (|x| about 0.004..0.06, random sign), served as slices of one pool.

    Building a fresh random array for every tensor of an 8B model would take
    minutes; slices of a 64 MiB pool at random offsets cost only the write,
    and the speed of inference does not depend on the values.
    """

    def __init__(self, seed: int, n: int = 32 << 20) -> None:
        self.rng = np.random.default_rng(seed)
        u = np.frombuffer(self.rng.bytes(2 * n), dtype=np.uint16)
        # sign | exponent 7..10 (2^-8..2^-5) | random mantissa
        bits = (u & 0x83FF) | ((((u >> 10) & 3) + 7) << 10).astype(np.uint16)
        self.pool = bits.view(np.float16)
        self.n = n

    def chunks(self, count: int, chunk: int = 16 << 20) -> Iterator[np.ndarray]:
        left = count
        while left:
            k = min(left, chunk, self.n)
            off = int(self.rng.integers(0, self.n - k + 1))
            yield self.pool[off:off + k]
            left -= k


def tensor_plan(hp: dict[str, Any], n_vocab: int) -> list[tuple[str, tuple[int, ...], Any]]:
    """(name, numpy shape, dtype) of every tensor, in llama.cpp's order."""
    e, ff = hp["n_embd"], hp["n_ff"]
    hd = e // hp["n_head"]
    kv = hd * hp["n_head_kv"]
    f16, f32 = np.float16, np.float32
    plan: list[tuple[str, tuple[int, ...], Any]] = [("token_embd.weight", (n_vocab, e), f16)]
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (e,), f32),
            (p + "attn_q.weight", (e, e), f16),
            (p + "attn_k.weight", (kv, e), f16),
            (p + "attn_v.weight", (kv, e), f16),
            (p + "attn_output.weight", (e, e), f16),
            (p + "ffn_norm.weight", (e,), f32),
            (p + "ffn_gate.weight", (ff, e), f16),
            (p + "ffn_up.weight", (ff, e), f16),
            (p + "ffn_down.weight", (e, ff), f16),
        ]
    plan.append(("output_norm.weight", (e,), f32))
    if not hp["tied"]:
        plan.append(("output.weight", (n_vocab, e), f16))
    return plan


def write_f16(gguf: Any, out: Path, hp: dict[str, Any], vocab_kv: list[tuple[str, Any, Any, Any]],
              name: str, seed: int) -> int:
    n_vocab = n_tokens(vocab_kv)
    e = hp["n_embd"]
    hd = e // hp["n_head"]
    plan = tensor_plan(hp, n_vocab)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(name)
    w.add_context_length(hp.get("n_ctx_train", 8192))
    w.add_embedding_length(e)
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(1)  # MOSTLY_F16
    w.add_string("mullama.bench.make_model", hp.get("cmdline", ""))  # how to make this model again
    add_kv(w, vocab_kv)
    for tname, shape, dt in plan:
        nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
        w.add_tensor_info(tname, shape, np.dtype(dt), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    pool = RandomPool(seed)
    n_params = 0
    for tname, shape, dt in plan:
        count = int(np.prod(shape))
        n_params += count
        if dt is np.float32:  # norm weights: around 1
            scale = hp.get("logit_scale", 1.0) if tname == "output_norm.weight" else 1.0
            (scale * (1.0 + 0.1 * pool.rng.standard_normal(count))).astype(np.float32).tofile(fout)
        else:
            for c in pool.chunks(count):
                c.tofile(fout)
        w.write_padding(fout, count * np.dtype(dt).itemsize)
    w.close()
    return n_params


def quantize(src: Path, dst: Path, ftype: int, threads: int) -> None:
    sys.path.insert(0, str(ROOT))
    from mullama import _backend  # noqa: PLC0415

    L = _backend.lib()
    params = L.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    rc = L.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"make_model: llama_model_quantize failed ({rc}) for {src} -> {dst}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output GGUF")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    for k in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"override the preset's {k}")
    ap.add_argument("--ftype", choices=sorted(FTYPES), default="q4_k_m", help="final type (f16: no quantization)")
    ap.add_argument("--vocab-from", type=Path, default=None, help="GGUF whose tokenizer.* keys are copied")
    ap.add_argument("--synthetic-vocab", action="store_true", help="write the synthetic SPM vocab instead")
    ap.add_argument("--n-vocab", type=int, default=32000, help="size of the synthetic vocab")
    ap.add_argument("--threads", type=int, default=0, help="quantization threads (default: all CPUs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logit-scale", type=float, default=1.0,
                    help="scale the final norm (and so the logits): >1 gives peaked next-token distributions, "
                         "as trained models have (the sampling tests)")
    ap.add_argument("--tmp-dir", type=Path, default=None, help="where the F16 intermediate goes (default: next to --out)")
    ap.add_argument("--keep-f16", action="store_true")
    ap.add_argument("--extract-vocab", type=Path, default=None, metavar="SRC",
                    help="only copy SRC's tokenizer keys into a vocab-only GGUF at --out")
    a = ap.parse_args(argv)
    gguf = import_gguf()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.extract_vocab:
        extract_vocab(gguf, a.extract_vocab, a.out)
        return 0

    hp = dict(PRESETS[a.preset])
    for k in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff"):
        if getattr(a, k) is not None:
            hp[k] = getattr(a, k)
    if hp["n_embd"] % hp["n_head"] or hp["n_head"] % hp["n_head_kv"]:
        raise SystemExit("make_model: n_embd must divide by n_head, and n_head by n_head_kv")

    words = [f"--preset {a.preset}"] + [f"--{k.replace('_', '-')} {hp[k]}" for k in
                                          ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff")
                                          if getattr(a, k) is not None]
    words += [f"--ftype {a.ftype}"] if a.ftype != "q4_k_m" else []
    src = None if a.synthetic_vocab else (a.vocab_from or (Path(os.environ["MULLAMA_BENCH_VOCAB"])
                                                          if os.environ.get("MULLAMA_BENCH_VOCAB") else None))
    if src is None and not a.synthetic_vocab and DEFAULT_VOCAB_SOURCE.exists():
        src = DEFAULT_VOCAB_SOURCE
    if src is not None:
        if not src.exists():
            raise SystemExit(f"make_model: vocab source {src} does not exist")
        vocab_kv = read_tokenizer_kv(gguf, src)
        vocab_desc = f"tokenizer copied from {src.name}"
    else:
        vocab_kv = synthetic_vocab(gguf, a.n_vocab)
        vocab_desc = "synthetic SPM byte-fallback vocab"
        words.append(f"--synthetic-vocab --n-vocab {a.n_vocab}")
    if src is not None:
        words.append(f"--vocab-from {src.name}")
    if a.seed:
        words.append(f"--seed {a.seed}")
    if a.logit_scale != 1.0:
        hp["logit_scale"] = a.logit_scale
        words.append(f"--logit-scale {a.logit_scale}")
    hp["cmdline"] = " ".join(words)
    n_vocab = n_tokens(vocab_kv)
    name = f"random-llama-{a.preset}"
    t0 = time.monotonic()
    final_f16 = a.ftype == "f16"
    tmp_dir = a.tmp_dir or a.out.parent
    f16_path = a.out if final_f16 else Path(tempfile.mkstemp(suffix=".f16.gguf", dir=tmp_dir)[1])
    try:
        n_params = write_f16(gguf, f16_path, hp, vocab_kv, name, a.seed)
        t1 = time.monotonic()
        print(f"make_model: {name}: {n_params / 1e9:.2f}B params, n_vocab {n_vocab} ({vocab_desc}); "
              f"F16 {f16_path.stat().st_size / 1e9:.2f} GB written in {t1 - t0:.1f}s", flush=True)
        if not final_f16:
            threads = a.threads or len(os.sched_getaffinity(0))
            part = a.out.with_name(a.out.name + ".part")  # a killed run leaves no complete-looking file
            quantize(f16_path, part, FTYPES[a.ftype], threads)
            os.replace(part, a.out)
            print(f"make_model: quantized to {a.ftype.upper()} with {threads} threads in "
                  f"{time.monotonic() - t1:.1f}s: {a.out} ({a.out.stat().st_size / 1e9:.2f} GB)", flush=True)
    finally:
        if not final_f16 and not a.keep_f16 and f16_path.exists():
            f16_path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
