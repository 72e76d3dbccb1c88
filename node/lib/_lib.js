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

const PINNED_COMMIT = '0c1e57098bba43ac29e6e3b677cdceebdd22334f';
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
// Constants (llama.h / ggml.h)
// ---------------------------------------------------------------------------

const C = Object.freeze({
  GGML_LOG_LEVEL_DEBUG: 1,
  GGML_LOG_LEVEL_INFO: 2,
  GGML_LOG_LEVEL_WARN: 3,
  GGML_LOG_LEVEL_ERROR: 4,
  GGML_LOG_LEVEL_CONT: 5,
  LLAMA_LOAD_MODE_NONE: 0,
  LLAMA_LOAD_MODE_MMAP: 1,
  LLAMA_LOAD_MODE_MLOCK: 2,
  LLAMA_LOAD_MODE_MMAP_MLOCK: 3,
  LLAMA_POOLING_TYPE_UNSPECIFIED: -1,
  LLAMA_POOLING_TYPE_NONE: 0,
  LLAMA_POOLING_TYPE_MEAN: 1,
  LLAMA_POOLING_TYPE_CLS: 2,
  LLAMA_POOLING_TYPE_LAST: 3,
  LLAMA_POOLING_TYPE_RANK: 4,
  LLAMA_TOKEN_NULL: -1,
  GGML_BACKEND_DEVICE_TYPE_CPU: 0,
  GGML_BACKEND_DEVICE_TYPE_GPU: 1,
  GGML_BACKEND_DEVICE_TYPE_IGPU: 2,
  GGML_BACKEND_DEVICE_TYPE_ACCEL: 3,
});

// ---------------------------------------------------------------------------
// Callback prototypes and structs, field for field from the pinned llama.h
// ---------------------------------------------------------------------------

const llama_progress_callback = koffi.proto('bool llama_progress_callback(float progress, void *user_data)');
const ggml_log_callback = koffi.proto('void ggml_log_callback(int level, const char *text, void *user_data)');
koffi.proto('bool ggml_abort_callback(void *data)');
koffi.proto('bool ggml_backend_sched_eval_callback(void *t, bool ask, void *user_data)');

const STRUCTS = {
  llama_model_params: {
    devices: 'void *',
    tensor_buft_overrides: 'void *',
    n_gpu_layers: 'int32_t',
    split_mode: 'int',
    load_mode: 'int',
    lazy_mode: 'int',
    main_gpu: 'int32_t',
    tensor_split: 'float *',
    progress_callback: 'llama_progress_callback *',
    progress_callback_user_data: 'void *',
    kv_overrides: 'void *',
    vocab_only: 'bool',
    check_tensors: 'bool',
    use_extra_bufts: 'bool',
    no_host: 'bool',
    no_alloc: 'bool',
    load_mtp: 'bool',
  },
  llama_context_params: {
    n_ctx: 'uint32_t',
    n_batch: 'uint32_t',
    n_ubatch: 'uint32_t',
    n_seq_max: 'uint32_t',
    n_rs_seq: 'uint32_t',
    n_outputs_max: 'uint32_t',
    n_outputs_max_per_seq: 'uint32_t',
    n_threads: 'int32_t',
    n_threads_batch: 'int32_t',
    ctx_type: 'int',
    rope_scaling_type: 'int',
    pooling_type: 'int',
    attention_type: 'int',
    flash_attn_type: 'int',
    rope_freq_base: 'float',
    rope_freq_scale: 'float',
    yarn_ext_factor: 'float',
    yarn_attn_factor: 'float',
    yarn_beta_fast: 'float',
    yarn_beta_slow: 'float',
    yarn_orig_ctx: 'uint32_t',
    defrag_thold: 'float',
    cb_eval: 'ggml_backend_sched_eval_callback *',
    cb_eval_user_data: 'void *',
    type_k: 'int',
    type_v: 'int',
    abort_callback: 'ggml_abort_callback *',
    abort_callback_data: 'void *',
    embeddings: 'bool',
    offload_kqv: 'bool',
    no_perf: 'bool',
    op_offload: 'bool',
    swa_full: 'bool',
    kv_unified: 'bool',
    samplers: 'void *',
    n_samplers: 'size_t',
    ctx_other: 'void *',
  },
  llama_batch: {
    n_tokens: 'int32_t',
    token: 'int32_t *',
    embd: 'float *',
    pos: 'int32_t *',
    n_seq_id: 'int32_t *',
    seq_id: 'int32_t **',
    logits: 'int8_t *',
  },
  llama_sampler_chain_params: { no_perf: 'bool' },
  llama_chat_message: { role: 'const char *', content: 'const char *' },
  llama_token_data: { id: 'int32_t', logit: 'float', p: 'float' },
  llama_token_data_array: { data: 'void *', size: 'size_t', selected: 'int64_t', sorted: 'bool' },
  llama_logit_bias: { token: 'int32_t', bias: 'float' },
  llama_perf_context_data: {
    t_start_ms: 'double',
    t_load_ms: 'double',
    t_p_eval_ms: 'double',
    t_eval_ms: 'double',
    n_p_eval: 'int32_t',
    n_eval: 'int32_t',
    n_reused: 'int32_t',
  },
  llama_model_quantize_params: {
    nthread: 'int32_t',
    ftype: 'int',
    output_tensor_type: 'int',
    token_embedding_type: 'int',
    allow_requantize: 'bool',
    quantize_output_tensor: 'bool',
    only_copy: 'bool',
    pure: 'bool',
    keep_split: 'bool',
    dry_run: 'bool',
    imatrix: 'void *',
    kv_overrides: 'void *',
    tt_overrides: 'void *',
    prune_layers: 'int32_t *',
    max_buf_size: 'size_t',
  },
};
const structTypes = Object.fromEntries(Object.entries(STRUCTS).map(([name, fields]) => [name, koffi.struct(name, fields)]));

// ---------------------------------------------------------------------------
// Function table: name -> [return type, [parameter types]].  The one place
// signatures live.  'void *' parameters also take Buffers and typed arrays
// (koffi passes their memory), which is how output buffers are handed to C.
// ---------------------------------------------------------------------------

const P = 'void *';
const FUNCTIONS = {
  // library
  llama_version: ['const char *', []],
  llama_backend_init: ['void', []],
  llama_backend_free: ['void', []],
  llama_print_system_info: ['const char *', []],
  llama_supports_gpu_offload: ['bool', []],
  llama_supports_mmap: ['bool', []],
  llama_supports_mlock: ['bool', []],
  llama_max_devices: ['size_t', []],
  llama_max_parallel_sequences: ['size_t', []],
  llama_log_set: ['void', ['ggml_log_callback *', P]],
  llama_time_us: ['int64_t', []],
  // defaults
  llama_model_default_params: ['llama_model_params', []],
  llama_context_default_params: ['llama_context_params', []],
  llama_sampler_chain_default_params: ['llama_sampler_chain_params', []],
  llama_model_quantize_default_params: ['llama_model_quantize_params', []],
  // model
  llama_model_load_from_file: [P, ['const char *', 'llama_model_params']],
  llama_model_free: ['void', [P]],
  llama_model_get_vocab: [P, [P]],
  llama_model_n_ctx_train: ['int32_t', [P]],
  llama_model_n_embd: ['int32_t', [P]],
  llama_model_n_embd_out: ['int32_t', [P]],
  llama_model_n_layer: ['int32_t', [P]],
  llama_model_n_head: ['int32_t', [P]],
  llama_model_n_head_kv: ['int32_t', [P]],
  llama_model_meta_val_str: ['int32_t', [P, 'const char *', P, 'size_t']],
  llama_model_meta_count: ['int32_t', [P]],
  llama_model_meta_key_by_index: ['int32_t', [P, 'int32_t', P, 'size_t']],
  llama_model_meta_val_str_by_index: ['int32_t', [P, 'int32_t', P, 'size_t']],
  llama_model_desc: ['int32_t', [P, P, 'size_t']],
  llama_model_size: ['uint64_t', [P]],
  llama_model_n_params: ['uint64_t', [P]],
  llama_model_chat_template: ['const char *', [P, 'const char *']],
  llama_model_has_encoder: ['bool', [P]],
  llama_model_has_decoder: ['bool', [P]],
  llama_model_quantize: ['uint32_t', ['const char *', 'const char *', 'llama_model_quantize_params *']],
  // vocab
  llama_vocab_n_tokens: ['int32_t', [P]],
  llama_vocab_type: ['int', [P]],
  llama_vocab_bos: ['int32_t', [P]],
  llama_vocab_eos: ['int32_t', [P]],
  llama_vocab_eot: ['int32_t', [P]],
  llama_vocab_sep: ['int32_t', [P]],
  llama_vocab_nl: ['int32_t', [P]],
  llama_vocab_pad: ['int32_t', [P]],
  llama_vocab_is_eog: ['bool', [P, 'int32_t']],
  llama_vocab_is_control: ['bool', [P, 'int32_t']],
  llama_vocab_get_add_bos: ['bool', [P]],
  llama_vocab_get_add_eos: ['bool', [P]],
  llama_vocab_get_add_sep: ['bool', [P]],
  llama_vocab_get_text: ['const char *', [P, 'int32_t']],
  llama_tokenize: ['int32_t', [P, P, 'int32_t', P, 'int32_t', 'bool', 'bool']],
  llama_token_to_piece: ['int32_t', [P, 'int32_t', P, 'int32_t', 'int32_t', 'bool']],
  llama_detokenize: ['int32_t', [P, P, 'int32_t', P, 'int32_t', 'bool', 'bool']],
  llama_chat_apply_template: ['int32_t', ['const char *', 'llama_chat_message *', 'size_t', 'bool', P, 'int32_t']],
  llama_chat_builtin_templates: ['int32_t', ['const char **', 'size_t']],
  // context
  llama_init_from_model: [P, [P, 'llama_context_params']],
  llama_free: ['void', [P]],
  llama_n_ctx: ['uint32_t', [P]],
  llama_n_batch: ['uint32_t', [P]],
  llama_n_ubatch: ['uint32_t', [P]],
  llama_n_seq_max: ['uint32_t', [P]],
  llama_pooling_type: ['int', [P]],
  llama_get_memory: [P, [P]],
  llama_memory_clear: ['void', [P, 'bool']],
  llama_memory_seq_rm: ['bool', [P, 'int32_t', 'int32_t', 'int32_t']],
  llama_memory_seq_cp: ['void', [P, 'int32_t', 'int32_t', 'int32_t', 'int32_t']],
  llama_memory_seq_add: ['void', [P, 'int32_t', 'int32_t', 'int32_t', 'int32_t']],
  llama_memory_seq_pos_max: ['int32_t', [P, 'int32_t']],
  llama_memory_can_shift: ['bool', [P]],
  llama_set_n_threads: ['void', [P, 'int32_t', 'int32_t']],
  llama_n_threads: ['int32_t', [P]],
  llama_set_embeddings: ['void', [P, 'bool']],
  llama_set_abort_callback: ['void', [P, 'ggml_abort_callback *', P]],
  llama_synchronize: ['void', [P]],
  llama_batch_init: ['llama_batch', ['int32_t', 'int32_t', 'int32_t']],
  llama_batch_free: ['void', ['llama_batch']],
  llama_decode: ['int32_t', [P, 'llama_batch']],
  llama_encode: ['int32_t', [P, 'llama_batch']],
  llama_get_logits: [P, [P]],
  llama_get_logits_ith: [P, [P, 'int32_t']],
  llama_get_embeddings: [P, [P]],
  llama_get_embeddings_ith: [P, [P, 'int32_t']],
  llama_get_embeddings_seq: [P, [P, 'int32_t']],
  llama_perf_context: ['llama_perf_context_data', [P]],
  llama_perf_context_reset: ['void', [P]],
  // saved state of one sequence (its KV cache)
  llama_state_seq_get_size: ['size_t', [P, 'int32_t']],
  llama_state_seq_get_data: ['size_t', [P, P, 'size_t', 'int32_t']],
  llama_state_seq_set_data: ['size_t', [P, P, 'size_t', 'int32_t']],
  // backend (device) sampling: a sampler chain attached to a sequence runs inside the decode graph
  // LoRA adapters: loaded per model, applied per context (a set of adapters with their scales)
  llama_adapter_lora_init: [P, [P, 'const char *']],
  llama_adapter_lora_free: ['void', [P]],
  llama_adapter_meta_val_str: ['int32_t', [P, 'const char *', P, 'size_t']],
  llama_set_adapters_lora: ['int32_t', [P, P, 'size_t', P]],
  llama_set_sampler: ['bool', [P, 'int32_t', P]],
  llama_get_sampled_token_ith: ['int32_t', [P, 'int32_t']],
  llama_get_sampled_probs_ith: [P, [P, 'int32_t']],
  llama_get_sampled_probs_count_ith: ['uint32_t', [P, 'int32_t']],
  llama_get_sampled_logits_ith: [P, [P, 'int32_t']],
  llama_get_sampled_logits_count_ith: ['uint32_t', [P, 'int32_t']],
  llama_get_sampled_candidates_ith: [P, [P, 'int32_t']],
  llama_get_sampled_candidates_count_ith: ['uint32_t', [P, 'int32_t']],
  // samplers
  llama_sampler_chain_init: [P, ['llama_sampler_chain_params']],
  llama_sampler_chain_add: ['void', [P, P]],
  llama_sampler_chain_n: ['int32_t', [P]],
  llama_sampler_chain_get: [P, [P, 'int32_t']],
  llama_sampler_init_greedy: [P, []],
  llama_sampler_init_dist: [P, ['uint32_t']],
  llama_sampler_init_top_k: [P, ['int32_t']],
  llama_sampler_init_top_p: [P, ['float', 'size_t']],
  llama_sampler_init_min_p: [P, ['float', 'size_t']],
  llama_sampler_init_typical: [P, ['float', 'size_t']],
  llama_sampler_init_top_n_sigma: [P, ['float']],
  llama_sampler_init_temp: [P, ['float']],
  llama_sampler_init_penalties: [P, ['int32_t', 'int32_t', 'float', 'float', 'float']],
  llama_sampler_init_logit_bias: [P, ['int32_t', 'int32_t', 'llama_logit_bias *']],
  llama_sampler_sample: ['int32_t', [P, P, 'int32_t']],
  llama_sampler_accept: ['void', [P, 'int32_t']],
  llama_sampler_apply: ['void', [P, 'llama_token_data_array *']],
  llama_sampler_init_grammar: [P, [P, 'const char *', 'const char *']],
  llama_sampler_reset: ['void', [P]],
  llama_sampler_free: ['void', [P]],
  llama_sampler_get_seed: ['uint32_t', [P]],
  llama_sampler_name: ['const char *', [P]],
};

// ggml (libggml / libggml-base): the backend registry, for device listing and
// for loading the backends of a build made with GGML_BACKEND_DL.
const GGML_FUNCTIONS = {
  ggml_backend_load_all_from_path: ['void', ['const char *']],
  ggml_backend_load: [P, ['const char *']],
  ggml_backend_reg_count: ['size_t', []],
  ggml_backend_reg_get: [P, ['size_t']],
  ggml_backend_reg_name: ['const char *', [P]],
  ggml_backend_dev_count: ['size_t', []],
  ggml_backend_dev_get: [P, ['size_t']],
  ggml_backend_dev_name: ['const char *', [P]],
  ggml_backend_dev_description: ['const char *', [P]],
  ggml_backend_dev_type: ['int', [P]],
  ggml_backend_dev_by_name: [P, ['const char *']],
  ggml_backend_dev_memory: ['void', [P, '_Out_ size_t *', '_Out_ size_t *']],
  ggml_backend_dev_backend_reg: [P, [P]],
  ggml_backend_reg_dev_count: ['size_t', [P]],
  ggml_backend_reg_dev_get: [P, [P, 'size_t']],
  ggml_backend_register: ['void', [P]],
};

// ggml-rpc (libggml-rpc, from ggml-rpc.h): remote devices and the RPC server.
// Optional: a library built with --no-rpc has none of these.
const RPC_FUNCTIONS = {
  ggml_backend_rpc_add_server: [P, ['const char *']],
  ggml_backend_rpc_start_server: ['void', ['const char *', 'const char *', 'size_t', 'size_t', 'void **']],
};
const RPC_NAMES = process.platform === 'win32' ? ['ggml-rpc.dll']
  : process.platform === 'darwin' ? ['libggml-rpc.dylib', 'libggml-rpc.so'] : ['libggml-rpc.so'];

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
  STRUCTS,
  structTypes,
  PINNED_COMMIT,
  LibraryLoadError,
  llama_progress_callback,
  load,
  takeErrors,
  setLogHandler,
};
