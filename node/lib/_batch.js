'use strict';
// A reusable llama_batch over one native block that JavaScript writes through
// typed-array views (mirrors mullama/_batch.py): filling a batch is a few
// typed-array writes, and the struct passed by value to llama_decode only
// carries the block's pointers.

const koffi = require('koffi');
const { NativeHandle } = require('./_handle');

class Batch extends NativeHandle {
  /** Room for `capacity` tokens, each in exactly one sequence. */
  constructor(capacity) {
    super();
    this.capacity = capacity;
    // layout: seq_id pointers (8-byte aligned first), token, pos, n_seq_id, seq, logits
    const bytes = capacity * (8 + 4 + 4 + 4 + 4 + 1);
    const base = koffi.alloc('uint8_t', bytes);
    this._attach(base, koffi.free);
    const ab = koffi.view(base, bytes);
    let off = 0;
    const take = (Kind, n) => {
      const arr = new Kind(ab, off, n);
      const ptr = base + BigInt(off);
      off += n * Kind.BYTES_PER_ELEMENT;
      return [arr, ptr];
    };
    const [seqPtrs, seqPtrsPtr] = take(BigUint64Array, capacity);
    const [token, tokenPtr] = take(Int32Array, capacity);
    const [pos, posPtr] = take(Int32Array, capacity);
    const [nSeqId, nSeqIdPtr] = take(Int32Array, capacity);
    const [seq, seqPtr] = take(Int32Array, capacity);
    const [logits, logitsPtr] = take(Int8Array, capacity);
    for (let i = 0; i < capacity; i++) seqPtrs[i] = seqPtr + BigInt(4 * i);
    nSeqId.fill(1);
    Object.assign(this, { token, pos, seq, logits });
    this.struct = { n_tokens: 0, token: tokenPtr, embd: null, pos: posPtr, n_seq_id: nSeqIdPtr,
      seq_id: seqPtrsPtr, logits: logitsPtr };
  }

  /** One sequence's consecutive tokens from position `startPos`. */
  fill(tokens, startPos, seqId = 0, outputLast = true, outputAll = false) {
    this.ptr();
    const n = tokens.length;
    this.token.set(tokens);
    for (let i = 0; i < n; i++) this.pos[i] = startPos + i;
    this.seq.fill(seqId, 0, n);
    this.logits.fill(outputAll ? 1 : 0, 0, n);
    if (outputLast && n) this.logits[n - 1] = 1;
    this.struct.n_tokens = n;
  }

  /** Several sequences side by side, each from position 0, every token an output. */
  fillSequences(seqs) {
    this.ptr();
    let k = 0;
    seqs.forEach((s, id) => {
      this.token.set(s, k);
      for (let i = 0; i < s.length; i++) {
        this.pos[k + i] = i;
        this.seq[k + i] = id;
      }
      k += s.length;
    });
    this.logits.fill(1, 0, k);
    this.struct.n_tokens = k;
  }

  /** A single token with its output requested (the per-token path of generation). */
  setOne(token, pos, seqId = 0) {
    this.token[0] = token;
    this.pos[0] = pos;
    this.seq[0] = seqId;
    this.logits[0] = 1;
    this.struct.n_tokens = 1;
  }
}

module.exports = { Batch };
