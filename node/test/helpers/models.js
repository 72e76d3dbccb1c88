'use strict';
// Paths of the real test models.  The Python side fetches and hash-checks them
// into the user cache (scripts/test.sh does that before the Node tests run);
// here they are asked for once, through the same code, so both languages test
// exactly the same files.
const { execFileSync } = require('node:child_process');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const LLAMA_SRC = path.join(ROOT, 'native', 'llama.cpp');
const cache = new Map();

function python() {
  return process.env.PYTHON || 'python3';
}

function resolve(envName, code) {
  if (process.env[envName]) return process.env[envName];
  if (!cache.has(envName)) {
    const out = execFileSync(python(), ['-c', code], { cwd: ROOT, encoding: 'utf8',
      env: { ...process.env, PYTHONPATH: ROOT } });
    cache.set(envName, out.trim().split('\n').pop());
  }
  return cache.get(envName);
}

function smollmPath() {
  return resolve('MULLAMA_TEST_SMOLLM',
    'from mullama._download import ensure_model; print(ensure_model(quiet=True))');
}

function minilmPath() {
  return resolve('MULLAMA_TEST_MINILM',
    'import sys; sys.path.insert(0, "scripts"); from convert_minilm import ensure_minilm; print(ensure_minilm())');
}

/** The LoRA test models (scripts/make_lora.py): { base_f32, adapter, merged, wrong_adapter }. */
function loraPaths() {
  return JSON.parse(resolve('MULLAMA_TEST_LORA',
    'import sys, json; sys.path.insert(0, "scripts"); from make_lora import ensure_lora; '
    + 'print(json.dumps({k: str(v) for k, v in ensure_lora().items()}))'));
}

/** The tiny vision model (scripts/make_vision_model.py): { model, mmproj, wrong_mmproj }. */
function visionPaths() {
  return JSON.parse(resolve('MULLAMA_TEST_VISION',
    'import sys, json; sys.path.insert(0, "scripts"); from make_vision_model import ensure_vision_model; '
    + 'print(json.dumps({k: str(v) for k, v in ensure_vision_model().items()}))'));
}

/** The tiny audio model (scripts/make_vision_model.py --audio): { model, mmproj }. */
function audioPaths() {
  return JSON.parse(resolve('MULLAMA_TEST_AUDIO',
    'import sys, json; sys.path.insert(0, "scripts"); from make_vision_model import ensure_audio_model; '
    + 'print(json.dumps({k: str(v) for k, v in ensure_audio_model().items()}))'));
}

/** The tiny M-RoPE vision model (scripts/make_vision_model.py --qwen2vl): { model, mmproj }. */
function qwen2vlPaths() {
  return JSON.parse(resolve('MULLAMA_TEST_QWEN2VL',
    'import sys, json; sys.path.insert(0, "scripts"); from make_vision_model import ensure_qwen2vl_model; '
    + 'print(json.dumps({k: str(v) for k, v in ensure_qwen2vl_model().items()}))'));
}

module.exports = { ROOT, LLAMA_SRC, smollmPath, minilmPath, loraPaths, visionPaths, audioPaths, qwen2vlPaths, python };
