'use strict';
// One table of argument cases, one verdict each, run through both bindings (mirrors
// tests/test_binding_rules.py): tests/data/binding_cases.json.  Its names are Python's, taken here in
// camelCase; Python's ValueError is a RangeError here.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { JsModel, JsContext } = require('..');
const { resolveParams } = require('../lib/sampling');
const rules = require('../lib/_rules');
const { smollmPath } = require('./helpers/models');

const CASES = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'tests', 'data', 'binding_cases.json'), 'utf8'));
const camelArgs = (args) => Object.fromEntries(Object.entries(args).map(([k, val]) => [rules.camel(k), val]));

function verdict(fn) {
  try {
    fn();
  } catch (e) {
    if (e instanceof TypeError) return 'TypeError';
    if (e instanceof RangeError) return 'ValueError';
    throw e;
  }
  return 'ok';
}

let model;
test.before(() => { model = JsModel.load(smollmPath()); });
test.after(() => model.close());

for (const [args, expected] of CASES.context) {
  test(`context ${JSON.stringify(args)}: ${expected}`, () => {
    assert.equal(verdict(() => new JsContext(model, { nThreads: 1, ...camelArgs(args) }).close()), expected);
  });
}

for (const [args, expected] of CASES.sampler) {
  test(`sampler ${JSON.stringify(args)}: ${expected}`, () => {
    assert.equal(verdict(() => resolveParams(camelArgs(args))), expected);
  });
}

test('sampler defaults are the shared ones', () => {
  const d = resolveParams({});
  for (const [name, [dflt]] of Object.entries(rules.SAMPLER_FIELDS)) assert.equal(d[name], dflt, name);
  assert.deepEqual(Object.keys(rules.SAMPLER_FIELDS), rules.RULES.sampler_fields.map(([n]) => rules.camel(n)));
});
