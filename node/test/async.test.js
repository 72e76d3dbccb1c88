'use strict';
// The async API: native work on a worker thread, the event loop free meanwhile,
// AbortSignal and cancel(), and a context that stays consistent and usable.
const test = require('node:test');
const assert = require('node:assert/strict');
const { JsModel, JsContext, samplerParamsGreedy } = require('..');
const { smollmPath } = require('./helpers/models');

const greedy = samplerParamsGreedy();
const PROMPTS = ['Once upon a time', 'The capital of France', 'def add(a, b):'];
let model;
test.before(() => { model = JsModel.load(smollmPath()); });
test.after(() => model.close());

test('generateAsync and generateStreamAsync equal the synchronous API', async () => {
  const ctx = new JsContext(model, { nCtx: 512, nThreads: 1 });
  const sync = ctx.generate(PROMPTS[0], 40, greedy);
  ctx.clearCache();
  assert.equal(await ctx.generateAsync(PROMPTS[0], 40, greedy), sync);
  ctx.clearCache();
  const pieces = [];
  for await (const piece of ctx.generateStreamAsync(PROMPTS[0], 40, greedy)) pieces.push(piece);
  assert.deepEqual(pieces, ctx.generateStream(PROMPTS[0], 40, greedy));
  ctx.close();
});

test('timers keep firing during a long async generation', async () => {
  const ctx = new JsContext(model, { nCtx: 512 });
  // A timer records what the cache held each time the loop let it run; a
  // blocked loop would see only the start and the end.
  const seen = new Set();
  const timer = setInterval(() => seen.add(ctx.nPast), 1);
  const text = await ctx.generateAsync('Tell me a story.', 100, greedy, { ignoreEos: true });
  clearInterval(timer);
  assert.ok(text.length > 0);
  assert.ok(seen.size >= 10, `the timer saw ${seen.size} states: ${[...seen]}`);
});

test('several contexts generate concurrently over one model, each as if alone', async () => {
  const alone = PROMPTS.map((p) => new JsContext(model, { nCtx: 256, nThreads: 1 }).generate(p, 30, greedy));
  const ctxs = PROMPTS.map(() => new JsContext(model, { nCtx: 256, nThreads: 1 }));
  const texts = await Promise.all(ctxs.map((c, i) => c.generateAsync(PROMPTS[i], 30, greedy)));
  assert.deepEqual(texts, alone);
});

test('an AbortSignal stops the stream before its next piece and leaves the context usable', async () => {
  const ctx = new JsContext(model, { nCtx: 2048 });
  const ac = new AbortController();
  let pieces = 0;
  await assert.rejects(async () => {
    for await (const _ of ctx.generateStreamAsync('Tell me a story.', 1000, greedy, { signal: ac.signal, ignoreEos: true })) {
      pieces += 1;
      if (pieces === 3) ac.abort();
    }
  }, { name: 'AbortError' });
  assert.equal(pieces, 3);
  assert.equal(ctx.nPast, ctx.tokens.length);
  assert.ok(ctx.nPast > 3);
  assert.ok(ctx.generate('Hello', 3, greedy).length > 0);
  const done = new AbortController();
  done.abort();
  await assert.rejects(ctx.generateAsync('Hello', 5, greedy, { signal: done.signal }), { name: 'AbortError' });
  ctx.close();
});

test('cancel() during prompt evaluation stops within a micro-batch', async () => {
  const ctx = new JsContext(model, { nCtx: 8192, nBatch: 2048 });
  const prompt = 'The history of the world is long. '.repeat(900);
  const total = model.tokenize(prompt).length;
  let atCancel = -1;
  const timer = setInterval(() => {
    if (ctx.nPast >= 512 && atCancel < 0) {
      atCancel = ctx.nPast;
      ctx.cancel();
    }
  }, 1);
  await assert.rejects(ctx.generateAsync(prompt, 10, greedy), { name: 'AbortError' });
  clearInterval(timer);
  assert.ok(atCancel >= 512);
  assert.ok(ctx.nPast - atCancel <= 512 && ctx.nPast < total, `${atCancel} -> ${ctx.nPast} of ${total}`);
  assert.equal(ctx.nPast, ctx.tokens.length);
  ctx.clearCache();
  assert.ok(ctx.generate('Hello', 3, greedy).length > 0);
  ctx.close();
});

test('one generation at a time: a busy context refuses, and is free again afterwards', async () => {
  const ctx = new JsContext(model, { nCtx: 512 });
  const stream = ctx.generateStreamAsync('Tell me a story.', 50, greedy, { ignoreEos: true });
  await stream.next();
  assert.throws(() => ctx.generate('Hi', 2), /busy/);
  assert.throws(() => ctx.clearCache(), /busy/);
  assert.throws(() => ctx.generateStreamAsync('Hi', 2), /busy/);
  assert.throws(() => ctx.close(), /cancel\(\)/);
  await stream.return();
  assert.ok(ctx.generate('Hi', 2, greedy).length > 0);
  // leaving a for-await loop early frees it too
  let n = 0;
  for await (const _ of ctx.generateStreamAsync('Tell me a story.', 50, greedy)) if (++n === 2) break;
  assert.ok(ctx.generate('Hi', 2, greedy).length > 0);
  // cancel() closes a stream suspended between pieces
  const idle = ctx.generateStreamAsync('Tell me a story.', 50, greedy);
  await idle.next();
  ctx.cancel();
  assert.deepEqual(await idle.next(), { done: true, value: undefined });
  assert.ok(ctx.generate('Hi', 2, greedy).length > 0);
  assert.equal(ctx.nPast, ctx.tokens.length);
  ctx.close();
});

test('bad arguments throw at the call, before any work', () => {
  const ctx = new JsContext(model, { nCtx: 256 });
  assert.throws(() => ctx.generateStreamAsync('Hi', -1), RangeError);
  assert.throws(() => ctx.generateStreamAsync('Hi', 5, greedy, { signal: 'stop' }), TypeError);
  assert.throws(() => ctx.generateStreamAsync('', 5), /empty/);
  assert.ok(ctx.generate('Hi', 2, greedy).length > 0); // not left busy by the refused calls
  ctx.close();
});
