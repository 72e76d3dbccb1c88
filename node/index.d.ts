// Type definitions for mullama (Node.js): fast local LLM inference over llama.cpp's libllama.
//
// They compile wherever the user's code does: from `--target es2020` up, with or
// without @types/node (TypeScript 6+ no longer includes it unless listed in `types`).
// `Symbol.dispose` comes from the lib referenced below, whatever the user's `lib`;
// Buffer and AbortSignal are taken from the globals when some lib declares them.
/// <reference lib="esnext.disposable" />

/** Node's Buffer where @types/node is loaded; otherwise the Uint8Array that Buffer extends. */
type MullamaBuffer = typeof globalThis extends { Buffer: { from(data: string): infer B } } ? B : Uint8Array;

/** The AbortSignal of Node or the DOM, whichever the program's types declare. */
type MullamaAbortSignal = typeof globalThis extends { AbortSignal: { prototype: infer S } }
  ? S
  : { readonly aborted: boolean; readonly reason: unknown };

/** Options of JsModel.load. */
export interface JsModelParams {
  /** Layers to offload to the GPU (0 = CPU only, -1 = all). Default 0. */
  nGpuLayers?: number;
  /** Memory-map the file. Default true. */
  useMmap?: boolean;
  /** Lock the model in memory (no swapping). Default false. */
  useMlock?: boolean;
  /** Load only the vocabulary (tokenization only). Default false. */
  vocabOnly?: boolean;
  /** Called with the fraction loaded (0..1); returning false cancels the load. */
  progressCallback?: (fraction: number) => boolean | void;
  /**
   * 'host:port' of `mullama rpc-server` processes: their devices come first, then this host's GPUs,
   * and the offloaded layers are spread over all of them. An unreachable server throws RPCError.
   */
  rpcServers?: string[];
  /** The share of each of those devices, in that order (default: by free memory). */
  tensorSplit?: number[];
  /** 'layer' (whole layers per device, the default), 'row' (rows of each matrix, CUDA only) or 'none' (all on mainGpu). */
  splitMode?: 'none' | 'layer' | 'row';
  /** The device (index into the placement) that holds everything with splitMode 'none'. Default 0. */
  mainGpu?: number;
}

/** Options of the JsContext constructor. */
export interface JsContextParams {
  /** Context size in tokens (0 = the model's training context). Default 0. */
  nCtx?: number;
  /** Most tokens evaluated in one native call. Default 2048. */
  nBatch?: number;
  /** CPU threads (0 = every CPU this process may use). Default 0. */
  nThreads?: number;
  /** Embeddings mode. Default false. */
  embeddings?: boolean;
  /** Micro-batch size (0 = min(nBatch, 512), or nBatch with embeddings). */
  nUbatch?: number;
  /** Sequences the context holds at once. Default 1. */
  nSeqMax?: number;
  /** One KV cache shared by all sequences (llama.cpp's kv_unified). Default: nSeqMax > 1. */
  kvUnified?: boolean | null;
  /** Pooling of embeddings, overriding the model's. */
  pooling?: 'none' | 'mean' | 'cls' | 'last';
  /**
   * Where sampler chains run (beyond the spec): 'cpu' on the host (over the top-k candidates),
   * 'device' inside the decode graph (llama_set_sampler), 'auto' (default) the device where the
   * model's output layer is on a GPU, except plain greedy.
   */
  sampling?: 'auto' | 'cpu' | 'device';
  /** The type the KV cache stores keys as. Default 'f16'. */
  typeK?: JsKvCacheType;
  /**
   * The type the KV cache stores values as. Default 'f16'. A quantized type needs flash attention:
   * with flashAttn false it throws an Error.
   */
  typeV?: JsKvCacheType;
  /** Flash attention: true, false or 'auto' (default: llama.cpp decides per device). */
  flashAttn?: 'auto' | boolean;
  /**
   * Speculative decoding: a drafter whose guesses are decoded with each sampled token and kept
   * while the tokens sampled from them agree. Output is unchanged (greedy token for token, a seeded
   * sampler draw for draw); with sampling 'device' it throws a RangeError.
   */
  draft?: DraftModel | PromptLookup | null;
  /**
   * A multimodal projector loaded for this context's model: generation may then take `media`
   * (images, or sounds for audio models) for the prompt's markers.
   */
  projector?: Projector | null;
}

/** The types a KV cache may store keys and values as. */
export type JsKvCacheType = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0' | 'q4_1' | 'q5_0' | 'q5_1' | 'iq4_nl';

/** Sampling parameters; every field is optional and validated. */
export interface JsSamplerParams {
  /** Default 0.8 (0.0 = deterministic). */
  temperature?: number;
  /** Default 40 (0 = disabled). */
  topK?: number;
  /** Default 0.95 (1.0 = disabled). */
  topP?: number;
  /** Default 0.05 (0.0 = disabled). */
  minP?: number;
  /** Default 1.0 (1.0 = disabled). */
  typicalP?: number;
  /** Default 1.1 (1.0 = disabled). */
  penaltyRepeat?: number;
  /** Default 0.0 (0.0 = disabled). */
  penaltyFreq?: number;
  /** Default 0.0 (0.0 = disabled). */
  penaltyPresent?: number;
  /** Default 64 (-1 = the whole context). */
  penaltyLastN?: number;
  /** Default 0 (0 = a new random seed for every generation). */
  seed?: number;
}

/** Options of the generation methods (an extension of the documented API). */
export interface JsGenerateOptions {
  /** Stop before the first of these strings (which is not included). */
  stop?: string | string[];
  /** Keep generating past end-of-generation tokens. Default false. */
  ignoreEos?: boolean;
  /** Cancels the async methods (generateAsync, completeAsync, ...); not accepted by the synchronous ones. */
  signal?: MullamaAbortSignal;
  /**
   * Constrain the text to this grammar's language; generation then ends when the text is complete,
   * and throws GrammarIncompleteError if maxTokens runs out first. Sampled on the host.
   */
  grammar?: Grammar;
  /**
   * Images or sounds for the prompt's markers (projector.marker), one marker each, in order; the
   * context needs a `projector`, the prompt must be text. The cache keeps them like tokens: a
   * follow-up prompt that starts with the same text and media does not encode them again.
   */
  media?: JsMediaSource[];
}

/**
 * A medium: a path or the bytes of an image file (PNG, JPEG, BMP, GIF, ...) or a sound file (WAV, MP3,
 * FLAC); raw RGB pixels with their size; audio samples at projector.audioSampleRate; or a Media.
 */
export type JsMediaSource = string | Uint8Array | ArrayBuffer | { rgb: Uint8Array; width: number; height: number }
  | Float32Array | Media;

/** Options of Projector.load. */
export interface JsProjectorOptions {
  /**
   * Run the encoder on the GPU. Default: where the model's output layer is (the GPU when all its layers
   * are there). true without a GPU throws a RangeError.
   */
  useGpu?: boolean | null;
  /** CPU threads for the encoder (default: all usable). */
  nThreads?: number | null;
  /** Fewest embeddings per image, for dynamic-resolution models (default: the file's). */
  imageMinTokens?: number | null;
  /** Most embeddings per image, for dynamic-resolution models (default: the file's). */
  imageMaxTokens?: number | null;
  /** Images with more pixels are refused before they are decoded (default 2**26). */
  maxImagePixels?: number;
  /** Media files larger than this are refused before they are read (default 2**28 bytes). */
  maxMediaBytes?: number;
  /** Run one encode at load time. Default false. */
  warmup?: boolean;
}

/** A multimodal projector (mmproj GGUF) for one model: images (and sounds) in its prompts. */
export class Projector implements JsDisposable {
  /**
   * Load it for `model`. A projector for another text model throws a RangeError naming both embedding
   * widths; a missing or invalid file an Error.
   */
  static load(path: string, model: JsModel, options?: JsProjectorOptions): Projector;
  readonly model: JsModel;
  readonly path: string;
  readonly useGpu: boolean;
  readonly supportsVision: boolean;
  readonly supportsAudio: boolean;
  /** The sample rate (Hz) audio must have, or null without audio input. */
  readonly audioSampleRate: number | null;
  /** True when media take fewer positions than embeddings (M-RoPE models). */
  readonly usesMrope: boolean;
  /** The text that marks where each medium goes in a prompt ('<__media__>'). */
  readonly marker: string;
  maxImagePixels: number;
  maxMediaBytes: number;
  /** `source` decoded (and checked) once, to use in any number of prompts. */
  media(source: JsMediaSource): Media;
  /** Split a prompt with one marker per medium into libmtmd's chunks of text tokens and media. */
  tokenize(prompt: string, media: JsMediaSource[], options?: { addSpecial?: boolean }): MediaPrompt;
  /**
   * model.applyChatTemplate for messages whose content may be an array of text and media parts
   * (see splitChatMedia): the prompt with a marker per medium, and the media in order.
   */
  applyChatTemplate(messages: JsChatMessageWithMedia[], addGenerationPrompt?: boolean, template?: string):
    { prompt: string; media: JsMediaSource[] };
  readonly closed: boolean;
  close(): void;
  dispose(): void;
  [Symbol.dispose](): void;
}

/** One decoded image or sound. */
export class Media implements JsDisposable {
  readonly projector: Projector;
  readonly kind: 'image' | 'audio';
  /** Pixels, or samples for a sound. */
  readonly width: number;
  /** Pixels; 1 for a sound. */
  readonly height: number;
  /** A SHA-256 of what it was made from: a context's cache recognises the same medium by it. */
  readonly id: string;
  /** The decoded size: 3 bytes per pixel, or 4 per sample. */
  readonly nBytes: number;
  readonly closed: boolean;
  close(): void;
  dispose(): void;
  [Symbol.dispose](): void;
}

/** One piece of a prompt as libmtmd split it. */
export interface JsMediaChunk {
  readonly kind: 'text' | 'image' | 'audio';
  /** Text tokens, or the embeddings a medium becomes. */
  readonly nTokens: number;
  /** Positions it takes in the sequence (fewer than nTokens under M-RoPE). */
  readonly nPos: number;
  /** A text chunk's token ids; empty for media. */
  readonly tokens: readonly number[];
  /** The medium's id (Media.id) for a media chunk, else null. */
  readonly id: string | null;
}

/** A prompt with media, split by libmtmd (projector.tokenize()). */
export class MediaPrompt implements JsDisposable {
  readonly projector: Projector;
  readonly chunks: readonly JsMediaChunk[];
  /** One id per position: text token ids, and a negative id per position of each medium. */
  readonly cacheIds: number[];
  readonly nTokens: number;
  readonly nPos: number;
  readonly textTokens: number[];
  readonly closed: boolean;
  close(): void;
  dispose(): void;
  [Symbol.dispose](): void;
}

/** A content part of a chat message with media. */
export type JsContentPart =
  | { type: 'text'; text: string }
  | { type: 'image'; image: JsMediaSource }
  | { type: 'image_url'; image_url: { url: string } | string }
  | { type: 'audio'; audio: JsMediaSource }
  | { type: 'input_audio'; input_audio: { data: string; format?: string } };

/** A chat message whose content may be an array of text and media parts. */
export interface JsChatMessageWithMedia {
  role: string;
  content: string | JsContentPart[];
  [key: string]: unknown;
}

/**
 * Messages whose content is an array of parts, as text with `marker` where each medium was, and the
 * media in order. OpenAI's image_url must be a data: URL (a remote URL throws a RangeError).
 */
export function splitChatMedia(messages: JsChatMessageWithMedia[], marker: string):
  { messages: Array<{ role: string; content: string; [key: string]: unknown }>; media: JsMediaSource[] };

/** Options of the completion methods: those of generation, and `logprobs`. */
export interface JsCompleteOptions extends JsGenerateOptions {
  /**
   * Report each token's log-probability and this many (0 to 20) most probable tokens at its position.
   * Default 0: no log-probabilities (`logprobs` of the result is null). Such a completion samples on the
   * host; with sampling 'device' it throws. A non-integer is a TypeError, out of range a RangeError.
   */
  logprobs?: number;
}

/** One of the most probable tokens at a position. */
export interface JsTopLogprob {
  readonly token: number;
  /** Its text (special tokens rendered); a token that is part of a UTF-8 character shows U+FFFD. */
  readonly piece: string;
  /** Its exact bytes. */
  readonly bytes: MullamaBuffer;
  /** Its log-probability: the model's log-softmax of the logits, before any sampler. */
  readonly logprob: number;
}

/** A generated token, its log-probability, and the k most probable tokens at its position. */
export interface JsTokenLogprob extends JsTopLogprob {
  /** The k most probable tokens, most probable first (ties: lowest id first). */
  readonly top: readonly JsTopLogprob[];
}

/** Why a completion ended: an end-of-generation token or a stop string, or maxTokens. */
export type JsFinishReason = 'stop' | 'length';

/** A whole completion: its text, the tokens it sampled, and why it ended. */
export interface JsCompletion {
  readonly text: string;
  /**
   * The sampled tokens, without an end-of-generation token that ended the text (a token whose text
   * completed a stop string is in them).
   */
  readonly tokens: number[];
  readonly finishReason: JsFinishReason;
  /** One entry per token of `tokens` with options.logprobs, else null. */
  readonly logprobs: JsTokenLogprob[] | null;
}

/**
 * One step of a streamed completion: one token and the text released with it (possibly empty, or
 * holding text of earlier tokens held back until now). The last chunk has finishReason (null before)
 * and may carry no token. Joined, the chunks' texts and tokens are the completion's.
 */
export interface JsCompletionChunk {
  readonly text: string;
  readonly tokens: number[];
  /** The entries of this chunk's tokens with options.logprobs, else null. */
  readonly logprobs: JsTokenLogprob[] | null;
  readonly finishReason: JsFinishReason | null;
}

/** Options of the embedding methods. */
export interface JsEmbedOptions {
  /** Cut texts longer than nCtx tokens instead of throwing. Default false. */
  truncate?: boolean;
}

/** Options of the JsEmbeddingGenerator constructor beyond the documented ones. */
export interface JsEmbeddingGeneratorOptions {
  /** Tokens packed into one native call (0 = 128). */
  nBatch?: number;
  /** CPU threads (0 = every CPU this process may use). */
  nThreads?: number;
}

/** A chat message: a [role, content] pair, or an object with role and content. */
export type JsChatMessage = [string, string] | { role: string; content: string; [extra: string]: unknown };

/** A compute device of the loaded library. */
export interface JsDevice {
  name: string;
  description: string;
  type: 'cpu' | 'gpu' | 'igpu' | 'accel' | 'unknown';
  /** Free memory in bytes (null for an RPC server that cannot be reached). */
  memoryFree: number | null;
  /** Total memory in bytes (null for an RPC server that cannot be reached). */
  memoryTotal: number | null;
  /** 'host:port' of the RPC server the device is on; null for a local device. */
  endpoint: string | null;
}

/** A native object released by close() (or `using`), or by garbage collection otherwise. */
export interface JsDisposable {
  /** True once close() was called. */
  readonly closed: boolean;
  /** Release the native resources now; calling it again does nothing. */
  close(): void;
  /** Alias of close(). */
  dispose(): void;
  [Symbol.dispose](): void;
}

export class JsModel implements JsDisposable {
  private constructor();
  /** Load a model from a GGUF file; throws Error if it cannot be loaded or is invalid. */
  static load(path: string, params?: JsModelParams): JsModel;
  /** The RPC endpoints this model was placed on (empty for a local model). */
  readonly rpcServers: readonly string[];
  /** Text to token ids. addBos defaults to true, special to false. */
  tokenize(text: string, addBos?: boolean, special?: boolean): number[];
  /** Token ids to text. Ids outside the vocabulary throw RangeError. */
  detokenize(tokens: number[] | Int32Array, removeSpecial?: boolean, unparseSpecial?: boolean): string;
  /**
   * Format messages with the model's chat template (rendered as Hugging Face
   * transformers renders it). template overrides it: a built-in template name
   * (see builtinChatTemplates()) or Jinja source.
   */
  applyChatTemplate(messages: JsChatMessage[], addGenerationPrompt?: boolean, template?: string): string;
  /** All metadata as strings. */
  metadata(): Record<string, string>;
  /** One metadata value, or null if absent. */
  meta(key: string): string | null;
  /** True for end-of-generation tokens. */
  tokenIsEog(token: number): boolean;
  /** The bytes of one token (may be part of a UTF-8 character). */
  tokenToPiece(token: number, special?: boolean): MullamaBuffer;
  /**
   * Load a LoRA adapter for this model (a GGUF from llama.cpp's convert_lora_to_gguf.py), usable by
   * any number of its contexts (JsContext.setLoras). Throws an Error for a missing or invalid file,
   * or with llama.cpp's reason for an adapter made for another model.
   */
  loadLora(path: string): LoraAdapter;
  readonly nCtxTrain: number;
  readonly nEmbd: number;
  readonly nVocab: number;
  readonly nLayer: number;
  readonly nHead: number;
  readonly tokenBos: number;
  readonly tokenEos: number;
  /** Model size in bytes. */
  readonly size: number;
  readonly nParams: number;
  readonly description: string;
  readonly architecture: string | null;
  readonly name: string | null;
  /** The file the model was loaded from. */
  readonly path: string;
  /** The model's own Jinja chat template, or null. */
  readonly chatTemplate: string | null;
  /** Whether the vocabulary asks for a BOS token at the start of a prompt. */
  readonly addBos: boolean;
  readonly closed: boolean;
  close(): void;
  dispose(): void;
  [Symbol.dispose](): void;
}

export class JsContext implements JsDisposable {
  constructor(model: JsModel, params?: JsContextParams);
  /** Generate up to maxTokens (default 100) tokens after a text prompt. */
  generate(prompt: string, maxTokens?: number, params?: JsSamplerParams, options?: JsGenerateOptions): string;
  /** Generate from token ids. */
  generateFromTokens(tokens: number[] | Int32Array, maxTokens?: number, params?: JsSamplerParams,
    options?: JsGenerateOptions): string;
  /** Generate and return the pieces, in order; joined they equal generate(). */
  generateStream(prompt: string | number[], maxTokens?: number, params?: JsSamplerParams,
    options?: JsGenerateOptions): string[];
  /** generate() with the native work on a worker thread; options.signal cancels it (AbortError). */
  generateAsync(prompt: string | number[], maxTokens?: number, params?: JsSamplerParams,
    options?: JsGenerateOptions): Promise<string>;
  /** Async iterator over the pieces, each as soon as its token is sampled. */
  generateStreamAsync(prompt: string | number[], maxTokens?: number, params?: JsSamplerParams,
    options?: JsGenerateOptions): AsyncGenerator<string, void, undefined>;
  /**
   * Like generate(), but returns the text, its tokens, why it ended and, with options.logprobs = k,
   * each token's log-probability and the k most probable tokens at its position (the model's own
   * distribution, before the samplers, as OpenAI reports it).
   */
  complete(prompt: string | number[], maxTokens?: number, params?: JsSamplerParams,
    options?: JsCompleteOptions): JsCompletion;
  /** complete() as its chunks, one per token; the last has finishReason. */
  completeStream(prompt: string | number[], maxTokens?: number, params?: JsSamplerParams,
    options?: JsCompleteOptions): JsCompletionChunk[];
  /** complete() with the native work on a worker thread; options.signal cancels it (AbortError). */
  completeAsync(prompt: string | number[], maxTokens?: number, params?: JsSamplerParams,
    options?: JsCompleteOptions): Promise<JsCompletion>;
  /** Async iterator over the chunks of completeStream(), each as soon as its token is sampled. */
  completeStreamAsync(prompt: string | number[], maxTokens?: number, params?: JsSamplerParams,
    options?: JsCompleteOptions): AsyncGenerator<JsCompletionChunk, void, undefined>;
  /** Append tokens to the context and evaluate them. */
  decode(tokens: number[] | Int32Array): void;
  /** Clear the KV cache (a new, unrelated conversation). */
  clearCache(): void;
  /** Embeddings of the last decoded tokens (needs embeddings: true), or null. */
  getEmbeddings(): number[] | null;
  /** Stop the async generation under way (it ends with an AbortError). */
  cancel(): void;
  /**
   * The state of this context (sequence 0): its KV cache, the tokens it holds and a fingerprint of the
   * model, in the format the Python binding reads and writes too.  Sampler state is not saved.
   * Throws while an async generation runs on this context.
   */
  stateBytes(): MullamaBuffer;
  /** Write stateBytes() to a file, atomically; the file is readable by its owner only. */
  saveState(path: string): void;
  /**
   * Replace the cache (sequence 0) with a saved state; the next prompt that starts with its tokens
   * evaluates only its last token again.  An Error for bytes that are not a state, truncated,
   * corrupted or from another model; a ContextFullError when it holds more tokens than nCtx; the
   * context stays usable after any error.
   */
  loadStateBytes(data: Uint8Array): void;
  /** Load a state file written by saveState() (errors as for loadStateBytes()). */
  loadState(path: string): void;
  /**
   * Apply these LoRA adapters (with their scales) from the next token on; null or empty: none. Scale 0
   * leaves an adapter out. A prompt is evaluated again, not taken from the cache, when the cache was
   * made with other adapters. TypeError for a wrong type, RangeError for a non-finite scale, Error for
   * a closed adapter or one loaded for another model.
   */
  setLoras(loras: JsLoras): void;
  /** The LoRA adapters this context applies, with their scales (a new Map; scale 0 ones left out). */
  readonly loras: Map<LoraAdapter, number>;
  readonly nCtx: number;
  readonly nBatch: number;
  readonly nThreads: number;
  /** The tokens the KV cache holds, in order. */
  readonly tokens: number[];
  /** How many tokens the KV cache holds. */
  readonly nPast: number;
  /** Prompt tokens evaluated by the last generation (the rest came from the cache). */
  readonly lastPromptEvaluated: number;
  /** Where sampler chains run: 'auto', 'cpu' or 'device'. */
  readonly sampling: 'auto' | 'cpu' | 'device';
  /** The type the KV cache stores keys as. */
  readonly typeK: JsKvCacheType;
  /** The type the KV cache stores values as. */
  readonly typeV: JsKvCacheType;
  /** The memory the KV cache takes in bytes: nCtx cells of every layer's keys and values (0 without one). */
  readonly kvBytes: number;
  /** The drafter this context was made with (the draft option), or null. */
  readonly draft: DraftModel | PromptLookup | null;
  /** What drafting did: tokens drafted, drafts accepted (each saved a decode), and the decodes run. */
  readonly draftStats: { drafted: number; accepted: number; decodes: number };
  readonly model: JsModel;
  readonly closed: boolean;
  close(): void;
  dispose(): void;
  [Symbol.dispose](): void;
}

export class JsEmbeddingGenerator {
  constructor(model: JsModel, nCtx?: number, normalize?: boolean, options?: JsEmbeddingGeneratorOptions);
  /** One text to a vector of nEmbd numbers. */
  embed(text: string, options?: JsEmbedOptions): number[];
  /** Many texts to one vector each, packed into few native calls. */
  embedBatch(texts: string[], options?: JsEmbedOptions): number[][];
  /** Many texts to one Float32Array of texts.length * nEmbd values, row after row. */
  embedMatrix(texts: string[], options?: JsEmbedOptions): Float32Array;
  /** Texts already tokenized (each non-empty, at most maxTokens ids of this model), as embedMatrix embeds them. */
  embedTokens(tokenLists: Array<number[] | Int32Array>): Float32Array;
  /** The embedding model. */
  readonly model: JsModel;
  readonly nEmbd: number;
  /** The longest text, in tokens, embedded without truncation. */
  readonly maxTokens: number;
  readonly context: JsContext;
  close(): void;
  dispose(): void;
  [Symbol.dispose](): void;
}

/**
 * A LoRA adapter loaded for one model (JsModel.loadLora). Any number of the model's contexts may apply
 * it; closed while a context still applies it, it is freed once none does (and always before its model).
 */
export class LoraAdapter implements JsDisposable {
  /** The same as model.loadLora(path). */
  constructor(model: JsModel, path: string);
  /** The file it was loaded from. */
  readonly path: string;
  /** The model it was loaded for. */
  readonly model: JsModel;
  /** Its lora_alpha (llama.cpp scales its product by alpha / rank), or null if the file does not say. */
  readonly alpha: number | null;
  readonly closed: boolean;
  close(): void;
  dispose(): void;
  [Symbol.dispose](): void;
}

/** Drafts by copying from the text so far (speculative decoding without a second model). */
export class PromptLookup {
  /**
   * Up to draftMax (10) tokens that followed the last earlier occurrence of the text's final n (3)
   * tokens, then n - 1, down to nMin (by default n: whole n-grams only).
   */
  constructor(options?: { n?: number; draftMax?: number; nMin?: number });
  readonly n: number;
  readonly nMin: number;
  readonly draftMax: number;
}

/** Drafts with a smaller model of the same vocabulary (otherwise the context throws a RangeError). */
export class DraftModel {
  /** Its greedy tokens, up to draftMax (16), while each is at least pMin (0.75) likely. */
  constructor(model: JsModel, options?: { draftMax?: number; pMin?: number });
  readonly model: JsModel;
  readonly draftMax: number;
  readonly pMin: number;
}

/**
 * A context's LoRA adapters: a Map of adapter to scale, or [adapter, scale] pairs; null (or empty) for
 * none.
 */
export type JsLoras = ReadonlyMap<LoraAdapter, number> | ReadonlyArray<readonly [LoraAdapter, number]> | null | undefined;

/** The tokens do not fit in the context window. */
export class ContextFullError extends RangeError {}

/** An async generation was stopped by cancel() or an AbortSignal (name 'AbortError'). */
export class GenerationCancelledError extends Error {
  readonly code: 'ABORT_ERR';
}

/** libllama could not be found or loaded, or was built from another llama.cpp. */
export class LibraryLoadError extends Error {}

/** An RPC server is unreachable, refused the connection, is busy, answered wrongly or went away; names the endpoint. */
export class RPCError extends Error {}

/** A GBNF grammar (llama.cpp's format), checked by llama.cpp's parser when it is created. */
export class Grammar {
  /** Throws an Error naming the line and column of a malformed grammar. */
  constructor(gbnf: string, root?: string);
  /**
   * JSON text valid under a JSON Schema (the keywords mullama's Python converter supports; any other
   * constraining keyword throws an Error naming it).
   */
  static fromJsonSchema(schema: object | boolean): Grammar;
  /** Any one JSON value. */
  static json(): Grammar;
  readonly text: string;
  readonly root: string;
}

/** Generation ran out of maxTokens (or the context) before the grammar's text was complete. */
export class GrammarIncompleteError extends Error {
  /** What was generated (not a whole sentence of the grammar). */
  readonly text: string;
}

export function samplerParamsGreedy(): JsSamplerParams;
export function samplerParamsCreative(): JsSamplerParams;
export function samplerParamsPrecise(): JsSamplerParams;
/** Cosine similarity; throws Error if the vectors have different lengths; 0 for a zero vector. */
export function cosineSimilarity(a: number[] | Float32Array, b: number[] | Float32Array): number;
export function backendInit(): void;
export function backendFree(): void;
export function supportsGpuOffload(): boolean;
export function systemInfo(): string;
export function maxDevices(): number;
export function version(): string;
/** The compute devices of the loaded library. */
export function devices(): JsDevice[];
/** Names of llama.cpp's built-in chat templates. */
export function builtinChatTemplates(): string[];
/** Receive llama.cpp's log lines (silent by default); null to stop. */
export function setLogHandler(handler: ((level: 'debug' | 'info' | 'warn' | 'error', line: string) => void) | null): void;
