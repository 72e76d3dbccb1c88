"""KV-cache types and flash attention: what a Context's cache stores, and what it takes.

llama.cpp stores keys and values as f16 by default; ``type_k`` / ``type_v``
may be any of :data:`KV_TYPES` (quantized caches take a half to a quarter
of the memory, at some cost in quality: BENCHMARKS.md).  A quantized V
cache needs flash attention, which llama.cpp's own check enforces at
context creation; asked for with ``flash_attn=False`` it is refused here.
"""

from __future__ import annotations

from typing import Union

# name -> (ggml type id, elements per block, bytes per block), as ggml.h and ggml.c define them
KV_TYPES: dict[str, tuple[int, int, int]] = {
    "f32": (0, 1, 4),
    "f16": (1, 1, 2),
    "bf16": (30, 1, 2),
    "q8_0": (8, 32, 34),
    "q4_0": (2, 32, 18),
    "q4_1": (3, 32, 20),
    "q5_0": (6, 32, 22),
    "q5_1": (7, 32, 24),
    "iq4_nl": (20, 32, 18),
}
_UNQUANTIZED = ("f32", "f16", "bf16")
FLASH_ATTN = {"auto": -1, False: 0, True: 1}  # llama_flash_attn_type

FlashAttn = Union[bool, str]


def check_type(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str (one of {', '.join(KV_TYPES)}), not {type(value).__name__}")
    if value not in KV_TYPES:
        raise ValueError(f"{name}={value!r} is not a KV-cache type; use one of {', '.join(KV_TYPES)}")
    return value


def check_flash_attn(value: object) -> FlashAttn:
    if value == "auto" and isinstance(value, str):
        return "auto"
    if isinstance(value, bool):
        return value
    raise TypeError(f"flash_attn must be 'auto', True or False, not {value!r}")


def check_combination(type_v: str, flash_attn: FlashAttn) -> None:
    if type_v not in _UNQUANTIZED and flash_attn is False:
        raise ValueError(f"type_v={type_v!r} (a quantized V cache) needs flash attention: "
                         f"use flash_attn=True or 'auto', or type_v='f16'")


def row_bytes(type_name: str, n: int) -> int:
    """Bytes of one row of ``n`` elements of ``type_name``."""
    _, block, size = KV_TYPES[type_name]
    if n % block:
        raise ValueError(f"a {type_name} row needs a multiple of {block} elements, not {n}")
    return n // block * size


def cache_bytes(n_cells: int, n_layer: int, n_embd_k: int, n_embd_v: int, type_k: str, type_v: str) -> int:
    """The memory of a KV cache of ``n_cells`` cells: per layer, one K row and one V row per cell."""
    return n_cells * n_layer * (row_bytes(type_k, n_embd_k) + row_bytes(type_v, n_embd_v))
