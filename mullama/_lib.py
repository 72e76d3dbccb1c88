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
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any, Final

logger = logging.getLogger("mullama")
# Silent unless the application configures logging for "mullama".
logger.addHandler(logging.NullHandler())

PINNED_COMMIT: Final = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
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
# Scalar typedefs and callbacks (llama.h / ggml.h)
# ---------------------------------------------------------------------------

llama_token = c_int32
llama_pos = c_int32
llama_seq_id = c_int32
c_enum = c_int

llama_progress_callback = CFUNCTYPE(c_bool, c_float, c_void_p)
ggml_log_callback = CFUNCTYPE(None, c_int, c_char_p, c_void_p)
ggml_abort_callback = CFUNCTYPE(c_bool, c_void_p)
ggml_backend_sched_eval_callback = CFUNCTYPE(c_bool, c_void_p, c_bool, c_void_p)

# ggml_log_level
GGML_LOG_LEVEL_DEBUG: Final = 1
GGML_LOG_LEVEL_INFO: Final = 2
GGML_LOG_LEVEL_WARN: Final = 3
GGML_LOG_LEVEL_ERROR: Final = 4
GGML_LOG_LEVEL_CONT: Final = 5

# llama_load_mode
LLAMA_LOAD_MODE_NONE: Final = 0
LLAMA_LOAD_MODE_MMAP: Final = 1
LLAMA_LOAD_MODE_MLOCK: Final = 2
LLAMA_LOAD_MODE_MMAP_MLOCK: Final = 3

# llama_pooling_type
LLAMA_POOLING_TYPE_UNSPECIFIED: Final = -1
LLAMA_POOLING_TYPE_NONE: Final = 0
LLAMA_POOLING_TYPE_MEAN: Final = 1
LLAMA_POOLING_TYPE_CLS: Final = 2
LLAMA_POOLING_TYPE_LAST: Final = 3
LLAMA_POOLING_TYPE_RANK: Final = 4

# ggml_backend_dev_type
GGML_BACKEND_DEVICE_TYPE_CPU: Final = 0
GGML_BACKEND_DEVICE_TYPE_GPU: Final = 1
GGML_BACKEND_DEVICE_TYPE_IGPU: Final = 2
GGML_BACKEND_DEVICE_TYPE_ACCEL: Final = 3

LLAMA_TOKEN_NULL: Final = -1

# ---------------------------------------------------------------------------
# Structs, field for field from the pinned llama.h (checked by tests/test_abi.py)
# ---------------------------------------------------------------------------


class llama_model_params(Structure):
    _fields_ = [
        ("devices", c_void_p),
        ("tensor_buft_overrides", c_void_p),
        ("n_gpu_layers", c_int32),
        ("split_mode", c_enum),
        ("load_mode", c_enum),
        ("lazy_mode", c_enum),
        ("main_gpu", c_int32),
        ("tensor_split", POINTER(c_float)),
        ("progress_callback", llama_progress_callback),
        ("progress_callback_user_data", c_void_p),
        ("kv_overrides", c_void_p),
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class llama_context_params(Structure):
    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),
        ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_enum),
        ("rope_scaling_type", c_enum),
        ("pooling_type", c_enum),
        ("attention_type", c_enum),
        ("flash_attn_type", c_enum),
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", ggml_backend_sched_eval_callback),
        ("cb_eval_user_data", c_void_p),
        ("type_k", c_enum),
        ("type_v", c_enum),
        ("abort_callback", ggml_abort_callback),
        ("abort_callback_data", c_void_p),
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", c_void_p),
        ("n_samplers", c_size_t),
        ("ctx_other", c_void_p),
    ]


class llama_batch(Structure):
    _fields_ = [
        ("n_tokens", c_int32),
        ("token", POINTER(llama_token)),
        ("embd", POINTER(c_float)),
        ("pos", POINTER(llama_pos)),
        ("n_seq_id", POINTER(c_int32)),
        ("seq_id", POINTER(POINTER(llama_seq_id))),
        ("logits", POINTER(c_int8)),
    ]


class llama_sampler_chain_params(Structure):
    _fields_ = [("no_perf", c_bool)]


class llama_chat_message(Structure):
    _fields_ = [("role", c_char_p), ("content", c_char_p)]


class llama_token_data(Structure):
    _fields_ = [("id", llama_token), ("logit", c_float), ("p", c_float)]


class llama_token_data_array(Structure):
    _fields_ = [
        ("data", POINTER(llama_token_data)),
        ("size", c_size_t),
        ("selected", c_int64),
        ("sorted", c_bool),
    ]


class llama_logit_bias(Structure):
    _fields_ = [("token", llama_token), ("bias", c_float)]


class llama_perf_context_data(Structure):
    _fields_ = [
        ("t_start_ms", c_double),
        ("t_load_ms", c_double),
        ("t_p_eval_ms", c_double),
        ("t_eval_ms", c_double),
        ("n_p_eval", c_int32),
        ("n_eval", c_int32),
        ("n_reused", c_int32),
    ]


class llama_model_quantize_params(Structure):
    _fields_ = [
        ("nthread", c_int32),
        ("ftype", c_enum),
        ("output_tensor_type", c_enum),
        ("token_embedding_type", c_enum),
        ("allow_requantize", c_bool),
        ("quantize_output_tensor", c_bool),
        ("only_copy", c_bool),
        ("pure", c_bool),
        ("keep_split", c_bool),
        ("dry_run", c_bool),
        ("imatrix", c_void_p),
        ("kv_overrides", c_void_p),
        ("tt_overrides", c_void_p),
        ("prune_layers", POINTER(c_int32)),
        ("max_buf_size", c_size_t),
    ]


# Every struct above, by its C name: the ABI test checks each one.
MIRRORED_STRUCTS: Final[dict[str, type[Structure]]] = {
    "struct llama_model_params": llama_model_params,
    "struct llama_context_params": llama_context_params,
    "struct llama_batch": llama_batch,
    "struct llama_sampler_chain_params": llama_sampler_chain_params,
    "struct llama_chat_message": llama_chat_message,
    "struct llama_token_data": llama_token_data,
    "struct llama_token_data_array": llama_token_data_array,
    "struct llama_logit_bias": llama_logit_bias,
    "struct llama_perf_context_data": llama_perf_context_data,
    "struct llama_model_quantize_params": llama_model_quantize_params,
}

# ---------------------------------------------------------------------------
# Function table: name -> (restype, argtypes).  The one place signatures live.
# ---------------------------------------------------------------------------

_p = c_void_p
_tok_p = POINTER(llama_token)
_FUNCTIONS: Final[dict[str, tuple[Any, tuple[Any, ...]]]] = {
    # library
    "llama_version": (c_char_p, ()),
    "llama_backend_init": (None, ()),
    "llama_backend_free": (None, ()),
    "llama_print_system_info": (c_char_p, ()),
    "llama_supports_gpu_offload": (c_bool, ()),
    "llama_supports_mmap": (c_bool, ()),
    "llama_supports_mlock": (c_bool, ()),
    "llama_max_devices": (c_size_t, ()),
    "llama_max_parallel_sequences": (c_size_t, ()),
    "llama_log_set": (None, (ggml_log_callback, _p)),
    "llama_time_us": (c_int64, ()),
    # defaults
    "llama_model_default_params": (llama_model_params, ()),
    "llama_context_default_params": (llama_context_params, ()),
    "llama_sampler_chain_default_params": (llama_sampler_chain_params, ()),
    "llama_model_quantize_default_params": (llama_model_quantize_params, ()),
    # model
    "llama_model_load_from_file": (_p, (c_char_p, llama_model_params)),
    "llama_model_free": (None, (_p,)),
    "llama_model_get_vocab": (_p, (_p,)),
    "llama_model_n_ctx_train": (c_int32, (_p,)),
    "llama_model_n_embd": (c_int32, (_p,)),
    "llama_model_n_embd_out": (c_int32, (_p,)),
    "llama_model_n_layer": (c_int32, (_p,)),
    "llama_model_n_head": (c_int32, (_p,)),
    "llama_model_n_head_kv": (c_int32, (_p,)),
    "llama_model_meta_val_str": (c_int32, (_p, c_char_p, c_char_p, c_size_t)),
    "llama_model_meta_count": (c_int32, (_p,)),
    "llama_model_meta_key_by_index": (c_int32, (_p, c_int32, c_char_p, c_size_t)),
    "llama_model_meta_val_str_by_index": (c_int32, (_p, c_int32, c_char_p, c_size_t)),
    "llama_model_desc": (c_int32, (_p, c_char_p, c_size_t)),
    "llama_model_size": (c_uint64, (_p,)),
    "llama_model_n_params": (c_uint64, (_p,)),
    "llama_model_chat_template": (c_char_p, (_p, c_char_p)),
    "llama_model_has_encoder": (c_bool, (_p,)),
    "llama_model_has_decoder": (c_bool, (_p,)),
    "llama_model_quantize": (c_uint32, (c_char_p, c_char_p, POINTER(llama_model_quantize_params))),
    # vocab
    "llama_vocab_n_tokens": (c_int32, (_p,)),
    "llama_vocab_type": (c_enum, (_p,)),
    "llama_vocab_bos": (llama_token, (_p,)),
    "llama_vocab_eos": (llama_token, (_p,)),
    "llama_vocab_eot": (llama_token, (_p,)),
    "llama_vocab_sep": (llama_token, (_p,)),
    "llama_vocab_nl": (llama_token, (_p,)),
    "llama_vocab_pad": (llama_token, (_p,)),
    "llama_vocab_is_eog": (c_bool, (_p, llama_token)),
    "llama_vocab_is_control": (c_bool, (_p, llama_token)),
    "llama_vocab_get_add_bos": (c_bool, (_p,)),
    "llama_vocab_get_add_eos": (c_bool, (_p,)),
    "llama_vocab_get_add_sep": (c_bool, (_p,)),
    "llama_vocab_get_text": (c_char_p, (_p, llama_token)),
    "llama_tokenize": (c_int32, (_p, c_char_p, c_int32, _tok_p, c_int32, c_bool, c_bool)),
    "llama_token_to_piece": (c_int32, (_p, llama_token, c_char_p, c_int32, c_int32, c_bool)),
    "llama_detokenize": (c_int32, (_p, _tok_p, c_int32, c_char_p, c_int32, c_bool, c_bool)),
    "llama_chat_apply_template": (
        c_int32, (c_char_p, POINTER(llama_chat_message), c_size_t, c_bool, c_char_p, c_int32)),
    "llama_chat_builtin_templates": (c_int32, (POINTER(c_char_p), c_size_t)),
    # context
    "llama_init_from_model": (_p, (_p, llama_context_params)),
    "llama_free": (None, (_p,)),
    "llama_n_ctx": (c_uint32, (_p,)),
    "llama_n_batch": (c_uint32, (_p,)),
    "llama_n_ubatch": (c_uint32, (_p,)),
    "llama_n_seq_max": (c_uint32, (_p,)),
    "llama_pooling_type": (c_enum, (_p,)),
    "llama_get_memory": (_p, (_p,)),
    "llama_memory_clear": (None, (_p, c_bool)),
    "llama_memory_seq_rm": (c_bool, (_p, llama_seq_id, llama_pos, llama_pos)),
    "llama_memory_seq_cp": (None, (_p, llama_seq_id, llama_seq_id, llama_pos, llama_pos)),
    "llama_memory_seq_add": (None, (_p, llama_seq_id, llama_pos, llama_pos, llama_pos)),
    "llama_memory_seq_pos_max": (llama_pos, (_p, llama_seq_id)),
    "llama_memory_can_shift": (c_bool, (_p,)),
    "llama_set_n_threads": (None, (_p, c_int32, c_int32)),
    "llama_n_threads": (c_int32, (_p,)),
    "llama_set_embeddings": (None, (_p, c_bool)),
    "llama_set_abort_callback": (None, (_p, ggml_abort_callback, _p)),
    "llama_synchronize": (None, (_p,)),
    "llama_batch_init": (llama_batch, (c_int32, c_int32, c_int32)),
    "llama_batch_free": (None, (llama_batch,)),
    "llama_decode": (c_int32, (_p, llama_batch)),
    "llama_encode": (c_int32, (_p, llama_batch)),
    "llama_get_logits": (c_void_p, (_p,)),
    "llama_get_logits_ith": (c_void_p, (_p, c_int32)),
    "llama_get_embeddings": (POINTER(c_float), (_p,)),
    "llama_get_embeddings_ith": (POINTER(c_float), (_p, c_int32)),
    "llama_get_embeddings_seq": (POINTER(c_float), (_p, llama_seq_id)),
    "llama_perf_context": (llama_perf_context_data, (_p,)),
    # saved state of one sequence (its KV cache); like every call here they run without the GIL
    "llama_state_seq_get_size": (c_size_t, (_p, llama_seq_id)),
    "llama_state_seq_get_data": (c_size_t, (_p, _p, c_size_t, llama_seq_id)),
    "llama_state_seq_set_data": (c_size_t, (_p, _p, c_size_t, llama_seq_id)),
    # LoRA adapters: loaded per model, applied per context (a set of adapters with their scales)
    "llama_adapter_lora_init": (_p, (_p, c_char_p)),
    "llama_adapter_lora_free": (None, (_p,)),
    "llama_adapter_meta_val_str": (c_int32, (_p, c_char_p, c_char_p, c_size_t)),
    "llama_set_adapters_lora": (c_int32, (_p, _p, c_size_t, POINTER(c_float))),
    # backend (device) sampling: a sampler chain attached to a sequence runs inside the decode graph
    "llama_set_sampler": (c_bool, (_p, llama_seq_id, _p)),
    "llama_get_sampled_token_ith": (llama_token, (_p, c_int32)),
    "llama_get_sampled_probs_ith": (POINTER(c_float), (_p, c_int32)),
    "llama_get_sampled_probs_count_ith": (c_uint32, (_p, c_int32)),
    "llama_get_sampled_logits_ith": (POINTER(c_float), (_p, c_int32)),
    "llama_get_sampled_logits_count_ith": (c_uint32, (_p, c_int32)),
    "llama_get_sampled_candidates_ith": (POINTER(llama_token), (_p, c_int32)),
    "llama_get_sampled_candidates_count_ith": (c_uint32, (_p, c_int32)),
    "llama_perf_context_reset": (None, (_p,)),
    # samplers
    "llama_sampler_chain_init": (_p, (llama_sampler_chain_params,)),
    "llama_sampler_chain_add": (None, (_p, _p)),
    "llama_sampler_chain_n": (c_int32, (_p,)),
    "llama_sampler_chain_get": (_p, (_p, c_int32)),
    "llama_sampler_init_greedy": (_p, ()),
    "llama_sampler_init_dist": (_p, (c_uint32,)),
    "llama_sampler_init_top_k": (_p, (c_int32,)),
    "llama_sampler_init_top_p": (_p, (c_float, c_size_t)),
    "llama_sampler_init_min_p": (_p, (c_float, c_size_t)),
    "llama_sampler_init_typical": (_p, (c_float, c_size_t)),
    "llama_sampler_init_top_n_sigma": (_p, (c_float,)),
    "llama_sampler_init_temp": (_p, (c_float,)),
    "llama_sampler_init_penalties": (_p, (c_int32, c_int32, c_float, c_float, c_float)),
    "llama_sampler_init_logit_bias": (_p, (c_int32, c_int32, POINTER(llama_logit_bias))),
    "llama_sampler_sample": (llama_token, (_p, _p, c_int32)),
    "llama_sampler_accept": (None, (_p, llama_token)),
    "llama_sampler_apply": (None, (_p, POINTER(llama_token_data_array))),
    "llama_sampler_init_grammar": (_p, (_p, c_char_p, c_char_p)),
    "llama_sampler_reset": (None, (_p,)),
    "llama_sampler_free": (None, (_p,)),
    "llama_sampler_get_seed": (c_uint32, (_p,)),
    "llama_sampler_name": (c_char_p, (_p,)),
}

# ggml (libggml / libggml-base): backend registry, used for device listing and
# for loading the backends of a build made with GGML_BACKEND_DL.
_GGML_FUNCTIONS: Final[dict[str, tuple[Any, tuple[Any, ...]]]] = {
    "ggml_backend_load_all_from_path": (None, (c_char_p,)),
    "ggml_backend_load": (_p, (c_char_p,)),
    "ggml_backend_reg_count": (c_size_t, ()),
    "ggml_backend_reg_get": (_p, (c_size_t,)),
    "ggml_backend_reg_name": (c_char_p, (_p,)),
    "ggml_backend_dev_count": (c_size_t, ()),
    "ggml_backend_dev_get": (_p, (c_size_t,)),
    "ggml_backend_dev_name": (c_char_p, (_p,)),
    "ggml_backend_dev_description": (c_char_p, (_p,)),
    "ggml_backend_dev_type": (c_enum, (_p,)),
    "ggml_backend_dev_by_name": (_p, (c_char_p,)),
    "ggml_backend_dev_memory": (None, (_p, POINTER(c_size_t), POINTER(c_size_t))),
    "ggml_backend_dev_backend_reg": (_p, (_p,)),
    "ggml_backend_reg_dev_count": (c_size_t, (_p,)),
    "ggml_backend_reg_dev_get": (_p, (_p, c_size_t)),
    "ggml_backend_register": (None, (_p,)),
}

# ggml-rpc (libggml-rpc, from ggml-rpc.h): remote devices and the RPC server.
# Optional: a library built with --no-rpc has none of these.
_RPC_FUNCTIONS: Final[dict[str, tuple[Any, tuple[Any, ...]]]] = {
    "ggml_backend_rpc_add_server": (_p, (c_char_p,)),
    "ggml_backend_rpc_start_server": (None, (c_char_p, c_char_p, c_size_t, c_size_t, POINTER(c_void_p))),
}


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
HELD_GIL: Final = ("llama_get_logits", "llama_get_logits_ith", "llama_sampler_accept", "llama_sampler_apply")


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

    def __getattr__(self, name: str) -> Any:  # for mypy: functions are set dynamically
        raise AttributeError(f"libllama function {name} is not declared in mullama._lib")


def declared_functions() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Every llama_* function the binding declares (used by the tests)."""
    return dict(_FUNCTIONS)


def declared_ggml_functions() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Every ggml_backend_* function the binding declares, from ggml-backend.h (used by the tests)."""
    return dict(_GGML_FUNCTIONS)


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

