'use strict';
// Process-wide backend state and the module-level utility functions (mirrors mullama/_backend.py).

const _lib = require('./_lib');

let initialized = false;

/** The loaded library, with the backend initialised (once per process). */
function lib() {
  const L = _lib.load();
  if (!initialized) {
    L.llama_backend_init();
    initialized = true;
  }
  return L;
}

/** Initialise llama.cpp's backend; done automatically on first use, repeated calls are harmless. */
function backendInit() {
  lib();
}

/**
 * Release backend-wide resources.  Safe at any time: models and contexts
 * still alive keep working, and the backend is initialised again on next use
 * (llama.cpp frees only global state its objects do not depend on).
 */
function backendFree() {
  if (initialized) {
    _lib.load().llama_backend_free();
    initialized = false;
  }
}

/**
 * True when this machine has a GPU that can hold model layers (llama.cpp's
 * own check is true whenever the RPC backend is built in; remote devices are
 * listed by devices() and used through rpcServers).
 */
function supportsGpuOffload() {
  const rpc = require('./rpc');
  return rpc.localOffloadDevices().length > 0;
}

function maxDevices() {
  return Number(lib().llama_max_devices());
}

/** llama.cpp's version string and the commit the library was built from. */
function version() {
  const L = lib();
  return `${L.llama_version() || ''} (${L.buildInfo.llama_cpp_commit || 'unknown commit'})`;
}

const DEVICE_KINDS = { 0: 'cpu', 1: 'gpu', 2: 'igpu', 3: 'accel' };

/**
 * The compute devices: name, description, type, memoryFree and memoryTotal
 * (bytes; null for an RPC server that cannot be reached) and endpoint
 * ('host:port' of an RPC server, null for a local device).
 */
function devices() {
  const rpc = require('./rpc');
  const L = lib();
  const out = [];
  const n = Number(L.ggml_backend_dev_count());
  for (let i = 0; i < n; i++) {
    const dev = L.ggml_backend_dev_get(i);
    const endpoint = rpc.endpointOf(dev);
    let memoryFree = null;
    let memoryTotal = null;
    try {
      if (endpoint !== null) rpc.checkServer(endpoint); // ggml would abort on a dead server
      const f = [0];
      const t = [0];
      L.ggml_backend_dev_memory(dev, f, t);
      [memoryFree, memoryTotal] = [Number(f[0]), Number(t[0])];
    } catch (e) {
      if (!(e instanceof rpc.RPCError)) throw e;
    }
    out.push({
      name: L.ggml_backend_dev_name(dev) || '',
      description: L.ggml_backend_dev_description(dev) || '',
      type: DEVICE_KINDS[L.ggml_backend_dev_type(dev)] || 'unknown',
      memoryFree,
      memoryTotal,
      endpoint,
    });
  }
  return out;
}

/** llama.cpp's CPU/GPU feature line, plus the library file, build and devices. */
function systemInfo() {
  const L = lib();
  const info = (L.llama_print_system_info() || '').trim();
  const backend = L.buildInfo.backend || 'unknown';
  const devs = devices().map((d) => `${d.name} (${d.description})`).join(', ');
  return `${info}\nlibrary: ${L.path}\nllama.cpp: ${version()}\nbuild: ${backend}`
    + `${L.buildInfo.portable ? ' portable' : ''}\ndevices: ${devs}`;
}

module.exports = { lib, backendInit, backendFree, supportsGpuOffload, maxDevices, version, devices, systemInfo };
