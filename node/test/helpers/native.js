'use strict';
// Compiles tests/native/greedy_ref.c (argmax decoding straight on libllama) against
// the library Node loaded, and runs it: the reference Node's greedy output must equal.
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { ROOT, LLAMA_SRC } = require('./models');

const built = new Map();

/** tests/native/NAME.c, compiled once against the library Node loaded. */
function refExe(name) {
  if (built.has(name)) return built.get(name);
  const libDir = path.dirname(require('../../lib/_lib').load().path);
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-ref-')), name);
  const cc = process.env.CC || 'cc';
  execFileSync(cc, ['-O1', '-o', out, path.join(ROOT, 'tests', 'native', `${name}.c`),
    `-I${path.join(LLAMA_SRC, 'include')}`, `-I${path.join(LLAMA_SRC, 'ggml', 'include')}`, `-L${libDir}`,
    '-lllama', '-lggml', '-lggml-base', `-Wl,-rpath,${libDir}`], { stdio: 'pipe' });
  const exe = { path: out, libDir };
  built.set(name, exe);
  return exe;
}

/**
 * The ids llama.cpp's own sampler chain samples (tests/native/sampled_ref.c),
 * over the whole vocabulary on the host (mode 'host') or attached to the
 * context ('device'); p: resolved JsSamplerParams.
 */
function sampledReference(modelPath, mode, p, prompt, n, nCtx = 512) {
  const { path: bin, libDir } = refExe('sampled_ref');
  const args = [modelPath, mode, n, nCtx, p.seed, p.topK, p.topP, p.minP, p.temperature, p.penaltyLastN,
    p.penaltyRepeat, p.penaltyFreq, p.penaltyPresent].map(String);
  const out = execFileSync(bin, [...args, prompt], { encoding: 'utf8', env: { ...process.env, GGML_BACKEND_DIR: libDir } })
    .split('\n');
  return out[1].split(/\s+/).filter(Boolean).map(Number);
}

/** [prompt ids, generated ids] from the C reference (n_ctx, 2 threads). */
function greedyReference(modelPath, prompt, n, nCtx = 1024) {
  const { path: bin, libDir } = refExe('greedy_ref');
  const out = execFileSync(bin, [modelPath, String(n), String(nCtx), prompt],
    { encoding: 'utf8', env: { ...process.env, GGML_BACKEND_DIR: libDir } }).split('\n');
  const ids = (line) => line.split(/\s+/).filter(Boolean).map(Number);
  return [ids(out[0]), ids(out[1])];
}

module.exports = { greedyReference, sampledReference };
