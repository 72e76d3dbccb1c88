"""JSON Schema to GBNF: a grammar whose every sentence is JSON that validates against the schema.

The grammar may admit fewer documents than the schema (for instance, only the
declared properties of an object, in their declared order, and one spelling
of each enum value), never more.  A keyword that constrains values and is
not handled here raises ValueError naming it, rather than being ignored.

Handled: ``type`` (a name or a list, ``null`` included), ``properties``,
``required``, ``additionalProperties`` (``false``, ``true`` or a schema),
``enum``, ``const``, ``items``, ``prefixItems``, ``minItems``/``maxItems``,
``minLength``/``maxLength``, integer ``minimum``/``maximum`` and their
exclusive forms, ``pattern`` (see :mod:`mullama.grammar.regex`), ``format``
(``date``, ``time``, ``date-time``, ``uuid``), ``anyOf``, ``oneOf`` (when its
alternatives cannot overlap), ``allOf`` of object schemas, and local
``$ref`` (``#``, ``#/$defs/...``, ``#/definitions/...``, any JSON pointer into
the document).  Annotations (``title``, ``description``, ``default``,
``examples``, ``$schema``, ``$id``, ``$comment``, ``readOnly``, ``writeOnly``,
``deprecated``) are ignored, as they constrain nothing.

The text is compact JSON with optional whitespace: at most one newline and
20 spaces or tabs between tokens, so that a model cannot pad forever, and
none after the top-level value, so that generation ends where the value does.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ._rules import Rules, integer_range, literal
from .regex import any_json_char, pattern_to_gbnf

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                          "readOnly", "writeOnly", "deprecated", "$defs", "definitions", "contentMediaType",
                          "contentEncoding"})
_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
_KEYWORDS: dict[str, frozenset[str]] = {
    "null": frozenset(),
    "boolean": frozenset(),
    "integer": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
    "number": frozenset(),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems"}),
    "object": frozenset({"properties", "required", "additionalProperties"}),
}
_GENERAL = frozenset({"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"})

WS = "ws"
_PRIMITIVES = {
    WS: '| " " | "\\n" [ \\t]{0,20}',
    "null": '"null"',
    "boolean": '"true" | "false"',
    "integral": '"0" | [1-9] [0-9]{0,15}',
    "integer": '"-"? integral',
    "number": '"-"? integral ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?',
    "string": '"\\"" char* "\\""',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* ws )? "}"',
    "array": '"[" ws ( value ( ws "," ws value )* ws )? "]"',
}
_DEPENDS = {"integer": ["integral"], "number": ["integral"], "string": ["char"],
            "value": ["object", "array", "string", "number", "boolean", "null"],
            "object": [WS, "string", "value"], "array": [WS, "value"]}

_HEX = "[0-9a-fA-F]"
_FORMATS = {
    # month/day combinations that exist in every year (no 29 February), so each date is real
    "date": '[0-9]{4} "-" ( ( "0" [13578] | "1" [02] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] ) | '
            '( "0" [469] | "11" ) "-" ( "0" [1-9] | [12] [0-9] | "30" ) | '
            '"02" "-" ( "0" [1-9] | "1" [0-9] | "2" [0-8] ) )',
    "time": '( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? '
            '( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
    "uuid": f'{_HEX}{{8}} "-" {_HEX}{{4}} "-" {_HEX}{{4}} "-" {_HEX}{{4}} "-" {_HEX}{{12}}',
}


class _Converter:
    def __init__(self, root_schema: Any) -> None:
        self.root = root_schema
        self.rules = Rules()
        self.refs: dict[str, str] = {}  # "#/..." -> rule name

    # -- shared rules ---------------------------------------------------------------------

    def prim(self, name: str) -> str:
        if name not in self.rules:
            if name == "char":
                self.rules.add("char", any_json_char())
            else:
                self.rules.add(name, _PRIMITIVES[name])
            for dep in _DEPENDS.get(name, []):
                self.prim(dep)
        return name

    # -- schemas ------------------------------------------------------------------------------

    def visit(self, schema: Any, name: str, where: str) -> str:
        """An expression (usually a rule name) for values valid under ``schema``."""
        if schema is True or schema == {}:
            return self.prim("value")
        if schema is False:
            raise ValueError(f"{where}: the schema false admits no value")
        if not isinstance(schema, dict):
            raise ValueError(f"{where}: a schema must be an object or a boolean, not {type(schema).__name__}")
        if "$ref" in schema:
            others = set(schema) - {"$ref"} - _ANNOTATIONS
            if others:
                raise ValueError(f"{where}: keywords beside $ref are not supported ({', '.join(sorted(others))})")
            return self.ref(schema["$ref"], where)
        if "allOf" in schema:
            return self.visit(self.merge_all_of(schema, where), name, where)
        if "anyOf" in schema or "oneOf" in schema:
            return self.alternatives(schema, name, where)
        if "const" in schema or "enum" in schema:
            return self.literals(schema, name, where)
        types = schema.get("type")
        if types is None:
            types = self.implied_types(schema)
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise ValueError(f"{where}: type must be a type name or a list of them, not {types!r}")
        for t in types:
            if t not in _TYPES:
                raise ValueError(f"{where}: unknown type {t!r}")
        allowed = _GENERAL | _ANNOTATIONS | frozenset().union(*(_KEYWORDS[t] for t in types))
        unknown = sorted(set(schema) - allowed)
        if unknown:
            raise ValueError(f"{where}: unsupported keyword {unknown[0]!r}"
                             + (f" for type {'/'.join(types)}" if schema.get("type") is not None else ""))
        if "number" in types:
            numeric = sorted(_KEYWORDS["integer"] & set(schema))
            if numeric:
                raise ValueError(f"{where}: unsupported keyword {numeric[0]!r} for type number "
                                 f"(bounds are supported on integers)")
        alts = [self.typed(t, schema, name if len(types) == 1 else f"{name}-{t}", where) for t in dict.fromkeys(types)]
        if len(alts) == 1:
            return alts[0]
        return self.rules.add(name, " | ".join(alts))

    def implied_types(self, schema: dict[str, Any]) -> list[str]:
        found = [t for t in _TYPES if _KEYWORDS[t] & set(schema)]
        return found or list(_TYPES)

    def typed(self, t: str, schema: dict[str, Any], name: str, where: str) -> str:
        if t in ("null", "boolean"):
            return self.prim(t)
        if t == "number":
            return self.prim("number")
        if t == "integer":
            return self.integer(schema, name, where)
        if t == "string":
            return self.string(schema, name, where)
        if t == "array":
            return self.array(schema, name, where)
        return self.object(schema, name, where)

    def integer(self, schema: dict[str, Any], name: str, where: str) -> str:
        lo = hi = None
        for key, is_lo, exclusive in (("minimum", True, False), ("exclusiveMinimum", True, True),
                                      ("maximum", False, False), ("exclusiveMaximum", False, True)):
            if key not in schema:
                continue
            v = schema[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}: {key} must be a number, not {v!r}")
            if is_lo:
                b = math.floor(v) + 1 if exclusive else math.ceil(v)
                lo = b if lo is None else max(lo, b)
            else:
                b = math.ceil(v) - 1 if exclusive else math.floor(v)
                hi = b if hi is None else min(hi, b)
        if lo is None and hi is None:
            return self.prim("integer")
        return self.rules.add(name, integer_range(lo, hi))

    def string(self, schema: dict[str, Any], name: str, where: str) -> str:
        lo, hi = _count_bounds(schema, "minLength", "maxLength", where)
        pattern, fmt = schema.get("pattern"), schema.get("format")
        lengths = "minLength" in schema or "maxLength" in schema
        if sum(x is not None for x in (pattern, fmt)) + lengths > 1:
            raise ValueError(f"{where}: combining pattern, format and minLength/maxLength is not supported")
        if pattern is not None:
            body = pattern_to_gbnf(pattern, self.rules, f"{name}-pattern")
            return self.rules.add(name, f'"\\"" {body} "\\""')
        if fmt is not None:
            if fmt == "date-time":
                inner = f"{self.rules.add('date', _FORMATS['date'])} \"T\" {self.rules.add('time', _FORMATS['time'])}"
            elif fmt in _FORMATS:
                inner = self.rules.add(fmt, _FORMATS[fmt])
            else:
                raise ValueError(f"{where}: unsupported string format {fmt!r} (supported: date, time, date-time, uuid)")
            return self.rules.add(f"{fmt}-string", f'"\\"" {inner} "\\""')
        if not lengths:
            return self.prim("string")
        self.prim("char")
        count = f"{{{lo}}}" if hi == lo else f"{{{lo},}}" if hi is None else f"{{{lo},{hi}}}"
        return self.rules.add(name, f'"\\"" char{count} "\\""')

    def array(self, schema: dict[str, Any], name: str, where: str) -> str:
        lo, hi = _count_bounds(schema, "minItems", "maxItems", where)
        self.prim(WS)
        sep = 'ws "," ws'
        prefix = schema.get("prefixItems")
        if prefix is not None:
            if not isinstance(prefix, list):
                raise ValueError(f"{where}: prefixItems must be a list of schemas")
            if "items" in schema and schema["items"] is not False:
                raise ValueError(f"{where}: prefixItems with items other than false is not supported")
            if len(prefix) < lo or (hi is not None and hi < len(prefix)) or "minItems" in schema or "maxItems" in schema:
                raise ValueError(f"{where}: prefixItems with minItems/maxItems is not supported")
            parts = [self.visit(s, f"{name}-{i}", f"{where}/prefixItems/{i}") for i, s in enumerate(prefix)]
            body = f' {sep} '.join(parts)
            return self.rules.add(name, f'"[" ws {body} ws "]"' if parts else '"[" ws "]"')
        item = self.visit(schema.get("items", True), f"{name}-item", f"{where}/items")
        if hi == 0:
            return self.rules.add(name, '"[" ws "]"')
        # the first item, then the rest; counts follow min/max
        if lo == 0:
            rest = f"( {sep} {item} )*" if hi is None else f"( {sep} {item} ){{0,{hi - 1}}}"
            body = f'"[" ws ( {item} {rest} ws )? "]"'
        else:
            rest = (f"( {sep} {item} ){{{lo - 1},}}" if hi is None
                    else f"( {sep} {item} ){{{lo - 1},{hi - 1}}}")
            body = f'"[" ws {item} {rest} ws "]"'
        return self.rules.add(name, body)

    def object(self, schema: dict[str, Any], name: str, where: str) -> str:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(props, dict):
            raise ValueError(f"{where}: properties must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise ValueError(f"{where}: required must be a list of property names")
        missing = [r for r in required if r not in props]
        if missing and extra is False:
            raise ValueError(f"{where}: required property {missing[0]!r} is not allowed by additionalProperties false")
        if missing:
            raise ValueError(f"{where}: required property {missing[0]!r} has no schema in properties (not supported)")
        self.prim(WS)
        if not props:
            if extra is False:
                return self.rules.add(name, '"{" ws "}"')
            if extra is True or extra == {}:
                return self.prim("object")
            value = self.visit(extra, f"{name}-value", f"{where}/additionalProperties")
            kv = self.rules.add(f"{name}-kv", f'{self.prim("string")} ws ":" ws {value}')
            return self.rules.add(name, f'"{{" ws ( {kv} ( ws "," ws {kv} )* ws )? "}}"')
        # Only the declared properties, in their declared order: always valid,
        # whatever additionalProperties allows besides.
        kvs: list[tuple[str, bool]] = []
        for key, sub in props.items():
            value = self.visit(sub, f"{name}-{key}", f"{where}/properties/{key}")
            kv = self.rules.add(f"{name}-{key}-kv", f'{literal(json.dumps(key, ensure_ascii=False))} ws ":" ws {value}')
            kvs.append((kv, key in required))
        body = self.members(kvs, name)
        return self.rules.add(name, f'"{{" ws {body} "}}"' if body else '"{" ws "}"')

    def members(self, kvs: list[tuple[str, bool]], name: str) -> str:
        """Members in order, required ones always present, a comma between any two, ws after the last."""
        sep = 'ws "," ws'
        memo: dict[tuple[int, bool], str] = {}

        def tail(i: int, first: bool) -> str:
            # the members from i on; `first`: none written yet (so no leading comma)
            if i == len(kvs):
                return "" if first else "ws"
            key = (i, first)
            if key in memo:
                return memo[key]
            kv, req = kvs[i]
            lead = kv if first else f"{sep} {kv}"
            with_it = f"{lead} {tail(i + 1, False)}".strip()
            if req:
                expr = with_it
            else:
                without = tail(i + 1, first)
                expr = f"( {with_it} | {without} )" if without else f"( {with_it} )?"
            rule = self.rules.add(f"{name}-after-{i}{'-first' if first else ''}", expr)
            memo[key] = rule
            return rule

        return tail(0, True)

    def literals(self, schema: dict[str, Any], name: str, where: str) -> str:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: enum must be a non-empty list")
        others = set(schema) - {"const", "enum", "type"} - _ANNOTATIONS
        if others:
            raise ValueError(f"{where}: keywords beside enum/const are not supported ({', '.join(sorted(others))})")
        types = schema.get("type")
        if types is not None:
            names = [types] if isinstance(types, str) else types
            values = [v for v in values if any(_has_type(v, t) for t in names)]
            if not values:
                raise ValueError(f"{where}: no enum/const value has the type {types!r}")
        alts = [literal(json.dumps(v, ensure_ascii=False)) for v in values]
        return self.rules.add(name, " | ".join(dict.fromkeys(alts)))

    def alternatives(self, schema: dict[str, Any], name: str, where: str) -> str:
        key = "anyOf" if "anyOf" in schema else "oneOf"
        if "anyOf" in schema and "oneOf" in schema:
            raise ValueError(f"{where}: anyOf together with oneOf is not supported")
        options = schema[key]
        if not isinstance(options, list) or not options:
            raise ValueError(f"{where}: {key} must be a non-empty list of schemas")
        base = {k: v for k, v in schema.items() if k not in (key,) and k not in _ANNOTATIONS}
        if base:
            # keywords beside anyOf apply to every alternative
            options = [{"allOf": [base, o]} if set(base) - {"type"} else {**o, **base} for o in options]
        if key == "oneOf":
            self.check_disjoint(options, where)
        alts = [self.visit(o, f"{name}-{i}", f"{where}/{key}/{i}") for i, o in enumerate(options)]
        return self.rules.add(name, " | ".join(dict.fromkeys(alts)))

    def check_disjoint(self, options: list[Any], where: str) -> None:
        """oneOf needs exactly one match: refuse alternatives that one value could satisfy twice."""
        kinds = [self.kinds(o) for o in options]
        for i in range(len(options)):
            for j in range(i + 1, len(options)):
                shared = kinds[i] & kinds[j]
                if not shared:
                    continue
                if shared == {"object"} and self.discriminated(options[i], options[j]):
                    continue
                raise ValueError(f"{where}: oneOf alternatives {i} and {j} may both match one value "
                                 f"({'/'.join(sorted(shared))}); not supported (use anyOf, or a const discriminator)")

    def resolved(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            schema = self.pointer(schema["$ref"], "oneOf")
            seen += 1
        return schema

    def kinds(self, schema: Any) -> set[str]:
        schema = self.resolved(schema)
        if not isinstance(schema, dict):
            return set(_TYPES)
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else schema.get("enum", [])
            return {f"literal:{json.dumps(v, sort_keys=True)}" for v in values}
        types = schema.get("type") or self.implied_types(schema)
        out = set([types] if isinstance(types, str) else types)
        if "integer" in out:
            out.add("number")  # an integer is also a number
        return out

    def discriminated(self, a: Any, b: Any) -> bool:
        a, b = self.resolved(a), self.resolved(b)
        pa, pb = a.get("properties", {}), b.get("properties", {})
        for key in set(pa) & set(pb) & set(a.get("required", [])) & set(b.get("required", [])):
            ka, kb = self.kinds(pa[key]), self.kinds(pb[key])
            if all(k.startswith("literal:") for k in ka | kb) and not ka & kb:
                return True
        return False

    def merge_all_of(self, schema: dict[str, Any], where: str) -> dict[str, Any]:
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise ValueError(f"{where}: allOf must be a non-empty list of schemas")
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        props: dict[str, Any] = dict(merged.pop("properties", {}))
        required: list[str] = list(merged.pop("required", []))
        for i, part in enumerate(parts):
            part = self.resolved(part)
            if not isinstance(part, dict):
                raise ValueError(f"{where}/allOf/{i}: must be an object schema")
            if "allOf" in part:
                part = self.merge_all_of(part, f"{where}/allOf/{i}")
            for k, v in part.items():
                if k == "properties":
                    for pk, pv in v.items():
                        if pk in props and props[pk] != pv:
                            raise ValueError(f"{where}/allOf/{i}: property {pk!r} defined twice differently "
                                             f"(not supported)")
                        props[pk] = pv
                elif k == "required":
                    required += [r for r in v if r not in required]
                elif k in _ANNOTATIONS:
                    continue
                elif k == "type":
                    if v != "object" and v != ["object"]:
                        raise ValueError(f"{where}/allOf/{i}: allOf is supported for object schemas only")
                    merged["type"] = "object"
                elif k in merged and merged[k] != v:
                    raise ValueError(f"{where}/allOf/{i}: {k!r} given twice differently (not supported)")
                elif k not in _KEYWORDS["object"]:
                    raise ValueError(f"{where}/allOf/{i}: allOf is supported for object schemas only "
                                     f"(found {k!r})")
                else:
                    merged[k] = v
        merged["type"] = "object"
        if props:
            merged["properties"] = props
        if required:
            merged["required"] = required
        return merged

    # -- references ----------------------------------------------------------------------------

    def pointer(self, ref: Any, where: str) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise ValueError(f"{where}: only local $ref ('#...') is supported, not {ref!r}")
        node = self.root
        path = ref[1:]
        if path and not path.startswith("/"):
            raise ValueError(f"{where}: $ref {ref!r} is not a JSON pointer")
        for raw in path.split("/")[1:] if path else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ValueError(f"{where}: $ref {ref!r} points at nothing")
        return node

    def ref(self, ref: Any, where: str) -> str:
        target = self.pointer(ref, where)
        if ref in self.refs:
            return self.refs[ref]
        name = self.rules.reserve("ref-" + (ref.rsplit("/", 1)[-1] if "/" in ref else "root"))
        self.refs[ref] = name
        body = self.visit(target, f"{name}-body", ref)
        self.rules.set(name, body)
        return name


def _count_bounds(schema: dict[str, Any], lo_key: str, hi_key: str, where: str) -> tuple[int, int | None]:
    """A (min, max) pair of counts such as minItems/maxItems, checked."""
    lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
    for key, v in ((lo_key, lo), (hi_key, hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{where}: {key} must be a non-negative integer, not {v!r}")
    if hi is not None and hi < lo:
        raise ValueError(f"{where}: {hi_key} {hi} is below {lo_key} {lo}")
    return lo, hi


def _has_type(v: Any, t: str) -> bool:
    if t == "null":
        return v is None
    if t == "boolean":
        return isinstance(v, bool)
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "string":
        return isinstance(v, str)
    if t == "array":
        return isinstance(v, list)
    if t == "object":
        return isinstance(v, dict)
    return False


def json_schema_to_gbnf(schema: Any) -> str:
    """GBNF text (start symbol ``root``) for JSON documents valid under ``schema``."""
    if not isinstance(schema, (dict, bool)):
        raise TypeError(f"schema must be a dict (or a bool), not {type(schema).__name__}")
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise TypeError(f"schema must be JSON data: {e}") from None
    conv = _Converter(schema)
    top = conv.visit(schema, "root", "#")
    return conv.rules.text(top)


def any_json_gbnf() -> str:
    """GBNF text for any one JSON value."""
    conv = _Converter(True)
    return conv.rules.text(conv.prim("value"))


def tool_call_gbnf(tools: list[tuple[str, Any]], allow_text: bool) -> str:
    """GBNF for one call ``{"name": NAME, "arguments": ARGS}`` of one of ``tools`` ((name, schema) pairs).

    Each tool's arguments follow its own parameter schema (its ``$ref`` resolve
    within it).  With ``allow_text``, plain text that does not begin with
    ``{`` is allowed instead (the model chooses: OpenAI's ``tool_choice: "auto"``).
    """
    if not tools:
        raise ValueError("no tools to call")
    rules = Rules()
    alts = []
    for i, (name, schema) in enumerate(tools):
        conv = _Converter(schema)
        conv.rules = rules
        conv.prim(WS)
        args = conv.visit(schema, f"tool-{i}-arguments", f"tools[{i}].function.parameters")
        alts.append(rules.add(f"tool-{i}", f'"{{" ws {literal(json.dumps("name"))} ws ":" ws '
                                           f'{literal(json.dumps(name, ensure_ascii=False))} ws "," ws '
                                           f'{literal(json.dumps("arguments"))} ws ":" ws {args} ws "}}"'))
    call = rules.add("tool-call", " | ".join(alts))
    if not allow_text:
        return rules.text(call)
    text = rules.add("free-text", r"[^{ \t\n] [^\x00]*")
    return rules.text(f"{call} | {text}")
