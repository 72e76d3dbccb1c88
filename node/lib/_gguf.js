'use strict';
// A bounds-checked walk over a GGUF file's header, before C ever sees it
// (mirrors mullama/_gguf.py: same checks, same limits, same messages).
//
// llama.cpp's own reader is careful, but a binding that must never take the
// process down does not bet on it: this module reads the magic, version,
// key/value section and tensor table with every length checked against the
// file size, and throws GGUFError naming the first thing that is wrong.
// It also gives cheap access to metadata (e.g. the chat template) without
// loading the model.
//
// Python maps the file and lets the OS page in what the walk touches; here the
// walk reads the file through a window of positional reads, so a multi-GiB
// model costs only its header, and skipped values (arrays of numbers, strings
// not asked for) are never read at all.

const fs = require('node:fs');
const { constants: { MAX_STRING_LENGTH } } = require('node:buffer');

const GGUF_MAGIC = Buffer.from('GGUF');
const SUPPORTED_VERSIONS = [2, 3];
const MAX_DIMS = 4;
const GGML_TYPE_COUNT = 43; // GGML_TYPE_COUNT of the pinned ggml.h (test/abi.test.js checks it)
const MAX_STRING = 1 << 30; // as gguf.cpp: GGUF_MAX_STRING_LENGTH
const MAX_ARRAY = 1 << 30; // as gguf.cpp: GGUF_MAX_ARRAY_ELEMENTS
const MAX_STRING_64 = BigInt(MAX_STRING); // (BigInt against BigInt compares faster)
const MAX_ARRAY_64 = BigInt(MAX_ARRAY);
const VOCAB_KEY = 'tokenizer.ggml.tokens';

const WINDOW = 1 << 20; // bytes read from the file at a time (more when one value is longer)

// gguf_type -> [size, read] for fixed-size scalars; 64-bit integers come back as BigInt
const SCALARS = new Map([
  [0, [1, (b, o) => b.readUInt8(o)]], [1, [1, (b, o) => b.readInt8(o)]],
  [2, [2, (b, o) => b.readUInt16LE(o)]], [3, [2, (b, o) => b.readInt16LE(o)]],
  [4, [4, (b, o) => b.readUInt32LE(o)]], [5, [4, (b, o) => b.readInt32LE(o)]],
  [6, [4, (b, o) => b.readFloatLE(o)]], [7, [1, (b, o) => b[o] !== 0]], // struct '?': any non-zero byte is True
  [10, [8, (b, o) => b.readBigUInt64LE(o)]], [11, [8, (b, o) => b.readBigInt64LE(o)]],
  [12, [8, (b, o) => b.readDoubleLE(o)]],
]);
const STRING = 8;
const ARRAY = 9;
const FLOATS = new Set([6, 12]);

/** The file is not a well-formed GGUF file. */
class GGUFError extends Error {
  constructor(message) {
    super(message);
    this.name = 'GGUFError';
  }
}

// -- Python's repr(), so that messages read exactly as the Python module's ----------

function quoteFor(s) {
  return s.includes("'") && !s.includes('"') ? '"' : "'";
}

const ESCAPES = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' };
const UNPRINTABLE = /[\p{C}\p{Z}]/u;

// repr(str): what str.isprintable() refuses (categories C* and Z* but the space) is escaped.
function pyStr(s) {
  const q = quoteFor(s);
  let out = q;
  for (const ch of s) { // by code point; lone surrogates come through on their own
    const c = ch.codePointAt(0);
    if (ESCAPES[ch]) out += ESCAPES[ch];
    else if (ch === q) out += '\\' + q;
    else if (ch === ' ' || !UNPRINTABLE.test(ch)) out += ch;
    else if (c < 0x100) out += '\\x' + c.toString(16).padStart(2, '0');
    else if (c < 0x10000) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += '\\U' + c.toString(16).padStart(8, '0');
  }
  return out + q;
}

// repr(bytes): printable ASCII as is, the rest as \xNN.
function pyBytes(b) {
  const s = b.toString('latin1');
  const q = quoteFor(s);
  let out = 'b' + q;
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    if (ESCAPES[ch]) out += ESCAPES[ch];
    else if (ch === q) out += '\\' + q;
    else if (c >= 0x20 && c < 0x7f) out += ch;
    else out += '\\x' + c.toString(16).padStart(2, '0');
  }
  return out + q;
}

// repr(float): shortest round-trip digits, exponent form below 1e-4 and from 1e16 on.
function pyFloat(x) {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (Object.is(x, -0)) return '-0.0';
  const [mant, e] = x.toExponential().split('e');
  const exp = Number(e);
  if (exp < -4 || exp >= 16) return `${mant}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  const s = String(x); // JS writes this range in fixed notation too
  return s.includes('.') ? s : s + '.0';
}

// repr() of a value as the walk returns it; typ tells floats from integers.
function pyRepr(v, typ) {
  if (v === null) return 'None';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'string') return pyStr(v);
  if (Array.isArray(v)) return `[${v.map(pyStr).join(', ')}]`;
  return FLOATS.has(typ) ? pyFloat(v) : String(v);
}

// -- UTF-8 with Python's 'surrogateescape' -------------------------------------------
// Each byte that is not part of a valid sequence becomes U+DC80..U+DCFF, as in
// Python, so that distinct byte strings stay distinct strings (the duplicate-token
// check depends on it) and texts match the Python module's.

// Length of the valid UTF-8 sequence at b[i] (ending by b[end]), or 0: strict UTF-8,
// as Python decodes it (no overlongs, surrogates or code points past U+10FFFF).
function seqLen(b, i, end) {
  const c = b[i];
  if (c < 0x80) return 1;
  let n;
  let lo = 0x80;
  let hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c >= 0xe0 && c <= 0xef) { n = 3; if (c === 0xe0) lo = 0xa0; else if (c === 0xed) hi = 0x9f; }
  else if (c >= 0xf0 && c <= 0xf4) { n = 4; if (c === 0xf0) lo = 0x90; else if (c === 0xf4) hi = 0x8f; }
  else return 0;
  if (i + n > end || b[i + 1] < lo || b[i + 1] > hi) return 0;
  for (let k = 2; k < n; k++) if (b[i + k] < 0x80 || b[i + k] > 0xbf) return 0;
  return n;
}

// b[start..end) as text. Python escapes each byte of an invalid stretch; every byte
// after its first is a continuation byte, invalid on its own too, so escaping one
// byte at a time and going on gives the same text.
function decode(b, start, end) {
  let s = '';
  for (let i = start; ;) {
    let j = i;
    for (let n; j < end && (n = seqLen(b, j, end)); j += n);
    s += b.toString('utf8', i, j); // valid UTF-8, so no replacement; a BOM is kept, as in Python
    if (j === end) return s;
    s += String.fromCharCode(0xdc00 + b[j]);
    i = j + 1;
  }
}

// -- the walk ------------------------------------------------------------------------

class Reader {
  constructor(fd, size) {
    this.fd = fd;
    this.size = size;
    this.pos = 0;
    this.buf = Buffer.alloc(0); // bytes [base, base + buf.length) of the file
    this.base = 0;
  }

  need(n, what) {
    if (this.pos + n > this.size) {
      throw new GGUFError(`${what} at offset ${this.pos} runs past the end of the file (${this.size} bytes)`);
    }
  }

  // Checks that n bytes follow pos, makes sure they are in buf, and steps over them:
  // returns where they lie in buf. (Read this.buf only after calling it: it may replace buf.)
  take(n, what) {
    this.need(n, what);
    if (this.pos + n > this.base + this.buf.length) { // (pos only ever moves forward)
      const len = Math.max(n, Math.min(WINDOW, this.size - this.pos));
      const buf = Buffer.allocUnsafe(len);
      for (let got = 0; got < len;) {
        const k = fs.readSync(this.fd, buf, got, len - got, this.pos + got);
        // the file shrank since stat(): an error, not a parse of bytes that are not there
        if (k === 0) throw new GGUFError(`the file shrank to ${this.pos + got} bytes while being read`);
        got += k;
      }
      this.buf = buf;
      this.base = this.pos;
    }
    this.pos += n;
    return this.pos - n - this.base;
  }

  scalar(typ, what) {
    const [n, read] = SCALARS.get(typ);
    const at = this.take(n, what);
    return read(this.buf, at);
  }

  u32(what) {
    const at = this.take(4, what);
    return this.buf.readUInt32LE(at);
  }

  u64(what) {
    const at = this.take(8, what);
    return this.buf.readBigUInt64LE(at);
  }

  string(what, keep = true) {
    const n64 = this.u64(`length of ${what}`);
    if (n64 > MAX_STRING_64) throw new GGUFError(`${what} claims a length of ${n64} bytes`);
    const n = Number(n64);
    this.need(n, what);
    if (!keep) {
      this.pos += n;
      return null;
    }
    // Python can hold such a string; V8 cannot, so refuse it rather than fail with a RangeError
    if (n > MAX_STRING_LENGTH) throw new GGUFError(`${what} is too long to read (${n} bytes)`);
    const at = this.take(n, what);
    return decode(this.buf, at, at + n);
  }

  value(typ, what, keep) {
    if (SCALARS.has(typ)) return this.scalar(typ, what);
    if (typ === STRING) return this.string(what, keep);
    if (typ === ARRAY) {
      const etyp = this.u32(`element type of ${what}`);
      const n64 = this.u64(`length of ${what}`);
      if (n64 > MAX_ARRAY_64) throw new GGUFError(`${what} claims ${n64} elements`);
      const count = Number(n64);
      if (SCALARS.has(etyp)) {
        const bytes = count * SCALARS.get(etyp)[0];
        this.need(bytes, what);
        this.pos += bytes;
        return null; // arrays of numbers are not needed as values
      }
      if (etyp === STRING) {
        this.need(count * 8, what); // each string needs at least its 8-byte length
        const items = [];
        const ewhat = `element of ${what}`;
        for (let i = 0; i < count; i++) {
          const s = this.string(ewhat, keep);
          if (keep) items.push(s);
        }
        return keep ? items : null;
      }
      throw new GGUFError(`${what} has unsupported element type ${etyp}`);
    }
    throw new GGUFError(`${what} has unknown value type ${typ}`);
  }
}

function walk(r, keys) {
  r.take(4, 'magic'); // size >= 24, so this cannot fail; it fills buf from offset 0
  const magic = r.buf.subarray(0, 4);
  if (!magic.equals(GGUF_MAGIC)) {
    throw new GGUFError(`bad magic ${pyBytes(magic)}, expected ${pyBytes(GGUF_MAGIC)}: not a GGUF file`);
  }
  const version = r.u32('version');
  if (!SUPPORTED_VERSIONS.includes(version)) {
    throw new GGUFError(`unsupported GGUF version ${version} (supported: ${SUPPORTED_VERSIONS.join(', ')})`);
  }
  // Both counts are BigInt up to 2**64 - 1; past these checks they fit a Number.
  const tensors64 = r.u64('tensor count');
  const kv64 = r.u64('key/value count');
  // Every key/value pair takes at least 13 bytes, every tensor info 28.
  const size = BigInt(r.size);
  if (kv64 * 13n > size) {
    throw new GGUFError(`header claims ${kv64} key/value pairs, more than a ${r.size}-byte file can hold`);
  }
  if (tensors64 * 28n > size) {
    throw new GGUFError(`header claims ${tensors64} tensors, more than a ${r.size}-byte file can hold`);
  }
  const nKv = Number(kv64);
  const nTensors = Number(tensors64);
  const found = Object.create(null); // no prototype: a key named '__proto__' is just a key
  let alignment = 32n;
  for (let i = 0; i < nKv; i++) {
    const key = r.string(`key #${i}`);
    const k = pyStr(key);
    const typ = r.u32(`type of key ${k}`);
    const val = r.value(typ, `value of ${k}`, keys.has(key) || key === 'general.alignment');
    if (key === 'general.alignment') {
      // Python's test is isinstance(val, int): any integer type, bool included (True is 1)
      const int = SCALARS.has(typ) && !FLOATS.has(typ);
      const a = int ? BigInt(val) : 0n;
      if (a <= 0n || (a & (a - 1n)) !== 0n) {
        throw new GGUFError(`general.alignment is ${pyRepr(val, typ)}, not a power of two`);
      }
      alignment = a;
    }
    if (keys.has(key)) found[key] = val;
  }
  for (let i = 0; i < nTensors; i++) {
    const name = pyStr(r.string(`name of tensor #${i}`));
    const nDims = r.u32(`dimension count of tensor ${name}`);
    if (nDims > MAX_DIMS) throw new GGUFError(`tensor ${name} has ${nDims} dimensions (at most ${MAX_DIMS})`);
    for (let d = 0; d < nDims; d++) {
      if (r.u64(`dimension ${d} of tensor ${name}`) >= 1n << 62n) {
        throw new GGUFError(`tensor ${name} has an absurd dimension`);
      }
    }
    const ttype = r.u32(`type of tensor ${name}`);
    if (ttype >= GGML_TYPE_COUNT) throw new GGUFError(`tensor ${name} has unknown type ${ttype}`);
    const offset = r.u64(`offset of tensor ${name}`);
    if (offset >= size) throw new GGUFError(`tensor ${name} starts at ${offset}, past the end of the file`);
  }
  const dataStart = (BigInt(r.pos) + alignment - 1n) / alignment * alignment;
  if (nTensors && dataStart > size) throw new GGUFError('the tensor data section starts past the end of the file');
  return found;
}

/**
 * Validate the whole header of `path`; return the values of `keys` (an iterable of
 * key names) found, in a prototype-less object. Integers of 64-bit types are BigInt,
 * other numbers Numbers; strings are strings, arrays of strings arrays, and arrays
 * of numbers null.
 *
 * Beyond the layout, it checks what llama.cpp asserts on (and would abort the
 * process for) while loading a vocabulary: every token text must be unique.
 * Errors of the file system (missing file, no permission) are thrown as they come.
 */
function readHeader(path, keys = null) {
  const wanted = new Set(keys || []);
  const size = fs.statSync(path).size;
  if (size === 0) throw new GGUFError('the file is empty');
  const fd = fs.openSync(path, 'r');
  let found;
  try {
    if (size < 24) throw new GGUFError(`the file is only ${size} bytes long, too short for a GGUF header`);
    found = walk(new Reader(fd, size), new Set([...wanted, VOCAB_KEY]));
  } finally {
    fs.closeSync(fd);
  }
  const tokens = found[VOCAB_KEY];
  if (Array.isArray(tokens) && new Set(tokens).size !== tokens.length) {
    const seen = new Map();
    tokens.forEach((t, i) => {
      if (seen.has(t)) {
        throw new GGUFError(`${VOCAB_KEY} lists ${pyStr(t)} twice (ids ${seen.get(t)} and ${i}); ` +
          'llama.cpp cannot load a vocabulary with duplicate tokens');
      }
      seen.set(t, i);
    });
  }
  if (!wanted.has(VOCAB_KEY)) delete found[VOCAB_KEY];
  return found;
}

/**
 * `path` as a readable GGUF file, or an Error "Failed to load <what>: ..." (mirrors
 * mullama/_gguf.py's check_file); returns its fs.Stats.
 */
function checkFile(path, what) {
  if (!path) throw new Error(`Failed to load ${what}: the path is empty`);
  let st;
  try {
    st = fs.statSync(path);
  } catch (e) {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') throw new Error(`Failed to load ${what}: No such file or directory: ${path}`);
    throw new Error(`Failed to load ${what}: cannot read ${path}: ${e.message}`);
  }
  if (st.isDirectory()) throw new Error(`Failed to load ${what}: ${path} is a directory, not a GGUF file`);
  try {
    readHeader(path);
  } catch (e) {
    if (e instanceof GGUFError) throw new Error(`Failed to load ${what}: ${path} is not a valid GGUF file: ${e.message}`);
    throw new Error(`Failed to load ${what}: cannot read ${path}: ${e.message}`);
  }
  return st;
}

module.exports = {
  checkFile,
  GGUFError, readHeader, VOCAB_KEY,
  GGUF_MAGIC, SUPPORTED_VERSIONS, MAX_DIMS, GGML_TYPE_COUNT, MAX_STRING, MAX_ARRAY,
};
