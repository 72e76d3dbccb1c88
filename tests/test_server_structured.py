"""``response_format`` and tool calls through real HTTP with the official ``openai`` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_server import KEY, Server  # noqa: E402

from mullama.server import ServeOptions  # noqa: E402

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}


def _valid(value: Any, schema: Any) -> None:
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def server(smollm_path: Path) -> Iterator[Server]:
    s = Server(ServeOptions(model=smollm_path, parallel=4, n_ctx=1024, api_key=KEY, model_id="smollm2"))
    try:
        yield s
    finally:
        s.stop()


def test_json_schema_response_format(server: Server) -> None:
    client = server.client()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for kwargs in ({"temperature": 0}, {"seed": 1}, {"seed": 2}):
        r = client.chat.completions.create(model="smollm2", max_tokens=120, response_format=fmt,
                                           messages=[{"role": "user", "content": "Describe Ada Lovelace."}], **kwargs)
        assert r.choices[0].finish_reason == "stop"
        _valid(json.loads(r.choices[0].message.content), PERSON)
    # the text completions route takes it too, streamed as well
    stream = client.completions.create(model="smollm2", prompt="A person as JSON:", max_tokens=120, temperature=0,
                                       extra_body={"response_format": fmt}, stream=True)
    chunks = list(stream)
    _valid(json.loads("".join(c.choices[0].text for c in chunks if c.choices)), PERSON)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_object_response_format(server: Server) -> None:
    r = server.client().chat.completions.create(
        model="smollm2", max_tokens=200, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give a JSON object describing a cat."}])
    if r.choices[0].finish_reason == "length":
        with pytest.raises(ValueError):
            json.loads(r.choices[0].message.content)
    else:
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_running_out_of_tokens_is_finish_reason_length(server: Server) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    r = server.client().chat.completions.create(model="smollm2", max_tokens=4, temperature=0, response_format=fmt,
                                                messages=[{"role": "user", "content": "Describe Ada."}])
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads(r.choices[0].message.content)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_calls_follow_the_parameter_schema(server: Server, choice: Any) -> None:
    client = server.client()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    for kwargs in ({"temperature": 0}, {"seed": 3}):
        r = client.chat.completions.create(model="smollm2", max_tokens=120, messages=messages,
                                           tools=[WEATHER, ADD], tool_choice=choice, **kwargs)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None
        call = c.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        tool = {"get_weather": WEATHER, "add": ADD}[call.function.name]
        if isinstance(choice, dict):
            assert call.function.name == "get_weather"
        _valid(json.loads(call.function.arguments), tool["function"]["parameters"])
    # streamed: the call arrives as one tool_calls delta, then finish_reason "tool_calls"
    chunks = list(client.chat.completions.create(model="smollm2", max_tokens=120, messages=messages, stream=True,
                                                 tools=[WEATHER], tool_choice=choice, temperature=0))
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1
    _valid(json.loads(deltas[0].tool_calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # and the round trip: the tool's answer goes back in, the model answers in text
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]}
    follow = messages + [assistant, {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}]
    r = client.chat.completions.create(model="smollm2", max_tokens=30, temperature=0, messages=follow)
    assert r.choices[0].message.content


def test_tool_choice_auto_gives_a_call_or_text(server: Server) -> None:
    client = server.client()
    for question in ("What is the weather in Rome?", "Say hello."):
        r = client.chat.completions.create(model="smollm2", max_tokens=80, temperature=0, tools=[WEATHER, ADD],
                                           messages=[{"role": "user", "content": question}])
        c = r.choices[0]
        if c.message.tool_calls:
            assert c.finish_reason == "tool_calls"
            name = c.message.tool_calls[0].function.name
            params = {"get_weather": WEATHER, "add": ADD}[name]["function"]["parameters"]
            _valid(json.loads(c.message.tool_calls[0].function.arguments), params)
        else:
            assert c.message.content and not c.message.content.lstrip().startswith("{")


BAD = [
    ("response_format type", {"response_format": {"type": "xml"}}, "response_format.type"),
    ("response_format not an object", {"response_format": "json"}, "response_format"),
    ("json_schema missing", {"response_format": {"type": "json_schema"}}, "json_schema"),
    ("unsupported schema keyword", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "array", "uniqueItems": True}}}}, "uniqueItems"),
    ("tools not a list", {"tools": {"type": "function"}}, "tools"),
    ("tool without a name", {"tools": [{"type": "function", "function": {}}]}, "function.name"),
    ("tool of another type", {"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ("tool_choice without tools", {"tool_choice": "required"}, "tool_choice"),
    ("tool_choice naming no tool", {"tools": [WEATHER], "tool_choice": {"type": "function",
                                                                        "function": {"name": "nope"}}}, "nope"),
    ("tool_choice of wrong type", {"tools": [WEATHER], "tool_choice": 5}, "tool_choice"),
    ("tool parameters unsupported", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "patternProperties": {}}}}]}, "patternProperties"),
    ("legacy functions", {"functions": [{"name": "f"}]}, "functions"),
]


@pytest.mark.parametrize("name,extra,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_structured_requests(server: Server, name: str, extra: dict[str, Any], needle: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    status, raw = server.raw("POST", "/v1/chat/completions", json.dumps(body).encode())
    err = json.loads(raw)["error"]
    assert status == 400 and needle in json.dumps(err), err
    assert set(err) == {"message", "type", "param", "code"}
