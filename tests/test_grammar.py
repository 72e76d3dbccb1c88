"""Structured output: GBNF grammars and JSON Schema, generated with SmolLM2 and checked by jsonschema."""

from __future__ import annotations

import asyncio
import ctypes
import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from mullama import Context, Grammar, GrammarIncompleteError, Model, SamplerParams
from mullama.engine import Engine
from mullama.grammar import json_schema_to_gbnf
from mullama.grammar._rules import integer_range

SCHEMAS = json.loads((Path(__file__).parent / "data" / "json_schemas.json").read_text(encoding="utf-8"))
MAX_TOKENS = 320
SEEDS = (1, 2)


def _prompt(model: Model, case: dict[str, object]) -> str:
    schema = json.dumps(case["schema"], ensure_ascii=False)
    return model.apply_chat_template([
        ("system", "You answer with JSON only."),
        ("user", f"{case['prompt']} Answer with JSON matching this schema: {schema}"),
    ])


def _validate(schema: object, text: str) -> None:
    value = json.loads(text)  # raises if not JSON
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _matches(model: Model, grammar: Grammar, text: str) -> bool:
    """Whether llama.cpp's grammar engine accepts ``text`` whole, fed as the model's tokens."""
    state = grammar.state(model)
    try:
        for tok in model.tokenize(text, add_bos=False):
            if not state.allows(tok):
                return False
            state.accept(tok)
        return state.complete()
    finally:
        state.close()


# -- the JSON Schema suite -------------------------------------------------------------------

def test_suite_is_broad() -> None:
    assert len(SCHEMAS) >= 40
    text = json.dumps([c["schema"] for c in SCHEMAS])
    for keyword in ("\"type\": [", "\"properties\"", "\"required\"", "\"additionalProperties\": false", "\"enum\"",
                    "\"const\"", "\"items\"", "\"minItems\"", "\"maxItems\"", "\"minLength\"", "\"maxLength\"",
                    "\"minimum\"", "\"maximum\"", "\"pattern\"", "\"format\": \"date\"", "\"format\": \"time\"",
                    "\"format\": \"date-time\"", "\"format\": \"uuid\"", "\"anyOf\"", "\"oneOf\"", "\"allOf\"",
                    "\"$ref\"", "\"$defs\"", "\"null\""):
        assert keyword in text, keyword


@pytest.fixture(scope="module")
def greedy_outputs(model: Model) -> dict[str, str | GrammarIncompleteError]:
    ctx = Context(model, n_ctx=2048)
    out: dict[str, str | GrammarIncompleteError] = {}
    for case in SCHEMAS:
        g = Grammar.from_json_schema(case["schema"])
        try:
            out[case["name"]] = ctx.generate(_prompt(model, case), MAX_TOKENS, SamplerParams.greedy(), grammar=g)
        except GrammarIncompleteError as e:
            out[case["name"]] = e
    ctx.close()
    return out


@pytest.fixture(scope="module")
def sampled_outputs(model: Model) -> dict[tuple[str, int], str | GrammarIncompleteError]:
    """The same schemas sampled at two seeds, all at once through the batched engine (a grammar per sequence)."""
    with Engine(model, parallel=8, n_ctx=1024) as engine:
        reqs = {(case["name"], seed): engine.submit(_prompt(model, case), MAX_TOKENS, SamplerParams(seed=seed),
                                                    grammar=Grammar.from_json_schema(case["schema"]))
                for case in SCHEMAS for seed in SEEDS}
        out: dict[tuple[str, int], str | GrammarIncompleteError] = {}
        for key, req in reqs.items():
            try:
                out[key] = req.text()
            except GrammarIncompleteError as e:
                assert req.finish_reason == "length"
                out[key] = e
    return out


def _check_output(schema: object, text: object) -> None:
    if isinstance(text, GrammarIncompleteError):
        # Reported as incomplete, never returned as if it were valid; it must really be unfinished.
        with pytest.raises((ValueError, jsonschema.ValidationError)):
            _validate(schema, text.text)
        return
    assert isinstance(text, str)
    _validate(schema, text)


@pytest.mark.parametrize("case", SCHEMAS, ids=[c["name"] for c in SCHEMAS])
def test_schema_greedy_output_validates(case: dict[str, object], greedy_outputs: dict[str, object]) -> None:
    _check_output(case["schema"], greedy_outputs[case["name"]])  # type: ignore[index]


@pytest.mark.parametrize("case", SCHEMAS, ids=[c["name"] for c in SCHEMAS])
def test_schema_sampled_outputs_validate(case: dict[str, object], sampled_outputs: dict[tuple[str, int], object]) -> None:
    for seed in SEEDS:
        _check_output(case["schema"], sampled_outputs[(case["name"], seed)])  # type: ignore[index]


def test_most_outputs_complete(greedy_outputs: dict[str, object],
                               sampled_outputs: dict[tuple[str, int], object]) -> None:
    # Unbounded schemas (any value, recursion) may run out of tokens; nearly all others must close.
    outputs = list(greedy_outputs.items()) + list(sampled_outputs.items())
    incomplete = [k for k, v in outputs if not isinstance(v, str)]
    assert len(incomplete) <= len(outputs) // 10, incomplete


def test_seeded_grammar_sampling_reproduces(model: Model) -> None:
    case = next(c for c in SCHEMAS if c["name"] == "person")
    g = Grammar.from_json_schema(case["schema"])
    ctx = Context(model, n_ctx=1024)
    a = ctx.generate(_prompt(model, case), 120, SamplerParams(seed=7, temperature=1.0), grammar=g)
    ctx.clear_cache()
    b = ctx.generate(_prompt(model, case), 120, SamplerParams(seed=7, temperature=1.0), grammar=g)
    assert a == b
    _validate(case["schema"], a)


# -- greedy within a grammar is the best allowed token, every time --------------------------------

def _masked_greedy_reference(model: Model, grammar: Grammar, prompt: str, n: int) -> list[int]:
    """Mask the whole vocabulary by the grammar before every argmax (no shortcut), straight on the C API."""
    from mullama import _backend, _lib
    L = _backend.lib()
    ctx = Context(model, n_ctx=1024)
    ids = model.tokenize(prompt, add_bos=True, special=True)
    ctx.decode(ids)
    state = grammar.state(model)
    n_vocab = model.n_vocab
    cand = np.zeros(n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    out: list[int] = []
    for _ in range(n):
        addr = L.llama_get_logits_ith(ctx.ptr(), -1)
        logits = np.ctypeslib.as_array(ctypes.cast(addr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
        cand["id"] = np.arange(n_vocab)
        cand["logit"] = logits
        arr = _lib.llama_token_data_array(cand.ctypes.data_as(ctypes.POINTER(_lib.llama_token_data)), n_vocab, -1,
                                          False)
        L.llama_sampler_apply(state.ptr(), ctypes.byref(arr))
        best = int(np.argmax(cand["logit"]))  # the first largest, as llama.cpp's greedy sampler picks
        tok = int(cand["id"][best])
        out.append(tok)
        if model.token_is_eog(tok):
            break
        state.accept(tok)
        ctx.decode([tok])
    state.close()
    ctx.close()
    return out


def test_greedy_within_grammar_equals_masking_every_step(model: Model) -> None:
    # A grammar the model would not follow by itself, so that the shortcut's fallback runs.
    g = Grammar('root ::= "Answer: " ("yes" | "no" | "maybe") ", because " [a-z ]{3,40} "."')
    prompt = model.apply_chat_template([("user", "Is water wet? Explain in one sentence.")])
    ref = _masked_greedy_reference(model, g, prompt, 40)
    ctx = Context(model, n_ctx=1024)
    text = ctx.generate(prompt, 40, SamplerParams.greedy(), grammar=g)
    assert model.tokenize(text, add_bos=False) == [t for t in ref if not model.token_is_eog(t)] \
        or text == model.detokenize([t for t in ref if not model.token_is_eog(t)])
    assert re.fullmatch(r"Answer: (yes|no|maybe), because [a-z ]{3,40}\.", text)
    # the unconstrained answer is different: the grammar really steered it
    ctx.clear_cache()
    assert ctx.generate(prompt, 40, SamplerParams.greedy()) != text


# -- hand-written GBNF ----------------------------------------------------------------------------------

GBNF_CASES = [
    ("arithmetic",
     'root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= factor (("*" | "/") factor)*\n'
     'factor ::= [0-9]{1,3} | "(" expr ")"',
     None, "Write an arithmetic expression that equals 12.", 60),
    ("csv-line",
     'root ::= field ("," field){2,4}\nfield ::= [A-Za-z0-9 ]{1,12}',
     r"[A-Za-z0-9 ]{1,12}(,[A-Za-z0-9 ]{1,12}){2,4}", "Write a CSV line about a car: make, model, year.", 80),
    ("choice",
     'root ::= "The answer is " choice "."\nchoice ::= "red" | "green" | "blue"',
     r"The answer is (red|green|blue)\.", "What color is grass?", 20),
]


def _arith_ok(text: str) -> bool:
    # the grammar's language, as a recursive check (parenthesised groups nest)
    prev = None
    while prev != text:
        prev, text = text, re.sub(r"\((\d{1,3}(?:[-+*/]\d{1,3})*)\)", "1", text)
    return re.fullmatch(r"\d{1,3}([-+*/]\d{1,3})*", text) is not None


@pytest.mark.parametrize("name,gbnf,regex,question,max_tokens", GBNF_CASES, ids=[c[0] for c in GBNF_CASES])
def test_gbnf_outputs_match(model: Model, name: str, gbnf: str, regex: str | None, question: str,
                            max_tokens: int) -> None:
    g = Grammar(gbnf)
    prompt = model.apply_chat_template([("user", question)])
    ctx = Context(model, n_ctx=1024)
    for params in (SamplerParams.greedy(), SamplerParams(seed=1), SamplerParams(seed=2, temperature=1.2)):
        ctx.clear_cache()
        try:
            text = ctx.generate(prompt, max_tokens, params, grammar=g)
        except GrammarIncompleteError as e:
            assert not _matches(model, g, e.text)
            continue
        ok = _arith_ok(text) if regex is None else re.fullmatch(regex, text) is not None
        assert ok, (params, text)
        assert _matches(model, g, text)


# -- with streaming, stop strings, the cache, async ----------------------------------------------------

def test_grammar_stream_equals_generate_and_reuses_cache(model: Model) -> None:
    case = next(c for c in SCHEMAS if c["name"] == "nested")
    g = Grammar.from_json_schema(case["schema"])
    prompt = _prompt(model, case)
    ctx = Context(model, n_ctx=2048)
    whole = ctx.generate(prompt, MAX_TOKENS, SamplerParams.greedy(), grammar=g)
    ctx.clear_cache()
    pieces = list(ctx.generate_stream(prompt, MAX_TOKENS, SamplerParams.greedy(), grammar=g))
    assert "".join(pieces) == whole and len(pieces) > 5
    _validate(case["schema"], whole)
    # Again with the prompt from the cache: only its last token is evaluated anew (a different batch
    # shape, so near-ties may round the other way), and the grammar starts afresh all the same.
    again = ctx.generate(prompt, MAX_TOKENS, SamplerParams.greedy(), grammar=g)
    assert ctx.last_prompt_evaluated == 1
    _validate(case["schema"], again)
    # a follow-up turn continues from the cached answer
    follow = prompt + again + "<|im_end|>\n" + model.apply_chat_template([("user", "Another one.")]).split(
        "<|im_end|>\n", 1)[1]
    _validate(case["schema"], ctx.generate(follow, MAX_TOKENS, SamplerParams.greedy(), grammar=g))
    assert ctx.last_prompt_evaluated < len(model.tokenize(follow, special=True)) // 2


def test_grammar_with_stop_string(model: Model) -> None:
    g = Grammar('root ::= "Answer: " [a-z]{2,6} ", then " [a-z]{2,6} "."')
    prompt = model.apply_chat_template([("user", "Name two animals.")])
    ctx = Context(model, n_ctx=1024)
    full = ctx.generate(prompt, 40, SamplerParams.greedy(), grammar=g)
    assert re.fullmatch(r"Answer: [a-z]{2,6}, then [a-z]{2,6}\.", full)
    ctx.clear_cache()
    cut = ctx.generate(prompt, 40, SamplerParams.greedy(), grammar=g, stop=[", then"])
    assert cut == full.split(", then")[0]


def test_grammar_async(model: Model) -> None:
    case = next(c for c in SCHEMAS if c["name"] == "person")
    g = Grammar.from_json_schema(case["schema"])
    ctx = Context(model, n_ctx=1024)
    sync = ctx.generate(_prompt(model, case), 100, SamplerParams.greedy(), grammar=g)

    async def run() -> tuple[str, str]:
        ctx.clear_cache()
        a = await ctx.agenerate(_prompt(model, case), 100, SamplerParams.greedy(), grammar=g)
        ctx.clear_cache()
        b = "".join([p async for p in ctx.agenerate_stream(_prompt(model, case), 100, SamplerParams.greedy(),
                                                             grammar=g)])
        return a, b
    assert asyncio.run(run()) == (sync, sync)


def test_running_out_of_tokens_is_reported(model: Model) -> None:
    case = next(c for c in SCHEMAS if c["name"] == "nested")
    g = Grammar.from_json_schema(case["schema"])
    ctx = Context(model, n_ctx=1024)
    with pytest.raises(GrammarIncompleteError, match="max_tokens=6") as info:
        ctx.generate(_prompt(model, case), 6, SamplerParams.greedy(), grammar=g)
    assert info.value.text and not _matches(model, g, info.value.text)
    # from an empty cache again: with the prompt reused, its last token is evaluated alone,
    # and the kernels for one token may round a near-tie the other way
    ctx.clear_cache()
    pieces: list[str] = []
    with pytest.raises(GrammarIncompleteError):
        for p in ctx.generate_stream(_prompt(model, case), 6, SamplerParams.greedy(), grammar=g):
            pieces.append(p)
    assert "".join(pieces) == info.value.text
    # and the context is fine afterwards
    assert ctx.generate(_prompt(model, case), MAX_TOKENS, SamplerParams.greedy(), grammar=g)


def test_ignore_eos_cannot_run_past_a_complete_grammar(model: Model) -> None:
    g = Grammar('root ::= "yes" | "no"')
    ctx = Context(model, n_ctx=512)
    text = ctx.generate(model.apply_chat_template([("user", "Yes?")]), 30, SamplerParams.greedy(), grammar=g,
                        ignore_eos=True)
    assert text in ("yes", "no")


def test_engine_grammars_per_sequence(model: Model) -> None:
    cases = [c for c in SCHEMAS if c["name"] in ("person", "array-exact", "format-date", "enum-strings")]
    # Alone, a request gets exactly what a lone Context gives (same prompt evaluation, same grammar path).
    ctx = Context(model, n_ctx=1024)
    for c in cases[:2]:
        ctx.clear_cache()
        alone = ctx.generate(_prompt(model, c), 100, SamplerParams.greedy(), grammar=Grammar.from_json_schema(c["schema"]))
        with Engine(model, parallel=1, n_ctx=1024) as engine:
            assert engine.generate(_prompt(model, c), 100, SamplerParams.greedy(),
                                   grammar=Grammar.from_json_schema(c["schema"])) == alone
    # Together, each sequence follows its own grammar.
    with Engine(model, parallel=4, n_ctx=1024) as engine:
        reqs = [engine.submit(_prompt(model, c), 100, params, grammar=Grammar.from_json_schema(c["schema"]))
                for c in cases for params in (SamplerParams.greedy(), SamplerParams(seed=3))]
        texts = [r.text() for r in reqs]
        assert all(r.finish_reason == "stop" for r in reqs)
    for (c, _), text in zip([(c, p) for c in cases for p in (0, 1)], texts):
        _validate(c["schema"], text)
    # running out of tokens in the engine: finish_reason "length" and the error after the last piece
    with Engine(model, parallel=2, n_ctx=1024) as engine:
        req = engine.submit(_prompt(model, cases[0]), 4, SamplerParams.greedy(),
                            grammar=Grammar.from_json_schema(cases[0]["schema"]))
        pieces: list[str] = []
        with pytest.raises(GrammarIncompleteError):
            for p in req:
                pieces.append(p)
        assert req.finish_reason == "length" and pieces


# -- errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gbnf,where", [
    ('root ::= "a" |\nfoo ::= [a-', "line 2"),
    ('root ::= "unterminated', "unexpected end of input"),
    ('root = "a"', "expecting ::= at line 1, column 6"),
    ('root ::= foo', "Undefined rule identifier 'foo'"),
    ('root ::= root "a" | "b"', "left recursion"),
    ('root ::= "a"{2,1x}', "line 1"),
    ('root ::= [\\q]', "unknown escape"),
])
def test_malformed_gbnf_raises_value_error_quietly(capfd: pytest.CaptureFixture[str], gbnf: str, where: str) -> None:
    with pytest.raises(ValueError, match="invalid grammar") as info:
        Grammar(gbnf)
    assert where in str(info.value)
    assert capfd.readouterr().err == ""  # llama.cpp's parser prints to stderr: none of it gets out


def test_grammar_argument_errors(model: Model) -> None:
    with pytest.raises(ValueError, match="does not contain a 'start'"):
        Grammar('root ::= "x"', root="start")
    with pytest.raises(ValueError, match="empty"):
        Grammar("  \n")
    with pytest.raises(TypeError):
        Grammar(b'root ::= "x"')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="surrogate"):
        Grammar('root ::= "\ud800"')
    ctx = Context(model, n_ctx=256)
    with pytest.raises(TypeError, match="grammar must be"):
        ctx.generate("Hi", 5, grammar='root ::= "x"')  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="grammar must be"):
        Engine(model, parallel=1, n_ctx=256).submit("Hi", 5, grammar={"type": "object"})  # type: ignore[arg-type]


@pytest.mark.parametrize("schema,keyword", [
    ({"type": "object", "maxProperties": 3}, "maxProperties"),
    ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "array", "contains": {"type": "integer"}}, "contains"),
    ({"type": "number", "minimum": 0}, "minimum"),
    ({"type": "number", "multipleOf": 2}, "multipleOf"),
    ({"type": ["integer", "number"], "maximum": 3}, "number"),
    ({"type": "integer", "multipleOf": 2}, "multipleOf"),
    ({"type": "string", "format": "email"}, "email"),
    ({"type": "string", "pattern": "^(a)\\1$"}, "\\1"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "(?"),
    ({"type": "string", "pattern": "\\bword"}, "\\b"),
    ({"type": "string", "pattern": "^a", "maxLength": 3}, "combining"),
    ({"$ref": "https://example.com/schema.json"}, "local $ref"),
    ({"$ref": "#/$defs/missing"}, "points at nothing"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "may both match"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'b'"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "no integer"),
    ({"type": "widget"}, "widget"),
    ({"if": {"type": "string"}}, "if"),
    (False, "admits no value"),
])
def test_unsupported_schema_keywords_are_named(schema: object, keyword: str) -> None:
    with pytest.raises(ValueError) as info:
        Grammar.from_json_schema(schema)  # type: ignore[arg-type]
    assert keyword in str(info.value)


def test_schema_type_errors() -> None:
    with pytest.raises(TypeError):
        Grammar.from_json_schema("{}")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Grammar.from_json_schema({"enum": [object()]})


# -- the grammar's language, checked by llama.cpp's own engine ------------------------------------------------

@pytest.mark.parametrize("lo,hi", [(0, 120), (-15, 7), (5, None), (None, -3), (100, 999), (-1000, -990), (0, 0),
                                   (7, 7), (None, None), (-5, 105), (19, 2001)])
def test_integer_ranges_are_exact(model: Model, lo: int | None, hi: int | None) -> None:
    g = Grammar(f"root ::= {integer_range(lo, hi)}")
    for v in list(range(-1100, 1100, 7)) + list(range(-20, 130)) + [1999, 2000, 2001, 2002, 10 ** 12, -10 ** 12]:
        expected = (lo is None or v >= lo) and (hi is None or v <= hi)
        assert _matches(model, g, str(v)) == expected, v
    assert not _matches(model, g, "007") and not _matches(model, g, "-0") and not _matches(model, g, "")


def test_escaping_reaches_the_grammar_intact(model: Model) -> None:
    case = next(c for c in SCHEMAS if c["name"] == "escaped-names")
    g = Grammar.from_json_schema(case["schema"])
    doc = {"quote\"d": True, "back\\slash": False, "café ☃": True, "new\nline": "c\\d"}
    assert _matches(model, g, json.dumps(doc, ensure_ascii=False))
    assert not _matches(model, g, json.dumps({**doc, "new\nline": "other"}, ensure_ascii=False))


@pytest.mark.parametrize("pattern,good,bad", [
    ("^[0-9]{3}-[0-9]{4}$", ["555-1234"], ["5551234", "555-12345", "a55-1234"]),
    ("^(yes|no)$", ["yes", "no"], ["yesno", "maybe", ""]),
    ("cat", ["cat", "a cat!", "concatenate"], ["dog", "ca t"]),
    ("^a.c$", ["abc", "a\"c", "a\\c"], ["ac", "a\nc"]),
    ("^[^a-c]+$", ["xyz", "\"", "ü"], ["abc", "xa"]),
    ("^\\d+\\.\\d{2}$", ["3.14", "100.00"], ["3.1", ".14", "3,14"]),
    ("^\\w+@\\w+\\.com$", ["me@host.com"], ["me@host.org", "@host.com"]),
    ("^(ab)+?c?$", ["ab", "ababc"], ["a", "abb"]),
    ("^\\u00e9t\\xe9$", ["été"], ["ete"]),
])
def test_patterns_match_what_python_re_matches(model: Model, pattern: str, good: list[str], bad: list[str]) -> None:
    schema = {"type": "string", "pattern": pattern}
    g = Grammar.from_json_schema(schema)
    for s in good:
        assert re.search(pattern, s), s
        assert _matches(model, g, json.dumps(s, ensure_ascii=False)), s
    for s in bad:
        assert not _matches(model, g, json.dumps(s, ensure_ascii=False)), s


def test_json_grammar_accepts_json_values(model: Model) -> None:
    g = Grammar.json()
    for doc in ({"a": [1, 2.5e3, None, True, "x\"y"]}, [], {}, [{"k": {"n": -0.5}}], 42, "s", None):
        assert _matches(model, g, json.dumps(doc))
    for text in ('{"a": }', "[1, 2", "042", '{"a" 1}', "nul"):
        assert not _matches(model, g, text)


def test_converter_output_is_stable() -> None:
    # the same schema always gives the same grammar text (Node shares these cases)
    for case in SCHEMAS:
        assert json_schema_to_gbnf(case["schema"]) == json_schema_to_gbnf(json.loads(json.dumps(case["schema"])))
