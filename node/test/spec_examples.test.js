'use strict';
// The examples of the Node.js API spec (shared/spec/node-api.md) run as
// written, as tests/test_spec_examples.py runs the Python ones: each fenced
// block is taken from under its heading, only the model paths change (the
// generation models become SmolLM2, the embedding ones MiniLM), and it runs in
// a child process of its own, with a time limit, so that a crash or a hang
// stays there.  require('mullama') resolves to this package through NODE_PATH.
// The server examples also listen on a port the OS picks, on 127.0.0.1 only,
// instead of 3000, and are always killed afterwards.  The TypeScript examples
// are compiled with tsc --strict against index.d.ts.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { once } = require('node:events');
const { spawn } = require('node:child_process');
const { smollmPath, minilmPath } = require('./helpers/models');
const { COPY_SPEC, SHARED_SPEC, example, section, sectionBlocks } = require('./helpers/spec');

const NODE_DIR = path.resolve(__dirname, '..');
const TSC = require.resolve('typescript/bin/tsc', { paths: [NODE_DIR] });
const CHILD_TIMEOUT_MS = 600_000; // a guard against hangs, not a speed requirement (a loaded 2-core box is slow)
const TEST_TIMEOUT_MS = 900_000;

/** Only the model paths change: names with 'embed' get MiniLM, the others SmolLM2; './nonexistent.gguf' stays. */
function withModels(code) {
  return code.replace(/'([^'\s]+\.gguf)'/g, (m, name) => {
    if (name.includes('nonexistent')) return m; // the error-handling example means a missing file
    return JSON.stringify(name.includes('embed') ? minilmPath() : smollmPath());
  });
}

/** `code` with the one occurrence of `from` replaced (a spec change that breaks this fails loudly). */
function replaceOnce(code, from, to) {
  const n = code.split(from).length - 1;
  assert.equal(n, 1, `expected exactly one ${JSON.stringify(from)} in the example, found ${n}`);
  return code.replace(from, () => to);
}

// -- child processes --------------------------------------------------------------------------

let tmpRoot;
let nodePath;
let preload;
test.before(() => {
  tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-spec-'));
  const modules = path.join(tmpRoot, 'modules');
  fs.mkdirSync(modules);
  fs.symlinkSync(NODE_DIR, path.join(modules, 'mullama'), 'junction'); // require('mullama') -> this package
  // express and fastify are devDependencies of this package.
  nodePath = [modules, path.join(NODE_DIR, 'node_modules')].join(path.delimiter);
  // Loaded into the server examples: tells this process where each server listens.
  preload = path.join(tmpRoot, 'report-listen.js');
  fs.writeFileSync(preload, `'use strict';
const net = require('node:net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function reportListen(...args) {
  this.once('listening', () => { if (process.send) process.send({ listening: this.address() }); });
  return listen.apply(this, args);
};
`);
});
test.after(() => {
  if (tmpRoot) fs.rmSync(tmpRoot, { recursive: true, force: true }); // removes the link, not the package
});

let dirCount = 0;
/** A fresh working directory for one example. */
function workdir(name) {
  const dir = path.join(tmpRoot, `${++dirCount}-${name}`);
  fs.mkdirSync(dir);
  return dir;
}

// Children still running when this process exits (a test that timed out) go with it.
const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});
function track(child) {
  live.add(child);
  child.on('exit', () => live.delete(child));
  return child;
}

function childEnv() {
  const env = { ...process.env, NODE_PATH: nodePath };
  delete env.NODE_OPTIONS; // e.g. --test flags of the parent have no business in the examples
  return env;
}

/** Run `node ...argv` in cwd, feeding `input` on stdin; resolves with its exit and output. */
function runNode(argv, { cwd, input = '', timeoutMs = CHILD_TIMEOUT_MS } = {}) {
  return new Promise((resolve, reject) => {
    const child = track(spawn(process.execPath, argv, { cwd, env: childEnv(), stdio: ['pipe', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
    child.stdin.on('error', () => {}); // the example may exit without reading all of its input
    child.stdin.end(input);
  });
}

function report(r) {
  return `exit code ${r.code}, signal ${r.signal}${r.timedOut ? ' (killed: time limit)' : ''}\n`
    + `--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

function assertExitedCleanly(r) {
  assert.ok(!r.timedOut && r.code === 0, report(r));
}

// nGpuLayers: -1 on a build without GPU offload emits this process warning; it is expected.
const GPU_WARNING = /^\(node:\d+\) MullamaWarning: nGpuLayers=-?\d+ ignored: .*$/;
const TRACE_HINT = /^\(Use `node --trace-warnings \.\.\.` to show where the warning was created\)$/;

/** stderr holds nothing but the expected GPU-offload warnings. */
function assertQuietStderr(r) {
  const rest = r.stderr.split('\n').filter((l) => l.trim() && !GPU_WARNING.test(l) && !TRACE_HINT.test(l));
  assert.deepEqual(rest, [], report(r));
}

/** Write the example to dir/name and run it there. */
async function runExample(code, name, opts = {}) {
  const cwd = opts.cwd || workdir(path.basename(name, path.extname(name)));
  fs.writeFileSync(path.join(cwd, name), code);
  return runNode([path.join(cwd, name)], { ...opts, cwd });
}

/**
 * Start the server example `code` (listening on an OS-picked port of
 * 127.0.0.1), call fn(baseUrl, output) and kill the server, whatever happens.
 */
async function withServer(code, name, fn) {
  const cwd = workdir(path.basename(name, '.js'));
  const file = path.join(cwd, name);
  fs.writeFileSync(file, code);
  const child = track(spawn(process.execPath, ['--require', preload, file],
    { cwd, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe', 'ipc'] }));
  const output = { stdout: '', stderr: '', code: null, signal: null, timedOut: false };
  child.stdout.setEncoding('utf8').on('data', (d) => { output.stdout += d; });
  child.stderr.setEncoding('utf8').on('data', (d) => { output.stderr += d; });
  const exited = once(child, 'exit').then(([code, signal]) => {
    output.code = code;
    output.signal = signal;
  });
  try {
    const address = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the server did not listen in time\n${report(output)}`)),
        CHILD_TIMEOUT_MS);
      child.on('message', (m) => {
        if (m && m.listening) {
          clearTimeout(timer);
          resolve(m.listening);
        }
      });
      exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`the server exited before listening\n${report(output)}`));
      });
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    assert.equal(address.address, '127.0.0.1', 'the server must listen on loopback only');
    assert.ok(address.port > 0);
    await fn(`http://127.0.0.1:${address.port}`, output);
  } catch (e) {
    if (e instanceof Error) e.message += `\n--- the server so far: ${report(output)}`;
    throw e;
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  }
}

/** Printed scores (4 decimals) against the reference's, within the accuracy bar of the f16 model. */
function assertScores(hits, expected) {
  hits.forEach((h, i) => assert.ok(Math.abs(h.score - expected[i]) <= 2e-3,
    `score of ${JSON.stringify(h.text)}: ${h.score}, expected ${expected[i]}`));
}

async function post(url, body) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(CHILD_TIMEOUT_MS), // a guard against a hung server
  });
  return { status: res.status, type: res.headers.get('content-type') || '', text: await res.text() };
}

function parseJson(res, what) {
  try {
    return JSON.parse(res.text);
  } catch {
    assert.fail(`${what}: not JSON (status ${res.status}): ${res.text.slice(0, 500)}`);
  }
}

/** Compile `files` (name -> source) in dir with tsc --strict against index.d.ts; returns the tsc run. */
async function tsc(dir, files, { emit, paths = {}, lib = [] }) {
  for (const [name, source] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), source);
  const config = {
    compilerOptions: {
      strict: true,
      target: 'ES2022',
      module: 'commonjs',
      lib: ['ES2022', 'ESNext.Disposable', ...lib],
      types: ['node'],
      typeRoots: [path.join(NODE_DIR, 'node_modules', '@types')],
      esModuleInterop: true,
      skipLibCheck: true, // index.d.ts itself is checked with node/tsconfig.json
      paths: { mullama: [path.join(NODE_DIR, 'index.d.ts')], ...paths },
      ...(emit ? { outDir: path.join(dir, 'out'), rootDir: dir, noEmitOnError: true } : { noEmit: true }),
    },
    files: Object.keys(files),
  };
  fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify(config, null, 2));
  return runNode([TSC, '--project', path.join(dir, 'tsconfig.json'), '--strict', '--pretty', 'false'], { cwd: dir });
}

// -- the tests --------------------------------------------------------------------------------

const slow = { timeout: TEST_TIMEOUT_MS };

test('the spec copy is current', () => {
  if (fs.existsSync(SHARED_SPEC)) {
    assert.equal(fs.readFileSync(COPY_SPEC, 'utf8'), fs.readFileSync(SHARED_SPEC, 'utf8'),
      'tests/data/spec/node-api.md is out of date: copy shared/spec/node-api.md over it');
  }
});

// The headings whose examples run (or are type-checked) below.
const COVERED = ['Quick Start', 'Streaming Generation', 'Embeddings and RAG', 'Chat with Templates',
  'Express.js Server with Streaming SSE', 'Fastify Server', 'Next.js API Route',
  'Worker Threads for Non-Blocking Generation', 'Complete Production Chatbot', 'Complete RAG Example',
  'Error Handling', 'Memory Management', 'TypeScript Full Example'];

test('every example of the Examples section has a test here', () => {
  const isCode = (b) => b.lang === 'javascript' || b.lang === 'typescript';
  const examples = section('Examples').slice(1).filter((s) => s.blocks.some(isCode));
  assert.ok(examples.length >= 9);
  for (const s of examples) {
    assert.ok(COVERED.includes(s.title), `no test for the spec example ${JSON.stringify(s.title)}`);
  }
  for (const title of COVERED) assert.ok(sectionBlocks(title).length > 0, `no code under ${JSON.stringify(title)}`);
});

test('Quick Start', slow, async () => {
  const r = await runExample(withModels(example('Quick Start')), 'quick-start.js');
  assertExitedCleanly(r);
  assertQuietStderr(r);
  assert.ok(r.stdout.trim(), 'the generated text is printed');
});

test('Streaming Generation', slow, async () => {
  const r = await runExample(withModels(example('Streaming Generation')), 'streaming.js');
  assertExitedCleanly(r);
  assertQuietStderr(r);
  assert.ok(r.stdout.endsWith('\n--- Done ---\n'), report(r));
  assert.ok(r.stdout.slice(0, -'\n--- Done ---\n'.length).trim(), 'the story is streamed before --- Done ---');
});

test('Embeddings and RAG', slow, async () => {
  const r = await runExample(withModels(example('Embeddings and RAG')), 'embeddings.js');
  assertExitedCleanly(r);
  assertQuietStderr(r);
  const lines = r.stdout.trimEnd().split('\n');
  assert.equal(lines[0], 'Search results:');
  const hits = lines.slice(1).map((l) => {
    const m = /^ {2}\[(-?\d\.\d{4})\] (.+)$/.exec(l);
    assert.ok(m, `unexpected result line ${JSON.stringify(l)}`);
    return { score: Number(m[1]), text: m[2] };
  });
  // all-MiniLM-L6-v2 in transformers (mean pooling, normalized, as sentence-transformers
  // runs it) ranks the web framework just above the container documents.
  assert.deepEqual(hits.map((h) => h.text), [
    'Express.js is a minimal web framework for Node.js.',
    'Kubernetes orchestrates containerized applications at scale.',
    'Docker containers package applications with their dependencies.',
  ]);
  assertScores(hits, [0.3116, 0.3013, 0.2749]);
});

test('Chat with Templates', slow, async () => {
  const r = await runExample(withModels(example('Chat with Templates')), 'chat.js');
  assertExitedCleanly(r);
  assertQuietStderr(r);
  const answers = r.stdout.split(/^Assistant: /m);
  assert.equal(answers.length, 3, report(r));
  assert.equal(answers[0], '');
  assert.ok(answers[1].trim() && answers[2].trim(), 'both turns are answered');
});

test('Express.js Server with Streaming SSE', slow, async () => {
  let code = withModels(example('Express.js Server with Streaming SSE'));
  code = replaceOnce(code, 'app.listen(3000,', "app.listen(0, '127.0.0.1',");
  await withServer(code, 'express-server.js', async (base, output) => {
    const gen = await post(`${base}/api/generate`, { prompt: 'Once upon a time' });
    assert.equal(gen.status, 200, gen.text);
    const { text } = parseJson(gen, '/api/generate');
    assert.equal(typeof text, 'string');
    assert.ok(text.trim(), 'generated text');

    const stream = await post(`${base}/api/generate/stream`, { prompt: 'The capital of France is', maxTokens: 20 });
    assert.equal(stream.status, 200, stream.text);
    assert.match(stream.type, /^text\/event-stream/);
    const events = stream.text.split('\n\n');
    assert.equal(events.pop(), '', 'every event ends with a blank line');
    assert.equal(events.pop(), 'data: [DONE]');
    assert.ok(events.length >= 1 && events.length <= 20, `${events.length} token events for maxTokens 20`);
    const tokens = events.map((e) => {
      assert.match(e, /^data: \{.*\}$/s);
      const { token } = JSON.parse(e.slice('data: '.length));
      assert.equal(typeof token, 'string');
      return token;
    });
    assert.ok(tokens.join('').trim(), 'streamed text');

    const texts = ['Hello world', 'Kubernetes orchestrates containers.'];
    const emb = await post(`${base}/api/embed`, { texts });
    assert.equal(emb.status, 200, emb.text);
    const { embeddings } = parseJson(emb, '/api/embed');
    assert.equal(embeddings.length, texts.length);
    for (const e of embeddings) {
      assert.equal(e.length, 576); // SmolLM2-135M's nEmbd: the example embeds with its one model
      assert.ok(e.every(Number.isFinite));
      assert.ok(Math.abs(Math.hypot(...e) - 1) < 1e-3, 'normalized');
    }
    assert.notDeepEqual(embeddings[0], embeddings[1]);
    assert.match(output.stdout, /Server running on port /); // the example's own text: it says 3000
    assertQuietStderr(output);
  });
});

test('Fastify Server', slow, async () => {
  let code = withModels(example('Fastify Server'));
  code = replaceOnce(code, 'fastify.listen({ port: 3000 })', "fastify.listen({ port: 0, host: '127.0.0.1' })");
  await withServer(code, 'fastify-server.js', async (base, output) => {
    const gen = await post(`${base}/generate`, { prompt: 'Once upon a time' });
    assert.equal(gen.status, 200, gen.text);
    const { text } = parseJson(gen, '/generate');
    assert.equal(typeof text, 'string');
    assert.ok(text.trim(), 'generated text');
    const bad = await post(`${base}/generate`, { maxTokens: 5 });
    assert.equal(bad.status, 400, 'the schema requires a prompt');
    assert.match(parseJson(bad, '/generate without prompt').message, /prompt/);
    assert.match(output.stdout, /Server listening at http:\/\/127\.0\.0\.1:\d+/); // logger: true
    assertQuietStderr(output);
  });
});

test('Worker Threads for Non-Blocking Generation', slow, async () => {
  const dir = workdir('worker-threads');
  const worker = example('Worker Threads for Non-Blocking Generation', 0);
  const main = example('Worker Threads for Non-Blocking Generation', 1);
  // Each block names its file in its first line: '// worker.js', '// main.js'.
  const nameOf = (code) => /^\/\/ (\S+\.js)\n/.exec(code)[1];
  assert.equal(nameOf(worker), 'worker.js'); // main.js starts it as new Worker('./worker.js'), from the cwd
  fs.writeFileSync(path.join(dir, nameOf(worker)), withModels(worker));
  const r = await runExample(withModels(main), nameOf(main), { cwd: dir });
  assertExitedCleanly(r);
  assertQuietStderr(r);
  assert.ok(r.stdout.trim(), 'the worker\'s text is printed');
});

test('Complete Production Chatbot', slow, async () => {
  const input = ['Hello', '/reset', 'What is 2+2?', '/quit', 'never read', ''].join('\n');
  const r = await runExample(withModels(example('Complete Production Chatbot')), 'chatbot.js', { input });
  assertExitedCleanly(r);
  assertQuietStderr(r);
  const out = r.stdout;
  assert.match(out, /^Model: \S/m);
  assert.match(out, /^Architecture: llama$/m);
  assert.match(out, /^GPU: (enabled|CPU only)$/m);
  assert.match(out, /^Context: 4096 tokens$/m);
  assert.equal(out.split('\nYou: ').length - 1, 4, `one prompt per line up to /quit\n${out}`);
  const answers = out.split('\nAssistant: ').slice(1).map((a) => a.split('\nYou: ')[0]);
  assert.equal(answers.length, 2, `answers to 'Hello' and 'What is 2+2?' only\n${out}`);
  assert.ok(answers.every((a) => a.trim()), 'non-empty answers');
  const reset = out.indexOf('[Conversation reset]');
  assert.ok(reset > out.indexOf('\nAssistant: ') && reset < out.lastIndexOf('\nAssistant: '), out);
});

test('Complete RAG Example', slow, async () => {
  const r = await runExample(withModels(example('Complete RAG Example')), 'rag.js');
  assertExitedCleanly(r);
  assertQuietStderr(r);
  const out = r.stdout;
  assert.match(out, /^Indexed 6 documents \(total: 6\)$/m);
  const m = /^Answer: ([\s\S]*)\n\nSources:\n((?: {2}\[.*\n){3})$/.exec(out.slice(out.indexOf('Answer: ')));
  assert.ok(m, out);
  assert.ok(m[1].trim(), 'an answer');
  const sources = m[2].trimEnd().split('\n').map((l) => {
    const s = /^ {2}\[(-?\d\.\d{4})\] (.+)$/.exec(l);
    assert.ok(s, `unexpected source line ${JSON.stringify(l)}`);
    return { score: Number(s[1]), text: s[2] };
  });
  // The ranking and scores of all-MiniLM-L6-v2 in transformers (see 'Embeddings and RAG').
  assert.deepEqual(sources.map((s) => s.text), [
    'The Node.js bindings use napi-rs for zero-overhead native integration.',
    'Mullama is a Rust library for running LLMs locally with native performance.',
    'Mullama supports GGUF model format and can offload layers to GPU.',
  ]);
  assertScores(sources, [0.4920, 0.3713, 0.2888]);
});

test('Error Handling', slow, async () => {
  const r = await runExample(withModels(example('Error Handling')), 'errors.js');
  assertExitedCleanly(r);
  const err = r.stderr;
  assert.match(err, /^Model loading failed: Failed to load model: .*\.\/nonexistent\.gguf$/m);
  assert.match(err, /^Generation failed: \S.*$/m);
  assert.match(err, /^Embedding failed: \S.*$/m);
  assert.equal(r.stdout, '');
});

test('Memory Management', slow, async () => {
  // The example defines handleRequest without calling it: the harness below calls it.
  const harness = `
// -- test harness, not part of the spec example --
console.log(JSON.stringify([handleRequest('Once upon a time'), handleRequest('The weather today is')]));
`;
  const r = await runExample(withModels(example('Memory Management')) + harness, 'memory.js');
  assertExitedCleanly(r); // backendFree() at exit included
  assertQuietStderr(r);
  const replies = JSON.parse(r.stdout);
  assert.equal(replies.length, 2);
  assert.ok(replies.every((t) => typeof t === 'string' && t.trim()), r.stdout);
});

test('TypeScript Full Example (tsc --strict, then run)', slow, async () => {
  const dir = workdir('typescript');
  const compiled = await tsc(dir, { 'example.ts': withModels(example('TypeScript Full Example', 0, 'typescript')) },
    { emit: true });
  assertExitedCleanly(compiled);
  const r = await runNode([path.join(dir, 'out', 'example.js')], { cwd: dir });
  assertExitedCleanly(r);
  assertQuietStderr(r);
  const m = /^\[mullama v([^\]\n]+)\] ([\s\S]*)\nEmbedding dimensions: (\d+)\n$/.exec(r.stdout);
  assert.ok(m, report(r));
  assert.match(m[1], /^\d+\.\d+\.\d+/, 'version()');
  assert.ok(m[2].trim(), 'generated text');
  assert.equal(m[3], '576'); // SmolLM2-135M's nEmbd: the example embeds with its one model
});

test('Next.js API Route (type-checked only)', slow, async () => {
  // Type-checked only: next is not installed, so 'next/server' is a minimal local
  // stub of what the example uses (NextResponse.json), and the route is never served.
  // The DOM libs are those of a Next.js project (create-next-app's tsconfig has
  // "lib": ["dom", "dom.iterable", "esnext"]): there request.json() is Promise<any>;
  // with @types/node's Request alone it is Promise<unknown>, and the destructuring fails.
  const dir = workdir('nextjs');
  fs.writeFileSync(path.join(dir, 'next-server.d.ts'), `// A stand-in for next/server: what the spec example uses.
export declare class NextResponse<Body = unknown> extends Response {
  static json<JsonBody>(body: JsonBody, init?: ResponseInit): NextResponse<JsonBody>;
}
`);
  const route = withModels(example('Next.js API Route', 0, 'typescript'));
  assert.match(route, /^\/\/ app\/api\/generate\/route\.ts$/m);
  const r = await tsc(dir, { 'route.ts': route }, {
    emit: false,
    lib: ['DOM', 'DOM.Iterable'],
    paths: { 'next/server': [path.join(dir, 'next-server.d.ts')] },
  });
  assertExitedCleanly(r);
});
