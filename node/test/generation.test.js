'use strict';
// JsContext on SmolLM2: greedy output identical to llama.cpp's own path and to
// the Python binding, streaming pieces, stop strings, cache reuse, sampler
// parameters and errors.  Every expectation is computed in this run.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const { JsModel, JsContext, ContextFullError, samplerParamsGreedy, samplerParamsCreative, samplerParamsPrecise }
  = require('..');
const { ROOT, python, smollmPath } = require('./helpers/models');
const { greedyReference } = require('./helpers/native');
const { resolveParams } = require('../lib/sampling');

const CHAT = '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'
  + '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n';
const PROMPTS = [[CHAT, 48], ['Once upon a time', 40], ['def fibonacci(n):', 40], ['Les fleurs du jardin', 32]];
const greedy = samplerParamsGreedy();
let model;
let ctx;
test.before(() => {
  model = JsModel.load(smollmPath());
  ctx = new JsContext(model, { nCtx: 1024, nThreads: 2 });
});
test.after(() => {
  ctx.close();
  model.close();
});

for (const [prompt, n] of PROMPTS) {
  test(`greedy output equals llama.cpp's argmax decoding: ${JSON.stringify(prompt.slice(0, 20))}`, () => {
    const [refPrompt, refIds] = greedyReference(smollmPath(), prompt, n);
    assert.deepEqual(model.tokenize(prompt, true, true), refPrompt);
    ctx.clearCache();
    const text = ctx.generate(prompt, n, greedy);
    assert.equal(text, model.detokenize(refIds));
    const generated = ctx.tokens.slice(refPrompt.length);
    assert.deepEqual(generated, refIds.slice(0, generated.length));
    assert.ok(generated.length >= refIds.length - 1);
  });
}

test('greedy output equals the Python binding token for token', () => {
  const code = `
import json, sys
from mullama import Model, Context, SamplerParams
m = Model.load(sys.argv[1])
out = []
for p in json.loads(sys.argv[2]):
    c = Context(m, n_ctx=1024, n_threads=2)
    text = c.generate(p, max_tokens=32, params=SamplerParams.greedy())
    out.append([text, c.tokens])
print(json.dumps(out))`;
  const prompts = PROMPTS.map(([p]) => p);
  const py = JSON.parse(execFileSync(python(), ['-c', code, smollmPath(), JSON.stringify(prompts)],
    { encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } }));
  prompts.forEach((p, i) => {
    const c = new JsContext(model, { nCtx: 1024, nThreads: 2 });
    assert.equal(c.generate(p, 32, greedy), py[i][0]);
    assert.deepEqual(c.tokens, py[i][1]);
    c.close();
  });
});

test('a token-id prompt equals the text prompt', () => {
  ctx.clearCache();
  const a = ctx.generate('Hello, AI!', 20, greedy);
  ctx.clearCache();
  const b = ctx.generateFromTokens(model.tokenize('Hello, AI!'), 20, greedy);
  assert.ok(a && a === b);
  assert.throws(() => ctx.generateFromTokens('Hello', 5), TypeError);
});

test('generateStream pieces join to generate and never split a UTF-8 character', () => {
  ctx.clearCache();
  const full = ctx.generate('Write a story about a dragon.', 80, greedy, { ignoreEos: true });
  ctx.clearCache();
  const pieces = ctx.generateStream('Write a story about a dragon.', 80, greedy, { ignoreEos: true });
  assert.equal(pieces.join(''), full);
  assert.ok(pieces.length > 40 && pieces.every((p) => p.length > 0));
  const prompt = '<|im_start|>user\nRepeat exactly: 🦙🦙 日本語 café 🚀🚀<|im_end|>\n<|im_start|>assistant\n';
  const uni = ctx.generateStream(prompt, 40, greedy);
  assert.ok(!uni.slice(0, -1).join('').includes('\ufffd'));
  assert.ok(/[\u{10000}-\u{10FFFF}]|[\u3040-\u9fff]/u.test(uni.join('')));
});

test('the second chat turn evaluates only the new tokens', () => {
  ctx.clearCache();
  const msgs = [['system', 'You are terse.'], ['user', 'Name a color.']];
  const p1 = model.applyChatTemplate(msgs);
  const answer = ctx.generate(p1, 20, greedy);
  assert.equal(ctx.lastPromptEvaluated, model.tokenize(p1, true, true).length);
  msgs.push(['assistant', answer], ['user', 'Another one.']);
  const p2 = model.applyChatTemplate(msgs);
  const ids2 = model.tokenize(p2, true, true);
  const before = ctx.tokens;
  const warm = ctx.generate(p2, 10, greedy);
  let common = 0;
  while (common < before.length && before[common] === ids2[common]) common++;
  assert.equal(ctx.lastPromptEvaluated, ids2.length - common);
  assert.ok(ctx.lastPromptEvaluated < ids2.length / 2);
  ctx.clearCache();
  assert.equal(ctx.nPast, 0);
  assert.equal(ctx.generate(p2, 10, greedy), warm);
  assert.equal(ctx.lastPromptEvaluated, ids2.length);
});

test('stop strings', () => {
  ctx.clearCache();
  const full = ctx.generate(CHAT, 30, greedy);
  const words = full.slice(Math.floor(full.length / 2)).split(/\s+/).map((w) => w.replace(/[.,;:!?"'()]/g, ''));
  const stop = words.find((w) => w.length >= 4);
  const cut = ctx.generate(CHAT, 30, greedy, { stop: [stop] });
  assert.equal(cut, full.slice(0, full.indexOf(stop)));
  const prefix = stop.slice(0, -1);
  assert.equal(ctx.generateStream(CHAT, 30, greedy, { stop: prefix }).join(''), full.slice(0, full.indexOf(prefix)));
  assert.throws(() => ctx.generate('x', 5, greedy, { stop: [''] }), RangeError);
  assert.throws(() => ctx.generate('x', 5, greedy, { stop: [3] }), TypeError);
});

test('long prompts in batches give the same result', () => {
  const prompt = 'The quick brown fox jumps over the lazy dog. '.repeat(60);
  const small = new JsContext(model, { nCtx: 1024, nBatch: 64 });
  const big = new JsContext(model, { nCtx: 1024, nBatch: 1024 });
  assert.equal(small.nBatch, 64);
  assert.equal(small.generate(prompt, 16, greedy), big.generate(prompt, 16, greedy));
  assert.ok(small.nPast === big.nPast && small.nPast > 600);
  small.close();
  big.close();
});

test('a prompt that does not fit throws ContextFullError before any work', () => {
  const c = new JsContext(model, { nCtx: 64 });
  assert.equal(c.nCtx, 256); // llama.cpp rounds the context up to a multiple of 256
  c.decode(model.tokenize('keep'));
  const before = c.tokens;
  assert.throws(() => c.generate('word '.repeat(300), 5), (e) => e instanceof ContextFullError
    && e instanceof RangeError && /nCtx=256/.test(e.message));
  assert.deepEqual(c.tokens, before);
  c.close();
});

test('generation that reaches the end of the context throws ContextFullError', () => {
  const c = new JsContext(model, { nCtx: 256 });
  assert.throws(() => c.generate('Tell me a long story.', 400, greedy, { ignoreEos: true }),
    (e) => e instanceof ContextFullError && /context is full/.test(e.message));
  assert.equal(c.nPast, 256);
  c.clearCache();
  assert.equal(typeof c.generate('Hi', 3, greedy), 'string');
  c.close();
});

test('bad arguments', () => {
  assert.throws(() => ctx.generate('Hi', -1), { name: 'RangeError', message: /maxTokens/ });
  assert.throws(() => ctx.generate('Hi', '3'), TypeError);
  assert.throws(() => ctx.generate('Hi', 2.5), TypeError);
  assert.throws(() => ctx.generate('', 0), /empty/);
  assert.throws(() => ctx.generateFromTokens([], 5), /empty/);
  assert.equal(ctx.generate('Hi', 0), '');
  assert.throws(() => ctx.generate(42), TypeError);
  assert.throws(() => ctx.generate('Hi', 5, { temprature: 0 }), /no option 'temprature'/);
  assert.throws(() => ctx.generate('Hi', 5, greedy, { ignoreEOS: true }), TypeError);
  assert.throws(() => ctx.generate('Hi', 5, greedy, { signal: new AbortController().signal }), TypeError);
  assert.throws(() => ctx.decode([]), RangeError);
  assert.throws(() => ctx.decode([1e9]), { name: 'RangeError', message: /outside the vocabulary/ });
});

test('seeds reproduce, seed 0 draws a fresh one', () => {
  const p = { seed: 1234, temperature: 1.0 };
  assert.equal(ctx.generate('Once upon a time', 30, p), ctx.generate('Once upon a time', 30, p));
  const outs = new Set([0, 1, 2].map(() => ctx.generate('Once upon a time', 30, { temperature: 1.0 })));
  assert.ok(outs.size >= 2);
});

test('sampler chains are built once per parameter set, in llama.cpp order', () => {
  ctx.generate('Hi', 2, { seed: 7 });
  const chain = [...ctx._chains.values()].pop();
  ctx.generate('Hi', 2, { seed: 7 });
  assert.equal([...ctx._chains.values()].pop(), chain);
  assert.deepEqual(chain.describe(), ['penalties', 'top-k', 'top-p', 'min-p', 'temp', 'dist']);
  assert.deepEqual(ctx._chain(resolveParams(greedy)).describe(), ['greedy']);
  assert.deepEqual(ctx._chain(resolveParams({ typicalP: 0.5, penaltyRepeat: 1.0 })).describe(),
    ['top-k', 'typical', 'top-p', 'min-p', 'temp', 'dist']);
});

test('presets and parameter validation', () => {
  const pick = (p) => [p.temperature, p.topK, p.topP, p.minP, p.penaltyRepeat];
  assert.deepEqual(pick(samplerParamsGreedy()), [0.0, 1, 1.0, 0.0, 1.0]);
  assert.deepEqual(pick(samplerParamsCreative()), [1.2, 100, 0.95, 0.0, 1.0]);
  assert.deepEqual(pick(samplerParamsPrecise()), [0.3, 20, 0.8, 0.05, 1.1]);
  for (const [field, value] of [['temperature', -0.1], ['topP', 1.5], ['topP', 0], ['minP', -1], ['typicalP', 2],
    ['penaltyRepeat', 0], ['topK', -1], ['penaltyLastN', -2], ['seed', -1], ['seed', 2 ** 32],
    ['temperature', NaN], ['penaltyFreq', Infinity]]) {
    assert.throws(() => ctx.generate('Hi', 1, { [field]: value }), { name: 'RangeError', message: new RegExp(field) });
  }
  for (const [field, value] of [['temperature', 'hot'], ['topK', 1.5], ['seed', null], ['topK', true]]) {
    assert.throws(() => ctx.generate('Hi', 1, { [field]: value }), TypeError);
  }
});

test('context properties and validation', () => {
  const c = new JsContext(model);
  assert.equal(c.nCtx, model.nCtxTrain);
  assert.equal(c.nBatch, 2048);
  c.close();
  const d = new JsContext(model, { nCtx: 4096, nBatch: 512, nThreads: 1 });
  assert.deepEqual([d.nCtx, d.nBatch, d.nThreads], [4096, 512, 1]);
  assert.equal(String(d), 'JsContext(nCtx=4096, nBatch=512, nPast=0)');
  d.close();
  d.close();
  assert.equal(String(d), 'JsContext(closed)');
  assert.throws(() => d.generate('Hi'), /closed/);
  assert.throws(() => new JsContext(model, { nCtx: model.nCtxTrain + 1 }), { name: 'RangeError', message: /nCtxTrain/ });
  for (const bad of [{ nBatch: 0 }, { nCtx: -1 }, { nThreads: -2 }, { nBatch: 1e9 }]) {
    assert.throws(() => new JsContext(model, bad), RangeError);
  }
  for (const bad of [{ nCtx: '1' }, { embeddings: 1 }, { nBatch: 2.5 }, { nctx: 5 }]) {
    assert.throws(() => new JsContext(model, bad), TypeError);
  }
  assert.throws(() => new JsContext('model.gguf'), TypeError);
});

test("a stop string's token leaves the cache again", () => {
  // each token goes to the decoder before its text is made; the one whose text completes a stop string is dropped
  const prompt = 'Write a story about a dragon.';
  const promptIds = Array.from(model.tokenize(prompt, true, true));
  ctx.clearCache();
  const full = ctx.generate(prompt, 40, greedy, { ignoreEos: true });
  const gen = ctx.tokens.slice(promptIds.length);
  let j = -1;
  let stop = '';
  for (let k = 5; k < gen.length; k++) {
    const piece = model.tokenToPiece(gen[k]).toString('utf8');
    if (piece.trim().length >= 3 && full.indexOf(piece) === model.detokenize(gen.slice(0, k)).length) {
      j = k;
      stop = piece;
      break;
    }
  }
  assert.ok(j > 0, 'no token with a unique piece of 3+ characters in the answer');
  ctx.clearCache();
  assert.equal(ctx.generate(prompt, 40, greedy, { ignoreEos: true, stop: [stop] }), full.slice(0, full.indexOf(stop)));
  assert.deepEqual(Array.from(ctx.tokens), promptIds.concat(gen.slice(0, j)));
  assert.equal(ctx.generate(prompt, 40, greedy, { ignoreEos: true }), full);
});
