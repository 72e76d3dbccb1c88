'use strict';
// mullama: fast local LLM inference over llama.cpp's libllama, from Node.js.
//
//   const { JsModel, JsContext } = require('mullama');
//   const model = JsModel.load('model.gguf');
//   const ctx = new JsContext(model, { nCtx: 2048 });
//   console.log(ctx.generate('Once upon a time', 50));

const backend = require('./lib/_backend');
const { LibraryLoadError, setLogHandler } = require('./lib/_lib');
const { JsModel, builtinChatTemplates } = require('./lib/model');
const { JsContext, ContextFullError, GenerationCancelledError } = require('./lib/context');
const { JsEmbeddingGenerator, cosineSimilarity } = require('./lib/embedding');
const sampling = require('./lib/sampling');
const { RPCError } = require('./lib/rpc');
const { Grammar, GrammarIncompleteError } = require('./lib/grammar');
const { LoraAdapter } = require('./lib/lora');
const { DraftModel, PromptLookup } = require('./lib/speculative');
const { Projector, Media, MediaPrompt, splitChatMedia } = require('./lib/multimodal');

module.exports = {
  JsModel,
  JsContext,
  JsEmbeddingGenerator,
  ContextFullError,
  GenerationCancelledError,
  LibraryLoadError,
  RPCError,
  Grammar,
  GrammarIncompleteError,
  LoraAdapter,
  DraftModel,
  PromptLookup,
  Projector,
  Media,
  MediaPrompt,
  splitChatMedia,
  samplerParamsGreedy: sampling.samplerParamsGreedy,
  samplerParamsCreative: sampling.samplerParamsCreative,
  samplerParamsPrecise: sampling.samplerParamsPrecise,
  cosineSimilarity,
  backendInit: backend.backendInit,
  backendFree: backend.backendFree,
  supportsGpuOffload: backend.supportsGpuOffload,
  systemInfo: backend.systemInfo,
  maxDevices: backend.maxDevices,
  version: backend.version,
  devices: backend.devices,
  builtinChatTemplates,
  setLogHandler,
};
