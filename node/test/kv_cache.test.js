'use strict';
// KV-cache types and the flash-attention switch in Node (mirrors the JsContext
// cases of tests/test_kv_cache.py): what llama.cpp allocates, what it refuses,
// what it generates, and the same greedy tokens as the Python binding.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const { JsModel, JsContext, samplerParamsGreedy, setLogHandler } = require('..');
const { KV_TYPES } = require('../lib/kv_cache');
const { ROOT, python, smollmPath } = require('./helpers/models');

const PROMPT = 'The history of the printing press';
const greedy = samplerParamsGreedy();
let model;
test.before(() => {
  model = JsModel.load(smollmPath());
});
test.after(() => model.close());

function context(params = {}) {
  // one thread: llama.cpp's threads wait for each other at every op, slow where CPUs are shared
  return new JsContext(model, { nThreads: 1, ...params });
}

/** A context, and llama.cpp's own report of the cache it allocated ('llama_kv_cache: size = X MiB ...'). */
function contextLoggingItsCache(params) {
  const lines = [];
  setLogHandler((level, line) => lines.push(line));
  let ctx;
  try {
    ctx = context(params);
  } finally {
    setLogHandler(null);
  }
  const sizes = lines.map((l) => /llama_kv_cache: size =\s*([\d.]+) MiB/.exec(l)).filter(Boolean).map((m) => Number(m[1]));
  assert.ok(sizes.length, 'llama.cpp did not log its cache size');
  return [ctx, sizes[sizes.length - 1]];
}

for (const [typeK, typeV] of [['f16', 'f16'], ['q8_0', 'q8_0'], ['q4_0', 'q4_0'], ['bf16', 'f16'],
  ['f32', 'f32'], ['q5_1', 'iq4_nl']]) {
  test(`typeK=${typeK} typeV=${typeV} allocates what kvBytes says, and generates`, () => {
    const [ctx, mib] = contextLoggingItsCache({ nCtx: 512, typeK, typeV, flashAttn: true });
    assert.deepEqual([ctx.typeK, ctx.typeV], [typeK, typeV]);
    assert.ok(Math.abs(ctx.kvBytes / 2 ** 20 - mib) <= 0.01, `${ctx.kvBytes / 2 ** 20} vs ${mib}`);
    const c = ctx.complete(PROMPT, 12, greedy, { ignoreEos: true });
    assert.equal(c.tokens.length, 12);
    assert.ok(c.text.trim());
    ctx.close();
  });
}

test('the defaults are f16 keys and values', () => {
  const ctx = context({ nCtx: 256 });
  assert.deepEqual([ctx.typeK, ctx.typeV], ['f16', 'f16']);
  ctx.close();
  assert.throws(() => ctx.kvBytes, /closed/i);
});

test('quantized caches are smaller in the expected ratio', () => {
  const bytes = (params) => {
    const ctx = context({ nCtx: 1024, ...params });
    const n = ctx.kvBytes;
    ctx.close();
    return n;
  };
  const f16 = bytes({});
  assert.equal(bytes({ typeK: 'q8_0', typeV: 'q8_0', flashAttn: true }) / f16, 34 / 64);
  assert.equal(bytes({ typeK: 'q4_0', typeV: 'q4_0', flashAttn: true }) / f16, 18 / 64);
});

for (const [flashAttn, reported] of [[true, 'enabled'], [false, 'disabled']]) {
  test(`the flash-attention switch reaches llama.cpp: ${flashAttn}`, () => {
    const lines = [];
    setLogHandler((level, line) => lines.push(line));
    let ctx;
    try {
      ctx = context({ nCtx: 256, flashAttn });
    } finally {
      setLogHandler(null);
    }
    const said = lines.filter((l) => /llama_context: flash_attn\s*=/.test(l));
    assert.ok(said.length);
    assert.equal(said[said.length - 1].split('=').pop().trim(), reported);
    assert.equal(ctx.complete(PROMPT, 8, greedy, { ignoreEos: true }).tokens.length, 8);
    ctx.close();
  });
}

test('refused combinations and bad arguments', () => {
  assert.throws(() => context({ nCtx: 256, typeV: 'q8_0', flashAttn: false }),
    (e) => e instanceof RangeError && /flash attention/.test(e.message));
  assert.throws(() => context({ nCtx: 256, typeK: 'q3_k' }), (e) => e instanceof RangeError && /q3_k/.test(e.message));
  assert.throws(() => context({ nCtx: 256, typeV: 8 }), (e) => e instanceof TypeError && /typeV/.test(e.message));
  // (null, like undefined, means the default, as for every JsContext option read with ??)
  for (const bad of ['on', 1, 'true', {}]) {
    assert.throws(() => context({ nCtx: 256, flashAttn: bad }), (e) => e instanceof TypeError && /flashAttn/.test(e.message));
  }
  // a quantized K cache alone is allowed without flash attention
  const ctx = context({ nCtx: 256, typeK: 'q8_0', flashAttn: false });
  assert.ok(ctx.complete(PROMPT, 4, greedy).tokens.length);
  ctx.close();
  assert.deepEqual(new Set(Object.keys(KV_TYPES)),
    new Set(['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'iq4_nl']));
});

test("a q8_0 cache gives the Python binding's greedy tokens and kv_bytes", () => {
  const code = `
import json, sys
from mullama import Model, Context, SamplerParams
m = Model.load(sys.argv[1])
c = Context(m, n_ctx=256, n_threads=1, type_k="q8_0", type_v="q8_0", flash_attn=True)
print(json.dumps([c.kv_bytes, c.complete(sys.argv[2], 16, SamplerParams.greedy(), ignore_eos=True).tokens]))`;
  const [kvBytes, tokens] = JSON.parse(execFileSync(python(), ['-c', code, smollmPath(), PROMPT],
    { encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } }));
  const ctx = context({ nCtx: 256, typeK: 'q8_0', typeV: 'q8_0', flashAttn: true });
  assert.equal(ctx.kvBytes, kvBytes);
  assert.deepEqual(ctx.complete(PROMPT, 16, greedy, { ignoreEos: true }).tokens, tokens);
  ctx.close();
});
