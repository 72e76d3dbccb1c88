'use strict';
// Exercise an installed mullama the way a new user would, and print what
// happened as JSON (the Node twin of smoke.py):
//   node smoke.js MODEL.gguf VOCAB_DIR [N_GPU_LAYERS]
// scripts/check_dist.py runs it on every platform (natively, under qemu or
// Wine) and compares the outputs: SmolLM2's greedy answer, twice, and every
// llama.cpp tokenizer vector in VOCAB_DIR.
const started = process.hrtime.bigint();
const fs = require('node:fs');
const path = require('node:path');
const { JsModel, JsContext, samplerParamsGreedy, systemInfo, devices } = require('mullama');

const seconds = () => Math.round(Number(process.hrtime.bigint() - started) / 1e6) / 1e3;
const SEP = '\n__ggml_vocab_test__\n';

function vocabCases(vocab) {
  const raw = fs.readFileSync(`${vocab}.inp`, 'utf8');
  const texts = [];
  let pos = 0;
  while (pos < raw.length) { // the split of llama.cpp's tests/test-tokenizer-0.cpp
    const next = raw.indexOf(SEP, pos);
    if (next < 0) {
      texts.push(raw.slice(pos));
      break;
    }
    texts.push(raw.slice(pos, next));
    pos = next + SEP.length;
  }
  const outs = fs.readFileSync(`${vocab}.out`, 'utf8').split('\n').filter((l, i, all) => i < all.length - 1 || l);
  return texts.map((t, i) => [t, outs[i].split(/\s+/).filter(Boolean).map(Number)]);
}

function main() {
  const [modelPath, vocabDir, ngl] = process.argv.slice(2);
  const report = { import_s: seconds(), runtime: `Node ${process.version}` };
  const model = JsModel.load(modelPath, { nGpuLayers: ngl === undefined ? 0 : Number(ngl) });
  const ctx = new JsContext(model, { nCtx: 512 });
  let prompt;
  try {
    prompt = model.applyChatTemplate([['user', 'Name three colours.']]);
  } catch {
    prompt = 'Name three colours:'; // a model without a chat template (random weights)
  }
  const t0 = seconds();
  const pieces = [];
  // ignoreEos: a model with random weights may well end at once
  for (const piece of ctx.generateStream(prompt, 24, samplerParamsGreedy(), { ignoreEos: true })) {
    if (pieces.length === 0) report.first_token_s = seconds();
    pieces.push(piece);
  }
  report.generate_s = Math.round((seconds() - t0) * 1e3) / 1e3;
  // again in a fresh context, so that the same kernels see the same input
  const again = new JsContext(model, { nCtx: 512 });
  report.greedy = [pieces.join(''), again.generate(prompt, 24, samplerParamsGreedy(), { ignoreEos: true })];
  again.close();
  report.devices = devices().map((d) => `${d.name} (${d.type})`);
  report.system_info = systemInfo().split('\n')[0];
  ctx.close();
  model.close();
  report.tokens = {};
  report.vocab_mismatches = [];
  // MULLAMA_SMOKE_SKIP: vocabularies left out (comma-separated), for a platform where one is known to fail
  const skip = new Set((process.env.MULLAMA_SMOKE_SKIP || '').split(',').filter(Boolean));
  report.skipped = [...skip];
  for (const file of fs.readdirSync(vocabDir).filter((f) => /^ggml-vocab-.*\.gguf$/.test(f) && !skip.has(f)).sort()) {
    const vocab = path.join(vocabDir, file);
    if (!fs.existsSync(`${vocab}.inp`)) continue;
    const m = JsModel.load(vocab, { vocabOnly: true });
    report.tokens[file] = vocabCases(vocab).map(([text, expected]) => {
      const ids = m.tokenize(text, false);
      if (ids.join(' ') !== expected.join(' ')) report.vocab_mismatches.push(`${file}: ${JSON.stringify(text.slice(0, 40))}`);
      return ids;
    });
    m.close();
  }
  // MULLAMA_SMOKE_REPORT: write the report to this file instead of standard output
  if (process.env.MULLAMA_SMOKE_REPORT) fs.writeFileSync(process.env.MULLAMA_SMOKE_REPORT, `${JSON.stringify(report)}\n`);
  else process.stdout.write(`${JSON.stringify(report)}\n`);
}

main();
