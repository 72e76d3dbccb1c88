'use strict';
// LoRA adapters: fine-tunes applied over a shared base model (mirrors mullama/lora.py).
//
// An adapter is loaded once per model (JsModel.loadLora) and may be used by
// any number of contexts, each with its own set of adapters and scales.  A
// context refers to the adapters it applies: an adapter closed while a
// context still uses it is freed once no context does.

const nodePath = require('node:path');
const koffi = require('koffi');
const _lib = require('./_lib');
const { lib } = require('./_backend');
const { NativeHandle } = require('./_handle');
const { checkFile } = require('./_gguf');
const { JsModel } = require('./model');
const rpc = require('./rpc');
const v = require('./_validate');

let serial = 0; // the canonical order of a context's adapters: the order they were loaded in

class LoraAdapter extends NativeHandle {
  /**
   * A LoRA adapter (a GGUF file made by llama.cpp's convert_lora_to_gguf.py)
   * for one model; model.loadLora(path) is the same.
   */
  constructor(model, path) {
    super();
    if (!(model instanceof JsModel)) throw new TypeError(`model must be a JsModel, not ${v.typeName(model)}`);
    v.string('path', path);
    const st = checkFile(path, 'LoRA adapter');
    const L = lib();
    const mptr = model.ptr();
    _lib.takeErrors();
    const ptr = L.llama_adapter_lora_init(mptr, path);
    if (!ptr) {
      const why = _lib.takeErrors() || 'llama.cpp refused it';
      throw new Error(`Failed to load LoRA adapter ${path} for this model: ${why}`);
    }
    this._model = model;
    this._path = path;
    this._serial = ++serial;
    this._attach(ptr, rpc.guardedFree(L.llama_adapter_lora_free, model.rpcServers), model, st.size);
    this._alpha = this._metaNumber('adapter.lora.alpha');
  }

  _metaNumber(key) {
    const buf = Buffer.alloc(64);
    const n = lib().llama_adapter_meta_val_str(this.ptr(), key, buf, buf.length);
    if (n < 0) return null;
    const text = buf.toString('utf8', 0, Math.min(n, buf.length - 1)).trim();
    const x = Number(text);
    return text && !Number.isNaN(x) ? x : null;
  }

  /** The file it was loaded from. */
  get path() { return this._path; }
  /** The model it was loaded for. */
  get model() { return this._model; }
  /** The adapter's lora_alpha (llama.cpp scales its product by alpha / rank), or null if it does not say. */
  get alpha() { return this._alpha; }

  toString() {
    return `LoraAdapter(${JSON.stringify(nodePath.basename(this._path || ''))}${this.closed ? ', closed' : ''})`;
  }
}

/**
 * `loras` (a Map of LoraAdapter to scale, an array of [adapter, scale] pairs,
 * or null/undefined: none), checked, as [adapter, scale] pairs in a canonical
 * order without zero scales.
 */
function checkLoras(model, loras) {
  if (loras === null || loras === undefined) return [];
  let entries;
  if (loras instanceof Map) {
    entries = Array.from(loras.entries());
  } else if (Array.isArray(loras)) {
    entries = loras.map((e, i) => {
      if (!Array.isArray(e) || e.length !== 2) {
        const what = Array.isArray(e) ? `an array of ${e.length}` : v.typeName(e);
        throw new TypeError(`loras[${i}] must be an [adapter, scale] pair, not ${what}`);
      }
      return e;
    });
  } else {
    throw new TypeError('loras must be a Map of LoraAdapter to scale or an array of [adapter, scale] pairs, '
      + `not ${v.typeName(loras)}`);
  }
  const seen = new Set();
  const out = [];
  for (const [adapter, scale] of entries) {
    if (!(adapter instanceof LoraAdapter)) {
      throw new TypeError(`loras' adapters must be LoraAdapter objects (from JsModel.loadLora), `
        + `not ${v.typeName(adapter)}`);
    }
    if (adapter.closed) throw new Error(`${adapter} is closed`);
    if (adapter._model !== model) throw new Error(`${adapter} was loaded for another model`);
    if (seen.has(adapter)) throw new Error(`${adapter} is given twice`);
    seen.add(adapter);
    v.number(`the scale of ${adapter}`, scale);
    if (scale !== 0) out.push([adapter, scale]); // llama.cpp leaves adapters at scale 0 out; so does the cache's key
  }
  out.sort((a, b) => a[0]._serial - b[0]._serial);
  return out;
}

/** Whether two checked sets are the same adapters with the same scales (null: a mix, equal to none). */
function sameLoras(a, b) {
  if (a === b) return true;
  if (a === null || b === null || a.length !== b.length) return false;
  return a.every(([adapter, scale], i) => b[i][0] === adapter && b[i][1] === scale);
}

/** Make `loras` the context's adapters (from its next decode on). */
function apply(ctx, loras) {
  const L = lib();
  const n = loras.length;
  const ptrs = n ? loras.map(([a]) => a.ptr()) : null;
  const scales = n ? Float32Array.from(loras, ([, s]) => s) : null;
  _lib.takeErrors();
  const rc = L.llama_set_adapters_lora(ctx, ptrs, n, scales);
  if (rc !== 0) throw new Error(`llama.cpp could not apply the LoRA adapters: ${_lib.takeErrors() || rc}`);
}

module.exports = { LoraAdapter, checkLoras, sameLoras, apply };
