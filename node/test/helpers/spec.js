'use strict';
// The Node.js API spec (shared/spec/node-api.md) read as headings and fenced
// blocks, for the tests that run or compile its examples.
const fs = require('node:fs');
const path = require('node:path');
const { ROOT } = require('./models');

// The contract lives in shared/ beside the checkout; tests/data keeps a copy so
// that a clone alone still runs every test ('the spec copy is current' flags drift).
const SHARED_SPEC = path.join(ROOT, '..', 'shared', 'spec', 'node-api.md');
const COPY_SPEC = path.join(ROOT, 'tests', 'data', 'spec', 'node-api.md');


function specText() {
  return fs.readFileSync(fs.existsSync(SHARED_SPEC) ? SHARED_SPEC : COPY_SPEC, 'utf8');
}

/** The spec as its headings ({ level, title, blocks: [{ lang, code }] }), in order. */
function sections() {
  const out = [{ level: 0, title: '', blocks: [] }];
  let fence = null; // the block being read
  for (const line of specText().split('\n')) {
    if (fence) {
      if (/^```\s*$/.test(line)) {
        out[out.length - 1].blocks.push({ lang: fence.lang, code: `${fence.lines.join('\n')}\n` });
        fence = null;
      } else {
        fence.lines.push(line);
      }
      continue;
    }
    const open = /^```(\w*)/.exec(line);
    if (open) {
      fence = { lang: open[1], lines: [] };
      continue;
    }
    const h = /^(#+)\s+(.*?)\s*$/.exec(line); // only outside code blocks: '# comment' lines of bash are no headings
    if (h) out.push({ level: h[1].length, title: h[2], blocks: [] });
  }
  return out;
}

/** The heading `heading` and its subsections, e.g. '## Memory Management' with its '### Model Lifecycle'. */
function section(heading) {
  const all = sections();
  const i = all.findIndex((s) => s.level > 0 && s.title === heading);
  if (i < 0) throw new Error(`no heading ${JSON.stringify(heading)} in the spec`);
  let j = i + 1;
  while (j < all.length && all[j].level > all[i].level) j++;
  return all.slice(i, j);
}

/** The fenced blocks ({ lang, code }) under the heading `heading`, subsections included. */
function sectionBlocks(heading) {
  return section(heading).flatMap((s) => s.blocks);
}

/** The index-th ```lang block under the heading `heading`. */
function example(heading, index = 0, lang = 'javascript') {
  const blocks = sectionBlocks(heading).filter((b) => b.lang === lang);
  if (index >= blocks.length) throw new Error(`no ${lang} block #${index} under ${JSON.stringify(heading)}`);
  return blocks[index].code;
}

module.exports = { COPY_SPEC, SHARED_SPEC, specText, sections, section, sectionBlocks, example };
