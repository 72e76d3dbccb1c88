'use strict';
// JSON Schema to GBNF: a grammar whose every sentence is JSON that validates
// against the schema (mirrors mullama/grammar/json_schema.py, which documents
// what is handled; the tests check that both give the same grammar text for
// every schema of tests/data/json_schemas.json).  An unsupported keyword
// throws an Error naming it rather than being ignored.

const { Rules, integerRange, literal } = require('./_rules');
const { anyJsonChar, patternToGbnf } = require('./regex');

const ANNOTATIONS = new Set(['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'readOnly',
  'writeOnly', 'deprecated', '$defs', 'definitions', 'contentMediaType', 'contentEncoding']);
const TYPES = ['null', 'boolean', 'integer', 'number', 'string', 'array', 'object'];
const KEYWORDS = {
  null: [],
  boolean: [],
  integer: ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'],
  number: [],
  string: ['minLength', 'maxLength', 'pattern', 'format'],
  array: ['items', 'prefixItems', 'minItems', 'maxItems'],
  object: ['properties', 'required', 'additionalProperties'],
};
const GENERAL = ['type', 'enum', 'const', 'anyOf', 'oneOf', 'allOf', '$ref'];

const WS = 'ws';
const PRIMITIVES = {
  [WS]: '| " " | "\\n" [ \\t]{0,20}',
  null: '"null"',
  boolean: '"true" | "false"',
  integral: '"0" | [1-9] [0-9]{0,15}',
  integer: '"-"? integral',
  number: '"-"? integral ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?',
  string: '"\\"" char* "\\""',
  value: 'object | array | string | number | boolean | null',
  object: '"{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* ws )? "}"',
  array: '"[" ws ( value ( ws "," ws value )* ws )? "]"',
};
const DEPENDS = { integer: ['integral'], number: ['integral'], string: ['char'],
  value: ['object', 'array', 'string', 'number', 'boolean', 'null'], object: [WS, 'string', 'value'], array: [WS, 'value'] };

const HEX = '[0-9a-fA-F]';
const FORMATS = {
  // month/day combinations that exist in every year (no 29 February), so each date is real
  date: '[0-9]{4} "-" ( ( "0" [13578] | "1" [02] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] ) | '
    + '( "0" [469] | "11" ) "-" ( "0" [1-9] | [12] [0-9] | "30" ) | '
    + '"02" "-" ( "0" [1-9] | "1" [0-9] | "2" [0-8] ) )',
  time: '( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? '
    + '( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
  uuid: `${HEX}{8} "-" ${HEX}{4} "-" ${HEX}{4} "-" ${HEX}{4} "-" ${HEX}{12}`,
};

const isObject = (x) => x !== null && typeof x === 'object' && !Array.isArray(x);
const keys = (o) => Object.keys(o);
const show = (x) => JSON.stringify(x);
const dedupe = (xs) => [...new Set(xs)];

/** JSON text as Python's json.dumps(v, ensure_ascii=False) writes it (", " and ": " separators). */
function pyDumps(v) {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error(`${v} is not JSON`);
    if (Number.isInteger(v)) return String(v);
    const s = String(v); // shortest round-trip, as Python's repr; exponents differ in form only
    return s.replace(/e([+-])(\d)$/, 'e$10$2');
  }
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(pyDumps).join(', ')}]`;
  return `{${keys(v).map((k) => `${JSON.stringify(k)}: ${pyDumps(v[k])}`).join(', ')}}`;
}

/** Deep equality of JSON values (Python's ==). */
function same(a, b) {
  return pyDumps(a) === pyDumps(b);
}

function hasType(v, t) {
  switch (t) {
    case 'null': return v === null;
    case 'boolean': return typeof v === 'boolean';
    case 'integer': return Number.isInteger(v);
    case 'number': return typeof v === 'number';
    case 'string': return typeof v === 'string';
    case 'array': return Array.isArray(v);
    case 'object': return isObject(v);
    default: return false;
  }
}

/** A (min, max) pair of counts such as minItems/maxItems, checked. */
function countBounds(schema, loKey, hiKey, where) {
  const lo = schema[loKey] ?? 0;
  const hi = schema[hiKey] ?? null;
  for (const [key, val] of [[loKey, lo], [hiKey, hi]]) {
    if (val !== null && !(Number.isInteger(val) && val >= 0)) {
      throw new Error(`${where}: ${key} must be a non-negative integer, not ${show(val)}`);
    }
  }
  if (hi !== null && hi < lo) throw new Error(`${where}: ${hiKey} ${hi} is below ${loKey} ${lo}`);
  return [lo, hi];
}

class Converter {
  constructor(rootSchema) {
    this.root = rootSchema;
    this.rules = new Rules();
    this.refs = new Map(); // "#/..." -> rule name
  }

  prim(name) {
    if (!this.rules.has(name)) {
      this.rules.add(name, name === 'char' ? anyJsonChar() : PRIMITIVES[name]);
      for (const dep of DEPENDS[name] || []) this.prim(dep);
    }
    return name;
  }

  visit(schema, name, where) {
    if (schema === true || (isObject(schema) && keys(schema).length === 0)) return this.prim('value');
    if (schema === false) throw new Error(`${where}: the schema false admits no value`);
    if (!isObject(schema)) throw new Error(`${where}: a schema must be an object or a boolean, not ${show(schema)}`);
    if ('$ref' in schema) {
      const others = keys(schema).filter((k) => k !== '$ref' && !ANNOTATIONS.has(k)).sort();
      if (others.length) throw new Error(`${where}: keywords beside $ref are not supported (${others.join(', ')})`);
      return this.ref(schema.$ref, where);
    }
    if ('allOf' in schema) return this.visit(this.mergeAllOf(schema, where), name, where);
    if ('anyOf' in schema || 'oneOf' in schema) return this.alternatives(schema, name, where);
    if ('const' in schema || 'enum' in schema) return this.literals(schema, name, where);
    let types = schema.type ?? this.impliedTypes(schema);
    if (typeof types === 'string') types = [types];
    if (!Array.isArray(types) || !types.length || !types.every((t) => typeof t === 'string')) {
      throw new Error(`${where}: type must be a type name or a list of them, not ${show(types)}`);
    }
    for (const t of types) if (!TYPES.includes(t)) throw new Error(`${where}: unknown type ${show(t)}`);
    const allowed = new Set([...GENERAL, ...ANNOTATIONS, ...types.flatMap((t) => KEYWORDS[t])]);
    const unknown = keys(schema).filter((k) => !allowed.has(k)).sort();
    if (unknown.length) {
      throw new Error(`${where}: unsupported keyword ${show(unknown[0])}`
        + (schema.type !== undefined && schema.type !== null ? ` for type ${types.join('/')}` : ''));
    }
    if (types.includes('number')) {
      const numeric = KEYWORDS.integer.filter((k) => k in schema).sort();
      if (numeric.length) {
        throw new Error(`${where}: unsupported keyword ${show(numeric[0])} for type number (bounds are supported on integers)`);
      }
    }
    const unique = dedupe(types);
    const alts = unique.map((t) => this.typed(t, schema, types.length === 1 ? name : `${name}-${t}`, where));
    return alts.length === 1 ? alts[0] : this.rules.add(name, alts.join(' | '));
  }

  impliedTypes(schema) {
    const found = TYPES.filter((t) => KEYWORDS[t].some((k) => k in schema));
    return found.length ? found : TYPES.slice();
  }

  typed(t, schema, name, where) {
    if (t === 'null' || t === 'boolean') return this.prim(t);
    if (t === 'number') return this.prim('number');
    if (t === 'integer') return this.integer(schema, name, where);
    if (t === 'string') return this.string(schema, name, where);
    if (t === 'array') return this.array(schema, name, where);
    return this.object(schema, name, where);
  }

  integer(schema, name, where) {
    let lo = null;
    let hi = null;
    for (const [key, isLo, exclusive] of [['minimum', true, false], ['exclusiveMinimum', true, true],
      ['maximum', false, false], ['exclusiveMaximum', false, true]]) {
      if (!(key in schema)) continue;
      const val = schema[key];
      if (typeof val !== 'number' || !Number.isFinite(val)) throw new Error(`${where}: ${key} must be a number, not ${show(val)}`);
      if (isLo) {
        const b = exclusive ? Math.floor(val) + 1 : Math.ceil(val);
        lo = lo === null ? b : Math.max(lo, b);
      } else {
        const b = exclusive ? Math.ceil(val) - 1 : Math.floor(val);
        hi = hi === null ? b : Math.min(hi, b);
      }
    }
    if (lo === null && hi === null) return this.prim('integer');
    return this.rules.add(name, integerRange(lo, hi));
  }

  string(schema, name, where) {
    const [lo, hi] = countBounds(schema, 'minLength', 'maxLength', where);
    const pattern = schema.pattern ?? null;
    const fmt = schema.format ?? null;
    const lengths = 'minLength' in schema || 'maxLength' in schema;
    if ((pattern !== null) + (fmt !== null) + lengths > 1) {
      throw new Error(`${where}: combining pattern, format and minLength/maxLength is not supported`);
    }
    if (pattern !== null) {
      const body = patternToGbnf(pattern, this.rules, `${name}-pattern`);
      return this.rules.add(name, `"\\"" ${body} "\\""`);
    }
    if (fmt !== null) {
      let inner;
      if (fmt === 'date-time') {
        inner = `${this.rules.add('date', FORMATS.date)} "T" ${this.rules.add('time', FORMATS.time)}`;
      } else if (Object.hasOwn(FORMATS, fmt)) {
        inner = this.rules.add(fmt, FORMATS[fmt]);
      } else {
        throw new Error(`${where}: unsupported string format ${show(fmt)} (supported: date, time, date-time, uuid)`);
      }
      return this.rules.add(`${fmt}-string`, `"\\"" ${inner} "\\""`);
    }
    if (!lengths) return this.prim('string');
    this.prim('char');
    const count = hi === lo ? `{${lo}}` : hi === null ? `{${lo},}` : `{${lo},${hi}}`;
    return this.rules.add(name, `"\\"" char${count} "\\""`);
  }

  array(schema, name, where) {
    const [lo, hi] = countBounds(schema, 'minItems', 'maxItems', where);
    this.prim(WS);
    const sep = 'ws "," ws';
    const prefix = schema.prefixItems;
    if (prefix !== undefined && prefix !== null) {
      if (!Array.isArray(prefix)) throw new Error(`${where}: prefixItems must be a list of schemas`);
      if ('items' in schema && schema.items !== false) {
        throw new Error(`${where}: prefixItems with items other than false is not supported`);
      }
      if (prefix.length < lo || (hi !== null && hi < prefix.length) || 'minItems' in schema || 'maxItems' in schema) {
        throw new Error(`${where}: prefixItems with minItems/maxItems is not supported`);
      }
      const parts = prefix.map((s, i) => this.visit(s, `${name}-${i}`, `${where}/prefixItems/${i}`));
      const body = parts.join(` ${sep} `);
      return this.rules.add(name, parts.length ? `"[" ws ${body} ws "]"` : '"[" ws "]"');
    }
    const item = this.visit('items' in schema ? schema.items : true, `${name}-item`, `${where}/items`);
    if (hi === 0) return this.rules.add(name, '"[" ws "]"');
    let body;
    if (lo === 0) {
      const rest = hi === null ? `( ${sep} ${item} )*` : `( ${sep} ${item} ){0,${hi - 1}}`;
      body = `"[" ws ( ${item} ${rest} ws )? "]"`;
    } else {
      const rest = hi === null ? `( ${sep} ${item} ){${lo - 1},}` : `( ${sep} ${item} ){${lo - 1},${hi - 1}}`;
      body = `"[" ws ${item} ${rest} ws "]"`;
    }
    return this.rules.add(name, body);
  }

  object(schema, name, where) {
    const props = schema.properties ?? {};
    const required = schema.required ?? [];
    const extra = 'additionalProperties' in schema ? schema.additionalProperties : true;
    if (!isObject(props)) throw new Error(`${where}: properties must be an object`);
    if (!Array.isArray(required) || !required.every((r) => typeof r === 'string')) {
      throw new Error(`${where}: required must be a list of property names`);
    }
    const missing = required.filter((r) => !Object.hasOwn(props, r));
    if (missing.length && extra === false) {
      throw new Error(`${where}: required property ${show(missing[0])} is not allowed by additionalProperties false`);
    }
    if (missing.length) throw new Error(`${where}: required property ${show(missing[0])} has no schema in properties (not supported)`);
    this.prim(WS);
    if (!keys(props).length) {
      if (extra === false) return this.rules.add(name, '"{" ws "}"');
      if (extra === true || (isObject(extra) && !keys(extra).length)) return this.prim('object');
      const value = this.visit(extra, `${name}-value`, `${where}/additionalProperties`);
      const kv = this.rules.add(`${name}-kv`, `${this.prim('string')} ws ":" ws ${value}`);
      return this.rules.add(name, `"{" ws ( ${kv} ( ws "," ws ${kv} )* ws )? "}"`);
    }
    // Only the declared properties, in their declared order.
    const kvs = [];
    for (const key of keys(props)) {
      const value = this.visit(props[key], `${name}-${key}`, `${where}/properties/${key}`);
      const kv = this.rules.add(`${name}-${key}-kv`, `${literal(JSON.stringify(key))} ws ":" ws ${value}`);
      kvs.push([kv, required.includes(key)]);
    }
    const body = this.members(kvs, name);
    return this.rules.add(name, body ? `"{" ws ${body} "}"` : '"{" ws "}"');
  }

  /** Members in order, required ones always present, a comma between any two, ws after the last. */
  members(kvs, name) {
    const sep = 'ws "," ws';
    const memo = new Map();
    const tail = (i, first) => {
      if (i === kvs.length) return first ? '' : 'ws';
      const key = `${i}:${first}`;
      if (memo.has(key)) return memo.get(key);
      const [kv, req] = kvs[i];
      const lead = first ? kv : `${sep} ${kv}`;
      const withIt = `${lead} ${tail(i + 1, false)}`.trim();
      let expr;
      if (req) {
        expr = withIt;
      } else {
        const without = tail(i + 1, first);
        expr = without ? `( ${withIt} | ${without} )` : `( ${withIt} )?`;
      }
      const rule = this.rules.add(`${name}-after-${i}${first ? '-first' : ''}`, expr);
      memo.set(key, rule);
      return rule;
    };
    return tail(0, true);
  }

  literals(schema, name, where) {
    let values = 'const' in schema ? [schema.const] : schema.enum;
    if (!Array.isArray(values) || !values.length) throw new Error(`${where}: enum must be a non-empty list`);
    const others = keys(schema).filter((k) => !['const', 'enum', 'type'].includes(k) && !ANNOTATIONS.has(k)).sort();
    if (others.length) throw new Error(`${where}: keywords beside enum/const are not supported (${others.join(', ')})`);
    const types = schema.type;
    if (types !== undefined && types !== null) {
      const names = typeof types === 'string' ? [types] : types;
      values = values.filter((val) => names.some((t) => hasType(val, t)));
      if (!values.length) throw new Error(`${where}: no enum/const value has the type ${show(types)}`);
    }
    return this.rules.add(name, dedupe(values.map((val) => literal(pyDumps(val)))).join(' | '));
  }

  alternatives(schema, name, where) {
    const key = 'anyOf' in schema ? 'anyOf' : 'oneOf';
    if ('anyOf' in schema && 'oneOf' in schema) throw new Error(`${where}: anyOf together with oneOf is not supported`);
    let options = schema[key];
    if (!Array.isArray(options) || !options.length) throw new Error(`${where}: ${key} must be a non-empty list of schemas`);
    const base = Object.fromEntries(Object.entries(schema).filter(([k]) => k !== key && !ANNOTATIONS.has(k)));
    if (keys(base).length) {
      // keywords beside anyOf apply to every alternative
      options = options.map((o) => (keys(base).some((k) => k !== 'type') ? { allOf: [base, o] } : { ...o, ...base }));
    }
    if (key === 'oneOf') this.checkDisjoint(options, where);
    const alts = options.map((o, i) => this.visit(o, `${name}-${i}`, `${where}/${key}/${i}`));
    return this.rules.add(name, dedupe(alts).join(' | '));
  }

  /** oneOf needs exactly one match: refuse alternatives that one value could satisfy twice. */
  checkDisjoint(options, where) {
    const kinds = options.map((o) => this.kinds(o));
    for (let i = 0; i < options.length; i++) {
      for (let j = i + 1; j < options.length; j++) {
        const shared = [...kinds[i]].filter((k) => kinds[j].has(k));
        if (!shared.length) continue;
        if (shared.length === 1 && shared[0] === 'object' && this.discriminated(options[i], options[j])) continue;
        throw new Error(`${where}: oneOf alternatives ${i} and ${j} may both match one value `
          + `(${shared.sort().join('/')}); not supported (use anyOf, or a const discriminator)`);
      }
    }
  }

  resolved(schema) {
    for (let seen = 0; isObject(schema) && '$ref' in schema && seen < 32; seen++) schema = this.pointer(schema.$ref, 'oneOf');
    return schema;
  }

  kinds(schema) {
    schema = this.resolved(schema);
    if (!isObject(schema)) return new Set(TYPES);
    if ('const' in schema || 'enum' in schema) {
      const values = 'const' in schema ? [schema.const] : schema.enum || [];
      return new Set(values.map((val) => `literal:${canonical(val)}`));
    }
    const types = schema.type || this.impliedTypes(schema);
    const out = new Set(typeof types === 'string' ? [types] : types);
    if (out.has('integer')) out.add('number'); // an integer is also a number
    return out;
  }

  discriminated(a, b) {
    a = this.resolved(a);
    b = this.resolved(b);
    const pa = a.properties || {};
    const pb = b.properties || {};
    const ra = a.required || [];
    const rb = b.required || [];
    for (const key of keys(pa)) {
      if (!Object.hasOwn(pb, key) || !ra.includes(key) || !rb.includes(key)) continue;
      const ka = this.kinds(pa[key]);
      const kb = this.kinds(pb[key]);
      const all = [...ka, ...kb];
      if (all.every((k) => k.startsWith('literal:')) && ![...ka].some((k) => kb.has(k))) return true;
    }
    return false;
  }

  mergeAllOf(schema, where) {
    const parts = schema.allOf;
    if (!Array.isArray(parts) || !parts.length) throw new Error(`${where}: allOf must be a non-empty list of schemas`);
    const merged = Object.fromEntries(Object.entries(schema).filter(([k]) => k !== 'allOf'));
    const props = { ...(merged.properties || {}) };
    delete merged.properties;
    const required = [...(merged.required || [])];
    delete merged.required;
    parts.forEach((raw, i) => {
      let part = this.resolved(raw);
      if (!isObject(part)) throw new Error(`${where}/allOf/${i}: must be an object schema`);
      if ('allOf' in part) part = this.mergeAllOf(part, `${where}/allOf/${i}`);
      for (const [k, val] of Object.entries(part)) {
        if (k === 'properties') {
          for (const [pk, pv] of Object.entries(val)) {
            if (Object.hasOwn(props, pk) && !same(props[pk], pv)) {
              throw new Error(`${where}/allOf/${i}: property ${show(pk)} defined twice differently (not supported)`);
            }
            props[pk] = pv;
          }
        } else if (k === 'required') {
          for (const r of val) if (!required.includes(r)) required.push(r);
        } else if (ANNOTATIONS.has(k)) {
          continue;
        } else if (k === 'type') {
          if (val !== 'object' && !(Array.isArray(val) && val.length === 1 && val[0] === 'object')) {
            throw new Error(`${where}/allOf/${i}: allOf is supported for object schemas only`);
          }
          merged.type = 'object';
        } else if (k in merged && !same(merged[k], val)) {
          throw new Error(`${where}/allOf/${i}: ${show(k)} given twice differently (not supported)`);
        } else if (!KEYWORDS.object.includes(k)) {
          throw new Error(`${where}/allOf/${i}: allOf is supported for object schemas only (found ${show(k)})`);
        } else {
          merged[k] = val;
        }
      }
    });
    merged.type = 'object';
    if (keys(props).length) merged.properties = props;
    if (required.length) merged.required = required;
    return merged;
  }

  pointer(ref, where) {
    if (typeof ref !== 'string' || !ref.startsWith('#')) {
      throw new Error(`${where}: only local $ref ('#...') is supported, not ${show(ref)}`);
    }
    let node = this.root;
    const path = ref.slice(1);
    if (path && !path.startsWith('/')) throw new Error(`${where}: $ref ${show(ref)} is not a JSON pointer`);
    for (const raw of path ? path.split('/').slice(1) : []) {
      const part = raw.replaceAll('~1', '/').replaceAll('~0', '~');
      if (isObject(node) && Object.hasOwn(node, part)) node = node[part];
      else if (Array.isArray(node) && /^[0-9]+$/.test(part) && Number(part) < node.length) node = node[Number(part)];
      else throw new Error(`${where}: $ref ${show(ref)} points at nothing`);
    }
    return node;
  }

  ref(ref, where) {
    const target = this.pointer(ref, where);
    if (this.refs.has(ref)) return this.refs.get(ref);
    const name = this.rules.reserve(`ref-${ref.includes('/') ? ref.slice(ref.lastIndexOf('/') + 1) : 'root'}`);
    this.refs.set(ref, name);
    this.rules.set(name, this.visit(target, `${name}-body`, ref));
    return name;
  }
}

/** A key-order-independent form of a JSON value (for comparing enum literals). */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (isObject(v)) return `{${keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

/** GBNF text (start symbol root) for JSON documents valid under `schema`. */
function jsonSchemaToGbnf(schema) {
  if (!isObject(schema) && typeof schema !== 'boolean') {
    throw new TypeError(`schema must be an object (or a boolean), not ${schema === null ? 'null' : typeof schema}`);
  }
  try {
    JSON.stringify(schema);
  } catch (e) {
    throw new TypeError(`schema must be JSON data: ${e.message}`);
  }
  const conv = new Converter(schema);
  return conv.rules.text(conv.visit(schema, 'root', '#'));
}

/** GBNF text for any one JSON value. */
function anyJsonGbnf() {
  const conv = new Converter(true);
  return conv.rules.text(conv.prim('value'));
}

module.exports = { anyJsonGbnf, jsonSchemaToGbnf };
