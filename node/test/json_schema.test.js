'use strict';
// The JSON-Schema converter of the Node binding (lib/json_schema.js) is a port
// of the Python one: for every schema of the shared suite
// (tests/data/json_schemas.json) and a set of edge cases, both give the same
// grammar text; unsupported keywords are named by both; and a schema's greedy
// answer is the Python binding's.  Every expectation is computed in this run.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { JsModel, JsContext, Grammar, samplerParamsGreedy } = require('..');
const { jsonSchemaToGbnf } = require('../lib/grammar/json_schema');
const { ROOT, python, smollmPath } = require('./helpers/models');

const SUITE = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests', 'data', 'json_schemas.json'), 'utf8'));
const EDGES = [
  { type: 'integer', minimum: -1234, maximum: 98765 },
  { type: 'integer', exclusiveMinimum: 7.5 },
  { type: 'integer', maximum: -3 },
  { type: 'integer', minimum: 999999999999 },
  { type: 'string', pattern: '^[A-Z]{2}-\\d{3,5}(x|yz)?$' },
  { type: 'string', pattern: 'a.b\\.c[^"\\\\]+\\u00e9\\x41' },
  { type: 'string', pattern: '^(?:ab|c)*d+?$' },
  { type: 'string', pattern: '[\\w\\s-]\\W\\D\\S' },
  { type: 'string', pattern: '^🦙{1,2}[é-ü]$' },
  { type: 'object', properties: { 'quote"back\\slash': { const: 'tab\there' }, 'naïve 日本': { enum: ['ü', 1, null, true] } },
    required: ['naïve 日本'] },
  { enum: [[1, 'a'], { b: [true, null] }, 2.5, 'x'] },
  { type: ['string', 'null'], maxLength: 4 },
  { type: 'array', prefixItems: [{ type: 'boolean' }, { type: 'string', format: 'uuid' }], items: false },
  { type: 'object', additionalProperties: { type: 'integer' } },
  { $defs: { node: { type: 'object', properties: { kids: { type: 'array', items: { $ref: '#/$defs/node' } } } } },
    $ref: '#/$defs/node' },
  { oneOf: [{ type: 'object', properties: { kind: { const: 'a' }, x: { type: 'integer' } }, required: ['kind'] },
    { type: 'object', properties: { kind: { const: 'b' }, y: { type: 'string' } }, required: ['kind'] }] },
  { allOf: [{ type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] },
    { properties: { b: { type: 'string', format: 'date-time' } } }] },
  { type: 'string', format: 'time' },
  true,
];
const UNSUPPORTED = [
  [{ type: 'object', maxProperties: 3 }, 'maxProperties'],
  [{ type: 'object', patternProperties: { '^a': {} } }, 'patternProperties'],
  [{ type: 'array', uniqueItems: true }, 'uniqueItems'],
  [{ type: 'array', contains: { type: 'integer' } }, 'contains'],
  [{ type: 'number', minimum: 0 }, 'minimum'],
  [{ type: 'number', multipleOf: 2 }, 'multipleOf'],
  [{ type: ['integer', 'number'], maximum: 3 }, 'number'],
  [{ type: 'integer', multipleOf: 2 }, 'multipleOf'],
  [{ type: 'string', format: 'email' }, 'email'],
  [{ type: 'string', pattern: '^(a)\\1$' }, '\\1'],
  [{ type: 'string', pattern: '^(?=a)b$' }, '(?'],
  [{ type: 'string', pattern: '\\bword' }, '\\b'],
  [{ type: 'string', pattern: '^a', maxLength: 3 }, 'combining'],
  [{ $ref: 'https://example.com/schema.json' }, 'local $ref'],
  [{ $ref: '#/$defs/missing' }, 'points at nothing'],
  [{ oneOf: [{ type: 'integer' }, { type: 'number' }] }, 'may both match'],
  [{ type: 'object', properties: { a: { type: 'string' } }, required: ['b'] }, '"b"'],
  [{ type: 'integer', minimum: 5, maximum: 1 }, 'no integer'],
  [{ type: 'widget' }, 'widget'],
  [{ if: { type: 'string' } }, 'if'],
  [false, 'admits no value'],
];

function pythonGrammars(schemas) {
  const code = `
import json, sys
from mullama.grammar.json_schema import json_schema_to_gbnf
print(json.dumps([json_schema_to_gbnf(s) for s in json.load(sys.stdin)]))`;
  return JSON.parse(execFileSync(python(), ['-c', code], { input: JSON.stringify(schemas), encoding: 'utf8',
    env: { ...process.env, PYTHONPATH: ROOT } }));
}

test('every schema of the shared suite gives the grammar text Python gives', () => {
  const py = pythonGrammars(SUITE.map((c) => c.schema));
  SUITE.forEach((c, i) => assert.equal(jsonSchemaToGbnf(c.schema), py[i], c.name));
  assert.equal(SUITE.length, 51);
});

test('edge cases (integer ranges, regex patterns, escaped names, non-ASCII, refs) give the same text', () => {
  const py = pythonGrammars(EDGES);
  EDGES.forEach((s, i) => {
    assert.equal(jsonSchemaToGbnf(s), py[i], JSON.stringify(s));
    new Grammar(py[i]); // and llama.cpp's parser accepts it
  });
});

for (const [schema, keyword] of UNSUPPORTED) {
  test(`unsupported: ${JSON.stringify(schema)} names ${keyword}`, () => {
    assert.throws(() => Grammar.fromJsonSchema(schema), (e) => e instanceof Error && e.message.includes(keyword));
  });
}

test('bad schema arguments are TypeErrors', () => {
  assert.throws(() => Grammar.fromJsonSchema('{"type": "object"}'), TypeError);
  assert.throws(() => Grammar.fromJsonSchema(null), TypeError);
  const cyclic = { type: 'object' };
  cyclic.self = cyclic;
  assert.throws(() => Grammar.fromJsonSchema(cyclic), TypeError);
});

test("a schema's greedy answer equals the Python binding's, and is valid JSON", () => {
  const cases = SUITE.filter((c) => ['person', 'enum-strings', 'format-date', 'array-exact'].includes(c.name));
  assert.equal(cases.length, 4);
  const code = `
import json, sys
from mullama import Model, Context, SamplerParams, Grammar
m = Model.load(sys.argv[1])
out = []
for c in json.load(sys.stdin):
    ctx = Context(m, n_ctx=1024)
    out.append(ctx.generate(m.apply_chat_template([("user", c["prompt"])]), 200, SamplerParams.greedy(),
                            grammar=Grammar.from_json_schema(c["schema"])))
print(json.dumps(out))`;
  const py = JSON.parse(execFileSync(python(), ['-c', code, smollmPath()], { input: JSON.stringify(cases),
    encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } }));
  const model = JsModel.load(smollmPath());
  const ctx = new JsContext(model, { nCtx: 1024 });
  cases.forEach((c, i) => {
    ctx.clearCache();
    const text = ctx.generate(model.applyChatTemplate([{ role: 'user', content: c.prompt }], true), 200,
      samplerParamsGreedy(), { grammar: Grammar.fromJsonSchema(c.schema) });
    assert.equal(text, py[i], c.name);
    JSON.parse(text);
  });
  ctx.close();
  model.close();
});
