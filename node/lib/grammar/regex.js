'use strict';
// A documented subset of regular expressions, turned into GBNF over the
// characters of a JSON string (mirrors mullama/grammar/regex.py, where the
// subset is described; the tests compare the grammars both make).  Patterns
// are read by code point, as Python reads them.

const { classChar, literal } = require('./_rules');

const MAX_CODE = 0x10FFFF;
// Characters never written raw inside a JSON string.
const JSON_NEEDS_ESCAPE = [['"', '\\"'], ['\\', '\\\\'], ['\b', '\\b'], ['\f', '\\f'], ['\n', '\\n'], ['\r', '\\r'],
  ['\t', '\\t']];
const DIGIT = [[0x30, 0x39]];
const WORD = [[0x30, 0x39], [0x41, 0x5A], [0x5F, 0x5F], [0x61, 0x7A]];
const SPACE = [[0x09, 0x0D], [0x20, 0x20]];
const PRINTABLE_ASCII = [[0x20, 0x7E]];

function normalize(ranges) {
  const out = [];
  for (const [lo, hi] of ranges.slice().sort((a, b) => a[0] - b[0] || a[1] - b[1])) {
    if (out.length && lo <= out[out.length - 1][1] + 1) {
      out[out.length - 1] = [out[out.length - 1][0], Math.max(out[out.length - 1][1], hi)];
    } else {
      out.push([lo, hi]);
    }
  }
  return out;
}

function complement(ranges, universe = null) {
  const out = [];
  for (const [ulo, uhi] of universe || [[0, MAX_CODE]]) {
    let cur = ulo;
    for (const [lo, hi] of normalize(ranges)) {
      if (hi < cur || lo > uhi) continue;
      if (lo > cur) out.push([cur, lo - 1]);
      cur = Math.max(cur, hi + 1);
    }
    if (cur <= uhi) out.push([cur, uhi]);
  }
  return out;
}

const chr = (o) => String.fromCodePoint(o);

/** GBNF for one JSON-string character whose decoded value lies in `ranges`. */
function jsonChars(ranges) {
  const raw = [];
  const escaped = new Set();
  for (const [lo, hi] of normalize(ranges)) {
    // surrogates are not characters; control characters and " \ need escapes
    raw.push(...complement([[0x00, 0x1F], [0x22, 0x22], [0x5C, 0x5C], [0xD800, 0xDFFF]], [[lo, hi]]));
    for (const [c, esc] of JSON_NEEDS_ESCAPE) if (lo <= c.codePointAt(0) && c.codePointAt(0) <= hi) escaped.add(esc);
  }
  if (!raw.length && !escaped.size) throw new Error('the pattern has a character class that matches no character');
  const alts = [];
  if (raw.length) {
    alts.push(`[${raw.map(([a, b]) => (a === b ? classChar(chr(a)) : `${classChar(chr(a))}-${classChar(chr(b))}`)).join('')}]`);
  }
  // sorted as Python sorts strings (by code point)
  for (const e of [...escaped].sort()) alts.push(literal(e));
  return alts.length === 1 ? alts[0] : `(${alts.join(' | ')})`;
}

/** Any one character of a JSON string (escapes included), for unconstrained strings. */
function anyJsonChar() {
  return jsonChars([[0, MAX_CODE]]);
}

const repr = (s) => JSON.stringify(s);

class Parser {
  constructor(pattern) {
    this.text = pattern;
    this.src = Array.from(pattern); // code points
    this.pos = 0;
  }

  error(what) {
    return new Error(`pattern ${repr(this.text)}: ${what} at offset ${this.pos} is not supported`);
  }

  peek() { return this.pos < this.src.length ? this.src[this.pos] : ''; }

  take() { return this.src[this.pos++]; }

  startsWith(s) { return this.src.slice(this.pos, this.pos + s.length).join('') === s; }

  alternation() {
    const alts = [this.sequence()];
    while (this.peek() === '|') {
      this.take();
      alts.push(this.sequence());
    }
    return alts.length === 1 ? alts[0] : `(${alts.map((a) => a || '""').join(' | ')})`;
  }

  sequence() {
    const items = [];
    while (this.pos < this.src.length && !'|)'.includes(this.peek())) {
      if (this.peek() === '$') {
        if (this.pos === this.src.length - 1) break; // the end anchor, handled by the caller
        throw this.error("'$' before the end");
      }
      if (this.peek() === '^') throw this.error("'^' after the start");
      items.push(this.quantified(this.atom()));
    }
    return items.filter(Boolean).join(' ');
  }

  quantified(atom) {
    const c = this.peek();
    let out;
    if (c === '*' || c === '+' || c === '?') {
      this.take();
      out = `(${atom})${c}`;
    } else if (c === '{' && this.looksLikeCount()) {
      this.take();
      let spec = '';
      while (this.peek() !== '}') spec += this.take();
      this.take();
      const comma = spec.indexOf(',');
      const loS = comma < 0 ? spec : spec.slice(0, comma);
      const hiS = comma < 0 ? '' : spec.slice(comma + 1);
      const lo = loS ? parseInt(loS, 10) : 0;
      if (comma < 0) {
        out = `(${atom}){${lo}}`;
      } else if (hiS.trim() === '') {
        out = `(${atom}){${lo},}`;
      } else {
        const hi = parseInt(hiS, 10);
        if (hi < lo) throw new Error(`pattern ${repr(this.text)}: {${spec}} has max below min`);
        out = `(${atom}){${lo},${hi}}`;
      }
    } else {
      return atom;
    }
    if (this.peek() === '?') this.take(); // lazy: the same language
    if ('*+{'.includes(this.peek()) && this.peek() !== '') throw this.error('a possessive or repeated quantifier');
    return out;
  }

  looksLikeCount() {
    const rest = this.src.slice(this.pos).join('');
    const end = rest.indexOf('}');
    if (end < 0) return false;
    const body = rest.slice(1, end);
    const comma = body.indexOf(',');
    const lo = (comma < 0 ? body : body.slice(0, comma)).trim();
    const hi = comma < 0 ? '' : body.slice(comma + 1).trim();
    return /^[0-9]+$/.test(lo) && (comma < 0 || hi === '' || /^[0-9]+$/.test(hi));
  }

  atom() {
    const c = this.take();
    if (c === '(') {
      if (this.startsWith('?:')) this.pos += 2;
      else if (this.peek() === '?') throw this.error("a group with '(?'");
      const inner = this.alternation();
      if (this.peek() !== ')') throw new Error(`pattern ${repr(this.text)}: missing ')'`);
      this.take();
      return inner ? `(${inner})` : '';
    }
    if (c === '[') return jsonChars(this.charClass());
    if (c === '.') return jsonChars(complement([[0x0A, 0x0A]]));
    if (c === '\\') return jsonChars(this.escape(false));
    if ('*+?'.includes(c)) throw this.error(`a quantifier ${repr(c)} with nothing before it`);
    if (c === '{' && this.looksLikeCount()) throw this.error('a count with nothing before it');
    return jsonChars([[c.codePointAt(0), c.codePointAt(0)]]);
  }

  escape(inClass) {
    if (this.pos >= this.src.length) throw new Error(`pattern ${repr(this.text)} ends with a lone backslash`);
    const c = this.take();
    const simple = { n: 0x0A, t: 0x09, r: 0x0D, f: 0x0C, v: 0x0B, 0: 0x00 };
    if (c in simple) return [[simple[c], simple[c]]];
    if (c === 'd') return DIGIT;
    if (c === 'w') return WORD;
    if (c === 's') return SPACE;
    // The negations stay within printable ASCII (see regex.py).
    if (c === 'D') return complement(DIGIT, PRINTABLE_ASCII);
    if (c === 'W') return complement(WORD, PRINTABLE_ASCII);
    if (c === 'S') return complement(SPACE, PRINTABLE_ASCII);
    if (c === 'x' || c === 'u') {
      const n = c === 'x' ? 2 : 4;
      const hex = this.src.slice(this.pos, this.pos + n).join('');
      if (hex.length !== n || !/^[0-9a-fA-F]+$/.test(hex)) {
        throw new Error(`pattern ${repr(this.text)}: \\${c} needs ${n} hex digits at offset ${this.pos}`);
      }
      this.pos += n;
      const o = parseInt(hex, 16);
      return [[o, o]];
    }
    if (c === 'b' && inClass) return [[0x08, 0x08]];
    if (/^[\p{L}\p{N}]$/u.test(c)) {
      this.pos -= 1;
      throw this.error(`the escape \\${c}`);
    }
    return [[c.codePointAt(0), c.codePointAt(0)]];
  }

  charClass() {
    const negate = this.peek() === '^';
    if (negate) this.take();
    let ranges = [];
    let first = true;
    for (;;) {
      if (this.pos >= this.src.length) throw new Error(`pattern ${repr(this.text)}: missing ']'`);
      const c = this.take();
      if (c === ']' && !first) break;
      first = false;
      let loR;
      if (c === '\\') loR = this.escape(true);
      else if (c === '[' && this.peek() === ':') throw this.error('a POSIX class [:...:]');
      else loR = [[c.codePointAt(0), c.codePointAt(0)]];
      if (this.peek() === '-' && this.pos + 1 < this.src.length && this.src[this.pos + 1] !== ']'
          && loR.length === 1 && loR[0][0] === loR[0][1]) {
        this.take();
        const d = this.take();
        const hiR = d === '\\' ? this.escape(true) : [[d.codePointAt(0), d.codePointAt(0)]];
        if (hiR.length !== 1 || hiR[0][0] !== hiR[0][1]) throw this.error('a class range ending in a class escape');
        const [a, b] = [loR[0][0], hiR[0][0]];
        if (b < a) throw new Error(`pattern ${repr(this.text)}: bad range ${chr(a)}-${chr(b)}`);
        ranges.push([a, b]);
      } else {
        ranges = ranges.concat(loR);
      }
    }
    // [^...] of the pattern: the characters outside, surrogates never included
    return negate ? complement(ranges) : ranges;
  }
}

/** A rule for the contents of a JSON string (between the quotes) whose text matches `pattern`. */
function patternToGbnf(pattern, rules, name = 'pattern') {
  if (typeof pattern !== 'string') throw new TypeError(`pattern must be a string, not ${typeof pattern}`);
  const p = new Parser(pattern);
  const src = p.src;
  const anchoredStart = src[0] === '^';
  if (anchoredStart) p.pos = 1;
  let body = p.alternation();
  if (p.pos < src.length && src[p.pos] === ')') throw new Error(`pattern ${repr(pattern)}: unbalanced ')' at offset ${p.pos}`);
  const anchoredEnd = pattern.endsWith('$') && !pattern.endsWith('\\$') && p.pos === src.length - 1;
  if (p.pos < src.length && !anchoredEnd) throw p.error(repr(src[p.pos]));
  if (pattern.includes('|') && !body.startsWith('(')) body = `(${body})`;
  const free = `(${anyJsonChar()})*`;
  const parts = (anchoredStart ? [] : [free]).concat([body || '""'], anchoredEnd ? [] : [free]);
  return rules.add(name, parts.join(' '));
}

module.exports = { anyJsonChar, patternToGbnf };
