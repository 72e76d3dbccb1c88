'use strict';
// Token log-probabilities in Node (mirrors the JsContext half of
// tests/test_logprobs.py): every value is checked against a log-softmax of the
// full logits, computed here from a second context that decodes the prompt and
// each generated token, in this run.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const koffi = require('koffi');
const { JsModel, JsContext, Grammar, samplerParamsGreedy } = require('..');
const { lib } = require('../lib/_backend');
const { ROOT, python, smollmPath } = require('./helpers/models');

const CHAT = '<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n';
const PROMPT = 'The history of the printing press';
const greedy = samplerParamsGreedy();
const TOL = 1e-4;
let model;
test.before(() => {
  model = JsModel.load(smollmPath());
});
test.after(() => model.close());

function context(params = {}) {
  // one thread: llama.cpp's threads wait for each other at every op, slow where CPUs are shared
  return new JsContext(model, { nCtx: 512, nThreads: 1, ...params });
}

/** The log-softmax of the logits at each generated position, from a context of its own, one token at a time. */
function reference(promptIds, generated) {
  const c = context({ sampling: 'cpu' });
  const L = lib();
  const n = model.nVocab;
  const out = [];
  c.decode(promptIds);
  for (const tok of generated) {
    const logits = new Float32Array(koffi.view(L.llama_get_logits_ith(c.ptr(), -1), n * 4));
    let max = -Infinity;
    for (let i = 0; i < n; i++) max = Math.max(max, logits[i]);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += Math.exp(logits[i] - max);
    const lse = max + Math.log(sum);
    out.push(Float64Array.from(logits, (x) => x - lse));
    c.decode([tok]);
  }
  c.close();
  return out;
}

function checkAgainst(promptIds, c, k) {
  assert.ok(c.logprobs !== null && c.tokens.length > 0);
  assert.equal(c.logprobs.length, c.tokens.length);
  const ref = reference(promptIds, c.tokens);
  c.tokens.forEach((tok, i) => {
    const entry = c.logprobs[i];
    const dist = ref[i];
    assert.equal(entry.token, tok);
    // its entry in the full distribution, whichever sampler chose it
    assert.ok(Math.abs(entry.logprob - dist[tok]) <= TOL, `${entry.logprob} vs ${dist[tok]}`);
    assert.ok(Buffer.isBuffer(entry.bytes));
    assert.deepEqual(entry.bytes, model.tokenToPiece(tok, true));
    assert.equal(entry.piece, entry.bytes.toString('utf8'));
    assert.equal(entry.top.length, k);
    const values = entry.top.map((t) => t.logprob);
    assert.deepEqual(values, values.slice().sort((a, b) => b - a));
    const kth = Float64Array.from(dist).sort()[dist.length - k];
    for (const t of entry.top) {
      assert.ok(Math.abs(t.logprob - dist[t.token]) <= TOL, `${t.logprob} vs ${dist[t.token]}`);
      assert.ok(dist[t.token] >= kth - TOL, 'really among the k largest');
      assert.deepEqual(t.bytes, model.tokenToPiece(t.token, true));
    }
    assert.equal(new Set(entry.top.map((t) => t.token)).size, k);
    assert.ok(entry.logprob <= entry.top[0].logprob + 1e-6);
  });
}

test('greedy logprobs are the model\'s distribution', () => {
  const ctx = context();
  const prompt = model.tokenize(CHAT, true, true);
  const c = ctx.complete(prompt, 24, greedy, { logprobs: 5, ignoreEos: true });
  assert.equal(c.finishReason, 'length');
  assert.equal(c.tokens.length, 24);
  checkAgainst(prompt, c, 5);
  for (const entry of c.logprobs) assert.equal(entry.top[0].token, entry.token); // greedy: the most probable
  // the same text and tokens as without logprobs
  assert.equal(c.text, ctx.generateStream(prompt, 24, greedy, { ignoreEos: true }).join(''));
  assert.deepEqual(ctx.complete(prompt, 24, greedy, { ignoreEos: true }).tokens, c.tokens);
  // frozen results, as Python's frozen dataclasses
  assert.ok(Object.isFrozen(c) && Object.isFrozen(c.logprobs[0]) && Object.isFrozen(c.logprobs[0].top));
  assert.ok(Object.isFrozen(c.logprobs[0].top[0]));
  ctx.close();
});

test('sampled tokens report the unmodified distribution', () => {
  const ctx = context();
  const prompt = model.tokenize(PROMPT, true, true);
  const params = { temperature: 1.5, topK: 0, topP: 1.0, minP: 0.0, penaltyRepeat: 1.3, seed: 7 };
  const c = ctx.complete(prompt, 20, params, { logprobs: 3, ignoreEos: true });
  checkAgainst(prompt, c, 3);
  // with these settings the sampler strays from the argmax at least once, and the value is still the model's
  assert.ok(c.logprobs.some((e) => e.top[0].token !== e.token));
  // the host top-k path (top_k 40) reports the same kind of values
  const k = ctx.complete(prompt, 12, { temperature: 1.2, topK: 40, seed: 3 }, { logprobs: 2, ignoreEos: true });
  checkAgainst(prompt, k, 2);
  ctx.close();
});

test('completion fields: text, tokens and finishReason', () => {
  const ctx = context();
  const c = ctx.complete(CHAT, 200, greedy);
  assert.equal(c.finishReason, 'stop');
  assert.equal(c.logprobs, null);
  // the end-of-generation token that ended it is not part of the answer
  assert.ok(!c.tokens.some((t) => model.tokenIsEog(t)));
  assert.equal(model.detokenize(c.tokens), c.text);
  assert.equal(c.text, ctx.generate(CHAT, 200, greedy));
  // a stop string: the token that completed it is kept; the text is cut before it
  const full = ctx.complete(PROMPT, 30, greedy, { ignoreEos: true });
  const word = full.text.split(/\s+/).filter(Boolean)[3];
  const cut = ctx.complete(PROMPT, 30, greedy, { ignoreEos: true, stop: [word], logprobs: 2 });
  assert.equal(cut.finishReason, 'stop');
  assert.equal(cut.text, full.text.slice(0, full.text.indexOf(word)));
  assert.deepEqual(cut.tokens, full.tokens.slice(0, cut.tokens.length));
  assert.ok(model.detokenize(cut.tokens).includes(word));
  assert.equal(cut.logprobs.length, cut.tokens.length);
  ctx.close();
});

test('the stream is one chunk per token', async () => {
  const ctx = context();
  const whole = ctx.complete(PROMPT, 16, greedy, { logprobs: 2, ignoreEos: true });
  const chunks = ctx.completeStream(PROMPT, 16, greedy, { logprobs: 2, ignoreEos: true });
  assert.deepEqual(chunks.map((c) => c.finishReason), [...Array(chunks.length - 1).fill(null), 'length']);
  assert.ok(chunks.every((c) => c.tokens.length === 1 && c.logprobs.length === 1));
  assert.equal(chunks.map((c) => c.text).join(''), whole.text);
  assert.deepEqual(chunks.flatMap((c) => c.tokens), whole.tokens);
  assert.deepEqual(chunks.flatMap((c) => c.logprobs), whole.logprobs);
  // the async stream: the same chunks, one at a time
  const streamed = [];
  for await (const chunk of ctx.completeStreamAsync(PROMPT, 16, greedy, { logprobs: 2, ignoreEos: true })) {
    streamed.push(chunk);
  }
  assert.deepEqual(streamed, chunks);
  assert.deepEqual(await ctx.completeAsync(PROMPT, 16, greedy, { logprobs: 2, ignoreEos: true }), whole);
  // maxTokens 0: one chunk, nothing in it
  const only = ctx.completeStream(PROMPT, 0, undefined, { logprobs: 1 });
  assert.equal(only.length, 1);
  assert.deepEqual(only[0].tokens, []);
  assert.deepEqual(only[0].logprobs, []);
  assert.equal(only[0].text, '');
  assert.equal(only[0].finishReason, 'length');
  ctx.close();
});

test('logprobs with a grammar are the model\'s, not the masked ones', () => {
  const ctx = context();
  const prompt = model.tokenize(CHAT, true, true);
  const c = ctx.complete(prompt, 40, greedy, { logprobs: 2, grammar: new Grammar('root ::= "red" | "blue"') });
  assert.ok(['red', 'blue'].includes(c.text), c.text);
  assert.equal(c.finishReason, 'stop');
  checkAgainst(prompt, c, 2);
  ctx.close();
});

test('bad logprobs arguments', async () => {
  const ctx = context({ nCtx: 256 });
  for (const [bad, err] of [[21, RangeError], [-1, RangeError], ['3', TypeError], [true, TypeError],
    [2.5, TypeError]]) {
    assert.throws(() => ctx.complete(PROMPT, 4, undefined, { logprobs: bad }), (e) => e instanceof err
      && /logprobs/.test(e.message));
    assert.throws(() => ctx.completeStream(PROMPT, 4, undefined, { logprobs: bad }), err);
    assert.throws(() => ctx.completeStreamAsync(PROMPT, 4, undefined, { logprobs: bad }), err);
    await assert.rejects(ctx.completeAsync(PROMPT, 4, undefined, { logprobs: bad }), err);
  }
  // generate's options have no logprobs
  assert.throws(() => ctx.generate(PROMPT, 4, undefined, { logprobs: 2 }), TypeError);
  const dev = context({ nCtx: 256, sampling: 'device' });
  assert.throws(() => dev.complete(PROMPT, 4, undefined, { logprobs: 1 }), /logprobs/);
  dev.close();
  assert.equal(ctx.complete(PROMPT, 4, greedy, { logprobs: 20 }).logprobs[0].top.length, 20);
  assert.equal(ctx.complete(PROMPT, 4, greedy, { logprobs: 0 }).logprobs, null);
  ctx.close();
});

test('an aborted completeAsync ends with an AbortError and the context stays usable', async () => {
  const ctx = context();
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(ctx.completeAsync(PROMPT, 8, greedy, { logprobs: 1, signal: ac.signal }),
    (e) => e.name === 'AbortError');
  assert.equal(ctx.complete(PROMPT, 4, greedy, { logprobs: 1 }).tokens.length, 4);
  ctx.close();
});

test('the values equal the Python binding\'s', () => {
  const code = `
import json, sys
from mullama import Model, Context, SamplerParams
m = Model.load(sys.argv[1])
c = Context(m, n_ctx=512, n_threads=1).complete(sys.argv[2], 12, SamplerParams.greedy(), logprobs=3, ignore_eos=True)
print(json.dumps([c.text, c.tokens, [[e.logprob, [[t.token, t.logprob] for t in e.top]] for e in c.logprobs]]))`;
  const [text, tokens, entries] = JSON.parse(execFileSync(python(), ['-c', code, smollmPath(), PROMPT],
    { encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } }));
  const ctx = context();
  const c = ctx.complete(PROMPT, 12, greedy, { logprobs: 3, ignoreEos: true });
  assert.equal(c.text, text);
  assert.deepEqual(c.tokens, tokens);
  c.logprobs.forEach((e, i) => {
    assert.ok(Math.abs(e.logprob - entries[i][0]) <= TOL);
    assert.deepEqual(e.top.map((t) => t.token), entries[i][1].map(([t]) => t));
    e.top.forEach((t, j) => assert.ok(Math.abs(t.logprob - entries[i][1][j][1]) <= TOL));
  });
  ctx.close();
});
