'use strict';
// Compiles tests/native/greedy_ref.c (argmax decoding straight on libllama) against
// the library Node loaded, and runs it: the reference Node's greedy output must equal.
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { ROOT, LLAMA_SRC } = require('./models');

let exe = null;

function greedyRefExe() {
  if (exe) return exe;
  const libDir = path.dirname(require('../../lib/_lib').load().path);
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-ref-')), 'greedy_ref');
  const cc = process.env.CC || 'cc';
  execFileSync(cc, ['-O1', '-o', out, path.join(ROOT, 'tests', 'native', 'greedy_ref.c'),
    `-I${path.join(LLAMA_SRC, 'include')}`, `-I${path.join(LLAMA_SRC, 'ggml', 'include')}`, `-L${libDir}`,
    '-lllama', '-lggml', '-lggml-base', `-Wl,-rpath,${libDir}`], { stdio: 'pipe' });
  exe = { path: out, libDir };
  return exe;
}

/** [prompt ids, generated ids] from the C reference (n_ctx, 2 threads). */
function greedyReference(modelPath, prompt, n, nCtx = 1024) {
  const { path: bin, libDir } = greedyRefExe();
  const out = execFileSync(bin, [modelPath, String(n), String(nCtx), prompt],
    { encoding: 'utf8', env: { ...process.env, GGML_BACKEND_DIR: libDir } }).split('\n');
  const ids = (line) => line.split(/\s+/).filter(Boolean).map(Number);
  return [ids(out[0]), ids(out[1])];
}

module.exports = { greedyReference };
