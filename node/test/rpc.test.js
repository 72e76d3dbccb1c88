'use strict';
// Models over llama.cpp's RPC backend, against two real `python -m mullama rpc-server`
// processes on loopback (started here, always stopped); the reference is a local
// load in the same run.
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const net = require('node:net');
const { JsModel, JsContext, RPCError, devices, samplerParamsGreedy } = require('..');
const { ROOT, smollmPath, python } = require('./helpers/models');

const PROMPT = 'The capital of France is';

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

async function startServer() {
  const port = await freePort();
  const proc = spawn(python(), ['-m', 'mullama', 'rpc-server', '--port', String(port), '--threads', '1'],
    { cwd: ROOT, env: { ...process.env, PYTHONPATH: ROOT }, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  process.once('exit', () => proc.kill('SIGKILL')); // never outlive this test process
  const deadline = Date.now() + 60000;
  while (!(await canConnect(port))) {
    if (proc.exitCode !== null) throw new Error(`rpc-server exited with ${proc.exitCode}: ${err}`);
    if (Date.now() > deadline) throw new Error(`rpc-server on port ${port} did not start within 60 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { endpoint: `127.0.0.1:${port}`, proc };
}

function stop(server) {
  return new Promise((resolve) => {
    if (server.proc.exitCode !== null || server.proc.signalCode !== null) return resolve();
    server.proc.once('exit', () => resolve());
    server.proc.kill('SIGKILL');
  });
}

function greedy(model) {
  const ctx = new JsContext(model, { nCtx: 256, nThreads: 1 });
  try {
    return ctx.generate(PROMPT, 24, samplerParamsGreedy(), { ignoreEos: true });
  } finally {
    ctx.close();
  }
}

test('a model split across two RPC servers generates what a local one does', { timeout: 240000 }, async (t) => {
  const servers = [];
  t.after(() => Promise.all(servers.map(stop)));
  servers.push(await startServer(), await startServer());
  const endpoints = servers.map((s) => s.endpoint);

  const local = JsModel.load(smollmPath());
  const expected = greedy(local);
  local.close();
  assert.ok(expected.length > 0);

  const model = JsModel.load(smollmPath(), { nGpuLayers: -1, rpcServers: endpoints });
  try {
    assert.deepEqual([...model.rpcServers], endpoints);
    assert.equal(greedy(model), expected);
    const remote = devices().filter((d) => d.endpoint !== null);
    assert.deepEqual(remote.map((d) => d.endpoint).sort(), [...endpoints].sort());
    for (const d of remote) assert.ok(d.type === 'gpu' && d.memoryTotal > 0 && d.memoryFree > 0);
  } finally {
    model.close();
  }
  const split = JsModel.load(smollmPath(), { nGpuLayers: -1, rpcServers: endpoints, tensorSplit: [3, 1] });
  try {
    assert.equal(greedy(split), expected);
  } finally {
    split.close();
  }

  assert.throws(() => JsModel.load(smollmPath(), { rpcServers: endpoints, tensorSplit: [1, 1, 1] }),
    /tensorSplit has 3 entries but the model is placed on 2 device\(s\): RPC/);
  assert.throws(() => JsModel.load(smollmPath(), { rpcServers: endpoints, mainGpu: 2 }), /mainGpu=2 is out of range/);

  // a server killed between requests: an error naming it, not an abort
  const again = JsModel.load(smollmPath(), { nGpuLayers: -1, rpcServers: [endpoints[1]] });
  const ctx = new JsContext(again, { nCtx: 256, nThreads: 1 });
  assert.ok(ctx.generate(PROMPT, 4, samplerParamsGreedy()));
  await stop(servers[1]);
  await new Promise((r) => setTimeout(r, 200));
  assert.throws(() => ctx.generate(PROMPT, 4, samplerParamsGreedy()),
    (e) => e instanceof RPCError && e.message.includes(`RPC server ${endpoints[1]} closed the connection`));
  ctx.close(); // left allocated: freeing it would make ggml abort
  again.close();
});

test('malformed endpoints and placement options are refused naming the value', () => {
  const cases = [
    [[''], Error, /'' is not of the form 'host:port'/],
    [['host'], Error, /'host' is not of the form/],
    [['host:notaport'], Error, /port 'notaport' is not a number/],
    [[':50052'], Error, /':50052' is not of the form/],
    [['host:0'], RangeError, /port 0 is outside 1..65535/],
    [['host:70000'], RangeError, /port 70000 is outside/],
    [[50052], TypeError, /must be a string 'host:port', not number/],
    ['127.0.0.1:50052', TypeError, /rpcServers must be an array/],
    [[], Error, /rpcServers is empty/],
  ];
  for (const [rpcServers, cls, re] of cases) {
    assert.throws(() => JsModel.load(smollmPath(), { rpcServers }), (e) => e instanceof cls && re.test(e.message),
      JSON.stringify(rpcServers));
  }
  assert.throws(() => JsModel.load(smollmPath(), { splitMode: 'diagonal' }), /splitMode must be one of/);
  assert.throws(() => JsModel.load(smollmPath(), { tensorSplit: [-1] }), /tensorSplit\[0\] must be >= 0/);
});

test('a port without a server is an RPCError naming it', { timeout: 60000 }, async () => {
  const endpoint = `127.0.0.1:${await freePort()}`;
  assert.throws(() => JsModel.load(smollmPath(), { nGpuLayers: -1, rpcServers: [endpoint] }),
    (e) => e instanceof RPCError && e.message.includes(`RPC server ${endpoint} refused the connection`));
});
