"""OpenAI's Responses API (``POST /v1/responses``) over the chat-completion machinery.

A Responses request is translated into the chat-completion request it means
(``instructions`` as the system message, ``input`` items as messages, flat
function tools as chat tools, ``text.format`` as ``response_format``,
``max_output_tokens`` as ``max_tokens``), so that templates, grammars and
tool calls work as they do for ``/v1/chat/completions``.  The answer becomes
a ``response`` object whose ``output`` holds a ``message`` item (its text as
one ``output_text`` part) or a ``function_call`` item; streamed, the events
are those OpenAI sends (``response.created`` … ``response.completed``, each
with its ``sequence_number``).  Nothing is stored: ``previous_response_id``
and ``store: true`` conversations are refused with a 400 that says so.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..grammar import GrammarIncompleteError
from .protocol import ApiError, now


def _new(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _text_of(content: Any, where: str) -> str:
    """A message's content: a string, or parts of type input_text / output_text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") \
                    or not isinstance(part.get("text"), str):
                raise ApiError(400, f"'{where}.content[{i}]' must be a text part ({{\"type\": \"input_text\", "
                               f"\"text\": ...}}); images, audio and files are not supported",
                               param=f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"'{where}.content' must be a string or an array of text parts", param=f"{where}.content",
                   code="invalid_type")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ApiError(400, "'instructions' must be a string", param="instructions", code="invalid_type")
        msgs.append({"role": "system", "content": instructions})
    inp = body.get("input")
    if inp is None:
        raise ApiError(400, "'input' is required", param="input", code="missing_required_parameter")
    if isinstance(inp, str):
        return msgs + [{"role": "user", "content": inp}]
    if not isinstance(inp, list) or not inp:
        raise ApiError(400, "'input' must be a string or a non-empty array of input items", param="input",
                       code="invalid_type")
    for i, item in enumerate(inp):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"'{where}' must be an object", param=where, code="invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ApiError(400, f"'{where}.role' must be \"user\", \"assistant\", \"system\" or \"developer\"",
                               param=f"{where}.role")
            msgs.append({"role": "system" if role == "developer" else role,
                         "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            name, args, call_id = item.get("name"), item.get("arguments"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(args, str) or not isinstance(call_id, str):
                raise ApiError(400, f"'{where}': a function_call item needs string 'name', 'arguments' and 'call_id'",
                               param=where)
            msgs.append({"role": "assistant", "content": "", "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                raise ApiError(400, f"'{where}': a function_call_output item needs string 'call_id' and 'output'",
                               param=where)
            msgs.append({"role": "tool", "tool_call_id": call_id, "content": output})
        else:
            raise ApiError(400, f"'{where}.type' {kind!r} is not supported here (message, function_call and "
                           f"function_call_output are)", param=f"{where}.type")
    return msgs


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The /v1/chat/completions request that a Responses request means."""
    if body.get("previous_response_id") is not None:
        raise ApiError(400, "'previous_response_id': this server stores no responses; send the whole conversation "
                       "in 'input'", param="previous_response_id")
    if body.get("background"):
        raise ApiError(400, "'background' responses are not supported", param="background")
    chat: dict[str, Any] = {"messages": _messages(body)}
    for name in ("temperature", "top_p", "stream", "seed", "top_k", "min_p", "repeat_penalty", "stop", "model",
                 "lora"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ApiError(400, "'tools' must be an array", param="tools", code="invalid_type")
        converted = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise ApiError(400, f"'tools[{i}]': only function tools are supported", param=f"tools[{i}]")
            fn = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
            converted.append({"type": "function", "function": fn})
        chat["tools"] = converted or None
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    if choice is not None:
        chat["tool_choice"] = choice
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is not None:
        if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
            raise ApiError(400, "'text.format' must be an object with a 'type'", param="text.format")
        if fmt["type"] == "json_schema":
            chat["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.get("name", "response"), "schema": fmt.get("schema", {}), "strict": fmt.get("strict")}}
        else:
            chat["response_format"] = {"type": fmt["type"]}
    return chat


class Answer:
    """The response object, built as the answer arrives."""

    def __init__(self, body: dict[str, Any], model_id: str) -> None:
        self.id = _new("resp")
        self.created = now()
        self.model_id = model_id
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        self.echo = {
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "parallel_tool_calls": False, "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0), "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [], "text": {"format": fmt or {"type": "text"}},
            "metadata": body.get("metadata") or {}, "store": False, "previous_response_id": None,
            "reasoning": None, "truncation": "disabled",
        }
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.status = "in_progress"
        self.incomplete: dict[str, str] | None = None

    def finish(self, finish_reason: str | None, prompt_tokens: int, cached: int, completion_tokens: int) -> None:
        self.status = "incomplete" if finish_reason == "length" else "completed"
        self.incomplete = {"reason": "max_output_tokens"} if finish_reason == "length" else None
        self.usage = {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
                      "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": prompt_tokens + completion_tokens}

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "object": "response", "created_at": self.created, "status": self.status,
                "error": None, "incomplete_details": self.incomplete, "model": self.model_id,
                "output": self.output, "usage": self.usage, **self.echo}


def message_item(text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": _new("msg"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def call_item(call: dict[str, Any]) -> dict[str, Any]:
    """A chat tool_calls entry as a Responses function_call item."""
    return {"type": "function_call", "id": _new("fc"), "call_id": call["id"], "name": call["function"]["name"],
            "arguments": call["function"]["arguments"], "status": "completed"}


class Events:
    """Server-sent events in the Responses format, numbered in order."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.n = 0

    def event(self, kind: str, **fields: Any) -> str:
        obj = {"type": kind, "sequence_number": self.n, **fields}
        self.n += 1
        return f"event: {kind}\ndata: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def start(self) -> list[str]:
        return [self.event("response.created", response=self.answer.body()),
                self.event("response.in_progress", response=self.answer.body())]

    def open_message(self, index: int, item: dict[str, Any]) -> list[str]:
        opened = {**item, "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [self.event("response.output_item.added", output_index=index, item=opened),
                self.event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                           part=part)]

    def delta(self, index: int, item: dict[str, Any], text: str) -> str:
        return self.event("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                          delta=text, logprobs=[])

    def close_message(self, index: int, item: dict[str, Any]) -> list[str]:
        part = item["content"][0]
        return [self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                           text=part["text"], logprobs=[]),
                self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                           part=part),
                self.event("response.output_item.done", output_index=index, item=item)]

    def function_call(self, index: int, item: dict[str, Any]) -> list[str]:
        return [self.event("response.output_item.added", output_index=index,
                           item={**item, "arguments": "", "status": "in_progress"}),
                self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                           delta=item["arguments"]),
                self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                           name=item["name"], arguments=item["arguments"]),
                self.event("response.output_item.done", output_index=index, item=item)]

    def end(self) -> str:
        kind = "response.incomplete" if self.answer.status == "incomplete" else "response.completed"
        return self.event(kind, response=self.answer.body())


async def stream_text(events: Events, pieces: AsyncIterator[list[str]]) -> AsyncIterator[str]:
    """A plain-text answer as it arrives: one message item, its deltas, then its end."""
    item = message_item("", "in_progress")
    for e in events.open_message(0, item):
        yield e
    text: list[str] = []
    try:
        async for batch in pieces:
            chunk = "".join(batch)
            text.append(chunk)
            yield events.delta(0, item, chunk)
    except GrammarIncompleteError:
        pass  # max_output_tokens ran out before the format's text was complete: the response is incomplete
    item = {**item, "status": "completed", "content": [{**item["content"][0], "text": "".join(text)}]}
    events.answer.output.append(item)
    for e in events.close_message(0, item):
        yield e
