'use strict';
// Speculative decoding in Node (mirrors tests/test_speculative.py): drafted
// tokens change how many decodes run, never which tokens come out.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { JsModel, JsContext, DraftModel, PromptLookup, samplerParamsGreedy } = require('..');
const { lookup } = require('../lib/speculative');
const { ROOT, LLAMA_SRC, python, smollmPath } = require('./helpers/models');

const greedy = samplerParamsGreedy();
const PARAGRAPH = 'The quick brown fox jumps over the lazy dog near the river bank, while the farmer watches from '
  + 'his old wooden porch and drinks a cup of strong black coffee every single morning.';
let model;
let copyPrompt;
test.before(() => {
  model = JsModel.load(smollmPath());
  copyPrompt = model.applyChatTemplate(
    [{ role: 'user', content: `Repeat this text exactly, word for word:\n\n${PARAGRAPH}` }], true);
});
test.after(() => model.close());

function run(prompt, n, params, options = {}) {
  const ctx = new JsContext(model, { nCtx: 1024, nThreads: 1, ...options });
  const tokens = ctx.complete(prompt, n, params, { ignoreEos: true }).tokens;
  const stats = { ...ctx.draftStats };
  ctx.close();
  return [tokens, stats];
}

test('lookup finds the last earlier n-gram', () => {
  const h = [1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3];
  assert.deepEqual(lookup(h, 3, 1, 4), [4, 5, 6, 7]);
  assert.deepEqual(lookup(h, 3, 1, 2), [4, 5]);
  assert.deepEqual(lookup([5, 6, 7, 8], 3, 1, 4), []);
  assert.deepEqual(lookup([5, 6, 5, 8, 5], 3, 1, 4), [8, 5]);
  assert.deepEqual(lookup([5, 6, 5, 8, 5], 3, 2, 4), []);
});

test('prompt lookup and a draft model give the same greedy tokens in fewer decodes', () => {
  const [plain, none] = run(copyPrompt, 40, greedy);
  assert.deepEqual(none, { drafted: 0, accepted: 0, decodes: 39 });
  for (const draft of [new PromptLookup({ n: 3, draftMax: 8 }), new DraftModel(model, { draftMax: 6, pMin: 0 })]) {
    const [tokens, stats] = run(copyPrompt, 40, greedy, { draft });
    assert.deepEqual(tokens, plain, String(draft));
    assert.ok(stats.accepted > 10, JSON.stringify(stats));
    assert.equal(stats.decodes + stats.accepted, 39);
  }
});

test('seeded sampling draws the same tokens with drafts', () => {
  const params = { temperature: 0.8, topK: 40, topP: 0.95, seed: 77 };
  const [plain] = run(copyPrompt, 40, params);
  const [tokens, stats] = run(copyPrompt, 40, params, { draft: new PromptLookup() });
  assert.deepEqual(tokens, plain);
  assert.ok(stats.accepted > 0);
});

test('the async path, stop strings and the cache after a stream left early', async () => {
  const plain = new JsContext(model, { nCtx: 1024, nThreads: 1 });
  const ctx = new JsContext(model, { nCtx: 1024, nThreads: 1, draft: new PromptLookup() });
  const want = plain.generate(copyPrompt, 40, greedy, { stop: ['river'] });
  assert.equal(await ctx.generateAsync(copyPrompt, 40, greedy, { stop: ['river'] }), want);
  assert.deepEqual(ctx.tokens, plain.tokens);
  let n = 0;
  for await (const piece of ctx.generateStreamAsync(copyPrompt, 30, greedy)) {
    if (piece && ++n === 5) break; // with drafts decoded but not checked
  }
  assert.equal(ctx.generate(copyPrompt, 40, greedy, { stop: ['river'] }), want);
  assert.ok(ctx.draftStats.accepted > 0);
  plain.close();
  ctx.close();
});

test("the Python binding's drafted tokens", () => {
  const code = `
import json, sys
from mullama import Model, Context, SamplerParams, PromptLookup
m = Model.load(sys.argv[1])
c = Context(m, n_ctx=1024, n_threads=1, draft=PromptLookup(3, 8))
out = c.complete(sys.argv[2], 32, SamplerParams.greedy(), ignore_eos=True).tokens
print(json.dumps([out, c.draft_stats]))`;
  const [tokens, stats] = JSON.parse(execFileSync(python(), ['-c', code, smollmPath(), copyPrompt],
    { encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } }));
  const ctx = new JsContext(model, { nCtx: 1024, nThreads: 1, draft: new PromptLookup({ n: 3, draftMax: 8 }) });
  assert.deepEqual(ctx.complete(copyPrompt, 32, greedy, { ignoreEos: true }).tokens, tokens);
  assert.deepEqual(ctx.draftStats, stats); // the same drafts, accepted at the same places
  ctx.close();
});

test('bad drafts are refused', () => {
  assert.throws(() => new JsContext(model, { draft: 'lookup' }), TypeError);
  assert.throws(() => new JsContext(model, { draft: new PromptLookup(), sampling: 'device' }), /sampling='device'/);
  assert.throws(() => new PromptLookup({ draftMax: 0 }), RangeError);
  assert.throws(() => new PromptLookup({ n: 2, nMin: 3 }), RangeError);
  assert.throws(() => new DraftModel(model, { pMin: 1.5 }), RangeError);
  assert.throws(() => new DraftModel('model.gguf'), TypeError);
  const other = JsModel.load(path.join(LLAMA_SRC, 'models', 'ggml-vocab-gpt-2.gguf'), { vocabOnly: true });
  assert.throws(() => new JsContext(model, { draft: new DraftModel(other) }),
    { name: 'RangeError', message: /vocabulary is not the target model's: 50257 tokens against the target's 49152/ });
  other.close();
  const ctx = new JsContext(model, { nCtx: 256, nThreads: 1 });
  assert.ok(ctx.generate('Hi', 4, greedy).length > 0);
  ctx.close();
});
