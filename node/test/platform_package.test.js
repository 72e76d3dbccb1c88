'use strict';
// The published mullama carries no libraries: npm installs the platform package
// that fits (mullama-linux-x64-gnu, ...) as an optional dependency, and the
// loader finds it there.  These tests lay out an app's node_modules as npm does,
// with this checkout's built library in the platform package's place.
const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { smollmPath } = require('./helpers/models');
const { platformPackage, PLATFORM_PACKAGES } = require('../lib/_lib');

const PKG = path.resolve(__dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-platform-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** An app whose node_modules holds mullama as published (no native/), and optionally its platform package. */
function app(name, withPlatformPackage) {
  const root = path.join(tmp, name);
  const mod = path.join(root, 'node_modules', 'mullama');
  fs.mkdirSync(mod, { recursive: true });
  for (const entry of ['index.js', 'index.d.ts', 'package.json', 'lib']) {
    fs.cpSync(path.join(PKG, entry), path.join(mod, entry), { recursive: true });
  }
  fs.symlinkSync(path.join(PKG, 'node_modules'), path.join(mod, 'node_modules'), 'dir');
  // what npm pack adds to data/ (scripts/build_dist.py does the same for the published package)
  fs.mkdirSync(path.join(mod, 'data'));
  for (const f of ['abi.json', 'rules.json']) fs.copyFileSync(path.join(PKG, '..', 'mullama', f), path.join(mod, 'data', f));
  const pkg = platformPackage().name;
  if (withPlatformPackage && pkg) {
    const plat = path.join(root, 'node_modules', pkg);
    fs.mkdirSync(plat, { recursive: true });
    fs.writeFileSync(path.join(plat, 'package.json'), JSON.stringify({ name: pkg, version: '0.0.0', main: 'index.js' }));
    const libDir = path.dirname(require('../lib/_lib').load().path);
    fs.writeFileSync(path.join(plat, 'index.js'), `module.exports = { libDir: ${JSON.stringify(libDir)} };\n`);
  }
  return root;
}

function run(cwd, code) {
  const env = { ...process.env };
  delete env.MULLAMA_LIB;
  return spawnSync(process.execPath, ['-e', code], { cwd, env, encoding: 'utf8' });
}

test('the platform package that fits is named as in the API spec', () => {
  assert.deepEqual(Object.values(PLATFORM_PACKAGES).sort(), ['mullama-darwin-arm64', 'mullama-darwin-x64',
    'mullama-linux-arm64-gnu', 'mullama-linux-x64-gnu', 'mullama-win32-x64-msvc']);
  const key = `${process.platform}-${process.arch}`;
  assert.equal(platformPackage().name, PLATFORM_PACKAGES[key] || null);
});

test('mullama loads its library from the installed platform package and generates', (t) => {
  if (!platformPackage().name) return t.skip(`no platform package for ${process.platform}-${process.arch}`);
  const root = app('with', true);
  const r = run(root, `
    const m = require('mullama');
    const model = m.JsModel.load(${JSON.stringify(smollmPath())});
    const ctx = new m.JsContext(model, { nCtx: 256 });
    console.log(JSON.stringify({ lib: require('mullama/lib/_lib').load().path,
      text: ctx.generate('Once upon a time', 8, m.samplerParamsGreedy()) }));`);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  const expected = path.dirname(require('../lib/_lib').load().path);
  assert.equal(path.dirname(out.lib), expected);
  assert.ok(out.text.length > 0);
});

test('without its platform package, mullama throws an Error naming the package that would fit', (t) => {
  const pkg = platformPackage().name;
  if (!pkg) return t.skip(`no platform package for ${process.platform}-${process.arch}`);
  const root = app('without', false);
  const r = run(root, `
    try { require('mullama').JsModel.load(${JSON.stringify(smollmPath())}); console.log('loaded'); }
    catch (e) { console.log(JSON.stringify({ name: e.name, isError: e instanceof Error, message: e.message })); }`);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.isError, true);
  assert.match(out.message, new RegExp(`The prebuilt package for this machine, ${pkg}, is not installed`));
  assert.match(out.message, new RegExp(`npm install ${pkg}@\\d+\\.\\d+\\.\\d+`));
  assert.match(out.message, /build libllama from source/);
});
