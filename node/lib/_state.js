'use strict';
// The saved-state format of a JsContext (mirrors mullama/_state.py, which
// documents the layout): llama.cpp's blob of sequence 0 behind a header of
// our own (magic, version, model fingerprint, tokens, blob length, SHA-256),
// so that a state from another model, a truncated or a corrupted one is
// refused before llama.cpp reads it.  Python and Node write the same bytes.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { lib } = require('./_backend');

const MAGIC = Buffer.from('MULLAMA-STATE\0', 'latin1');
const VERSION = 1;
const SHA_LEN = 32;
// The fields that identify a model cheaply, in the order the header holds them.
const FINGERPRINT = ['architecture', 'name', 'description', 'n_vocab', 'n_embd', 'n_layer', 'n_head',
  'n_head_kv', 'n_params', 'size'];
const STRINGS = new Set(['architecture', 'name', 'description']);

/** The model's fingerprint: strings as llama.cpp's raw bytes (Buffers), numbers as BigInts. */
function fingerprint(modelPtr, nVocab) {
  const L = lib();
  const meta = (key) => {
    const n = L.llama_model_meta_val_str(modelPtr, key, null, 0);
    if (n < 0) return Buffer.alloc(0);
    const buf = Buffer.alloc(n + 1);
    L.llama_model_meta_val_str(modelPtr, key, buf, n + 1);
    return buf.subarray(0, n);
  };
  const desc = Buffer.alloc(256);
  const n = L.llama_model_desc(modelPtr, desc, desc.length);
  return {
    architecture: meta('general.architecture'),
    name: meta('general.name'),
    description: desc.subarray(0, Math.max(0, Math.min(n, desc.length - 1))),
    n_vocab: BigInt(nVocab),
    n_embd: BigInt(L.llama_model_n_embd(modelPtr)),
    n_layer: BigInt(L.llama_model_n_layer(modelPtr)),
    n_head: BigInt(L.llama_model_n_head(modelPtr)),
    n_head_kv: BigInt(L.llama_model_n_head_kv(modelPtr)),
    n_params: BigInt(L.llama_model_n_params(modelPtr)),
    size: BigInt(L.llama_model_size(modelPtr)),
  };
}

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

/** Everything before the checksum. */
function header(fp, tokens, blobLen) {
  const parts = [MAGIC, u32(VERSION)];
  for (const name of FINGERPRINT) {
    const value = fp[name];
    if (STRINGS.has(name)) parts.push(u32(value.length), value);
    else parts.push(u64(value));
  }
  const ids = Buffer.alloc(4 + 4 * tokens.length);
  ids.writeUInt32LE(tokens.length, 0);
  for (let i = 0; i < tokens.length; i++) ids.writeInt32LE(tokens[i], 4 + 4 * i);
  parts.push(ids, u64(blobLen));
  return Buffer.concat(parts);
}

function checksum(head, blob) {
  return crypto.createHash('sha256').update(head).update(blob).digest();
}

function show(value) {
  return Buffer.isBuffer(value) ? `'${value.toString('utf8')}'` : String(value);
}

/**
 * Check `data` against this model (magic, version, length, checksum,
 * fingerprint, token ids); throws an Error naming the problem.  Returns the
 * tokens and where the blob is.  `what` names the input in messages.
 */
function parse(data, fp, what) {
  const size = data.length;
  if (!data.subarray(0, MAGIC.length).equals(MAGIC.subarray(0, Math.min(size, MAGIC.length)))) {
    throw new Error(`${what} is not a mullama state (it does not start with "MULLAMA-STATE\\0")`);
  }
  let pos = 0;
  const take = (n, field) => {
    if (pos + n > size) {
      throw new Error(`${what} is truncated: it ends at byte ${size}, inside its ${field} `
        + `(which needs ${pos + n} bytes)`);
    }
    const out = data.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  const readU64 = (field) => take(8, field).readBigUInt64LE(0);
  take(MAGIC.length, 'magic');
  const version = take(4, 'format version').readUInt32LE(0);
  if (version !== VERSION) {
    throw new Error(`${what} has format version ${version}, but this mullama reads version ${VERSION} `
      + '(save it again with this version)');
  }
  const saved = {};
  for (const name of FINGERPRINT) {
    saved[name] = STRINGS.has(name) ? take(take(4, name).readUInt32LE(0), name) : readU64(name);
  }
  const nTokens = take(4, 'token count').readUInt32LE(0);
  const ids = take(4 * nTokens, 'tokens');
  const blobLen64 = readU64('state length');
  const headEnd = pos;
  const digest = take(SHA_LEN, 'checksum');
  const announced = BigInt(pos) + blobLen64;
  if (BigInt(size) < announced) {
    throw new Error(`${what} is truncated: it has ${size} bytes, its header announces ${announced}`);
  }
  if (BigInt(size) > announced) {
    throw new Error(`${what} has ${BigInt(size) - announced} unexpected bytes after its end `
      + `(it has ${size} bytes, its header announces ${announced})`);
  }
  const blobLen = Number(blobLen64);
  if (!checksum(data.subarray(0, headEnd), data.subarray(pos)).equals(digest)) {
    throw new Error(`${what} is corrupted: its SHA-256 checksum does not match its contents`);
  }
  const differs = (name) => (STRINGS.has(name) ? !saved[name].equals(fp[name]) : saved[name] !== fp[name]);
  const diffs = FINGERPRINT.filter(differs)
    .map((name) => `${name} is ${show(saved[name])} in the state but ${show(fp[name])} in this model`);
  if (diffs.length) throw new Error(`${what} was saved from another model: ${diffs.join('; ')}`);
  const nVocab = Number(fp.n_vocab);
  const tokens = new Array(nTokens);
  for (let i = 0; i < nTokens; i++) {
    const t = ids.readInt32LE(4 * i);
    if (t < 0 || t >= nVocab) {
      throw new Error(`${what} holds token id ${t}, outside the vocabulary (0..${nVocab - 1})`);
    }
    tokens[i] = t;
  }
  return { tokens, blobOffset: pos, blobLen };
}

/**
 * Write `data` to `file` atomically: a temporary file beside it, then a
 * rename.  The file is readable by its owner only (it holds a conversation).
 */
function writeFile(file, data) {
  const tmp = path.join(path.dirname(path.resolve(file)),
    `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(6).toString('hex')}.tmp`);
  const fd = fs.openSync(tmp, 'wx', 0o600);
  try {
    try {
      for (let off = 0; off < data.length;) off += fs.writeSync(fd, data, off, data.length - off);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    try {
      fs.unlinkSync(tmp);
    } catch {
      // already gone
    }
    throw e;
  }
}

module.exports = { MAGIC, VERSION, SHA_LEN, FINGERPRINT, fingerprint, header, checksum, parse, writeFile };
