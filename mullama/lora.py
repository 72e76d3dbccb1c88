"""LoRA adapters: fine-tunes applied over a shared base model.

An adapter is loaded once per model (:meth:`Model.load_lora`) and may be
used by any number of contexts, each with its own set of adapters and
scales.  llama.cpp applies a context's set to every sequence it decodes,
so the batched engine decodes requests with different sets in separate
steps.  A context refers to the adapters it applies: an adapter closed
while a context still uses it is freed once no context does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _backend, _gguf, _lib
from ._handle import NativeHandle

if TYPE_CHECKING:
    from .model import Model

# A context's adapters: (adapter, scale) pairs, in a canonical order, without zero scales.
LoraSet = tuple[tuple["LoraAdapter", float], ...]


class LoraAdapter(NativeHandle):
    """A LoRA adapter (a GGUF file made by llama.cpp's ``convert_lora_to_gguf.py``) for one model."""

    def __init__(self, model: Model, path: str | os.PathLike[str]) -> None:
        fspath = _gguf.check_file(path, "LoRA adapter")
        p = Path(fspath)
        L = _backend.lib()
        _lib.take_errors()
        ptr = L.llama_adapter_lora_init(model.ptr(), fspath.encode("utf-8"))
        if not ptr:
            why = _lib.take_errors() or "llama.cpp refused it"
            raise RuntimeError(f"Failed to load LoRA adapter {fspath} for this model: {why}")
        self._model = model
        self._path = p
        self._attach(ptr, model._free_guard(L.llama_adapter_lora_free), parent=model)
        self._alpha = self._meta_float("adapter.lora.alpha")

    def _meta_float(self, key: str) -> float | None:
        import ctypes
        buf = ctypes.create_string_buffer(64)
        n = _backend.lib().llama_adapter_meta_val_str(self.ptr(), key.encode(), buf, len(buf))
        if n < 0:
            return None
        try:
            return float(buf.value.decode())
        except ValueError:
            return None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def model(self) -> Model:
        return self._model

    @property
    def alpha(self) -> float | None:
        """The adapter's ``lora_alpha`` (llama.cpp scales its product by alpha / rank), if it says."""
        return self._alpha

    def __repr__(self) -> str:
        return f"LoraAdapter({self._path.name!r}{', closed' if self.closed else ''})"


def check_loras(model: Model, loras: object) -> LoraSet:
    """``loras`` as ``{adapter: scale}`` (None or empty: none), checked, in a canonical order."""
    if loras is None:
        return ()
    if not isinstance(loras, Mapping):
        raise TypeError(f"loras must be a dict of LoraAdapter to scale, not {type(loras).__name__}")
    out: list[tuple[LoraAdapter, float]] = []
    for adapter, scale in loras.items():
        if not isinstance(adapter, LoraAdapter):
            raise TypeError(f"loras' keys must be LoraAdapter objects (from Model.load_lora), "
                            f"not {type(adapter).__name__}")
        if adapter.closed:
            raise RuntimeError(f"{adapter!r} is closed")
        if adapter._model is not model:
            raise ValueError(f"{adapter!r} was loaded for another model")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"the scale of {adapter!r} must be a number, not {type(scale).__name__}")
        if not math.isfinite(scale):
            raise ValueError(f"the scale of {adapter!r} must be finite, got {scale}")
        if scale != 0:  # llama.cpp leaves adapters at scale 0 out; so does the key
            out.append((adapter, float(scale)))
    out.sort(key=lambda e: e[0].ptr())
    return tuple(out)


def apply(ctx: int, loras: LoraSet) -> None:
    """Make ``loras`` the context's adapters (from its next decode on)."""
    import ctypes
    L = _backend.lib()
    n = len(loras)
    ptrs = (ctypes.c_void_p * max(n, 1))(*[a.ptr() for a, _ in loras])
    scales = (ctypes.c_float * max(n, 1))(*[s for _, s in loras])
    rc = L.llama_set_adapters_lora(ctx, ptrs if n else None, n, scales if n else None)
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not apply the LoRA adapters: {_lib.take_errors() or rc}")


def describe(loras: LoraSet) -> dict[Any, float]:
    return {a: s for a, s in loras}


__all__ = ["LoraAdapter"]
