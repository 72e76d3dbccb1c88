'use strict';
// The per-sequence token loop (mirrors mullama/_sequence.py).
//
// One sequence's generation is a generator: it samples a token from the
// logits at the output index it is given, hands the token to the driver to
// decode, and turns it into text (whole UTF-8 characters only, stop strings
// held back until they cannot match) while that decode runs.  It yields
//   a number: the sampled token, which the driver must decode; the driver
//     passes back the output index of that token's logits (-1 for the last
//     output of a single-sequence batch) once the decode is under way;
//   a string: a piece of text for the caller;
//   null: the last token's text is done and the loop is ready to sample.
// A stop string found in the text of a token already sent to the decoder
// ends the loop with finish.overran set: the driver drops that token from
// the cache.  Sampling, end-of-generation, detokenizing, UTF-8 and stop
// strings exist only here.

const { TextDecoder } = require('node:util');
const koffi = require('koffi');
const { lib } = require('./_backend');

const FINISH_STOP = 'stop'; // an end-of-generation token or a stop string
const FINISH_LENGTH = 'length'; // maxTokens

/** Filled in by the loop when it ends: why, and how many tokens it sampled. */
class Finish {
  constructor() {
    this.reason = null;
    this.nSampled = 0;
    this.overran = false; // the last token went to the decoder, then a stop string ended the text
  }
}

/** logitsAt(idx): the logits at output idx of the last decode, a Float32Array view (no copy) kept in `views`. */
function logitRows(ctx, nVocab, views) {
  const L = lib();
  return (idx) => {
    const addr = L.llama_get_logits_ith(ctx, idx);
    let logits = views.get(addr);
    if (!logits) {
      logits = new Float32Array(koffi.view(addr, nVocab * 4));
      views.set(addr, logits);
    }
    return logits;
  };
}

/** sample(idx): the chain's token from the logits at output idx (within `grammar`, a GrammarState, if any). */
function sampler(ctx, chain, nVocab, views, grammar = null) {
  const L = lib();
  const logitsAt = logitRows(ctx, nVocab, views);
  if (grammar) return grammarSampler(chain, nVocab, grammar, logitsAt);
  if (chain.topK && !chain.device) {
    // The host chain over the few candidates that can survive its top-k (SamplerChain.candidates).
    const cand = chain.candidateArray(nVocab);
    const smpl = chain.ptr();
    return (idx) => {
      const n = chain.candidates(logitsAt(idx), cand.ids, cand.vals);
      L.llama_sampler_apply(smpl, cand.reset(n));
      const tok = cand.selected();
      chain.accept(tok);
      return tok;
    };
  }
  if (!chain.argmaxOnly) {
    // The whole vocabulary; on the device path the chain ran inside the decode
    // and this returns its token (finishing on the host what could not run there).
    const smpl = chain.ptr();
    return (idx) => L.llama_sampler_sample(smpl, ctx, idx);
  }
  // Greedy without penalties: the first largest logit, exactly what
  // llama.cpp's greedy sampler picks, read in place (no candidate array).
  return (idx) => argmax(logitsAt(idx));
}

function argmax(x) {
  let best = 0;
  let max = x[0];
  for (let i = 1; i < x.length; i++) {
    if (x[i] > max) {
      max = x[i];
      best = i;
    }
  }
  return best;
}

/**
 * Sampling within a grammar, as llama.cpp's own samplers do it (mirrors
 * mullama/_sequence.py): the chain first picks from all tokens; when the
 * grammar allows that token it is kept (for greedy chains exactly the best
 * allowed token).  Only otherwise are the whole vocabulary's candidates masked
 * by the grammar and the chain applied again.
 */
function grammarSampler(chain, nVocab, grammar, logitsAt) {
  const L = lib();
  const cand = chain.candidateArray(nVocab);
  const smpl = chain.ptr();
  const gsmpl = grammar.ptr();
  const greedy = chain.argmaxOnly;
  const fill = (logits) => {
    const { ids, vals } = cand;
    for (let i = 0; i < nVocab; i++) {
      ids[3 * i] = i;
      vals[3 * i + 1] = logits[i];
      vals[3 * i + 2] = 0;
    }
    return cand.reset(nVocab);
  };
  return (idx) => {
    const logits = logitsAt(idx);
    let tok;
    if (greedy) {
      tok = argmax(logits);
    } else {
      L.llama_sampler_apply(smpl, fill(logits));
      tok = cand.selected();
    }
    if (!grammar.allows(tok)) {
      const arr = fill(logits);
      L.llama_sampler_apply(gsmpl, arr);
      if (greedy) {
        let best = -1;
        let max = -Infinity;
        const { ids, vals } = cand;
        const n = cand.size();
        for (let i = 0; i < n; i++) {
          if (vals[3 * i + 1] > max) {
            max = vals[3 * i + 1];
            best = ids[3 * i];
          }
        }
        if (best < 0) throw new Error('the grammar allows no token here (is it satisfiable with this vocabulary?)');
        tok = best;
      } else {
        let any = false;
        const n = cand.size();
        for (let i = 0; i < n && !any; i++) any = cand.vals[3 * i + 1] !== -Infinity;
        if (!any) throw new Error('the grammar allows no token here (is it satisfiable with this vocabulary?)');
        L.llama_sampler_apply(smpl, arr);
        tok = cand.selected();
      }
    }
    if (!greedy) chain.accept(tok); // the penalties' history, as llama_sampler_sample does
    grammar.accept(tok);
    return tok;
  };
}

/** One sequence's generation, from the logits of its prompt at firstIdx; see the module comment. */
function* tokenLoop(model, sample, firstIdx, maxTokens, stops, ignoreEos, finish) {
  const utf8 = new TextDecoder('utf-8');
  let held = ''; // text withheld because it may be the start of a stop string
  let idx = firstIdx;
  finish.reason = FINISH_LENGTH;
  for (let i = 0; i < maxTokens; i++) {
    const tok = sample(idx);
    finish.nSampled = i + 1;
    let piece = model._pieceOrEog(tok);
    if (piece === null) {
      if (!ignoreEos) {
        finish.reason = FINISH_STOP;
        break;
      }
      piece = model._piece(tok, false);
    }
    const last = i + 1 === maxTokens;
    if (!last) idx = yield tok; // decoding from here on; its text is made meanwhile
    let text = utf8.decode(piece, { stream: true });
    if (stops.length) {
      let hit;
      [text, hit] = applyStops(held + text, stops);
      if (hit) held = '';
      else [text, held] = holdBack(text, stops);
      if (text) yield text;
      if (hit) {
        finish.reason = FINISH_STOP;
        finish.overran = !last;
        return;
      }
    } else if (text) {
      yield text;
    }
    if (last) break;
    yield null; // ready to sample
  }
  const tail = held + utf8.decode();
  if (tail) yield tail;
}

function checkStops(stop) {
  if (stop === undefined || stop === null) return [];
  const list = typeof stop === 'string' ? [stop] : stop;
  if (!Array.isArray(list) || !list.every((s) => typeof s === 'string')) {
    throw new TypeError('stop must be a string or an array of strings');
  }
  if (list.some((s) => !s)) throw new RangeError('stop strings must not be empty');
  return list.slice();
}

function applyStops(text, stops) {
  let cut = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (cut < 0 || i < cut)) cut = i;
  }
  return cut >= 0 ? [text.slice(0, cut), true] : [text, false];
}

/** Split off the longest tail of `text` that could begin a stop string. */
function holdBack(text, stops) {
  let keep = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > keep; k--) {
      if (s.startsWith(text.slice(-k))) {
        keep = k;
        break;
      }
    }
  }
  return keep ? [text.slice(0, -keep), text.slice(-keep)] : [text, ''];
}

module.exports = { FINISH_LENGTH, FINISH_STOP, Finish, checkStops, logitRows, sampler, tokenLoop };
