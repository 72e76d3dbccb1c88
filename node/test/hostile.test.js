'use strict';
// Hostile input across the public API (mirrors tests/test_reliability.py::test_hostile_input):
// every case of test/helpers/hostile_cases.js runs in ONE child Node process, so
// that a crash (an abort in C, a segfault) fails the run and names the case it
// happened in, instead of taking the test runner down.  Each case must throw
// the right class (wrong type -> TypeError, out-of-range number or token id ->
// RangeError, other failures -> Error, as lib/_validate.js does) with a
// message that names the problem, or succeed where it says so.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { smollmPath, minilmPath } = require('./helpers/models');
const { CASES } = require('./helpers/hostile_cases');

const CHILD = path.join(__dirname, 'helpers', 'hostile_cases.js');
let results = null;

/** A result as the assertion message shows it (an unexpected return value can be long). */
function show(got) {
  const s = JSON.stringify(got);
  return s.length > 600 ? `${s.slice(0, 600)}...` : s;
}
let childFailure = null;

test.before(() => {
  const r = spawnSync(process.execPath, [CHILD, smollmPath(), minilmPath()],
    { encoding: 'utf8', timeout: 600_000, maxBuffer: 64 << 20 });
  const lines = (r.stdout || '').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  const started = lines.filter((d) => 'start' in d).map((d) => d.start);
  const finished = new Set(lines.filter((d) => 'case' in d).map((d) => d.case));
  const last = started[started.length - 1];
  if (r.status !== 0 || !lines.length || !lines[lines.length - 1].done) {
    const where = last === undefined ? 'before the first case'
      : finished.has(last) ? `after case ${JSON.stringify(last)}` : `during case ${JSON.stringify(last)}`;
    childFailure = `the child died (status ${r.status}, signal ${r.signal}${r.error ? `, ${r.error.message}` : ''}) `
      + `${where}: ${(r.stderr || '').slice(-2000)}`;
  }
  results = new Map(lines.filter((d) => 'case' in d).map((d) => [d.case, d]));
});

test('the child ran every case and exited 0', () => {
  assert.equal(childFailure, null, childFailure);
  assert.equal(results.size, CASES.length);
});

test('there are enough hostile cases, each named once', () => {
  assert.ok(CASES.length >= 40, `${CASES.length} cases`);
  assert.equal(new Set(CASES.map(([name]) => name)).size, CASES.length);
});

for (const [name, expected, needle, , returns] of CASES) {
  test(`hostile input: ${name}`, () => {
    const got = results.get(name);
    assert.ok(got, childFailure || `no result for ${name}`);
    if (expected === null) {
      assert.equal(got.raised, null, show(got));
      if (returns !== undefined) assert.deepEqual(got.returned, returns, show(got));
    } else {
      assert.equal(got.raised, expected, show(got));
      assert.ok(got.chain.includes('Error'), show(got)); // an Error, whatever its class
      assert.ok(got.message.includes(needle), show(got));
    }
  });
}
