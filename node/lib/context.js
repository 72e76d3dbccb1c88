'use strict';
// JsContext: a KV cache over a JsModel, and text generation with the native
// sampler chain (mirrors mullama/context.py).
//
// Generation is one generator, `_steps`, that yields either a piece of text or
// the DECODE request (evaluate the batch now).  Two drivers run it: the
// synchronous API performs each decode in place; the async API performs it on
// a worker thread (koffi's async calls) and awaits it, so the event loop keeps
// running.  The token loop, stop strings, UTF-8 handling and cache
// bookkeeping exist once, for both.

const fs = require('node:fs');
const koffi = require('koffi');
const _lib = require('./_lib');
const rules = require('./_rules');
const { lib } = require('./_backend');
const { Batch } = require('./_batch');
const { usableCpus } = require('./_cpus');
const { NativeHandle, hold, letGo } = require('./_handle');
const { JsModel } = require('./model');
const lora = require('./lora');
const rpc = require('./rpc');
const sequence = require('./_sequence');
const { Recorder, checkLogprobs, completion, completionChunk } = require('./completion');
const state = require('./_state');
const { GrammarIncompleteError, checkGrammar } = require('./grammar');
const { SamplerChain, checkSampling, isGreedy, paramsKey, resolveParams, usesPenalties } = require('./sampling');
const v = require('./_validate');
const kvCache = require('./kv_cache');
const speculative = require('./speculative');
const { Projector, mediaPrompt } = require('./multimodal');

const { C } = _lib;
const MAX_N_CTX = rules.N_CTX_MAX;
const MAX_N_BATCH = rules.N_BATCH_MAX;
const MAX_CHAINS = 8;
const POOLING = { none: C.LLAMA_POOLING_TYPE_NONE, mean: C.LLAMA_POOLING_TYPE_MEAN,
  cls: C.LLAMA_POOLING_TYPE_CLS, last: C.LLAMA_POOLING_TYPE_LAST };
const CONTEXT_OPTIONS = ['nCtx', 'nBatch', 'nThreads', 'embeddings', 'nUbatch', 'nSeqMax', 'pooling', 'sampling',
  'typeK', 'typeV', 'flashAttn', 'draft', 'kvUnified', 'projector'];
const GENERATE_OPTIONS = ['stop', 'ignoreEos', 'signal', 'grammar', 'media'];
const COMPLETE_OPTIONS = [...GENERATE_OPTIONS, 'logprobs'];
const DECODE = Symbol('decode'); // what _steps yields when the batch must be evaluated

/** What _steps yields to have one media chunk encoded and decoded by libmtmd (the driver runs it). */
class MediaStep {
  constructor(projector, ctx, chunk, nPast, nBatch) {
    Object.assign(this, { projector, ctx, chunk, nPast, nBatch });
  }

  run() { return this.projector._evaluate(this.ctx, this.chunk, this.nPast, 0, this.nBatch); }

  runAsync() { return this.projector._evaluateAsync(this.ctx, this.chunk, this.nPast, 0, this.nBatch); }
}

/** The tokens do not fit in the context window. */
class ContextFullError extends RangeError {
  constructor(message) {
    super(message);
    this.name = 'ContextFullError';
  }
}

/** Generation was stopped by an AbortSignal or JsContext.cancel(). */
class GenerationCancelledError extends Error {
  constructor(message = 'generation was cancelled') {
    super(message);
    this.name = 'AbortError';
    this.code = 'ABORT_ERR';
  }
}

class JsContext extends NativeHandle {
  /**
   * An inference context: a KV cache of nCtx tokens over a model.  It
   * remembers which tokens its cache holds, so a prompt that starts with them
   * (the next turn of a chat) evaluates only what is new.
   */
  constructor(model, params) {
    super();
    if (!(model instanceof JsModel)) throw new TypeError(`model must be a JsModel, not ${v.typeName(model)}`);
    model.ptr();
    const o = v.options('params', params, CONTEXT_OPTIONS);
    const nCtx = v.integer('nCtx', o.nCtx ?? 0, 0, MAX_N_CTX);
    const nBatch = v.integer('nBatch', o.nBatch ?? 2048, 1, MAX_N_BATCH);
    const nThreads = v.integer('nThreads', o.nThreads ?? 0, 0, rules.N_THREADS_MAX);
    const embeddings = v.boolean('embeddings', o.embeddings ?? false);
    const sampling = checkSampling(o.sampling ?? 'auto');
    const typeK = kvCache.checkType('typeK', o.typeK ?? 'f16');
    const typeV = kvCache.checkType('typeV', o.typeV ?? 'f16');
    const flashAttn = kvCache.checkFlashAttn(o.flashAttn ?? 'auto');
    kvCache.checkCombination(typeV, flashAttn);
    const draft = speculative.checkDraft(o.draft);
    if (draft && sampling === 'device') {
      throw new RangeError("sampling='device' cannot verify drafts: each drafted token is checked against a token "
        + "sampled on the host (use sampling='auto', which samples on the host here)");
    }
    if (draft && embeddings) throw new RangeError('draft is for generation; an embeddings context generates nothing');
    const projector = o.projector ?? null;
    if (projector !== null) {
      if (!(projector instanceof Projector)) throw new TypeError(`projector must be a Projector, not ${v.typeName(projector)}`);
      if (projector.model !== model) throw new RangeError('the projector was loaded for another model; load it for this one');
      projector.ptr();
      if (embeddings) throw new RangeError('projector is for generation; an embeddings context takes no media');
    }
    const nUbatch = v.integer('nUbatch', o.nUbatch ?? 0, 0, MAX_N_BATCH);
    const L = lib();
    const nSeqMax = v.integer('nSeqMax', o.nSeqMax ?? 1, 1, Number(L.llama_max_parallel_sequences()));
    if (o.pooling !== undefined && !(o.pooling in POOLING)) {
      throw new RangeError(`pooling must be one of ${Object.keys(POOLING).join(', ')}, not ${JSON.stringify(o.pooling)}`);
    }
    const train = model.nCtxTrain;
    // With several sequences, nCtx is the unified cache they share; each stays within nCtxTrain.
    if (train > 0 && nCtx > train * nSeqMax) {
      throw new RangeError(`nCtx=${nCtx} exceeds the model's training context nCtxTrain=${train}`
        + (nSeqMax > 1 ? ` times nSeqMax=${nSeqMax}` : '') + `; reduce nCtx to at most ${train * nSeqMax}`);
    }
    model._checkServers();
    this._model = model;
    this._embeddings = embeddings;
    const mptr = model.ptr();
    this._isEncoder = L.llama_model_has_encoder(mptr) && !L.llama_model_has_decoder(mptr);
    const threads = nThreads || usableCpus();
    const cp = L.llama_context_default_params();
    cp.n_ctx = nCtx;
    cp.n_batch = nBatch;
    // Non-causal (embedding) models need a whole sequence in one micro-batch.
    cp.n_ubatch = nUbatch || (embeddings ? nBatch : Math.min(nBatch, 512));
    cp.n_seq_max = nSeqMax;
    // One cache shared by all sequences, so that packed sequences of any length fit.
    cp.kv_unified = o.kvUnified === undefined || o.kvUnified === null ? nSeqMax > 1 : v.boolean('kvUnified', o.kvUnified);
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.type_k = kvCache.KV_TYPES[typeK][0];
    cp.type_v = kvCache.KV_TYPES[typeV][0];
    cp.flash_attn_type = kvCache.flashAttnType(flashAttn);
    cp.embeddings = embeddings;
    // One output per sequence per decode is all generation asks for, and what
    // llama.cpp's device penalties sampler requires; drafts are checked at every token.
    cp.n_outputs_max_per_seq = embeddings || draft ? 0 : 1;
    if (o.pooling !== undefined) cp.pooling_type = POOLING[o.pooling];
    _lib.takeErrors();
    const ptr = L.llama_init_from_model(mptr, cp);
    if (!ptr) {
      const why = _lib.takeErrors() || 'llama.cpp could not create it (out of memory?)';
      throw new Error(`Failed to create context (nCtx=${nCtx || train}, nBatch=${nBatch}): ${why}`);
    }
    // Sampler chains attached to sequences (device sampling) must outlive the
    // context: its free function frees them after it (the array holds raw
    // pointers, not this object).
    const deviceChains = [];
    // The LoRA adapters the context refers to: held until it is freed (or they are replaced).
    const heldLoras = [];
    const freeContext = rpc.guardedFree(L.llama_free, model.rpcServers);
    const freeChain = L.llama_sampler_free;
    this._attach(ptr, (p) => {
      freeContext(p);
      for (const c of deviceChains) freeChain(c);
      deviceChains.length = 0;
      for (const a of heldLoras) letGo(a);
      heldLoras.length = 0;
      if (projector) letGo(projector);
    }, model, approxKvBytes(L, mptr, L.llama_n_ctx(ptr), typeK, typeV));
    this._deviceChains = deviceChains;
    this._heldLoras = heldLoras;
    if (projector) hold(projector); // closed while this context lives, it is freed after it
    this._loras = []; // the adapters applied from the next decode on, as [adapter, scale] pairs
    this._kvLoras = []; // those the cached tokens were decoded with (null: a mix)
    this._sampling = sampling;
    this._attached = new Map(); // sequence -> its device chain
    this._mem = L.llama_get_memory(ptr);
    this._nCtx = L.llama_n_ctx(ptr);
    this._nBatch = L.llama_n_batch(ptr);
    this._nUbatch = L.llama_n_ubatch(ptr);
    this._nThreads = threads;
    this._typeK = typeK;
    this._typeV = typeV;
    this._batch = new Batch(this._nBatch);
    this._tokens = []; // what the KV cache holds, in order (sequence 0): one id per position
    // Media in the cache that take more cells than positions (M-RoPE models: an image of nTokens
    // embeddings spans nPos < nTokens positions): [first position, extra cells] each.
    this._mediaCells = [];
    this._lastPromptEvaluated = 0;
    this._chains = new Map();
    this._pieceBuf = Buffer.alloc(256);
    this._logitViews = new Map();
    this._active = null; // the async generation under way, if any
    this._cancelRequested = false;
    // what drafted tokens did (see lib/speculative.js): drafted, accepted, and the target's decodes
    this.draftStats = { drafted: 0, accepted: 0, decodes: 0 };
    this._drafter = draft ? draft._start(this, nSeqMax) : null;
    this._projector = projector;
  }

  // -- properties ------------------------------------------------------------------

  get model() { return this._model; }
  /** Context size in tokens. */
  get nCtx() { this.ptr(); return this._nCtx; }
  /** Most tokens evaluated in one llama_decode call. */
  get nBatch() { this.ptr(); return this._nBatch; }
  get nThreads() { this.ptr(); return this._nThreads; }
  /** The tokens the KV cache holds, in order. */
  get tokens() { this.ptr(); return this._tokens.slice(); }
  /** How many tokens the KV cache holds. */
  get nPast() { this.ptr(); return this._tokens.length; }
  /** Prompt tokens actually evaluated by the last generation (the rest came from the cache). */
  get lastPromptEvaluated() { return this._lastPromptEvaluated; }
  /** Where sampler chains run: 'auto', 'cpu' (host) or 'device' (inside the decode graph). */
  get sampling() { return this._sampling; }
  /** The type the KV cache stores keys as. */
  get typeK() { return this._typeK; }
  /** The type the KV cache stores values as. */
  get typeV() { return this._typeV; }
  /** The drafter this context was made with (the `draft` option), or null. */
  get draft() { return this._drafter ? this._drafter.spec : null; }

  /** The memory the KV cache takes: nCtx cells of every layer's keys and values (0 without one). */
  get kvBytes() {
    this.ptr();
    if (!this._mem) return 0;
    const m = this._model;
    const arch = m.architecture;
    const headK = Number(m.meta(`${arch}.attention.key_length`) || 0) || Math.floor(m.nEmbd / Math.max(m.nHead, 1));
    const headV = Number(m.meta(`${arch}.attention.value_length`) || 0) || headK;
    const nKv = lib().llama_model_n_head_kv(m.ptr());
    return kvCache.cacheBytes(this._nCtx, m.nLayer, nKv * headK, nKv * headV, this._typeK, this._typeV);
  }

  close() {
    if (this._busy()) {
      throw new Error('this JsContext is running an async generation; cancel() it and let it finish before close()');
    }
    if (this._batch) this._batch.close();
    for (const chain of this._chains.values()) chain.close();
    this._chains.clear();
    this._logitViews.clear();
    if (this._drafter) this._drafter.close();
    super.close();
  }

  // -- ownership: one generation at a time --------------------------------------------

  _busy() {
    const a = this._active;
    // A stream that was garbage-collected unfinished left the cache consistent
    // (every step ends between native calls): it no longer holds the context.
    return a !== null && !a.done && a.ref.deref() !== undefined;
  }

  _acquire() {
    const ptr = this.ptr();
    this._model.ptr();
    this._model._checkServers(); // a dead RPC server: an error here, not an abort in ggml
    if (this._busy()) {
      throw new Error('this JsContext is busy with an async generation; finish or cancel() it first, '
        + 'or use one JsContext per concurrent request');
    }
    this._active = null;
    this._cancelRequested = false;
    return ptr;
  }

  /**
   * Stop the async generation under way: a generation waiting on native work
   * throws an AbortError before its next token (or prompt chunk); a stream
   * suspended between pieces is closed.  The context stays usable.
   */
  cancel() {
    if (!this._busy()) return;
    this._cancelRequested = true;
    this._active.ref.deref().return().catch(() => {});
  }

  // -- LoRA adapters -----------------------------------------------------------------------

  /** The LoRA adapters this context applies, with their scales (a new Map). */
  get loras() { return new Map(this._loras); }

  /**
   * Apply these LoRA adapters from the next token on: a Map of LoraAdapter to
   * scale, or an array of [adapter, scale] pairs; null, undefined or empty:
   * none.  Scale 0 leaves an adapter out.  Tokens already in the cache keep
   * what they were computed with; a later prompt that starts with them is
   * evaluated again when the adapters differ, so its output is what these
   * adapters give.  A TypeError for a wrong type, a RangeError for a
   * non-finite scale, an Error for a closed adapter or one loaded for
   * another model.
   */
  setLoras(loras) {
    const set = lora.checkLoras(this._model, loras);
    this._acquire();
    this._setLoras(set);
  }

  _setLoras(set) {
    if (lora.sameLoras(set, this._loras)) return;
    lora.apply(this.ptr(), set);
    const old = this._heldLoras.slice();
    this._heldLoras.length = 0; // in place: the free function holds this array
    for (const [a] of set) {
      this._heldLoras.push(a);
      hold(a);
    }
    for (const a of old) letGo(a); // llama.cpp refers to them no more
    this._loras = set;
  }

  // -- KV cache ----------------------------------------------------------------------------

  /** Empty the KV cache (start of a new, unrelated conversation). */
  clearCache() {
    this._acquire();
    this._clear();
  }

  _clear() {
    if (this._mem) lib().llama_memory_clear(this._mem, true);
    this._tokens.length = 0; // in place: a running loop holds this array
    this._mediaCells = [];
  }

  /** KV cells the cache holds: a position each, and the extra cells of M-RoPE media. */
  _cells() {
    return this._tokens.length + this._mediaCells.reduce((a, [, extra]) => a + extra, 0);
  }

  /** Keep the first `keep` cached tokens, drop the rest; returns how many were kept. */
  _truncateCache(keep) {
    if (keep >= this._tokens.length) return this._tokens.length;
    if (this._mem && keep > 0 && lib().llama_memory_seq_rm(this._mem, 0, keep, -1)) {
      this._tokens.length = keep;
      this._mediaCells = this._mediaCells.filter(([start]) => start < keep);
      return keep;
    }
    this._clear(); // partial removal unsupported (e.g. recurrent state): start over
    return 0;
  }

  _dropAfter(nBefore) {
    // Whatever part of a failed batch reached the cache is dropped, so that
    // the cache and this._tokens agree again.
    this._truncateCache(nBefore);
    if (this._mem) lib().llama_memory_seq_rm(this._mem, 0, this._tokens.length, -1);
  }

  /** Before something is added to the cache: record which adapters it is decoded with. */
  _noteLoras() {
    if (this._tokens.length && !lora.sameLoras(this._kvLoras, this._loras)) {
      this._kvLoras = null; // a cache decoded partly with other adapters: no prompt may reuse it
    } else if (!this._tokens.length) {
      this._kvLoras = this._loras;
    }
  }

  _afterFailedDecode(rc, nBefore) {
    this._dropAfter(nBefore);
    if (rc === 1) throw new ContextFullError(`no room left in the KV cache (nCtx=${this._nCtx}); use a larger nCtx`);
    throw new Error(`llama_decode failed with status ${rc}: ${_lib.takeErrors() || 'set a log handler for details'}`);
  }

  /**
   * Steps that evaluate `tokens` at the end of the cache, `chunk` at a time,
   * with outputs for the last token (or all of them).
   */
  * _decodeSteps(tokens, chunk, outputAll = false, logits = true) {
    const n = tokens.length;
    if (this._cells() + n > this._nCtx) {
      throw new ContextFullError(`${n} tokens do not fit in the context: it holds ${this._cells()} of `
        + `nCtx=${this._nCtx}; use a larger nCtx or a shorter prompt`);
    }
    if (this._isEncoder && n > this._nBatch) {
      throw new ContextFullError(`${n} tokens exceed nBatch=${this._nBatch}, which an embedding model must `
        + 'evaluate at once; use a larger nBatch');
    }
    if (n) this._noteLoras();
    for (let start = 0; start < n; start += chunk) {
      const part = tokens.subarray ? tokens.subarray(start, start + chunk) : tokens.slice(start, start + chunk);
      this._batch.fill(part, this._tokens.length, 0, logits && start + part.length === n, outputAll);
      const rc = yield DECODE;
      if (rc !== 0) this._afterFailedDecode(rc, this._tokens.length);
      for (const t of part) this._tokens.push(t);
    }
  }

  /** Append `tokens` to the context and evaluate them (logits/embeddings of the last are kept). */
  decode(tokens) {
    const ids = v.tokenList('tokens', tokens, this._model._nVocab);
    this._acquire();
    if (!ids.length) throw new RangeError('tokens is empty');
    if (this._isEncoder || (this._embeddings && !this._mem)) this._tokens.length = 0; // each call stands alone
    this._drive(this._decodeSteps(ids, this._nBatch, this._embeddings));
  }

  /**
   * The embedding of the last decoded tokens (pooled per the model, else the
   * last token's), or null when this context was not created with
   * embeddings: true or nothing was decoded.
   */
  getEmbeddings() {
    const ctx = this.ptr();
    if (!this._embeddings || (!this._tokens.length && !this._isEncoder)) return null;
    const L = lib();
    const mptr = this._model.ptr();
    const n = L.llama_model_n_embd_out(mptr) || L.llama_model_n_embd(mptr);
    const p = L.llama_pooling_type(ctx) !== C.LLAMA_POOLING_TYPE_NONE
      ? L.llama_get_embeddings_seq(ctx, 0) : L.llama_get_embeddings_ith(ctx, -1);
    if (!p) return null;
    return Array.from(new Float32Array(koffi.view(p, n * 4)));
  }

  // -- saved state ---------------------------------------------------------------------------

  /**
   * The state of this context as a Buffer: its KV cache and the tokens it
   * holds.  What is saved is sequence 0 (a context's only one, unless
   * nSeqMax > 1): llama.cpp's copy of its cache (positions, keys and values
   * of every cell), the token ids `tokens` lists, and a fingerprint of the
   * model.  Sampler state, the logits of the last token and the context's
   * parameters are not saved.  After loadStateBytes() of it into a context
   * over the same model, a prompt that starts with the saved tokens
   * continues exactly as it would have here, evaluating only its last token
   * again.  The format is the Python binding's too.  Throws while an async
   * generation runs on this context.
   */
  stateBytes() {
    if (this._tokens.some((t) => t < 0)) {
      throw new RangeError('the cache holds images or sounds, which a saved state cannot record (only token ids); '
        + 'save it before the first medium, or clearCache()');
    }
    const ctx = this._acquire();
    if (!this._mem) throw new Error("this JsContext keeps no KV cache (an embedding model's): it has no state to save");
    const L = lib();
    if (L.llama_memory_seq_pos_max(this._mem, 0) !== this._tokens.length - 1) {
      throw new Error('the KV cache and the tokens this JsContext tracks disagree; call clearCache()');
    }
    _lib.takeErrors();
    const n = Number(L.llama_state_seq_get_size(ctx, 0));
    const head = state.header(this._fingerprint(), this._tokens, n);
    const out = Buffer.allocUnsafe(head.length + state.SHA_LEN + n);
    head.copy(out, 0);
    const blob = out.subarray(head.length + state.SHA_LEN);
    if (n === 0 || Number(L.llama_state_seq_get_data(ctx, blob, n, 0)) !== n) {
      throw new Error(`llama.cpp could not save the state: ${_lib.takeErrors() || 'set a log handler for details'}`);
    }
    state.checksum(head, blob).copy(out, head.length);
    return out;
  }

  /**
   * Write stateBytes() to the file `path`, atomically (a temporary file, then
   * a rename); the file is readable by its owner only, and an existing one
   * is replaced.
   */
  saveState(path) {
    statePath(path);
    state.writeFile(path, this.stateBytes());
  }

  /**
   * Replace this context's cache (sequence 0) with a state from
   * stateBytes().  Everything is checked before llama.cpp reads it: an Error
   * for data that is not a mullama state, is truncated or corrupted
   * (checksum), or was saved from another model (naming the fields that
   * differ); a ContextFullError (a RangeError) when it holds more tokens
   * than nCtx; an Error when llama.cpp refuses it, and then the cache is
   * left empty.  After any error the context still generates.  A TypeError
   * when `data` is not a Buffer or Uint8Array.
   */
  loadStateBytes(data) {
    if (!(data instanceof Uint8Array)) {
      throw new TypeError(`data must be a Buffer or Uint8Array, not ${v.typeName(data)}`);
    }
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    this._loadState(buf, 'the state bytes');
  }

  /** Load a state file written by saveState() (errors as for loadStateBytes()). */
  loadState(path) {
    statePath(path);
    this.ptr();
    this._loadState(fs.readFileSync(path), `the state file ${JSON.stringify(path)}`);
  }

  _fingerprint() {
    return state.fingerprint(this._model.ptr(), this._model._nVocab);
  }

  _loadState(data, what) {
    const ctx = this._acquire();
    const { tokens, blobOffset, blobLen } = state.parse(data, this._fingerprint(), what);
    const n = tokens.length;
    if (n > this._nCtx) {
      throw new ContextFullError(`${what} holds ${n} tokens, more than this JsContext's nCtx=${this._nCtx}; `
        + `load it into a context with nCtx >= ${n}`);
    }
    if (!this._mem) throw new Error("this JsContext keeps no KV cache (an embedding model's): it cannot load a state");
    const L = lib();
    // sequence 0 is emptied first: llama.cpp leaves it as it was when the state holds no cell
    L.llama_memory_seq_rm(this._mem, 0, -1, -1);
    this._tokens.length = 0; // in place, like _clear()
    this._mediaCells = []; // (a saved state does not say which positions held M-RoPE media)
    _lib.takeErrors();
    const read = Number(L.llama_state_seq_set_data(ctx, data.subarray(blobOffset), blobLen, 0));
    const nCached = L.llama_memory_seq_pos_max(this._mem, 0) + 1;
    if (read !== blobLen || nCached !== n) {
      L.llama_memory_seq_rm(this._mem, 0, -1, -1);
      const why = !read ? (_lib.takeErrors() || 'set a log handler for details')
        : read !== blobLen ? `it read ${read} of ${blobLen} bytes`
          : `the state lists ${n} tokens but its cache holds ${nCached}`;
      throw new Error(`llama.cpp could not load ${what} into this JsContext (${why}); its cache is now empty`);
    }
    for (const t of tokens) this._tokens.push(t);
    this._kvLoras = this._loras; // a state does not say which adapters made it: taken as the ones applied
  }

  // -- generation ------------------------------------------------------------------------

  /** Generate up to maxTokens tokens after a text prompt; returns the text. */
  generate(prompt, maxTokens = 100, params = undefined, options = undefined) {
    v.string('prompt', prompt);
    return this._drive(this._start(prompt, maxTokens, params, options, false)).join('');
  }

  /** Generate from token ids (e.g. a prompt tokenized once and reused). */
  generateFromTokens(tokens, maxTokens = 100, params = undefined, options = undefined) {
    if (typeof tokens === 'string') throw new TypeError('tokens must be an array of integer token ids, not string');
    return this._drive(this._start(tokens, maxTokens, params, options, false)).join('');
  }

  /**
   * Generate and return every piece of text, in order, as an array.  Pieces
   * never split a UTF-8 character, and joined they equal generate().
   */
  generateStream(prompt, maxTokens = 100, params = undefined, options = undefined) {
    return this._drive(this._start(prompt, maxTokens, params, options, false));
  }

  /** Like generate(), with the native work on a worker thread; options.signal cancels it. */
  async generateAsync(prompt, maxTokens = 100, params = undefined, options = undefined) {
    const pieces = [];
    for await (const piece of this.generateStreamAsync(prompt, maxTokens, params, options)) pieces.push(piece);
    return pieces.join('');
  }

  /**
   * Async iterator over the pieces, each yielded as soon as its token is
   * sampled; the event loop keeps running between and during tokens.
   * Leaving the loop early, an AbortSignal or cancel() stops the work.
   */
  generateStreamAsync(prompt, maxTokens = 100, params = undefined, options = undefined) {
    // Arguments are checked here, so that bad input throws at the call.
    return this._streamAsync(this._start(prompt, maxTokens, params, options, true), options);
  }

  /**
   * Like generate(), but returns a Completion: { text, tokens, finishReason,
   * logprobs }.  The prompt is text or token ids.  options.logprobs = k (1 to
   * 20) adds each token's log-probability and the k most probable tokens at
   * its position: the model's own distribution (a log-softmax of the logits,
   * before the samplers), as OpenAI reports it.  Such a generation samples on
   * the host (with sampling 'device' it throws).
   */
  complete(prompt, maxTokens = 100, params = undefined, options = undefined) {
    return joinChunks(this.completeStream(prompt, maxTokens, params, options));
  }

  /**
   * complete() as an array of CompletionChunks, one per token: each holds one
   * token (its log-probabilities with options.logprobs) and the text released
   * with it; the last has finishReason.  Joined, their texts equal complete()'s.
   */
  completeStream(prompt, maxTokens = 100, params = undefined, options = undefined) {
    const outcome = { k: null, recorder: null, finish: null };
    return this._drive(this._chunks(this._start(prompt, maxTokens, params, options, false, outcome), outcome));
  }

  /** complete() with the native work on a worker thread; options.signal cancels it. */
  async completeAsync(prompt, maxTokens = 100, params = undefined, options = undefined) {
    const chunks = [];
    for await (const chunk of this.completeStreamAsync(prompt, maxTokens, params, options)) chunks.push(chunk);
    // a stream closed by cancel() between two chunks ends without the last one
    if (!chunks.length || chunks[chunks.length - 1].finishReason === null) throw new GenerationCancelledError();
    return joinChunks(chunks);
  }

  /** Async iterator over completeStream()'s chunks, each as soon as its token is sampled. */
  completeStreamAsync(prompt, maxTokens = 100, params = undefined, options = undefined) {
    const outcome = { k: null, recorder: null, finish: null };
    const steps = this._start(prompt, maxTokens, params, options, true, outcome);
    return this._streamAsync(this._chunks(steps, outcome), options);
  }

  /**
   * Cut a generation's text into one chunk per token: the token loop marks
   * (null) where each token's text is done (see _drive1).
   */
  * _chunks(steps, outcome) {
    let sent = 0;
    let text = [];
    const cut = (finishReason) => {
      const rec = outcome.recorder;
      if (rec) rec.settle(); // (the next token's decode is under way)
      const tokens = rec ? rec.tokens.slice(sent) : [];
      let probs = rec && rec.logprobs ? rec.logprobs.slice(sent) : null;
      if (outcome.k !== null && probs === null) probs = [];
      sent += tokens.length;
      const chunk = completionChunk(text.join(''), tokens, probs, finishReason);
      text = [];
      return chunk;
    };
    try {
      let r = steps.next();
      while (!r.done) {
        if (r.value === DECODE || r.value instanceof MediaStep) {
          let result;
          try {
            result = yield r.value;
          } catch (e) { // a media step that failed: the steps clean up and rethrow
            r = steps.throw(e);
            continue;
          }
          r = steps.next(result);
          continue;
        }
        if (r.value === null) yield cut(null);
        else text.push(r.value);
        r = steps.next();
      }
    } finally {
      steps.return();
    }
    const finish = outcome.finish;
    yield cut(finish && finish.reason ? finish.reason : sequence.FINISH_LENGTH);
  }

  /** Run steps asynchronously as this context's one generation under way; yields what they yield. */
  _streamAsync(steps, options) {
    const run = this._driveAsync(steps, options && options.signal);
    const active = { done: false, ref: null };
    const self = this;
    const stream = (async function* stream() {
      try {
        yield* run;
      } finally {
        active.done = true;
        if (self._active === active) self._active = null;
      }
    }());
    active.ref = new WeakRef(stream);
    this._active = active;
    return stream;
  }

  /**
   * Validate everything, take the context, and return the steps of one
   * generation (a completion's when `outcome` is given: it is filled in as it runs).
   */
  _start(prompt, maxTokens, params, options, isAsync, outcome = null) {
    v.integer('maxTokens', maxTokens, 0);
    const o = v.options('options', options, outcome ? COMPLETE_OPTIONS : GENERATE_OPTIONS);
    if (outcome) outcome.k = checkLogprobs(o.logprobs ?? 0) || null;
    const stops = sequence.checkStops(o.stop);
    const ignoreEos = v.boolean('ignoreEos', o.ignoreEos ?? false);
    const grammar = checkGrammar(o.grammar);
    if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new TypeError('signal must be an AbortSignal');
    if (o.signal !== undefined && !isAsync) {
      throw new TypeError('signal applies to the async methods (generateAsync, completeAsync, ...); '
        + 'the synchronous API cannot be interrupted');
    }
    this.ptr();
    const plan = this._mediaPrompt(prompt, o.media);
    const tokens = plan ? plan.cacheIds : this._promptTokens(prompt);
    const p = resolveParams(params);
    const device = this._onDevice(p, grammar, outcome !== null && outcome.k !== null);
    const nCells = plan ? plan.nTokens : tokens.length; // (M-RoPE media: more cells than positions)
    if (nCells > this._nCtx) {
      throw new ContextFullError(`the prompt has ${nCells} tokens but the context holds nCtx=${this._nCtx}; `
        + 'use a larger nCtx or a shorter prompt');
    }
    this._acquire();
    return this._steps(tokens, maxTokens, p, device, stops, ignoreEos, grammar, isAsync, outcome, plan);
  }

  /** The prompt split by the projector into text and media chunks, when media are given. */
  _mediaPrompt(prompt, media) {
    return mediaPrompt(prompt, media, this._projector, this._drafter !== null);
  }

  _promptTokens(prompt) {
    let ids;
    if (typeof prompt === 'string') {
      if (!prompt) throw new Error('the prompt is empty: there is nothing to generate from');
      // Special tokens are parsed, so that a prompt from applyChatTemplate means what the template meant.
      ids = this._model.tokenize(prompt, true, true);
    } else {
      ids = Array.from(v.tokenList('prompt', prompt, this._model._nVocab));
    }
    if (!ids.length) throw new Error('the prompt is empty: there is nothing to generate from');
    return ids;
  }

  /** Whether this generation's chain runs inside the decode graph (see `sampling`). */
  _onDevice(p, grammar = null, logprobs = false) {
    if (this._sampling === 'cpu') return false;
    if (grammar) {
      if (this._sampling === 'device') {
        throw new Error("sampling 'device' cannot apply a grammar: the grammar sampler runs on the host "
          + "(use sampling 'auto', which samples grammars on the host)");
      }
      return false;
    }
    if (logprobs) {
      // The log-probabilities need the raw logits on the host, which a device
      // chain keeps on the device.
      if (this._sampling === 'device') {
        throw new Error("sampling 'device' cannot report logprobs: they are read from the logits on the host "
          + "(use sampling 'auto', which samples such requests on the host)");
      }
      return false;
    }
    if (this._sampling === 'device') return true;
    // auto: where the output layer's logits are on a GPU, except plain greedy,
    // whose host argmax reads the logits in place
    return this._model._outputOnDevice && !(isGreedy(p) && !usesPenalties(p));
  }

  /** The chain for resolved params: a host chain (cached), or one attached to sequence `seq`. */
  _chain(p, seq = 0, device = false) {
    if (device) return this._attachChain(seq, p);
    this._detachChain(seq); // a device chain would keep the logits on the device
    const key = paramsKey(p);
    let chain = this._chains.get(key);
    if (!chain) {
      if (this._chains.size >= MAX_CHAINS) {
        const [oldKey, old] = this._chains.entries().next().value;
        this._chains.delete(oldKey);
        old.close();
      }
      chain = new SamplerChain(p, this._model._nVocab, this._nCtx);
      this._chains.set(key, chain);
    }
    return chain;
  }

  /**
   * Run p's chain inside the decode graph for sequence `seq` (kept until
   * replaced: attaching makes llama.cpp rebuild its graphs at the next decode).
   */
  _attachChain(seq, p) {
    const current = this._attached.get(seq);
    if (current && current.key === paramsKey(p)) return current;
    const L = lib();
    const chain = new SamplerChain(p, this._model._nVocab, this._nCtx, true);
    const native = chain.handOver();
    this._deviceChains.push(native);
    _lib.takeErrors();
    if (!L.llama_set_sampler(this.ptr(), seq, native)) {
      this._freeChain(chain);
      const why = _lib.takeErrors() || 'llama.cpp refused it';
      throw new Error(`cannot sample on the device here (${why}); use sampling 'cpu' or 'auto'`);
    }
    if (current) this._freeChain(current); // replaced in llama.cpp's table: nothing refers to it any more
    this._attached.set(seq, chain);
    return chain;
  }

  _detachChain(seq) {
    const current = this._attached.get(seq);
    if (current) {
      this._attached.delete(seq);
      lib().llama_set_sampler(this.ptr(), seq, null);
      this._freeChain(current);
    }
  }

  _freeChain(chain) {
    const native = chain.ownedByContext;
    this._deviceChains.splice(this._deviceChains.indexOf(native), 1);
    chain.forget();
    lib().llama_sampler_free(native);
  }

  /** The whole generation: prompt evaluation, then one piece of text per sampled token. */
  * _steps(tokens, maxTokens, params, device, stops, ignoreEos, grammar, isAsync, outcome = null, plan = null) {
    // before the prompt: with the chain in the graph, the prompt's decode samples the first token
    const chain = this._chain(params, 0, device);
    chain.start(plan ? plan.textTokens : tokens);
    // The async driver can only stop between native calls: it evaluates the
    // prompt a micro-batch at a time, so that a cancel waits for one at most.
    yield* this._promptSteps(tokens, plan, isAsync ? this._nUbatch : this._nBatch);
    if (maxTokens === 0) return;
    const state = grammar ? grammar.state(this._model) : null;
    try {
      let sample = sequence.sampler(this.ptr(), chain, this._model._nVocab, this._logitViews, state);
      const finish = new sequence.Finish();
      // Under a grammar the end-of-generation token means "the text is complete": it always ends.
      const pastEos = ignoreEos && !state;
      if (outcome) {
        outcome.finish = finish;
        const rows = sequence.logitRows(this.ptr(), this._model._nVocab, this._logitViews);
        outcome.recorder = new Recorder(this._model, outcome.k, rows, !pastEos);
        sample = outcome.recorder.wrap(sample);
      }
      const loop = sequence.tokenLoop(this._model, sample, -1, maxTokens, stops, pastEos, finish);
      const marks = outcome !== null;
      if (!state) {
        yield* this._drive1(loop, finish, marks, maxTokens);
        return;
      }
      // as yield* would, keeping the pieces for GrammarIncompleteError
      const pieces = [];
      const inner = this._drive1(loop, finish, marks, maxTokens);
      let r = inner.next();
      while (!r.done) {
        if (r.value === DECODE) {
          r = inner.next(yield DECODE);
        } else {
          if (r.value !== null) pieces.push(r.value);
          yield r.value;
          r = inner.next();
        }
      }
      if (finish.reason === sequence.FINISH_LENGTH && !state.complete()) {
        throw new GrammarIncompleteError(`maxTokens=${maxTokens} ran out before the grammar's text was complete `
          + `(${finish.nSampled} tokens generated); raise maxTokens`, pieces.join(''));
      }
    } finally {
      if (state) state.close();
    }
  }

  /**
   * Evaluate the prompt after the longest cached prefix; the last prompt token
   * is always evaluated again so that its logits are fresh (only from a cache
   * decoded with the adapters applied now).  With media (`plan`), the prefix
   * never ends inside a medium, and each medium after it is a MediaStep.
   */
  * _promptSteps(tokens, plan, chunk) {
    const cached = this._tokens;
    const limit = lora.sameLoras(this._kvLoras, this._loras) ? Math.min(cached.length, tokens.length - 1) : 0;
    const segments = plan ? plan.segments() : []; // (the last is text: multimodal.mediaPrompt)
    let common = 0;
    while (common < limit && cached[common] === tokens[common]) common++;
    for (const [start, c] of segments) { // never keep part of a medium: back off to its start
      if (c.kind !== 'text' && start < common && common < start + c.nPos) common = start;
    }
    const kept = this._truncateCache(common);
    this._lastPromptEvaluated = tokens.length - kept;
    if (!plan) {
      yield* this._decodeSteps(Int32Array.from(tokens.slice(kept)), chunk);
      return;
    }
    for (const [i, [start, c, native]] of segments.entries()) {
      const end = start + c.nPos;
      if (end <= kept) continue;
      if (c.kind === 'text') { // (outputs for the prompt's last token only)
        yield* this._decodeSteps(Int32Array.from(c.tokens.slice(Math.max(kept - start, 0))), chunk, false,
          i === segments.length - 1);
        continue;
      }
      const nBefore = cached.length;
      if (this._cells() + c.nTokens > this._nCtx) {
        throw new ContextFullError(`a medium of ${c.nTokens} embeddings does not fit in the context: it holds `
          + `${this._cells()} of nCtx=${this._nCtx}; use a larger nCtx or fewer media`);
      }
      this._noteLoras();
      let next;
      try {
        next = yield new MediaStep(this._projector, this.ptr(), native, nBefore, this._nBatch);
      } catch (e) {
        this._dropAfter(nBefore);
        throw e;
      }
      if (next !== nBefore + c.nPos) {
        this._dropAfter(nBefore);
        throw new Error(`libmtmd placed a medium of ${c.nPos} positions at ${nBefore}..${next}`);
      }
      for (let i = start; i < end; i++) cached.push(tokens[i]);
      if (c.nTokens > c.nPos) this._mediaCells.push([nBefore, c.nTokens - c.nPos]);
    }
  }

  /**
   * One sequence's token loop (lib/_sequence.js), each token it asks for
   * decoded alone, or with drafts.  With `marks`, also yields null each time a
   * token's text is done (before the next token is sampled): _chunks cuts its
   * chunks there.  With a drafter, each decoded token goes with the drafts
   * that may follow it (within maxTokens), every one an output; a token the
   * loop samples that equals the next draft is decoded already, and the first
   * that differs drops the drafts left (lib/speculative.js).
   */
  * _drive1(loop, finish, marks = false, maxTokens = 0) {
    const L = lib();
    const cached = this._tokens;
    const nCtx = this._nCtx - (this._cells() - cached.length); // positions left for tokens (M-RoPE media hold more)
    const drafter = this._drafter;
    const stats = this.draftStats;
    let drafts = []; // decoded after `cached`, not yet checked
    let batchEnd = 0; // outputs in the last decode
    try {
      let r = loop.next();
      while (!r.done) {
        if (typeof r.value === 'string') {
          yield r.value;
          r = loop.next();
          continue;
        }
        if (r.value === null) { // ready to sample: at once, with one sequence
          if (marks) yield null;
          r = loop.next();
          continue;
        }
        const tok = r.value;
        if (drafts.length) {
          if (tok === drafts[0]) { // decoded already, its logits at the next output
            drafts.shift();
            cached.push(tok);
            stats.accepted++;
            r = loop.next(batchEnd - drafts.length - 1);
            continue;
          }
          L.llama_memory_seq_rm(this._mem, 0, cached.length, -1);
          drafts = [];
        }
        if (cached.length >= nCtx) {
          throw new ContextFullError(`the context is full (nCtx=${this._nCtx}) after ${cached.length} tokens; `
            + 'use a larger nCtx, fewer maxTokens or a shorter prompt');
        }
        if (!drafter) {
          this._batch.setOne(tok, cached.length);
        } else {
          // (the last token to sample is never decoded: no draft for it)
          const room = Math.min(nCtx - cached.length - 1, maxTokens - finish.nSampled - 1, this._batch.capacity - 1);
          drafts = room > 0 ? drafter.draft(new Map([[0, [...cached, tok]]]), new Map([[0, room]])).get(0) : [];
          this._batch.fill([tok, ...drafts], cached.length, 0, true, true);
          batchEnd = drafts.length + 1;
          stats.drafted += drafts.length;
        }
        const rc = yield DECODE;
        stats.decodes++;
        if (rc !== 0) {
          drafts = [];
          this._afterFailedDecode(rc, cached.length);
        }
        cached.push(tok);
        r = loop.next(drafts.length ? 0 : -1);
      }
    } finally {
      // drafts never checked (the loop ended or failed first) leave the cache
      if (drafts.length) L.llama_memory_seq_rm(this._mem, 0, cached.length, -1);
    }
    if (finish.overran) {
      // a stop string ended the text of a token already decoded: the cache drops it
      L.llama_memory_seq_rm(this._mem, 0, cached.length - 1, -1);
      cached.pop();
    }
  }

  _run() {
    const L = lib();
    return (this._isEncoder ? L.llama_encode : L.llama_decode)(this.ptr(), this._batch.struct);
  }

  /** Run steps to the end, decoding in place; returns the pieces. */
  _drive(steps) {
    const pieces = [];
    let r = steps.next();
    while (!r.done) {
      if (r.value === DECODE) {
        r = steps.next(this._run());
      } else if (r.value instanceof MediaStep) {
        let next;
        try {
          next = r.value.run();
        } catch (e) {
          r = steps.throw(e);
          continue;
        }
        r = steps.next(next);
      } else {
        pieces.push(r.value);
        r = steps.next();
      }
    }
    return pieces;
  }

  /** Run steps with each decode on a worker thread; yields the pieces. */
  async* _driveAsync(steps, signal) {
    const L = lib();
    const run = this._isEncoder ? L.llama_encode : L.llama_decode;
    const ctx = this.ptr();
    const batch = this._batch.struct;
    try {
      let r = steps.next();
      while (!r.done) {
        if (this._cancelRequested || (signal && signal.aborted)) {
          this._cancelRequested = false;
          throw signal && signal.aborted && signal.reason instanceof Error ? signal.reason : new GenerationCancelledError();
        }
        if (r.value === DECODE) {
          const rc = await new Promise((resolve, reject) => {
            run.async(ctx, batch, (err, res) => (err ? reject(err) : resolve(res)));
          });
          r = steps.next(rc);
        } else if (r.value instanceof MediaStep) {
          let next;
          try {
            next = await r.value.runAsync();
          } catch (e) {
            r = steps.throw(e);
            continue;
          }
          r = steps.next(next);
        } else {
          yield r.value;
          r = steps.next();
        }
      }
    } finally {
      steps.return(); // leaves the cache consistent: every step ends between native calls
    }
  }

  toString() {
    if (this.closed) return 'JsContext(closed)';
    return `JsContext(nCtx=${this._nCtx}, nBatch=${this._nBatch}, nPast=${this._tokens.length})`;
  }
}

function statePath(path) {
  v.string('path', path);
  if (!path) throw new Error('path is empty');
}

/** The Completion that a completion's chunks make together. */
function joinChunks(chunks) {
  const tokens = [];
  const probs = chunks[0].logprobs === null ? null : [];
  for (const c of chunks) {
    for (const t of c.tokens) tokens.push(t);
    if (probs !== null) for (const e of c.logprobs) probs.push(e);
  }
  const reason = chunks[chunks.length - 1].finishReason || sequence.FINISH_LENGTH;
  return completion(chunks.map((c) => c.text).join(''), tokens, reason, probs);
}

/** About the KV cache of nCtx cells (most of a context's memory), for the garbage collector's accounting. */
function approxKvBytes(L, model, nCtx, typeK, typeV) {
  const nHead = L.llama_model_n_head(model) || 1;
  const kvWidth = (L.llama_model_n_embd(model) / nHead) * L.llama_model_n_head_kv(model);
  const perElement = (t) => kvCache.KV_TYPES[t][2] / kvCache.KV_TYPES[t][1];
  return Math.round(nCtx * L.llama_model_n_layer(model) * kvWidth * (perElement(typeK) + perElement(typeV)));
}

module.exports = { JsContext, ContextFullError, GenerationCancelledError };
