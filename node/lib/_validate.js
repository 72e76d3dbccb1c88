'use strict';
// Argument checks shared by the public classes (mirrors mullama/_validate.py):
// wrong type -> TypeError, value out of range -> RangeError, both naming the argument.

function typeName(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

function integer(name, value, lo = null, hi = null) {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    const what = typeof value === 'number' ? String(value) : typeName(value);
    throw new TypeError(`${name} must be an integer, not ${what}`);
  }
  if (lo !== null && value < lo) throw new RangeError(`${name} must be >= ${lo}, got ${value}`);
  if (hi !== null && value > hi) throw new RangeError(`${name} must be <= ${hi}, got ${value}`);
  return value;
}

function number(name, value, lo = null, hi = null) {
  if (typeof value !== 'number') throw new TypeError(`${name} must be a number, not ${typeName(value)}`);
  if (!Number.isFinite(value)) throw new RangeError(`${name} must be finite, got ${value}`);
  if (lo !== null && value < lo) throw new RangeError(`${name} must be >= ${lo}, got ${value}`);
  if (hi !== null && value > hi) throw new RangeError(`${name} must be <= ${hi}, got ${value}`);
  return value;
}

function boolean(name, value) {
  if (typeof value !== 'boolean') throw new TypeError(`${name} must be a boolean, not ${typeName(value)}`);
  return value;
}

function string(name, value) {
  if (typeof value !== 'string') throw new TypeError(`${name} must be a string, not ${typeName(value)}`);
  return value;
}

/** An options object (or undefined/null, meaning none); unknown keys are refused, not ignored. */
function options(name, value, allowed) {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new TypeError(`${name} must be an object, not ${typeName(value)}`);
  }
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      throw new TypeError(`${name} has no option '${key}'; options: ${allowed.join(', ')}`);
    }
  }
  return value;
}

/** An array (or typed array) of integer token ids, each inside the vocabulary; returns an Int32Array. */
function tokenList(name, tokens, nVocab) {
  if (!Array.isArray(tokens) && !(ArrayBuffer.isView(tokens) && !(tokens instanceof DataView))) {
    throw new TypeError(`${name} must be an array of integer token ids, not ${typeName(tokens)}`);
  }
  const out = new Int32Array(tokens.length);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (typeof t !== 'number' || !Number.isInteger(t)) {
      throw new TypeError(`${name}[${i}] must be an integer token id, not ${typeof t === 'number' ? t : typeName(t)}`);
    }
    if (t < 0 || t >= nVocab) {
      throw new RangeError(`token id ${t} in ${name} is outside the vocabulary (0..${nVocab - 1})`);
    }
    out[i] = t;
  }
  return out;
}

module.exports = { integer, number, boolean, string, options, tokenList, typeName };
