'use strict';
// llama.cpp's RPC backend: remote devices for a model (mirrors mullama/rpc.py).
//
// ggml aborts the process when a server cannot be reached and waits forever
// on a server busy with another client, so every endpoint is checked here
// first, within a bounded time: a server not in use by this process must
// answer the protocol's HELLO (done by a short-lived child process, since
// JsModel.load is synchronous), one in use is checked through this process's
// own connection to it (Linux: /proc), which a stopped server has closed.

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const { lib } = require('./_backend');
const _lib = require('./_lib');

const { C } = _lib;
const MAX_SERVERS = 16; // GGML_RPC_MAX_SERVERS
const DEFAULT_TIMEOUT_MS = Number(process.env.MULLAMA_RPC_TIMEOUT || 5) * 1000;

class RPCError extends Error {
  constructor(message) {
    super(message);
    this.name = 'RPCError';
  }
}

/** 'host:port' -> [host, port]; TypeError for a non-string, Error/RangeError naming a malformed value. */
function parseEndpoint(value) {
  if (typeof value !== 'string') {
    throw new TypeError(`an RPC endpoint must be a string 'host:port', not ${value === null ? 'null' : typeof value}`);
  }
  const at = value.lastIndexOf(':');
  const host = at < 0 ? '' : value.slice(0, at);
  const portText = at < 0 ? '' : value.slice(at + 1);
  if (!host || !portText) throw new Error(`RPC endpoint '${value}' is not of the form 'host:port' (e.g. '192.168.1.10:50052')`);
  if (host.includes(':') || host.startsWith('[')) {
    throw new Error(`RPC endpoint '${value}': IPv6 addresses are not supported by llama.cpp's RPC client`);
  }
  if (/\s/.test(host)) throw new Error(`RPC endpoint '${value}': the host contains white space`);
  if (!/^[0-9]+$/.test(portText)) throw new Error(`RPC endpoint '${value}': port '${portText}' is not a number`);
  const port = Number(portText);
  if (port < 1 || port > 65535) throw new RangeError(`RPC endpoint '${value}': port ${port} is outside 1..65535`);
  return [host, port];
}

function parseEndpoints(values) {
  if (!Array.isArray(values)) throw new TypeError('rpcServers must be an array of \'host:port\' strings');
  if (values.length === 0) throw new Error('rpcServers is empty; leave it out for a local model');
  if (values.length > MAX_SERVERS) throw new RangeError(`rpcServers has ${values.length} endpoints; llama.cpp takes at most ${MAX_SERVERS}`);
  const out = [];
  for (const v of values) {
    parseEndpoint(v);
    if (out.includes(v)) throw new Error(`RPC endpoint '${v}' is listed twice in rpcServers`);
    out.push(v);
  }
  return out;
}

// The HELLO exchange (ggml-rpc.cpp at the pinned commit): command 14 with 24
// bytes of capabilities; the reply is its size (28) and major, minor, patch.
const HELLO_CHILD = `
const net = require('node:net');
const [host, port, ms] = process.argv.slice(1);
const fail = (m) => { process.stdout.write(JSON.stringify({ error: m })); process.exit(0); };
require('node:dns').lookup(host, { family: 4 }, (err, addr) => {
  if (err) fail('cannot resolve host ' + JSON.stringify(host) + ' (' + err.code + ')');
  const s = net.connect({ host: addr, port: Number(port) });
  let got = Buffer.alloc(0);
  let connected = false;
  s.setTimeout(Number(ms), () => fail(connected
    ? 'accepted the connection but did not answer within ' + (ms / 1000) + ' s (a server serves one client at a time: is another client using it?)'
    : 'is unreachable: no answer to the connection within ' + (ms / 1000) + ' s'));
  s.on('connect', () => {
    connected = true;
    const req = Buffer.alloc(33);
    req[0] = 14;
    req.writeBigUInt64LE(24n, 1);
    s.write(req);
  });
  s.on('data', (d) => {
    got = Buffer.concat([got, d]);
    if (got.length >= 36) {
      if (got.readBigUInt64LE(0) !== 28n) fail('did not answer as a llama.cpp RPC server');
      process.stdout.write(JSON.stringify({ addr, version: [got[8], got[9], got[10]] }));
      process.exit(0);
    }
  });
  s.on('error', (e) => fail(e.code === 'ECONNREFUSED'
    ? 'refused the connection: nothing listens on port ' + port + ' (start it with \`mullama rpc-server --port ' + port + '\`)'
    : connected ? 'did not answer as a llama.cpp RPC server: it dropped the connection (' + e.code + ')' : 'is unreachable: ' + e.code));
  s.on('end', () => fail('did not answer as a llama.cpp RPC server'));
});
`;

/** Check that `endpoint` is an RPC server free to serve us; returns its IPv4 address. Throws RPCError. */
function handshake(endpoint, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const [host, port] = parseEndpoint(endpoint);
  let out;
  try {
    out = JSON.parse(execFileSync(process.execPath, ['-e', HELLO_CHILD, host, String(port), String(timeoutMs)],
      { encoding: 'utf8', timeout: timeoutMs + 10000, stdio: ['ignore', 'pipe', 'pipe'] }));
  } catch (e) {
    throw new RPCError(`RPC server ${endpoint}: the connection check failed (${e.message})`);
  }
  if (out.error) {
    const prefix = out.error.startsWith('did not answer') ? `${endpoint}` : `RPC server ${endpoint}`;
    throw new RPCError(`${prefix} ${out.error}`);
  }
  if (out.version[0] !== 7) {
    throw new RPCError(`RPC server ${endpoint} speaks protocol ${out.version.join('.')}, this library 7.x: `
      + 'run the same mullama (or llama.cpp) version on both sides');
  }
  return out.addr;
}

// --- this process's own connections (Linux) ------------------------------------

function hexPeer(addr, port) {
  const ip = addr.split('.').map((b) => Number(b).toString(16).padStart(2, '0')).reverse().join('');
  return `${ip}:${port.toString(16).padStart(4, '0')}`.toUpperCase();
}

/** The TCP states of this process's connections to addr:port, or null where /proc cannot say. */
function ourConnectionStates(addr, port) {
  let inodes;
  let table;
  try {
    inodes = new Set();
    for (const fd of fs.readdirSync('/proc/self/fd')) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/self/fd/${fd}`));
        if (m) inodes.add(m[1]);
      } catch {
        // closed meanwhile
      }
    }
    table = fs.readFileSync('/proc/self/net/tcp', 'utf8');
  } catch {
    return null;
  }
  const peer = hexPeer(addr, port);
  const states = [];
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 9 && f[2] === peer && inodes.has(f[9])) states.push(f[3]);
  }
  return states;
}

const registered = new Map(); // endpoint -> { addr, devices }

/**
 * Throw RPCError unless the server at `endpoint` can take ggml's next request:
 * one this process is connected to must not have closed the connection
 * (CLOSE_WAIT: it stopped or restarted); one not in use must answer HELLO.
 */
function checkServer(endpoint, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const entry = registered.get(endpoint);
  const states = entry ? ourConnectionStates(entry.addr, parseEndpoint(endpoint)[1]) : null;
  if (states && states.length) {
    // 01 ESTABLISHED; 08 CLOSE_WAIT and 07 CLOSE: the server's end is gone
    if (states.some((s) => s === '08' || s === '07')) {
      throw new RPCError(`RPC server ${endpoint} closed the connection (it stopped or restarted)`);
    }
    return;
  }
  if (states === null && entry) return; // no /proc: what ggml holds cannot be inspected
  handshake(endpoint, timeoutMs);
}

function requireRpc(L) {
  if (!L.hasRpc) {
    throw new Error(`the loaded library (${L.path}) was built without llama.cpp's RPC backend; `
      + 'rebuild it with `python scripts/build_lib.py --rpc`');
  }
}

/** Register the servers with ggml (once per process); returns their devices, in order. */
function register(endpoints) {
  const L = lib();
  requireRpc(L);
  const devices = [];
  for (const ep of endpoints) {
    const known = registered.get(ep);
    if (known) {
      checkServer(ep);
      devices.push(...known.devices);
      continue;
    }
    const addr = handshake(ep);
    const reg = L.ggml_backend_rpc_add_server(ep);
    if (!reg) throw new RPCError(`RPC server ${ep} reports no devices`);
    L.ggml_backend_register(reg);
    const devs = [];
    const n = Number(L.ggml_backend_reg_dev_count(reg));
    for (let i = 0; i < n; i++) devs.push(L.ggml_backend_reg_dev_get(reg, i));
    registered.set(ep, { addr, devices: devs });
    devices.push(...devs);
  }
  return devices;
}

function address(p) {
  return typeof p === 'bigint' ? p : BigInt(require('koffi').address(p));
}

/** The endpoint a device lives on, or null for a local device. */
function endpointOf(dev) {
  const a = address(dev);
  for (const [ep, { devices }] of registered) {
    if (devices.some((d) => address(d) === a)) return ep;
  }
  return null;
}

/** This host's GPUs (or integrated GPUs when there is no discrete one), as llama.cpp would pick them. */
function localOffloadDevices() {
  const L = lib();
  const gpus = [];
  const igpus = [];
  const n = Number(L.ggml_backend_dev_count());
  for (let i = 0; i < n; i++) {
    const dev = L.ggml_backend_dev_get(i);
    if (endpointOf(dev) !== null) continue;
    const kind = L.ggml_backend_dev_type(dev);
    if (kind === C.GGML_BACKEND_DEVICE_TYPE_GPU) gpus.push(dev);
    else if (kind === C.GGML_BACKEND_DEVICE_TYPE_IGPU) igpus.push(dev);
  }
  return gpus.length ? gpus : igpus;
}

/** `free`, unless one of `endpoints` is gone: freeing buffers on a dead server makes ggml abort. */
function guardedFree(free, endpoints) {
  if (!endpoints.length) return free;
  return (ptr) => {
    for (const ep of endpoints) {
      try {
        checkServer(ep, Math.min(DEFAULT_TIMEOUT_MS, 2000));
      } catch {
        return; // left allocated: the lesser harm
      }
    }
    free(ptr);
  };
}

module.exports = {
  RPCError, parseEndpoint, parseEndpoints, handshake, checkServer, register, registered, endpointOf,
  localOffloadDevices, guardedFree,
};
