'use strict';
// Rules that are data, shared with the Python binding (mirrors mullama/_rules.py): rules.json,
// which mullama/_rules.py reads too, so that a limit or a default cannot differ between the two.
// Its names are Python's; here they are used in camelCase.

const fs = require('node:fs');
const path = require('node:path');

// The package's copy (npm pack puts it in data/), then the source checkout's.
const file = [path.resolve(__dirname, '..', 'data', 'rules.json'),
  path.resolve(__dirname, '..', '..', 'mullama', 'rules.json')].find((f) => fs.existsSync(f));
if (!file) throw new Error('mullama: rules.json not found in the package (data/) or the source checkout');
const RULES = JSON.parse(fs.readFileSync(file, 'utf8'));

/** snake_case -> camelCase */
const camel = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

const N_CTX_MAX = RULES.context.n_ctx_max;
const N_BATCH_MAX = RULES.context.n_batch_max;
const N_THREADS_MAX = RULES.context.n_threads_max;
// camelCase name -> [default, 'int' | 'float', lowest, highest], in SamplerParams' order
const SAMPLER_FIELDS = Object.fromEntries(RULES.sampler_fields.map(([n, ...rest]) => [camel(n), rest]));

module.exports = { RULES, camel, N_CTX_MAX, N_BATCH_MAX, N_THREADS_MAX, SAMPLER_FIELDS };
