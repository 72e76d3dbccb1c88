'use strict';
// LoRA adapters in Node (mirrors the Context half of tests/test_lora.py): an
// adapter made with PEFT on SmolLM2, converted and merged by llama.cpp's own
// tools (scripts/make_lora.py); applied at scale 1 it must give the merged
// model's greedy tokens exactly.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { JsModel, JsContext, LoraAdapter, samplerParamsGreedy } = require('..');
const { loraPaths, smollmPath } = require('./helpers/models');

const PROMPT = 'The history of the printing press';
const CHAT = '<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n';
const greedy = samplerParamsGreedy();
const GEN = { ignoreEos: true };

let files;
let base;
let adapter;
const merged = {};
const plain = {};
let tmp;

function context(model, params = {}) {
  return new JsContext(model, { nCtx: 256, ...params });
}

function tokens(ctx, prompt, n = 16) {
  return ctx.complete(prompt, n, greedy, GEN).tokens;
}

test.before(() => {
  files = loraPaths();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-lora-'));
  const m = JsModel.load(files.merged);
  const mc = context(m);
  for (const p of [PROMPT, CHAT]) merged[p] = tokens(mc, p);
  mc.close();
  m.close();
  base = JsModel.load(files.base_f32);
  adapter = base.loadLora(files.adapter);
  const pc = context(base);
  for (const p of [PROMPT, CHAT]) plain[p] = tokens(pc, p);
  pc.close();
});

test.after(() => {
  adapter.close();
  base.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('scale 1 gives the merged model\'s tokens, scale 0 and none the base\'s', () => {
  assert.notDeepEqual(merged[PROMPT], plain[PROMPT]); // the adapter really changes the output
  const ctx = context(base);
  assert.deepEqual(ctx.loras, new Map());
  for (const p of [PROMPT, CHAT]) {
    ctx.setLoras(new Map([[adapter, 1.0]]));
    assert.deepEqual(ctx.loras, new Map([[adapter, 1.0]]));
    assert.deepEqual(tokens(ctx, p), merged[p]);
    ctx.setLoras([[adapter, 0]]);
    assert.deepEqual(ctx.loras, new Map());
    assert.deepEqual(tokens(ctx, p), plain[p]);
    ctx.setLoras([[adapter, 1]]); // the same set as pairs
    assert.deepEqual(tokens(ctx, p), merged[p]);
    ctx.setLoras(null);
    assert.deepEqual(ctx.loras, new Map());
    assert.deepEqual(tokens(ctx, p), plain[p]);
  }
  ctx.setLoras(new Map([[adapter, 1]]));
  ctx.setLoras([]);
  assert.equal(ctx.loras.size, 0);
  ctx.close();
});

test('an async generation applies the adapters too', async () => {
  const ctx = context(base);
  ctx.setLoras(new Map([[adapter, 1]]));
  assert.deepEqual((await ctx.completeAsync(PROMPT, 16, greedy, GEN)).tokens, merged[PROMPT]);
  ctx.close();
});

test('switching adapters evaluates the prompt again', () => {
  const ctx = context(base);
  const n = base.tokenize(PROMPT, true).length;
  ctx.complete(PROMPT, 8, greedy);
  ctx.complete(PROMPT, 8, greedy);
  assert.equal(ctx.lastPromptEvaluated, 1); // the same adapters: the cached prefix is reused
  ctx.setLoras(new Map([[adapter, 1]]));
  assert.deepEqual(tokens(ctx, PROMPT), merged[PROMPT]);
  assert.equal(ctx.lastPromptEvaluated, n); // not the base's cache
  ctx.complete(PROMPT, 8, greedy);
  assert.equal(ctx.lastPromptEvaluated, 1);
  ctx.setLoras(new Map([[adapter, 1]])); // the same set again: the cache stays usable
  ctx.complete(PROMPT, 8, greedy);
  assert.equal(ctx.lastPromptEvaluated, 1);
  ctx.setLoras(null);
  assert.deepEqual(tokens(ctx, PROMPT), plain[PROMPT]);
  assert.equal(ctx.lastPromptEvaluated, n);
  // a state loaded is taken as made with the adapters applied now
  const saved = ctx.stateBytes();
  ctx.clearCache();
  ctx.loadStateBytes(saved);
  ctx.complete(PROMPT, 4, greedy);
  assert.equal(ctx.lastPromptEvaluated, 1);
  ctx.close();
});

test('one adapter serves many contexts and outlives close()', () => {
  const m = JsModel.load(files.base_f32);
  const a = m.loadLora(files.adapter);
  assert.ok(a instanceof LoraAdapter);
  assert.equal(a.alpha, 16);
  assert.equal(a.model, m);
  assert.equal(a.path, files.adapter);
  assert.match(String(a), /^LoraAdapter\("lora-adapter-f32\.gguf"\)$/);
  const c1 = context(m);
  const c2 = context(m);
  c1.setLoras(new Map([[a, 1]]));
  c2.setLoras(new Map([[a, 1]]));
  a.close(); // still applied by two contexts: freed only when neither uses it
  assert.equal(a.closed, true);
  assert.match(String(a), /closed/);
  assert.deepEqual(tokens(c1, PROMPT), merged[PROMPT]);
  c1.close();
  assert.deepEqual(tokens(c2, PROMPT), merged[PROMPT]);
  assert.throws(() => c2.setLoras(new Map([[a, 1]])), (e) => e.constructor === Error && /closed/.test(e.message));
  assert.deepEqual(c2.loras, new Map([[a, 1]])); // unchanged by the refusal
  assert.equal(a._held.freed, false);
  c2.setLoras(null); // lets the adapter go: it is freed now
  assert.equal(a._held.freed, true);
  a.close(); // again: nothing
  const a2 = m.loadLora(files.adapter);
  c2.setLoras(new Map([[a2, 1]]));
  m.close(); // the model is freed after its last context and adapter
  a2.close();
  assert.equal(m._held.freed, false);
  assert.equal(a2._held.freed, false);
  c2.close();
  assert.equal(a2._held.freed, true);
  assert.equal(m._held.freed, true);
  assert.throws(() => m.loadLora(files.adapter), /closed/);
  // a second adapter object for the same file is a distinct adapter
  const m2 = JsModel.load(files.base_f32);
  const b1 = m2.loadLora(files.adapter);
  const b2 = new LoraAdapter(m2, files.adapter);
  const c3 = context(m2);
  c3.setLoras([[b1, 0.5], [b2, 0.5]]); // two halves: the whole adapter, up to rounding
  assert.equal(c3.loras.size, 2);
  c3.close();
  b1.close();
  b2.close();
  m2.close();
});

test('bad adapter files are refused with the reason', () => {
  assert.throws(() => base.loadLora(files.wrong_adapter), (e) => e.constructor === Error
    && /^Failed to load LoRA adapter /.test(e.message) && /shape|wrong base/.test(e.message));
  assert.throws(() => base.loadLora(smollmPath()), /general\.type|adapter/); // a model, not an adapter
  assert.throws(() => base.loadLora(path.join(tmp, 'missing.gguf')), /No such file or directory/);
  assert.throws(() => base.loadLora(tmp), /is a directory/);
  assert.throws(() => base.loadLora(''), /empty/);
  const junk = path.join(tmp, 'junk.gguf');
  fs.writeFileSync(junk, 'not a gguf at all');
  assert.throws(() => base.loadLora(junk), /not a valid GGUF/);
  const truncated = path.join(tmp, 'truncated.gguf');
  fs.writeFileSync(truncated, fs.readFileSync(files.adapter).subarray(0, 200000));
  assert.throws(() => base.loadLora(truncated), (e) => e.constructor === Error);
  assert.throws(() => base.loadLora(42), TypeError);
  assert.throws(() => new LoraAdapter({}, files.adapter), TypeError);
});

test('bad arguments to setLoras', () => {
  const ctx = context(base, { nCtx: 128 });
  const other = JsModel.load(smollmPath());
  const oc = context(other, { nCtx: 128 });
  try {
    const typeErrors = [
      [adapter], // not pairs
      [[adapter]],
      [[adapter, 1, 2]],
      { [String(adapter)]: 1 }, // a plain object
      'adapter',
      new Map([['name', 1]]),
      new Map([[adapter, '1']]),
      new Map([[adapter, true]]),
      [[adapter, 1n]],
    ];
    for (const bad of typeErrors) assert.throws(() => ctx.setLoras(bad), TypeError, String(bad));
    for (const bad of [NaN, Infinity, -Infinity]) {
      assert.throws(() => ctx.setLoras(new Map([[adapter, bad]])), RangeError);
    }
    assert.throws(() => ctx.setLoras([[adapter, 1], [adapter, 1]]), /twice/);
    assert.throws(() => oc.setLoras(new Map([[adapter, 1]])), (e) => e.constructor === Error
      && /another model/.test(e.message));
    assert.deepEqual(ctx.loras, new Map());
    assert.ok(ctx.complete(PROMPT, 4, greedy).tokens.length); // still usable
    ctx.setLoras(new Map([[adapter, -0.5]])); // negative scales subtract the adapter
    assert.deepEqual(ctx.loras, new Map([[adapter, -0.5]]));
  } finally {
    ctx.close();
    oc.close();
    other.close();
  }
  assert.throws(() => ctx.setLoras(null), /closed/);
});
