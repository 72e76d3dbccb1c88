"""Structured output: GBNF grammars that constrain sampling, built by hand or from a JSON Schema.

    from mullama.grammar import Grammar
    g = Grammar.from_json_schema({"type": "object", "properties": {"name": {"type": "string"}}})
    text = ctx.generate(prompt, max_tokens=200, grammar=g)   # valid JSON, or GrammarIncompleteError

A ``Grammar`` is only text, checked by llama.cpp's own parser when it is made
(a malformed grammar raises ValueError saying where); every generation that
uses it gets a fresh native grammar state (:class:`GrammarState`).
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

from .. import _backend, _lib, _validate
from ..sampling import GrammarState
from .json_schema import any_json_gbnf, json_schema_to_gbnf


class GrammarIncompleteError(RuntimeError):
    """Generation stopped (``max_tokens`` or the context's end) before the grammar's text was complete.

    ``text`` holds what was generated, which does not match the grammar.
    """

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text


_stderr_lock = threading.Lock()


def _native_check(text: bytes, root: bytes) -> str | None:
    """Parse with llama.cpp's parser; returns its complaint, or None when the grammar is good.

    The parser reports syntax errors with fprintf(stderr): the descriptor is
    pointed at a temporary file for the call, so nothing reaches the
    terminal and the message becomes the exception's.
    """
    L = _backend.lib()
    with _stderr_lock, tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            _lib.take_errors()
            ptr = L.llama_sampler_init_grammar(None, text, root)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        logged = _lib.take_errors()
        sink.seek(0)
        printed = sink.read().decode("utf-8", "replace")
    if ptr:
        L.llama_sampler_free(ptr)
        return None
    return _describe(printed, logged, text)


def _describe(printed: str, logged: str, text: bytes) -> str:
    src = text.decode("utf-8", "replace")
    marker = "error parsing grammar: "
    if marker in printed:
        what = printed.split(marker, 1)[1]
        tail = "\n\n" + src + "\n"
        if what.endswith(tail):
            what = what[: -len(tail)]
        # "expecting X at <the rest of the grammar>": turn the rest into a line and column
        start = 0
        while True:
            i = what.find(" at ", start)
            if i < 0:
                break
            rest = what[i + 4:]
            if src.endswith(rest):
                offset = len(src) - len(rest)
                line = src.count("\n", 0, offset) + 1
                col = offset - (src.rfind("\n", 0, offset) + 1) + 1
                snippet = rest.split("\n", 1)[0][:40]
                return f"{what[:i]} at line {line}, column {col} (near {snippet!r})"
            start = i + 1
        return what.strip()
    logged = logged.replace("failed to parse grammar", "").strip("; ")
    return logged or printed.strip() or "llama.cpp could not parse it"


class Grammar:
    """A GBNF grammar (llama.cpp's grammar format), checked when it is created.

    ``Grammar(gbnf_text, root="root")``; ``Grammar.from_json_schema(schema)``
    for JSON valid under a JSON Schema; ``Grammar.json()`` for any JSON object
    or array.  Pass it as ``grammar=`` to generation.
    """

    __slots__ = ("_text", "_root", "_encoded")

    def __init__(self, gbnf: str, root: str = "root") -> None:
        gbnf = _validate.string("gbnf", gbnf)
        root = _validate.string("root", root)
        if not gbnf.strip():
            raise ValueError("the grammar is empty")
        if not root:
            raise ValueError("root must name a rule")
        for name, value in (("gbnf", gbnf), ("root", root)):
            if "\x00" in value:
                raise ValueError(f"{name} contains a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{name} contains a lone surrogate") from None
        encoded = (gbnf.encode("utf-8"), root.encode("utf-8"))
        problem = _native_check(*encoded)
        if problem is not None:
            raise ValueError(f"invalid grammar: {problem}")
        self._text, self._root, self._encoded = gbnf, root, encoded

    @classmethod
    def from_json_schema(cls, schema: dict[str, Any] | bool) -> Grammar:
        """JSON text valid under ``schema`` (see :mod:`mullama.grammar.json_schema` for what is supported)."""
        return cls(json_schema_to_gbnf(schema))

    @classmethod
    def json(cls) -> Grammar:
        """Any one JSON value."""
        return cls(any_json_gbnf())

    @property
    def text(self) -> str:
        return self._text

    @property
    def root(self) -> str:
        return self._root

    def state(self, model: Any) -> GrammarState:
        """A fresh native grammar state for one generation with ``model``'s vocabulary."""
        return GrammarState(model, *self._encoded)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grammar):
            return NotImplemented
        return self._encoded == other._encoded

    def __hash__(self) -> int:
        return hash(self._encoded)

    def __repr__(self) -> str:
        lines = self._text.count("\n") + (not self._text.endswith("\n"))
        return f"Grammar(root={self._root!r}, {lines} rules)"


def check_grammar(grammar: object) -> Grammar | None:
    if grammar is None or isinstance(grammar, Grammar):
        return grammar
    raise TypeError(f"grammar must be a mullama.grammar.Grammar or None, not {type(grammar).__name__}")


__all__ = ["Grammar", "GrammarIncompleteError", "GrammarState", "json_schema_to_gbnf", "check_grammar"]
