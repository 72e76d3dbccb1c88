'use strict';
// The GGUF header walk (lib/_gguf.js) against the vocabulary files llama.cpp
// ships, against fuzzed copies of one, and against the Python reader it ports.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { ROOT, LLAMA_SRC, python } = require('./helpers/models');
const { readHeader, GGUFError, VOCAB_KEY } = require('../lib/_gguf');

const MODELS = path.join(LLAMA_SRC, 'models');
const KEYS = ['general.architecture', 'tokenizer.ggml.model', 'tokenizer.ggml.bos_token_id', VOCAB_KEY];

// Runs Python code with `input` on stdin; resolves to its stdout lines.
function runPython(code, input) {
  return new Promise((resolve, reject) => {
    const child = execFile(python(), ['-c', code], {
      cwd: ROOT, env: { ...process.env, PYTHONPATH: ROOT }, maxBuffer: 16 << 20,
    }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout.trim().split('\n'))));
    child.stdin.end(input);
  });
}

// The same digest both sides compute: each token's UTF-16 code units, length-prefixed.
// UTF-16 because both languages can encode lone surrogates (undecodable bytes) that way.
const PY_SUMMARY = `
import hashlib, json, sys
from mullama import _gguf
for path in sys.stdin.read().splitlines():
    d = _gguf.read_header(path, frozenset(${JSON.stringify(KEYS)}))
    tokens, h = d.pop(${JSON.stringify(VOCAB_KEY)}), hashlib.sha256()
    for t in tokens:
        b = t.encode("utf-16-le", "surrogatepass")
        h.update(len(b).to_bytes(4, "little") + b)
    d["tokens"] = [len(tokens), h.hexdigest()]
    print(json.dumps(d))
`;

function summary(file) {
  const { [VOCAB_KEY]: tokens, ...rest } = readHeader(file, KEYS);
  const h = crypto.createHash('sha256');
  const len = Buffer.alloc(4);
  for (const t of tokens) {
    const b = Buffer.from(t, 'utf16le');
    len.writeUInt32LE(b.length);
    h.update(len).update(b);
  }
  return { ...rest, tokens: [tokens.length, h.digest('hex')] };
}

test('every vocabulary GGUF of llama.cpp parses, with the metadata Python reads', async () => {
  assert.ok(fs.existsSync(MODELS), `${MODELS} is missing: llama.cpp has not been extracted yet`);
  const files = fs.readdirSync(MODELS).filter((f) => /^ggml-vocab-.*\.gguf$/.test(f)).map((f) => path.join(MODELS, f));
  assert.ok(files.length >= 10, `only ${files.length} vocabulary files in ${MODELS}`);
  const fromPython = runPython(PY_SUMMARY, files.join('\n')); // runs while this side works
  const ours = files.map(summary);
  for (const s of ours) assert.equal(typeof s['general.architecture'], 'string');
  assert.deepEqual(ours, (await fromPython).map((line) => JSON.parse(line)));
});

// -- fuzzing -----------------------------------------------------------------------

const CASES = 300;
const SAMPLE_EVERY = 3; // every third case also goes to the Python reader
const U64S = [0n, 1n, 2n ** 31n, 2n ** 32n + 7n, 2n ** 63n - 1n, 2n ** 64n - 1n];

// mulberry32: small, seeded, the same on every run and platform.
function prng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), seed | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

// Case i: 1 to 4 mutations of `seed`, as tests/test_reliability.py's fuzz test draws them.
function mutate(seed, i) {
  const rand = prng(0x6767 + i);
  const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
  let data = Buffer.from(seed);
  const muts = [];
  for (let m = int(1, 4); m > 0; m--) {
    const kind = ['cut', 'flip', 'u64'][int(0, 2)];
    if (kind === 'cut') {
      const at = int(0, seed.length);
      data = data.subarray(0, at);
      muts.push(`cut at ${at}`);
    } else if (data.length && kind === 'flip') {
      const at = int(0, 4095) % data.length;
      const bits = int(1, 255);
      data[at] ^= bits;
      muts.push(`flip ${bits} at ${at}`);
    } else if (data.length) {
      const at = int(4, 4000);
      const v = Buffer.alloc(8);
      v.writeBigUInt64LE(U64S[int(0, U64S.length - 1)]);
      // past the end, Python's data[at:at + 8] = v appends instead
      if (at + 8 <= data.length) v.copy(data, at);
      else data = Buffer.concat([data.subarray(0, Math.min(at, data.length)), v]);
      muts.push(`u64 ${v.readBigUInt64LE()} at ${at}`);
    }
  }
  return { data, muts: muts.join(', ') };
}

// null when the file is accepted, else the GGUFError's message; anything else fails the test.
function verdict(file, muts) {
  try {
    readHeader(file);
    return null;
  } catch (e) {
    if (e instanceof GGUFError) return e.message;
    assert.fail(`readHeader threw ${e.stack} on a copy with ${muts}`);
  }
}

const PY_VERDICTS = `
import json, sys
from mullama import _gguf
for path in sys.stdin.read().splitlines():
    try:
        _gguf.read_header(path)
        print("null")
    except _gguf.GGUFError as e:
        print(json.dumps(str(e)))
`;

test('fuzzed headers give a GGUFError or a result, never another error, and the same verdict as Python', async (t) => {
  const seed = fs.readFileSync(path.join(MODELS, 'ggml-vocab-gpt-2.gguf'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-gguf-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));

  // The sampled cases are written first so that Python reads them while this side works.
  const sampled = new Map();
  for (let i = 0; i < CASES; i += SAMPLE_EVERY) {
    const { data, muts } = mutate(seed, i);
    const file = path.join(dir, `case${i}.gguf`);
    fs.writeFileSync(file, data);
    sampled.set(i, { file, muts });
  }
  const fromPython = runPython(PY_VERDICTS, [...sampled.values()].map((c) => c.file).join('\n'));

  const scratch = path.join(dir, 'scratch.gguf');
  const ours = [];
  let accepted = 0;
  for (let i = 0; i < CASES; i++) {
    let c = sampled.get(i);
    if (!c) {
      const { data, muts } = mutate(seed, i);
      fs.writeFileSync(scratch, data);
      c = { file: scratch, muts };
    }
    const v = verdict(c.file, c.muts);
    if (v === null) accepted++;
    if (sampled.has(i)) ours.push(v);
  }
  // the mutations should neither all miss nor all hit
  assert.ok(accepted > 0 && accepted < CASES, `${accepted} of ${CASES} accepted`);

  const theirs = (await fromPython).map((line) => JSON.parse(line));
  ours.forEach((v, k) => {
    const { muts } = sampled.get(k * SAMPLE_EVERY);
    assert.deepEqual(v, theirs[k], `the readers disagree on a copy with ${muts}`);
  });
});
