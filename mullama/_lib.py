"""Finds, loads and declares the native llama.cpp library.

Everything that touches ctypes signatures lives here: the structs mirrored
field for field from the pinned ``llama.h``, the table of every C function the
binding calls, the library search (``MULLAMA_LIB`` first, then the copy
bundled in ``mullama/lib``), the ABI check and the log bridge into Python's
``logging``.  The library is loaded once, on first use.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import json
import logging
import os
import sys
import threading
from ctypes import Structure, c_int, c_int32, c_void_p
from pathlib import Path
from typing import Any, Final

from . import _abi, _rules

logger = logging.getLogger("mullama")
# Silent unless the application configures logging for "mullama".
logger.addHandler(logging.NullHandler())

PINNED_COMMIT: Final = _abi.description()["llama_cpp_commit"]
ENV_LIB: Final = "MULLAMA_LIB"
ENV_SKIP_ABI: Final = "MULLAMA_SKIP_ABI_CHECK"
PACKAGE_LIB_DIR: Final = Path(__file__).resolve().parent / "lib"
# Packages of GPU backends that plug into the prebuilt CPU package's libraries.
PLUGIN_PACKAGES: Final = ("mullama_cuda12", "mullama_cuda13")

if sys.platform == "win32":
    LIB_NAMES: Final = ("llama.dll", "libllama.dll")
elif sys.platform == "darwin":
    LIB_NAMES = ("libllama.dylib",)
else:
    LIB_NAMES = ("libllama.so",)

# ---------------------------------------------------------------------------
# Types, callbacks, structs and signatures, from abi.json (scripts/gen_abi.py reads them from the
# pinned headers with a C parser; _abi maps them to ctypes).  What is written here is which names
# the binding uses, and the few places where it takes a type other than the header's and why.
# ---------------------------------------------------------------------------

_types = _abi.Mapper()
llama_token = c_int32
llama_pos = c_int32
llama_seq_id = c_int32
c_enum = c_int

llama_progress_callback = _types.callback("llama_progress_callback")
ggml_log_callback = _types.callback("ggml_log_callback")
ggml_abort_callback = _types.callback("ggml_abort_callback")
ggml_backend_sched_eval_callback = _types.callback("ggml_backend_sched_eval_callback")

_LOG_LEVELS = _abi.enum("ggml_log_level")
GGML_LOG_LEVEL_DEBUG: Final = _LOG_LEVELS["GGML_LOG_LEVEL_DEBUG"]
GGML_LOG_LEVEL_INFO: Final = _LOG_LEVELS["GGML_LOG_LEVEL_INFO"]
GGML_LOG_LEVEL_WARN: Final = _LOG_LEVELS["GGML_LOG_LEVEL_WARN"]
GGML_LOG_LEVEL_ERROR: Final = _LOG_LEVELS["GGML_LOG_LEVEL_ERROR"]
GGML_LOG_LEVEL_CONT: Final = _LOG_LEVELS["GGML_LOG_LEVEL_CONT"]

_LOAD_MODES = _abi.enum("llama_load_mode")
LLAMA_LOAD_MODE_NONE: Final = _LOAD_MODES["LLAMA_LOAD_MODE_NONE"]
LLAMA_LOAD_MODE_MMAP: Final = _LOAD_MODES["LLAMA_LOAD_MODE_MMAP"]
LLAMA_LOAD_MODE_MLOCK: Final = _LOAD_MODES["LLAMA_LOAD_MODE_MLOCK"]
LLAMA_LOAD_MODE_MMAP_MLOCK: Final = _LOAD_MODES["LLAMA_LOAD_MODE_MMAP_MLOCK"]

_POOLING = _abi.enum("llama_pooling_type")
LLAMA_POOLING_TYPE_UNSPECIFIED: Final = _POOLING["LLAMA_POOLING_TYPE_UNSPECIFIED"]
LLAMA_POOLING_TYPE_NONE: Final = _POOLING["LLAMA_POOLING_TYPE_NONE"]
LLAMA_POOLING_TYPE_MEAN: Final = _POOLING["LLAMA_POOLING_TYPE_MEAN"]
LLAMA_POOLING_TYPE_CLS: Final = _POOLING["LLAMA_POOLING_TYPE_CLS"]
LLAMA_POOLING_TYPE_LAST: Final = _POOLING["LLAMA_POOLING_TYPE_LAST"]
LLAMA_POOLING_TYPE_RANK: Final = _POOLING["LLAMA_POOLING_TYPE_RANK"]

_DEVICE_TYPES = _abi.enum("ggml_backend_dev_type")
GGML_BACKEND_DEVICE_TYPE_CPU: Final = _DEVICE_TYPES["GGML_BACKEND_DEVICE_TYPE_CPU"]
GGML_BACKEND_DEVICE_TYPE_GPU: Final = _DEVICE_TYPES["GGML_BACKEND_DEVICE_TYPE_GPU"]
GGML_BACKEND_DEVICE_TYPE_IGPU: Final = _DEVICE_TYPES["GGML_BACKEND_DEVICE_TYPE_IGPU"]
GGML_BACKEND_DEVICE_TYPE_ACCEL: Final = _DEVICE_TYPES["GGML_BACKEND_DEVICE_TYPE_ACCEL"]

LLAMA_TOKEN_NULL: Final = _abi.constant("LLAMA_TOKEN_NULL")


# The structs the binding reads or fills, named as in C.  Each is registered as soon as it is
# defined, so that a later one's fields (llama_token_data_array.data) point to it.
@_types.struct
class llama_model_params(Structure):
    _fields_ = _types.fields("llama_model_params")


@_types.struct
class llama_context_params(Structure):
    _fields_ = _types.fields("llama_context_params")


@_types.struct
class llama_batch(Structure):
    _fields_ = _types.fields("llama_batch")


@_types.struct
class llama_sampler_chain_params(Structure):
    _fields_ = _types.fields("llama_sampler_chain_params")


@_types.struct
class llama_chat_message(Structure):
    _fields_ = _types.fields("llama_chat_message")


@_types.struct
class llama_token_data(Structure):
    _fields_ = _types.fields("llama_token_data")


@_types.struct
class llama_token_data_array(Structure):
    _fields_ = _types.fields("llama_token_data_array")


@_types.struct
class llama_logit_bias(Structure):
    _fields_ = _types.fields("llama_logit_bias")


@_types.struct
class llama_perf_context_data(Structure):
    _fields_ = _types.fields("llama_perf_context_data")


@_types.struct
class llama_model_quantize_params(Structure):
    _fields_ = _types.fields("llama_model_quantize_params")


# libmtmd (tools/mtmd: mtmd.h, mtmd-helper.h), images and audio in the prompt
@_types.struct
class mtmd_context_params(Structure):
    _fields_ = _types.fields("mtmd_context_params")


@_types.struct
class mtmd_input_text(Structure):
    _fields_ = _types.fields("mtmd_input_text")


@_types.struct
class mtmd_helper_video_init_params(Structure):
    _fields_ = _types.fields("mtmd_helper_video_init_params")


@_types.struct
class mtmd_helper_init_opt(Structure):
    _fields_ = _types.fields("mtmd_helper_init_opt")


@_types.struct
class mtmd_helper_bitmap_wrapper(Structure):
    _fields_ = _types.fields("mtmd_helper_bitmap_wrapper")


_CHUNK_TYPES = _abi.enum("mtmd_input_chunk_type")
MTMD_INPUT_CHUNK_TYPE_TEXT: Final = _CHUNK_TYPES["MTMD_INPUT_CHUNK_TYPE_TEXT"]
MTMD_INPUT_CHUNK_TYPE_IMAGE: Final = _CHUNK_TYPES["MTMD_INPUT_CHUNK_TYPE_IMAGE"]
MTMD_INPUT_CHUNK_TYPE_AUDIO: Final = _CHUNK_TYPES["MTMD_INPUT_CHUNK_TYPE_AUDIO"]

# Every struct above, by its C name: the ABI test checks each one.
MIRRORED_STRUCTS: Final[dict[str, type[Structure]]] = {f"struct {name}": cls for name, cls in _types.structs.items()}

# ---------------------------------------------------------------------------
# The functions the binding calls, by group; their signatures come from abi.json.
# ---------------------------------------------------------------------------

_LLAMA_NAMES: Final = (
    # library
    "llama_version", "llama_backend_init", "llama_backend_free", "llama_print_system_info",
    "llama_supports_gpu_offload", "llama_supports_mmap", "llama_supports_mlock", "llama_max_devices",
    "llama_max_parallel_sequences", "llama_log_set", "llama_time_us",
    # defaults
    "llama_model_default_params", "llama_context_default_params", "llama_sampler_chain_default_params",
    "llama_model_quantize_default_params",
    # model
    "llama_model_load_from_file", "llama_model_free", "llama_model_get_vocab", "llama_model_n_ctx_train",
    "llama_model_n_embd", "llama_model_n_embd_out", "llama_model_n_layer", "llama_model_n_head",
    "llama_model_n_head_kv", "llama_model_meta_val_str", "llama_model_meta_count", "llama_model_meta_key_by_index",
    "llama_model_meta_val_str_by_index", "llama_model_desc", "llama_model_size", "llama_model_n_params",
    "llama_model_chat_template", "llama_model_has_encoder", "llama_model_has_decoder", "llama_model_quantize",
    # vocab
    "llama_vocab_n_tokens", "llama_vocab_type", "llama_vocab_bos", "llama_vocab_eos", "llama_vocab_eot",
    "llama_vocab_sep", "llama_vocab_nl", "llama_vocab_pad", "llama_vocab_is_eog", "llama_vocab_is_control",
    "llama_vocab_get_add_bos", "llama_vocab_get_add_eos", "llama_vocab_get_add_sep", "llama_vocab_get_text",
    "llama_tokenize", "llama_token_to_piece", "llama_detokenize", "llama_chat_apply_template",
    "llama_chat_builtin_templates",
    # context
    "llama_init_from_model", "llama_free", "llama_n_ctx", "llama_n_batch", "llama_n_ubatch", "llama_n_seq_max",
    "llama_pooling_type", "llama_get_memory", "llama_memory_clear", "llama_memory_seq_rm", "llama_memory_seq_cp",
    "llama_memory_seq_add", "llama_memory_seq_pos_max", "llama_memory_can_shift", "llama_set_n_threads",
    "llama_n_threads", "llama_set_embeddings", "llama_set_abort_callback", "llama_synchronize", "llama_batch_init",
    "llama_batch_free", "llama_decode", "llama_encode", "llama_get_logits", "llama_get_logits_ith",
    "llama_get_embeddings", "llama_get_embeddings_ith", "llama_get_embeddings_seq", "llama_perf_context",
    # saved state of one sequence (its KV cache); like every call here they run without the GIL
    "llama_state_seq_get_size", "llama_state_seq_get_data", "llama_state_seq_set_data",
    # LoRA adapters: loaded per model, applied per context (a set of adapters with their scales)
    "llama_adapter_lora_init", "llama_adapter_lora_free", "llama_adapter_meta_val_str", "llama_set_adapters_lora",
    # backend (device) sampling: a sampler chain attached to a sequence runs inside the decode graph
    "llama_set_sampler", "llama_get_sampled_token_ith", "llama_get_sampled_probs_ith",
    "llama_get_sampled_probs_count_ith", "llama_get_sampled_logits_ith", "llama_get_sampled_logits_count_ith",
    "llama_get_sampled_candidates_ith", "llama_get_sampled_candidates_count_ith", "llama_perf_context_reset",
    # samplers
    "llama_sampler_chain_init", "llama_sampler_chain_add", "llama_sampler_chain_n", "llama_sampler_chain_get",
    "llama_sampler_init_greedy", "llama_sampler_init_dist", "llama_sampler_init_top_k", "llama_sampler_init_top_p",
    "llama_sampler_init_min_p", "llama_sampler_init_typical", "llama_sampler_init_top_n_sigma",
    "llama_sampler_init_temp", "llama_sampler_init_penalties", "llama_sampler_init_logit_bias",
    "llama_sampler_sample", "llama_sampler_accept", "llama_sampler_apply", "llama_sampler_init_grammar",
    "llama_sampler_reset", "llama_sampler_free", "llama_sampler_get_seed", "llama_sampler_name",
)
# Where the binding's type is not the header's: logits are read as NumPy views of their address.
_LLAMA_OVERRIDES: Final[dict[str, dict[str, Any]]] = {
    "llama_get_logits": {"returns": c_void_p},
    "llama_get_logits_ith": {"returns": c_void_p},
}
_FUNCTIONS: Final = _types.table(_LLAMA_NAMES, _LLAMA_OVERRIDES)

# ggml (libggml / libggml-base): backend registry, used for device listing and
# for loading the backends of a build made with GGML_BACKEND_DL.
_GGML_NAMES: Final = (
    "ggml_backend_load_all_from_path", "ggml_backend_load", "ggml_backend_reg_count", "ggml_backend_reg_get",
    "ggml_backend_reg_name", "ggml_backend_dev_count", "ggml_backend_dev_get", "ggml_backend_dev_name",
    "ggml_backend_dev_description", "ggml_backend_dev_type", "ggml_backend_dev_by_name", "ggml_backend_dev_memory",
    "ggml_backend_dev_backend_reg", "ggml_backend_reg_dev_count", "ggml_backend_reg_dev_get", "ggml_backend_register",
)
_GGML_FUNCTIONS: Final = _types.table(_GGML_NAMES)

# ggml-rpc (libggml-rpc, from ggml-rpc.h): remote devices and the RPC server.
# Optional: a library built with --no-rpc has none of these.
_RPC_NAMES: Final = ("ggml_backend_rpc_add_server", "ggml_backend_rpc_start_server")
_RPC_FUNCTIONS: Final = _types.table(_RPC_NAMES)


# libmtmd: opened on first use (a Projector), beside libllama.
_MTMD_NAMES: Final = (
    "mtmd_default_marker", "mtmd_context_params_default", "mtmd_init_from_file", "mtmd_free",
    "mtmd_decode_use_non_causal", "mtmd_decode_use_mrope", "mtmd_support_vision", "mtmd_support_audio",
    "mtmd_get_audio_sample_rate", "mtmd_get_marker",
    # media
    "mtmd_bitmap_init", "mtmd_bitmap_init_from_audio", "mtmd_bitmap_get_nx", "mtmd_bitmap_get_ny",
    "mtmd_bitmap_get_n_bytes", "mtmd_bitmap_get_data", "mtmd_bitmap_is_audio", "mtmd_bitmap_free", "mtmd_bitmap_get_id",
    "mtmd_bitmap_set_id",
    "mtmd_helper_bitmap_init_from_buf", "mtmd_helper_init_opt_default",
    # a prompt as chunks of text and media
    "mtmd_input_chunks_init", "mtmd_input_chunks_size", "mtmd_input_chunks_get", "mtmd_input_chunks_free",
    "mtmd_input_chunk_get_type", "mtmd_input_chunk_get_tokens_text", "mtmd_input_chunk_get_n_tokens",
    "mtmd_input_chunk_get_id", "mtmd_input_chunk_get_n_pos", "mtmd_tokenize",
    # evaluation: encode a media chunk, decode its embeddings into a sequence
    "mtmd_encode_chunk", "mtmd_helper_eval_chunk_single",
    "mtmd_helper_log_set",
)
_MTMD_FUNCTIONS: Final = _types.table(_MTMD_NAMES)

if sys.platform == "win32":
    MTMD_NAMES: Final = ("mtmd.dll", "libmtmd.dll")
elif sys.platform == "darwin":
    MTMD_NAMES = ("libmtmd.dylib",)
else:
    MTMD_NAMES = ("libmtmd.so",)


class LibraryLoadError(RuntimeError):
    """libllama could not be found, loaded, or is not the ABI this binding was written for."""


# Functions that only read or update a few values and never wait for the
# device.  Besides their usual binding (which releases the GIL around the
# call, as every ctypes call does), ``_Lib.held`` binds them through a PyDLL
# handle that keeps the GIL: a thread that makes many such calls in a row (the
# engine's sampling pass) would otherwise queue for the GIL again after each
# one, behind whatever another thread (a server's event loop) is doing.
# ``llama_get_logits`` and ``llama_get_logits_ith`` wait for the last decode,
# so ``held`` is for calls after an explicit ``llama_synchronize``.
# The list is data shared with the description of the bindings: rules.json, "calls_that_never_wait".
HELD_GIL: Final = tuple(_rules.RULES["calls_that_never_wait"]["names"])


def _declare(target: object, handle: ctypes.CDLL | tuple[ctypes.CDLL, ...],
             table: dict[str, tuple[Any, tuple[Any, ...]]], names: tuple[str, ...] | None = None) -> None:
    """Bind ``names`` (default: all) of ``table`` from ``handle`` as attributes of ``target``, typed.

    Given several handles, each function comes from the first that exports it
    (on Windows a DLL's lookup sees only its own exports, not its dependencies').
    """
    handles = handle if isinstance(handle, tuple) else (handle,)
    for name in table if names is None else names:
        restype, argtypes = table[name]
        owner = next((h for h in handles[:-1] if hasattr(h, name)), handles[-1])
        fn = getattr(owner, name)
        fn.restype = restype
        fn.argtypes = list(argtypes)
        setattr(target, name, fn)


class _Held:
    """The :data:`HELD_GIL` functions, bound so that they keep the GIL."""

    def __init__(self, path: Path) -> None:
        mode = getattr(os, "RTLD_NOW", 0) | getattr(os, "RTLD_LOCAL", 0)
        _declare(self, ctypes.PyDLL(str(path), mode=mode), _FUNCTIONS, HELD_GIL)

    def __getattr__(self, name: str) -> Any:  # for mypy: functions are set dynamically
        raise AttributeError(f"{name} is not one of mullama._lib.HELD_GIL")


class _Lib:
    """The loaded libraries, with every declared function as an attribute."""

    def __init__(self, llama: ctypes.CDLL, ggml: tuple[ctypes.CDLL, ...], path: Path, build_info: dict[str, Any],
                 rpc: ctypes.CDLL | None = None) -> None:
        self.path = path
        self.build_info = build_info
        self.cdll = llama
        # True when the RPC functions below are present (the library was built with GGML_RPC).
        self.has_rpc = rpc is not None
        if rpc is not None:
            _declare(self, rpc, _RPC_FUNCTIONS)
        _declare(self, llama, _FUNCTIONS)
        _declare(self, ggml, _GGML_FUNCTIONS)
        self.held = _Held(path)
        self._mtmd: _Mtmd | None = None

    def mtmd(self) -> _Mtmd:
        """libmtmd, opened from libllama's folder on first use; LibraryLoadError when this build has none."""
        if self._mtmd is None:
            with _lock:
                if self._mtmd is None:
                    self._mtmd = _Mtmd(self.path.parent)
        return self._mtmd

    def __getattr__(self, name: str) -> Any:  # for mypy: functions are set dynamically
        raise AttributeError(f"libllama function {name} is not declared in mullama._lib")


class _Mtmd:
    """libmtmd, with every declared mtmd_* function as an attribute; its log goes where llama.cpp's goes."""

    def __init__(self, folder: Path) -> None:
        mode = getattr(os, "RTLD_NOW", 0) | getattr(os, "RTLD_LOCAL", 0)
        tried = [folder / n for n in MTMD_NAMES]
        found = next((p for p in tried if p.exists()), None)
        if found is None:
            raise LibraryLoadError(
                f"this build of libllama has no libmtmd beside it (looked for {', '.join(str(p) for p in tried)}); "
                f"rebuild it with scripts/build_lib.py, which builds libmtmd for images and audio in the prompt")
        try:
            handle = ctypes.CDLL(str(found), mode=mode)
            _declare(self, handle, _MTMD_FUNCTIONS)
        except (OSError, AttributeError) as e:
            raise LibraryLoadError(f"{found} cannot be loaded or is not the libmtmd of llama.cpp {PINNED_COMMIT} "
                                   f"({e}); rebuild it with scripts/build_lib.py") from None
        self.path = found
        self.mtmd_helper_log_set(_log_callback, None)

    def __getattr__(self, name: str) -> Any:  # for mypy: functions are set dynamically
        raise AttributeError(f"libmtmd function {name} is not declared in mullama._lib")


def declared_functions() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Every llama_* function the binding declares (used by the tests)."""
    return dict(_FUNCTIONS)


def declared_ggml_functions() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Every ggml_backend_* function the binding declares, from ggml-backend.h (used by the tests)."""
    return dict(_GGML_FUNCTIONS)


def declared_mtmd_functions() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Every mtmd.h / mtmd-helper.h function the binding declares (used by the tests)."""
    return dict(_MTMD_FUNCTIONS)


def declared_rpc_functions() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Every ggml-rpc.h function the binding declares (used by the tests)."""
    return dict(_RPC_FUNCTIONS)


def _candidates() -> list[Path]:
    """Where to look, in order: MULLAMA_LIB (file or folder), then the package."""
    out: list[Path] = []
    env = os.environ.get(ENV_LIB)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            out += [p / n for n in LIB_NAMES]
        else:
            out.append(p)
        return out  # an explicit choice is never silently replaced by another build
    out += [PACKAGE_LIB_DIR / n for n in LIB_NAMES]
    return out


def _plugin_backends() -> list[Path]:
    """GPU backends installed as packages of their own (``pip install mullama[cuda12]``).

    Each such package holds ggml backends built as plugins for the prebuilt
    CPU package's libraries; it is found by import name, without importing it.
    """
    found: list[Path] = []
    for name in PLUGIN_PACKAGES:
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            lib_dir = Path(folder) / "lib"
            found += sorted(p for p in lib_dir.glob("*ggml-*") if p.suffix in (".so", ".dll", ".dylib"))
    return found


def _load_plugins(lib: _Lib) -> None:
    """Register every installed plugin backend; one that cannot load is an error, never a quiet CPU run."""
    for plugin in _plugin_backends():
        commit = _read_build_info(plugin.parent).get("llama_cpp_commit")
        if commit != PINNED_COMMIT:
            raise LibraryLoadError(
                f"{plugin} was built from llama.cpp {commit}, but this mullama is written for {PINNED_COMMIT}; "
                f"install the {plugin.parent.parent.name.replace('_', '-')} release that matches mullama's")
        take_errors()
        if not lib.ggml_backend_load(str(plugin).encode()):
            why = take_errors() or "no reason given"
            raise LibraryLoadError(
                f"{plugin.parent.parent.name.replace('_', '-')} is installed, but its backend {plugin.name} could not "
                f"be loaded ({why}). Check the GPU driver, or uninstall that package to run on the CPU."
            )


def _read_build_info(folder: Path) -> dict[str, Any]:
    try:
        with open(folder / "build_info.json", encoding="utf-8") as f:
            info = json.load(f)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _open_rpc(folder: Path, mode: int, ggml: ctypes.CDLL) -> ctypes.CDLL | None:
    """libggml-rpc beside libllama: its own file in every build made with GGML_RPC.

    Without the file, a monolithic build may still export the functions
    itself; otherwise the library has no RPC backend.
    """
    names = {"win32": ("ggml-rpc.dll",), "darwin": ("libggml-rpc.dylib", "libggml-rpc.so")}.get(
        sys.platform, ("libggml-rpc.so",))
    for n in names:
        if (folder / n).exists():
            try:
                return ctypes.CDLL(str(folder / n), mode=mode)
            except OSError as e:
                logger.warning("%s cannot be loaded (%s); RPC servers are unavailable", folder / n, e)
                return None
    return ggml if hasattr(ggml, "ggml_backend_rpc_add_server") else None


def _open(path: Path) -> tuple[ctypes.CDLL, tuple[ctypes.CDLL, ...]]:
    folder = path.parent
    # RTLD_LOCAL: our libraries never supply symbols to anything else loaded
    # in the process (another libllama, say), nor take theirs.
    mode = getattr(os, "RTLD_NOW", 0) | getattr(os, "RTLD_LOCAL", 0)
    if sys.platform == "win32":
        os.add_dll_directory(str(folder))  # dependencies next to llama.dll
    elif sys.platform.startswith("linux"):
        # Make the C++ runtime globally visible first.  When an extension
        # (NumPy's) has already loaded libstdc++ privately, a CUDA build's
        # libllama otherwise resolved C++ runtime symbols elsewhere among the
        # CUDA libraries it pulls in and crashed in its first std::regex.
        try:
            ctypes.CDLL("libstdc++.so.6", mode=getattr(os, "RTLD_NOW", 2) | getattr(os, "RTLD_GLOBAL", 256))
        except OSError:
            pass  # a statically linked build needs none
    llama = ctypes.CDLL(str(path), mode=mode)
    ggml_names = {"win32": ("ggml.dll",), "darwin": ("libggml.dylib",)}.get(sys.platform, ("libggml.so",))
    ggml: ctypes.CDLL | None = None
    for n in ggml_names:
        if (folder / n).exists():
            ggml = ctypes.CDLL(str(folder / n), mode=mode)
            break
    if ggml is None:
        return llama, (llama,)  # a monolithic build exports the ggml symbols itself
    # ggml's backend registry is in libggml, the backend and device functions in
    # libggml-base; Windows finds each only in the DLL that defines it
    base_name = {"win32": "ggml-base.dll", "darwin": "libggml-base.dylib"}.get(sys.platform, "libggml-base.so")
    if (folder / base_name).exists():
        return llama, (ggml, ctypes.CDLL(str(folder / base_name), mode=mode))
    return llama, (ggml,)


def _check_abi(lib: _Lib) -> None:
    """Refuse a library built from another llama.cpp than the pinned one.

    The build writes build_info.json beside the library; a library without it
    (built by other means) must at least carry this commit's symbols and give
    the default parameters this commit gives, which catches struct drift
    before any struct crosses the boundary by value.
    """
    commit = lib.build_info.get("llama_cpp_commit")
    if commit and commit != PINNED_COMMIT and not os.environ.get(ENV_SKIP_ABI):
        raise LibraryLoadError(
            f"{lib.path} was built from llama.cpp {commit}, but this mullama is written for {PINNED_COMMIT}; "
            f"rebuild it with scripts/build_lib.py (or set {ENV_SKIP_ABI}=1 at your own risk)"
        )
    mp = lib.llama_model_default_params()
    cp = lib.llama_context_default_params()
    ok = (
        cp.n_batch == 2048 and cp.n_ubatch == 512 and cp.n_seq_max == 1 and cp.n_samplers == 0
        and not cp.embeddings and cp.offload_kqv and not mp.vocab_only and not mp.no_alloc
        and -1 <= mp.load_mode <= 4 and mp.main_gpu == 0
    )
    if not ok:
        raise LibraryLoadError(
            f"{lib.path} does not have the ABI of llama.cpp {PINNED_COMMIT} "
            f"(default context params came back as n_batch={cp.n_batch}, n_ubatch={cp.n_ubatch}, "
            f"n_seq_max={cp.n_seq_max}); rebuild it with scripts/build_lib.py"
        )


# --- logging bridge ---------------------------------------------------------

_LEVELS: Final = {
    GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    GGML_LOG_LEVEL_INFO: logging.INFO,
    GGML_LOG_LEVEL_WARN: logging.WARNING,
    GGML_LOG_LEVEL_ERROR: logging.ERROR,
}
_log_state = threading.local()
_shutting_down = False


def _log_bridge(level: int, text: bytes | None, _user: int | None) -> None:
    if _shutting_down or text is None:
        return
    # llama.cpp writes lines in pieces (CONT continues the previous level);
    # join them per thread and emit whole lines.
    if level == GGML_LOG_LEVEL_CONT:
        level = getattr(_log_state, "level", GGML_LOG_LEVEL_INFO)
    _log_state.level = level
    buf: str = getattr(_log_state, "buf", "") + text.decode("utf-8", "replace")
    *lines, rest = buf.split("\n")
    _log_state.buf = rest
    py_level = _LEVELS.get(level, logging.DEBUG)
    if lines and level == GGML_LOG_LEVEL_ERROR:
        _log_state.errors = (getattr(_log_state, "errors", []) + [ln.strip() for ln in lines if ln.strip()])[-4:]
    if lines and logger.isEnabledFor(py_level):
        for line in lines:
            if line:
                logger.log(py_level, "%s", line)


_log_callback = ggml_log_callback(_log_bridge)


def take_errors() -> str:
    """The error lines llama.cpp logged on this thread since the last call, joined."""
    errors: list[str] = getattr(_log_state, "errors", [])
    _log_state.errors = []
    return "; ".join(errors)


def _silence_at_exit() -> None:
    global _shutting_down
    _shutting_down = True


# --- the one loaded library ---------------------------------------------------

_lib: _Lib | None = None
_lock = threading.Lock()


def load() -> _Lib:
    """Load libllama once and return it; raises LibraryLoadError naming every path tried."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried: list[str] = []
        for path in _candidates():
            if not path.exists():
                tried.append(f"{path}: no such file")
                continue
            try:
                llama, ggml = _open(path)
            except OSError as e:
                tried.append(f"{path}: {e}")
                continue
            try:
                rpc = _open_rpc(path.parent, getattr(os, "RTLD_NOW", 0) | getattr(os, "RTLD_LOCAL", 0), ggml[0])
                lib = _Lib(llama, ggml, path, _read_build_info(path.parent), rpc)
            except AttributeError as e:
                raise LibraryLoadError(
                    f"{path} is not the llama.cpp this mullama is written for ({e}); "
                    f"rebuild it with scripts/build_lib.py"
                ) from None
            _check_abi(lib)
            lib.llama_log_set(_log_callback, None)
            atexit.register(_silence_at_exit)
            # Builds with loadable backends (--portable) register them from their folder.
            if lib.ggml_backend_reg_count() == 0:
                lib.ggml_backend_load_all_from_path(str(path.parent).encode())
                if not os.environ.get(ENV_LIB):
                    _load_plugins(lib)
            _lib = lib
            return lib
        where = f"${ENV_LIB}" if os.environ.get(ENV_LIB) else "the package"
        raise LibraryLoadError(
            f"could not load libllama from {where}. Tried:\n  " + "\n  ".join(tried)
            + "\nBuild it with `python scripts/build_lib.py`, or point MULLAMA_LIB at a libllama file or folder."
        )

