'use strict';
// Renders a model's own Jinja chat template the way Hugging Face transformers
// does (mirrors mullama/chat_template.py).  @huggingface/jinja is the engine
// transformers.js uses; its Template constructor already applies trim_blocks and
// lstrip_blocks, drops the `{% generation %}` tags (rendering their body), and it
// supports break/continue and a `tojson` that keeps non-ASCII text.
// Two shims make its output byte-identical to Python's:
//  - newlines: jinja2 turns every \r\n and \r of the source into \n before
//    lexing (so a CRLF template still loses its trailing newline and trims
//    block lines); @huggingface/jinja only knows \n.
//  - strftime_now: the library's version names months through Intl in the
//    process's locale ("Sept" under en-GB, "März" under de-DE); Python's uses
//    the C locale ("Sep").  Template.render() refuses to redefine a global and
//    the library does not export its globals, so render() builds the whole
//    environment itself (GLOBALS below, range included).
const util = require('node:util');
const { Template, Environment, Interpreter } = require('@huggingface/jinja');

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September',
  'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const MAX_RANGE = 100000; // jinja2's sandbox refuses bigger ranges; so do we (a hostile template could exhaust memory)
const CACHE_SIZE = 32;
const cache = new Map(); // source -> Template, least recently used first

// Python's datetime.now().strftime(fmt) in the C locale, for the directives chat templates use (and glibc's
// `%-d`: no padding); others are left as written.
function strftimeNow(format) {
  const d = new Date();
  const h = d.getHours();
  const fields = {
    Y: d.getFullYear(), y: d.getFullYear() % 100, m: d.getMonth() + 1, d: d.getDate(), H: h, I: h % 12 || 12,
    M: d.getMinutes(), S: d.getSeconds(), p: h < 12 ? 'AM' : 'PM', B: MONTHS[d.getMonth()],
    b: MONTHS[d.getMonth()].slice(0, 3), A: DAYS[d.getDay()], a: DAYS[d.getDay()].slice(0, 3), '%': '%',
  };
  return String(format).replace(/%(-?)([YymdHIMSpBbAa%])/g, (_, noPad, c) =>
    typeof fields[c] === 'number' && !noPad ? String(fields[c]).padStart(2, '0') : String(fields[c]));
}

function range(start, stop, step = 1) {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new Error('range() arg 3 must not be zero');
  const n = Math.max(0, Math.ceil((stop - start) / step));
  if (n > MAX_RANGE) throw new Error(`Range too big. The sandbox blocks ranges larger than MAX_RANGE (${MAX_RANGE}).`);
  return Array.from({ length: n }, (_, i) => start + i * step);
}

const GLOBALS = {
  true: true, false: false, none: null, True: true, False: false, None: null, range,
  raise_exception: (message) => { throw new Error(message); },
  strftime_now: strftimeNow,
};

function typeName(v) {
  return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

/** [role, content] pairs or {role, content, ...extra} objects -> [{role, content, ...extra}], type-checked. */
function normalizeMessages(messages) {
  if (!Array.isArray(messages)) {
    throw new TypeError(`messages must be an array of [role, content] pairs, not ${typeName(messages)}`);
  }
  return messages.map((m, i) => {
    let role, content, extra;
    if (Array.isArray(m) && m.length === 2) {
      [role, content] = m;
    } else if (typeName(m) === 'object') {
      ({ role, content, ...extra } = m);
    } else {
      throw new TypeError(`messages[${i}] must be a [role, content] pair, not ` +
        util.inspect(m, { breakLength: Infinity }).slice(0, 60));
    }
    if (typeof role !== 'string' || typeof content !== 'string') {
      throw new TypeError(`messages[${i}]: role and content must be strings, got ${typeName(role)} and ` +
        typeName(content));
    }
    return { role, content, ...extra };
  });
}

function compile(source) {
  let template = cache.get(source);
  if (template) {
    cache.delete(source); // re-inserted below as the most recently used
  } else {
    template = new Template(source.replace(/\r\n?/g, '\n'));
    if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value);
  }
  cache.set(source, template);
  return template;
}

/** Render `source` for `messages`; template errors become Errors starting "chat template error: ". */
function render(source, messages, addGenerationPrompt, specialTokens) {
  const msgs = normalizeMessages(messages);
  try {
    const env = new Environment();
    const vars = { ...GLOBALS, ...specialTokens, messages: msgs, tools: null, documents: null,
      add_generation_prompt: addGenerationPrompt };
    for (const [name, value] of Object.entries(vars)) env.set(name, value);
    return new Interpreter(env).run(compile(source).parsed).value;
  } catch (e) {
    throw new Error(`chat template error: ${e.message}`, { cause: e });
  }
}

module.exports = { normalizeMessages, render };
