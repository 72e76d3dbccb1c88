'use strict';
// `npm pack` makes a tarball that carries the built libraries, and
// `npm install <tarball>` in an empty project works with no build step.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { smollmPath } = require('./helpers/models');

const PKG = path.resolve(__dirname, '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

test('npm pack carries the libraries, and the tarball installs and generates', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-pack-'));
  try {
    const libDir = path.dirname(require('../lib/_lib').load().path);
    const env = { ...process.env, MULLAMA_LIB: libDir, npm_config_audit: 'false', npm_config_fund: 'false' };
    const packed = JSON.parse(execFileSync(npm, ['pack', '--json', '--pack-destination', tmp],
      { cwd: PKG, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
    const files = packed[0].files.map((f) => f.path);
    for (const f of ['index.js', 'index.d.ts', 'lib/context.js', 'native/libllama.so', 'native/build_info.json',
      'native/LICENSE.llama.cpp']) {
      assert.ok(files.includes(f), `${f} is missing from the tarball: ${files.join(', ')}`);
    }
    assert.ok(!files.some((f) => f.startsWith('test/') || f.includes('node_modules')), files.join(', '));
    assert.ok(!fs.existsSync(path.join(PKG, 'native')), 'postpack removes the bundled copy from the checkout');

    const project = path.join(tmp, 'app');
    fs.mkdirSync(project);
    fs.writeFileSync(path.join(project, 'package.json'), '{"name": "app", "version": "1.0.0", "private": true}');
    execFileSync(npm, ['install', path.join(tmp, packed[0].filename)], { cwd: project, env, stdio: 'pipe' });
    const code = `
      const m = require('mullama');
      const model = m.JsModel.load(${JSON.stringify(smollmPath())});
      const ctx = new m.JsContext(model, { nCtx: 256 });
      console.log(JSON.stringify({ lib: require('mullama/lib/_lib').load().path,
        text: ctx.generate('Once upon a time', 8, m.samplerParamsGreedy()) }));`;
    const bare = { ...process.env };
    delete bare.MULLAMA_LIB;
    const out = JSON.parse(execFileSync(process.execPath, ['-e', code], { cwd: project, env: bare, encoding: 'utf8' }));
    assert.equal(out.lib, path.join(fs.realpathSync(project), 'node_modules', 'mullama', 'native', path.basename(out.lib)));
    assert.ok(out.text.length > 0);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
