'use strict';
// Building blocks of GBNF text: literal escaping, a rule table with stable
// names, integer ranges (mirrors mullama/grammar/_rules.py; the tests compare
// the grammars both make).

const LITERAL_ESCAPES = { '"': '\\"', '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' };
const CLASS_ESCAPES = { ']': '\\]', '[': '\\[', '\\': '\\\\', '-': '\\-', '^': '\\x5E', '\n': '\\n', '\r': '\\r',
  '\t': '\\t' };

function code(c) {
  const o = c.codePointAt(0);
  if (o < 0x20 || o === 0x7F) return `\\x${o.toString(16).toUpperCase().padStart(2, '0')}`;
  if (o >= 0xD800 && o <= 0xDFFF) {
    throw new Error(`lone surrogate U+${o.toString(16).toUpperCase().padStart(4, '0')} cannot appear in a grammar`);
  }
  return c;
}

/** `text` as a GBNF string literal (every character escaped that needs it). */
function literal(text) {
  return `"${Array.from(text, (c) => LITERAL_ESCAPES[c] || code(c)).join('')}"`;
}

/** One character as it may stand inside a GBNF [...] class. */
function classChar(c) {
  return CLASS_ESCAPES[c] || code(c);
}

function cleanName(name) {
  return name.replace(/[^a-zA-Z0-9-]+/g, '-').replace(/^-+|-+$/g, '') || 'r';
}

/** An ordered table of named rules; equal bodies share one name, clashing names get a suffix. */
class Rules {
  constructor() {
    this.bodies = new Map();
  }

  add(name, body) {
    const base = cleanName(name);
    let candidate = base;
    for (let n = 1; this.bodies.has(candidate) && this.bodies.get(candidate) !== body; n++) candidate = `${base}-${n}`;
    this.bodies.set(candidate, body);
    return candidate;
  }

  /** A fresh name whose body comes later (for recursive references). */
  reserve(name) {
    const base = cleanName(name);
    let candidate = base;
    for (let n = 1; this.bodies.has(candidate); n++) candidate = `${base}-${n}`;
    this.bodies.set(candidate, '');
    return candidate;
  }

  set(name, body) {
    this.bodies.set(name, body);
  }

  has(name) {
    return this.bodies.has(name);
  }

  text(root) {
    const lines = root !== 'root' ? [`root ::= ${root}`] : [];
    for (const [name, body] of this.bodies) lines.push(`${name} ::= ${body}`);
    return `${lines.join('\n')}\n`;
  }
}

// -- integer ranges (BigInt: the bounds reach 10^16) -----------------------------------------

const MAX_DIGITS = 16; // unbounded integers get at most this many digits (so generation ends)

function seq(a, b) {
  if (a.length === 1 && '0123456789'.includes(a)) a = `"${a}"`;
  return b ? `${a} ${b}`.trim() : a;
}

function digits(lo, hi) {
  return lo === hi ? `"${lo}"` : `[${lo}-${hi}]`;
}

function anyDigits(n) {
  return n === 0 ? '' : n === 1 ? '[0-9]' : `[0-9]{${n}}`;
}

/** Alternatives matching the digit strings from lo to hi (equal lengths, leading zeros kept). */
function sameLength(lo, hi) {
  if (!lo) return [''];
  const n = lo.length - 1;
  if (lo[0] === hi[0]) return sameLength(lo.slice(1), hi.slice(1)).map((alt) => seq(lo[0], alt));
  if (lo.slice(1) === '0'.repeat(n) && hi.slice(1) === '9'.repeat(n)) return [seq(digits(lo[0], hi[0]), anyDigits(n))];
  const out = sameLength(lo.slice(1), '9'.repeat(n)).map((alt) => seq(lo[0], alt));
  if (Number(hi[0]) - Number(lo[0]) > 1) out.push(seq(digits(String(Number(lo[0]) + 1), String(Number(hi[0]) - 1)), anyDigits(n)));
  return out.concat(sameLength('0'.repeat(n), hi.slice(1)).map((alt) => seq(hi[0], alt)));
}

const big = (x) => BigInt(x);
const maxB = (a, b) => (a > b ? a : b);
const minB = (a, b) => (a < b ? a : b);

/** A GBNF expression for the decimal integers lo..hi (hi null: no upper bound), lo >= 0 (BigInts). */
function naturalRange(lo, hi) {
  const alts = [];
  const top = hi !== null ? hi : 10n ** big(MAX_DIGITS) - 1n;
  for (let d = String(lo).length; d <= String(top).length; d++) {
    const first = d === 1 ? 0n : 10n ** big(d - 1);
    const a = maxB(lo, first);
    const b = minB(top, 10n ** big(d) - 1n);
    if (a > b) continue;
    if (hi === null && a === first && d > String(lo).length) {
      // every longer length is open: one alternative for all of them
      const rest = MAX_DIGITS - 1;
      const loLen = d - 1;
      alts.push(loLen < rest ? `[1-9] [0-9]{${loLen},${rest}}` : `[1-9] [0-9]{${rest}}`);
      break;
    }
    alts.push(...sameLength(String(a).padStart(d, '0'), String(b).padStart(d, '0')));
  }
  return alts.length === 1 ? alts[0] : `(${alts.join(' | ')})`;
}

/** A GBNF expression for the JSON integers in [lo, hi] (null: unbounded on that side). */
function integerRange(lo, hi) {
  lo = lo === null ? null : big(lo);
  hi = hi === null ? null : big(hi);
  if (lo !== null && hi !== null && lo > hi) throw new Error(`no integer satisfies minimum ${lo} and maximum ${hi}`);
  const alts = [];
  if (lo === null || lo < 0n) {
    const magLo = hi === null || hi >= 0n ? 1n : -hi;
    const magHi = lo === null ? null : -lo;
    if (magHi === null || magHi >= magLo) alts.push(`"-" ${naturalRange(magLo, magHi)}`);
  }
  if (hi === null || hi >= 0n) {
    const nlo = lo === null || lo < 0n ? 0n : lo;
    alts.push(naturalRange(nlo, hi));
  }
  return alts.length === 1 ? alts[0] : `(${alts.join(' | ')})`;
}

module.exports = { MAX_DIGITS, Rules, classChar, integerRange, literal };
