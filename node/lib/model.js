'use strict';
// JsModel: a loaded GGUF model, its vocabulary, metadata and chat template (mirrors mullama/model.py).

const koffi = require('koffi');
const _lib = require('./_lib');
const { lib } = require('./_backend');
const { NativeHandle } = require('./_handle');
const { checkFile } = require('./_gguf');
const { normalizeMessages, render } = require('./chat_template');
const v = require('./_validate');
const rpc = require('./rpc');

const { C } = _lib;
const MODEL_OPTIONS = ['nGpuLayers', 'useMmap', 'useMlock', 'vocabOnly', 'progressCallback',
  'rpcServers', 'tensorSplit', 'splitMode', 'mainGpu'];
// llama_split_mode by name ("tensor", llama.cpp's experimental fourth mode, is not offered)
const SPLIT_MODES = { none: 0, layer: 1, row: 2 };

function splitArgs(o) {
  const splitMode = o.splitMode ?? 'layer';
  if (typeof splitMode !== 'string') throw new TypeError(`splitMode must be a string, not ${v.typeName(splitMode)}`);
  if (!Object.hasOwn(SPLIT_MODES, splitMode)) {
    throw new RangeError(`splitMode must be one of 'none', 'layer', 'row', not '${splitMode}'`);
  }
  const mainGpu = v.integer('mainGpu', o.mainGpu ?? 0, 0);
  let tensorSplit = null;
  if (o.tensorSplit !== undefined && o.tensorSplit !== null) {
    if (!Array.isArray(o.tensorSplit)) throw new TypeError(`tensorSplit must be an array of numbers, not ${v.typeName(o.tensorSplit)}`);
    tensorSplit = o.tensorSplit.map((x, i) => v.number(`tensorSplit[${i}]`, x, 0));
    if (!tensorSplit.some((x) => x > 0)) throw new RangeError('tensorSplit must have at least one positive entry');
  }
  return { split: SPLIT_MODES[splitMode], mainGpu, tensorSplit };
}

/**
 * The devices a model is placed on: the RPC servers' first (as llama.cpp
 * orders them), then local GPUs.  Once any server is registered in this
 * process the list is passed explicitly, so that a model loaded without
 * rpcServers stays local.
 */
function placement(L, rpcServers) {
  const remote = rpcServers.length ? rpc.register(rpcServers) : [];
  const devices = remote.concat(rpc.localOffloadDevices());
  const explicit = rpcServers.length > 0 || (L.hasRpc && rpc.registered.size > 0);
  return { explicit, devices };
}

function loadMode(useMmap, useMlock) {
  if (useMmap && useMlock) return C.LLAMA_LOAD_MODE_MMAP_MLOCK;
  if (useMmap) return C.LLAMA_LOAD_MODE_MMAP;
  if (useMlock) return C.LLAMA_LOAD_MODE_MLOCK;
  return C.LLAMA_LOAD_MODE_NONE;
}

/** Names of the chat templates built into llama.cpp (usable as `template`). */
function builtinChatTemplates() {
  const L = lib();
  const n = L.llama_chat_builtin_templates(null, 0);
  const ptrs = new BigUint64Array(n);
  L.llama_chat_builtin_templates(ptrs, n);
  return Array.from(ptrs, (p) => koffi.decode(p, 'char', -1)).filter(Boolean).sort();
}

/** Bytes of `text` as UTF-8; a lone surrogate (which has no UTF-8 form) is an error, not a silent U+FFFD. */
function utf8(name, text) {
  const wellFormed = typeof text.isWellFormed === 'function' ? text.isWellFormed()
    : !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(text);
  if (!wellFormed) throw new Error(`${name} is not well-formed Unicode: it holds a lone surrogate`);
  return Buffer.from(text, 'utf8');
}

class JsModel extends NativeHandle {
  constructor(token) {
    super();
    if (token !== CREATE) throw new TypeError('use JsModel.load(path, params) to create a JsModel');
  }

  /**
   * Load a GGUF model.  params: nGpuLayers (0 = CPU only, -1 = all), useMmap,
   * useMlock, vocabOnly, progressCallback(fraction) (return false to cancel).
   */
  static load(path, params) {
    v.string('path', path);
    const o = v.options('params', params, MODEL_OPTIONS);
    const nGpuLayers = v.integer('nGpuLayers', o.nGpuLayers ?? 0, -1);
    const useMmap = v.boolean('useMmap', o.useMmap ?? true);
    const useMlock = v.boolean('useMlock', o.useMlock ?? false);
    const vocabOnly = v.boolean('vocabOnly', o.vocabOnly ?? false);
    const progress = o.progressCallback ?? null;
    if (progress !== null && typeof progress !== 'function') throw new TypeError('progressCallback must be a function');
    const rpcServers = o.rpcServers === undefined || o.rpcServers === null ? [] : rpc.parseEndpoints(o.rpcServers);
    const { split, mainGpu, tensorSplit } = splitArgs(o);
    if (!path) throw new Error('Failed to load model: the path is empty');
    checkFile(path, 'model');

    const L = lib();
    const { explicit, devices } = placement(L, rpcServers);
    const names = devices.map((d) => L.ggml_backend_dev_name(d));
    if (tensorSplit && tensorSplit.length > Math.max(devices.length, 1)) {
      throw new RangeError(`tensorSplit has ${tensorSplit.length} entries but the model is placed on ${devices.length} `
        + `device(s)${names.length ? `: ${names.join(', ')}` : ''}`);
    }
    if (devices.length && mainGpu >= devices.length) {
      throw new RangeError(`mainGpu=${mainGpu} is out of range: the model is placed on ${devices.length} device(s) `
        + `(${names.join(', ')}), numbered from 0`);
    }
    if (!devices.length && mainGpu !== 0) throw new RangeError(`mainGpu=${mainGpu} given, but there is no GPU or RPC device`);
    if (nGpuLayers !== 0 && !devices.length) {
      process.emitWarning(`nGpuLayers=${nGpuLayers} ignored: no GPU offload (the loaded library, ${L.path}, `
        + `${L.buildInfo.backend || 'unknown'} build, sees no GPU, and no rpcServers were given); running on the CPU`,
      'MullamaWarning');
    }
    const mp = L.llama_model_default_params();
    mp.n_gpu_layers = nGpuLayers;
    mp.split_mode = split;
    mp.main_gpu = mainGpu;
    // Kept referenced until the load returns: C reads them during the load only.
    const cDevices = explicit ? BigUint64Array.from([...devices.map((d) => BigInt(koffi.address(d))), 0n]) : null;
    if (cDevices) mp.devices = cDevices; // a NULL-terminated ggml_backend_dev_t[]
    const cSplit = tensorSplit ? new Float32Array(Math.max(Number(L.llama_max_devices()), tensorSplit.length)) : null;
    if (cSplit) {
      cSplit.set(tensorSplit);
      mp.tensor_split = cSplit;
    }
    mp.load_mode = loadMode(useMmap, useMlock);
    mp.vocab_only = vocabOnly;
    let callbackError = null;
    let registered = null;
    if (progress) {
      registered = koffi.register((fraction) => {
        try {
          return progress(fraction) !== false;
        } catch (e) {
          callbackError = e; // re-thrown after the load
          return false;
        }
      }, koffi.pointer(_lib.llama_progress_callback));
      mp.progress_callback = registered;
    }
    _lib.takeErrors();
    let ptr;
    try {
      ptr = L.llama_model_load_from_file(path, mp);
    } finally {
      if (registered) koffi.unregister(registered);
    }
    if (callbackError) {
      if (ptr) L.llama_model_free(ptr);
      throw callbackError;
    }
    if (!ptr) {
      let why = _lib.takeErrors() || 'llama.cpp could not load it (set a log handler with setLogHandler for details)';
      if (progress && why.toLowerCase().includes('cancel')) why = 'loading was cancelled by progressCallback';
      throw new Error(`Failed to load model: ${path}: ${why}`);
    }
    const self = new JsModel(CREATE);
    self._attach(ptr, rpc.guardedFree(L.llama_model_free, rpcServers), null, Number(L.llama_model_size(ptr)));
    self._rpcServers = Object.freeze(rpcServers);
    self._path = path;
    self._vocab = L.llama_model_get_vocab(ptr);
    self._nVocab = L.llama_vocab_n_tokens(self._vocab);
    // llama.cpp puts the output layer on a device once every repeating layer is
    // there too (nGpuLayers > nLayer, or -1): the logits are then made on it.
    const nLayer = L.llama_model_n_layer(ptr);
    self._outputOnDevice = devices.length > 0 && !o.vocabOnly && (nGpuLayers < 0 || nGpuLayers > nLayer);
    self._pieceBuf = Buffer.alloc(64);
    self._pieceTable = new Array(self._nVocab);
    return self;
  }

  // -- RPC servers ----------------------------------------------------------------

  /** The RPC endpoints this model was placed on (empty for a local model). */
  get rpcServers() { return this._rpcServers; }

  /** Throw RPCError when a server of this model is gone, before ggml would abort on it. */
  _checkServers() {
    for (const ep of this._rpcServers) {
      try {
        rpc.checkServer(ep);
      } catch (e) {
        throw new rpc.RPCError(`${e.message}; this model has layers there and cannot run until it is back `
          + '(a restarted server has lost them: load the model again)');
      }
    }
  }

  // -- properties ---------------------------------------------------------------

  get path() { return this._path; }
  get nCtxTrain() { return lib().llama_model_n_ctx_train(this.ptr()); }
  get nEmbd() { return lib().llama_model_n_embd(this.ptr()); }
  get nVocab() { this.ptr(); return this._nVocab; }
  get nLayer() { return lib().llama_model_n_layer(this.ptr()); }
  get nHead() { return lib().llama_model_n_head(this.ptr()); }
  get tokenBos() { this.ptr(); return lib().llama_vocab_bos(this._vocab); }
  get tokenEos() { this.ptr(); return lib().llama_vocab_eos(this._vocab); }
  get size() { return Number(lib().llama_model_size(this.ptr())); }
  get nParams() { return Number(lib().llama_model_n_params(this.ptr())); }
  get architecture() { return this.meta('general.architecture'); }
  get name() { return this.meta('general.name'); }
  /** Whether the vocabulary asks for a BOS token at the start of a prompt. */
  get addBos() { this.ptr(); return lib().llama_vocab_get_add_bos(this._vocab); }

  /** llama.cpp's one-line description, e.g. 'llama 256M Q4_1'. */
  get description() {
    const buf = Buffer.alloc(256);
    const n = lib().llama_model_desc(this.ptr(), buf, buf.length);
    return buf.toString('utf8', 0, Math.max(0, Math.min(n, buf.length - 1)));
  }

  /** The model's own Jinja chat template (tokenizer.chat_template), or null. */
  get chatTemplate() {
    return lib().llama_model_chat_template(this.ptr(), null);
  }

  // -- metadata ---------------------------------------------------------------------

  /** One metadata value as a string, or null if the key is absent. */
  meta(key) {
    v.string('key', key);
    const ptr = this.ptr();
    const L = lib();
    const n = L.llama_model_meta_val_str(ptr, key, null, 0);
    if (n < 0) return null;
    const buf = Buffer.alloc(n + 1);
    L.llama_model_meta_val_str(ptr, key, buf, n + 1);
    return buf.toString('utf8', 0, n);
  }

  /** All metadata as strings (arrays are summarised by llama.cpp). */
  metadata() {
    const ptr = this.ptr();
    const L = lib();
    const out = {};
    const count = L.llama_model_meta_count(ptr);
    for (let i = 0; i < count; i++) {
      const kn = L.llama_model_meta_key_by_index(ptr, i, null, 0);
      const vn = L.llama_model_meta_val_str_by_index(ptr, i, null, 0);
      if (kn < 0 || vn < 0) continue;
      const kb = Buffer.alloc(kn + 1);
      const vb = Buffer.alloc(vn + 1);
      L.llama_model_meta_key_by_index(ptr, i, kb, kn + 1);
      L.llama_model_meta_val_str_by_index(ptr, i, vb, vn + 1);
      out[kb.toString('utf8', 0, kn)] = vb.toString('utf8', 0, vn);
    }
    return out;
  }

  // -- tokenizer ----------------------------------------------------------------------

  /**
   * Text -> token ids.  addBos adds the model's start-of-sequence tokens where
   * the vocabulary asks for them; special parses special tokens such as <|im_start|>.
   */
  tokenize(text, addBos = true, special = false) {
    v.string('text', text);
    v.boolean('addBos', addBos);
    v.boolean('special', special);
    this.ptr();
    return Array.from(this._tokenizeBytes(utf8('text', text), addBos, special));
  }

  _tokenizeBytes(raw, addBos, special) {
    if (raw.length > 0x7FFFFFF0) throw new RangeError(`text of ${raw.length} bytes is too long to tokenize`);
    const L = lib();
    let out = new Int32Array(raw.length + 8);
    let n = L.llama_tokenize(this._vocab, raw, raw.length, out, out.length, addBos, special);
    if (n < 0) {
      out = new Int32Array(-n);
      n = L.llama_tokenize(this._vocab, raw, raw.length, out, out.length, addBos, special);
    }
    if (n < 0) throw new Error(`tokenization failed (${n})`);
    return out.subarray(0, n);
  }

  /**
   * Token ids -> text.  Ids outside the vocabulary throw RangeError.
   * removeSpecial drops the BOS/EOS the tokenizer would add; unparseSpecial
   * renders special tokens (e.g. <|im_end|>) as text.
   */
  detokenize(tokens, removeSpecial = false, unparseSpecial = false) {
    v.boolean('removeSpecial', removeSpecial);
    v.boolean('unparseSpecial', unparseSpecial);
    this.ptr();
    const ids = v.tokenList('tokens', tokens, this._nVocab);
    if (!ids.length) return '';
    const L = lib();
    let buf = Buffer.alloc(ids.length * 8 + 16);
    let n = L.llama_detokenize(this._vocab, ids, ids.length, buf, buf.length, removeSpecial, unparseSpecial);
    if (n < 0) {
      buf = Buffer.alloc(-n);
      n = L.llama_detokenize(this._vocab, ids, ids.length, buf, buf.length, removeSpecial, unparseSpecial);
    }
    if (n < 0) throw new Error(`detokenization failed (${n})`);
    return buf.toString('utf8', 0, n);
  }

  /** The bytes of one token (may be part of a UTF-8 character). */
  tokenToPiece(token, special = false) {
    v.boolean('special', special);
    this.ptr();
    v.integer('token', token, 0, this._nVocab - 1);
    return Buffer.from(this._piece(token, special));
  }

  _piece(token, special) {
    const L = lib();
    let buf = this._pieceBuf;
    let n = L.llama_token_to_piece(this._vocab, token, buf, buf.length, 0, special);
    if (n < 0) { // longer than the buffer: llama.cpp says how long
      buf = Buffer.alloc(-n);
      n = L.llama_token_to_piece(this._vocab, token, buf, buf.length, 0, special);
    }
    return buf.subarray(0, n);
  }

  /** The token loop's lookup: the bytes of `token`, or null for an end-of-generation token, cached. */
  _pieceOrEog(token) {
    let piece = this._pieceTable[token];
    if (piece === undefined) {
      piece = this._pieceTable[token] = lib().llama_vocab_is_eog(this._vocab, token) ? null
        : Buffer.from(this._piece(token, false)); // a copy: _piece reuses one buffer
    }
    return piece;
  }

  /** True for end-of-generation tokens (EOS, EOT, <|im_end|>, ...). */
  tokenIsEog(token) {
    this.ptr();
    v.integer('token', token, 0, this._nVocab - 1);
    return lib().llama_vocab_is_eog(this._vocab, token);
  }

  // -- chat templates ------------------------------------------------------------------------

  _specialTokens() {
    const L = lib();
    const out = {};
    const unk = this.meta('tokenizer.ggml.unknown_token_id'); // the C API has no getter for it
    const pairs = [['bos_token', L.llama_vocab_bos(this._vocab)], ['eos_token', L.llama_vocab_eos(this._vocab)],
      ['pad_token', L.llama_vocab_pad(this._vocab)], ['unk_token', unk && /^-?\d+$/.test(unk) ? Number(unk) : -1]];
    for (const [key, tok] of pairs) {
      if (tok >= 0 && tok < this._nVocab) {
        const text = L.llama_vocab_get_text(this._vocab, tok);
        if (text != null) out[key] = text;
      }
    }
    return out;
  }

  /**
   * Format a conversation with the model's own chat template, rendered as
   * Hugging Face transformers renders it.  messages: [role, content] pairs or
   * {role, content} objects.  template overrides the model's: the name of a
   * built-in llama.cpp template (see builtinChatTemplates()) or Jinja source.
   */
  applyChatTemplate(messages, addGenerationPrompt = true, template = undefined) {
    v.boolean('addGenerationPrompt', addGenerationPrompt);
    if (template !== undefined && template !== null) v.string('template', template);
    this.ptr();
    const msgs = normalizeMessages(messages);
    const source = template ?? this.chatTemplate;
    if (source == null) {
      throw new Error(`model ${this.name || this._path} has no chat template; pass a template: the name of a `
        + `built-in one (${builtinChatTemplates().slice(0, 6).join(', ')}, ...) or Jinja source`);
    }
    if (template != null && !template.includes('{')) return this._applyBuiltinTemplate(template, msgs, addGenerationPrompt);
    return render(source, msgs, addGenerationPrompt, this._specialTokens());
  }

  _applyBuiltinTemplate(name, msgs, addAssistant) {
    const names = builtinChatTemplates();
    if (!names.includes(name)) throw new RangeError(`unknown built-in chat template '${name}'; known: ${names.join(', ')}`);
    const L = lib();
    const arr = msgs.map((m) => ({ role: m.role, content: m.content }));
    let cap = msgs.reduce((s, m) => s + Buffer.byteLength(m.role) + Buffer.byteLength(m.content), 0) * 2 + 256;
    let buf = Buffer.alloc(cap);
    let n = L.llama_chat_apply_template(name, arr, arr.length, addAssistant, buf, cap);
    if (n > cap) {
      cap = n;
      buf = Buffer.alloc(cap);
      n = L.llama_chat_apply_template(name, arr, arr.length, addAssistant, buf, cap);
    }
    if (n < 0) throw new Error(`llama.cpp could not apply chat template '${name}'`);
    return buf.toString('utf8', 0, n);
  }

  /**
   * Load a LoRA adapter for this model (a GGUF from llama.cpp's
   * convert_lora_to_gguf.py).  One adapter serves any number of contexts
   * (JsContext.setLoras).  An adapter for another architecture or base model
   * throws an Error naming what does not match.  It is freed by close(), or
   * with this model.
   */
  loadLora(path) {
    const { LoraAdapter } = require('./lora'); // lora.js requires this module
    return new LoraAdapter(this, path);
  }

  toString() {
    if (this.closed) return 'JsModel(closed)';
    return `JsModel(name=${JSON.stringify(this.name)}, arch=${JSON.stringify(this.architecture)}, `
      + `params=${this.nParams}, size=${Math.floor(this.size / 1e6)}MB)`;
  }
}

const CREATE = Symbol('JsModel.load');

module.exports = { JsModel, builtinChatTemplates, utf8 };
