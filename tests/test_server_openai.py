"""OpenAI compatibility as clients use it: routes without /v1, tool_choice null, fingerprint and cached
tokens, embeddings of token ids and their errors, CORS for browser pages."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mullama import EmbeddingGenerator, Model
from mullama.server import ServeOptions

from .test_server import KEY, Server

openai = pytest.importorskip("openai")

ORIGIN = "http://app.example:3000"


@pytest.fixture(scope="module")
def server(smollm_path: Path, minilm_path: Path) -> Iterator[Server]:
    s = Server(ServeOptions(model=smollm_path, parallel=2, n_ctx=1024, embedding_model=minilm_path, api_key=KEY,
                            model_id="smollm2", cors_origins=(ORIGIN,)))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def minilm(minilm_path: Path) -> Iterator[EmbeddingGenerator]:
    gen = EmbeddingGenerator(Model.load(minilm_path))
    yield gen
    gen.close()


def request(server: Server, method: str, path: str, body: object = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(server.base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def test_a_base_url_without_v1_works(server: Server) -> None:
    client = openai.OpenAI(base_url=server.base, api_key=KEY, max_retries=0, timeout=300)
    with_v1 = server.client().completions.create(model="smollm2", prompt="The sky is", max_tokens=6, temperature=0)
    without = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=6, temperature=0)
    assert without.choices[0].text == with_v1.choices[0].text
    assert [m.id for m in client.models.list().data] == ["smollm2", "all-MiniLM-L6-v2-f16"]


def test_tool_choice_null_is_the_default(server: Server) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": tools, "max_tokens": 40,
            "temperature": 0}
    status, _, auto = request(server, "POST", "/v1/chat/completions", {**body, "tool_choice": "auto"}, AUTH)
    assert status == 200, auto
    status, _, null = request(server, "POST", "/v1/chat/completions", {**body, "tool_choice": None}, AUTH)
    assert status == 200, null
    assert json.loads(null)["choices"][0]["message"] == json.loads(auto)["choices"][0]["message"]


def test_fingerprint_and_cached_tokens(server: Server) -> None:
    client = server.client()
    msgs = [{"role": "system", "content": "You answer in one word, about the planet Neptune only."},
            {"role": "user", "content": "What colour is it?"}]
    first = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=4, temperature=0)
    assert first.system_fingerprint and first.system_fingerprint.startswith("fp_")
    assert first.usage.prompt_tokens_details.cached_tokens < 8  # at most the template's opening was cached
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And its largest moon?"}]
    second = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=4, temperature=0)
    assert second.system_fingerprint == first.system_fingerprint
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens - 2 <= cached < second.usage.prompt_tokens  # the first turn came from the cache
    chunks = list(client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=4, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert {c.system_fingerprint for c in chunks} == {first.system_fingerprint}
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0


def test_embeddings_of_token_ids(server: Server, minilm: EmbeddingGenerator) -> None:
    texts = ["The cat sat on the mat.", "Quantum computers use qubits."]
    ids = [minilm._model.tokenize(t, add_bos=True) for t in texts]
    want = minilm.embed_matrix(texts)  # the same ids, tokenized by the library
    client = server.client()
    one = client.embeddings.create(model="all-MiniLM-L6-v2-f16", input=ids[0])
    assert len(one.data) == 1 and float(np.dot(one.data[0].embedding, want[0])) > 0.99999
    both = client.embeddings.create(model="all-MiniLM-L6-v2-f16", input=ids)
    got = np.array([d.embedding for d in both.data], dtype=np.float32)
    assert np.einsum("ij,ij->i", got, want).min() > 0.99999
    assert both.usage.prompt_tokens == sum(map(len, ids))


def test_embedding_errors_speak_http(server: Server, minilm: EmbeddingGenerator) -> None:
    def post(body: dict[str, object]) -> tuple[int, dict[str, object]]:
        status, _, raw = request(server, "POST", "/v1/embeddings", body, AUTH)
        return status, json.loads(raw)["error"] if status != 200 else json.loads(raw)
    status, err = post({"input": "hello", "dimensions": 128})
    assert status == 400 and err["param"] == "dimensions" and "384" in str(err["message"])
    status, ok = post({"input": "hello", "dimensions": 384})
    assert status == 200 and len(ok["data"][0]["embedding"]) == 384  # type: ignore[index]
    # LangChain's OpenAIEmbeddings defaults send tiktoken ids: the error says what to change
    status, err = post({"input": [[9906, 1917, 100257]]})
    assert status == 400 and "check_embedding_ctx_length=False" in str(err["message"])
    status, err = post({"input": "word " * 2000})
    assert status == 400 and err["code"] == "context_length_exceeded"
    assert f"at most {minilm.max_tokens} tokens" in str(err["message"]) and "truncate" not in str(err["message"])
    status, err = post({"input": [[1, 2], "text"]})
    assert status == 400 and err["param"] == "input"


def test_cors_for_an_allowed_origin_only(server: Server) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = request(server, "OPTIONS", "/v1/chat/completions", headers=preflight)  # no API key
    assert status == 204
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"]
    status, headers, _ = request(server, "OPTIONS", "/v1/chat/completions",
                                 headers={**preflight, "Origin": "http://elsewhere.example"})
    assert status == 403 and "access-control-allow-origin" not in headers
    status, headers, _ = request(server, "GET", "/v1/models", headers={**AUTH, "Origin": ORIGIN})
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    status, headers, _ = request(server, "GET", "/v1/models", headers={**AUTH, "Origin": "http://elsewhere.example"})
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, _ = request(server, "GET", "/v1/models", headers={"Origin": ORIGIN})  # CORS is no way around auth
    assert status == 401 and headers["access-control-allow-origin"] == ORIGIN


def test_n_choices_share_the_prompt(server: Server) -> None:
    client = server.client()
    prompt = "Write a short poem about the sea, in four lines, with a rhyme at the end of each line:"
    one = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0.9, seed=5)
    n3 = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0.9, seed=5, n=3)
    assert [c.index for c in n3.choices] == [0, 1, 2]
    assert n3.choices[0].text == one.choices[0].text  # choice 0 draws from the seed itself
    again = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0.9, seed=5, n=3)
    assert [c.text for c in again.choices] == [c.text for c in n3.choices]  # each choice is reproducible
    assert len({c.text for c in n3.choices}) > 1  # and they differ from each other
    assert n3.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert n3.usage.completion_tokens == 3 * 12
    streamed: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    for chunk in client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0.9, seed=5,
                                           n=3, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert streamed == {c.index: c.text for c in n3.choices}
    assert finishes == {0: "length", 1: "length", 2: "length"}
    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi!"}],
                                          max_tokens=8, temperature=0, n=2)
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].message.content == chat.choices[1].message.content  # greedy: the same answer twice


def _lone_chat(model: Model, messages: list[dict[str, str]], n: int) -> str:
    from mullama import Context, SamplerParams
    with Context(model, n_ctx=1024) as ctx:
        return ctx.generate(model.apply_chat_template(messages), max_tokens=n, params=SamplerParams.greedy())


def test_responses_api_text_and_stream(server: Server, model: Model) -> None:
    client = server.client()
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]
    expected = _lone_chat(model, msgs, 40)
    r = client.responses.create(model="smollm2", instructions="You are terse.", input="Name a fruit.",
                                max_output_tokens=40, temperature=0)
    assert r.output_text == expected
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens < 40
    assert r.status == "completed"  # ended by the model, within max_output_tokens
    cut = client.responses.create(model="smollm2", input="Count from one to fifty.", max_output_tokens=5,
                                  temperature=0)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    # the same conversation as input items
    r2 = client.responses.create(model="smollm2", input=[
        {"role": "developer", "content": "You are terse."},
        {"role": "user", "content": [{"type": "input_text", "text": "Name a fruit."}]}],
        max_output_tokens=40, temperature=0)
    assert r2.output_text == expected
    deltas: list[str] = []
    with client.responses.stream(model="smollm2", instructions="You are terse.", input="Name a fruit.",
                                 max_output_tokens=40, temperature=0) as stream:
        kinds = []
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == expected == final.output_text
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")


def test_responses_api_tools_and_structured_output(server: Server) -> None:
    client = server.client()
    tools = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    r = client.responses.create(model="smollm2", input="What is the weather in Paris?", tools=tools,
                                tool_choice="required", max_output_tokens=60, temperature=0)
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    # the call's result goes back as input items
    r2 = client.responses.create(model="smollm2", tools=tools, max_output_tokens=20, temperature=0, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}], tool_choice="none")
    assert r2.output[0].type == "message" and r2.output_text
    with client.responses.stream(model="smollm2", input="What is the weather in Paris?", tools=tools,
                                 tool_choice="required", max_output_tokens=60, temperature=0) as stream:
        final = stream.get_final_response()
    assert final.output[0].type == "function_call" and final.output[0].arguments == call.arguments
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    s = client.responses.create(model="smollm2", input="Invent a person.", max_output_tokens=60, temperature=0,
                                text={"format": {"type": "json_schema", "name": "person", "schema": schema,
                                                 "strict": True}})
    person = json.loads(s.output_text)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    status, _, raw = request(server, "POST", "/v1/responses", {"input": "hi", "previous_response_id": "resp_1"}, AUTH)
    assert status == 400 and json.loads(raw)["error"]["param"] == "previous_response_id"
