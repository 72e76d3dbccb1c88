'use strict';
// Sentence embeddings: JsEmbeddingGenerator and cosineSimilarity (mirrors mullama/embedding.py).

const koffi = require('koffi');
const _lib = require('./_lib');
const { lib } = require('./_backend');
const { JsContext } = require('./context');
const { JsModel, utf8 } = require('./model');
const v = require('./_validate');

const { C } = _lib;
// Most sequences packed into one llama_decode call; llama.cpp allows up to 256.
const MAX_SEQS_PER_BATCH = 64;
// Tokens packed into one call (see mullama/embedding.py for why 128).
const DEFAULT_PACK_TOKENS = 128;
const EMBED_OPTIONS = ['truncate'];

class JsEmbeddingGenerator {
  /**
   * Turns text into embedding vectors.  Pooling follows the model's GGUF
   * metadata (mean, CLS or last token); a model that declares none is
   * mean-pooled.  With normalize, every vector has unit length.  Texts longer
   * than nCtx tokens throw RangeError unless { truncate: true } is passed.
   */
  constructor(model, nCtx = 512, normalize = true, options = undefined) {
    if (!(model instanceof JsModel)) throw new TypeError(`model must be a JsModel, not ${v.typeName(model)}`);
    v.integer('nCtx', nCtx, 1, 1 << 20);
    this._normalize = v.boolean('normalize', normalize);
    const o = v.options('options', options, ['nBatch', 'nThreads']);
    const nBatch = v.integer('nBatch', o.nBatch ?? 0, 0, 1 << 20);
    const train = model.nCtxTrain;
    // A text may be as long as the model allows and the caller asked for.
    this._maxTokens = train > 0 ? Math.min(nCtx, train) : nCtx;
    this._pack = nBatch || DEFAULT_PACK_TOKENS;
    const batch = Math.max(this._pack, this._maxTokens);
    const arch = model.architecture || '';
    const pooling = model.meta(`${arch}.pooling_type`) !== null ? undefined : 'mean';
    this._model = model;
    this._ctx = new JsContext(model, { nCtx: batch, nBatch: batch, nUbatch: batch, nThreads: o.nThreads ?? 0,
      embeddings: true, nSeqMax: MAX_SEQS_PER_BATCH, pooling });
    const L = lib();
    this._pooling = L.llama_pooling_type(this._ctx.ptr());
    this._nEmbd = L.llama_model_n_embd_out(model.ptr()) || model.nEmbd;
  }

  /** Embedding dimension. */
  get nEmbd() { return this._nEmbd; }
  /** The longest text, in tokens, that is embedded without truncation. */
  get maxTokens() { return this._maxTokens; }
  get context() { return this._ctx; }
  /** The embedding model. */
  get model() { return this._model; }

  close() { this._ctx.close(); }
  dispose() { this.close(); }
  [Symbol.dispose]() { this.close(); }

  /** One text -> a vector of nEmbd numbers. */
  embed(text, options = undefined) {
    v.string('text', text);
    if (!text) throw new RangeError('text is empty; an empty string has no embedding');
    return this.embedBatch([text], options)[0];
  }

  /** Many texts -> one vector each, packed into few native calls. */
  embedBatch(texts, options = undefined) {
    const rows = this.embedMatrix(texts, options);
    const out = new Array(texts.length);
    for (let k = 0; k < texts.length; k++) out[k] = Array.from(rows.subarray(k * this._nEmbd, (k + 1) * this._nEmbd));
    return out;
  }

  /** Many texts -> one Float32Array of texts.length * nEmbd values, row after row. */
  embedMatrix(texts, options = undefined) {
    if (!Array.isArray(texts)) throw new TypeError(`texts must be an array of strings, not ${v.typeName(texts)}`);
    const truncate = v.boolean('truncate', v.options('options', options, EMBED_OPTIONS).truncate ?? false);
    return this._embedRows(texts.map((t, i) => this._tokens(i, t, truncate)));
  }

  /**
   * Texts already tokenized (each non-empty, at most maxTokens ids of this model) -> one Float32Array of
   * tokenLists.length * nEmbd values, as embedMatrix gives for the texts.
   */
  embedTokens(tokenLists) {
    if (!Array.isArray(tokenLists)) {
      throw new TypeError(`tokenLists must be an array of arrays of token ids, not ${v.typeName(tokenLists)}`);
    }
    const nVocab = this._model.nVocab;
    const lists = tokenLists.map((ids, i) => {
      if (!Array.isArray(ids) && !(ArrayBuffer.isView(ids) && !(ids instanceof DataView))) {
        throw new TypeError(`tokenLists[${i}] must be an array of token ids, not ${v.typeName(ids)}`);
      }
      const checked = Array.from(ids, (t, j) => v.integer(`tokenLists[${i}][${j}]`, t, 0, nVocab - 1));
      if (!checked.length) throw new RangeError(`tokenLists[${i}] is empty; an empty text has no embedding`);
      if (checked.length > this._maxTokens) {
        throw new RangeError(`tokenLists[${i}] has ${checked.length} tokens; at most ${this._maxTokens} are embedded`);
      }
      return checked;
    });
    return this._embedRows(lists);
  }

  /** @internal Token lists, already checked -> one row each. */
  _embedRows(tokenLists) {
    const n = this._nEmbd;
    const out = new Float32Array(tokenLists.length * n);
    let start = 0;
    while (start < tokenLists.length) {
      let end = start + 1;
      let used = tokenLists[start].length; // at least one text, however long
      while (end < tokenLists.length && end - start < MAX_SEQS_PER_BATCH && used + tokenLists[end].length <= this._pack) {
        used += tokenLists[end].length;
        end++;
      }
      this._run(tokenLists.slice(start, end), out.subarray(start * n, end * n));
      start = end;
    }
    if (this._normalize) {
      for (let k = 0; k < tokenLists.length; k++) {
        const row = out.subarray(k * n, (k + 1) * n);
        let ss = 0;
        for (let i = 0; i < n; i++) ss += row[i] * row[i];
        const norm = Math.sqrt(ss);
        if (norm > 0) for (let i = 0; i < n; i++) row[i] /= norm;
      }
    }
    return out;
  }

  _tokens(i, text, truncate) {
    if (typeof text !== 'string') throw new TypeError(`texts[${i}] must be a string, not ${v.typeName(text)}`);
    if (!text) throw new RangeError(`texts[${i}] is empty; an empty string has no embedding`);
    let ids = this._model._tokenizeBytes(utf8(`texts[${i}]`, text), true, false);
    if (ids.length > this._maxTokens) {
      if (!truncate) {
        throw new RangeError(`texts[${i}] has ${ids.length} tokens, more than the ${this._maxTokens} this generator `
          + 'embeds (nCtx); pass { truncate: true } to cut it, or raise nCtx');
      }
      ids = ids.subarray(0, this._maxTokens);
    }
    return ids;
  }

  _run(seqs, out) {
    const ctx = this._ctx;
    const c = ctx._acquire();
    const L = lib();
    if (ctx._mem) L.llama_memory_clear(ctx._mem, true);
    ctx._tokens.length = 0;
    ctx._batch.fillSequences(seqs);
    const rc = ctx._run();
    if (rc !== 0) throw new Error(`embedding failed (status ${rc}): ${_lib.takeErrors() || 'set a log handler for details'}`);
    const n = this._nEmbd;
    if (this._pooling === C.LLAMA_POOLING_TYPE_NONE) {
      // Per-token outputs: the mean over each sequence's rows.
      const total = seqs.reduce((s, q) => s + q.length, 0);
      const rows = new Float32Array(koffi.view(L.llama_get_embeddings(c), total * n * 4));
      let r = 0;
      seqs.forEach((q, k) => {
        const dst = out.subarray(k * n, (k + 1) * n);
        for (let t = 0; t < q.length; t++, r++) for (let i = 0; i < n; i++) dst[i] += rows[r * n + i];
        for (let i = 0; i < n; i++) dst[i] /= q.length;
      });
    } else {
      for (let k = 0; k < seqs.length; k++) {
        const p = L.llama_get_embeddings_seq(c, k);
        if (!p) throw new Error(`llama.cpp returned no embedding for sequence ${k}`);
        out.set(new Float32Array(koffi.view(p, n * 4)), k * n);
      }
    }
    if (ctx._mem) L.llama_memory_clear(ctx._mem, true);
  }
}

/**
 * Cosine similarity of two vectors (arrays or typed arrays of numbers).
 * Throws Error('Vectors must have the same length') on a mismatch; a zero
 * vector has no direction, so its similarity with anything is 0.
 */
function cosineSimilarity(a, b) {
  const isVec = (x) => Array.isArray(x) || (ArrayBuffer.isView(x) && !(x instanceof DataView));
  if (!isVec(a) || !isVec(b)) throw new TypeError('cosineSimilarity takes two arrays of numbers');
  if (a.length !== b.length) throw new Error('Vectors must have the same length');
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    if (typeof x !== 'number' || typeof y !== 'number') throw new TypeError(`element ${i} is not a number`);
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  if (na === 0 || nb === 0) return 0;
  return Math.min(1, Math.max(-1, dot / (Math.sqrt(na) * Math.sqrt(nb))));
}

module.exports = { JsEmbeddingGenerator, cosineSimilarity };
