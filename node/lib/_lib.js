'use strict';
// Finds, loads and declares the native llama.cpp library (mirrors mullama/_lib.py).
//
// Everything that touches koffi signatures lives here: the structs mirrored
// field for field from the pinned llama.h, the table of every C function the
// binding calls, the library search (MULLAMA_LIB first, then the copy bundled
// in the package), the ABI check and the log bridge.  The library is loaded
// once, on first use.  test/abi.test.js checks the table and the struct
// layouts against llama.h, so they cannot drift apart.

const fs = require('node:fs');
const path = require('node:path');
const koffi = require('koffi');
const abi = require('./_abi');

const PINNED_COMMIT = abi.description().llama_cpp_commit;
const ENV_LIB = 'MULLAMA_LIB';
const ENV_SKIP_ABI = 'MULLAMA_SKIP_ABI_CHECK';
// The package's own copy (put there by `npm pack`), then, in a source
// checkout, the libraries scripts/build_lib.py installs for Python.
const PACKAGE_LIB_DIRS = [
  path.resolve(__dirname, '..', 'native'),
  path.resolve(__dirname, '..', '..', 'mullama', 'lib'),
];
const LIB_NAMES = process.platform === 'win32' ? ['llama.dll', 'libllama.dll']
  : process.platform === 'darwin' ? ['libllama.dylib'] : ['libllama.so'];
const GGML_BASE_NAME = process.platform === 'win32' ? 'ggml-base.dll'
  : process.platform === 'darwin' ? 'libggml-base.dylib' : 'libggml-base.so';
const GGML_NAMES = process.platform === 'win32' ? ['ggml.dll']
  : process.platform === 'darwin' ? ['libggml.dylib'] : ['libggml.so'];

// ---------------------------------------------------------------------------
// Constants, callbacks, structs and signatures, from abi.json (scripts/gen_abi.py reads them from
// the pinned headers with a C parser; _abi.js maps them to koffi).  What is written here is which
// names the binding uses, and the few places where it takes a type other than the header's and why.
// ---------------------------------------------------------------------------

const types = new abi.Mapper();
const LOG_LEVELS = abi.enumValues('ggml_log_level');
const LOAD_MODES = abi.enumValues('llama_load_mode');
const POOLING = abi.enumValues('llama_pooling_type');
const DEVICE_TYPES = abi.enumValues('ggml_backend_dev_type');
const CHUNK_TYPES = abi.enumValues('mtmd_input_chunk_type');
const pick = (values, names) => Object.fromEntries(names.map((n) => [n, values[n]]));
const C = Object.freeze({
  ...pick(LOG_LEVELS, ['GGML_LOG_LEVEL_DEBUG', 'GGML_LOG_LEVEL_INFO', 'GGML_LOG_LEVEL_WARN',
    'GGML_LOG_LEVEL_ERROR', 'GGML_LOG_LEVEL_CONT']),
  ...pick(LOAD_MODES, ['LLAMA_LOAD_MODE_NONE', 'LLAMA_LOAD_MODE_MMAP', 'LLAMA_LOAD_MODE_MLOCK',
    'LLAMA_LOAD_MODE_MMAP_MLOCK']),
  ...pick(POOLING, ['LLAMA_POOLING_TYPE_UNSPECIFIED', 'LLAMA_POOLING_TYPE_NONE', 'LLAMA_POOLING_TYPE_MEAN',
    'LLAMA_POOLING_TYPE_CLS', 'LLAMA_POOLING_TYPE_LAST', 'LLAMA_POOLING_TYPE_RANK']),
  LLAMA_TOKEN_NULL: abi.constant('LLAMA_TOKEN_NULL'),
  ...pick(DEVICE_TYPES, ['GGML_BACKEND_DEVICE_TYPE_CPU', 'GGML_BACKEND_DEVICE_TYPE_GPU',
    'GGML_BACKEND_DEVICE_TYPE_IGPU', 'GGML_BACKEND_DEVICE_TYPE_ACCEL']),
  ...pick(CHUNK_TYPES, ['MTMD_INPUT_CHUNK_TYPE_TEXT', 'MTMD_INPUT_CHUNK_TYPE_IMAGE', 'MTMD_INPUT_CHUNK_TYPE_AUDIO']),
});

const llama_progress_callback = koffi.proto(types.prototype('llama_progress_callback'));
const ggml_log_callback = koffi.proto(types.prototype('ggml_log_callback'));
koffi.proto(types.prototype('ggml_abort_callback'));
koffi.proto(types.prototype('ggml_backend_sched_eval_callback'));
koffi.proto(types.prototype('mtmd_progress_callback'));

// The structs the binding reads or fills, named as in C, in an order where each one's fields
// refer only to those before it.
const STRUCT_NAMES = ['llama_model_params', 'llama_context_params', 'llama_batch', 'llama_sampler_chain_params',
  'llama_chat_message', 'llama_token_data', 'llama_token_data_array', 'llama_logit_bias',
  'llama_perf_context_data', 'llama_model_quantize_params',
  // libmtmd (tools/mtmd: mtmd.h, mtmd-helper.h), images and audio in the prompt
  'mtmd_context_params', 'mtmd_input_text', 'mtmd_helper_video_init_params', 'mtmd_helper_init_opt',
  'mtmd_helper_bitmap_wrapper'];
const STRUCTS = {};
const structTypes = {};
for (const name of STRUCT_NAMES) {
  STRUCTS[name] = types.fields(name);
  structTypes[name] = koffi.struct(name, STRUCTS[name]);
  types.structs.add(name);
}

// ---------------------------------------------------------------------------
// The functions the binding calls, by group; their signatures come from abi.json.
// ---------------------------------------------------------------------------

const LLAMA_FUNCTION_NAMES = [
  // library
  'llama_version', 'llama_backend_init', 'llama_backend_free', 'llama_print_system_info',
  'llama_supports_gpu_offload', 'llama_supports_mmap', 'llama_supports_mlock', 'llama_max_devices',
  'llama_max_parallel_sequences', 'llama_log_set', 'llama_time_us',
  // defaults
  'llama_model_default_params', 'llama_context_default_params', 'llama_sampler_chain_default_params',
  'llama_model_quantize_default_params',
  // model
  'llama_model_load_from_file', 'llama_model_free', 'llama_model_get_vocab', 'llama_model_n_ctx_train',
  'llama_model_n_embd', 'llama_model_n_embd_out', 'llama_model_n_layer', 'llama_model_n_head',
  'llama_model_n_head_kv', 'llama_model_meta_val_str', 'llama_model_meta_count', 'llama_model_meta_key_by_index',
  'llama_model_meta_val_str_by_index', 'llama_model_desc', 'llama_model_size', 'llama_model_n_params',
  'llama_model_chat_template', 'llama_model_has_encoder', 'llama_model_has_decoder', 'llama_model_quantize',
  // vocab
  'llama_vocab_n_tokens', 'llama_vocab_type', 'llama_vocab_bos', 'llama_vocab_eos', 'llama_vocab_eot',
  'llama_vocab_sep', 'llama_vocab_nl', 'llama_vocab_pad', 'llama_vocab_is_eog', 'llama_vocab_is_control',
  'llama_vocab_get_add_bos', 'llama_vocab_get_add_eos', 'llama_vocab_get_add_sep', 'llama_vocab_get_text',
  'llama_tokenize', 'llama_token_to_piece', 'llama_detokenize', 'llama_chat_apply_template',
  'llama_chat_builtin_templates',
  // context
  'llama_init_from_model', 'llama_free', 'llama_n_ctx', 'llama_n_batch', 'llama_n_ubatch', 'llama_n_seq_max',
  'llama_pooling_type', 'llama_get_memory', 'llama_memory_clear', 'llama_memory_seq_rm', 'llama_memory_seq_cp',
  'llama_memory_seq_add', 'llama_memory_seq_pos_max', 'llama_memory_can_shift', 'llama_set_n_threads',
  'llama_n_threads', 'llama_set_embeddings', 'llama_set_abort_callback', 'llama_synchronize', 'llama_batch_init',
  'llama_batch_free', 'llama_decode', 'llama_encode', 'llama_get_logits', 'llama_get_logits_ith',
  'llama_get_embeddings', 'llama_get_embeddings_ith', 'llama_get_embeddings_seq', 'llama_perf_context',
  'llama_perf_context_reset',
  // saved state of one sequence (its KV cache)
  'llama_state_seq_get_size', 'llama_state_seq_get_data', 'llama_state_seq_set_data',
  // backend (device) sampling: a sampler chain attached to a sequence runs inside the decode graph
  // LoRA adapters: loaded per model, applied per context (a set of adapters with their scales)
  'llama_adapter_lora_init', 'llama_adapter_lora_free', 'llama_adapter_meta_val_str', 'llama_set_adapters_lora',
  'llama_set_sampler', 'llama_get_sampled_token_ith', 'llama_get_sampled_probs_ith',
  'llama_get_sampled_probs_count_ith', 'llama_get_sampled_logits_ith', 'llama_get_sampled_logits_count_ith',
  'llama_get_sampled_candidates_ith', 'llama_get_sampled_candidates_count_ith',
  // samplers
  'llama_sampler_chain_init', 'llama_sampler_chain_add', 'llama_sampler_chain_n', 'llama_sampler_chain_get',
  'llama_sampler_init_greedy', 'llama_sampler_init_dist', 'llama_sampler_init_top_k', 'llama_sampler_init_top_p',
  'llama_sampler_init_min_p', 'llama_sampler_init_typical', 'llama_sampler_init_top_n_sigma',
  'llama_sampler_init_temp', 'llama_sampler_init_penalties', 'llama_sampler_init_logit_bias', 'llama_sampler_sample',
  'llama_sampler_accept', 'llama_sampler_apply', 'llama_sampler_init_grammar', 'llama_sampler_reset',
  'llama_sampler_free', 'llama_sampler_get_seed', 'llama_sampler_name',
];
// Where the binding's type is not the header's: the text to tokenize goes as a Buffer with its
// byte length (it may hold NULs, and is not copied twice).
const LLAMA_OVERRIDES = {
  llama_tokenize: { text: 'void *' },
};
const FUNCTIONS = types.table(LLAMA_FUNCTION_NAMES, LLAMA_OVERRIDES);

// ggml (libggml / libggml-base): the backend registry, for device listing and
// for loading the backends of a build made with GGML_BACKEND_DL.
const GGML_FUNCTION_NAMES = [
  'ggml_backend_load_all_from_path', 'ggml_backend_load', 'ggml_backend_reg_count', 'ggml_backend_reg_get',
  'ggml_backend_reg_name', 'ggml_backend_dev_count', 'ggml_backend_dev_get', 'ggml_backend_dev_name',
  'ggml_backend_dev_description', 'ggml_backend_dev_type', 'ggml_backend_dev_by_name', 'ggml_backend_dev_memory',
  'ggml_backend_dev_backend_reg', 'ggml_backend_reg_dev_count', 'ggml_backend_reg_dev_get', 'ggml_backend_register',
];
// ggml_backend_dev_memory reports through two size_t outputs, which koffi hands back in arrays.
const GGML_OVERRIDES = {
  ggml_backend_dev_memory: { free: '_Out_ size_t *', total: '_Out_ size_t *' },
};
const GGML_FUNCTIONS = types.table(GGML_FUNCTION_NAMES, GGML_OVERRIDES);

// ggml-rpc (libggml-rpc, from ggml-rpc.h): remote devices and the RPC server.
// Optional: a library built with --no-rpc has none of these.
const RPC_FUNCTIONS = types.table(['ggml_backend_rpc_add_server', 'ggml_backend_rpc_start_server']);
const RPC_NAMES = process.platform === 'win32' ? ['ggml-rpc.dll']
  : process.platform === 'darwin' ? ['libggml-rpc.dylib', 'libggml-rpc.so'] : ['libggml-rpc.so'];

// libmtmd: opened on first use (a Projector), beside libllama.
const MTMD_FUNCTION_NAMES = [
  'mtmd_default_marker', 'mtmd_context_params_default', 'mtmd_init_from_file', 'mtmd_free',
  'mtmd_decode_use_non_causal', 'mtmd_decode_use_mrope', 'mtmd_support_vision', 'mtmd_support_audio',
  'mtmd_get_audio_sample_rate', 'mtmd_get_marker',
  // media
  'mtmd_bitmap_init', 'mtmd_bitmap_init_from_audio', 'mtmd_bitmap_get_nx', 'mtmd_bitmap_get_ny',
  'mtmd_bitmap_get_n_bytes', 'mtmd_bitmap_get_data', 'mtmd_bitmap_is_audio', 'mtmd_bitmap_free', 'mtmd_bitmap_get_id',
  'mtmd_bitmap_set_id',
  'mtmd_helper_bitmap_init_from_buf', 'mtmd_helper_init_opt_default',
  // a prompt as chunks of text and media
  'mtmd_input_chunks_init', 'mtmd_input_chunks_size', 'mtmd_input_chunks_get', 'mtmd_input_chunks_free',
  'mtmd_input_chunk_get_type', 'mtmd_input_chunk_get_tokens_text', 'mtmd_input_chunk_get_n_tokens',
  'mtmd_input_chunk_get_id', 'mtmd_input_chunk_get_n_pos', 'mtmd_tokenize',
  // evaluation: encode a media chunk, decode its embeddings into a sequence
  'mtmd_encode_chunk', 'mtmd_helper_eval_chunk_single',
  'mtmd_helper_log_set',
];
// Outputs through pointers to scalars come back in arrays (koffi's _Out_).
const MTMD_OVERRIDES = {
  mtmd_input_chunk_get_tokens_text: { n_tokens_output: '_Out_ size_t *' },
  mtmd_helper_eval_chunk_single: { new_n_past: '_Out_ int32_t *' },
};
const MTMD_FUNCTIONS = types.table(MTMD_FUNCTION_NAMES, MTMD_OVERRIDES);
const MTMD_NAMES = process.platform === 'win32' ? ['mtmd.dll', 'libmtmd.dll']
  : process.platform === 'darwin' ? ['libmtmd.dylib'] : ['libmtmd.so'];

class LibraryLoadError extends Error {
  constructor(message) {
    super(message);
    this.name = 'LibraryLoadError';
  }
}

// The prebuilt platform packages (npm installs the one that fits as an
// optional dependency of mullama), by platform and architecture; Linux ones
// are for glibc.
const PLATFORM_PACKAGES = Object.freeze({
  'linux-x64': 'mullama-linux-x64-gnu',
  'linux-arm64': 'mullama-linux-arm64-gnu',
  'darwin-x64': 'mullama-darwin-x64',
  'darwin-arm64': 'mullama-darwin-arm64',
  'win32-x64': 'mullama-win32-x64-msvc',
});
// GPU backends that plug into a platform package's libraries, installed by hand.
const PLUGIN_PACKAGES = Object.freeze(['mullama-linux-x64-cuda12', 'mullama-linux-x64-cuda13']);

function isGlibc() {
  // musl's Node reports no glibc version
  const header = process.report && typeof process.report.getReport === 'function'
    ? process.report.getReport().header : null;
  return Boolean(header && header.glibcVersionRuntime);
}

/** The platform package that fits this machine, or null with the reason. */
function platformPackage() {
  const key = `${process.platform}-${process.arch}`;
  const name = PLATFORM_PACKAGES[key];
  if (!name) return { name: null, why: `mullama has no prebuilt package for ${key}` };
  if (process.platform === 'linux' && !isGlibc()) {
    return { name: null, why: `mullama's prebuilt ${key} package needs glibc, and this Linux has another C library (musl?)` };
  }
  return { name, why: null };
}

/** The folder of an installed package's libraries, or null. */
function packageLibDir(name) {
  try {
    return require(name).libDir;
  } catch (e) {
    if (e && e.code === 'MODULE_NOT_FOUND') return null;
    throw e;
  }
}

function candidates() {
  const env = process.env[ENV_LIB];
  if (env) {
    // an explicit choice is never silently replaced by another build
    const p = path.resolve(env);
    return isDir(p) ? LIB_NAMES.map((n) => path.join(p, n)) : [p];
  }
  const [bundled, checkout] = PACKAGE_LIB_DIRS;
  const pkg = platformPackage();
  const pkgDir = pkg.name ? packageLibDir(pkg.name) : null;
  const dirs = [bundled, ...(pkgDir ? [pkgDir] : []), checkout];
  return dirs.flatMap((dir) => LIB_NAMES.map((n) => path.join(dir, n)));
}

/** What to do when no library was found: the platform package that would fit, or a source build. */
function installAdvice() {
  const pkg = platformPackage();
  const build = 'build libllama from source (python3 scripts/build_lib.py in a clone of mullama) '
    + 'and point MULLAMA_LIB at it';
  if (!pkg.name) return `${pkg.why}; ${build}.`;
  const version = require('../package.json').version;
  return `The prebuilt package for this machine, ${pkg.name}, is not installed (npm installs it with mullama `
    + `unless optional dependencies are left out): run \`npm install ${pkg.name}@${version}\`, or ${build}.`;
}

/** Register the backends of installed plugin packages; one that cannot load is an error, never a quiet CPU run. */
function loadPlugins(lib) {
  for (const name of PLUGIN_PACKAGES) {
    const dir = packageLibDir(name);
    if (!dir) continue;
    const info = readBuildInfo(dir);
    if (info.llama_cpp_commit !== PINNED_COMMIT) {
      throw new LibraryLoadError(`${name} was built from llama.cpp ${info.llama_cpp_commit}, but this mullama is `
        + `written for ${PINNED_COMMIT}; install the ${name} release that matches mullama's`);
    }
    for (const file of fs.readdirSync(dir).filter((f) => /ggml-.*\.(so|dll|dylib)$/.test(f)).sort()) {
      takeErrors();
      if (!lib.ggml_backend_load(path.join(dir, file))) {
        throw new LibraryLoadError(`${name} is installed, but its backend ${file} could not be loaded `
          + `(${takeErrors() || 'no reason given'}). Check the GPU driver and that the CUDA runtime and cuBLAS `
          + `libraries are on the loader path, or uninstall ${name} to run on the CPU.`);
      }
    }
  }
}

function isDir(p) {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function readBuildInfo(folder) {
  try {
    const info = JSON.parse(fs.readFileSync(path.join(folder, 'build_info.json'), 'utf8'));
    return info && typeof info === 'object' ? info : {};
  } catch {
    return {};
  }
}

function open(file) {
  const folder = path.dirname(file);
  if (process.platform === 'linux') {
    // Make the C++ runtime globally visible first (see mullama/_lib.py: a CUDA
    // build otherwise resolved C++ runtime symbols elsewhere and crashed).
    try {
      koffi.load('libstdc++.so.6', { global: true });
    } catch {
      // a statically linked build needs none
    }
  }
  if (process.platform === 'win32') {
    // Windows looks for a DLL's dependencies beside the program, not beside
    // the DLL; loaded first, they are found by name.
    for (const dep of ['ggml-base.dll', 'ggml.dll']) {
      if (fs.existsSync(path.join(folder, dep))) koffi.load(path.join(folder, dep));
    }
  }
  const llama = koffi.load(file);
  const ggmlFile = GGML_NAMES.map((n) => path.join(folder, n)).find((f) => fs.existsSync(f));
  // a monolithic build exports the ggml symbols itself; otherwise the backend
  // registry is in libggml and the backend and device functions in libggml-base
  const baseFile = path.join(folder, GGML_BASE_NAME);
  const ggml = !ggmlFile ? [llama]
    : fs.existsSync(baseFile) ? [koffi.load(ggmlFile), koffi.load(baseFile)] : [koffi.load(ggmlFile)];
  const rpcFile = RPC_NAMES.map((n) => path.join(folder, n)).find((f) => fs.existsSync(f));
  let rpc = null;
  try {
    rpc = rpcFile ? koffi.load(rpcFile) : null;
  } catch {
    // unloadable: RPC servers are unavailable, local models still work
  }
  return { llama, ggml, rpc };
}

// Given several handles, each function comes from the first that exports it
// (on Windows a DLL's lookup sees only its own exports, not its dependencies').
function declare(handle, table, into) {
  const handles = Array.isArray(handle) ? handle : [handle];
  for (const [name, [ret, params]] of Object.entries(table)) {
    for (let i = 0; i < handles.length; i++) {
      try {
        into[name] = handles[i].func(name, ret, params);
        break;
      } catch (e) {
        if (i === handles.length - 1) throw e;
      }
    }
  }
}

function checkAbi(lib) {
  const commit = lib.buildInfo.llama_cpp_commit;
  if (commit && commit !== PINNED_COMMIT && !process.env[ENV_SKIP_ABI]) {
    throw new LibraryLoadError(
      `${lib.path} was built from llama.cpp ${commit}, but this mullama is written for ${PINNED_COMMIT}; `
      + `rebuild it with scripts/build_lib.py (or set ${ENV_SKIP_ABI}=1 at your own risk)`);
  }
  // Sanity-check defaults before any struct crosses the boundary by value.
  const mp = lib.llama_model_default_params();
  const cp = lib.llama_context_default_params();
  const ok = cp.n_batch === 2048 && cp.n_ubatch === 512 && cp.n_seq_max === 1 && Number(cp.n_samplers) === 0
    && !cp.embeddings && cp.offload_kqv && !mp.vocab_only && !mp.no_alloc
    && mp.load_mode >= -1 && mp.load_mode <= 4 && mp.main_gpu === 0;
  if (!ok) {
    throw new LibraryLoadError(
      `${lib.path} does not have the ABI of llama.cpp ${PINNED_COMMIT} (default context params came back as `
      + `n_batch=${cp.n_batch}, n_ubatch=${cp.n_ubatch}, n_seq_max=${cp.n_seq_max}); rebuild it with scripts/build_lib.py`);
  }
}

// --- logging bridge ----------------------------------------------------------
// llama.cpp's log is silent by default.  setLogHandler(fn) forwards whole
// lines as fn(level, line); error lines are always kept (the last few) so that
// a failed call can say why.

const LEVEL_NAMES = { 1: 'debug', 2: 'info', 3: 'warn', 4: 'error' };
const log = { handler: null, level: C.GGML_LOG_LEVEL_INFO, buf: '', errors: [] };

function onLog(level, text) {
  if (text == null) return;
  if (level === C.GGML_LOG_LEVEL_CONT) level = log.level;
  log.level = level;
  const parts = (log.buf + text).split('\n');
  log.buf = parts.pop();
  if (level === C.GGML_LOG_LEVEL_ERROR) {
    log.errors = log.errors.concat(parts.map((s) => s.trim()).filter(Boolean)).slice(-4);
  }
  if (log.handler) {
    for (const line of parts) {
      if (line) {
        try {
          log.handler(LEVEL_NAMES[level] || 'debug', line);
        } catch {
          // a throwing handler must not unwind through C
        }
      }
    }
  }
}

/** The error lines llama.cpp logged since the last call, joined. */
function takeErrors() {
  const out = log.errors.join('; ');
  log.errors = [];
  return out;
}

function setLogHandler(fn) {
  if (fn !== null && typeof fn !== 'function') throw new TypeError('the log handler must be a function or null');
  log.handler = fn;
}

/** libmtmd from libllama's folder, with every declared mtmd_* function; its log goes where llama.cpp's goes. */
function openMtmd(folder, logCallback) {
  const tried = MTMD_NAMES.map((n) => path.join(folder, n));
  const file = tried.find((f) => fs.existsSync(f));
  if (!file) {
    throw new LibraryLoadError(`this build of libllama has no libmtmd beside it (looked for ${tried.join(', ')}); `
      + 'rebuild it with scripts/build_lib.py, which builds libmtmd for images and audio in the prompt');
  }
  const mtmd = { path: file };
  try {
    declare(koffi.load(file), MTMD_FUNCTIONS, mtmd);
  } catch (e) {
    throw new LibraryLoadError(`${file} cannot be loaded or is not the libmtmd of llama.cpp ${PINNED_COMMIT} `
      + `(${e.message}); rebuild it with scripts/build_lib.py`);
  }
  mtmd.mtmd_helper_log_set(logCallback, null);
  return mtmd;
}

// --- the one loaded library ----------------------------------------------------

let loaded = null;

/** Load libllama once and return it; throws LibraryLoadError naming every path tried. */
function load() {
  if (loaded) return loaded;
  const tried = [];
  for (const file of candidates()) {
    if (!fs.existsSync(file)) {
      tried.push(`${file}: no such file`);
      continue;
    }
    let handles;
    try {
      handles = open(file);
    } catch (e) {
      tried.push(`${file}: ${e.message}`);
      continue;
    }
    const lib = { path: file, buildInfo: readBuildInfo(path.dirname(file)) };
    try {
      declare(handles.llama, FUNCTIONS, lib);
      declare(handles.ggml, GGML_FUNCTIONS, lib);
      lib.hasRpc = handles.rpc !== null;
      if (handles.rpc) declare(handles.rpc, RPC_FUNCTIONS, lib);
    } catch (e) {
      throw new LibraryLoadError(`${file} is not the llama.cpp this mullama is written for (${e.message}); `
        + 'rebuild it with scripts/build_lib.py');
    }
    checkAbi(lib);
    // Kept referenced for the life of the process: C holds the pointer.
    lib.logCallback = koffi.register(onLog, koffi.pointer(ggml_log_callback));
    lib.llama_log_set(lib.logCallback, null);
    let mtmd = null;
    lib.mtmd = () => {
      if (!mtmd) mtmd = openMtmd(path.dirname(file), lib.logCallback);
      return mtmd;
    };
    // Builds with loadable backends (--portable) register them from their folder.
    if (Number(lib.ggml_backend_reg_count()) === 0) {
      lib.ggml_backend_load_all_from_path(path.dirname(file));
      if (!process.env[ENV_LIB]) loadPlugins(lib);
    }
    loaded = lib;
    return lib;
  }
  const where = process.env[ENV_LIB] ? `$${ENV_LIB}` : 'the package';
  throw new LibraryLoadError(`could not load libllama from ${where}. Tried:\n  ${tried.join('\n  ')}\n`
    + (process.env[ENV_LIB] ? 'Point MULLAMA_LIB at a libllama file or folder.' : installAdvice()));
}

module.exports = {
  C,
  PLATFORM_PACKAGES,
  platformPackage,
  FUNCTIONS,
  GGML_FUNCTIONS,
  RPC_FUNCTIONS,
  MTMD_FUNCTIONS,
  STRUCTS,
  structTypes,
  PINNED_COMMIT,
  LibraryLoadError,
  llama_progress_callback,
  load,
  takeErrors,
  setLogHandler,
};
