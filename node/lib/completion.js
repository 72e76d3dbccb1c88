'use strict';
// What a completion returns beside its text: the tokens, why it ended, and
// their probabilities (mirrors mullama/completion.py).
//
// The log-probabilities are the model's own: a log-softmax of the raw logits
// at each position, before any sampler (temperature, top-k, penalties, a
// grammar) changes them.  That is what OpenAI reports, and what makes them
// comparable between requests that sample differently.  The chosen token's
// value is its entry in that full distribution, whichever sampler chose it.
//
// The results are frozen plain objects (typed in index.d.ts):
//   TopLogprob      { token, piece, bytes, logprob }
//   TokenLogprob    { token, piece, bytes, logprob, top: TopLogprob[] }
//   Completion      { text, tokens, finishReason, logprobs: TokenLogprob[] | null }
//   CompletionChunk { text, tokens, logprobs: TokenLogprob[] | null, finishReason: string | null }
// `piece` is the token's text (special tokens rendered; a token that is part
// of a UTF-8 character shows U+FFFD), `bytes` a Buffer of its exact bytes.

const v = require('./_validate');

const MAX_LOGPROBS = 20; // alternatives per token, as OpenAI allows

/** One of the most probable tokens at a position. */
function topLogprob(token, piece, bytes, logprob) {
  return Object.freeze({ token, piece, bytes, logprob });
}

/** A generated token, its log-probability, and the k most probable tokens at its position. */
function tokenLogprob(token, piece, bytes, logprob, top) {
  return Object.freeze({ token, piece, bytes, logprob, top: Object.freeze(top) });
}

/**
 * A whole generation: `text`, the `tokens` it sampled, and why it ended.
 * finishReason is 'stop' (an end-of-generation token or a stop string) or
 * 'length' (maxTokens).  `tokens` leaves out an end-of-generation token that
 * ended the text; a token whose text completed a stop string is in it.
 * `logprobs` has one entry per token when asked for, else null.
 */
function completion(text, tokens, finishReason, logprobs) {
  return Object.freeze({ text, tokens, finishReason, logprobs });
}

/**
 * One step of a streamed completion: the text released with one token, and
 * that token.  `text` may be empty (a token that ends inside a UTF-8
 * character, or text held back while it may begin a stop string) or hold text
 * of earlier tokens released now.  The last chunk has finishReason set (null
 * before); it may carry no token.
 */
function completionChunk(text, tokens, logprobs, finishReason = null) {
  return Object.freeze({ text, tokens, logprobs, finishReason });
}

/** options.logprobs: how many alternatives to report per token (0: no log-probabilities). */
function checkLogprobs(value) {
  return v.integer('logprobs', value, 0, MAX_LOGPROBS);
}

/** Turns a row of raw logits and the token chosen from it into a TokenLogprob. */
class LogprobReader {
  constructor(model, k) {
    this._model = model;
    this.k = k;
    this._pieces = new Map(); // token -> [piece, bytes]
    this._ids = new Int32Array(k);
    this._vals = new Float64Array(k);
  }

  _piece(token) {
    let got = this._pieces.get(token);
    if (got === undefined) {
      const raw = Buffer.from(this._model._piece(token, true)); // a copy: _piece reuses one buffer
      got = [raw.toString('utf8'), raw];
      this._pieces.set(token, got);
    }
    return got;
  }

  /** The log-softmax of `logits` at `token` and at the k largest (ties: lowest id first). */
  read(logits, token) {
    const n = logits.length;
    let m = -Infinity;
    for (let i = 0; i < n; i++) if (logits[i] > m) m = logits[i];
    let sum = 0;
    for (let i = 0; i < n; i++) sum += Math.exp(logits[i] - m);
    const lse = m + Math.log(sum);
    const top = [];
    const k = Math.min(this.k, n);
    if (k) {
      // The k largest, kept sorted while scanning ids in order: a value equal
      // to one already kept goes after it, so ties keep the lowest id first.
      const ids = this._ids;
      const vals = this._vals;
      let count = 0;
      for (let i = 0; i < n; i++) {
        const x = logits[i];
        if (count === k && !(x > vals[k - 1])) continue;
        let j = count < k ? count++ : k - 1;
        while (j > 0 && vals[j - 1] < x) {
          vals[j] = vals[j - 1];
          ids[j] = ids[j - 1];
          j--;
        }
        vals[j] = x;
        ids[j] = i;
      }
      for (let j = 0; j < count; j++) {
        const [piece, raw] = this._piece(ids[j]);
        top.push(topLogprob(ids[j], piece, Buffer.from(raw), vals[j] - lse));
      }
    }
    const [piece, raw] = this._piece(token);
    return tokenLogprob(token, piece, Buffer.from(raw), logits[token] - lse, top);
  }
}

/**
 * Wraps a sequence's sample(idx): keeps each sampled token and, when asked,
 * its log-probabilities.  At sampling it copies the row the token was sampled
 * from (the next decode overwrites it); the log-softmax and the top k are
 * computed by settle(), which the driver calls once that decode is under way,
 * so that on a GPU this host work overlaps the device's.  An end-of-generation
 * token that ends the text (`eogEnds`) is not recorded: it is not part of it.
 * `k` null: tokens only.
 */
class Recorder {
  constructor(model, k, rowsView, eogEnds) {
    this.tokens = [];
    this.logprobs = k !== null ? [] : null;
    this._reader = k !== null ? new LogprobReader(model, k) : null;
    this._view = rowsView;
    this._model = eogEnds ? model : null;
    this._rows = []; // [row copy, token]: sampled, not yet settled
  }

  wrap(sample) {
    const { tokens, _view: view, _model: model, _rows: rows } = this;
    const keepRows = this._reader !== null;
    return (idx) => {
      const tok = sample(idx);
      if (model !== null && model._pieceOrEog(tok) === null) return tok;
      tokens.push(tok);
      if (keepRows) rows.push([Float32Array.from(view(idx)), tok]);
      return tok;
    };
  }

  /** Make the entries of the tokens sampled so far (but the last, with keepLast). */
  settle(keepLast = false) {
    const rows = this._rows;
    const n = rows.length - (keepLast && rows.length ? 1 : 0);
    if (this._reader === null || this.logprobs === null || n <= 0) return;
    for (const [row, tok] of rows.splice(0, n)) this.logprobs.push(this._reader.read(row, tok));
  }
}

module.exports = {
  MAX_LOGPROBS, LogprobReader, Recorder, checkLogprobs, completion, completionChunk, tokenLogprob, topLogprob,
};
