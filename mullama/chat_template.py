"""Renders a model's own Jinja chat template the way Hugging Face transformers does.

transformers compiles ``tokenizer.chat_template`` in an immutable sandboxed
Jinja environment with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, a ``{% generation %}`` block, a ``tojson`` filter
that keeps non-ASCII text, and the globals ``raise_exception`` and
``strftime_now``; it renders with ``messages``, ``add_generation_prompt`` and
the special tokens.  Doing exactly the same here gives byte-identical prompts.
The sandbox keeps a hostile template from reaching Python internals.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping, Sequence, Union

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = Union[tuple[str, str], Mapping[str, Any]]


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _now() -> datetime:
    return datetime.now()


def _strftime_now(fmt: str) -> str:
    return _now().strftime(fmt)  # through _now, so that tests can fix the date


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def normalize_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """(role, content) tuples or {"role", "content"} dicts -> list of dicts, type-checked."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of (role, content) tuples, not {type(messages).__name__}")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if isinstance(m, Mapping):
            role, content = m.get("role"), m.get("content")
            extra = {k: v for k, v in m.items() if k not in ("role", "content")}
        elif isinstance(m, (tuple, list)) and len(m) == 2:
            role, content = m
            extra = {}
        else:
            raise TypeError(f"messages[{i}] must be a (role, content) tuple, not {m!r:.60}")
        if not isinstance(role, str) or not isinstance(content, str):
            raise TypeError(f"messages[{i}]: role and content must be str, got "
                            f"{type(role).__name__} and {type(content).__name__}")
        out.append({"role": role, "content": content, **extra})
    return out


def render(source: str, messages: Sequence[Message], add_generation_prompt: bool,
           special_tokens: Mapping[str, str], tools: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Render ``source`` for ``messages`` (and ``tools``, OpenAI-style); template errors become ValueError."""
    msgs = normalize_messages(messages)
    try:
        template = compile_template(source)
        return template.render(messages=msgs, tools=list(tools) if tools else None, documents=None,
                               add_generation_prompt=add_generation_prompt, **special_tokens)
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"chat template error: {e}") from None
