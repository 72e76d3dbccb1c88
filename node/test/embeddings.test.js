'use strict';
// JsEmbeddingGenerator and cosineSimilarity on all-MiniLM-L6-v2 (mirrors
// tests/test_embeddings.py): the same vectors as the Python binding, computed
// in this run by one Python child, and as sentence-transformers' stored
// reference (tests/data/minilm_reference.npz, whose rows the Python child
// prints, so that Node needs no npz reader).
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { JsModel, JsContext, JsEmbeddingGenerator, cosineSimilarity } = require('..');
const { ROOT, python, minilmPath } = require('./helpers/models');

const SENTENCES = fs.readFileSync(path.join(ROOT, 'tests', 'data', 'sentences.txt'), 'utf8').split('\n')
  .filter((line, i, all) => !(i === all.length - 1 && line === '')); // the file ends with a newline

const PY = `
import json, sys
import numpy as np
from mullama import Model, EmbeddingGenerator
sentences = json.loads(sys.stdin.read())
ref = np.load("tests/data/minilm_reference.npz")
off = ref["hf_token_offsets"]
m = Model.load(sys.argv[1])
gen = EmbeddingGenerator(m)
print(json.dumps({
    "python": gen.embed_matrix(sentences).tolist(),
    "sentences": [str(s) for s in ref["sentences"]],
    "reference": ref["embeddings"].tolist(),
    "hf_ids": [ref["hf_token_ids"][off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)],
    "search_documents": [str(d) for d in ref["search_documents"]],
    "search_query": str(ref["search_query"]),
    "search_order": ref["search_order"].tolist(),
    "search_doc_scores": ref["search_doc_scores"].tolist(),
}))
`;

let model;
let gen;
let py;
test.before(() => {
  model = JsModel.load(minilmPath());
  gen = new JsEmbeddingGenerator(model);
  py = JSON.parse(execFileSync(python(), ['-c', PY, minilmPath()], { cwd: ROOT, encoding: 'utf8',
    input: JSON.stringify(SENTENCES), maxBuffer: 256 << 20, env: { ...process.env, PYTHONPATH: ROOT } }));
});
test.after(() => {
  gen.close();
  model.close();
});

function norm(v) {
  let ss = 0;
  for (const x of v) ss += x * x;
  return Math.sqrt(ss);
}

function rows(matrix, n) {
  return Array.from({ length: matrix.length / n }, (_, k) => matrix.subarray(k * n, (k + 1) * n));
}

/** The smallest cosine of row pairs, and where it is. */
function worst(a, b) {
  let min = Infinity;
  let at = -1;
  a.forEach((row, i) => {
    const c = cosineSimilarity(row, b[i]);
    if (c < min) [min, at] = [c, i];
  });
  return [min, at];
}

test('the model declares mean pooling; the generator reports its dimension', () => {
  assert.equal(model.architecture, 'bert');
  assert.equal(model.nEmbd, 384);
  assert.equal(model.meta('bert.pooling_type'), '1');
  assert.equal(gen.nEmbd, 384);
  assert.equal(gen.maxTokens, 512);
});

test('the sentences file is the reference set', () => {
  assert.equal(SENTENCES.length, 246);
  assert.deepEqual(SENTENCES, py.sentences);
});

test('Node embeddings equal the Python binding\'s (246 sentences)', (t) => {
  const node = rows(gen.embedMatrix(SENTENCES), 384);
  assert.equal(node.length, py.python.length);
  const [min, at] = worst(node, py.python);
  let maxDiff = 0;
  node.forEach((row, i) => row.forEach((x, j) => { maxDiff = Math.max(maxDiff, Math.abs(x - py.python[i][j])); }));
  t.diagnostic(`Node vs Python: min cosine ${min}, max |difference| ${maxDiff}`);
  assert.ok(min >= 0.99999, `${JSON.stringify(SENTENCES[at])}: cosine ${min} with the Python binding's embedding`);
});

test('matches sentence-transformers where the token ids agree with Hugging Face\'s', (t) => {
  const same = [];
  const differing = [];
  SENTENCES.forEach((s, i) => {
    const ids = model.tokenize(s);
    (ids.length === py.hf_ids[i].length && ids.every((t, k) => t === py.hf_ids[i][k]) ? same : differing).push(i);
  });
  // llama.cpp's WordPiece differs from Hugging Face's only where HF decomposes Hangul syllables.
  for (const i of differing) {
    assert.ok([...SENTENCES[i]].some((ch) => ch >= '\uac00' && ch <= '\ud7a3'), `${JSON.stringify(SENTENCES[i])}`);
  }
  assert.ok(same.length >= 200, `${same.length} sentences tokenized as Hugging Face does`);
  const node = rows(gen.embedMatrix(same.map((i) => SENTENCES[i])), 384);
  const [min, at] = worst(node, same.map((i) => py.reference[i]));
  t.diagnostic(`Node vs sentence-transformers on ${same.length} sentences (${differing.length} skipped): `
    + `min cosine ${min}`);
  assert.ok(min >= 0.999, `${JSON.stringify(SENTENCES[same[at]])}: cosine ${min} with sentence-transformers`);
});

test('semantic search ranks as sentence-transformers does', () => {
  const q = gen.embed(py.search_query);
  const scores = gen.embedBatch(py.search_documents).map((d) => d.reduce((s, x, i) => s + x * q[i], 0));
  const order = scores.map((s, i) => [s, i]).sort((a, b) => b[0] - a[0]).map(([, i]) => i);
  assert.deepEqual(order, py.search_order);
  scores.forEach((s, i) => assert.ok(Math.abs(s - py.search_doc_scores[i]) <= 2e-3, `document ${i}: ${s}`));
});

test('embed, embedBatch and embedMatrix agree', () => {
  const texts = SENTENCES.slice(0, 40);
  const batch = gen.embedBatch(texts);
  const single = texts.map((t) => gen.embed(t));
  const matrix = rows(gen.embedMatrix(texts), 384);
  let maxDiff = 0;
  batch.forEach((row, i) => row.forEach((x, j) => { maxDiff = Math.max(maxDiff, Math.abs(x - single[i][j])); }));
  // Packing changes only the floating-point summation order.
  assert.ok(maxDiff < 1e-3, `max |batch - single| ${maxDiff}`);
  assert.ok(worst(batch, single)[0] > 0.99999);
  batch.forEach((row, i) => assert.deepEqual(Float32Array.from(row), matrix[i]));
});

test('shapes and types', () => {
  const e = gen.embed('Hello, world!');
  assert.ok(Array.isArray(e) && e.length === 384 && e.every((x) => typeof x === 'number' && Number.isFinite(x)));
  const m = gen.embedMatrix(['a', 'b', 'c']);
  assert.ok(m instanceof Float32Array && m.length === 3 * 384);
  assert.deepEqual(gen.embedBatch([]), []);
  assert.equal(gen.embedMatrix([]).length, 0);
});

test('normalize: unit vectors by default, the raw pooled vector with normalize = false', () => {
  for (const row of rows(gen.embedMatrix(SENTENCES.slice(0, 30)), 384)) assert.ok(Math.abs(norm(row) - 1) < 1e-5);
  const rawGen = new JsEmbeddingGenerator(model, 512, false);
  const raw = rawGen.embed('Hello there');
  const unit = gen.embed('Hello there');
  const n = norm(raw);
  assert.ok(Math.abs(n - 1) > 0.01, `the raw vector has norm ${n}`);
  assert.ok(Math.abs(cosineSimilarity(raw, unit) - 1) < 1e-5);
  raw.forEach((x, i) => assert.ok(Math.abs(x / n - unit[i]) < 1e-6, `component ${i}`));
  rawGen.close();
});

test('errors: empty and non-string texts, overlong texts, bad arguments', () => {
  assert.throws(() => gen.embed(''), { name: 'RangeError', message: /empty/ });
  assert.throws(() => gen.embedBatch(['ok', '']), { name: 'RangeError', message: /texts\[1\] is empty/ });
  for (const bad of [42, null, undefined, {}, ['a'], Buffer.from('a')]) assert.throws(() => gen.embed(bad), TypeError);
  assert.throws(() => gen.embedBatch('not a list'), TypeError);
  assert.throws(() => gen.embedBatch(['ok', null]), { name: 'TypeError', message: /texts\[1\]/ });
  assert.throws(() => gen.embedMatrix(['ok', 7]), TypeError);
  const long = 'word '.repeat(600);
  assert.throws(() => gen.embed(long), { name: 'RangeError', message: /has \d+ tokens, more than the 512/ });
  assert.throws(() => gen.embedBatch(['ok', long]), { name: 'RangeError', message: /texts\[1\] has \d+ tokens/ });
  assert.throws(() => gen.embed(long, { truncate: false }), RangeError);
  const cut = gen.embed(long, { truncate: true });
  assert.equal(cut.length, 384);
  // cut at 512 tokens: a longer text with the same first 512 tokens has the same embedding
  assert.ok(cosineSimilarity(cut, gen.embed('word '.repeat(700), { truncate: true })) > 0.99999);
  assert.throws(() => gen.embed('x', { truncate: 1 }), TypeError);
  const small = new JsEmbeddingGenerator(model, 16);
  assert.equal(small.maxTokens, 16);
  assert.throws(() => small.embed('This sentence is certainly longer than sixteen word pieces, it goes on and on and on.'),
    { name: 'RangeError', message: /more than the 16/ });
  small.close();
  assert.throws(() => new JsEmbeddingGenerator('model.gguf'), TypeError);
  assert.throws(() => new JsEmbeddingGenerator(model, 0), RangeError);
  assert.throws(() => new JsEmbeddingGenerator(model, 512, 'yes'), TypeError);
});

test('cosineSimilarity', () => {
  const a = [1, 2, 3];
  assert.ok(Math.abs(cosineSimilarity(a, a) - 1) < 1e-12);
  assert.ok(Math.abs(cosineSimilarity(a, a.map((x) => -x)) + 1) < 1e-12);
  assert.ok(Math.abs(cosineSimilarity(Float32Array.from(a), [2, 4, 6]) - 1) < 1e-7);
  assert.equal(cosineSimilarity([1, 0], [0, 1]), 0);
  assert.equal(cosineSimilarity([0, 0, 0], a), 0); // a zero vector has no direction
  assert.equal(cosineSimilarity(a, new Float64Array(3)), 0);
  const e = gen.embed('Hello');
  assert.ok(Math.abs(cosineSimilarity(e, e) - 1) < 1e-6);
  assert.throws(() => cosineSimilarity(a, [1, 2]), (err) => err.constructor === Error
    && err.message === 'Vectors must have the same length');
  assert.throws(() => cosineSimilarity(Float32Array.from(a), new Float32Array(2)), /Vectors must have the same length/);
  assert.throws(() => cosineSimilarity([[1, 1], [1, 1]], [[1, 1], [1, 1]]), TypeError);
  assert.throws(() => cosineSimilarity('abc', 'abd'), TypeError);
});

test('JsContext with embeddings: true gives the generator\'s un-normalized vector', () => {
  const ctx = new JsContext(model, { nCtx: 512, embeddings: true });
  assert.equal(ctx.getEmbeddings(), null); // nothing decoded yet
  ctx.decode(model.tokenize('Hello, world!'));
  const e = ctx.getEmbeddings();
  assert.ok(Array.isArray(e) && e.length === gen.nEmbd && e.every((x) => typeof x === 'number'));
  const rawGen = new JsEmbeddingGenerator(model, 512, false);
  const raw = rawGen.embed('Hello, world!');
  const scale = Math.max(...raw.map(Math.abs));
  let maxDiff = 0;
  e.forEach((x, i) => { maxDiff = Math.max(maxDiff, Math.abs(x - raw[i])); });
  assert.ok(maxDiff <= 1e-5 * scale, `max |context - generator| ${maxDiff} (largest component ${scale})`);
  assert.ok(Math.abs(cosineSimilarity(e, gen.embed('Hello, world!')) - 1) < 1e-5);
  rawGen.close();
  ctx.close();
  const plain = new JsContext(model, { nCtx: 512 });
  plain.decode(model.tokenize('Hello'));
  assert.equal(plain.getEmbeddings(), null);
  plain.close();
});

test('embedTokens embeds token lists exactly as embedMatrix embeds their texts; bad lists are refused', () => {
  // mirrors tests/test_embeddings.py::test_embed_tokens_is_embed_matrix_of_the_texts
  const texts = ['The cat sat on the mat.', 'A quick brown fox', 'Embeddings from token ids'];
  const ids = texts.map((t) => model.tokenize(t, true));
  assert.equal(gen.model, model);
  assert.deepEqual(gen.embedTokens(ids), gen.embedMatrix(texts));
  assert.throws(() => gen.embedTokens([ids[0], []]), (e) => e instanceof RangeError && /tokenLists\[1\] is empty/.test(e.message));
  assert.throws(() => gen.embedTokens([[ids[0][0], model.nVocab]]), (e) => e instanceof RangeError && /tokenLists\[0\]\[1\]/.test(e.message));
  const long = Array(Math.floor(gen.maxTokens / ids[0].length) + 1).fill(ids[0]).flat();
  assert.throws(() => gen.embedTokens([long]), (e) => e instanceof RangeError && /at most/.test(e.message));
  assert.throws(() => gen.embedTokens('text'), TypeError);
  assert.throws(() => gen.embedTokens([[1.5]]), (e) => e instanceof TypeError && /tokenLists\[0\]\[0\]/.test(e.message));
});
