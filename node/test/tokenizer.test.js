'use strict';
// Tokenizer fidelity in Node: llama.cpp's own test vectors for every
// vocab-only GGUF (as tests/test_tokenizer.py does in Python), round trips, Unicode.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { JsModel } = require('..');
const { LLAMA_SRC, smollmPath } = require('./helpers/models');

const MODELS = path.join(LLAMA_SRC, 'models');
const VOCABS = fs.readdirSync(MODELS)
  .filter((f) => /^ggml-vocab-.*\.gguf$/.test(f) && fs.existsSync(path.join(MODELS, `${f}.inp`))).sort();
const SEP = '\n__ggml_vocab_test__\n';

function cases(file) {
  const raw = fs.readFileSync(path.join(MODELS, `${file}.inp`), 'utf8');
  const texts = [];
  for (let pos = 0; pos < raw.length;) { // the same split as tests/test-tokenizer-0.cpp
    const next = raw.indexOf(SEP, pos);
    if (next < 0) {
      texts.push(raw.slice(pos));
      break;
    }
    texts.push(raw.slice(pos, next));
    pos = next + SEP.length;
  }
  const outs = fs.readFileSync(path.join(MODELS, `${file}.out`), 'utf8').split('\n');
  if (outs[outs.length - 1] === '') outs.pop();
  assert.equal(texts.length, outs.length, file);
  return texts.map((t, i) => [t, outs[i].split(/\s+/).filter(Boolean).map(Number)]);
}

test('there are vocab vectors', () => {
  assert.ok(VOCABS.length >= 15, `${VOCABS.length} vocabularies`);
});

for (const file of VOCABS) {
  test(`llama.cpp tokenizer vectors: ${file}`, () => {
    const m = JsModel.load(path.join(MODELS, file), { vocabOnly: true });
    try {
      const all = cases(file);
      const failures = [];
      for (const [text, expected] of all) {
        const got = m.tokenize(text, false);
        if (JSON.stringify(got) !== JSON.stringify(expected)) failures.push(`${JSON.stringify(text)}: expected ${expected}, got ${got}`);
        assert.equal(m.detokenize(got), m.detokenize(expected));
      }
      assert.deepEqual(failures.slice(0, 5), []);
      assert.ok(all.length > 10);
    } finally {
      m.close();
    }
  });
}

// Vocabularies whose decoding is lossless (see tests/test_tokenizer.py).
const BYTE_LEVEL = ['qwen2', 'qwen35', 'deepseek-coder', 'deepseek-llm', 'command-r', 'llama-spm', 'phi-3'];

test('byte-level vocabularies round-trip exactly', () => {
  for (const name of BYTE_LEVEL) {
    const file = `ggml-vocab-${name}.gguf`;
    const m = JsModel.load(path.join(MODELS, file), { vocabOnly: true });
    for (const [text] of cases(file)) assert.equal(m.detokenize(m.tokenize(text, false)), text, `${name}: ${text}`);
    m.close();
  }
});

test.describe('on SmolLM2', () => {
  let model;
  test.before(() => { model = JsModel.load(smollmPath(), { vocabOnly: true }); });
  test.after(() => model.close());

  test('Unicode round-trips', () => {
    for (const text of ['café naïve', '日本語のテキスト', '🦙🚀 emoji 👩‍👩‍👧', 'e\u0301 combining', 'Ω≈ç√∫',
      '\u200b zero width', 'mixed ASCII and 中文 and العربية', 'tab\tnew\nline  spaces']) {
      assert.equal(model.detokenize(model.tokenize(text, false)), text);
    }
  });

  test('a lone surrogate is a clear error, not a silent U+FFFD', () => {
    assert.throws(() => model.tokenize('bad \ud800 text'), /surrogate/);
  });

  test('special tokens', () => {
    assert.deepEqual(model.tokenize('<|im_start|>user', false, true), [1, 4093]);
    assert.ok(!model.tokenize('<|im_start|>user', false, false).includes(1));
    assert.equal(model.detokenize([1, 4093]), 'user');
    assert.equal(model.detokenize([1, 4093], false, true), '<|im_start|>user');
  });

  test('known ids, the same as Python', () => {
    assert.deepEqual(model.tokenize('Hello, world!'), [19556, 28, 905, 17]);
    assert.equal(model.detokenize([19556, 28, 905, 17]), 'Hello, world!');
    assert.deepEqual(model.tokenize(''), []);
    assert.equal(model.detokenize(new Int32Array([19556, 28, 905, 17])), 'Hello, world!');
  });

  test('ids outside the vocabulary throw RangeError', () => {
    for (const bad of [[49152], [-1], [5, 2 ** 31], [1, 2, 1e12]]) {
      assert.throws(() => model.detokenize(bad), { name: 'RangeError', message: /outside the vocabulary/ });
    }
  });

  test('wrong token types throw TypeError', () => {
    for (const bad of ['abc', [1.5], [null], 7, [true], [NaN], undefined]) {
      assert.throws(() => model.detokenize(bad), TypeError);
    }
    assert.throws(() => model.tokenize(Buffer.from('bytes')), TypeError);
    assert.throws(() => model.tokenize('x', 1), TypeError);
  });

  test('long text', () => {
    const text = 'The quick brown fox jumps over the lazy dog. '.repeat(2000);
    const ids = model.tokenize(text, false);
    assert.ok(ids.length >= 20000 && ids.length <= 20001, String(ids.length));
    assert.equal(model.detokenize(ids), text);
  });
});
