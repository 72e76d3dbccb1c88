#!/usr/bin/env node
'use strict';
// Streams a chat answer to the terminal:  node chat.js MODEL.gguf "your question"
// Each piece is printed as soon as its token is sampled, with the native work
// on a worker thread (generateStreamAsync), so Ctrl-C and timers stay responsive.
const { JsModel, JsContext, samplerParamsPrecise } = require('..');

async function main() {
  const [modelPath, question = 'Write a haiku about llamas.'] = process.argv.slice(2);
  if (!modelPath) {
    console.error('usage: node chat.js MODEL.gguf [QUESTION]');
    process.exit(2);
  }
  const model = JsModel.load(modelPath);
  const ctx = new JsContext(model, { nCtx: 2048 });
  const prompt = model.applyChatTemplate([['user', question]]);
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  try {
    for await (const piece of ctx.generateStreamAsync(prompt, 256, samplerParamsPrecise(), { signal: ac.signal })) {
      process.stdout.write(piece);
    }
  } catch (e) {
    if (e.name !== 'AbortError') throw e;
  }
  process.stdout.write('\n');
  ctx.close();
  model.close();
}

main().catch((e) => {
  console.error(`chat.js: ${e.message}`);
  process.exit(1);
});
