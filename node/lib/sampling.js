'use strict';
// JsSamplerParams (plain objects, validated) and the native llama.cpp sampler
// chain built from them (mirrors mullama/sampling.py).

const koffi = require('koffi');
const { lib } = require('./_backend');
const { NativeHandle } = require('./_handle');
const v = require('./_validate');
const { SAMPLER_FIELDS } = require('./_rules');

const LLAMA_DEFAULT_SEED = 0xFFFFFFFF; // llama.cpp draws a fresh random seed on every reset

// name -> [default, kind, lo, hi], shared with Python (rules.json); every field is checked,
// unknown fields are refused
const FIELDS = SAMPLER_FIELDS;
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

const SAMPLING_MODES = ['auto', 'cpu', 'device'];

/** Validate a `sampling` option: where sampler chains run. */
function checkSampling(sampling) {
  const names = SAMPLING_MODES.map((m) => JSON.stringify(m)).join(', ');
  if (typeof sampling !== 'string') throw new TypeError(`sampling must be one of ${names}, not ${typeof sampling}`);
  if (!SAMPLING_MODES.includes(sampling)) throw new RangeError(`sampling must be one of ${names}, not ${JSON.stringify(sampling)}`);
  return sampling;
}

function isGreedy(p) {
  return p.temperature <= 0.0 || p.topK === 1;
}

function usesPenalties(p) {
  return p.penaltyLastN !== 0 && (p.penaltyRepeat !== 1.0 || p.penaltyFreq !== 0.0 || p.penaltyPresent !== 0.0);
}

/**
 * A native sampler chain for one parameter set (built once, reset per
 * generation), run on either path (see mullama/sampling.py):
 *   host: llama.cpp applies it to the logits; with topK set it sees only the
 *     topK largest logits and the tokens the penalties look at, which gives
 *     the token the whole vocabulary would (candidates());
 *   device: attached to a sequence (llama_set_sampler), its leading samplers
 *     run inside the decode graph and the rest on the host over what they
 *     left.  With topK set and penalties that only lower logits, the device
 *     part is one cut (deviceCut: the topK largest logits plus one per token
 *     of the penalty window) and the host finishes the chain on those: the
 *     host path's tokens exactly.  Otherwise the whole chain runs in the
 *     graph up to the first sampler llama.cpp lacks there (typical-p).  The
 *     context that attaches it owns it (handOver()).
 */
class SamplerChain extends NativeHandle {
  constructor(p, nVocab, nCtx = 0, device = false) {
    super();
    const L = lib();
    // llama.cpp's penalties treat a negative window as "disabled"; -1 means the whole context here.
    const lastN = p.penaltyLastN >= 0 ? p.penaltyLastN : Math.max(nCtx, 1);
    this.key = paramsKey(p);
    this.device = device;
    this.usesPenalties = usesPenalties({ ...p, penaltyLastN: lastN });
    this.penaltyLastN = lastN;
    this.argmaxOnly = false;
    this.ownedByContext = null; // the native pointer, once a context owns it (handOver)
    this.topK = p.topK > 0 && p.topK < nVocab && !isGreedy(p) ? p.topK : 0; // host path: candidates needed
    this.recent = []; // the penalties' window, for the host path's candidates
    const chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params());
    if (!chain) throw new Error('could not create a sampler chain');
    this._attach(chain, L.llama_sampler_free);
    const add = (sampler, what) => {
      if (!sampler) throw new Error(`llama.cpp could not create the ${what} sampler`);
      L.llama_sampler_chain_add(chain, sampler); // the chain owns it from here on
    };
    const addPenalties = () => {
      if (this.usesPenalties) {
        add(L.llama_sampler_init_penalties(nVocab, lastN, p.penaltyRepeat, p.penaltyFreq, p.penaltyPresent),
          'penalties');
      }
    };
    this.deviceCut = 0;
    if (isGreedy(p)) {
      addPenalties();
      add(L.llama_sampler_init_greedy(), 'greedy');
      // Nothing in the chain reshapes or remembers: the first largest logit,
      // read in place, is the token llama.cpp's greedy sampler would pick.
      this.argmaxOnly = !this.usesPenalties && !device;
      return;
    }
    // Penalties only lower logits unless one is negative (or the repeat
    // penalty below 1): then a token outside the raw top (topK + window)
    // cannot reach the topK after them.
    const lowersOnly = p.penaltyRepeat >= 1.0 && p.penaltyFreq >= 0.0 && p.penaltyPresent >= 0.0;
    const cut = p.topK + (this.usesPenalties ? Math.min(lastN, nCtx || lastN) : 0);
    this.deviceCut = device && p.topK > 0 && lowersOnly && cut < nVocab ? cut : 0;
    if (this.deviceCut) {
      add(L.llama_sampler_init_top_k(this.deviceCut), 'top-k cut');
      // top-n-sigma with n = Infinity masks nothing (max - Infinity * std is
      // -Infinity, or NaN) and has no device version: the device part of the
      // chain ends here, the rest runs on the host
      add(L.llama_sampler_init_top_n_sigma(Infinity), 'host boundary');
    }
    addPenalties();
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
    this.recent = [];
    if (this.usesPenalties) {
      this.recent = prompt.slice(-this.penaltyLastN);
      for (const t of this.recent) L.llama_sampler_accept(smpl, t);
    }
  }

  /** Record a token the host path chose (the penalties' history, the random state). */
  accept(token) {
    lib().llama_sampler_accept(this.ptr(), token);
    if (this.usesPenalties) {
      this.recent.push(token);
      if (this.recent.length > this.penaltyLastN) this.recent.shift();
    }
  }

  /**
   * The host chain's candidates, written as llama_token_data into `ids`/`vals`
   * (views of one block: id, logit, p per entry); returns how many.  Every
   * token the chain's top-k can keep after the penalties is among the
   * topK + window largest raw logits or in the window (ties at the cut kept).
   */
  candidates(logits, ids, vals) {
    const window = new Set(this.recent);
    const { chosen, kth } = largest(logits, this.topK + window.size);
    let extra = false;
    // the window's tokens not already chosen are exactly those below the cut
    for (const t of window) {
      if (logits[t] < kth) {
        chosen.push(t);
        extra = true;
      }
    }
    if (extra) chosen.sort((a, b) => a - b); // ascending ids, as in the whole vocabulary: ties break alike
    let n = 0;
    for (const t of chosen) {
      ids[3 * n] = t;
      vals[3 * n + 1] = logits[t];
      vals[3 * n + 2] = 0;
      n++;
    }
    return n;
  }

  /** The native candidate array of the host path (made once per chain, freed with it). */
  candidateArray(nVocab) {
    if (!this._cand) this._cand = new CandidateArray(nVocab);
    return this._cand;
  }

  close() {
    if (this._cand) this._cand.close();
    this._cand = null;
    super.close();
  }

  /** The names of the samplers in the chain, in order ("+" marks those running in the graph). */
  describe() {
    const L = lib();
    const chain = this.ptr();
    const out = [];
    for (let i = 0; i < L.llama_sampler_chain_n(chain); i++) {
      out.push(L.llama_sampler_name(L.llama_sampler_chain_get(chain, i)) || '');
    }
    return out;
  }

  /** Give the native chain to a context that attaches it; this object then only borrows it. */
  handOver() {
    const p = this.ptr();
    this._held.freed = true; // the context frees it
    this.ownedByContext = p;
    return p;
  }

  /** Mark closed without freeing (the owner frees the native chain). */
  forget() {
    this._pointer = null;
    this._closeRequested = true;
  }
}

/**
 * The ascending indices of the m largest values of x, plus any tied with the
 * smallest of them ({chosen, kth}: kth is that smallest value).  Every s-th
 * value is a sample whose m-th largest value t has at least m values of x at
 * or above it, so the m largest are all among x >= t: one pass over x, then
 * sorts of about sqrt(n m) values, whatever the logits look like.
 */
function largest(x, m) {
  const n = x.length;
  if (m >= n) return { chosen: Array.from({ length: n }, (_, i) => i), kth: -Infinity };
  const stride = Math.max(1, Math.floor(Math.sqrt(n / Math.max(m, 1))));
  let sel;
  const nSample = Math.ceil(n / stride);
  if (nSample > m) {
    const sample = new Float32Array(nSample);
    for (let i = 0, j = 0; i < n; i += stride, j++) sample[j] = x[i];
    sample.sort();
    const t = sample[nSample - m];
    sel = [];
    for (let i = 0; i < n; i++) if (x[i] >= t) sel.push(i);
  } else {
    sel = Array.from({ length: n }, (_, i) => i);
  }
  const vals = Float32Array.from(sel, (i) => x[i]).sort();
  const kth = vals[vals.length - m];
  return { chosen: sel.filter((i) => x[i] >= kth), kth };
}

/** A native llama_token_data_array with room for the whole vocabulary, written through typed arrays. */
class CandidateArray extends NativeHandle {
  constructor(nVocab) {
    super();
    const bytes = 32 + nVocab * 12;
    const base = koffi.alloc('uint8_t', bytes);
    this._attach(base, koffi.free, null, bytes);
    const ab = koffi.view(base, bytes);
    this.header = new BigInt64Array(ab, 0, 3); // data, size, selected
    this.sorted = new Uint8Array(ab, 24, 1);
    this.ids = new Int32Array(ab, 32, nVocab * 3);
    this.vals = new Float32Array(ab, 32, nVocab * 3);
    this.header[0] = base + 32n;
  }

  /** Ready for llama_sampler_apply with the first n entries. */
  reset(n) {
    this.header[1] = BigInt(n);
    this.header[2] = -1n;
    this.sorted[0] = 0;
    return this.ptr();
  }

  /** How many entries the last sampler left. */
  size() {
    return Number(this.header[1]);
  }

  /** The token the sampler selected. */
  selected() {
    const i = Number(this.header[2]);
    if (!(i >= 0 && i < Number(this.header[1]))) throw new Error('the sampler chain selected no token');
    return this.ids[3 * i];
  }
}

module.exports = {
  CandidateArray,
  FIELDS,
  SAMPLING_MODES,
  SamplerChain,
  checkSampling,
  isGreedy,
  usesPenalties,
  paramsKey,
  resolveParams,
  samplerParamsCreative,
  samplerParamsGreedy,
  samplerParamsPrecise,
};
