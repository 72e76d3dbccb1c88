"""llama.cpp's RPC backend: remote devices for a model, and this host's devices served to others.

ggml-rpc does the work; this module guards its edges.  ggml aborts the whole
process when a server cannot be reached (``GGML_ABORT("Failed to connect")``)
and waits forever for a server that accepts the connection but never answers
(it serves one client at a time).  So every endpoint is checked here first,
with a bounded timeout: a new one by the protocol's own HELLO exchange, one
already in use by a plain TCP connect.  A connection lost in the middle of a
computation still aborts the process: :mod:`mullama.rpc_worker` contains that.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import stat
import struct
import threading
from typing import Any, Iterable, Sequence

from . import _backend, _lib

# Seconds to wait for a server to accept and to answer the HELLO exchange.
DEFAULT_TIMEOUT = float(os.environ.get("MULLAMA_RPC_TIMEOUT", "5"))

# ggml-rpc.h / ggml-rpc.cpp at the pinned commit: the wire format of HELLO.
RPC_PROTO_MAJOR_VERSION = 7
_RPC_CMD_HELLO = 14
_CONN_CAPS_SIZE = 24
_HELLO_REPLY_SIZE = 4 + _CONN_CAPS_SIZE


class RPCError(RuntimeError):
    """An RPC server is unreachable, refused the connection, is busy or answered wrongly; names the endpoint."""


def parse_endpoint(value: Any) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; TypeError for a non-str, ValueError naming a malformed value."""
    if not isinstance(value, str):
        raise TypeError(f"an RPC endpoint must be a str 'host:port', not {type(value).__name__} ({value!r})")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text:
        raise ValueError(f"RPC endpoint {value!r} is not of the form 'host:port' (e.g. '192.168.1.10:50052')")
    if ":" in host or host.startswith("["):
        raise ValueError(f"RPC endpoint {value!r}: IPv6 addresses are not supported by llama.cpp's RPC client; "
                         f"use an IPv4 address or a host name")
    if host != host.strip() or any(c.isspace() for c in host):
        raise ValueError(f"RPC endpoint {value!r}: the host contains white space")
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"RPC endpoint {value!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"RPC endpoint {value!r}: port {port} is outside 1..65535")
    return host, port


def parse_endpoints(values: Any) -> list[str]:
    """A list of endpoints, each checked by :func:`parse_endpoint`; duplicates are refused."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise TypeError(f"rpc_servers must be a list of 'host:port' strings, not {type(values).__name__}")
    if not values:
        raise ValueError("rpc_servers is empty; leave it out for a local model")
    if len(values) > _MAX_SERVERS:
        raise ValueError(f"rpc_servers has {len(values)} endpoints; llama.cpp takes at most {_MAX_SERVERS}")
    out: list[str] = []
    for v in values:
        parse_endpoint(v)
        if v in out:
            raise ValueError(f"RPC endpoint {v!r} is listed twice in rpc_servers")
        out.append(v)
    return out


_MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8 and 'localhost': addresses other hosts cannot reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _connect(endpoint: str, timeout: float) -> socket.socket:
    host, port = parse_endpoint(endpoint)
    try:
        addr = socket.gethostbyname(host)  # IPv4, as ggml resolves it
    except OSError as e:
        raise RPCError(f"RPC server {endpoint}: cannot resolve host {host!r} ({e})") from None
    try:
        return socket.create_connection((addr, port), timeout=timeout)
    except socket.timeout:
        raise RPCError(f"RPC server {endpoint} is unreachable: no answer to the connection within {timeout:g} s") \
            from None
    except ConnectionRefusedError:
        raise RPCError(f"RPC server {endpoint} refused the connection: nothing listens on port {port} "
                       f"(start it with `mullama rpc-server --port {port}`)") from None
    except OSError as e:
        raise RPCError(f"RPC server {endpoint} is unreachable: {e.strerror or e}") from None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def handshake(endpoint: str, timeout: float | None = None) -> tuple[int, int, int]:
    """Check that ``endpoint`` is a llama.cpp RPC server that can serve us now; returns its protocol version.

    Done before ggml connects, which would abort the process on a refused
    connection and hang on a server busy with another client.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    with _connect(endpoint, timeout) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(struct.pack("<BQ", _RPC_CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            size = _recv_exactly(sock, 8)
            reply = _recv_exactly(sock, _HELLO_REPLY_SIZE) if len(size) == 8 else b""
        except socket.timeout:
            raise RPCError(f"RPC server {endpoint} accepted the connection but did not answer within {timeout:g} s "
                           f"(a server serves one client at a time: is another client using it?)") from None
        except OSError as e:
            raise RPCError(f"{endpoint} did not answer as a llama.cpp RPC server (protocol {RPC_PROTO_MAJOR_VERSION}.x): "
                           f"it dropped the connection ({e.strerror or e})") from None
    if len(size) < 8 or struct.unpack("<Q", size)[0] != _HELLO_REPLY_SIZE or len(reply) < _HELLO_REPLY_SIZE:
        raise RPCError(f"{endpoint} did not answer as a llama.cpp RPC server (protocol {RPC_PROTO_MAJOR_VERSION}.x)")
    major, minor, patch = reply[0], reply[1], reply[2]
    if major != RPC_PROTO_MAJOR_VERSION:
        raise RPCError(f"RPC server {endpoint} speaks protocol {major}.{minor}.{patch}, this library "
                       f"{RPC_PROTO_MAJOR_VERSION}.x: run the same mullama (or llama.cpp) version on both sides")
    return major, minor, patch


def _our_connections(endpoint: str) -> list[socket.socket]:
    """This process's open TCP connections to ``endpoint`` (ggml's, among them), as duplicates to inspect."""
    host, port = parse_endpoint(endpoint)
    try:
        peer = (socket.gethostbyname(host), port)
        fds = [int(n) for n in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd")]
    except (OSError, ValueError):
        return []
    out = []
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            if s.getpeername() == peer:
                out.append(s)
                continue
        except (OSError, TypeError, ValueError):
            pass
        s.close()
    return out


def _closed_by_peer(s: socket.socket) -> bool:
    """True when the server end of a connection is gone (EOF or reset waiting), without reading anything."""
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing to read
    except OSError:
        return True  # reset, or another error on it


def check_server(endpoint: str, timeout: float | None = None) -> None:
    """Raise RPCError unless the server at ``endpoint`` can take ggml's next request.

    A server serves one client at a time and never accepts a second
    connection while it serves us, so one in use is checked through our own
    connection to it: a server that stopped or restarted has closed it.  One
    not in use must answer a HELLO.
    """
    conns = _our_connections(endpoint)
    if not conns:
        handshake(endpoint, timeout)
        return
    try:
        if any(_closed_by_peer(s) for s in conns):
            raise RPCError(f"RPC server {endpoint} closed the connection (it stopped or restarted)")
    finally:
        for s in conns:
            s.close()


# --- registration: one ggml backend registry entry per endpoint, per process ----

_registered: dict[str, list[int]] = {}  # endpoint -> its devices (ggml_backend_dev_t)
_reg_lock = threading.Lock()


def _require_rpc(L: _lib._Lib) -> None:
    if not L.has_rpc:
        raise RuntimeError(f"the loaded library ({L.path}) was built without llama.cpp's RPC backend; "
                           f"rebuild it with `python scripts/build_lib.py --rpc`")


def register(endpoints: Iterable[str], timeout: float | None = None) -> list[int]:
    """Register the servers with ggml (once per process) and return their devices, in order.

    Afterwards :func:`mullama.devices` lists them (``RPC0``, ``RPC1``, ...).
    """
    L = _backend.lib()
    _require_rpc(L)
    devices: list[int] = []
    with _reg_lock:
        for ep in endpoints:
            if ep in _registered:
                check_server(ep, timeout)
                devices += _registered[ep]
                continue
            handshake(ep, timeout)
            reg = L.ggml_backend_rpc_add_server(ep.encode())
            if not reg:
                raise RPCError(f"RPC server {ep} reports no devices")
            L.ggml_backend_register(reg)
            devs = [L.ggml_backend_reg_dev_get(reg, i) for i in range(L.ggml_backend_reg_dev_count(reg))]
            _registered[ep] = devs
            devices += devs
    return devices


def registered() -> dict[str, list[int]]:
    """Endpoint -> devices of every server registered in this process."""
    with _reg_lock:
        return {k: list(v) for k, v in _registered.items()}


def endpoint_of(device: int) -> str | None:
    """The endpoint a device lives on, or None for a local device."""
    with _reg_lock:
        for ep, devs in _registered.items():
            if device in devs:
                return ep
    return None


def local_offload_devices() -> list[int]:
    """This host's GPUs (or integrated GPUs when there is no discrete one), as llama.cpp would pick them."""
    L = _backend.lib()
    remote = {d for devs in registered().values() for d in devs}
    gpus, igpus = [], []
    for i in range(L.ggml_backend_dev_count()):
        dev = L.ggml_backend_dev_get(i)
        if dev in remote:
            continue
        kind = L.ggml_backend_dev_type(dev)
        if kind == _lib.GGML_BACKEND_DEVICE_TYPE_GPU:
            gpus.append(dev)
        elif kind == _lib.GGML_BACKEND_DEVICE_TYPE_IGPU:
            igpus.append(dev)
    return gpus or igpus


def device_array(devices: Sequence[int]) -> Any:
    """A NULL-terminated ``ggml_backend_dev_t[]`` for ``llama_model_params.devices``."""
    return (ctypes.c_void_p * (len(devices) + 1))(*devices, None)


def guarded_free(free: Any, endpoints: Sequence[str]) -> Any:
    """``free``, unless one of ``endpoints`` is gone: then the native object is left allocated.

    Freeing an object with buffers on a dead server makes ggml send to a
    closed socket and abort the process; leaking it is the lesser harm.
    """
    if not endpoints:
        return free

    def _free(ptr: int) -> None:
        for ep in endpoints:
            try:
                check_server(ep, min(DEFAULT_TIMEOUT, 2.0))
            except RPCError as e:
                _lib.logger.warning("not freeing a model object whose RPC server is gone: %s", e)
                return
        free(ptr)
    return _free


# --- serving -------------------------------------------------------------------


def default_server_devices() -> list[int]:
    """What ``rpc-server`` serves without ``--device``: the accelerators, else the CPU (as llama.cpp's does)."""
    L = _backend.lib()
    out, cpu = [], []
    for i in range(L.ggml_backend_dev_count()):
        dev = L.ggml_backend_dev_get(i)
        kind = L.ggml_backend_dev_type(dev)
        if kind == _lib.GGML_BACKEND_DEVICE_TYPE_CPU:
            cpu.append(dev)
        elif kind != _lib.GGML_BACKEND_DEVICE_TYPE_ACCEL and endpoint_of(dev) is None:
            out.append(dev)
    return out or cpu[:1]


def server_devices(names: Sequence[str]) -> list[int]:
    """Devices by name (e.g. ``CUDA0``, ``CPU``); ValueError naming an unknown one and listing the known."""
    L = _backend.lib()
    out = []
    for name in names:
        dev = L.ggml_backend_dev_by_name(name.encode())
        if not dev:
            known = ", ".join(d["name"] for d in _backend.devices())
            raise ValueError(f"unknown device {name!r}; this host has: {known}")
        out.append(dev)
    return out


def serve(host: str = "127.0.0.1", port: int = 50052, n_threads: int = 0, devices: Sequence[str] = (),
          cache_dir: str | None = None) -> None:
    """Serve this host's devices to RPC clients until the process is stopped (never returns normally).

    ``host`` must be an IPv4 address (or 'localhost'); ``cache_dir`` lets
    clients send large tensors by hash when the server has them already.
    """
    from ._cpus import usable_cpus
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be an IPv4 address, not {host!r}")
    try:
        addr = socket.gethostbyname(host) if host == "localhost" else str(ipaddress.IPv4Address(host))
    except (ValueError, OSError):
        raise ValueError(f"host {host!r} is not an IPv4 address (llama.cpp's RPC server binds IPv4 only)") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, not {port!r}")
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 0:
        raise ValueError(f"n_threads must be an int >= 0, not {n_threads!r}")
    L = _backend.lib()
    _require_rpc(L)
    devs = server_devices(devices) if devices else default_server_devices()
    if not devs:
        raise RuntimeError("this host has no device to serve")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # ggml would only print "Failed to create server socket"; say why.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((addr, port))
        except OSError as e:
            raise RuntimeError(f"cannot listen on {addr}:{port}: {e.strerror or e}") from None
    cache = None
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        cache = os.fsencode(os.path.abspath(cache_dir))
    arr = (ctypes.c_void_p * len(devs))(*devs)
    L.ggml_backend_rpc_start_server(f"{addr}:{port}".encode(), cache, n_threads or usable_cpus(), len(devs), arr)
    raise RuntimeError(f"the RPC server on {addr}:{port} stopped (see the messages above)")
