'use strict';
// JsModel on SmolLM2: properties, metadata, loading options and errors, handle lifetime.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const mullama = require('..');
const { smollmPath } = require('./helpers/models');

const { JsModel, JsContext, samplerParamsGreedy } = mullama;
let model;
test.before(() => { model = JsModel.load(smollmPath()); });
test.after(() => model.close());

test('properties as the spec lists them', () => {
  assert.equal(model.nCtxTrain, 8192);
  assert.equal(model.nEmbd, 576);
  assert.equal(model.nVocab, 49152);
  assert.equal(model.nLayer, 30);
  assert.equal(model.nHead, 9);
  assert.equal(model.tokenBos, 1);
  assert.equal(model.tokenEos, 2);
  assert.equal(model.nParams, 134515008);
  assert.ok(model.size > 90e6 && model.size < 100e6);
  assert.equal(model.architecture, 'llama');
  assert.equal(model.name, 'Smollm2 135M 8k Lc100K Mix1 Ep2');
  assert.equal(model.description, 'llama 256M Q4_1');
  assert.equal(String(model), 'JsModel(name="Smollm2 135M 8k Lc100K Mix1 Ep2", arch="llama", params=134515008, size=96MB)');
});

test('metadata and meta()', () => {
  const meta = model.metadata();
  assert.equal(meta['general.architecture'], 'llama');
  assert.equal(meta['llama.context_length'], '8192');
  assert.equal(meta['tokenizer.ggml.bos_token_id'], '1');
  assert.ok(meta['tokenizer.chat_template'].startsWith('{% for message in messages %}'));
  assert.equal(model.meta('no.such.key'), null);
  assert.equal(model.chatTemplate, meta['tokenizer.chat_template']);
});

test('tokenIsEog', () => {
  assert.equal(model.tokenIsEog(2), true);
  assert.equal(model.tokenIsEog(model.tokenize('Hello', false)[0]), false);
  assert.throws(() => model.tokenIsEog(49152), { name: 'RangeError', message: /49151/ });
  assert.throws(() => model.tokenIsEog('2'), TypeError);
});

test('tokenToPiece gives the bytes of one token', () => {
  assert.deepEqual(model.tokenToPiece(19556), Buffer.from('Hello'));
  assert.throws(() => model.tokenToPiece(-1), RangeError);
});

test('load modes and the progress callback', () => {
  for (const useMmap of [false, true]) {
    const m = JsModel.load(smollmPath(), { useMmap, useMlock: false });
    assert.deepEqual(m.tokenize('Hi', false), [26843]);
    m.close();
  }
  const seen = [];
  JsModel.load(smollmPath(), { progressCallback: (f) => { seen.push(f); } }).close();
  assert.ok(seen.length && Math.abs(seen[seen.length - 1] - 1) < 1e-6);
  assert.deepEqual(seen, [...seen].sort((a, b) => a - b));
  assert.throws(() => JsModel.load(smollmPath(), { progressCallback: () => false }), /Failed to load model/);
  assert.throws(() => JsModel.load(smollmPath(), { progressCallback: () => { throw new SyntaxError('from callback'); } }),
    { name: 'SyntaxError', message: 'from callback' });
});

test('nGpuLayers on a CPU-only library warns and runs on the CPU', async () => {
  if (mullama.supportsGpuOffload()) return;
  const warned = new Promise((resolve) => process.once('warning', resolve));
  JsModel.load(smollmPath(), { nGpuLayers: -1, vocabOnly: true }).close();
  assert.match((await warned).message, /no GPU offload/);
});

test('the missing-file message is the spec one', () => {
  assert.throws(() => JsModel.load('./nonexistent.gguf'),
    { message: 'Failed to load model: No such file or directory: ./nonexistent.gguf' });
});

test('bad files throw a clear Error', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-'));
  const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; };
  const u64 = (n) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; };
  const cases = [
    [Buffer.alloc(0), /empty|magic|end of the file/],
    [Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 37 + 11) & 255)), /magic/],
    [Buffer.concat([Buffer.from('GGUF'), u32(3), u64(2n ** 62n), u64(1), Buffer.alloc(64)]), /tensors/],
    [Buffer.concat([Buffer.from('GGUF'), u32(3), u64(0), u64(2n ** 40n), Buffer.alloc(64)]), /key\/value/],
    [Buffer.concat([Buffer.from('GGUF'), u32(99), Buffer.alloc(64)]), /version/],
  ];
  try {
    cases.forEach(([content, needle], i) => {
      const f = path.join(dir, `bad${i}.gguf`);
      fs.writeFileSync(f, content);
      assert.throws(() => JsModel.load(f), (e) => e instanceof Error && /Failed to load model/.test(e.message)
        && needle.test(e.message), `case ${i}`);
    });
    const data = fs.readFileSync(smollmPath());
    for (const cut of [100, 2_000_000, Math.floor(data.length / 2)]) {
      const f = path.join(dir, `cut${cut}.gguf`);
      fs.writeFileSync(f, data.subarray(0, cut));
      assert.throws(() => JsModel.load(f), /Failed to load model/);
    }
    assert.throws(() => JsModel.load(dir), /is a directory/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('wrong argument types throw TypeError', () => {
  for (const [p, params] of [[42, {}], [Buffer.from('x.gguf'), {}], [smollmPath(), { nGpuLayers: '1' }],
    [smollmPath(), { nGpuLayers: 1.5 }], [smollmPath(), { useMmap: 1 }], [smollmPath(), { vocabOnly: 'yes' }],
    [smollmPath(), { progressCallback: 3 }], [smollmPath(), { nGpuLayer: 1 }], [smollmPath(), 'params']]) {
    assert.throws(() => JsModel.load(p, params), TypeError, JSON.stringify(params));
  }
  assert.throws(() => JsModel.load(smollmPath(), { nGpuLayers: -2 }), RangeError);
});

test('use after close throws, close is idempotent, direct construction is refused', () => {
  const m = JsModel.load(smollmPath(), { vocabOnly: true });
  m.close();
  m.close();
  m.dispose();
  assert.equal(String(m), 'JsModel(closed)');
  for (const call of [() => m.tokenize('x'), () => m.nVocab, () => m.metadata(), () => m.detokenize([1]),
    () => m.applyChatTemplate([['user', 'x']]), () => m.tokenIsEog(1), () => m.nEmbd, () => new JsContext(m)]) {
    assert.throws(call, /closed/);
  }
  assert.throws(() => new JsModel(), /JsModel.load/);
});

test('Symbol.dispose closes', () => {
  const m = JsModel.load(smollmPath(), { vocabOnly: true });
  m[Symbol.dispose]();
  assert.equal(m.closed, true);
});

test('closing a model before its context defers the free', () => {
  const m = JsModel.load(smollmPath());
  const ctx = new JsContext(m, { nCtx: 256 });
  m.close();
  assert.throws(() => ctx.generate('Hello', 3), /closed/);
  assert.equal(m._held.freed, false); // still held for the context
  ctx.close();
  assert.equal(m._held.freed, true);
});

test('a context keeps its model alive through garbage collection, and exit is silent', () => {
  const code = `
    const { JsModel, JsContext, samplerParamsGreedy, backendFree } = require(${JSON.stringify(path.resolve(__dirname, '..'))});
    let m = JsModel.load(${JSON.stringify(smollmPath())});
    const ctx = new JsContext(m, { nCtx: 256 });
    const other = new JsContext(m, { nCtx: 128 });
    m = null;
    global.gc();
    setTimeout(() => {
      global.gc();
      if (!ctx.generate('Hello', 3, samplerParamsGreedy())) process.exit(3);
      ctx.close();
      backendFree(); backendFree();
      console.log('done');
    }, 10);`;
  const out = execFileSync(process.execPath, ['--expose-gc', '-e', code], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  assert.equal(out, 'done\n');
});

test('utility functions', () => {
  assert.equal(typeof mullama.supportsGpuOffload(), 'boolean');
  assert.ok(mullama.maxDevices() >= 1);
  const info = mullama.systemInfo();
  assert.ok(info.includes('CPU') && info.includes('libllama'));
  assert.ok(mullama.version().includes('0c1e57098bba43ac29e6e3b677cdceebdd22334f'));
  assert.ok(mullama.devices().some((d) => d.type === 'cpu'));
  mullama.backendInit();
  const names = mullama.builtinChatTemplates();
  assert.ok(names.includes('chatml') && names.includes('llama3'));
  assert.equal(model.applyChatTemplate([['user', 'Hi']], true, 'chatml'),
    '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
  assert.throws(() => model.applyChatTemplate([['user', 'Hi']], true, 'no-such-template'), RangeError);
  const logged = [];
  mullama.setLogHandler((level, line) => logged.push([level, line]));
  JsModel.load(smollmPath(), { vocabOnly: true }).close();
  mullama.setLogHandler(null);
  assert.ok(logged.some(([, line]) => line.includes('llama')), 'log lines reach the handler');
  assert.throws(() => mullama.setLogHandler('x'), TypeError);
});
