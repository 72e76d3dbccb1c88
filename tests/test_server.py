"""``mullama serve`` through real HTTP on loopback, with the official ``openai`` client.

Expectations are computed in the same run by the library itself (a lone
Context, the EmbeddingGenerator), never recorded.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from mullama import Context, EmbeddingGenerator, Model, SamplerParams  # noqa: E402
from mullama.server import ServeOptions, build  # noqa: E402

KEY = "test-key-123"
GREEDY = SamplerParams.greedy()


class Server:
    """uvicorn in a thread on 127.0.0.1 and a free port; always stopped by the fixture."""

    def __init__(self, opts: ServeOptions) -> None:
        self.app, self.engine = build(opts)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def client(self, key: str = KEY) -> Any:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0, timeout=300)

    def raw(self, method: str, path: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request
        req = urllib.request.Request(self.base + path, data=body, method=method)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.engine.close()


@pytest.fixture(scope="module")
def server(smollm_path: Path, minilm_path: Path) -> Iterator[Server]:
    s = Server(ServeOptions(model=smollm_path, parallel=4, n_ctx=1024, embedding_model=minilm_path, api_key=KEY,
                            model_id="smollm2"))
    try:
        yield s
    finally:
        s.stop()


def _alone(model: Model, prompt: str, n: int) -> str:
    return Context(model, n_ctx=1024).generate(prompt, max_tokens=n, params=GREEDY)


CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"}]


def test_models_health_and_metrics(server: Server) -> None:
    ids = [m.id for m in server.client().models.list().data]
    assert ids == ["smollm2", "all-MiniLM-L6-v2-f16"]
    status, body = server.raw("GET", "/health", key=None)
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = server.raw("GET", "/metrics")
    text = body.decode()
    assert status == 200 and "mullama_slots 4" in text and "# TYPE mullama_requests_total counter" in text


def test_greedy_chat_equals_the_library(server: Server, model: Model) -> None:
    r = server.client().chat.completions.create(model="smollm2", messages=CHAT, temperature=0, max_tokens=24)
    expected = _alone(model, model.apply_chat_template(CHAT), 24)
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(model.tokenize(model.apply_chat_template(CHAT), special=True))
    assert r.usage.completion_tokens <= 24 and r.choices[0].finish_reason in ("stop", "length")
    stream = server.client().chat.completions.create(model="smollm2", messages=CHAT, temperature=0, max_tokens=24,
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason


def test_completions_plain_streamed_and_stopped(server: Server, model: Model) -> None:
    c = server.client()
    expected = _alone(model, "Once upon a time", 30)
    r = c.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=30, temperature=0)
    assert r.choices[0].text == expected and r.usage.prompt_tokens == len(model.tokenize("Once upon a time"))
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="smollm2", prompt="Once upon a time", max_tokens=30, temperature=0, stream=True))
    assert streamed == expected
    word = next(w for w in expected.split()[3:] if len(w) >= 4)
    cut = c.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=30, temperature=0, stop=[word])
    assert cut.choices[0].text == expected[:expected.index(word)] and cut.choices[0].finish_reason == "stop"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 30


def test_seeded_sampling_is_reproducible(server: Server) -> None:
    c = server.client()
    args: dict[str, Any] = {"model": "smollm2", "prompt": "My favourite animal is", "max_tokens": 20,
                            "temperature": 1.0,  # and llama.cpp's extensions:
                            "extra_body": {"top_k": 50, "min_p": 0.0, "repeat_penalty": 1.1}}
    a = c.completions.create(seed=42, **args).choices[0].text
    assert c.completions.create(seed=42, **args).choices[0].text == a
    assert len({c.completions.create(seed=s, **args).choices[0].text for s in (0, 1, 2, 3)}) >= 2


def test_embeddings_equal_the_library(server: Server, minilm_path: Path) -> None:
    texts = ["The cat sat on the mat.", "Quantum computers use qubits."]
    r = server.client().embeddings.create(model="all-MiniLM-L6-v2-f16", input=texts)
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    want = EmbeddingGenerator(Model.load(minilm_path)).embed_matrix(texts)
    assert got.shape == want.shape == (2, 384)
    assert np.einsum("ij,ij->i", got, want).min() > 0.99999
    status, body = server.raw("POST", "/v1/embeddings", json.dumps({"input": "hello", "encoding_format": "float"}).encode())
    assert status == 200 and len(json.loads(body)["data"][0]["embedding"]) == 384


def test_api_key_is_enforced(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    for key in (None, "wrong"):
        status, body = server.raw("GET", "/v1/models", key=key)
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert server.raw("GET", "/health", key=None)[0] == 200


BAD: list[tuple[str, str, bytes, int, str]] = [
    ("malformed JSON", "/v1/chat/completions", b'{"messages": [', 400, "invalid_json"),
    ("not an object", "/v1/completions", b"[1, 2]", 400, "JSON object"),
    ("missing messages", "/v1/chat/completions", b'{"model": "x"}', 400, "messages"),
    ("missing prompt", "/v1/completions", b'{"model": "x"}', 400, "prompt"),
    ("messages not a list", "/v1/chat/completions", b'{"messages": "hi"}', 400, "messages"),
    ("message without role", "/v1/chat/completions", b'{"messages": [{"content": "hi"}]}', 400, "role"),
    ("content of wrong type", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}', 400,
     "content"),
    ("image part", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', 400, "--mmproj"),
    ("temperature of wrong type", "/v1/completions", b'{"prompt": "x", "temperature": "hot"}', 400, "temperature"),
    ("temperature out of range", "/v1/completions", b'{"prompt": "x", "temperature": 2.5}', 400, "temperature"),
    ("top_p zero", "/v1/completions", b'{"prompt": "x", "top_p": 0}', 400, "top_p"),
    ("negative max_tokens", "/v1/completions", b'{"prompt": "x", "max_tokens": -1}', 400, "max_tokens"),
    ("fractional max_tokens", "/v1/completions", b'{"prompt": "x", "max_tokens": 1.5}', 400, "max_tokens"),
    ("boolean top_k", "/v1/completions", b'{"prompt": "x", "top_k": true}', 400, "top_k"),
    ("stop of wrong type", "/v1/completions", b'{"prompt": "x", "stop": 3}', 400, "stop"),
    ("empty stop", "/v1/completions", b'{"prompt": "x", "stop": [""]}', 400, "stop"),
    ("n above 16", "/v1/completions", b'{"prompt": "x", "n": 17}', 400, "'n'"),
    ("n zero", "/v1/completions", b'{"prompt": "x", "n": 0}', 400, "'n'"),
    ("top_logprobs without logprobs", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}', 400, "top_logprobs"),
    ("top_logprobs above 20", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}', 400, "top_logprobs"),
    ("logprobs of wrong type", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "x"}], "logprobs": 3}', 400, "logprobs"),
    ("completion logprobs above 20", "/v1/completions", b'{"prompt": "x", "logprobs": 21}', 400, "logprobs"),
    ("negative completion logprobs", "/v1/completions", b'{"prompt": "x", "logprobs": -1}', 400, "logprobs"),
    ("empty prompt", "/v1/completions", b'{"prompt": ""}', 400, "empty"),
    ("token id outside the vocabulary", "/v1/completions", b'{"prompt": [1, 99999999]}', 400, "vocabulary"),
    ("prompt longer than the context", "/v1/completions",
     json.dumps({"prompt": "word " * 1500}).encode(), 400, "context_length_exceeded"),
    ("embedding input of wrong type", "/v1/embeddings", b'{"input": 42}', 400, "input"),
    ("empty embedding input", "/v1/embeddings", b'{"input": [""]}', 400, "input"),
    ("unknown route", "/v1/nothing", b"{}", 404, "not_found"),
]


@pytest.mark.parametrize("name,path,body,status,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(server: Server, name: str, path: str, body: bytes, status: int,
                                        needle: str) -> None:
    got, raw = server.raw("POST", path, body)
    err = json.loads(raw)["error"]
    assert got == status, (got, err)
    assert needle in json.dumps(err), err
    assert set(err) == {"message", "type", "param", "code"}


def test_the_server_keeps_serving_after_bad_requests(server: Server) -> None:
    for _, path, body, _, _ in BAD:
        server.raw("POST", path, body)
    r = server.client().completions.create(model="smollm2", prompt="Hello", max_tokens=3, temperature=0)
    assert r.choices[0].text


def _metric(server: Server, name: str) -> float:
    text = server.raw("GET", "/metrics")[1].decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_client_that_disconnects_mid_stream_frees_its_sequence(server: Server) -> None:
    cancelled_before = _metric(server, 'mullama_requests_finished_total{reason="cancelled"}')
    body = json.dumps({"prompt": "Tell me a very long story.", "max_tokens": 900, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while received.count(b"data: ") < 5:
        received += sock.recv(4096)
    sock.close()  # gone after five chunks of 900
    deadline = time.monotonic() + 120
    while _metric(server, 'mullama_requests_finished_total{reason="cancelled"}') <= cancelled_before:
        assert time.monotonic() < deadline, "the sequence was never freed"
        time.sleep(0.05)
    assert server.engine.busy_slots == 0
    assert _metric(server, "mullama_completion_tokens_total") < 10_000


def test_32_concurrent_streaming_clients(server: Server, model: Model) -> None:
    prompts = [f"Write one sentence about the number {i}." for i in range(32)]
    expected = {p: _alone(model, p, 16) for p in prompts}

    def one(p: str) -> tuple[str, str | None]:
        chunks = list(server.client().completions.create(model="smollm2", prompt=p, max_tokens=16, temperature=0,
                                                         stream=True))
        return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(32) as pool:
        results = dict(zip(prompts, pool.map(one, prompts)))
    assert all(reason in ("stop", "length") for _, reason in results.values())
    assert {p: text for p, (text, _) in results.items()} == expected
    assert server.engine.busy_slots == 0 and server.engine.queue_depth == 0


def test_the_spec_fastapi_example_still_works(smollm_path: Path, minilm_path: Path) -> None:
    """The Python spec's FastAPI server (a Context per request), unchanged, over real HTTP."""
    pytest.importorskip("fastapi")
    from .spec_examples import example, with_models
    ns: dict[str, Any] = {}
    exec(compile(with_models(example("FastAPI Server with Streaming SSE"), smollm_path, minilm_path), "spec", "exec"),
         ns)
    config = uvicorn.Config(ns["app"], host="127.0.0.1", port=0, log_level="error", lifespan="off")
    srv = uvicorn.Server(config)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    try:
        while not srv.started:
            time.sleep(0.01)
        port = srv.servers[0].sockets[0].getsockname()[1]
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", method="POST",
                                     data=json.dumps({"prompt": "Hello", "max_tokens": 8}).encode(),
                                     headers={"Content-Type": "application/json"})
        out = json.loads(urllib.request.urlopen(req, timeout=120).read())
        assert out["text"] and out["tokens_generated"] > 0
        req = urllib.request.Request(f"http://127.0.0.1:{port}/generate/stream", method="POST",
                                     data=json.dumps({"prompt": "Hello", "max_tokens": 8}).encode(),
                                     headers={"Content-Type": "application/json"})
        lines = urllib.request.urlopen(req, timeout=120).read().decode().split("\n\n")
        assert lines[-2] == "data: [DONE]" and lines[0].startswith("data: {")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/embed", method="POST",
                                     data=json.dumps({"texts": ["a", "b"]}).encode(),
                                     headers={"Content-Type": "application/json"})
        assert len(json.loads(urllib.request.urlopen(req, timeout=120).read())["embeddings"]) == 2
    finally:
        srv.should_exit = True
        t.join(60)


def test_sigterm_lets_the_streams_under_way_finish(smollm_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from .conftest import ROOT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mullama", "serve", str(smollm_path), "--port", str(port),
                             "--parallel", "2", "--n-ctx", "512"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        body = json.dumps({"prompt": "Tell me a story.", "max_tokens": 60, "temperature": 0, "ignore_eos": True,
                           "stream": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        events: list[bytes] = []
        with urllib.request.urlopen(req, timeout=120) as r:
            for line in r:
                if line.startswith(b"data: "):
                    events.append(line.strip())
                    if len(events) == 2:
                        proc.send_signal(signal.SIGTERM)  # mid-stream
        assert events[-1] == b"data: [DONE]"
        last = json.loads(events[-2][len(b"data: "):])
        assert last["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
