'use strict';
// applyChatTemplate renders exactly what Hugging Face transformers renders
// (the references in tests/data are shared with the Python tests).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { JsModel } = require('..');
const { ROOT, LLAMA_SRC, smollmPath } = require('./helpers/models');

const DATA = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests', 'data', 'chat_templates.json'), 'utf8'));
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

// Llama 3.2's template prints strftime_now("%d %b %Y"): the references hold the
// day they were made, so that date is swapped for today's (C-locale month names).
function withTodaysDate(expected) {
  const d = new Date();
  const today = `${String(d.getDate()).padStart(2, '0')} ${MONTHS[d.getMonth()]} ${d.getFullYear()}`;
  return expected.replace(/(Today Date: )\d{2} [A-Z][a-z]{2} \d{4}/, `$1${today}`);
}

let model;
before(() => { model = JsModel.load(smollmPath(), { vocabOnly: true }); });
after(() => model.close());

for (const c of DATA.cases) {
  const name = `${c.template || 'own'}-${c.messages.length}msg-${c.add_generation_prompt ? 'gen' : 'nogen'}`;
  test(`matches transformers: ${name}`, () => {
    const source = c.template === null ? undefined
      : fs.readFileSync(path.join(LLAMA_SRC, 'models', 'templates', c.template), 'utf8');
    const apply = () => model.applyChatTemplate(c.messages, c.add_generation_prompt, source);
    if (c.error) {
      assert.throws(apply, /chat template error/);
    } else {
      assert.equal(apply(), withTodaysDate(c.expected));
    }
  });
}

test('adds the generation prompt by default', () => {
  assert.ok(model.applyChatTemplate([['user', 'Hi']]).endsWith('<|im_start|>assistant\n'));
});

test('object messages render like [role, content] pairs', () => {
  assert.equal(model.applyChatTemplate([{ role: 'user', content: 'Hi' }]),
    model.applyChatTemplate([['user', 'Hi']]));
});

for (const bad of ['just a string', [['user']], [['user', 5]], [42], null]) {
  test(`bad messages throw TypeError: ${JSON.stringify(bad)}`, () => {
    assert.throws(() => model.applyChatTemplate(bad), TypeError);
  });
}

test('a template poking at Python internals gets a chat template error', () => {
  assert.throws(() => model.applyChatTemplate([['user', 'x']], true,
    '{{ messages.__class__.__mro__[1].__subclasses__() }}'), /chat template error/);
});

test('special tokens are the ones transformers passes', () => {
  // transformers' GGUF tokenizer for this file: bos <|im_start|>, eos <|im_end|>, pad <|im_end|>, unk <|endoftext|>
  const out = model.applyChatTemplate([['user', 'x']], true,
    '{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token }}');
  assert.equal(out, '<|im_start|>|<|im_end|>|<|im_end|>|<|endoftext|>');
});
