'use strict';
// The koffi mirror of llama.h is checked against the pinned header, as
// tests/test_abi.py checks the ctypes one: a C probe compiled against llama.h
// prints sizeof/offsetof of every field of every mirrored struct, and each
// declared function is compared with the header's prototype (argument count
// and coarse kind of each argument).  Python and Node declare the same functions.
const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const koffi = require('koffi');
const L = require('../lib/_lib');
const { GGML_TYPE_COUNT } = require('../lib/_gguf');
const { ROOT, LLAMA_SRC, python } = require('./helpers/models');

function prototypes(file = path.join(LLAMA_SRC, 'include', 'llama.h'), api = 'LLAMA_API', prefix = 'llama_') {
  let header = fs.readFileSync(file, 'utf8');
  header = header.replace(/\/\/[^\n]*/g, '').replace(/\/\*[\s\S]*?\*\//g, '');
  const protos = {};
  const re = new RegExp(`${api}\\s+([^;{]*?)\\b(${prefix}\\w+)\\s*\\(([^;{]*?)\\)\\s*[;,]`, 'g');
  for (const m of header.matchAll(re)) {
    const args = m[3].split(/\s+/).join(' ').trim();
    protos[m[2]] = args === '' || args === 'void' ? [] : args.split(',').map((a) => a.trim());
  }
  return protos;
}

function kindOfC(decl) {
  decl = decl.replace(/const /g, '').trim();
  const first = decl.split(/\s+/)[0];
  if (decl.includes('*') || decl.includes('(') || decl.startsWith('llama_memory_t') || decl.includes('_callback')
      || (decl.startsWith('ggml_') && first.endsWith('_t'))) return 'pointer';
  if (decl.startsWith('struct ') || first === 'llama_batch') return `struct:${decl.replace('struct ', '').split(/\s+/)[0]}`;
  if (first === 'float' || first === 'double') return 'float';
  if (first === 'bool') return 'bool';
  return 'int';
}

function kindOfKoffi(t) {
  if (t.includes('*')) return 'pointer';
  if (L.STRUCTS[t]) return `struct:${t}`;
  if (t === 'float' || t === 'double') return 'float';
  if (t === 'bool') return 'bool';
  return 'int';
}

const GGML_INCLUDE = path.join(LLAMA_SRC, 'ggml', 'include');
const HEADERS = [ // each declaration table and the header it mirrors
  [L.FUNCTIONS, path.join(LLAMA_SRC, 'include', 'llama.h'), 'LLAMA_API', 'llama_'],
  [L.GGML_FUNCTIONS, path.join(GGML_INCLUDE, 'ggml-backend.h'), 'GGML_API', 'ggml_'],
  [L.RPC_FUNCTIONS, path.join(GGML_INCLUDE, 'ggml-rpc.h'), 'GGML_BACKEND_API', 'ggml_'],
];

for (const [table, file, api, prefix] of HEADERS) test(`declared functions match ${path.basename(file)}`, () => {
  const protos = prototypes(file, api, prefix);
  const problems = [];
  for (const [name, [, params]] of Object.entries(table)) {
    if (!protos[name]) {
      problems.push(`${name}: not in ${path.basename(file)}`);
      continue;
    }
    if (protos[name].length !== params.length) {
      problems.push(`${name}: header has ${protos[name].length} parameters, binding declares ${params.length}`);
      continue;
    }
    params.forEach((p, i) => {
      if (kindOfC(protos[name][i]) !== kindOfKoffi(p)) {
        problems.push(`${name} parameter ${i} (${protos[name][i]}): header ${kindOfC(protos[name][i])}, binding ${kindOfKoffi(p)}`);
      }
    });
  }
  assert.deepEqual(problems, []);
});

test('Python and Node declare the same functions and structs', () => {
  const out = execFileSync(python(), ['-c', 'import json, mullama._lib as L; '
    + 'print(json.dumps([sorted(L.declared_functions()), {k.split()[-1]: [f for f, _ in v._fields_] '
    + 'for k, v in L.MIRRORED_STRUCTS.items()}, sorted(L.declared_ggml_functions()), sorted(L.declared_rpc_functions())]))'], { encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT } });
  const [pyFunctions, pyStructs, pyGgml, pyRpc] = JSON.parse(out);
  assert.deepEqual(Object.keys(L.FUNCTIONS).sort(), pyFunctions);
  assert.deepEqual(Object.keys(L.GGML_FUNCTIONS).sort(), pyGgml);
  assert.deepEqual(Object.keys(L.RPC_FUNCTIONS).sort(), pyRpc);
  assert.deepEqual(Object.fromEntries(Object.entries(L.STRUCTS).map(([k, v]) => [k, Object.keys(v)])), pyStructs);
});

test('struct layouts match the header', () => {
  const lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "llama.h"', '#include "mtmd.h"',
    '#include "mtmd-helper.h"', 'int main(void) {'];
  for (const [name, fields] of Object.entries(L.STRUCTS)) {
    lines.push(`printf("%s size %zu\\n", "${name}", sizeof(struct ${name}));`);
    for (const f of Object.keys(fields)) lines.push(`printf("%s.%s %zu\\n", "${name}", "${f}", offsetof(struct ${name}, ${f}));`);
  }
  lines.push('return 0;', '}');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-abi-'));
  try {
    fs.writeFileSync(path.join(dir, 'probe.c'), lines.join('\n'));
    execFileSync(process.env.CC || 'cc', ['-o', path.join(dir, 'probe'), path.join(dir, 'probe.c'),
      `-I${path.join(LLAMA_SRC, 'include')}`, `-I${path.join(LLAMA_SRC, 'ggml', 'include')}`,
      `-I${path.join(LLAMA_SRC, 'tools', 'mtmd')}`]);
    const seen = Object.fromEntries(execFileSync(path.join(dir, 'probe'), { encoding: 'utf8' }).trim().split('\n')
      .map((l) => [l.slice(0, l.lastIndexOf(' ')), Number(l.slice(l.lastIndexOf(' ') + 1))]));
    const mismatches = [];
    for (const [name, fields] of Object.entries(L.STRUCTS)) {
      const t = L.structTypes[name];
      if (koffi.sizeof(t) !== seen[`${name} size`]) mismatches.push(`sizeof(${name}): C ${seen[`${name} size`]}, koffi ${koffi.sizeof(t)}`);
      for (const f of Object.keys(fields)) {
        if (koffi.offsetof(t, f) !== seen[`${name}.${f}`]) {
          mismatches.push(`offsetof(${name}, ${f}): C ${seen[`${name}.${f}`]}, koffi ${koffi.offsetof(t, f)}`);
        }
      }
    }
    assert.deepEqual(mismatches, []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the GGUF reader knows every tensor type of the pinned ggml.h', () => {
  const header = fs.readFileSync(path.join(LLAMA_SRC, 'ggml', 'include', 'ggml.h'), 'utf8');
  assert.equal(Number(/GGML_TYPE_COUNT\s*=\s*(\d+)/.exec(header)[1]), GGML_TYPE_COUNT);
});

test('defaults round-trip through the mirror', () => {
  const cp = L.load().llama_context_default_params();
  assert.deepEqual([cp.n_batch, cp.n_ubatch, cp.n_seq_max], [2048, 512, 1]);
});

test('a library from another llama.cpp commit is refused with a clear error', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-lib-'));
  try {
    const real = path.dirname(L.load().path);
    for (const f of fs.readdirSync(real)) if (/\.so|\.dylib|\.dll/.test(f)) fs.copyFileSync(path.join(real, f), path.join(dir, f));
    fs.writeFileSync(path.join(dir, 'build_info.json'), JSON.stringify({ llama_cpp_commit: 'c0ffee' }));
    const run = (env) => {
      try {
        return execFileSync(process.execPath, ['-e', `require(${JSON.stringify(path.resolve(__dirname, '..'))}).version()`],
          { encoding: 'utf8', stdio: 'pipe', env: { ...process.env, ...env } });
      } catch (e) {
        return e.stderr;
      }
    };
    assert.match(run({ MULLAMA_LIB: dir }), /was built from llama.cpp c0ffee.*rebuild it/);
    assert.match(run({ MULLAMA_LIB: path.join(dir, 'nothing-here') }), /could not load libllama from \$MULLAMA_LIB[\s\S]*no such file/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
