'use strict';
// `npm pack` makes a tarball that carries the built libraries, and
// `npm install <tarball>` in an empty project works with no build step, and its
// declarations compile in that project.
const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { smollmPath } = require('./helpers/models');
const { example } = require('./helpers/spec');

const PKG = path.resolve(__dirname, '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

const TSC = {
  '5': require.resolve('typescript/bin/tsc', { paths: [PKG] }),
  '7': path.join(path.dirname(require.resolve('typescript-7/package.json', { paths: [PKG] })), 'bin', 'tsc'),
};

/** The tarball of `npm pack`, installed in an empty app (made once for the tests below). */
let packed = null;
function packedApp() {
  if (packed) return packed;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-pack-'));
  const libDir = path.dirname(require('../lib/_lib').load().path);
  const env = { ...process.env, MULLAMA_LIB: libDir, npm_config_audit: 'false', npm_config_fund: 'false' };
  const info = JSON.parse(execFileSync(npm, ['pack', '--json', '--pack-destination', tmp],
    { cwd: PKG, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }))[0];
  const project = path.join(tmp, 'app');
  fs.mkdirSync(project);
  fs.writeFileSync(path.join(project, 'package.json'), '{"name": "app", "version": "1.0.0", "private": true}');
  execFileSync(npm, ['install', path.join(tmp, info.filename)], { cwd: project, env, stdio: 'pipe' });
  packed = { tmp, project, files: info.files.map((f) => f.path) };
  return packed;
}

after(() => {
  if (packed) fs.rmSync(packed.tmp, { recursive: true, force: true });
});

test('npm pack carries the libraries, and the tarball installs and generates', () => {
  const { project, files } = packedApp();
  for (const f of ['index.js', 'index.d.ts', 'lib/context.js', 'native/libllama.so', 'native/build_info.json',
    'native/LICENSE.llama.cpp']) {
    assert.ok(files.includes(f), `${f} is missing from the tarball: ${files.join(', ')}`);
  }
  assert.ok(!files.some((f) => f.startsWith('test/') || f.includes('node_modules')), files.join(', '));
  assert.ok(!fs.existsSync(path.join(PKG, 'native')), 'postpack removes the bundled copy from the checkout');

  const code = `
    const m = require('mullama');
    const model = m.JsModel.load(${JSON.stringify(smollmPath())});
    const ctx = new m.JsContext(model, { nCtx: 256 });
    console.log(JSON.stringify({ lib: require('mullama/lib/_lib').load().path,
      text: ctx.generate('Once upon a time', 8, m.samplerParamsGreedy()) }));`;
  const bare = { ...process.env };
  delete bare.MULLAMA_LIB;
  const r = spawnSync(process.execPath, ['-e', code], { cwd: project, env: bare, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.lib, path.join(fs.realpathSync(project), 'node_modules', 'mullama', 'native', path.basename(out.lib)));
  assert.ok(out.text.length > 0);
});

// The packed declarations compile wherever the user's code does: every target from
// ES2020 up, with and without @types/node (TypeScript 6+ loads it only when listed
// in `types`), with the TypeScript this package tests against and the current one.
test("the spec's TypeScript examples compile against the packed tarball", () => {
  const { project } = packedApp();
  const stub = `export declare class NextResponse<Body = unknown> extends Response {
  static json<JsonBody>(body: JsonBody, init?: ResponseInit): NextResponse<JsonBody>;
}
`;
  fs.mkdirSync(path.join(project, 'node_modules', 'next'), { recursive: true });
  fs.writeFileSync(path.join(project, 'node_modules', 'next', 'server.d.ts'), stub); // 'next/server', as Next.js ships it
  fs.writeFileSync(path.join(project, 'full.ts'), example('TypeScript Full Example', 0, 'typescript'));
  fs.writeFileSync(path.join(project, 'route.ts'), example('Next.js API Route', 0, 'typescript'));
  const failures = [];
  for (const [version, tsc] of Object.entries(TSC)) {
    for (const target of ['es2020', 'es2022', 'esnext']) {
      for (const nodeTypes of [false, true]) {
        const config = {
          compilerOptions: {
            strict: true, target, module: 'commonjs', esModuleInterop: true, noEmit: true,
            types: nodeTypes ? ['node'] : [],
            ...(nodeTypes ? { typeRoots: [path.join(PKG, 'node_modules', '@types')] } : {}),
          },
          files: nodeTypes ? ['full.ts', 'route.ts'] : ['full.ts'], // the route reads process.env itself
        };
        fs.writeFileSync(path.join(project, 'tsconfig.json'), JSON.stringify(config));
        const r = spawnSync(process.execPath, [tsc, '--project', 'tsconfig.json', '--pretty', 'false'],
          { cwd: project, encoding: 'utf8' });
        if (r.status !== 0) {
          failures.push(`TypeScript ${version}, target ${target}, ${nodeTypes ? 'with' : 'without'} @types/node:\n`
            + `${r.stdout}${r.stderr}`);
        }
      }
    }
  }
  assert.deepEqual(failures, []);
});
