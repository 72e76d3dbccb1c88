"""OpenAI's structured output on the server: ``response_format`` and ``tools`` / ``tool_choice``.

Both become a :class:`~mullama.grammar.Grammar` for the request.  A tool call
is generated as ``{"name": ..., "arguments": {...}}`` whose arguments follow
that tool's parameter schema, and is returned as OpenAI's ``tool_calls``.
The model's chat template receives the tools (``tools=`` as transformers
passes them); a template that ignores them gets a system message that lists
them, so that the model knows what it may call.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from typing import Any, Callable

from ..grammar import Grammar
from ..grammar.json_schema import json_schema_to_gbnf, tool_call_gbnf
from .protocol import ApiError

_CACHE_SIZE = 64


class _GrammarCache:
    """Grammars by their JSON description: converting and checking a schema is done once per schema."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Grammar] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, make: Callable[[], Grammar]) -> Grammar:
        with self._lock:
            g = self._items.get(key)
            if g is not None:
                self._items.move_to_end(key)
                return g
        g = make()
        with self._lock:
            self._items[key] = g
            while len(self._items) > _CACHE_SIZE:
                self._items.popitem(last=False)
        return g


_cache = _GrammarCache()


def _schema_grammar(schema: Any, param: str) -> Grammar:
    try:
        key = json.dumps(schema, sort_keys=True)
        return _cache.get("schema:" + key, lambda: Grammar(json_schema_to_gbnf(schema)))
    except (ValueError, TypeError) as e:
        raise ApiError(400, f"'{param}': {e}", param=param, code="invalid_schema") from None


def response_format(body: dict[str, Any]) -> Grammar | None:
    """The grammar asked for by ``response_format`` (None for plain text)."""
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise ApiError(400, "'response_format' must be an object with a 'type'", param="response_format")
    kind = rf["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return _schema_grammar({"type": "object"}, "response_format")
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict):
            raise ApiError(400, "'response_format.json_schema' must be an object with a 'schema'",
                           param="response_format.json_schema")
        schema = spec.get("schema", {})
        if not isinstance(schema, (dict, bool)):
            raise ApiError(400, "'response_format.json_schema.schema' must be a JSON Schema object",
                           param="response_format.json_schema.schema")
        return _schema_grammar(schema, "response_format.json_schema.schema")
    raise ApiError(400, f"'response_format.type' must be \"text\", \"json_object\" or \"json_schema\", not {kind!r}",
                   param="response_format.type")


class Tools:
    """The tools a chat request offers, and which the model must, may or must not call."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.tools: list[dict[str, Any]] = []  # OpenAI's tool objects, as given (for the template)
        self.schemas: list[tuple[str, Any]] = []
        self.choice = "none"
        raw = body.get("tools")
        if raw is None:
            if body.get("tool_choice") not in (None, "none"):
                raise ApiError(400, "'tool_choice' needs 'tools'", param="tool_choice")
            return
        if not isinstance(raw, list) or not raw:
            raise ApiError(400, "'tools' must be a non-empty array of tools", param="tools")
        for i, tool in enumerate(raw):
            where = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
                raise ApiError(400, f"'{where}' must be {{\"type\": \"function\", \"function\": {{...}}}}", param=where)
            fn = tool["function"]
            name = fn.get("name")
            if not isinstance(name, str) or not name:
                raise ApiError(400, f"'{where}.function.name' must be a non-empty string", param=f"{where}.function.name")
            if any(n == name for n, _ in self.schemas):
                raise ApiError(400, f"'{where}.function.name': {name!r} is given twice", param=f"{where}.function.name")
            params = fn.get("parameters", {"type": "object", "properties": {}})
            if not isinstance(params, (dict, bool)):
                raise ApiError(400, f"'{where}.function.parameters' must be a JSON Schema object",
                               param=f"{where}.function.parameters")
            self.tools.append(tool)
            self.schemas.append((name, params))
        choice = body.get("tool_choice")
        if choice is None:  # null is the default, as OpenAI and its clients treat it
            choice = "auto"
        if choice in ("none", "auto", "required"):
            self.choice = choice
        elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
            name = choice["function"].get("name")
            chosen = [(n, s) for n, s in self.schemas if n == name]
            if not chosen:
                raise ApiError(400, f"'tool_choice.function.name': no tool is named {name!r}",
                               param="tool_choice.function.name")
            self.schemas, self.choice = chosen, "required"
        else:
            raise ApiError(400, "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                           "{\"type\": \"function\", \"function\": {\"name\": ...}}", param="tool_choice")

    @property
    def active(self) -> bool:
        return self.choice != "none"

    def grammar(self) -> Grammar:
        key = json.dumps([self.choice, self.schemas], sort_keys=True)
        try:
            return _cache.get("tools:" + key, lambda: Grammar(tool_call_gbnf(self.schemas, self.choice == "auto")))
        except (ValueError, TypeError) as e:
            raise ApiError(400, f"'tools': {e}", param="tools", code="invalid_schema") from None

    def instructions(self) -> str:
        """A system message for templates that do not render ``tools`` themselves."""
        lines = ["You can call these tools:"]
        for tool in self.tools:
            fn = tool["function"]
            if any(fn["name"] == n for n, _ in self.schemas):
                lines.append(json.dumps({"name": fn["name"], "description": fn.get("description", ""),
                                         "parameters": fn.get("parameters", {})}, ensure_ascii=False))
        how = ('To call a tool, answer with only a JSON object: {"name": <tool name>, "arguments": '
               '<the arguments as a JSON object>}.')
        if self.choice == "auto":
            how += " Otherwise, answer in plain text."
        return "\n".join(lines + [how])

    def parse(self, text: str) -> dict[str, Any] | None:
        """The tool call in generated ``text`` (OpenAI's ``tool_calls`` entry), or None for plain text."""
        stripped = text.strip()
        if not stripped.startswith("{"):
            return None
        call = json.loads(stripped)  # the grammar made it valid JSON of this shape
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}


def template_uses_tools(source: str | None) -> bool:
    return source is not None and "tools" in source
