'use strict';
// Grammars in Node (mirrors tests/test_grammar.py): GBNF outputs match an
// equivalent regular expression, greedy output under a grammar equals the
// Python binding's, Grammar.json() is the Python package's "any JSON value"
// grammar, malformed grammars name the line and column without printing,
// and running out of tokens is reported.  Every expectation is computed here.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFileSync, spawnSync } = require('node:child_process');
const { JsModel, JsContext, Grammar, GrammarIncompleteError, samplerParamsGreedy } = require('..');
const { ROOT, python, smollmPath } = require('./helpers/models');

const CASES = [
  ['arithmetic', 'root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= factor (("*" | "/") factor)*\n'
    + 'factor ::= [0-9]{1,3} | "(" expr ")"', null, 'Write an arithmetic expression that equals 12.', 60],
  ['csv-line', 'root ::= field ("," field){2,4}\nfield ::= [A-Za-z0-9 ]{1,12}',
    /^[A-Za-z0-9 ]{1,12}(,[A-Za-z0-9 ]{1,12}){2,4}$/, 'Write a CSV line about a car: make, model, year.', 80],
  ['choice', 'root ::= "The answer is " choice "."\nchoice ::= "red" | "green" | "blue"',
    /^The answer is (red|green|blue)\.$/, 'What color is grass?', 20],
];
const greedy = samplerParamsGreedy();
let model;
test.before(() => { model = JsModel.load(smollmPath()); });
test.after(() => model.close());

function arithOk(text) {
  // the grammar's language, as a recursive check (parenthesised groups nest)
  let prev = null;
  while (prev !== text) {
    prev = text;
    text = text.replace(/\((\d{1,3}(?:[-+*/]\d{1,3})*)\)/g, '1');
  }
  return /^\d{1,3}([-+*/]\d{1,3})*$/.test(text);
}

const chat = (q) => model.applyChatTemplate([{ role: 'user', content: q }], true);

for (const [name, gbnf, regex, question, maxTokens] of CASES) {
  test(`GBNF outputs match their regular expression: ${name}`, () => {
    const g = new Grammar(gbnf);
    const ctx = new JsContext(model, { nCtx: 1024 });
    let finished = 0;
    for (const params of [greedy, { seed: 1 }, { seed: 2, temperature: 1.2 }]) {
      ctx.clearCache();
      let text;
      try {
        text = ctx.generate(chat(question), maxTokens, params, { grammar: g });
      } catch (e) {
        assert.ok(e instanceof GrammarIncompleteError, e.stack);
        continue;
      }
      finished++;
      assert.ok(regex === null ? arithOk(text) : regex.test(text), `${JSON.stringify(params)}: ${JSON.stringify(text)}`);
    }
    assert.ok(finished >= 2);
    ctx.close();
  });
}

test('greedy output under a grammar equals the Python binding, with generateStream and async', async () => {
  const grammars = [CASES[0][1], CASES[1][1], Grammar.json().text];
  const questions = [CASES[0][3], CASES[1][3], 'Give me a JSON object describing a cat with three fields.'];
  const code = `
import json, sys
from mullama import Model, Context, SamplerParams, Grammar, GrammarIncompleteError
m = Model.load(sys.argv[1])
out = []
for gbnf, q in zip(json.loads(sys.argv[2]), json.loads(sys.argv[3])):
    c = Context(m, n_ctx=1024)
    try:
        out.append(["done", c.generate(m.apply_chat_template([("user", q)]), 120, SamplerParams.greedy(),
                                       grammar=Grammar(gbnf))])
    except GrammarIncompleteError as e:
        out.append(["incomplete", e.text])
print(json.dumps(out))`;
  const py = JSON.parse(execFileSync(python(), ['-c', code, smollmPath(), JSON.stringify(grammars),
    JSON.stringify(questions)], { encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } }));
  const ctx = new JsContext(model, { nCtx: 1024 });
  // [how it ended, the text]: a GrammarIncompleteError's text counts as much as a finished answer
  const outcome = (run) => {
    try {
      return ['done', run()];
    } catch (e) {
      if (!(e instanceof GrammarIncompleteError)) throw e;
      return ['incomplete', e.text];
    }
  };
  for (let i = 0; i < grammars.length; i++) {
    const g = new Grammar(grammars[i]);
    ctx.clearCache();
    assert.deepEqual(outcome(() => ctx.generate(chat(questions[i]), 120, greedy, { grammar: g })), py[i]);
    ctx.clearCache();
    const pieces = [];
    const streamed = outcome(() => {
      for (const piece of ctx.generateStream(chat(questions[i]), 120, greedy, { grammar: g })) pieces.push(piece);
      return pieces.join('');
    });
    assert.deepEqual(streamed[0] === 'done' ? streamed : ['incomplete', streamed[1]], py[i]);
    ctx.clearCache();
    let asyncOutcome;
    try {
      asyncOutcome = ['done', await ctx.generateAsync(chat(questions[i]), 120, greedy, { grammar: g })];
    } catch (e) {
      if (!(e instanceof GrammarIncompleteError)) throw e;
      asyncOutcome = ['incomplete', e.text];
    }
    assert.deepEqual(asyncOutcome, py[i]);
  }
  assert.ok(py.filter(([kind]) => kind === 'done').length >= 2);
  ctx.close();
});

test("Grammar.json() is the Python package's grammar", () => {
  const py = execFileSync(python(), ['-c', 'from mullama import Grammar; import sys; sys.stdout.write(Grammar.json().text)'],
    { encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } });
  assert.equal(Grammar.json().text, py);
  assert.equal(Grammar.json().root, 'root');
});

test('a malformed grammar names where, and nothing is printed', () => {
  const code = `
const { Grammar } = require(${JSON.stringify(path.resolve(__dirname, '..'))});
for (const bad of ['root ::= "a" |\\nfoo ::= [a-', 'root ::= undefined-rule', 'root ::= "unterminated']) {
  try { new Grammar(bad); console.log('accepted'); } catch (e) { console.log(e.constructor.name + ': ' + e.message); }
}`;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' });
  assert.equal(r.stderr, '');
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 3);
  assert.match(lines[0], /^Error: invalid grammar: .* at line 2, column 5/);
  for (const l of lines) assert.match(l, /^Error: invalid grammar: /);
});

test('bad arguments', () => {
  assert.throws(() => new Grammar(42), TypeError);
  assert.throws(() => new Grammar('   '), /empty/);
  assert.throws(() => new Grammar('root ::= "a"', ''), /must name a rule/);
  assert.throws(() => new Grammar('root ::= "\ud800"'), /lone surrogate/);
  const ctx = new JsContext(model, { nCtx: 256 });
  assert.throws(() => ctx.generate('x', 3, greedy, { grammar: 'root ::= "a"' }), TypeError);
  ctx.close();
  const dev = new JsContext(model, { nCtx: 256, sampling: 'device' });
  assert.throws(() => dev.generate('x', 3, greedy, { grammar: Grammar.json() }), /cannot apply a grammar/);
  dev.close();
});

test('running out of tokens is reported, and the context stays usable', () => {
  const g = new Grammar('root ::= "The quick brown fox jumps over the lazy dog and keeps running."');
  const ctx = new JsContext(model, { nCtx: 512 });
  assert.throws(() => ctx.generate('Say it:', 4, greedy, { grammar: g }), (e) => {
    assert.ok(e instanceof GrammarIncompleteError);
    assert.match(e.message, /maxTokens=4/);
    assert.ok(e.text.length > 0 && 'The quick brown fox jumps over the lazy dog and keeps running.'.startsWith(e.text));
    return true;
  });
  assert.equal(ctx.generate('Say it:', 40, greedy, { grammar: g }),
    'The quick brown fox jumps over the lazy dog and keeps running.');
  // ignoreEos cannot run past a complete grammar
  assert.equal(ctx.generate('Say it:', 40, greedy, { grammar: g, ignoreEos: true }),
    'The quick brown fox jumps over the lazy dog and keeps running.');
  ctx.close();
});
