"""Models over llama.cpp's RPC backend, against real `python -m mullama rpc-server` processes on loopback.

Every reference is computed here, from a local load in the same run.  Each
test is bounded (faulthandler ends a hung run with a traceback), and every
server is stopped: by the fixtures, and by the kernel (PR_SET_PDEATHSIG)
should this process die first.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import mullama
from mullama import Context, EmbeddingGenerator, Model, SamplerParams, rpc
from mullama.worker import ModelWorker

from .conftest import ROOT

TEST_TIMEOUT = 240  # seconds per test, hangs included
PROMPT = "The capital of France is"
N_TOKENS = 24


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Server:
    """One `python -m mullama rpc-server` on a free loopback port."""

    def __init__(self, *extra: str, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mullama", "rpc-server", "--host", host, "--port", str(self.port),
             "--threads", "1", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent,
            env={**os.environ, "PYTHONPATH": str(ROOT)})

    def wait_ready(self, timeout: float = 60) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rpc-server exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"rpc-server on port {self.port} did not start within {timeout} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[list[str]]:
    started = [Server(), Server()]
    try:
        yield [s.wait_ready().endpoint for s in started]
    finally:
        for s in started:
            s.kill()


@pytest.fixture
def lone_server() -> Iterator[Server]:
    s = Server()
    try:
        yield s.wait_ready()
    finally:
        s.kill()


def greedy(model: Model, n: int = N_TOKENS) -> tuple[list[int], str]:
    """The token ids in the cache after a greedy generation (all but the last), and the text (all)."""
    ctx = Context(model, n_ctx=256, n_threads=1)
    try:
        text = ctx.generate(PROMPT, max_tokens=n, params=SamplerParams.greedy(), ignore_eos=True)
        assert text
        return ctx.tokens, text
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def local_tokens(smollm_path: Path) -> tuple[list[int], str]:
    m = Model.load(smollm_path)
    try:
        return greedy(m)
    finally:
        m.close()


# --- placement across two servers ------------------------------------------------


def test_split_across_two_servers_generates_what_a_local_model_does(
        smollm_path: Path, servers: list[str], local_tokens: tuple[list[int], str]) -> None:
    with Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=servers) as m:
        assert m.rpc_servers == tuple(servers)
        assert greedy(m) == local_tokens


def test_devices_lists_the_registered_servers_with_their_memory(smollm_path: Path, servers: list[str]) -> None:
    Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=servers).close()
    remote = [d for d in mullama.devices() if d["endpoint"] is not None]
    assert sorted(d["endpoint"] for d in remote) == sorted(servers)
    for d in remote:
        assert d["name"].startswith("RPC") and d["type"] == "gpu" and d["description"] == d["endpoint"]
        assert isinstance(d["memory_total"], int) and d["memory_total"] > 0
        assert 0 < d["memory_free"] <= d["memory_total"]
    assert not mullama.supports_gpu_offload()  # remote devices are not a local GPU


def test_tensor_split_and_split_modes_place_the_model_and_keep_the_output(
        smollm_path: Path, servers: list[str], local_tokens: tuple[list[int], str]) -> None:
    with Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=servers, tensor_split=[3, 1]) as m:
        assert greedy(m) == local_tokens
    with Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=servers, split_mode="none", main_gpu=1) as m:
        assert greedy(m) == local_tokens


def test_a_local_load_after_servers_are_registered_stays_local(
        smollm_path: Path, servers: list[str], local_tokens: tuple[list[int], str]) -> None:
    rpc.register(servers)
    with pytest.warns(RuntimeWarning, match="no GPU offload"):
        m = Model.load(smollm_path, n_gpu_layers=-1)  # no rpc_servers: nothing goes to them
    with m:
        assert m.rpc_servers == ()
        assert greedy(m) == local_tokens


def test_embeddings_over_rpc_match_local_ones(minilm_path: Path, servers: list[str]) -> None:
    texts = ["A cat sits on the mat.", "Distributed inference over two hosts.", "ok"]
    with Model.load(minilm_path) as local_model, EmbeddingGenerator(local_model) as g:
        expected = g.embed_matrix(texts)
    with Model.load(minilm_path, n_gpu_layers=-1, rpc_servers=servers) as m, EmbeddingGenerator(m) as g:
        got = g.embed_matrix(texts)
    assert got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) < 1e-4


@pytest.mark.parametrize("kwargs,error,match", [
    ({"split_mode": "diagonal"}, ValueError, "split_mode must be one of"),
    ({"split_mode": 1}, TypeError, "split_mode must be a str"),
    ({"main_gpu": -1}, ValueError, "main_gpu must be >= 0"),
    ({"main_gpu": 2}, ValueError, r"main_gpu=2 is out of range.*2 device"),
    ({"tensor_split": [1, 1, 1]}, ValueError, r"tensor_split has 3 entries.*2 device\(s\): RPC"),
    ({"tensor_split": [-1, 1]}, ValueError, r"tensor_split\[0\] must be >= 0"),
    ({"tensor_split": [0, 0]}, ValueError, "at least one positive"),
    ({"tensor_split": "1,1"}, TypeError, "tensor_split must be a list"),
    ({"tensor_split": [1, float("nan")]}, ValueError, r"tensor_split\[1\] must be finite"),
])
def test_placement_arguments_are_validated(smollm_path: Path, servers: list[str], kwargs: dict[str, object],
                                           error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=servers, **kwargs)  # type: ignore[arg-type]


# --- endpoints that are wrong, unreachable, busy or gone ------------------------------


@pytest.mark.parametrize("bad,error,match", [
    ("", ValueError, "is not of the form 'host:port'"),
    ("host", ValueError, "'host' is not of the form"),
    ("host:notaport", ValueError, "port 'notaport' is not a number"),
    (":50052", ValueError, "':50052' is not of the form"),
    ("host:0", ValueError, "port 0 is outside 1..65535"),
    ("host:65536", ValueError, "port 65536 is outside"),
    ("host:-1", ValueError, "port '-1' is not a number"),
    ("[::1]:50052", ValueError, "IPv6"),
    (50052, TypeError, "must be a str 'host:port', not int"),
    (None, TypeError, "not NoneType"),
    (b"127.0.0.1:50052", TypeError, "not bytes"),
])
def test_malformed_endpoints_are_refused_naming_the_value(smollm_path: Path, bad: object, error: type[Exception],
                                                         match: str) -> None:
    with pytest.raises(error, match=match):
        Model.load(smollm_path, rpc_servers=[bad])  # type: ignore[list-item]


@pytest.mark.parametrize("bad,error,match", [
    ("127.0.0.1:50052", TypeError, "must be a list"),
    ([], ValueError, "rpc_servers is empty"),
    (["127.0.0.1:1", "127.0.0.1:1"], ValueError, "listed twice"),
])
def test_malformed_server_lists_are_refused(smollm_path: Path, bad: object, error: type[Exception],
                                            match: str) -> None:
    with pytest.raises(error, match=match):
        Model.load(smollm_path, rpc_servers=bad)  # type: ignore[arg-type]


def test_a_port_without_a_server_is_a_refused_connection(smollm_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    with pytest.raises(mullama.RPCError, match=f"RPC server {endpoint} refused the connection"):
        Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=[endpoint])


def test_an_unreachable_host_fails_within_the_timeout(smollm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "DEFAULT_TIMEOUT", 1.0)
    # TEST-NET-1 (RFC 5737): never routed; the connection times out, or a firewall refuses it
    with pytest.raises(mullama.RPCError, match=r"RPC server 192\.0\.2\.1:50052 (is unreachable|refused)"):
        Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=["192.0.2.1:50052"])


def _listener(behaviour: str) -> tuple[socket.socket, str]:
    """A TCP server that is not an RPC server: it says nothing, or closes at once, or answers nonsense."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def run() -> None:
        held = []
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            if behaviour == "close":
                conn.close()
            elif behaviour == "nonsense":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                conn.close()
            else:
                held.append(conn)
    threading.Thread(target=run, daemon=True).start()
    return srv, f"127.0.0.1:{srv.getsockname()[1]}"


@pytest.mark.parametrize("behaviour,match", [
    ("silent", "accepted the connection but did not answer within 1 s"),
    ("close", "did not answer as a llama.cpp RPC server"),
    ("nonsense", "did not answer as a llama.cpp RPC server"),
])
def test_something_else_on_the_port_is_an_error_not_a_hang(smollm_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          behaviour: str, match: str) -> None:
    monkeypatch.setattr(rpc, "DEFAULT_TIMEOUT", 1.0)
    srv, endpoint = _listener(behaviour)
    try:
        with pytest.raises(mullama.RPCError, match=match) as e:
            Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=[endpoint])
        assert endpoint in str(e.value)
    finally:
        srv.close()


def test_a_server_busy_with_another_client_is_an_error_not_a_hang(
        smollm_path: Path, lone_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "DEFAULT_TIMEOUT", 1.0)
    rpc.handshake(lone_server.endpoint)  # it answers when free
    other = socket.create_connection(("127.0.0.1", lone_server.port))  # another client holds it
    try:
        other.sendall(bytes([14]) + (24).to_bytes(8, "little") + bytes(24))
        with pytest.raises(mullama.RPCError, match=f"{lone_server.endpoint} accepted .* another client"):
            Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=[lone_server.endpoint])
    finally:
        other.close()


def test_a_server_killed_between_requests_is_an_error_naming_it(smollm_path: Path, lone_server: Server) -> None:
    m = Model.load(smollm_path, n_gpu_layers=-1, rpc_servers=[lone_server.endpoint])
    ctx = Context(m, n_ctx=256, n_threads=1)
    assert ctx.generate(PROMPT, max_tokens=4, params=SamplerParams.greedy())
    lone_server.kill()
    with pytest.raises(mullama.RPCError, match=f"RPC server {lone_server.endpoint} closed the connection"):
        ctx.generate(PROMPT, max_tokens=4, params=SamplerParams.greedy())
    with pytest.raises(mullama.RPCError, match="load the model again"):
        Context(m, n_ctx=256)
    gone = [d for d in mullama.devices() if d["endpoint"] == lone_server.endpoint]
    assert gone and gone[0]["memory_total"] is None
    # Freeing them would make ggml write to the dead server and abort; they are left allocated instead.
    ctx.close()
    m.close()


# --- containing an abort: generation in a worker process -----------------------------------


def test_a_worker_gives_the_same_output_and_reports_a_server_lost_mid_generation(
        smollm_path: Path, lone_server: Server, local_tokens: tuple[list[int], str]) -> None:
    expected = local_tokens[1]
    with ModelWorker(smollm_path, n_gpu_layers=-1, rpc_servers=[lone_server.endpoint], n_ctx=256, n_threads=1,
                     timeout=120) as w:
        assert w.generate(PROMPT, N_TOKENS, SamplerParams.greedy(), ignore_eos=True) == expected
        stream = w.generate_stream(PROMPT, 2000, SamplerParams.greedy(), ignore_eos=True)
        assert next(stream)
        lone_server.kill()
        with pytest.raises(mullama.RPCError, match=r"worker died \(signal SIGABRT\) during generation") as e:
            for _ in stream:
                pass
        assert lone_server.endpoint in str(e.value)
        assert not w.alive
        with pytest.raises(RuntimeError, match="closed"):
            w.generate(PROMPT, 1)


def test_a_worker_reports_load_errors_as_they_were_raised(smollm_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    with pytest.raises(mullama.RPCError, match="refused the connection"):
        ModelWorker(smollm_path, n_gpu_layers=-1, rpc_servers=[endpoint], timeout=120)
    with pytest.raises(TypeError, match="unexpected arguments: n_gpu"):
        ModelWorker(smollm_path, n_gpu=1)


# --- the rpc-server command ---------------------------------------------------------------


def _server_output(*args: str, wait: float = 60) -> tuple[int | None, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mullama", "rpc-server", "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_rpc_server_warns_when_it_listens_beyond_loopback() -> None:
    _, err = _server_output("--host", "0.0.0.0", "--threads", "1")
    assert "WARNING: listening on 0.0.0.0, not on loopback" in err and "no authentication" in err
    _, quiet = _server_output("--threads", "1")
    assert "WARNING" not in quiet


@pytest.mark.parametrize("args,match", [
    (["--host", "::1"], "is not an IPv4 address"),
    (["--device", "NOPE0"], "unknown device 'NOPE0'; this host has: CPU"),
    (["--threads", "-2"], "n_threads must be an int >= 0"),
])
def test_rpc_server_refuses_bad_arguments(args: list[str], match: str) -> None:
    code, err = _server_output(*args)
    assert code == 1 and match in err, err


def test_rpc_server_says_when_the_port_is_taken(lone_server: Server) -> None:
    r = subprocess.run([sys.executable, "-m", "mullama", "rpc-server", "--port", str(lone_server.port)],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{lone_server.port}" in r.stderr
