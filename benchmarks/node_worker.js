#!/usr/bin/env node
'use strict';
// The Node.js worker of benchmarks/run.py: the same line protocol and the same
// measurements as its Python workers (pp, tg marks, TTFT), on mullama's Node
// binding.  --mode sync drives JsContext.generate's own step loop and marks
// each piece; --mode async times generateStreamAsync (each decode on a worker
// thread, awaited).
const path = require('node:path');
const fs = require('node:fs');

const PROTO = '@@BENCH ';
const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const mode = args.mode || 'sync';
const nCtx = Number(args['n-ctx']);
const nPrompt = Number(args['n-prompt']);
const threads = Number(args.threads);
const ngl = Number(args.ngl);

function emit(obj) {
  process.stdout.write(PROTO + JSON.stringify(obj) + '\n');
}

function rssKib(field = 'VmRSS') {
  const line = fs.readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith(`${field}:`));
  return line ? Number(line.split(/\s+/)[1]) : 0;
}

const now = () => Number(process.hrtime.bigint()) / 1e9;

const mullama = require(path.resolve(__dirname, '..', 'node'));
const { lib } = require(path.resolve(__dirname, '..', 'node', 'lib', '_backend'));

async function main() {
  const L = lib();
  const rss0 = rssKib();
  const t0 = now();
  const model = mullama.JsModel.load(args.model, { nGpuLayers: ngl });
  const tLoad = now() - t0;
  const rssLoad = rssKib();
  const ctx = new mullama.JsContext(model, { nCtx, nBatch: 2048, nThreads: threads });
  const rssCtx = rssKib();
  const greedy = mullama.samplerParamsGreedy();
  const bos = model.tokenBos;
  let seed = 1234; // any fixed tokens do: the speed does not depend on which
  const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed; };
  const toks = (bos >= 0 ? [bos] : []).concat(Array.from({ length: nPrompt - (bos >= 0 ? 1 : 0) },
    () => rand() % model.nVocab));
  const genPrompt = [bos >= 0 ? bos : toks[0]];

  const pp = () => {
    ctx.clearCache();
    const t = now();
    ctx.decode(toks);
    L.llama_synchronize(ctx.ptr());
    return now() - t;
  };

  const ttft = async () => {
    ctx.clearCache();
    const t = now();
    if (mode === 'async') {
      const it = ctx.generateStreamAsync(toks, 1, greedy, { ignoreEos: true });
      await it.next();
      const dt = now() - t;
      await it.return();
      return dt;
    }
    const steps = ctx._start(toks, 1, greedy, { ignoreEos: true }, false);
    let r = steps.next();
    while (!r.done) {
      if (typeof r.value === 'string') {
        const dt = now() - t;
        steps.return();
        return dt;
      }
      r = steps.next(ctx._run());
    }
    return now() - t;
  };

  const tg = async (nGen) => {
    ctx.clearCache();
    const held = ctx._tokens; // the array the loop appends to (read only, for the count)
    const marks = [[now(), 0]];
    if (mode === 'async') {
      for await (const _ of ctx.generateStreamAsync(genPrompt, nGen + 1, greedy, { ignoreEos: true })) {
        marks.push([now(), held.length]);
      }
    } else {
      // JsContext.generate's own driver (_drive), with a mark at each piece
      const steps = ctx._start(genPrompt, nGen + 1, greedy, { ignoreEos: true }, false);
      let r = steps.next();
      while (!r.done) {
        if (typeof r.value === 'string') {
          marks.push([now(), held.length]);
          r = steps.next();
        } else {
          r = steps.next(ctx._run());
        }
      }
    }
    marks.push([now(), held.length]);
    return marks;
  };

  pp();
  await tg(8);
  emit({ ready: true, tool: `mullama-node${mode === 'async' ? '-async' : ''}`, version: process.version,
    t_load_s: tLoad, rss_start_kib: rss0, rss_load_kib: rssLoad, rss_ctx_kib: rssCtx, n_ctx: ctx.nCtx });
  const rl = require('node:readline').createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line.trim() === 'rep') {
      pp();
      emit({ pp_s: pp(), tg_marks: await tg(Number(args['n-gen'])), ttft_s: await ttft() });
    } else if (line.trim() === 'quit') {
      emit({ rss_peak_kib: rssKib('VmHWM'), rss_end_kib: rssKib() });
      break;
    }
  }
  rl.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
