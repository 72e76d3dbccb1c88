'use strict';
// KV-cache types and flash attention: what a JsContext's cache stores, and
// what it takes (mirrors mullama/kv_cache.py).
//
// llama.cpp stores keys and values as f16 by default; typeK / typeV may be
// any of KV_TYPES (quantized caches take a half to a quarter of the memory,
// at some cost in quality).  A quantized V cache needs flash attention, which
// llama.cpp's own check enforces at context creation; asked for with
// flashAttn false it is refused here.

const v = require('./_validate');

// name -> [ggml type id, elements per block, bytes per block], as ggml.h and ggml.c define them
const KV_TYPES = Object.freeze({
  f32: Object.freeze([0, 1, 4]),
  f16: Object.freeze([1, 1, 2]),
  bf16: Object.freeze([30, 1, 2]),
  q8_0: Object.freeze([8, 32, 34]),
  q4_0: Object.freeze([2, 32, 18]),
  q4_1: Object.freeze([3, 32, 20]),
  q5_0: Object.freeze([6, 32, 22]),
  q5_1: Object.freeze([7, 32, 24]),
  iq4_nl: Object.freeze([20, 32, 18]),
});
const UNQUANTIZED = ['f32', 'f16', 'bf16'];
const NAMES = Object.keys(KV_TYPES);

/** llama_flash_attn_type of a flashAttn option. */
function flashAttnType(flashAttn) {
  return flashAttn === 'auto' ? -1 : flashAttn ? 1 : 0;
}

/** A KV-cache type name: a TypeError for a non-string, a RangeError for an unknown name. */
function checkType(name, value) {
  if (typeof value !== 'string') {
    throw new TypeError(`${name} must be a string (one of ${NAMES.join(', ')}), not ${v.typeName(value)}`);
  }
  if (!Object.hasOwn(KV_TYPES, value)) {
    throw new RangeError(`${name}=${JSON.stringify(value)} is not a KV-cache type; use one of ${NAMES.join(', ')}`);
  }
  return value;
}

/** 'auto', true or false; anything else is a TypeError. */
function checkFlashAttn(value) {
  if (value === 'auto' || typeof value === 'boolean') return value;
  const what = typeof value === 'string' ? JSON.stringify(value) : v.typeName(value);
  throw new TypeError(`flashAttn must be 'auto', true or false, not ${what}`);
}

/** A quantized V cache with flashAttn false: a RangeError (Python's ValueError). */
function checkCombination(typeV, flashAttn) {
  if (!UNQUANTIZED.includes(typeV) && flashAttn === false) {
    throw new RangeError(`typeV=${JSON.stringify(typeV)} (a quantized V cache) needs flash attention: `
      + "use flashAttn true or 'auto', or typeV 'f16'");
  }
}

/** Bytes of one row of n elements of typeName. */
function rowBytes(typeName, n) {
  const [, block, size] = KV_TYPES[typeName];
  if (n % block) throw new RangeError(`a ${typeName} row needs a multiple of ${block} elements, not ${n}`);
  return (n / block) * size;
}

/** The memory of a KV cache of nCells cells: per layer, one K row and one V row per cell. */
function cacheBytes(nCells, nLayer, nEmbdK, nEmbdV, typeK, typeV) {
  return nCells * nLayer * (rowBytes(typeK, nEmbdK) + rowBytes(typeV, nEmbdV));
}

module.exports = { KV_TYPES, flashAttnType, checkType, checkFlashAttn, checkCombination, rowBytes, cacheBytes };
