'use strict';
// The two sampling paths (mirrors tests/test_sampling.py): the host chain over
// the top-k candidates, and the chain inside the decode graph.  Every
// expectation is computed in this run, by llama.cpp's own sampler chain
// (tests/native/sampled_ref.c) or by the Python binding.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const { JsModel, JsContext } = require('..');
const { resolveParams } = require('../lib/sampling');
const { ROOT, python, smollmPath } = require('./helpers/models');
const { sampledReference } = require('./helpers/native');

const PROMPT = 'Once upon a time, in a small village by the sea,';
const PARAM_SETS = {
  default: { seed: 7 },
  creative: { temperature: 1.2, topK: 100, topP: 0.95, minP: 0.0, penaltyRepeat: 1.0, seed: 11 },
  'freq-presence': { temperature: 0.9, topK: 30, penaltyRepeat: 1.3, penaltyFreq: 0.4, penaltyPresent: 0.6,
    penaltyLastN: 16, seed: 5 },
  'no-top-k': { temperature: 0.7, topK: 0, topP: 0.9, minP: 0.02, seed: 9 },
  'negative-freq': { temperature: 0.9, topK: 30, penaltyRepeat: 1.0, penaltyFreq: -0.3, penaltyLastN: 16, seed: 4 },
};
// Sets whose device path cuts to topK + window on the device and finishes on
// the host (the host path's tokens); the others run llama.cpp's device samplers.
const DEVICE_CUT = new Set(['default', 'creative', 'freq-presence']);
let model;
test.before(() => { model = JsModel.load(smollmPath()); });
test.after(() => model.close());

function generated(ctx, params, n) {
  const nPrompt = model.tokenize(PROMPT, true, true).length;
  ctx.clearCache();
  ctx.generate(PROMPT, n, params, { ignoreEos: true });
  return ctx.tokens.slice(nPrompt); // all but the last sampled token (never decoded)
}

for (const [name, params] of Object.entries(PARAM_SETS)) {
  for (const sampling of ['cpu', 'device']) {
    test(`${sampling} path samples what llama.cpp's chain samples: ${name}`, () => {
      const cut = sampling === 'device' && DEVICE_CUT.has(name);
      const ref = sampledReference(smollmPath(), sampling === 'cpu' || cut ? 'host' : 'device', resolveParams(params),
        PROMPT, 40);
      const ctx = new JsContext(model, { nCtx: 512, sampling });
      try {
        assert.deepEqual(generated(ctx, params, 40), ref.slice(0, 39));
        if (sampling === 'device') {
          const names = ctx._attached.get(0).describe();
          assert.equal(names[0] === '+top-k' && names[1] === 'top-n-sigma', cut, names.join(','));
          assert.ok(cut || names[0].startsWith('+'));
        }
      } finally {
        ctx.close();
      }
    });
  }
}

test('sampled output equals the Python binding on both paths', () => {
  const code = `
import json, sys
from mullama import Model, Context, SamplerParams
m = Model.load(sys.argv[1])
out = {}
for path in ("cpu", "device"):
    c = Context(m, n_ctx=512, sampling=path)
    out[path] = c.generate(sys.argv[2], 40, SamplerParams(seed=99, penalty_last_n=-1), ignore_eos=True)
print(json.dumps(out))`;
  const py = JSON.parse(execFileSync(python(), ['-c', code, smollmPath(), PROMPT],
    { encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } }));
  for (const sampling of ['cpu', 'device']) {
    const ctx = new JsContext(model, { nCtx: 512, sampling });
    assert.equal(ctx.generate(PROMPT, 40, { seed: 99, penaltyLastN: -1 }, { ignoreEos: true }), py[sampling]);
    ctx.close();
  }
});

test('typical-p runs its part on the host; switching paths in one context', () => {
  const dev = new JsContext(model, { nCtx: 512, sampling: 'device' });
  const host = new JsContext(model, { nCtx: 512, sampling: 'cpu' });
  try {
    const p = { typicalP: 0.9, topK: 0, seed: 13 };
    const a = generated(dev, p, 30);
    assert.deepEqual(dev._attached.get(0).describe(), ['+penalties', 'typical', 'top-p', 'min-p', 'temp', 'dist']);
    assert.deepEqual(a, generated(host, p, 30));
    const want = generated(dev, { seed: 21 }, 20);
    for (let i = 0; i < 3; i++) {
      dev.generate(PROMPT, 5, { seed: 5, topK: 7 }); // another chain replaces it
      assert.deepEqual(generated(dev, { seed: 21 }, 20), want);
    }
  } finally {
    dev.close();
    host.close();
  }
});

test('seeded runs reproduce on each path', () => {
  for (const sampling of ['cpu', 'device']) {
    const ctx = new JsContext(model, { nCtx: 512, sampling });
    const a = generated(ctx, { seed: 42 }, 30);
    assert.deepEqual(generated(ctx, { seed: 42 }, 30), a);
    assert.notDeepEqual(generated(ctx, { seed: 43 }, 30), a);
    ctx.close();
  }
});

test('the sampling option is checked', () => {
  assert.throws(() => new JsContext(model, { nCtx: 256, sampling: 'gpu' }), RangeError);
  assert.throws(() => new JsContext(model, { nCtx: 256, sampling: 1 }), TypeError);
  const ctx = new JsContext(model, { nCtx: 256 });
  assert.equal(ctx.sampling, 'auto');
  // auto samples on the device exactly where the logits are made on one
  assert.equal(ctx._onDevice(resolveParams({})), model._outputOnDevice);
  ctx.close();
});
