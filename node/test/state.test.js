'use strict';
// Saved state of a JsContext (mirrors tests/test_state.py): a loaded state
// continues exactly as the original would, evaluating one token; bad input is
// refused and leaves the context usable; Python and Node read each other's
// states.  Every expectation is computed in this run.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { JsModel, JsContext, JsEmbeddingGenerator, ContextFullError, samplerParamsGreedy } = require('..');
const { ROOT, python, smollmPath, minilmPath } = require('./helpers/models');

const PROMPT = 'Once upon a time, in a small village by the sea,';
const N_FIRST = 16; // tokens generated before the save
const N_NEXT = 16; // tokens generated after it
const greedy = samplerParamsGreedy();
const MAGIC = Buffer.from('MULLAMA-STATE\0', 'latin1');
let model;
let tmp;
const ref = {}; // saved, tokens, continuation, after, first

const newContext = (nCtx = 256, extra = {}) => new JsContext(model, { nCtx, nThreads: 2, ...extra });
const cont = (c, tokens) => c.generateFromTokens(tokens, N_NEXT, greedy, { ignoreEos: true });

test.before(() => {
  model = JsModel.load(smollmPath());
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-state-'));
  const plain = newContext();
  ref.first = plain.generate(PROMPT, N_FIRST, greedy, { ignoreEos: true });
  ref.tokens = plain.tokens;
  ref.continuation = cont(plain, ref.tokens);
  ref.after = plain.tokens;
  plain.close();
  const saver = newContext();
  assert.equal(saver.generate(PROMPT, N_FIRST, greedy, { ignoreEos: true }), ref.first);
  ref.saved = saver.stateBytes();
  assert.deepEqual(saver.tokens, ref.tokens); // saving changes nothing
  assert.equal(cont(saver, ref.tokens), ref.continuation);
  saver.close();
});
test.after(() => {
  model.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function checkContinues(c) {
  assert.deepEqual(c.tokens, ref.tokens);
  assert.equal(cont(c, ref.tokens), ref.continuation);
  assert.equal(c.lastPromptEvaluated, 1); // only the last token was evaluated again
  assert.deepEqual(c.tokens, ref.after);
}

test('stateBytes: a fresh context continues identically, evaluating one token', () => {
  assert.ok(Buffer.isBuffer(ref.saved));
  assert.ok(ref.saved.subarray(0, MAGIC.length).equals(MAGIC));
  const c = newContext();
  c.loadStateBytes(ref.saved);
  assert.equal(c.nPast, ref.tokens.length);
  checkContinues(c);
  assert.ok(c.stateBytes().length > 0);
  c.close();
});

test('loadStateBytes takes a Uint8Array too, and loading then saving gives the same bytes', () => {
  const c = newContext();
  c.loadStateBytes(new Uint8Array(ref.saved));
  assert.ok(c.stateBytes().equals(ref.saved));
  checkContinues(c);
  c.close();
});

test('saveState / loadState: atomic, owner-only, replaces an existing file', () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'file-'));
  const file = path.join(dir, 'chat.state');
  fs.writeFileSync(file, 'an older file, replaced');
  const saver = newContext();
  saver.loadStateBytes(ref.saved);
  saver.saveState(file);
  saver.close();
  assert.ok(fs.readFileSync(file).equals(ref.saved));
  assert.deepEqual(fs.readdirSync(dir), ['chat.state']); // no temporary file left
  if (process.platform !== 'win32') assert.equal(fs.statSync(file).mode & 0o077, 0);
  const c = newContext();
  c.loadState(file);
  checkContinues(c);
  c.close();
});

test('a prompt extending the saved tokens evaluates only the new part', () => {
  const extra = model.tokenize(' The end.', false);
  const c = newContext();
  c.loadStateBytes(ref.saved);
  const text = c.generateFromTokens([...ref.tokens, ...extra], 8, greedy, { ignoreEos: true });
  assert.equal(c.lastPromptEvaluated, extra.length);
  const fresh = newContext();
  assert.equal(fresh.generateFromTokens([...ref.tokens, ...extra], 8, greedy, { ignoreEos: true }), text);
  fresh.close();
  c.close();
});

test('an empty state empties the cache', () => {
  const empty = newContext();
  const blank = empty.stateBytes();
  empty.close();
  const c = newContext();
  c.loadStateBytes(ref.saved);
  c.loadStateBytes(blank);
  assert.deepEqual(c.tokens, []);
  assert.equal(c.generate(PROMPT, N_FIRST, greedy, { ignoreEos: true }), ref.first);
  c.close();
});

test('a context with several sequences saves and loads sequence 0', () => {
  const c = newContext(512, { nSeqMax: 2 });
  c.loadStateBytes(ref.saved);
  assert.deepEqual(c.tokens, ref.tokens);
  assert.ok(c.stateBytes().equals(ref.saved));
  assert.ok(cont(c, ref.tokens));
  assert.equal(c.lastPromptEvaluated, 1);
  c.close();
});

// -- Python and Node read each other's states ------------------------------------------------------------

const PY = `
import json, sys
from mullama import Context, Model, SamplerParams
m = Model.load(sys.argv[1])
c = Context(m, n_ctx=256, n_threads=2)
g = SamplerParams.greedy()
if sys.argv[2] == "save":
    c.generate(sys.argv[4], ${N_FIRST}, g, ignore_eos=True)
    c.save_state(sys.argv[3])
else:
    c.load_state(sys.argv[3])
tokens = c.tokens
text = c.generate(tokens, ${N_NEXT}, g, ignore_eos=True)
print(json.dumps([tokens, text, c.last_prompt_evaluated, c.tokens]))
`;

function runPython(...args) {
  const out = execFileSync(python(), ['-c', PY, smollmPath(), ...args],
    { encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } });
  return JSON.parse(out.trim().split('\n').pop());
}

test('a state saved by Python loads in Node and continues identically', () => {
  const file = path.join(tmp, 'from-python.state');
  const [tokens, text, , after] = runPython('save', file, PROMPT);
  assert.deepEqual(tokens, ref.tokens);
  assert.ok(fs.readFileSync(file).equals(ref.saved)); // the same bytes as Node's
  const c = newContext();
  c.loadState(file);
  assert.deepEqual(c.tokens, tokens);
  assert.equal(cont(c, tokens), text);
  assert.equal(c.lastPromptEvaluated, 1);
  assert.deepEqual(c.tokens, after);
  c.close();
});

test('a state saved by Node loads in Python and continues identically', () => {
  const file = path.join(tmp, 'from-node.state');
  const c = newContext();
  c.generate(PROMPT, N_FIRST, greedy, { ignoreEos: true });
  c.saveState(file);
  const tokens = c.tokens;
  const text = cont(c, tokens);
  const [pyTokens, pyText, evaluated, pyAfter] = runPython('load', file);
  assert.deepEqual([pyTokens, pyText, evaluated, pyAfter], [tokens, text, 1, c.tokens]);
  c.close();
});

// -- bad input -----------------------------------------------------------------------------------------

/** Where each field of a state is: name -> [offset, length], read as mullama/_state.py documents it. */
function layout(s) {
  const out = { magic: [0, 14], version: [14, 4] };
  let pos = 18;
  for (const name of ['architecture', 'name', 'description']) {
    const n = s.readUInt32LE(pos);
    out[name] = [pos + 4, n];
    pos += 4 + n;
  }
  for (const name of ['n_vocab', 'n_embd', 'n_layer', 'n_head', 'n_head_kv', 'n_params', 'size']) {
    out[name] = [pos, 8];
    pos += 8;
  }
  const nTokens = s.readUInt32LE(pos);
  out.n_tokens = [pos, 4];
  out.tokens = [pos + 4, 4 * nTokens];
  pos += 4 + 4 * nTokens;
  const blobLen = Number(s.readBigUInt64LE(pos));
  out.blob_len = [pos, 8];
  out.sha256 = [pos + 8, 32];
  out.blob = [pos + 40, blobLen];
  assert.equal(pos + 40 + blobLen, s.length);
  return out;
}

/** edit(bytes, layout) the state, then give it a valid checksum again (as a deliberate forgery would). */
function forge(s, edit) {
  const data = edit(Buffer.from(s), layout(s));
  const [at] = layout(data).sha256;
  crypto.createHash('sha256').update(data.subarray(0, at)).update(data.subarray(at + 32)).digest().copy(data, at);
  return data;
}

const addU64 = (name, delta) => (b, lay) => {
  b.writeBigUInt64LE(b.readBigUInt64LE(lay[name][0]) + BigInt(delta), lay[name][0]);
  return b;
};

function flip(field, at) {
  return (s) => {
    const [offset, n] = layout(s)[field];
    const out = Buffer.from(s);
    out[offset + (at >= 0 ? at : n + at)] ^= 0x40;
    return out;
  };
}

const BAD = {
  'not a state': [(s) => Buffer.concat([Buffer.from('GGUF'), s.subarray(4)]), Error, /not a mullama state/],
  empty: [() => Buffer.alloc(0), Error, /truncated/],
  'truncated in the header': [(s) => s.subarray(0, 40), Error, /truncated/],
  'truncated in the tokens': [(s) => s.subarray(0, layout(s).tokens[0] + 6), Error, /truncated/],
  'truncated in the blob': [(s) => s.subarray(0, s.length >> 1), Error, /truncated/],
  'one byte short': [(s) => s.subarray(0, s.length - 1), Error, /truncated/],
  'trailing bytes': [(s) => Buffer.concat([s, Buffer.alloc(1)]), Error, /unexpected bytes/],
  'corrupted blob': [flip('blob', -100), Error, /checksum/],
  'corrupted token': [flip('tokens', 0), Error, /checksum/],
  'corrupted fingerprint': [flip('n_embd', 0), Error, /checksum/],
  'newer version': [(s) => { const b = Buffer.from(s); b.writeUInt32LE(2, 14); return b; }, Error, /version 2/],
  'another model: n_layer': [(s) => forge(s, addU64('n_layer', 1)), Error,
    /another model: n_layer is 31 in the state but 30 in this model/],
  'another model: size': [(s) => forge(s, addU64('size', 4096)), Error, /size is/],
  'another model: description': [(s) => forge(s, (b, lay) => {
    const [at, n] = lay.description;
    const name = Buffer.from('llama 7B Q8_0');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(name.length);
    return Buffer.concat([b.subarray(0, at - 4), len, name, b.subarray(at + n)]);
  }), Error, /description is 'llama 7B Q8_0' in the state/],
  'token outside the vocabulary': [(s) => forge(s, (b, lay) => { b.writeInt32LE(1 << 30, lay.tokens[0]); return b; }),
    Error, /outside the vocabulary/],
  'tokens disagree with the cache': [(s) => forge(s, (b, lay) => {
    const [at, n] = lay.tokens;
    b.writeUInt32LE(n / 4 - 1, lay.n_tokens[0]);
    return Buffer.concat([b.subarray(0, at + n - 4), b.subarray(at + n)]);
  }), Error, /cache is now empty/],
  'refused by llama.cpp': [(s) => forge(s, (b, lay) => { b[lay.blob[0]] ^= 0xff; return b; }), Error, /could not load/],
};

for (const [name, [make, error, needle]] of Object.entries(BAD)) {
  for (const via of ['bytes', 'file']) {
    test(`refused, and the context still works: ${name} (${via})`, () => {
      const bad = make(ref.saved);
      const c = newContext();
      c.loadStateBytes(ref.saved); // a cache to keep, or to lose cleanly
      assert.throws(() => {
        if (via === 'bytes') {
          c.loadStateBytes(bad);
        } else {
          fs.writeFileSync(path.join(tmp, 'bad.state'), bad);
          c.loadState(path.join(tmp, 'bad.state'));
        }
      }, (e) => e.constructor === error && needle.test(e.message));
      assert.ok(c.tokens.length === 0 || c.tokens.length === ref.tokens.length);
      assert.equal(cont(c, ref.tokens), ref.continuation);
      assert.deepEqual(c.tokens, ref.after);
      c.close();
    });
  }
}

test('file errors name the file', () => {
  const c = newContext(128);
  fs.writeFileSync(path.join(tmp, 'x.state'), 'hello');
  assert.throws(() => c.loadState(path.join(tmp, 'x.state')), /x\.state.*not a mullama state/);
  assert.throws(() => c.loadState(path.join(tmp, 'missing.state')), { code: 'ENOENT' });
  assert.throws(() => c.saveState(path.join(tmp, 'no', 'such', 'folder.state')), { code: 'ENOENT' });
  c.close();
});

test('a context too small: ContextFullError naming both sizes, the cache kept', () => {
  // llama.cpp rounds nCtx up to a multiple of 256: nCtx 128 holds 256 tokens
  const big = newContext(512);
  big.generateFromTokens(model.tokenize(PROMPT.repeat(30)).slice(0, 300), 1, greedy, { ignoreEos: true });
  assert.equal(big.nPast, 300);
  const s = big.stateBytes();
  big.close();
  const small = newContext(128);
  assert.equal(small.nCtx, 256);
  small.loadStateBytes(ref.saved);
  assert.throws(() => small.loadStateBytes(s),
    (e) => e instanceof ContextFullError && e instanceof RangeError && /holds 300 tokens.*nCtx=256/.test(e.message));
  assert.deepEqual(small.tokens, ref.tokens);
  assert.equal(cont(small, ref.tokens), ref.continuation);
  small.close();
});

test('the state of another real model is refused, naming the field', () => {
  const minilm = JsModel.load(minilmPath());
  const gen = new JsEmbeddingGenerator(minilm);
  const before = gen.embed('a sentence');
  assert.throws(() => gen.context.loadStateBytes(ref.saved),
    /another model: architecture is 'llama' in the state but 'bert'/);
  assert.throws(() => gen.context.stateBytes(), /no KV cache/);
  assert.deepEqual(gen.embed('a sentence'), before);
  gen.close();
  minilm.close();
});

test('wrong argument types throw TypeError', () => {
  const c = newContext(128);
  for (const bad of ['a string', null, undefined, [1, 2, 3], 42, new ArrayBuffer(8)]) {
    assert.throws(() => c.loadStateBytes(bad), TypeError);
  }
  for (const bad of [42, null, undefined, Buffer.from('x.state'), {}]) {
    assert.throws(() => c.loadState(bad), TypeError);
    assert.throws(() => c.saveState(bad), TypeError);
  }
  assert.throws(() => c.saveState(''), /path is empty/);
  assert.throws(() => c.loadState(''), /path is empty/);
  c.close();
});

test('a closed context throws', () => {
  const c = newContext(128);
  c.close();
  assert.throws(() => c.stateBytes(), /closed/);
  assert.throws(() => c.loadStateBytes(ref.saved), /closed/);
  assert.throws(() => c.saveState(path.join(tmp, 'closed.state')), /closed/);
  assert.throws(() => c.loadState(path.join(tmp, 'closed.state')), /closed/);
});

test('not while an async generation runs on the context', async () => {
  const c = newContext();
  const stream = c.generateStreamAsync(PROMPT, 8, greedy, { ignoreEos: true });
  await stream.next();
  const file = path.join(tmp, 'busy.state');
  assert.throws(() => c.stateBytes(), /busy/);
  assert.throws(() => c.saveState(file), /busy/);
  assert.throws(() => c.loadStateBytes(ref.saved), /busy/);
  assert.ok(!fs.existsSync(file));
  await stream.return();
  c.loadStateBytes(ref.saved);
  checkContinues(c);
  c.close();
});

test('the state methods are typed in index.d.ts (tsc --strict)', () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'ts-'));
  const nodeDir = path.resolve(__dirname, '..');
  fs.writeFileSync(path.join(dir, 'use.ts'), `
import { JsContext } from 'mullama';
export function roundTrip(ctx: JsContext, file: string): Buffer {
  const saved: Buffer = ctx.stateBytes();
  ctx.loadStateBytes(saved);
  ctx.loadStateBytes(new Uint8Array(saved));
  ctx.saveState(file);
  ctx.loadState(file);
  return saved;
}
// @ts-expect-error a path is a string
export const bad = (ctx: JsContext): void => ctx.loadState(42);
`);
  fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, target: 'ES2022', module: 'commonjs', lib: ['ES2022', 'ESNext.Disposable'],
      types: ['node'], typeRoots: [path.join(nodeDir, 'node_modules', '@types')], skipLibCheck: true,
      paths: { mullama: [path.join(nodeDir, 'index.d.ts')] },
    },
    files: ['use.ts'],
  }));
  const tsc = require.resolve('typescript/bin/tsc', { paths: [nodeDir] });
  assert.equal(execFileSync(process.execPath, [tsc, '--project', path.join(dir, 'tsconfig.json')],
    { encoding: 'utf8', stdio: 'pipe' }), '');
});
