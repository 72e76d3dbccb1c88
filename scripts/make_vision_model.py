#!/usr/bin/env python3
"""Make a tiny random-weight vision-language test model (SmolVLM / Idefics3) for libmtmd, reproducibly.

    python scripts/make_vision_model.py              # prints a JSON object with the paths
    python scripts/make_vision_model.py --force      # make them again
    python scripts/make_vision_model.py --check      # also run llama-mtmd-cli on test-1.jpeg (stderr)

A test model for images in the prompt, made from pinned inputs only (the packaged SmolLM2 GGUF, the
pinned llama.cpp source, fixed seeds; nothing is downloaded from Hugging Face):

model         the text model, F32: a transformers Idefics3ForConditionalGeneration (the SmolVLM
              architecture) whose llama text model has hidden size 64, 2 layers, 4 heads (2 KV heads),
              FFN 128, 2048 positions, rope theta 10000, converted with llama.cpp's convert_hf_to_gguf.py.
              Its tokenizer is SmolLM2-135M-Instruct's (vocabulary, merges, special tokens and ChatML
              chat template read from the packaged GGUF) plus SmolVLM's added tokens
              <fake_token_around_image>, <image>, <end_of_utterance>, <global-img> and <row_R_col_C>
              (R, C in 1..6), so the GGUF's vocabulary is SmolLM2's with 40 tokens appended.
mmproj        the projector of the same model (--mmproj, F32): a SigLIP-style vision tower (image 64,
              patch 16, hidden 32, 2 layers, 2 heads, FFN 64), pixel shuffle by 2 and a linear projection
              to 64, projector type idefics3.  Its preprocessor config has size.longest_edge 128: libmtmd
              resizes an image so that its longest edge is 128, cuts it into 64x64 tiles and adds a 64x64
              overview, each tile 4 embeddings (4x4 patches, shuffled 2x2).  An image less than twice as
              wide as high (test-1.jpeg, 640x488; a square one) gives a 2x2 grid + overview = 20 image
              tokens in 5 image chunks; one at least 2:1 gives 2x1 + overview = 12 in 3.
wrong_mmproj  the projector of the same recipe with a text hidden size of 96: its embeddings have 96
              values, so libmtmd must refuse to pair it with the model (mtmd_init_from_file returns NULL
              and logs "mismatch between text model (n_embd = 64) and mmproj (n_embd = 96)").

All weights are drawn from N(0, INIT_STD**2) after torch.manual_seed (norm scales 1, biases 0); the
greedy continuation of an image prompt is checked, in transformers, to have at least 3 distinct
tokens among its first 16 (recorded in the stamp).

The outputs live in <cache>/models/vision-<key>/, where <key> hashes the pinned llama.cpp commit, the
SmolLM2 GGUF's sha256 and this script's parameters; a stamp written last makes a repeated run a no-op.
<cache> is MULLAMA_CACHE (default ~/.cache/mullama), as for scripts/build_lib.py.

llama-mtmd-cli (--check; built from the pinned source by scripts/llama_tools.py, ensure_mtmd_cli()):
greedy, non-interactive output for one prompt and image is

    llama-mtmd-cli -m MODEL --mmproj MMPROJ --image IMAGE -p PROMPT -n 16 --temp 0 --seed 0 -t 2 \\
        --ignore-eos --no-warmup -lv 1 < /dev/null

(mtmd_cli_command() builds it).  With both -p and --image it runs one turn and exits (without them it
is an interactive chat reading stdin, hence /dev/null).  --temp 0 is greedy (its default is 0.2);
--seed does not matter then.  Its output was the same with 1 or 2 threads and flash attention on or off.
--ignore-eos makes it generate exactly -n tokens, by a logit bias of -inf on every end-of-generation
token (so an EOG token can never be the greedy choice; without it, generation stops at one).
-lv 1 keeps only errors on stderr.  -lv 4 logs, per image chunk, "decoding image batch 1/1,
n_tokens_batch = 4" (libmtmd's info messages need 4; the default 3 shows only "encoding mtmd batch,
... total = <chunks>"), and at the end "prompt eval time = ... / <text + image> tokens" and
"eval time = ... / <n - 1> runs".

The prompt always goes through a chat template, as one user message; there is no raw mode flag:
  * default (no --jinja): the model's template is matched to a built-in one, here "chatml":
    "<|im_start|>user\\n" PROMPT "<|im_end|>\\n<|im_start|>assistant\\n" (no system message);
  * --jinja: the model's own Jinja template runs, and SmolLM2's adds its default system message
    ("<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n");
  * --chat-template NAME picks a built-in template, -sys TEXT adds a system message;
  * a raw prompt: --jinja --chat-template '{% for message in messages %}{{ message["content"] }}{% endfor %}'
    (RAW_TEMPLATE) gives PROMPT verbatim.
The image goes where PROMPT has the marker <__media__> (mtmd_default_marker()); a prompt without
markers gets one per image put in front of it, before templating.  The text is tokenized with special
tokens parsed, and no BOS is added (the vocabulary's add_bos_token is false).  For a 2x2 grid the image
becomes: for each tile "<fake_token_around_image><row_R_col_C>" and its 4 embeddings, "\\n" after each
row, then "\\n\\n<fake_token_around_image><global-img>", the overview's 4 embeddings and
"<fake_token_around_image>".

The generated text is all of stdout (logs go to stderr): "\\n", then the piece of each generated token
(common_token_to_piece, special tokens as their text), then "\\n\\n" (one more "\\n" first when an EOG
token ended it; the EOG token is not printed).  With --ignore-eos it is exactly stdout[1:-2], as bytes.
Token ids are not printed: compare a binding's greedy tokens by their pieces joined, as bytes
(mtmd_cli_generate() returns that text), with the same EOG rule (a binding that only does not stop at
an EOG token differs if one is the greedy choice).

Needs torch, transformers, tokenizers, safetensors and sentencepiece (llama.cpp's converter imports it
for llama models) in this interpreter, the llama.cpp source in native/llama.cpp (python
scripts/build_lib.py fetches it), and for --check cmake and a C++ compiler.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_lib import available_cpus, default_cache_dir, sha256_file  # noqa: E402
from llama_tools import ToolError, ensure_tool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "native"
PIN_FILE = NATIVE_DIR / "pin.json"
DEFAULT_SOURCE_DIR = NATIVE_DIR / "llama.cpp"

STAMP_VERSION = 1
STAMP_NAME = "stamp.json"

SEED = 1234
WRONG_SEED = 4321
# 0.02 (transformers' default initializer_range): 16 greedy tokens after test-1.jpeg are 16 distinct
# ones, and other images give other continuations (a one-colour image falls into a 2-token loop).
# 0.05 and 0.1 were no better: loops within 16 tokens for test-1.jpeg.
INIT_STD = 0.02
# The greedy check: at least this many distinct ids among the first CHECK_TOKENS.
CHECK_TOKENS = 16
MIN_DISTINCT = 3

# Idefics3Config(text_config=..., vision_config=...); vocab_size is the tokenizer's, set when made.
# architectures: what the converter dispatches the text model on (SmolVLM's own configs name
# VLlama3ForCausalLM, converted as llama).
TEXT_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["VLlama3ForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
VISION_CONFIG: dict[str, Any] = {
    "model_type": "idefics3_vision",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 64,
    "patch_size": 16,
}
SCALE_FACTOR = 2
# The processor's size.longest_edge, recorded by the converter as clip.vision.preproc_image_size.
LONGEST_EDGE = 128
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]
# The wrong projector's text model: hidden 96 (head_dim 24), else the same.
WRONG_TEXT = {"hidden_size": 96, "head_dim": 24}

# SmolVLM's added tokens, after SmolLM2's vocabulary, in this order.
IMAGE_TOKEN = "<image>"
EXTRA_TOKENS = ("<fake_token_around_image>", IMAGE_TOKEN, "<end_of_utterance>", "<global-img>") + tuple(
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))

MODEL_NAME = "SmolVLM-tiny-random"
MODEL_FILE = f"{MODEL_NAME}-f32.gguf"
MMPROJ_FILE = f"mmproj-{MODEL_NAME}-f32.gguf"
WRONG_FILE = f"mmproj-{MODEL_NAME}-wrong-n-embd-96-f32.gguf"
OUTPUTS = {"model": MODEL_FILE, "mmproj": MMPROJ_FILE, "wrong_mmproj": WRONG_FILE}

# import name -> pip requirement, for making and converting the model
PY_MODULES = {
    "torch": "torch==2.13.0",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "sentencepiece": "sentencepiece>=0.1.98,<0.3.0",  # as llama.cpp's converter requirements
    "numpy": "numpy",
    "yaml": "pyyaml",
}

MTMD_CLI = "llama-mtmd-cli"
# For llama-mtmd-cli --jinja --chat-template: the user message verbatim, no chat markup.
RAW_TEMPLATE = '{% for message in messages %}{{ message["content"] }}{% endfor %}'
MEDIA_MARKER = "<__media__>"
CHECK_PROMPT = "Describe the image."


class VisionError(RuntimeError):
    """A step failed; the message says what happened and what to do."""


def log(msg: str) -> None:
    print(f"[make_vision_model] {msg}", file=sys.stderr, flush=True)


def _llama_cpp_commit() -> str:
    try:
        with open(PIN_FILE, encoding="utf-8") as f:
            return str(json.load(f)["llama_cpp_commit"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def _run(cmd: Sequence[str], what: str, *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
         verbose: bool = False) -> str:
    """Run cmd; on failure raise VisionError with the tail of its output."""
    if verbose:
        returncode = subprocess.run(list(cmd), cwd=cwd, env=env).returncode
        output = ""
    else:
        proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
        returncode = proc.returncode
        output = (proc.stdout or "") + (proc.stderr or "")
    if returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-20:])
        raise VisionError(f"{what} failed (exit {returncode}): {' '.join(cmd)}" + (f"\n{tail}" if tail else ""))
    return output


def ensure_mtmd_cli(cache_dir: Path | None = None, *, source_dir: Path | None = None, jobs: int | None = None,
                    verbose: bool = False) -> Path:
    """<cache>/build/<commit>-tools-<digest>/bin/llama-mtmd-cli, built when absent (scripts/llama_tools.py)."""
    try:
        return ensure_tool(MTMD_CLI, cache_dir, source_dir=source_dir or DEFAULT_SOURCE_DIR, jobs=jobs,
                           verbose=verbose)
    except ToolError as e:
        raise VisionError(str(e)) from None


# --------------------------------------------------------------------------
# The tokenizer: SmolLM2's, from its GGUF
# --------------------------------------------------------------------------


def _gguf_module(source_dir: Path) -> Any:
    gguf_py = source_dir / "gguf-py"
    if not (gguf_py / "gguf").is_dir():
        raise VisionError(f"{gguf_py} not found; run `python scripts/build_lib.py` first, it fetches the pinned source")
    if str(gguf_py) not in sys.path:
        sys.path.insert(0, str(gguf_py))
    import gguf  # type: ignore[import-not-found,unused-ignore]

    return gguf


@dataclass(frozen=True)
class GgufVocab:
    """A GGUF's BPE tokenizer, as llama.cpp stores it."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos: int
    eos: int
    unk: int
    pad: int
    add_bos: bool | None  # None: not recorded, llama.cpp's default for the vocabulary applies
    add_eos: bool | None
    chat_template: str


def read_vocab(model: Path, source_dir: Path) -> GgufVocab:
    gguf = _gguf_module(source_dir)
    reader = gguf.GGUFReader(str(model))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            raise VisionError(f"{model.name} has no {key}")
        return f.contents()

    def flag(key: str) -> bool | None:
        f = reader.fields.get(key)
        return None if f is None else bool(f.contents())

    if field("tokenizer.ggml.model") != "gpt2":
        raise VisionError(f"{model.name}: tokenizer {field('tokenizer.ggml.model')!r}, expected a BPE ('gpt2') one")
    return GgufVocab(
        tokens=list(field("tokenizer.ggml.tokens")),
        token_types=[int(t) for t in field("tokenizer.ggml.token_type")],
        merges=list(field("tokenizer.ggml.merges")),
        pre=str(field("tokenizer.ggml.pre")),
        bos=int(field("tokenizer.ggml.bos_token_id")),
        eos=int(field("tokenizer.ggml.eos_token_id")),
        unk=int(field("tokenizer.ggml.unknown_token_id")),
        pad=int(field("tokenizer.ggml.padding_token_id")),
        add_bos=flag("tokenizer.ggml.add_bos_token"),
        add_eos=flag("tokenizer.ggml.add_eos_token"),
        chat_template=str(field("tokenizer.chat_template")),
    )


def write_tokenizer(vocab: GgufVocab, out_dir: Path) -> int:
    """tokenizer.json and tokenizer_config.json for ``vocab`` plus EXTRA_TOKENS in out_dir; returns the size.

    The pre-tokenizer is SmolLM2's (StarCoder's): single digits, then GPT-2 byte level.  llama.cpp's
    converter recognises it by hashing the ids of a test string, so a different one would fail there.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    if vocab.pre != "smollm":
        raise VisionError(f"the base tokenizer's pre-tokenizer is {vocab.pre!r}; this script rebuilds 'smollm' only")
    control = 3  # gguf.TokenType.CONTROL
    user_defined = 4  # gguf.TokenType.USER_DEFINED
    model = BPE(vocab={t: i for i, t in enumerate(vocab.tokens)},
                merges=[tuple(m.split(" ", 1)) for m in vocab.merges],  # type: ignore[misc]
                fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Already in the vocabulary: added tokens keep their ids, and are matched before BPE.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(vocab.tokens, vocab.token_types) if ty == control])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(vocab.tokens, vocab.token_types) if ty == user_defined])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in EXTRA_TOKENS])
    size = int(tok.get_vocab_size())
    if size != len(vocab.tokens) + len(EXTRA_TOKENS):
        raise VisionError(f"the tokenizer has {size} tokens, expected {len(vocab.tokens)} + {len(EXTRA_TOKENS)}")
    tok.save(str(out_dir / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": vocab.tokens[vocab.bos],
        "eos_token": vocab.tokens[vocab.eos],
        "unk_token": vocab.tokens[vocab.unk],
        "pad_token": vocab.tokens[vocab.pad],
        "model_max_length": int(TEXT_CONFIG["max_position_embeddings"]),
        "chat_template": vocab.chat_template,
    }
    # Explicit, or the converter writes transformers' defaults; not recorded means false for 'smollm'.
    config["add_bos_token"] = bool(vocab.add_bos)
    config["add_eos_token"] = bool(vocab.add_eos)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return size


def write_processor_config(out_dir: Path) -> None:
    """Idefics3's image processor settings; the converter reads size.longest_edge, image_mean and image_std."""
    image = {
        "image_processor_type": "Idefics3ImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": LONGEST_EDGE},
        "resample": 1,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "do_image_splitting": True,
        "max_image_size": {"longest_edge": VISION_CONFIG["image_size"]},
        "do_pad": True,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n", encoding="utf-8")
    processor = {"processor_class": "Idefics3Processor", "image_seq_len": _tokens_per_tile()}
    (out_dir / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")


def _tokens_per_tile() -> int:
    side = int(VISION_CONFIG["image_size"]) // int(VISION_CONFIG["patch_size"])
    return side * side // (SCALE_FACTOR * SCALE_FACTOR)


# --------------------------------------------------------------------------
# The model: transformers, then llama.cpp's converter
# --------------------------------------------------------------------------


def check_py_modules() -> None:
    missing = [mod for mod in PY_MODULES if importlib.util.find_spec(mod) is None]
    if missing:
        raise VisionError(
            f"making the vision test model needs {', '.join(missing)} in this Python ({sys.executable}); "
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


def _hf_model(spec: Mapping[str, Any]) -> None:
    """Save an Idefics3ForConditionalGeneration with seeded random weights into spec["out_dir"].

    Runs in a child process (see make_hf_model): it imports torch.  With spec["check"], first greedy
    decodes an image prompt and writes the ids to out_dir/greedy.json, failing when too few are distinct.
    """
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    out_dir = Path(spec["out_dir"])
    config = Idefics3Config(text_config=dict(spec["text_config"]), vision_config=dict(spec["vision_config"]),
                            scale_factor=int(spec["scale_factor"]), image_token_id=int(spec["image_token_id"]),
                            tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(config)
    # Our own draws in a fixed order rather than transformers' initialisers, which may change between
    # versions: every matrix N(0, std^2), norm scales 1, biases 0.
    torch.manual_seed(int(spec["seed"]))
    std = float(spec["init_std"])
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(tuple(p.shape), dtype=torch.float32) * std)
            elif name.endswith(".bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            else:
                raise VisionError(f"unexpected parameter {name} {tuple(p.shape)}")
    model.train(False)  # eval mode: no dropout
    if spec.get("check"):
        ids = _greedy_image_prompt(model, out_dir, int(spec["image_token_id"]))
        distinct = len(set(ids))
        (out_dir / "greedy.json").write_text(json.dumps({"ids": ids, "distinct": distinct}) + "\n", encoding="utf-8")
        if distinct < MIN_DISTINCT:
            raise VisionError(f"the greedy continuation of an image prompt has {distinct} distinct tokens in "
                              f"{len(ids)} ({ids}); change INIT_STD")
    model.save_pretrained(str(out_dir))


def _greedy_image_prompt(model: Any, tokenizer_dir: Path, image_token_id: int) -> list[int]:
    """The first CHECK_TOKENS greedy ids after a chat prompt holding one synthetic 64x64 image (no tiles)."""
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    image = ("<fake_token_around_image><global-img>" + IMAGE_TOKEN * _tokens_per_tile()
             + "<fake_token_around_image>")
    prompt = f"<|im_start|>user\n{image}{CHECK_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    ids = list(tok.encode(prompt, add_special_tokens=False).ids)
    if ids.count(image_token_id) != _tokens_per_tile():
        raise VisionError(f"the check prompt has {ids.count(image_token_id)} image tokens, expected {_tokens_per_tile()}")
    # A fixed, varied picture in the normalised range [-1, 1]: gradients and a sine pattern.
    side = int(VISION_CONFIG["image_size"])
    y, x = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    pixels = torch.stack([x, y, torch.sin(6 * x) * torch.cos(4 * y)]).reshape(1, 1, 3, side, side)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(CHECK_TOKENS):
            logits = model(input_ids=torch.tensor([ids + out]), pixel_values=pixels).logits
            out.append(int(logits[0, -1].argmax()))
    return out


def make_hf_model(work: Path, name: str, text_config: Mapping[str, Any], seed: int, image_token_id: int,
                  vocab: GgufVocab, check: bool, verbose: bool = False) -> Path:
    """work/<name>/: tokenizer, processor config and the transformers model (made in a child process)."""
    out_dir = work / name
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer(vocab, out_dir)
    write_processor_config(out_dir)
    spec = json.dumps({
        "out_dir": str(out_dir),
        "text_config": dict(text_config),
        "vision_config": VISION_CONFIG,
        "scale_factor": SCALE_FACTOR,
        "image_token_id": image_token_id,
        "seed": seed,
        "init_std": INIT_STD,
        "check": check,
    })
    _run([sys.executable, str(Path(__file__).resolve()), "--hf-child", spec], f"making the transformers model {name}",
         env=_offline_env(), verbose=verbose)
    if not (out_dir / "model.safetensors").is_file():
        raise VisionError(f"transformers wrote no model.safetensors in {out_dir}")
    return out_dir


def convert(hf_dir: Path, out: Path, source_dir: Path, *, mmproj: bool, verbose: bool = False) -> None:
    converter = source_dir / "convert_hf_to_gguf.py"
    if not converter.is_file():
        raise VisionError(f"{converter} not found; run `python scripts/build_lib.py` first, it fetches the pinned source")
    # --model-name: otherwise general.name comes from the (temporary) folder's name.
    cmd = [sys.executable, str(converter), str(hf_dir), "--outtype", "f32", "--outfile", str(out),
           "--model-name", MODEL_NAME] + (["--mmproj"] if mmproj else [])
    _run(cmd, "convert_hf_to_gguf.py" + (" --mmproj" if mmproj else ""), cwd=source_dir,
         env=_offline_env(source_dir), verbose=verbose)
    if not out.is_file() or out.stat().st_size == 0:
        raise VisionError(f"convert_hf_to_gguf.py wrote nothing to {out}")


def verify(paths: Mapping[str, Path], base: GgufVocab, source_dir: Path) -> None:
    """The converted files say what this script meant: SmolLM2's vocabulary and template, the shapes."""
    gguf = _gguf_module(source_dir)
    text = read_vocab(paths["model"], source_dir)
    n = len(base.tokens)
    differ = [k for k in ("merges", "pre", "bos", "eos", "unk", "pad", "chat_template")
              if getattr(text, k) != getattr(base, k)]
    differ += [k for k in ("add_bos", "add_eos") if bool(getattr(text, k)) != bool(getattr(base, k))]
    differ += [k for k in ("tokens", "token_types") if getattr(text, k)[:n] != getattr(base, k)]
    if differ:
        raise VisionError(f"{paths['model'].name}: its {', '.join(differ)} differ from SmolLM2's")
    if tuple(text.tokens[n:]) != EXTRA_TOKENS:
        raise VisionError(f"{paths['model'].name}: the added tokens are {text.tokens[n:]}, expected {EXTRA_TOKENS}")
    reader = gguf.GGUFReader(str(paths["model"]))
    hparams = {k: reader.fields[f"llama.{k}"].contents() if f"llama.{k}" in reader.fields else None
               for k in ("embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
                         "feed_forward_length", "context_length", "rope.freq_base", "vocab_size")}
    expected = {"embedding_length": TEXT_CONFIG["hidden_size"], "block_count": TEXT_CONFIG["num_hidden_layers"],
                "attention.head_count": TEXT_CONFIG["num_attention_heads"],
                "attention.head_count_kv": TEXT_CONFIG["num_key_value_heads"],
                "feed_forward_length": TEXT_CONFIG["intermediate_size"],
                "context_length": TEXT_CONFIG["max_position_embeddings"], "rope.freq_base": TEXT_CONFIG["rope_theta"],
                "vocab_size": n + len(EXTRA_TOKENS)}
    if hparams != expected:
        raise VisionError(f"{paths['model'].name}: {hparams}, expected {expected}")
    for key, expected_dim in (("mmproj", TEXT_CONFIG["hidden_size"]), ("wrong_mmproj", WRONG_TEXT["hidden_size"])):
        r = gguf.GGUFReader(str(paths[key]))
        got = {k: r.fields[k].contents() for k in ("clip.projector_type", "clip.vision.projection_dim",
                                                    "clip.vision.image_size", "clip.vision.patch_size",
                                                    "clip.vision.preproc_image_size",
                                                    "clip.vision.projector.scale_factor") if k in r.fields}
        want = {"clip.projector_type": "idefics3", "clip.vision.projection_dim": expected_dim,
                "clip.vision.image_size": VISION_CONFIG["image_size"],
                "clip.vision.patch_size": VISION_CONFIG["patch_size"],
                "clip.vision.preproc_image_size": LONGEST_EDGE, "clip.vision.projector.scale_factor": SCALE_FACTOR}
        if got != want:
            raise VisionError(f"{paths[key].name}: {got}, expected {want}")


# --------------------------------------------------------------------------
# The whole set, cached
# --------------------------------------------------------------------------


def _base_model_spec() -> tuple[str, Callable[[], Path]]:
    """(sha256, ensure) of the packaged SmolLM2 GGUF, whose tokenizer the model takes."""
    sys.path.insert(0, str(ROOT))
    try:
        from mullama._download import SMOLLM2, ensure_model
    finally:
        sys.path.remove(str(ROOT))
    return SMOLLM2.sha256, lambda: ensure_model(quiet=True)


def _parameters(base_sha256: str) -> dict[str, Any]:
    return {
        "stamp_version": STAMP_VERSION,
        "llama_cpp_commit": _llama_cpp_commit(),
        "base_sha256": base_sha256,
        "text_config": TEXT_CONFIG,
        "vision_config": VISION_CONFIG,
        "scale_factor": SCALE_FACTOR,
        "longest_edge": LONGEST_EDGE,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "extra_tokens": list(EXTRA_TOKENS),
        "seed": SEED,
        "init_std": INIT_STD,
        "check": [CHECK_PROMPT, CHECK_TOKENS, MIN_DISTINCT],
        "wrong_text": WRONG_TEXT,
        "wrong_seed": WRONG_SEED,
        "outtype": "f32",
        "model_name": MODEL_NAME,
        "files": OUTPUTS,
    }


def vision_dir(cache_dir: Path | None = None) -> Path:
    """Where the outputs live (whether or not they exist yet)."""
    cache = cache_dir or default_cache_dir()
    params = _parameters(_base_model_spec()[0])
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return cache / "models" / f"vision-{key}"


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


def ensure_vision_model(cache_dir: Path | None = None, *, source_dir: Path | None = None, force: bool = False,
                        verbose: bool = False) -> dict[str, Path]:
    """Paths of the vision test model (model, mmproj, wrong_mmproj), made first when absent or stale."""
    cache = cache_dir or default_cache_dir()
    base_sha256, ensure_model = _base_model_spec()
    params = _parameters(base_sha256)
    folder = vision_dir(cache)
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

    base: Path = step("base_model", ensure_model)
    vocab: GgufVocab = step("read_vocab", lambda: read_vocab(base, src))
    image_token_id = len(vocab.tokens) + EXTRA_TOKENS.index(IMAGE_TOKEN)
    text_config = {**TEXT_CONFIG, "vocab_size": len(vocab.tokens) + len(EXTRA_TOKENS),
                   "bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "pad_token_id": vocab.pad}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        out = _paths(staging)
        hf_dir: Path = step("hf_model", lambda: make_hf_model(staging, "hf", text_config, SEED, image_token_id,
                                                              vocab, True, verbose))
        step("convert_model", lambda: convert(hf_dir, out["model"], src, mmproj=False, verbose=verbose))
        step("convert_mmproj", lambda: convert(hf_dir, out["mmproj"], src, mmproj=True, verbose=verbose))
        wrong_dir: Path = step("wrong_hf_model", lambda: make_hf_model(staging, "hf-wrong", {**text_config, **WRONG_TEXT},
                                                                       WRONG_SEED, image_token_id, vocab, False,
                                                                       verbose))
        step("convert_wrong_mmproj", lambda: convert(wrong_dir, out["wrong_mmproj"], src, mmproj=True, verbose=verbose))
        step("verify", lambda: verify(out, vocab, src))
        greedy = json.loads((hf_dir / "greedy.json").read_text(encoding="utf-8"))
        # The transformers folders served their purpose; the GGUF files are the product.
        shutil.rmtree(hf_dir)
        shutil.rmtree(wrong_dir)
        timings["total"] = round(time.monotonic() - t_all, 2)
        record = {
            "parameters": params,
            "sizes": {k: p.stat().st_size for k, p in out.items()},
            "sha256": {k: sha256_file(p) for k, p in out.items()},
            "transformers_greedy": greedy,
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
    log(f"made the vision test model in {folder} in {timings['total']:.1f}s")
    return _paths(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("torch", "transformers", "tokenizers", "safetensors", "sentencepiece"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


# --------------------------------------------------------------------------
# llama-mtmd-cli on the model
# --------------------------------------------------------------------------


def mtmd_cli_command(exe: Path, model: Path, mmproj: Path, image: Path | Sequence[Path], prompt: str, *,
                     n_predict: int = 16,
                     threads: int | None = None, raw: bool = False, quiet: bool = True) -> list[str]:
    """The llama-mtmd-cli command line for greedy, single-turn output (see the module's docstring).

    image: one image, or several (one --image each, in the order of the prompt's markers).
    raw: the prompt verbatim (RAW_TEMPLATE), else the model's template as a built-in (here ChatML).
    quiet: only errors on stderr (-lv 1), else the info logs that count image chunks and tokens (-lv 4).
    """
    images = [image] if isinstance(image, (str, Path)) else list(image)
    cmd = [str(exe), "-m", str(model), "--mmproj", str(mmproj), *(a for i in images for a in ("--image", str(i))),
           "-p", prompt,
           "-n", str(n_predict), "--temp", "0", "--seed", "0", "-t", str(threads or available_cpus()),
           "--ignore-eos", "--no-warmup"]
    if raw:
        cmd += ["--jinja", "--chat-template", RAW_TEMPLATE]
    cmd += ["-lv", "1" if quiet else "4"]
    return cmd


def mtmd_cli_generate(exe: Path, model: Path, mmproj: Path, image: Path | Sequence[Path], prompt: str, *, n_predict: int = 16,
                      threads: int | None = None, raw: bool = False) -> dict[str, Any]:
    """Run llama-mtmd-cli greedily; its generated text (bytes as UTF-8, replaced where invalid) and what it logged.

    Returns text, image_tokens (the image embeddings decoded), image_chunks, chunks (text and image
    chunks of the tokenized prompt), prompt_tokens (text and image) and the command.
    """
    cmd = mtmd_cli_command(exe, model, mmproj, image, prompt, n_predict=n_predict, threads=threads, raw=raw,
                           quiet=False)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-10:])
        raise VisionError(f"{MTMD_CLI} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    # stdout: "\n", the pieces, "\n\n" (--ignore-eos: never an EOG token's extra "\n")
    if not (proc.stdout.startswith(b"\n") and proc.stdout.endswith(b"\n\n")):
        raise VisionError(f"{MTMD_CLI} printed {proc.stdout!r}, not '\\n' TEXT '\\n\\n'")
    batches = [int(n) for n in re.findall(r"decoding image batch \d+/\d+, n_tokens_batch = (\d+)", err)]
    totals = re.findall(r"encoding mtmd batch, n_chunks = \d+ \(done = \d+, total = (\d+)\)", err)
    prompt_tokens = re.search(r"prompt eval time =.*?/\s*(\d+) tokens", err)
    return {
        "text": proc.stdout[1:-2].decode("utf-8", "replace"),
        "image_tokens": sum(batches),
        "image_chunks": len(batches),
        "chunks": int(totals[0]) if totals else None,
        "prompt_tokens": int(prompt_tokens.group(1)) if prompt_tokens else None,
        "command": cmd,
    }


def mtmd_cli_refuses(exe: Path, model: Path, mmproj: Path, image: Path) -> str:
    """The error llama-mtmd-cli logs when it will not pair model and mmproj; VisionError if it runs."""
    cmd = mtmd_cli_command(exe, model, mmproj, image, "x", n_predict=1)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    found = re.search(r"mismatch between text model \(n_embd = \d+\) and mmproj \(n_embd = \d+\)", proc.stderr)
    if proc.returncode == 0 or not found:
        raise VisionError(f"{MTMD_CLI} did not refuse {mmproj.name} (exit {proc.returncode}): {proc.stderr[-500:]}")
    return found.group(0)


def check(paths: Mapping[str, Path], cache_dir: Path | None, source_dir: Path | None, jobs: int | None,
          verbose: bool) -> None:
    exe = ensure_mtmd_cli(cache_dir, source_dir=source_dir, jobs=jobs, verbose=verbose)
    image = (source_dir or DEFAULT_SOURCE_DIR) / "tools" / "mtmd" / "test-1.jpeg"
    for raw in (False, True):
        prompt = f"A picture:{MEDIA_MARKER} of a" if raw else CHECK_PROMPT
        t0 = time.monotonic()
        got = mtmd_cli_generate(exe, paths["model"], paths["mmproj"], image, prompt, raw=raw)
        log(f"{'raw' if raw else 'chat'} ({time.monotonic() - t0:.1f}s): {prompt!r} -> {got['text']!r}")
        log(f"  image tokens {got['image_tokens']} in {got['image_chunks']} image chunks; "
            f"{got['chunks']} chunks, {got['prompt_tokens']} prompt tokens")
        log(f"  {shlex.join(got['command'])}")
    log(f"wrong_mmproj refused: {mtmd_cli_refuses(exe, paths['model'], paths['wrong_mmproj'], image)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: $MULLAMA_CACHE or ~/.cache/mullama)")
    parser.add_argument("--source-dir", type=Path, default=None,
                        help=f"llama.cpp source (default: {DEFAULT_SOURCE_DIR})")
    parser.add_argument("--force", action="store_true", help="make everything again (the tool build is kept)")
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help="parallel compile jobs for llama-mtmd-cli (default: usable CPUs)")
    parser.add_argument("--check", action="store_true",
                        help="also run llama-mtmd-cli (built when absent) on test-1.jpeg and print what it says "
                             "(stderr)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the tools' output")
    parser.add_argument("--hf-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.hf_child is not None:
            _hf_model(json.loads(args.hf_child))
            return 0
        paths = ensure_vision_model(args.cache_dir, source_dir=args.source_dir, force=args.force, verbose=args.verbose)
        if args.check:
            check(paths, args.cache_dir, args.source_dir, args.jobs, args.verbose)
    except VisionError as e:
        log(f"error: {e}")
        return 1
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
