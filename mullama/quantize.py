"""Quantize a GGUF model with llama.cpp's quantizer (``llama_model_quantize``)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Union

from . import _backend, _gguf, _lib, _validate

PathLike = Union[str, "os.PathLike[str]"]

# llama_ftype values of the pinned llama.h, by the names llama.cpp's tools use
FTYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11,
    "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18,
    "iq4_nl": 25, "iq4_xs": 30, "bf16": 32,
}


def quantize(src: PathLike, dst: PathLike, ftype: str = "q8_0", *, threads: int = 0,
             allow_requantize: bool = False) -> Path:
    """Write a copy of the GGUF model ``src`` with its weights in ``ftype`` to ``dst``.

    ``ftype`` is one of :data:`FTYPES` (e.g. ``"q4_k_m"``, ``"q8_0"``, ``"bf16"``).
    Raises RuntimeError when llama.cpp refuses or fails.
    """
    for name, value in (("src", src), ("dst", dst)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a str or os.PathLike, not {type(value).__name__}")
    _validate.string("ftype", ftype)
    if ftype.lower() not in FTYPES:
        raise ValueError(f"unknown ftype {ftype!r}; one of {', '.join(FTYPES)}")
    threads = _validate.integer("threads", threads, 0, 4096)
    source, target = Path(os.fspath(src)), Path(os.fspath(dst))
    if not source.is_file():
        raise RuntimeError(f"Failed to quantize: No such file: {source}")
    try:
        _gguf.read_header(source)
    except _gguf.GGUFError as e:
        raise RuntimeError(f"Failed to quantize: {source} is not a valid GGUF file: {e}") from None
    L = _backend.lib()
    params = L.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype.lower()]
    params.nthread = threads
    params.allow_requantize = _validate.boolean("allow_requantize", allow_requantize)
    _lib.take_errors()
    rc = L.llama_model_quantize(os.fsencode(source), os.fsencode(target), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"Failed to quantize {source} to {ftype}: {_lib.take_errors() or f'status {rc}'}")
    return target
