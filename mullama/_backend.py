"""Process-wide backend state and the module-level utility functions."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from . import _lib

_init_lock = threading.Lock()
_initialized = False


def lib() -> _lib._Lib:
    """The loaded library, with the backend initialised (once per process)."""
    global _initialized
    L = _lib.load()
    if not _initialized:
        with _init_lock:
            if not _initialized:
                L.llama_backend_init()
                _initialized = True
    return L


def backend_init() -> None:
    """Initialise llama.cpp's backend; done automatically on first use, repeated calls are harmless."""
    lib()


def backend_free() -> None:
    """Release backend-wide resources.

    Safe at any time: models and contexts still alive keep working, and the
    backend is initialised again on next use.  (llama.cpp only frees global
    state that its objects do not depend on.)
    """
    global _initialized
    with _init_lock:
        if _initialized:
            _lib.load().llama_backend_free()
            _initialized = False


def supports_gpu_offload() -> bool:
    """True when this machine has a GPU that can hold model layers.

    (llama.cpp's own ``llama_supports_gpu_offload`` is true whenever the RPC
    backend is compiled in, even with no server and no GPU.  Remote devices
    are listed by :func:`devices` and used through ``rpc_servers=``.)
    """
    from . import rpc
    return bool(rpc.local_offload_devices())


def max_devices() -> int:
    """The most devices llama.cpp can split a model across."""
    return int(lib().llama_max_devices())


def version() -> str:
    """llama.cpp's version string and the commit the library was built from."""
    L = lib()
    v = (L.llama_version() or b"").decode()
    commit = L.build_info.get("llama_cpp_commit", "unknown commit")
    return f"{v} ({commit})"


def devices() -> list[dict[str, Any]]:
    """The compute devices: name, description, type, memory_free and memory_total (bytes), endpoint.

    RPC servers registered by ``Model.load(..., rpc_servers=[...])`` appear
    as ``RPC0``, ``RPC1``, ... with the server's memory and ``endpoint``
    "host:port" (None for a local device).  The memory of a server that
    cannot be reached is None.
    """
    from . import rpc
    L = lib()
    kinds = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
    out: list[dict[str, Any]] = []
    for i in range(L.ggml_backend_dev_count()):
        dev = L.ggml_backend_dev_get(i)
        endpoint = rpc.endpoint_of(dev)
        free: int | None = None
        total: int | None = None
        try:
            if endpoint is not None:
                rpc.check_server(endpoint)  # ggml would abort on a dead server
            f, t = ctypes.c_size_t(0), ctypes.c_size_t(0)
            L.ggml_backend_dev_memory(dev, ctypes.byref(f), ctypes.byref(t))
            free, total = f.value, t.value
        except rpc.RPCError:
            pass
        out.append({
            "name": (L.ggml_backend_dev_name(dev) or b"").decode(),
            "description": (L.ggml_backend_dev_description(dev) or b"").decode(),
            "type": kinds.get(L.ggml_backend_dev_type(dev), "unknown"),
            "memory_free": free,
            "memory_total": total,
            "endpoint": endpoint,
        })
    return out


def system_info() -> str:
    """llama.cpp's CPU/GPU feature line, plus the library file, build and devices."""
    L = lib()
    info = (L.llama_print_system_info() or b"").decode().strip()
    backend = L.build_info.get("backend", "unknown")
    devs = ", ".join(f"{d['name']} ({d['description']})" for d in devices())
    return (f"{info}\nlibrary: {L.path}\nllama.cpp: {version()}\nbuild: {backend}"
            f"{' portable' if L.build_info.get('portable') else ''}\ndevices: {devs}")
