'use strict';
// Structured output: GBNF grammars that constrain sampling (mirrors
// mullama/grammar/__init__.py).  A Grammar is only text, checked by llama.cpp's
// own parser when it is made (a malformed grammar throws an Error saying
// where); every generation that uses it gets a fresh native GrammarState.
// JSON Schema conversion: lib/json_schema.js, a port of the Python converter
// (a test checks that both give the same grammar text).

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const koffi = require('koffi');
const _lib = require('../_lib');
const { lib } = require('../_backend');
const { NativeHandle } = require('../_handle');
const v = require('../_validate');
const { anyJsonGbnf, jsonSchemaToGbnf } = require('./json_schema');


/** Generation stopped (maxTokens or the context's end) before the grammar's text was complete. */
class GrammarIncompleteError extends Error {
  constructor(message, text = '') {
    super(message);
    this.name = 'GrammarIncompleteError';
    this.text = text; // what was generated, which does not match the grammar
  }
}

// llama.cpp's grammar parser reports syntax errors with fprintf(stderr): the
// descriptor is pointed at a temporary file for the call, so that nothing
// reaches the terminal and the message becomes the exception's.
let libc;
function stdio() {
  if (libc === undefined) {
    libc = null;
    try {
      const c = koffi.load(process.platform === 'darwin' ? 'libc.dylib' : 'libc.so.6');
      libc = { dup: c.func('int dup(int)'), dup2: c.func('int dup2(int, int)'), close: c.func('int close(int)'),
        fflush: c.func('int fflush(void *)') };
    } catch {
      libc = null; // another C library: messages are not captured
    }
  }
  return libc;
}

function nativeCheck(text, root) {
  const L = lib();
  const c = stdio();
  let printed = '';
  let ptr;
  if (c) {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-grammar-')), 'stderr');
    const sink = fs.openSync(file, 'w+');
    const saved = c.dup(2);
    try {
      c.dup2(sink, 2);
      _lib.takeErrors();
      ptr = L.llama_sampler_init_grammar(null, text, root);
      c.fflush(null);
    } finally {
      c.dup2(saved, 2);
      c.close(saved);
      fs.closeSync(sink);
    }
    printed = fs.readFileSync(file, 'utf8');
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  } else {
    _lib.takeErrors();
    ptr = L.llama_sampler_init_grammar(null, text, root);
  }
  const logged = _lib.takeErrors();
  if (ptr) {
    L.llama_sampler_free(ptr);
    return null;
  }
  return describe(printed, logged, text);
}

function describe(printed, logged, src) {
  const marker = 'error parsing grammar: ';
  const at = printed.indexOf(marker);
  if (at >= 0) {
    let what = printed.slice(at + marker.length);
    const tail = `\n\n${src}\n`;
    if (what.endsWith(tail)) what = what.slice(0, -tail.length);
    // "expecting X at <the rest of the grammar>": turn the rest into a line and column
    for (let i = what.indexOf(' at '); i >= 0; i = what.indexOf(' at ', i + 1)) {
      const rest = what.slice(i + 4);
      if (src.endsWith(rest)) {
        const offset = src.length - rest.length;
        const before = src.slice(0, offset);
        const line = before.split('\n').length;
        const col = offset - (before.lastIndexOf('\n') + 1) + 1;
        const snippet = rest.split('\n', 1)[0].slice(0, 40);
        return `${what.slice(0, i)} at line ${line}, column ${col} (near ${JSON.stringify(snippet)})`;
      }
    }
    return what.trim();
  }
  const l = logged.replace('failed to parse grammar', '').replace(/^[; ]+|[; ]+$/g, '');
  return l || printed.trim() || 'llama.cpp could not parse it';
}

class Grammar {
  /**
   * A GBNF grammar (llama.cpp's grammar format), checked when it is created.
   * Pass it as `{ grammar }` in the generation options.
   */
  constructor(gbnf, root = 'root') {
    for (const [name, value] of [['gbnf', gbnf], ['root', root]]) {
      if (typeof value !== 'string') throw new TypeError(`${name} must be a string, not ${v.typeName(value)}`);
      if (value.includes('\0')) throw new Error(`${name} contains a NUL character`);
      const wellFormed = typeof value.isWellFormed === 'function' ? value.isWellFormed()
        : !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(value);
      if (!wellFormed) throw new Error(`${name} contains a lone surrogate`);
    }
    if (!gbnf.trim()) throw new Error('the grammar is empty');
    if (!root) throw new Error('root must name a rule');
    const problem = nativeCheck(gbnf, root);
    if (problem !== null) throw new Error(`invalid grammar: ${problem}`);
    this._text = gbnf;
    this._root = root;
    Object.freeze(this);
  }

  /** JSON text valid under `schema` (what is supported: mullama/grammar/json_schema.py). */
  static fromJsonSchema(schema) {
    return new Grammar(jsonSchemaToGbnf(schema));
  }

  /** Any one JSON value. */
  static json() {
    return new Grammar(anyJsonGbnf());
  }

  get text() { return this._text; }
  get root() { return this._root; }

  /** A fresh native grammar state for one generation with `model`'s vocabulary. */
  state(model) {
    return new GrammarState(model, this._text, this._root);
  }
}

/** llama.cpp's grammar sampler for one generation: which tokens may come next, advanced per token. */
class GrammarState extends NativeHandle {
  constructor(model, text, root) {
    super();
    const L = lib();
    model.ptr();
    _lib.takeErrors();
    const ptr = L.llama_sampler_init_grammar(model._vocab, text, root);
    if (!ptr) throw new Error(`invalid grammar: ${_lib.takeErrors() || 'llama.cpp could not build it'}`);
    this._attach(ptr, L.llama_sampler_free, model);
    this._vocab = model._vocab;
    this._endToken = L.llama_vocab_eos(model._vocab);
    if (this._endToken < 0) this._endToken = L.llama_vocab_eot(model._vocab);
    // one llama_token_data and its array, for the allows() check
    const base = koffi.alloc('uint8_t', 32 + 12);
    this._one = { base, ab: koffi.view(base, 44) };
    this._oneHeader = new BigInt64Array(this._one.ab, 0, 3);
    this._oneId = new Int32Array(this._one.ab, 32, 1);
    this._oneLogit = new Float32Array(this._one.ab, 36, 2);
    this._oneHeader[0] = base + 32n;
  }

  /** Whether `token` may come next. */
  allows(token) {
    this._oneId[0] = token;
    this._oneLogit[0] = 0;
    this._oneLogit[1] = 0;
    this._oneHeader[1] = 1n;
    this._oneHeader[2] = -1n;
    new Uint8Array(this._one.ab, 24, 1)[0] = 0;
    lib().llama_sampler_apply(this.ptr(), this._one.base);
    return this._oneLogit[0] !== -Infinity;
  }

  /** Advance past `token`, which must be allowed; end-of-generation tokens end the text instead. */
  accept(token) {
    const L = lib();
    if (!L.llama_vocab_is_eog(this._vocab, token)) L.llama_sampler_accept(this.ptr(), token);
  }

  /** Whether the text so far is a whole sentence of the grammar (it may end here). */
  complete() {
    return this._endToken >= 0 && this.allows(this._endToken);
  }

  close() {
    if (this._one) koffi.free(this._one.base);
    this._one = null;
    super.close();
  }
}

function checkGrammar(grammar) {
  if (grammar === undefined || grammar === null) return null;
  if (grammar instanceof Grammar) return grammar;
  throw new TypeError(`grammar must be a Grammar, not ${v.typeName(grammar)}`);
}

module.exports = { Grammar, GrammarIncompleteError, GrammarState, checkGrammar };
