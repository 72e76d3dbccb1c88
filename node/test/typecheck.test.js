'use strict';
// index.d.ts is complete and valid under `tsc --strict` (the TypeScript examples
// of the spec are compiled against it in spec_examples.test.js).
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const path = require('node:path');

test('index.d.ts type-checks with tsc --strict', () => {
  const tsc = require.resolve('typescript/bin/tsc');
  const r = execFileSync(process.execPath, [tsc, '-p', path.resolve(__dirname, '..', 'tsconfig.json')],
    { encoding: 'utf8', stdio: 'pipe' });
  assert.equal(r, '');
});

test('every export of index.js is declared in index.d.ts, and every declaration is exported', () => {
  const dts = require('node:fs').readFileSync(path.resolve(__dirname, '..', 'index.d.ts'), 'utf8');
  const declared = new Set([...dts.matchAll(/^export (?:class|function) (\w+)/gm)].map((m) => m[1]));
  const exported = new Set(Object.keys(require('..')));
  assert.deepEqual([...exported].filter((n) => !declared.has(n)), []);
  assert.deepEqual([...declared].filter((n) => !exported.has(n)), []);
});
