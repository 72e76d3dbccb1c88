'use strict';
// 300 load -> context -> generate -> close cycles do not leak (mirrors
// tests/test_reliability.py::test_300_cycles_do_not_leak).  One child Node
// process (with --expose-gc) runs three ways of ending a cycle, in turn:
//
//   close      close() the context and the model at the end of every cycle;
//   gc-cycle   drop them and let garbage collection free them, collecting
//              after every cycle (Python's reference counting frees them there);
//   unclosed   drop them and never collect by hand: only a turn of the event
//              loop per cycle, as a server gives between requests (the spec's
//              "a context per request, garbage collected after it returns").
//              V8 collects on its own because every handle reports its native
//              memory to it; the peak stays bounded.
//
// Each: 50 warm-up cycles (so that the allocator settles), collect, RSS, 300
// cycles, collect, RSS.  The memory in use (glibc's count; RSS where there is
// none) may not grow by 2% of the working set, the RSS measured inside a cycle
// with one model mapped and one context alive (measured in the close warm-up,
// as Python measures it); with glibc's count, RSS may not grow by 8%.
//
// "Collect" is gc() and a turn of the event loop (FinalizationRegistry
// callbacks run as tasks, after the collection), repeated until every model
// made so far has been freed: a context's registration holds its model, so
// the model is freed one collection after its last context.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { smollmPath } = require('./helpers/models');

const WARMUP = 50;
const CYCLES = 300;
const MODES = ['close', 'gc-cycle', 'unclosed'];

const CHILD = `
const { setImmediate: tick } = require('node:timers/promises');
const { JsModel, JsContext, samplerParamsGreedy } = require(${JSON.stringify(path.resolve(__dirname, '..'))});
const [modelPath, warmup, cycles] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const greedy = samplerParamsGreedy();
const rss = () => process.memoryUsage.rss();
// The registration records of every model made (they hold the pointer and the
// free function, not the model), to see that collection freed them all.
const models = [];

// glibc's own account of the heap, when there is one: what is in use, and what
// it keeps from the OS although freed (informational only).  malloc_trim
// gives the freed memory glibc keeps for reuse back to the OS before each
// reading of the base and end RSS, so that RSS says what is held, not how the
// allocator's free lists happened to be fragmented (seen: +4% RSS with the
// memory in use unchanged).
let mallinfo = () => null;
let trim = () => {};
try {
  if (process.report.getReport().header.glibcVersionRuntime) {
    const koffi = require(require.resolve('koffi', { paths: [${JSON.stringify(path.resolve(__dirname, '..'))}] }));
    const libc = koffi.load('libc.so.6');
    const names = ['arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
      'keepcost'];
    koffi.struct('mullama_leak_mallinfo2', Object.fromEntries(names.map((n) => [n, 'size_t'])));
    const f = libc.func('mullama_leak_mallinfo2 mallinfo2()');
    mallinfo = () => { const m = f(); return { inUse: Number(m.uordblks) + Number(m.hblkhd), freeKept: Number(m.fordblks) }; };
    const mallocTrim = libc.func('int malloc_trim(size_t pad)');
    trim = () => { mallocTrim(0); };
  }
} catch { /* another C library: no heap figures */ }

function cycle(explicit, probe) {
  const m = JsModel.load(modelPath);
  models.push(m._held);
  const c = new JsContext(m, { nCtx: 256, nThreads: 1 });
  c.generate('Hello', 2, greedy);
  if (probe) probe.push(rss()); // the working set: model mapped, context alive
  if (explicit) {
    c.close();
    m.close();
  }
}

async function collect() {
  for (let round = 0; round < 20; round++) {
    global.gc();
    await tick();
    await new Promise((resolve) => setTimeout(resolve, 1));
    if (round >= 1 && models.every((h) => h.freed)) return round + 1;
  }
  return -1;
}

(async () => {
  let working = 0;
  for (const mode of ${JSON.stringify(MODES)}) {
    const explicit = mode === 'close';
    const probes = [];
    for (let i = 0; i < warmup; i++) {
      cycle(explicit, probes);
      if (mode === 'gc-cycle') await collect();
      if (mode === 'unclosed') await tick();
    }
    if (explicit) working = Math.max(...probes);
    await collect();
    trim();
    const base = rss();
    const heapBase = mallinfo();
    let peak = 0;
    for (let i = 0; i < cycles; i++) {
      cycle(explicit);
      if (mode === 'gc-cycle') await collect();
      if (mode === 'unclosed') await tick();
      peak = Math.max(peak, rss());
    }
    const beforeCollect = mallinfo();
    const rounds = await collect();
    trim();
    const end = rss();
    console.log(JSON.stringify({ mode, working, base, end, peak, rounds, unfreedModels: models.filter((h) => !h.freed).length,
      heapBase, beforeCollect, heapEnd: mallinfo() }));
  }
})();
`;

let results = null;
let failure = null;

test.before(async () => {
  const child = spawn(process.execPath, ['--expose-gc', '-e', CHILD, smollmPath(), String(WARMUP), String(CYCLES)],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const [code, signal] = await new Promise((resolve) => child.on('close', (c, s) => resolve([c, s])));
  results = new Map(stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
    .map((d) => [d.mode, d]));
  if (code !== 0 || stderr !== '') failure = `the child failed (status ${code}, signal ${signal}): ${stderr.slice(-2000)}`;
});

const mb = (x) => `${(x / 1048576).toFixed(1)} MiB`;

for (const mode of MODES) {
  test(`${CYCLES} cycles do not leak: ${mode}`, (t) => {
    const r = results.get(mode);
    assert.ok(r, failure || `no result for ${mode}`);
    assert.equal(r.unfreedModels, 0, `${r.unfreedModels} models were never freed (${r.rounds} collection rounds)`);
    const growth = (r.end - r.base) / r.working;
    const heap = r.heapEnd ? `; malloc in use ${mb(r.heapBase.inUse)} -> ${mb(r.heapEnd.inUse)} `
      + `(${mb(r.beforeCollect.inUse)} before the last collection), freed but kept by malloc ${mb(r.heapEnd.freeKept)}`
      : '';
    const numbers = `${mode}: RSS grew ${(growth * 100).toFixed(2)}% of the working set `
      + `(${mb(r.base)} -> ${mb(r.end)}, working set ${mb(r.working)}, peak ${mb(r.peak)}, `
      + `${r.rounds} collection rounds${heap})`;
    t.diagnostic(numbers);
    if (r.heapEnd) {
      // What must not grow is the memory still in use, as glibc counts it.
      // RSS says more about the allocator than about leaks: freed memory
      // glibc keeps for reuse (fragmented, so malloc_trim cannot return it)
      // and V8's own heap both move it; seen +3.8% with the memory in use
      // unchanged.  It only has to stay within a coarser bound.
      assert.ok((r.heapEnd.inUse - r.heapBase.inUse) / r.working < 0.02, numbers);
      assert.ok(growth < 0.08, numbers);
    } else {
      // 300 cycles may not grow the process by 2% of its working set
      assert.ok(growth < 0.02, numbers);
    }
    // and nothing piles up meanwhile: the peak stays within a few working sets of the start
    assert.ok(r.peak - r.base < 4 * r.working, numbers);
    assert.equal(failure, null, failure);
  });
}
