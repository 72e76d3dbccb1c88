#!/usr/bin/env node
'use strict';
// npm pack's prepack/postpack step: copies the built libllama, ggml, their
// build_info.json and llama.cpp's license notice into native/ so that the
// tarball carries the libraries for this platform (as the Python wheel does),
// and removes them again afterwards, so that a stale copy never shadows a
// newer build in a source checkout.  The libraries come from MULLAMA_LIB (a
// folder) if set, else from ../mullama/lib where scripts/build_lib.py puts them.

const fs = require('node:fs');
const path = require('node:path');

const dest = path.resolve(__dirname, '..', 'native');

if (process.argv.includes('--clean')) {
  fs.rmSync(dest, { recursive: true, force: true });
  fs.rmSync(path.resolve(__dirname, '..', 'data'), { recursive: true, force: true });
  process.exit(0);
}

const env = process.env.MULLAMA_LIB;
const src = env ? (fs.statSync(env).isDirectory() ? env : path.dirname(env))
  : path.resolve(__dirname, '..', '..', 'mullama', 'lib');
const isLib = (f) => /\.(so|dylib|dll)$/.test(f) || /\.so\.\d/.test(f);
const files = fs.existsSync(src) ? fs.readdirSync(src).filter((f) => isLib(f) || f === 'build_info.json'
  || f === 'LICENSE.llama.cpp') : [];
if (!files.some((f) => /^(lib)?llama\.(so|dylib|dll)$/.test(f))) {
  console.error(`bundle-native: no built libllama in ${src}; run \`python3 scripts/build_lib.py\` first`);
  process.exit(1);
}
fs.rmSync(dest, { recursive: true, force: true });
fs.mkdirSync(dest);
for (const f of files) fs.copyFileSync(path.join(src, f), path.join(dest, f));
// the C API's description and the shared rules, which lib/_abi.js and lib/_rules.js read
// (from mullama/ in a source checkout)
const data = path.resolve(__dirname, '..', 'data');
fs.rmSync(data, { recursive: true, force: true });
fs.mkdirSync(data);
for (const f of ['abi.json', 'rules.json']) fs.copyFileSync(path.resolve(__dirname, '..', '..', 'mullama', f), path.join(data, f));
console.error(`bundle-native: ${files.length} files from ${src}`);
