#!/usr/bin/env node
'use strict';
// The Node.js runner of benchmarks/embeddings.py: loads the model once, then
// embeds the texts (one JSON array in a file) each time a line "run" arrives,
// answering "done" — so the parent times the same work as for its in-process runners.
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const { JsModel, JsEmbeddingGenerator } = require(path.resolve(__dirname, '..', 'node'));

const [modelPath, textsFile, threads] = process.argv.slice(2);
const texts = JSON.parse(fs.readFileSync(textsFile, 'utf8'));
const gen = new JsEmbeddingGenerator(JsModel.load(modelPath), 512, true, { nThreads: Number(threads) });
process.stdout.write('ready\n');
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'run') {
    gen.embedMatrix(texts);
    process.stdout.write('done\n');
  } else {
    process.exit(0);
  }
});
