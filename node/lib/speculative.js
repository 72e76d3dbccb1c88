'use strict';
// Speculative decoding (mirrors mullama/speculative.py): a drafter guesses the
// tokens that may follow the text so far; the context decodes the sampled
// token and the drafts together, each an output, and the token loop samples
// from them in turn.  While the sampled token equals the next draft, that
// draft is decoded already and costs no decode of its own; the first token
// that differs drops the drafts left.  Every token is still sampled by the
// sequence's own chain from the target's logits given the tokens kept before
// it: greedy output is the same token for token, a seeded sampler draws the
// same numbers, and the distribution is the target's (llama.cpp's
// accept/reject rule for a draft distribution that is one token).
//
// PromptLookup drafts by copying from the text so far; DraftModel runs a
// smaller model of the same vocabulary greedily in its own context.  In
// Node the draft model's decodes run on the calling thread, also for the
// async methods (they are a small model's, one token at a time).

const { lib } = require('./_backend');
const _lib = require('./_lib');
const { JsModel } = require('./model');
const v = require('./_validate');

const MAX_DRAFT = 64; // drafts per step: beyond this a miss wastes more than a hit saves
// llama.cpp's check of two vocabularies (common/speculative.cpp): sizes may
// differ by this much (padding), and the tokens both have must be the same text
const VOCAB_SIZE_SLACK = 128;

class PromptLookup {
  /**
   * Draft up to `draftMax` tokens that followed the last earlier occurrence
   * of the text's final `n` tokens (then n - 1, down to `nMin`; by default `n`: shorter matches are
   * right too seldom to pay for the tokens they add to a decode).
   */
  constructor(options = undefined) {
    const o = v.options('options', options, ['n', 'draftMax', 'nMin']);
    this.n = v.integer('n', o.n ?? 3, 1, 64);
    this.nMin = o.nMin === undefined ? this.n : v.integer('nMin', o.nMin, 1, this.n);
    this.draftMax = v.integer('draftMax', o.draftMax ?? 10, 1, MAX_DRAFT);
  }

  /** @internal */
  _start(target, nSeq) { return new LookupDrafter(this); }

  toString() { return `PromptLookup(n=${this.n}, draftMax=${this.draftMax}, nMin=${this.nMin})`; }
}

class DraftModel {
  /**
   * Draft with a smaller `model` of the same vocabulary: its greedy tokens, up
   * to `draftMax` (16), while each is at least `pMin` (0.75) likely.
   */
  constructor(model, options = undefined) {
    if (!(model instanceof JsModel)) throw new TypeError(`model must be a JsModel, not ${v.typeName(model)}`);
    model.ptr();
    const o = v.options('options', options, ['draftMax', 'pMin']);
    this.model = model;
    this.draftMax = v.integer('draftMax', o.draftMax ?? 16, 1, MAX_DRAFT);
    this.pMin = v.number('pMin', o.pMin ?? 0.75, 0, 1);
  }

  /** @internal */
  _start(target, nSeq) {
    checkVocabularies(target.model, this.model);
    return new ModelDrafter(this, target, nSeq);
  }

  toString() { return `DraftModel(${this.model}, draftMax=${this.draftMax}, pMin=${this.pMin})`; }
}

function checkDraft(draft) {
  if (draft === undefined || draft === null || draft instanceof PromptLookup || draft instanceof DraftModel) {
    return draft ?? null;
  }
  throw new TypeError(`draft must be a DraftModel, a PromptLookup or undefined, not ${v.typeName(draft)}`);
}

/** RangeError unless `draft` tokenizes as `target` does (llama.cpp's rule for a draft model). */
function checkVocabularies(target, draft) {
  const L = lib();
  const tv = target._vocab;
  const dv = draft._vocab;
  const problems = [];
  if (L.llama_vocab_type(tv) !== L.llama_vocab_type(dv)) problems.push('another tokenizer type');
  if (Math.abs(target._nVocab - draft._nVocab) > VOCAB_SIZE_SLACK) {
    problems.push(`${draft._nVocab} tokens against the target's ${target._nVocab}`);
  }
  for (const [what, fn] of [['BOS', L.llama_vocab_bos], ['EOS', L.llama_vocab_eos]]) {
    if (fn(tv) !== fn(dv)) problems.push(`${what} token ${fn(dv)} against the target's ${fn(tv)}`);
  }
  if (L.llama_vocab_get_add_bos(tv) !== L.llama_vocab_get_add_bos(dv)) problems.push('a different add-BOS setting');
  if (!problems.length) {
    const text = L.llama_vocab_get_text;
    const n = Math.min(target._nVocab, draft._nVocab);
    for (let tok = 0; tok < n; tok++) {
      const a = text(tv, tok);
      const b = text(dv, tok);
      if (a !== b) {
        problems.push(`token ${tok} is ${JSON.stringify(b)} against the target's ${JSON.stringify(a)}`);
        break;
      }
    }
  }
  if (problems.length) {
    throw new RangeError(`the draft model's vocabulary is not the target model's: ${problems.join('; ')}`);
  }
}

/** The tokens after the last earlier occurrence of `history`'s final k-gram, for k = n .. nMin. */
function lookup(history, n, nMin, limit) {
  const len = history.length;
  if (limit <= 0 || len < nMin + 1) return [];
  for (let k = Math.min(n, len - 1); k >= nMin; k--) {
    // the latest start i < len - k whose k tokens equal the last k
    for (let i = len - k - 1; i >= 0; i--) {
      let j = 0;
      while (j < k && history[i + j] === history[len - k + j]) j++;
      if (j === k) return Array.from(history.slice(i + k, i + k + limit));
    }
  }
  return [];
}

class LookupDrafter {
  constructor(spec) {
    this.spec = spec;
    this.draftMax = spec.draftMax;
  }

  draft(histories, room) {
    const out = new Map();
    for (const [seq, h] of histories) {
      out.set(seq, lookup(h, this.spec.n, this.spec.nMin, Math.min(room.get(seq), this.draftMax)));
    }
    return out;
  }

  close() {}
}

/** A draft model's own context, with one sequence per target sequence, kept in step with them. */
class ModelDrafter {
  constructor(spec, target, nSeq) {
    const { JsContext } = require('./context'); // (context.js requires this module)
    this.spec = spec;
    this.draftMax = spec.draftMax;
    this.ctx = new JsContext(spec.model, { nCtx: target.nCtx, nBatch: target.nBatch, nThreads: target.nThreads,
      nSeqMax: nSeq });
    this._cached = new Map(); // what the draft cache holds, per sequence
    this._nVocab = Math.min(target.model._nVocab, spec.model._nVocab);
  }

  close() { this.ctx.close(); }

  /** Catch each sequence's draft cache up with its history, then draft its greedy tokens. */
  draft(histories, room) {
    const L = lib();
    const ctx = this.ctx._acquire();
    const mem = this.ctx._mem;
    const todo = new Map();
    for (const [seq, history] of histories) {
      if (!this._cached.has(seq)) this._cached.set(seq, []);
      const cached = this._cached.get(seq);
      let common = 0;
      const limit = Math.min(cached.length, history.length - 1);
      while (common < limit && cached[common] === history[common]) common++;
      if (common < cached.length) {
        if (!L.llama_memory_seq_rm(mem, seq, common, -1)) {
          L.llama_memory_seq_rm(mem, seq, -1, -1);
          common = 0;
        }
        cached.length = common;
      }
      todo.set(seq, Array.from(history.slice(common)));
    }
    const drafts = new Map([...histories.keys()].map((s) => [s, []]));
    let out = this._decode(ctx, todo);
    const pMin = this.spec.pMin;
    while (out.size) {
      const next = new Map();
      for (const [seq, idx] of out) {
        const row = this._row(ctx, idx);
        let tok = 0;
        for (let i = 1; i < row.length; i++) if (row[i] > row[tok]) tok = i;
        if (tok >= this._nVocab || (pMin > 0 && topProbability(row, tok) < pMin)) continue;
        const d = drafts.get(seq);
        d.push(tok);
        if (d.length < Math.min(room.get(seq), this.draftMax)) next.set(seq, [tok]);
      }
      out = next.size ? this._decode(ctx, next) : new Map();
    }
    return drafts;
  }

  /** Decode each sequence's tokens after its cache; the batch index of each one's last token in the final decode. */
  _decode(ctx, todo) {
    const L = lib();
    const batch = this.ctx._batch;
    const left = new Map([...todo].filter(([, t]) => t.length).sort((a, b) => a[0] - b[0]));
    let out = new Map();
    while (left.size) {
      let n = 0;
      out = new Map();
      for (const [seq, toks] of left) {
        const k = Math.min(toks.length, batch.capacity - n);
        if (k <= 0) break;
        const cached = this._cached.get(seq);
        for (let i = 0; i < k; i++) {
          batch.token[n + i] = toks[i];
          batch.pos[n + i] = cached.length + i;
          batch.seq[n + i] = seq;
          batch.logits[n + i] = 0;
        }
        if (k === toks.length) {
          batch.logits[n + k - 1] = 1;
          out.set(seq, n + k - 1);
        }
        cached.push(...toks.splice(0, k));
        n += k;
      }
      for (const [seq, toks] of [...left]) if (!toks.length) left.delete(seq);
      batch.struct.n_tokens = n;
      const rc = L.llama_decode(ctx, batch.struct);
      if (rc !== 0) {
        for (const seq of todo.keys()) { // the draft cache no longer matches: start those sequences over
          L.llama_memory_seq_rm(this.ctx._mem, seq, -1, -1);
          this._cached.delete(seq);
        }
        throw new Error(`the draft model's decode failed with status ${rc}: ${_lib.takeErrors() || 'see the log'}`);
      }
    }
    return out;
  }

  _row(ctx, idx) {
    const { logitRows } = require('./_sequence');
    if (!this._rows) this._rows = logitRows(ctx, this.spec.model._nVocab, new Map());
    return this._rows(idx);
  }
}

/** softmax(row)[top], without forming the whole distribution. */
function topProbability(row, top) {
  const m = row[top];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - m);
  return 1 / sum;
}

module.exports = { DraftModel, PromptLookup, checkDraft, checkVocabularies, lookup, MAX_DRAFT };
