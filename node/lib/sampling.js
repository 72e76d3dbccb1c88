'use strict';
// JsSamplerParams (plain objects, validated) and the native llama.cpp sampler
// chain built from them (mirrors mullama/sampling.py).

const { lib } = require('./_backend');
const { NativeHandle } = require('./_handle');
const v = require('./_validate');

const LLAMA_DEFAULT_SEED = 0xFFFFFFFF; // llama.cpp draws a fresh random seed on every reset

// name -> [default, kind, lo, hi]; every field is checked, unknown fields are refused
const FIELDS = {
  temperature: [0.8, 'float', 0.0, null],
  topK: [40, 'int', 0, null],
  topP: [0.95, 'float', 0.0, 1.0],
  minP: [0.05, 'float', 0.0, 1.0],
  typicalP: [1.0, 'float', 0.0, 1.0],
  penaltyRepeat: [1.1, 'float', 0.0, null],
  penaltyFreq: [0.0, 'float', null, null],
  penaltyPresent: [0.0, 'float', null, null],
  penaltyLastN: [64, 'int', -1, null],
  seed: [0, 'int', 0, 0xFFFFFFFE],
};
const FIELD_NAMES = Object.keys(FIELDS);

/** A complete, validated copy of `params` (missing fields take their defaults). */
function resolveParams(params) {
  const given = v.options('params', params, FIELD_NAMES);
  const out = {};
  for (const [name, [dflt, kind, lo, hi]] of Object.entries(FIELDS)) {
    const value = given[name] === undefined ? dflt : given[name];
    out[name] = kind === 'int' ? v.integer(name, value, lo, hi) : v.number(name, value, lo, hi);
  }
  if (out.penaltyRepeat <= 0) throw new RangeError(`penaltyRepeat must be > 0, got ${out.penaltyRepeat}`);
  for (const name of ['topP', 'typicalP']) {
    if (out[name] <= 0) throw new RangeError(`${name} must be > 0 (1.0 disables it), got ${out[name]}`);
  }
  return out;
}

function defaults() {
  return resolveParams({});
}

// Presets, with the values the API documents.
function samplerParamsGreedy() {
  return { ...defaults(), temperature: 0.0, topK: 1, topP: 1.0, minP: 0.0, penaltyRepeat: 1.0 };
}

function samplerParamsCreative() {
  return { ...defaults(), temperature: 1.2, topK: 100, topP: 0.95, minP: 0.0, penaltyRepeat: 1.0 };
}

function samplerParamsPrecise() {
  return { ...defaults(), temperature: 0.3, topK: 20, topP: 0.8, minP: 0.05, penaltyRepeat: 1.1 };
}

/** A hashable snapshot of resolved params, used to reuse an already-built native chain. */
function paramsKey(p) {
  return FIELD_NAMES.map((n) => p[n]).join('|');
}

/** A native sampler chain for one parameter set (built once, reset per generation). */
class SamplerChain extends NativeHandle {
  constructor(p, nVocab) {
    super();
    const L = lib();
    this.usesPenalties = p.penaltyLastN !== 0
      && (p.penaltyRepeat !== 1.0 || p.penaltyFreq !== 0.0 || p.penaltyPresent !== 0.0);
    this.penaltyLastN = p.penaltyLastN;
    this.argmaxOnly = false;
    const chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params());
    if (!chain) throw new Error('could not create a sampler chain');
    this._attach(chain, L.llama_sampler_free);
    const add = (sampler, what) => {
      if (!sampler) throw new Error(`llama.cpp could not create the ${what} sampler`);
      L.llama_sampler_chain_add(chain, sampler); // the chain owns it from here on
    };
    if (this.usesPenalties) {
      add(L.llama_sampler_init_penalties(nVocab, p.penaltyLastN, p.penaltyRepeat, p.penaltyFreq, p.penaltyPresent),
        'penalties');
    }
    if (p.temperature <= 0.0 || p.topK === 1) {
      add(L.llama_sampler_init_greedy(), 'greedy');
      // Nothing in the chain reshapes or remembers: the first largest logit,
      // read in place, is the token llama.cpp's greedy sampler would pick.
      this.argmaxOnly = !this.usesPenalties;
      return;
    }
    if (p.topK > 0) add(L.llama_sampler_init_top_k(p.topK), 'top-k');
    if (p.typicalP < 1.0) add(L.llama_sampler_init_typical(p.typicalP, 1), 'typical');
    if (p.topP < 1.0) add(L.llama_sampler_init_top_p(p.topP, 1), 'top-p');
    if (p.minP > 0.0) add(L.llama_sampler_init_min_p(p.minP, 1), 'min-p');
    add(L.llama_sampler_init_temp(p.temperature), 'temperature');
    add(L.llama_sampler_init_dist(p.seed || LLAMA_DEFAULT_SEED), 'dist');
  }

  /** Reset for a new generation; the penalties see the prompt's last tokens first. */
  start(prompt) {
    const L = lib();
    const smpl = this.ptr();
    L.llama_sampler_reset(smpl);
    if (this.usesPenalties) {
      const window = this.penaltyLastN < 0 ? prompt : prompt.slice(-this.penaltyLastN);
      for (const t of window) L.llama_sampler_accept(smpl, t);
    }
  }

  /** The names of the samplers in the chain, in order. */
  describe() {
    const L = lib();
    const chain = this.ptr();
    const out = [];
    for (let i = 0; i < L.llama_sampler_chain_n(chain); i++) {
      out.push(L.llama_sampler_name(L.llama_sampler_chain_get(chain, i)) || '');
    }
    return out;
  }
}

module.exports = {
  FIELDS,
  SamplerChain,
  paramsKey,
  resolveParams,
  samplerParamsCreative,
  samplerParamsGreedy,
  samplerParamsPrecise,
};
