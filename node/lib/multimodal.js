'use strict';
// Images and audio in the prompt, through llama.cpp's multimodal library
// (libmtmd) (mirrors mullama/multimodal.py).
//
// A vision or audio model comes as two GGUF files: the text model, and a
// projector (mmproj) that turns an image or a sound into embeddings the text
// model reads in place of tokens.  Projector.load(path, model) loads the
// second; a prompt then carries one marker (projector.marker, '<__media__>')
// where each medium goes, and the `media` option gives them, in order.
//
// Everything that depends on the model family (resizing, slices, the text that
// frames them, how many embeddings an image becomes) is libmtmd's:
// projector.tokenize() asks it to split a prompt into chunks of text tokens
// and media, and a context evaluates a media chunk with libmtmd's helper.
// What is here is what a binding owes its callers: media from paths, bytes or
// typed arrays, checked before any decoder sees them (a header that claims
// 20000 x 20000 pixels is refused, not allocated), clear errors, and an
// identity per chunk so that a context's cache keeps an image across turns.

const crypto = require('node:crypto');
const fs = require('node:fs');
const koffi = require('koffi');
const _lib = require('./_lib');
const { lib, supportsGpuOffload } = require('./_backend');
const { usableCpus } = require('./_cpus');
const { NativeHandle } = require('./_handle');
const { checkFile } = require('./_gguf');
const { JsModel } = require('./model');
const v = require('./_validate');

const { C } = _lib;
// Images larger than this (width x height) are refused before they are decoded:
// decoding allocates 3 bytes per pixel whatever the file's size.
const DEFAULT_MAX_IMAGE_PIXELS = 2 ** 26; // 67 million pixels, e.g. 8192 x 8192
// Encoded media larger than this are refused before they are read.
const DEFAULT_MAX_MEDIA_BYTES = 2 ** 28; // 256 MiB
// A sound shorter than a tenth of a second is refused: libmtmd asserts (aborting the process) on sounds
// shorter than its preprocessing window, which depends on the model (2 samples for Whisper-style
// encoders, 2 hops of 160 samples for conformer ones).
const MIN_AUDIO_SECONDS = 0.1;
// What is accepted: the formats whose size the header gives away (so that a huge image is refused
// before stb_image allocates it), of those libmtmd's helper decodes (stb_image, miniaudio).
const IMAGE_FORMATS = ['PNG', 'JPEG', 'BMP', 'GIF'];
const AUDIO_FORMATS = ['WAV', 'MP3', 'FLAC'];
const KINDS = { [C.MTMD_INPUT_CHUNK_TYPE_TEXT]: 'text', [C.MTMD_INPUT_CHUNK_TYPE_IMAGE]: 'image',
  [C.MTMD_INPUT_CHUNK_TYPE_AUDIO]: 'audio' };
const PROJECTOR_OPTIONS = ['useGpu', 'nThreads', 'imageMinTokens', 'imageMaxTokens', 'maxImagePixels',
  'maxMediaBytes', 'warmup'];

/**
 * One decoded image or sound (a libmtmd bitmap), ready to go into a prompt.
 * Made by projector.media(); a prompt may use it any number of times.  `id`
 * is a SHA-256 of what it was made from (the file's bytes, or the pixels or
 * samples with their shape): a context's cache recognises the same medium by it.
 */
class Media extends NativeHandle {
  /** @internal */
  constructor(pointer, projector) {
    super();
    const M = projector._mtmd;
    this.projector = projector;
    this.kind = M.mtmd_bitmap_is_audio(pointer) ? 'audio' : 'image';
    this.width = M.mtmd_bitmap_get_nx(pointer); // pixels, or samples for a sound
    this.height = M.mtmd_bitmap_get_ny(pointer);
    this.id = M.mtmd_bitmap_get_id(pointer) || '';
    const nBytes = Number(M.mtmd_bitmap_get_n_bytes(pointer));
    this._attach(pointer, M.mtmd_bitmap_free, null, nBytes);
  }

  /** The decoded size: 3 bytes per pixel, or 4 per audio sample. */
  get nBytes() { return Number(this.projector._mtmd.mtmd_bitmap_get_n_bytes(this.ptr())); }

  toString() {
    if (this.closed) return 'Media(closed)';
    const size = this.kind === 'image' ? `${this.width}x${this.height}` : `${this.width} samples`;
    return `Media(${this.kind} ${size} id=${this.id.slice(0, 12)})`;
  }
}

/** A prompt with media, split by libmtmd into `chunks` (made by projector.tokenize()). */
class MediaPrompt extends NativeHandle {
  /** @internal */
  constructor(pointer, projector, media) {
    super();
    const M = projector._mtmd;
    this._attach(pointer, M.mtmd_input_chunks_free);
    this.projector = projector;
    this._media = media; // the bitmaps stay alive while their chunks may be evaluated
    const chunks = [];
    this._pointers = [];
    const n = Number(M.mtmd_input_chunks_size(pointer));
    for (let i = 0; i < n; i++) {
      const c = M.mtmd_input_chunks_get(pointer, i);
      const kind = KINDS[M.mtmd_input_chunk_get_type(c)] || 'unknown';
      if (kind === 'text') {
        const count = [0];
        const ids = M.mtmd_input_chunk_get_tokens_text(c, count);
        const tokens = Number(count[0]) ? Array.from(koffi.decode(ids, 'int32_t', Number(count[0]))) : [];
        if (tokens.some((t) => t < 0)) {
          this.close();
          throw new RangeError("the text model's vocabulary lacks special tokens that this projector's image "
            + 'template needs (libmtmd gave none for them): the projector is not for this model');
        }
        chunks.push(Object.freeze({ kind, nTokens: tokens.length, nPos: tokens.length, tokens, id: null }));
      } else {
        chunks.push(Object.freeze({ kind, nTokens: Number(M.mtmd_input_chunk_get_n_tokens(c)),
          nPos: M.mtmd_input_chunk_get_n_pos(c), tokens: [], id: M.mtmd_input_chunk_get_id(c) || null }));
      }
      this._pointers.push(c);
    }
    this.chunks = Object.freeze(chunks);
    this.cacheIds = cacheIds(this.chunks);
  }

  /** Text tokens and media embeddings, all chunks together. */
  get nTokens() { return this.chunks.reduce((a, c) => a + c.nTokens, 0); }

  /** Positions the prompt takes in a sequence (its length in a context's cache). */
  get nPos() { return this.chunks.reduce((a, c) => a + c.nPos, 0); }

  /** The text tokens alone, in order (what a repetition penalty sees of the prompt). */
  get textTokens() { return this.chunks.flatMap((c) => c.tokens); }

  /** [first position, chunk, native chunk pointer] for every chunk, in order. @internal */
  segments() {
    const out = [];
    let pos = 0;
    this.chunks.forEach((c, i) => {
      out.push([pos, c, this._pointers[i]]);
      pos += c.nPos;
    });
    return out;
  }

  toString() {
    return `MediaPrompt(${this.chunks.length} chunks [${this.chunks.map((c) => `${c.kind}:${c.nTokens}`).join(', ')}], `
      + `${this.nPos} positions)`;
  }
}

/**
 * One id per position: the text token ids, and for each position of a media
 * chunk a negative id derived from the medium, the chunk's ordinal among that
 * medium's chunks and its size, so that two prompts agree on a prefix exactly
 * where they hold the same media there (the same rule as Python's).
 */
function cacheIds(chunks) {
  const out = [];
  const seen = new Map();
  for (const c of chunks) {
    if (c.kind === 'text') {
      for (const t of c.tokens) out.push(t);
      continue;
    }
    const k = seen.get(c.id) || 0;
    seen.set(c.id, k + 1);
    const idText = c.id === null ? 'None' : c.id;
    const digest = crypto.createHash('sha256').update(`${c.kind}:${idText}:${k}:${c.nTokens}:${c.nPos}`).digest();
    const id = -1 - (digest.readUInt32LE(0) & 0x3FFFFFFF);
    for (let i = 0; i < c.nPos; i++) out.push(id);
  }
  return out;
}

class Projector extends NativeHandle {
  /**
   * Load the multimodal projector (mmproj GGUF) at `path` for `model`.
   * Options: useGpu (default: where the model's output layer is; true without
   * a GPU is a RangeError, never a quiet CPU run), nThreads, imageMinTokens /
   * imageMaxTokens (bounds on embeddings per image for dynamic-resolution
   * models), maxImagePixels and maxMediaBytes (larger media are refused before
   * they are decoded), warmup.  A projector made for another text model is a
   * RangeError naming both embedding widths.
   */
  static load(path, model, options = undefined) {
    if (!(model instanceof JsModel)) throw new TypeError(`model must be a JsModel, not ${v.typeName(model)}`);
    const o = v.options('options', options, PROJECTOR_OPTIONS);
    v.string('path', path);
    const st = checkFile(path, 'projector');
    if (o.useGpu !== undefined && o.useGpu !== null) v.boolean('useGpu', o.useGpu);
    const nThreads = o.nThreads === undefined || o.nThreads === null ? usableCpus()
      : v.integer('nThreads', o.nThreads, 1, 1024);
    const mins = o.imageMinTokens == null ? 0 : v.integer('imageMinTokens', o.imageMinTokens, 1, 2 ** 20);
    const maxs = o.imageMaxTokens == null ? 0 : v.integer('imageMaxTokens', o.imageMaxTokens, 1, 2 ** 20);
    if (mins && maxs && mins > maxs) throw new RangeError(`imageMinTokens=${mins} is above imageMaxTokens=${maxs}`);
    const maxImagePixels = v.integer('maxImagePixels', o.maxImagePixels ?? DEFAULT_MAX_IMAGE_PIXELS, 1);
    const maxMediaBytes = v.integer('maxMediaBytes', o.maxMediaBytes ?? DEFAULT_MAX_MEDIA_BYTES, 1);
    const warmup = v.boolean('warmup', o.warmup ?? false);
    const L = lib();
    const M = L.mtmd();
    const gpu = o.useGpu == null ? model._outputOnDevice : o.useGpu;
    if (gpu && !supportsGpuOffload()) {
      throw new RangeError(`useGpu=true, but the loaded library (${L.path}, ${L.buildInfo.backend || 'unknown'} build) `
        + 'sees no GPU');
    }
    const params = M.mtmd_context_params_default();
    params.use_gpu = Boolean(gpu);
    params.print_timings = false;
    params.n_threads = nThreads;
    params.warmup = warmup;
    if (mins) params.image_min_tokens = mins;
    if (maxs) params.image_max_tokens = maxs;
    _lib.takeErrors();
    const ptr = M.mtmd_init_from_file(path, model.ptr(), params);
    if (!ptr) {
      const why = _lib.takeErrors();
      if (why.includes('n_embd') || why.includes('mismatch')) {
        throw new RangeError(`${path} is not a projector for this model (${model.path}): ${why}`);
      }
      throw new Error(`Failed to load projector ${path}: ${why || 'libmtmd refused it'}`);
    }
    const self = new Projector();
    self._mtmd = M;
    self._model = model;
    self._path = path;
    self._useGpu = Boolean(gpu);
    self._queue = Promise.resolve(); // async encodes, one at a time
    self._inFlight = 0;
    self.maxImagePixels = maxImagePixels;
    self.maxMediaBytes = maxMediaBytes;
    self._attach(ptr, M.mtmd_free, model, st.size);
    return self;
  }

  /** The text model this projector feeds. */
  get model() { return this._model; }
  get path() { return this._path; }
  get useGpu() { return this._useGpu; }
  get supportsVision() { return this._mtmd.mtmd_support_vision(this.ptr()); }
  get supportsAudio() { return this._mtmd.mtmd_support_audio(this.ptr()); }
  /** The sample rate (Hz) audio must have, or null without audio input. */
  get audioSampleRate() {
    const rate = this._mtmd.mtmd_get_audio_sample_rate(this.ptr());
    return rate > 0 ? rate : null;
  }
  /** True when media take fewer positions than embeddings (M-RoPE models). */
  get usesMrope() { return this._mtmd.mtmd_decode_use_mrope(this.ptr()); }
  /** The text that marks where each medium goes in a prompt ('<__media__>'). */
  get marker() { return this._mtmd.mtmd_get_marker(this.ptr()) || ''; }

  /**
   * `source` as a Media: a path, or a Buffer / Uint8Array holding an image
   * file (PNG, JPEG, BMP, GIF...) or a sound file (WAV, MP3, FLAC; audio
   * models only); raw pixels as { rgb: Uint8Array, width, height } (3 bytes
   * per pixel, rows top to bottom); a Float32Array of audio samples at
   * audioSampleRate.  A Media is returned as is.  Anything that cannot be
   * decoded, or is too large, is a RangeError (a TypeError for a wrong type).
   */
  media(source) {
    this.ptr();
    if (source instanceof Media) {
      if (source.projector !== this) throw new RangeError('this Media was made by another Projector; make it again with this one');
      source.ptr();
      return source;
    }
    if (typeof source === 'string') return this._fromBytes(this._read(source), source);
    if (source instanceof Float32Array) return this._fromAudio(source);
    if (source instanceof Uint8Array || source instanceof ArrayBuffer) {
      return this._fromBytes(Buffer.from(source.buffer || source, source.byteOffset || 0, source.byteLength),
        'the given bytes');
    }
    if (source && typeof source === 'object' && 'rgb' in source) return this._fromPixels(source);
    throw new TypeError('a medium must be a path, a Buffer of an image or sound file, { rgb, width, height }, '
      + `a Float32Array of samples or a Media, not ${v.typeName(source)}`);
  }

  _read(path) {
    let st;
    try {
      st = fs.statSync(path);
    } catch (e) {
      if (e.code === 'ENOENT' || e.code === 'ENOTDIR') throw new RangeError(`media file not found: ${path}`);
      throw new RangeError(`cannot read media file ${path}: ${e.message}`);
    }
    if (st.isDirectory()) throw new RangeError(`${path} is a directory, not a media file`);
    if (st.size > this.maxMediaBytes) {
      throw new RangeError(`${path} has ${st.size} bytes, above maxMediaBytes=${this.maxMediaBytes}`);
    }
    return fs.readFileSync(path);
  }

  _fromBytes(data, what) {
    if (!data.length) throw new RangeError(`${what}: empty, not an image or sound`);
    if (data.length > this.maxMediaBytes) {
      throw new RangeError(`${what}: ${data.length} bytes, above maxMediaBytes=${this.maxMediaBytes}`);
    }
    const [fmt, size] = sniff(data);
    if (fmt === null) {
      throw new RangeError(`${what} is not a ${IMAGE_FORMATS.join(', ')} image`
        + (this.supportsAudio ? ` or a ${AUDIO_FORMATS.join(', ')} sound` : ''));
    }
    if (IMAGE_FORMATS.includes(fmt) && !size) {
      throw new RangeError(`${what}: its ${fmt} header is truncated or corrupt (no image size in it)`);
    }
    if (fmt === 'WEBP') {
      throw new RangeError(`${what} is a WebP image, which this build's libmtmd cannot decode (it needs ffmpeg); `
        + 'convert it to PNG or JPEG, or pass the pixels as { rgb, width, height }');
    }
    if (size) {
      const [w, h] = size;
      if (w <= 0 || h <= 0) throw new RangeError(`${what}: its ${fmt} header gives a size of ${w}x${h} pixels`);
      if (w * h > this.maxImagePixels) {
        throw new RangeError(`${what}: a ${w}x${h} ${fmt} image (${w * h} pixels) is above `
          + `maxImagePixels=${this.maxImagePixels}`);
      }
    }
    if (AUDIO_FORMATS.includes(fmt) && !this.supportsAudio) {
      throw new RangeError(`${what} is ${fmt} audio, but this projector takes no audio`);
    }
    const M = this._mtmd;
    _lib.takeErrors();
    const wrapper = M.mtmd_helper_bitmap_init_from_buf(this.ptr(), data, data.length, false,
      M.mtmd_helper_init_opt_default());
    if (!wrapper.bitmap) {
      const why = _lib.takeErrors();
      const known = fmt ? ` (${fmt}, possibly truncated or corrupt)` : '';
      throw new RangeError(`${what} could not be decoded as an image or sound${known}${why ? `: ${why}` : ''}; `
        + `images: ${IMAGE_FORMATS.join(', ')}${this.supportsAudio ? `; audio: ${AUDIO_FORMATS.join(', ')}` : ''}`);
    }
    return this._checkKind(new Media(wrapper.bitmap, this), what);
  }

  _fromPixels(source) {
    const { rgb, width, height } = source;
    if (!(rgb instanceof Uint8Array)) throw new TypeError(`rgb must be a Uint8Array, not ${v.typeName(rgb)}`);
    v.integer('width', width, 1);
    v.integer('height', height, 1);
    if (rgb.length !== width * height * 3) {
      throw new RangeError(`rgb holds ${rgb.length} bytes, but a ${width}x${height} RGB image needs ${width * height * 3}`);
    }
    if (width * height > this.maxImagePixels) {
      throw new RangeError(`a ${width}x${height} image (${width * height} pixels) is above maxImagePixels=${this.maxImagePixels}`);
    }
    const M = this._mtmd;
    const ptr = M.mtmd_bitmap_init(width, height, rgb);
    if (!ptr) throw new Error(`libmtmd could not make a bitmap of ${width}x${height} pixels`);
    const shape = `${height}x${width}x3`;
    // the same id as Python's for the same pixels: sha256("uint8:HxWx3:" + data)
    M.mtmd_bitmap_set_id(ptr, crypto.createHash('sha256').update(`uint8:${shape}:`).update(rgb).digest('hex'));
    return this._checkKind(new Media(ptr, this), `an image of ${width}x${height} pixels`);
  }

  _fromAudio(samples) {
    if (!this.supportsAudio) throw new RangeError('a Float32Array is audio, but this projector takes no audio');
    this._checkSamples(samples, `an audio array of ${samples.length} samples`);
    const M = this._mtmd;
    const ptr = M.mtmd_bitmap_init_from_audio(samples.length, samples);
    if (!ptr) throw new Error(`libmtmd could not make a bitmap of ${samples.length} samples`);
    const bytes = Buffer.from(samples.buffer, samples.byteOffset, samples.byteLength);
    M.mtmd_bitmap_set_id(ptr, crypto.createHash('sha256').update(`float32:${samples.length}:`).update(bytes).digest('hex'));
    return this._checkKind(new Media(ptr, this), `an array of ${samples.length} samples`);
  }

  _checkSamples(samples, what) {
    const rate = this.audioSampleRate || 16000;
    const least = Math.max(2, Math.floor(rate * MIN_AUDIO_SECONDS));
    if (samples.length < least) {
      throw new RangeError(`${what} is too short: at least ${least} samples (${MIN_AUDIO_SECONDS} s at ${rate} Hz) `
        + 'are needed');
    }
    if (!samples.every(Number.isFinite)) throw new RangeError(`${what} holds NaN or infinite samples`);
  }

  _checkKind(media, what) {
    if (media.kind === 'audio' && this.supportsAudio) {
      const M = this._mtmd;
      const p = media.ptr();
      const n = Math.floor(Number(M.mtmd_bitmap_get_n_bytes(p)) / 4);
      try { // a decoded file's samples: the same checks as an array's
        this._checkSamples(n ? koffi.decode(M.mtmd_bitmap_get_data(p), 'float', n) : new Float32Array(0), what);
      } catch (e) {
        media.close();
        throw e;
      }
    }
    if (media.kind === 'image' && !this.supportsVision) {
      media.close();
      throw new RangeError(`${what} is an image, but this projector takes audio only`);
    }
    if (media.kind === 'audio' && !this.supportsAudio) {
      media.close();
      throw new RangeError(`${what} is audio, but this projector takes no audio`);
    }
    return media;
  }

  /**
   * Split `prompt` (text with one marker per medium) into chunks of text
   * tokens and media, preprocessing each medium as the model expects.
   * addSpecial (default true) adds the model's BOS as tokenize(text, true) does.
   */
  tokenize(prompt, media, options = undefined) {
    if (typeof prompt !== 'string') throw new TypeError(`a prompt with media must be text, not ${v.typeName(prompt)}`);
    const o = v.options('options', options, ['addSpecial']);
    const addSpecial = v.boolean('addSpecial', o.addSpecial ?? true);
    if (!Array.isArray(media)) throw new TypeError(`media must be an array of media, not ${v.typeName(media)}`);
    const items = media.map((m) => this.media(m));
    const marker = this.marker;
    const nMarkers = prompt.split(marker).length - 1;
    if (nMarkers !== items.length) {
      throw new RangeError(`the prompt has ${nMarkers} media marker(s) (${JSON.stringify(marker)}) but ${items.length} `
        + `medi${items.length === 1 ? 'um was' : 'a were'} given: put one marker where each goes`);
    }
    const M = this._mtmd;
    const raw = Buffer.from(prompt, 'utf8');
    const chunks = M.mtmd_input_chunks_init();
    if (!chunks) throw new Error('libmtmd could not allocate a chunk list');
    _lib.takeErrors();
    // text is passed by its byte length: koffi copies the string for the call
    const text = { text: prompt, text_len: raw.length, add_special: addSpecial, parse_special: true };
    const rc = M.mtmd_tokenize(this.ptr(), chunks, text, items.length ? items.map((m) => m.ptr()) : null, items.length);
    if (rc !== 0) {
      const why = _lib.takeErrors();
      M.mtmd_input_chunks_free(chunks);
      throw new RangeError(`libmtmd could not prepare the media for this prompt (status ${rc})${why ? `: ${why}` : ''}`);
    }
    return new MediaPrompt(chunks, this, items);
  }

  /**
   * model.applyChatTemplate() for messages whose content may be an array of
   * text and media parts (see splitChatMedia): returns { prompt, media }, the
   * prompt with a marker where each medium goes, ready for
   * ctx.generate(prompt, n, params, { media }).
   */
  applyChatTemplate(messages, addGenerationPrompt = true, template = undefined) {
    const split = splitChatMedia(messages, this.marker);
    return { prompt: this._model.applyChatTemplate(split.messages, addGenerationPrompt, template), media: split.media };
  }

  /**
   * The native call that encodes one media chunk and decodes it into sequence `seq`. libmtmd encodes
   * one medium at a time per projector: the async calls queue (a worker thread runs each), and a
   * synchronous call while one runs throws. @internal
   */
  _evaluate(ctx, chunk, nPast, seq, nBatch) {
    if (this._inFlight) {
      throw new Error('this projector is encoding a medium for an async generation; await it, or use the async '
        + 'methods here too');
    }
    const out = [0];
    _lib.takeErrors();
    const rc = this._mtmd.mtmd_helper_eval_chunk_single(this.ptr(), ctx, chunk, nPast, seq, nBatch, false, out);
    return this._evaluated(rc, out[0]);
  }

  /** @internal */
  _evaluateAsync(ctx, chunk, nPast, seq, nBatch) {
    const run = () => new Promise((resolve, reject) => {
      const out = [0];
      _lib.takeErrors();
      this._inFlight += 1;
      this._mtmd.mtmd_helper_eval_chunk_single.async(this.ptr(), ctx, chunk, nPast, seq, nBatch, false, out,
        (err, rc) => {
          this._inFlight -= 1;
          if (err) reject(err);
          else {
            try {
              resolve(this._evaluated(rc, out[0]));
            } catch (e) {
              reject(e);
            }
          }
        });
    });
    const result = this._queue.then(run, run);
    this._queue = result.catch(() => {}); // the next waits for this one, whatever its outcome
    return result;
  }

  _evaluated(rc, newNPast) {
    if (rc !== 0) {
      const why = _lib.takeErrors();
      throw new Error(`libmtmd could not evaluate a media chunk (status ${rc})${why ? `: ${why}` : ''}`);
    }
    return newNPast;
  }

  toString() {
    if (this.closed) return 'Projector(closed)';
    const what = [['vision', this.supportsVision], ['audio', this.supportsAudio]].filter(([, ok]) => ok)
      .map(([k]) => k).join('+');
    return `Projector(${this._path} (${what}))`;
  }
}

// -- image headers ---------------------------------------------------------------
// Only the size is read, to refuse a huge image before a decoder allocates it.

/** [format, [width, height] or null] from a file's first bytes; [null, null] when unknown. @internal */
function sniff(b) {
  const starts = (sig) => b.length >= sig.length && sig.every((x, i) => b[i] === x);
  const ascii = (i, s) => b.length >= i + s.length && b.toString('latin1', i, i + s.length) === s;
  if (starts([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])) {
    return ['PNG', b.length >= 24 && ascii(12, 'IHDR') ? [b.readUInt32BE(16), b.readUInt32BE(20)] : null];
  }
  if (ascii(0, 'GIF87a') || ascii(0, 'GIF89a')) return ['GIF', b.length >= 10 ? [b.readUInt16LE(6), b.readUInt16LE(8)] : null];
  if (ascii(0, 'BM')) return ['BMP', b.length >= 26 ? [Math.abs(b.readInt32LE(18)), Math.abs(b.readInt32LE(22))] : null];
  if (starts([0xFF, 0xD8, 0xFF])) return ['JPEG', jpegSize(b)];
  if (ascii(0, 'RIFF') && ascii(8, 'WEBP')) return ['WEBP', null];
  if (ascii(0, 'RIFF') && ascii(8, 'WAVE')) return ['WAV', null];
  if (ascii(0, 'fLaC')) return ['FLAC', null];
  if (ascii(0, 'ID3') || (b.length > 1 && b[0] === 0xFF && (b[1] & 0xE0) === 0xE0)) return ['MP3', null];
  return [null, null];
}

function jpegSize(b) {
  let i = 2;
  while (i + 4 <= b.length) {
    if (b[i] !== 0xFF) return null;
    const marker = b[i + 1];
    if (marker === 0xFF) { // fill byte
      i += 1;
      continue;
    }
    if (marker === 0xD8 || marker === 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
      i += 2;
      continue;
    }
    const length = b.readUInt16BE(i + 2);
    if (marker >= 0xC0 && marker <= 0xCF && ![0xC4, 0xC8, 0xCC].includes(marker) && i + 9 <= b.length) {
      return [b.readUInt16BE(i + 7), b.readUInt16BE(i + 5)];
    }
    i += 2 + length;
  }
  return null;
}

// -- chat messages with media parts ---------------------------------------------------

/** The bytes of a data:image/...;base64,... (or audio) URL; RangeError for anything else. @internal */
function decodeDataUrl(url) {
  const comma = url.indexOf(',');
  const head = comma < 0 ? url : url.slice(0, comma);
  if (comma < 0 || !head.startsWith('data:')) throw new RangeError(`not a data URL: ${JSON.stringify(url.slice(0, 40))}`);
  if (!head.endsWith(';base64')) throw new RangeError(`a data URL must be base64-encoded (${JSON.stringify(head.slice(0, 40))})`);
  const kind = head.slice(5).split('/')[0];
  if (!['image', 'audio', 'application'].includes(kind)) {
    throw new RangeError(`a data URL of type ${JSON.stringify(head.slice(5, -7))} is neither an image nor audio`);
  }
  return strictBase64(url.slice(comma + 1), "the data URL's base64 is malformed");
}

function strictBase64(text, message) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) throw new RangeError(message);
  return Buffer.from(text, 'base64');
}

/**
 * Messages whose `content` is an array of parts, as text with `marker` where
 * each medium was, and the media in order.  Parts: { type: 'text', text };
 * images as { type: 'image', image: source } or OpenAI's { type: 'image_url',
 * image_url: { url: 'data:image/...;base64,...' } }; sounds as { type: 'audio',
 * audio: source } or OpenAI's { type: 'input_audio', input_audio: { data:
 * base64, format } }.  The parts of one message are joined without
 * separators.  A remote URL is a RangeError: fetch it first.
 */
function splitChatMedia(messages, marker) {
  if (!Array.isArray(messages)) throw new TypeError(`messages must be an array, not ${v.typeName(messages)}`);
  const out = [];
  const media = [];
  messages.forEach((m, i) => {
    const content = m && typeof m === 'object' && !Array.isArray(m) ? m.content : undefined;
    if (!Array.isArray(content)) {
      out.push(m);
      return;
    }
    const text = [];
    content.forEach((part, j) => {
      const where = `messages[${i}].content[${j}]`;
      if (!part || typeof part !== 'object') throw new TypeError(`${where} must be an object with a 'type'`);
      const kind = part.type;
      if (kind === 'text') {
        if (typeof part.text !== 'string') throw new TypeError(`${where}: a text part needs 'text' as a string`);
        text.push(part.text);
        return;
      }
      if (kind === 'image' || kind === 'audio') {
        if (part[kind] == null) throw new RangeError(`${where}: an ${kind} part needs '${kind}'`);
        media.push(part[kind]);
      } else if (kind === 'image_url') {
        const spec = part.image_url;
        const url = spec && typeof spec === 'object' ? spec.url : spec;
        if (typeof url !== 'string') throw new TypeError(`${where}: image_url needs a 'url' string`);
        if (/^https?:\/\//.test(url)) {
          throw new RangeError(`${where}: remote image URLs are not fetched here; download the image and pass its `
            + 'bytes or a data: URL');
        }
        if (!url.startsWith('data:')) throw new RangeError(`${where}: image_url must be a data: URL (data:image/png;base64,...)`);
        try {
          media.push(decodeDataUrl(url));
        } catch (e) {
          throw new RangeError(`${where}: ${e.message}`);
        }
      } else if (kind === 'input_audio') {
        const data = part.input_audio && typeof part.input_audio === 'object' ? part.input_audio.data : undefined;
        if (typeof data !== 'string') throw new TypeError(`${where}: input_audio needs 'data' as a base64 string`);
        try {
          media.push(data.startsWith('data:') ? decodeDataUrl(data) : strictBase64(data, 'not valid base64'));
        } catch (e) {
          throw new RangeError(`${where}: input_audio data is not valid base64 (${e.message})`);
        }
      } else {
        throw new RangeError(`${where}: unsupported content part type ${JSON.stringify(kind)} `
          + '(text, image, image_url, audio, input_audio)');
      }
      text.push(marker);
    });
    out.push({ ...m, content: text.join('') });
  });
  return { messages: out, media };
}

/**
 * The media option of a context: the prompt split into chunks, or null without media. Checked here
 * once: a projector, a text prompt, no drafter, and text after the last medium (libmtmd decodes a
 * medium without outputs: a prompt that ended with one would leave no logits to sample from; every
 * chat template's assistant prefix is text). @internal
 */
function mediaPrompt(prompt, media, projector, drafting) {
  if (media === undefined || media === null) return null;
  if (!projector) {
    throw new RangeError('media were given, but this context has no projector: make it with '
      + '{ projector: Projector.load(mmprojPath, model) }');
  }
  if (typeof prompt !== 'string') throw new TypeError('a prompt with media must be text (with a marker per medium), not token ids');
  if (drafting) {
    throw new RangeError('draft does not work with media yet: drafted tokens are checked against a cache that '
      + 'holds media the drafter cannot see; use a context without draft');
  }
  if (!prompt) throw new Error('the prompt is empty: there is nothing to generate from');
  const plan = projector.tokenize(prompt, media);
  if (plan.chunks.every((c) => c.kind === 'text')) {
    plan.close();
    return null; // no marker and no media: a plain prompt
  }
  if (plan.chunks[plan.chunks.length - 1].kind !== 'text') {
    plan.close();
    throw new RangeError("a prompt with media must end with text after its last marker (a chat template's "
      + 'assistant prefix does)');
  }
  return plan;
}

module.exports = {
  Projector, Media, MediaPrompt, splitChatMedia, decodeDataUrl, sniff, mediaPrompt, cacheIds,
  DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_MEDIA_BYTES, IMAGE_FORMATS, AUDIO_FORMATS,
};
