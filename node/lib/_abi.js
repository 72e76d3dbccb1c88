'use strict';
// The C API of the pinned llama.cpp, read from abi.json and mapped to koffi (mirrors mullama/_abi.py).
//
// abi.json is written by scripts/gen_abi.py from llama.cpp's headers with a C parser (libclang);
// Python's mullama/_abi.py reads the same file.  Each recorded C type becomes a koffi type by a few
// rules, so that _lib.js only lists the names it uses:
// - parameters and results: `const char *` stays a string; a pointer to a struct that _lib.js
//   mirrors stays typed; a callback is its prototype's pointer; every other pointer is `void *`,
//   which also takes Buffers and typed arrays (how output buffers are handed to C);
// - `const char **` and arrays of handles (`struct X **`, `void **`) keep their shape;
// - struct fields: pointers to scalars keep their type (`int32_t *`, `int32_t **`), so that
//   koffi decodes them; other pointers are `void *` (arrays of structs are filled in Buffers);
// - `enum NAME` is `int`; `struct NAME` by value is the mirrored struct.

const fs = require('node:fs');
const path = require('node:path');

// The package's copy (npm pack puts it in data/), then the source checkout's.
const CANDIDATES = [
  path.resolve(__dirname, '..', 'data', 'abi.json'),
  path.resolve(__dirname, '..', '..', 'mullama', 'abi.json'),
];

let cached = null;
/** The parsed abi.json. @internal */
function description() {
  if (cached) return cached;
  const file = CANDIDATES.find((f) => fs.existsSync(f));
  if (!file) throw new Error(`mullama: abi.json not found (looked in ${CANDIDATES.join(', ')})`);
  cached = JSON.parse(fs.readFileSync(file, 'utf8'));
  return cached;
}

const SCALARS = new Set(['bool', 'char', 'int', 'unsigned int', 'long', 'unsigned long', 'float', 'double',
  'int8_t', 'uint8_t', 'int16_t', 'uint16_t', 'int32_t', 'uint32_t', 'int64_t', 'uint64_t', 'size_t',
  'intptr_t', 'uintptr_t', 'ptrdiff_t']);

/** Maps the description's type spellings to koffi type names, given the mirrored structs. @internal */
class Mapper {
  constructor() {
    /** C struct name -> true, for the structs declared to koffi so far */
    this.structs = new Set();
  }

  /** A koffi prototype string for callback typedef `name`. */
  prototype(name) {
    const proto = description().callbacks[name];
    if (!proto) throw new Error(`abi.json has no callback ${name}`);
    const params = proto.params.map(([p, t]) => `${this.type(t)} ${p}`).join(', ');
    return `${this.type(proto.returns)} ${name}(${params})`;
  }

  /** The koffi type of a parameter or result. */
  type(spelling) {
    const t = spelling.trim();
    if (t === 'void' || SCALARS.has(t)) return t;
    if (t.startsWith('enum ')) return 'int';
    if (t.startsWith('fn ')) return `${t.slice(3)} *`;
    if (t.endsWith('*')) {
      const inner = t.slice(0, -1).trim();
      if (inner === 'const char') return 'const char *';
      if (inner === 'const char *') return 'const char **';
      if (/^(const )?(struct \w+|void) \*$/.test(inner)) return 'void **'; // an array of handles
      const bare = inner.replace(/^const /, '');
      if (bare.startsWith('struct ') && !bare.endsWith('*') && this.structs.has(bare.slice(7))) {
        return `${bare.slice(7)} *`;
      }
      return 'void *';
    }
    if (t.startsWith('struct ')) return this.byValue(t.slice(7));
    throw new Error(`abi.json: no koffi mapping for '${spelling}'`);
  }

  /** The koffi type of a struct field. */
  fieldType(spelling) {
    const m = spelling.trim().match(/^(?:const )?(.+?)\s*(\*+)$/); // 'int32_t **' -> int32_t, **
    if (m && m[1] === 'char' && m[2] === '*') return 'const char *';
    if (m && SCALARS.has(m[1])) return `${m[1]} ${m[2]}`;
    if (m) return 'void *'; // arrays of structs are filled in Buffers
    return this.type(spelling);
  }

  byValue(name) {
    if (!this.structs.has(name)) throw new Error(`struct ${name} is passed by value but not mirrored`);
    return name;
  }

  /** { field: koffi type } for struct `name`, in the header's order. */
  fields(name) {
    const s = description().structs[name];
    if (!s) throw new Error(`abi.json has no struct ${name}`);
    return Object.fromEntries(s.fields.map(([f, t]) => [f, this.fieldType(t)]));
  }

  /** [result, [parameters]] of function `name`; `overrides` replaces 'returns' or a parameter by name. */
  signature(name, overrides = {}) {
    const fn = description().functions[name];
    if (!fn) throw new Error(`${name} is not in abi.json (not in the pinned headers)`);
    const ret = 'returns' in overrides ? overrides.returns : this.type(fn.returns);
    return [ret, fn.params.map(([p, t]) => (p in overrides ? overrides[p] : this.type(t)))];
  }

  /** { name: [result, [parameters]] } for `names`. */
  table(names, overrides = {}) {
    const unknown = Object.keys(overrides).filter((n) => !names.includes(n));
    if (unknown.length) throw new Error(`overrides for functions not used: ${unknown.join(', ')}`);
    return Object.fromEntries(names.map((n) => [n, this.signature(n, overrides[n])]));
  }
}

/** The members of C enum `name` and their values. @internal */
function enumValues(name) {
  const e = description().enums[name];
  if (!e) throw new Error(`abi.json has no enum ${name}`);
  return e;
}

/** An integer #define of llama.h / mtmd.h. @internal */
function constant(name) {
  const c = description().constants[name];
  if (c === undefined) throw new Error(`abi.json has no constant ${name}`);
  return c;
}

module.exports = { description, Mapper, enumValues, constant };
