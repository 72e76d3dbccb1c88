'use strict';
// Bad inputs across the public API (mirrors tests/hostile_cases.py), run in a
// child process by test/hostile.test.js.
//
// Each case is [name, expected, needle, call] and optionally a fifth element,
// the value a call that throws nothing must return.  `expected` is the exact
// class of the error (constructor name) or null when the call must succeed;
// `needle` is a substring its message must hold.  `call(s)` receives the
// objects made by setup(), so that this table can be read (names only) without
// loading anything.
//
// Run as a script (node hostile_cases.js SMOLLM MINILM), it runs every case and
// writes one JSON line before and one after each, synchronously, so that a
// crash names the case that caused it.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const mullama = require('../..');
const { LLAMA_SRC } = require('./models');

const { JsModel, JsContext, JsEmbeddingGenerator, cosineSimilarity, samplerParamsGreedy } = mullama;
const greedy = samplerParamsGreedy();

// -- GGUF bytes (as the Python helpers gguf() and kv_string() build them) ----------

function u32(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function u64(n) {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

function gguf({ version = 3, nTensors = 0, nKv = 0, body = Buffer.alloc(0), magic = 'GGUF' } = {}) {
  return Buffer.concat([Buffer.from(magic), u32(version), u64(nTensors), u64(nKv), body]);
}

function kvString(key, value, claimed = null) {
  const k = Buffer.from(key);
  return Buffer.concat([u64(k.length), k, u32(8), u64(claimed ?? value.length), value]);
}

/** n deterministic pseudo-random bytes (mulberry32), so that every run loads the same file. */
function randomBytes(n, seed = 0) {
  const out = Buffer.alloc(n);
  let a = seed >>> 0;
  for (let i = 0; i < n; i++) {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) & 0xff;
  }
  return out;
}

function head(file, n) {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(n);
    return buf.subarray(0, fs.readSync(fd, buf, 0, n, 0));
  } finally {
    fs.closeSync(fd);
  }
}

/** Everything the cases use, made once in the child. */
function setup(smollm, minilm, tmp) {
  const model = JsModel.load(smollm);
  const ctx = new JsContext(model, { nCtx: 256 });
  const closedModel = JsModel.load(smollm, { vocabOnly: true });
  closedModel.close();
  const closedCtx = new JsContext(model, { nCtx: 256 });
  closedCtx.close();
  const orphanModel = JsModel.load(smollm); // closed below while its context lives
  const orphanCtx = new JsContext(orphanModel, { nCtx: 128 });
  const minilmModel = JsModel.load(minilm);
  const emb = new JsEmbeddingGenerator(minilmModel);
  const closedEmb = new JsEmbeddingGenerator(minilmModel);
  closedEmb.close();
  const real = head(smollm, 1 << 20);

  const corruptCount = Buffer.from(real.subarray(0, 4096));
  corruptCount.writeBigUInt64LE(2n ** 60n, 16); // n_kv
  const gpt2 = fs.readFileSync(path.join(LLAMA_SRC, 'models', 'ggml-vocab-gpt-2.gguf'));
  // Found by the Python fuzz test: llama.cpp aborts (GGML_ASSERT) on a vocabulary with a repeated token.
  const dupAt = gpt2.indexOf(Buffer.concat([u64(1), Buffer.from('"')])); // the second token, '"', becomes '!'
  const duplicate = Buffer.concat([gpt2.subarray(0, dupAt + 8), Buffer.from('!'), gpt2.subarray(dupAt + 9)]);

  const files = {
    'empty.gguf': Buffer.alloc(0),
    'random.gguf': randomBytes(8192),
    'magic.gguf': Buffer.concat([Buffer.from('GGML'), real.subarray(4, 4096)]),
    'trunc.gguf': real.subarray(0, 4000),
    'trunc2.gguf': real,
    'ver.gguf': gguf({ version: 1234 }),
    'kv.gguf': corruptCount,
    'tensors.gguf': gguf({ nTensors: 2n ** 62n }),
    'str.gguf': gguf({ nKv: 1, body: kvString('general.name', Buffer.from('x'), 2n ** 40n) }),
    'dims.gguf': gguf({ nTensors: 1, body: Buffer.concat([u64(1), Buffer.from('t'), u32(9), Buffer.alloc(80)]) }),
    'ttype.gguf': gguf({ nTensors: 1,
      body: Buffer.concat([u64(1), Buffer.from('t'), u32(1), u64(4), u32(999), Buffer.alloc(16)]) }),
    'vtype.gguf': gguf({ nKv: 1, body: Buffer.concat([u64(1), Buffer.from('k'), u32(77), Buffer.alloc(16)]) }),
    'arr.gguf': gguf({ nKv: 1, body: Buffer.concat([u64(1), Buffer.from('a'), u32(9), u32(4), u64(2n ** 50n)]) }),
    'dup.gguf': duplicate,
  };
  for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(tmp, name), data);
  return { smollm, minilm, tmp, model, ctx, closedModel, closedCtx, orphanModel, orphanCtx, minilmModel, emb,
    closedEmb, file: (name) => path.join(tmp, name) };
}

/** An async stream left suspended after its first piece, the context it runs on, and a way to end both. */
async function openStream(s) {
  const c = new JsContext(s.model, { nCtx: 128 });
  const stream = c.generateStreamAsync('Once upon a time', 50, greedy, { ignoreEos: true });
  await stream.next();
  const finish = async () => {
    c.cancel();
    for await (const _ of stream); // eslint-disable-line no-unused-vars, no-empty
    c.close();
  };
  return [c, finish];
}

async function whileStreaming(s, call) {
  const [c, finish] = await openStream(s);
  try {
    return call(c);
  } finally {
    await finish();
  }
}

const CASES = [
  // files
  ['missing file', 'Error', 'No such file', (s) => JsModel.load(s.file('nope.gguf'))],
  ['directory', 'Error', 'directory', (s) => JsModel.load(s.tmp)],
  ['empty file', 'Error', 'empty', (s) => JsModel.load(s.file('empty.gguf'))],
  ['random bytes', 'Error', 'magic', (s) => JsModel.load(s.file('random.gguf'))],
  ['wrong magic', 'Error', 'magic', (s) => JsModel.load(s.file('magic.gguf'))],
  ['truncated header', 'Error', 'not a valid GGUF file', (s) => JsModel.load(s.file('trunc.gguf'))],
  ['truncated model', 'Error', 'Failed to load model', (s) => JsModel.load(s.file('trunc2.gguf'))],
  ['unsupported version', 'Error', 'version', (s) => JsModel.load(s.file('ver.gguf'))],
  ['absurd key count', 'Error', 'key/value', (s) => JsModel.load(s.file('kv.gguf'))],
  ['absurd tensor count', 'Error', 'tensors', (s) => JsModel.load(s.file('tensors.gguf'))],
  ['string past the end', 'Error', 'claims a length', (s) => JsModel.load(s.file('str.gguf'))],
  ['too many dimensions', 'Error', 'dimensions', (s) => JsModel.load(s.file('dims.gguf'))],
  ['unknown tensor type', 'Error', 'unknown type', (s) => JsModel.load(s.file('ttype.gguf'))],
  ['unknown value type', 'Error', 'unknown value type', (s) => JsModel.load(s.file('vtype.gguf'))],
  ['huge array', 'Error', 'elements', (s) => JsModel.load(s.file('arr.gguf'))],
  ['duplicate vocabulary token', 'Error', 'twice', (s) => JsModel.load(s.file('dup.gguf'))],
  ['empty path', 'Error', 'the path is empty', () => JsModel.load('')],
  ['path with a NUL byte', 'Error', 'null bytes', (s) => JsModel.load(`${s.smollm}\0x`)],
  // JsModel.load arguments
  ['path number', 'TypeError', 'path', () => JsModel.load(42)],
  ['path null', 'TypeError', 'path', () => JsModel.load(null)],
  ['path undefined', 'TypeError', 'path', () => JsModel.load()],
  ['path Buffer', 'TypeError', 'path', () => JsModel.load(Buffer.from('m.gguf'))],
  ['params not an object', 'TypeError', 'params', (s) => JsModel.load(s.smollm, 'vocabOnly')],
  ['params unknown key', 'TypeError', 'n_gpu_layers', (s) => JsModel.load(s.smollm, { n_gpu_layers: 0 })],
  ['nGpuLayers string', 'TypeError', 'nGpuLayers', (s) => JsModel.load(s.smollm, { nGpuLayers: '1' })],
  ['nGpuLayers -2', 'RangeError', 'nGpuLayers', (s) => JsModel.load(s.smollm, { nGpuLayers: -2 })],
  ['nGpuLayers 1.5', 'TypeError', 'nGpuLayers', (s) => JsModel.load(s.smollm, { nGpuLayers: 1.5 })],
  ['useMmap string', 'TypeError', 'useMmap', (s) => JsModel.load(s.smollm, { useMmap: 'yes' })],
  ['vocabOnly number', 'TypeError', 'vocabOnly', (s) => JsModel.load(s.smollm, { vocabOnly: 1 })],
  ['progressCallback not a function', 'TypeError', 'progressCallback',
    (s) => JsModel.load(s.smollm, { progressCallback: 5 })],
  ['direct construction', 'TypeError', 'JsModel.load', () => new JsModel()],
  // JsContext
  ['context of null', 'TypeError', 'model', () => new JsContext(null)],
  ['context of a path', 'TypeError', 'model', (s) => new JsContext(s.smollm)],
  ['context params not an object', 'TypeError', 'params', (s) => new JsContext(s.model, 256)],
  ['context params unknown key', 'TypeError', 'n_ctx', (s) => new JsContext(s.model, { n_ctx: 256 })],
  ['nCtx negative', 'RangeError', 'nCtx', (s) => new JsContext(s.model, { nCtx: -1 })],
  ['nCtx string', 'TypeError', 'nCtx', (s) => new JsContext(s.model, { nCtx: '512' })],
  ['nCtx NaN', 'TypeError', 'nCtx', (s) => new JsContext(s.model, { nCtx: NaN })],
  ['nCtx Infinity', 'TypeError', 'nCtx', (s) => new JsContext(s.model, { nCtx: Infinity })],
  ['nCtx absurd', 'RangeError', 'nCtx', (s) => new JsContext(s.model, { nCtx: 1e12 })],
  ['nCtx over training', 'RangeError', 'nCtxTrain', (s) => new JsContext(s.model, { nCtx: 8193 })],
  ['nBatch zero', 'RangeError', 'nBatch', (s) => new JsContext(s.model, { nBatch: 0 })],
  ['nBatch negative', 'RangeError', 'nBatch', (s) => new JsContext(s.model, { nBatch: -5 })],
  ['nBatch absurd', 'RangeError', 'nBatch', (s) => new JsContext(s.model, { nBatch: 1e10 })],
  ['nUbatch negative', 'RangeError', 'nUbatch', (s) => new JsContext(s.model, { nUbatch: -1 })],
  ['nSeqMax zero', 'RangeError', 'nSeqMax', (s) => new JsContext(s.model, { nSeqMax: 0 })],
  ['nThreads negative', 'RangeError', 'nThreads', (s) => new JsContext(s.model, { nThreads: -1 })],
  ['embeddings string', 'TypeError', 'embeddings', (s) => new JsContext(s.model, { embeddings: 'yes' })],
  ['pooling bogus', 'RangeError', 'pooling', (s) => new JsContext(s.model, { pooling: 'bogus' })],
  // sampler parameters (checked when a generation starts)
  ['temperature negative', 'RangeError', 'temperature', (s) => s.ctx.generate('Hi', 2, { temperature: -1 })],
  ['temperature string', 'TypeError', 'temperature', (s) => s.ctx.generate('Hi', 2, { temperature: 'hot' })],
  ['temperature NaN', 'RangeError', 'temperature', (s) => s.ctx.generate('Hi', 2, { temperature: NaN })],
  ['temperature Infinity', 'RangeError', 'temperature', (s) => s.ctx.generate('Hi', 2, { temperature: Infinity })],
  ['topP above 1', 'RangeError', 'topP', (s) => s.ctx.generate('Hi', 2, { topP: 2.0 })],
  ['topP -Infinity', 'RangeError', 'topP', (s) => s.ctx.generate('Hi', 2, { topP: -Infinity })],
  ['topK negative', 'RangeError', 'topK', (s) => s.ctx.generate('Hi', 2, { topK: -3 })],
  ['minP above 1', 'RangeError', 'minP', (s) => s.ctx.generate('Hi', 2, { minP: 1.5 })],
  ['typicalP zero', 'RangeError', 'typicalP', (s) => s.ctx.generate('Hi', 2, { typicalP: 0.0 })],
  ['penaltyRepeat zero', 'RangeError', 'penaltyRepeat', (s) => s.ctx.generate('Hi', 2, { penaltyRepeat: 0.0 })],
  ['penaltyFreq NaN', 'RangeError', 'penaltyFreq', (s) => s.ctx.generate('Hi', 2, { penaltyFreq: NaN })],
  ['penaltyLastN -7', 'RangeError', 'penaltyLastN', (s) => s.ctx.generate('Hi', 2, { penaltyLastN: -7 })],
  ['seed negative', 'RangeError', 'seed', (s) => s.ctx.generate('Hi', 2, { seed: -1 })],
  ['seed 2**32', 'RangeError', 'seed', (s) => s.ctx.generate('Hi', 2, { seed: 2 ** 32 })],
  ['seed float', 'TypeError', 'seed', (s) => s.ctx.generate('Hi', 2, { seed: 1.5 })],
  ['params unknown field', 'TypeError', 'top_k', (s) => s.ctx.generate('Hi', 2, { top_k: 1 })],
  ['params wrong type', 'TypeError', 'params', (s) => s.ctx.generate('Hi', 2, 'greedy')],
  // generation
  ['prompt null', 'TypeError', 'prompt', (s) => s.ctx.generate(null)],
  ['prompt number', 'TypeError', 'prompt', (s) => s.ctx.generate(123)],
  ['prompt ids out of vocab', 'RangeError', 'outside the vocabulary', (s) => s.ctx.generateFromTokens([1, 1e9])],
  ['prompt ids negative', 'RangeError', 'outside the vocabulary', (s) => s.ctx.generateFromTokens([-1])],
  ['prompt id 2**32 + 1 (no wrap-around)', 'RangeError', 'outside the vocabulary',
    (s) => s.ctx.generateFromTokens([2 ** 32 + 1])],
  ['prompt id NaN', 'TypeError', 'prompt[0]', (s) => s.ctx.generateFromTokens([NaN])],
  ['prompt id float', 'TypeError', 'prompt[1]', (s) => s.ctx.generateFromTokens([1, 2.5])],
  ['prompt ids as a string', 'TypeError', 'tokens', (s) => s.ctx.generateFromTokens('Hello')],
  ['stream prompt ids out of vocab', 'RangeError', 'outside the vocabulary',
    (s) => s.ctx.generateStream(Int32Array.of(1, 49152))],
  ['empty prompt', 'Error', 'empty', (s) => s.ctx.generate('')],
  ['empty token prompt', 'Error', 'empty', (s) => s.ctx.generateFromTokens([])],
  ['overlong prompt', 'ContextFullError', 'nCtx', (s) => s.ctx.generate('word '.repeat(1000))],
  ['maxTokens negative', 'RangeError', 'maxTokens', (s) => s.ctx.generate('Hi', -1)],
  ['maxTokens string', 'TypeError', 'maxTokens', (s) => s.ctx.generate('Hi', '9')],
  ['maxTokens NaN', 'TypeError', 'maxTokens', (s) => s.ctx.generate('Hi', NaN)],
  ['maxTokens Infinity', 'TypeError', 'maxTokens', (s) => s.ctx.generate('Hi', Infinity)],
  ['maxTokens huge', 'ContextFullError', 'context is full',
    (s) => s.ctx.generate('Hi', 1e15, greedy, { ignoreEos: true })],
  ['stop not strings', 'TypeError', 'stop', (s) => s.ctx.generate('Hi', 2, greedy, { stop: [1] })],
  ['stop empty string', 'RangeError', 'stop', (s) => s.ctx.generate('Hi', 2, greedy, { stop: [''] })],
  ['options unknown key', 'TypeError', 'max_tokens', (s) => s.ctx.generate('Hi', 2, greedy, { max_tokens: 2 })],
  ['signal on the synchronous API', 'TypeError', 'signal',
    (s) => s.ctx.generate('Hi', 2, greedy, { signal: new AbortController().signal })],
  ['signal not an AbortSignal', 'TypeError', 'signal',
    (s) => s.ctx.generateAsync('Hi', 2, greedy, { signal: 'stop' })],
  ['signal already aborted', 'DOMException', 'abort',
    (s) => s.ctx.generateAsync('Hi', 2, greedy, { signal: AbortSignal.abort() })],
  ['decode empty', 'RangeError', 'empty', (s) => s.ctx.decode([])],
  ['decode out of vocab', 'RangeError', 'outside the vocabulary', (s) => s.ctx.decode([49152])],
  ['decode a string', 'TypeError', 'tokens', (s) => s.ctx.decode('Hello')],
  ['decode past nCtx', 'ContextFullError', 'nCtx', (s) => s.ctx.decode(new Array(300).fill(1))],
  ['generate while an async stream is open', 'Error', 'busy', (s) => whileStreaming(s, (c) => c.generate('Hi', 2))],
  ['close while an async stream is open', 'Error', 'async generation', (s) => whileStreaming(s, (c) => c.close())],
  // tokenizer, metadata, chat templates
  ['tokenize null', 'TypeError', 'text', (s) => s.model.tokenize(null)],
  ['tokenize addBos string', 'TypeError', 'addBos', (s) => s.model.tokenize('x', 'yes')],
  ['detokenize out of vocab', 'RangeError', 'outside the vocabulary', (s) => s.model.detokenize([49152])],
  ['detokenize string', 'TypeError', 'tokens', (s) => s.model.detokenize('abc')],
  ['detokenize floats', 'TypeError', 'integer', (s) => s.model.detokenize([1.5])],
  ['detokenize Infinity', 'TypeError', 'integer', (s) => s.model.detokenize([Infinity])],
  ['detokenize typed array out of vocab', 'RangeError', 'outside the vocabulary',
    (s) => s.model.detokenize(Int32Array.of(5, -2))],
  ['tokenIsEog -1', 'RangeError', 'token', (s) => s.model.tokenIsEog(-1)],
  ['tokenToPiece 2**32', 'RangeError', 'token', (s) => s.model.tokenToPiece(2 ** 32)],
  ['lone surrogate', 'Error', 'surrogate', (s) => s.model.tokenize('\ud800')],
  ['lone surrogate prompt', 'Error', 'surrogate', (s) => s.ctx.generate('ab\udc00')],
  ['meta key number', 'TypeError', 'key', (s) => s.model.meta(5)],
  ['chat messages null', 'TypeError', 'messages', (s) => s.model.applyChatTemplate(null)],
  ['chat message short', 'TypeError', 'messages[0]', (s) => s.model.applyChatTemplate([['user']])],
  ['chat content number', 'TypeError', 'messages[0]', (s) => s.model.applyChatTemplate([['user', 5]])],
  ['chat template number', 'TypeError', 'template', (s) => s.model.applyChatTemplate([['u', 'x']], true, 5)],
  ['chat template unknown name', 'RangeError', 'no-such', (s) => s.model.applyChatTemplate([['u', 'x']], true, 'no-such')],
  // embeddings and vectors
  ['embed empty', 'RangeError', 'empty', (s) => s.emb.embed('')],
  ['embedBatch with an empty string', 'RangeError', 'texts[1] is empty', (s) => s.emb.embedBatch(['ok', ''])],
  ['embed number', 'TypeError', 'string', (s) => s.emb.embed(5)],
  ['embed null', 'TypeError', 'string', (s) => s.emb.embed(null)],
  ['embedBatch string', 'TypeError', 'array', (s) => s.emb.embedBatch('abc')],
  ['embedBatch null element', 'TypeError', 'texts[1]', (s) => s.emb.embedBatch(['ok', null])],
  ['embedMatrix number', 'TypeError', 'array', (s) => s.emb.embedMatrix(3)],
  ['embed overlong', 'RangeError', 'tokens', (s) => s.emb.embed('word '.repeat(2000))],
  ['embed truncate string', 'TypeError', 'truncate', (s) => s.emb.embed('hello', { truncate: 'yes' })],
  ['embed options unknown key', 'TypeError', 'normalize', (s) => s.emb.embed('hello', { normalize: false })],
  ['embed lone surrogate', 'Error', 'surrogate', (s) => s.emb.embed('a\ud800b')],
  ['generator of a path', 'TypeError', 'model', (s) => new JsEmbeddingGenerator(s.minilm)],
  ['generator nCtx zero', 'RangeError', 'nCtx', (s) => new JsEmbeddingGenerator(s.minilmModel, 0)],
  ['generator nCtx string', 'TypeError', 'nCtx', (s) => new JsEmbeddingGenerator(s.minilmModel, '512')],
  ['generator normalize string', 'TypeError', 'normalize',
    (s) => new JsEmbeddingGenerator(s.minilmModel, 512, 'yes')],
  ['generator options unknown key', 'TypeError', 'pooling',
    (s) => new JsEmbeddingGenerator(s.minilmModel, 512, true, { pooling: 'cls' })],
  ['vectors mismatched', 'Error', 'same length', () => cosineSimilarity([1, 2, 3], [1, 2])],
  ['vectors 2-D', 'TypeError', 'not a number', () => cosineSimilarity([[1, 1], [1, 1]], [[1, 1], [1, 1]])],
  ['vectors not arrays', 'TypeError', 'arrays', () => cosineSimilarity('abc', 'abd')],
  ['vectors with a string element', 'TypeError', 'element 1', () => cosineSimilarity([1, '2'], [1, 2])],
  // lifetime
  ['model use after close', 'Error', 'closed', (s) => s.closedModel.tokenize('x')],
  ['model property after close', 'Error', 'closed', (s) => s.closedModel.nVocab],
  ['context use after close', 'Error', 'closed', (s) => s.closedCtx.generate('x')],
  ['decode after close', 'Error', 'closed', (s) => s.closedCtx.decode([1])],
  ['async generation after close', 'Error', 'closed', (s) => s.closedCtx.generateAsync('x', 2)],
  ['context on closed model', 'Error', 'closed', (s) => new JsContext(s.closedModel)],
  ['generator on closed model', 'Error', 'closed', (s) => new JsEmbeddingGenerator(s.closedModel)],
  ['embed after the generator is closed', 'Error', 'closed', (s) => s.closedEmb.embed('hello')],
  // the model is marked closed at once but freed only with its last context
  ['close a model under a live context', null, '', (s) => { s.orphanModel.close(); return s.orphanModel._held.freed; },
    false],
  ['context whose model was closed', 'Error', 'closed', (s) => s.orphanCtx.generate('Hello', 2, greedy)],
  ['close that context, which frees the model', null, '', (s) => { s.orphanCtx.close(); return s.orphanModel._held.freed; },
    true],
  ['double close', null, '', (s) => {
    s.closedModel.close();
    s.closedCtx.close();
    s.closedModel.dispose();
    s.closedCtx[Symbol.dispose]();
    s.orphanModel.close();
    s.orphanCtx.close();
    s.closedEmb.close();
    return [s.closedModel.closed, s.closedCtx.closed];
  }, [true, true]],
  ['backendFree twice', null, '', () => { mullama.backendFree(); mullama.backendFree(); }],
  ['generation after backendFree', null, '', (s) => typeof s.ctx.generate('Hello', 2, greedy), 'string'],
];

/** value as JSON can carry it (an unexpected object, e.g. a model that loaded, as its description). */
function plain(value) {
  if (value === undefined) return null;
  try {
    return JSON.parse(JSON.stringify(value));
  } catch {
    return String(value);
  }
}

function describeError(e) {
  const chain = [];
  for (let p = Object.getPrototypeOf(e); p; p = Object.getPrototypeOf(p)) {
    if (Object.prototype.hasOwnProperty.call(p, 'constructor')) chain.push(p.constructor.name);
  }
  return { raised: e && e.constructor ? e.constructor.name : typeof e, chain, name: e && e.name,
    message: e instanceof Error ? e.message : String(e) };
}

async function main() {
  const [smollm, minilm] = process.argv.slice(2);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-hostile-'));
  const write = (obj) => fs.writeSync(1, `${JSON.stringify(obj)}\n`); // synchronous: nothing is lost in a crash
  try {
    const s = setup(smollm, minilm, tmp);
    for (const [name, , , call] of CASES) {
      write({ start: name });
      let result;
      try {
        let value = call(s);
        if (value && typeof value.then === 'function') value = await value;
        result = { case: name, raised: null, message: '', returned: plain(value) };
      } catch (e) {
        result = { case: name, ...describeError(e) };
      }
      write(result);
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  write({ done: true, pid: process.pid });
}

module.exports = { CASES };

if (require.main === module) main();
