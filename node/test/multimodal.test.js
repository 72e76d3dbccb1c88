'use strict';
// Images in the prompt in Node (mirrors tests/test_multimodal.py): on the tiny
// random-weight SmolVLM made by scripts/make_vision_model.py, the same greedy
// text as llama.cpp's llama-mtmd-cli and the same tokens, chunks and cache ids
// as the Python binding (both references computed in this run), every way of
// giving an image, hostile inputs, and the cache keeping an image.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { JsModel, JsContext, Projector, Media, splitChatMedia, ContextFullError, samplerParamsGreedy } = require('..');
const { ROOT, LLAMA_SRC, visionPaths, audioPaths, qwen2vlPaths, python } = require('./helpers/models');

const N = 16;
const greedy = samplerParamsGreedy();
const JPEG = path.join(LLAMA_SRC, 'tools', 'mtmd', 'test-1.jpeg');
const chatml = (user) => `<|im_start|>user\n${user}<|im_end|>\n<|im_start|>assistant\n`;
const ASKS = [['<__media__>What is in the image?', ['jpeg']], ['Describe <__media__> briefly.', ['wide']],
  ['Compare <__media__> with <__media__>.', ['wide', 'jpeg']]];

let files;
let tmp;
let ref;
let model;
let proj;
let img;

// The references, from Python in this run: llama-mtmd-cli's text and chunk counts, and the Python
// binding's tokens and cache ids; it also writes the test images (array.png holds array.rgb's pixels).
const REFERENCE = `
import json, sys
from pathlib import Path
sys.path.insert(0, "scripts")
from make_vision_model import (ensure_audio_model, ensure_mtmd_cli, ensure_qwen2vl_model, ensure_vision_model,
                               mtmd_cli_generate)
from tests.images import pattern, png, bmp, wav
from mullama import Context, Model, Projector, SamplerParams
out_dir, asks = Path(sys.argv[1]), json.loads(sys.argv[2])
files = ensure_vision_model()
img = {"jpeg": Path(sys.argv[3])}
for name, data in (("wide.png", png(pattern(60, 150, 1))), ("square.bmp", bmp(pattern(40, 40, 2))),
                   ("array.png", png(pattern(90, 70, 3)))):
    (out_dir / name).write_bytes(data)
    img[name.split(".")[0]] = out_dir / name
(out_dir / "array.rgb").write_bytes(pattern(90, 70, 3).tobytes())
# the same embedding width as the vision model, but SmolLM2's plain vocabulary (no <global-img>, ...)
import subprocess
subprocess.run([sys.executable, "benchmarks/make_model.py", "--preset", "tiny", "--n-embd", "64", "--ftype", "f16",
                "--out", str(out_dir / "plain-vocab.gguf")], check=True, capture_output=True)
img["plain_vocab_model"] = out_dir / "plain-vocab.gguf"
exe = ensure_mtmd_cli()
model = Model.load(files["model"])
proj = Projector.load(files["mmproj"], model)
res = []
for user, names in asks:
    paths = [img[n] for n in names]
    cli = mtmd_cli_generate(exe, files["model"], files["mmproj"], paths, user, n_predict=${N})
    prompt = f"<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n"
    mp = proj.tokenize(prompt, paths)
    with Context(model, n_ctx=1024, projector=proj) as ctx:
        done = ctx.complete(prompt, ${N}, SamplerParams(temperature=0.0), media=paths, ignore_eos=True)
    res.append({"cli": cli["text"], "image_tokens": cli["image_tokens"], "image_chunks": cli["image_chunks"],
                "chunks": cli["chunks"], "prompt_tokens": cli["prompt_tokens"], "tokens": done.tokens,
                "text": done.text, "cache_ids": mp.cache_ids,
                "kinds": [[c.kind, c.n_tokens, c.n_pos] for c in mp.chunks]})
# a sound: test-2.mp3 and a 1 s sine (as raw float32 samples, and as the same samples in a WAV file)
import numpy as np
audio = ensure_audio_model()
sine = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16000, dtype=np.float32) / 16000)).astype(np.float32)
(out_dir / "sine.f32").write_bytes(sine.tobytes())
(out_dir / "sine.wav").write_bytes(wav(sine))
sounds = {}
for name, path in (("mp3", Path(sys.argv[3]).parent / "test-2.mp3"), ("sine", out_dir / "sine.wav")):
    cli = mtmd_cli_generate(exe, audio["model"], audio["mmproj"], [path], "<__media__>What do you hear?", n_predict=${N})
    sounds[name] = {"path": str(path), "cli": cli["text"], "audio_tokens": cli["audio_tokens"]}
# an M-RoPE model (Qwen2-VL): images take fewer positions than embeddings
qwen = ensure_qwen2vl_model()
qcli = mtmd_cli_generate(exe, qwen["model"], qwen["mmproj"], [img["jpeg"]], "<__media__>What is in the image?",
                         n_predict=${N})
mrope = {"cli": qcli["text"], "image_tokens": qcli["image_tokens"]}
print(json.dumps({"asks": res, "images": {k: str(v) for k, v in img.items()}, "sounds": sounds, "mrope": mrope}))
`;

test.before(() => {
  files = visionPaths();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mullama-mm-'));
  const out = execFileSync(python(), ['-c', REFERENCE, tmp, JSON.stringify(ASKS), JPEG],
    { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PYTHONPATH: ROOT }, maxBuffer: 1 << 26 });
  ref = JSON.parse(out.trim().split('\n').pop());
  img = ref.images;
  model = JsModel.load(files.model);
  proj = Projector.load(files.mmproj, model);
});

test.after(() => {
  if (proj) proj.close();
  if (model) model.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

function context(params = {}) {
  return new JsContext(model, { nCtx: 1024, projector: proj, ...params });
}

test('greedy text equals llama-mtmd-cli, tokens and chunks equal Python', () => {
  ASKS.forEach(([user, names], i) => {
    const r = ref.asks[i];
    const media = names.map((n) => img[n]);
    const mp = proj.tokenize(chatml(user), media);
    assert.deepEqual(mp.chunks.map((c) => [c.kind, c.nTokens, c.nPos]), r.kinds);
    assert.deepEqual(mp.cacheIds, r.cache_ids);
    const images = mp.chunks.filter((c) => c.kind === 'image');
    assert.equal(images.length, r.image_chunks);
    assert.equal(images.reduce((a, c) => a + c.nTokens, 0), r.image_tokens);
    assert.equal(mp.chunks.length, r.chunks);
    assert.equal(mp.nTokens, r.prompt_tokens);
    const ctx = context();
    const done = ctx.complete(chatml(user), N, greedy, { media, ignoreEos: true });
    ctx.close();
    assert.deepEqual(done.tokens, r.tokens);
    assert.equal(done.text, r.cli);
  });
});

test('streaming and async give the same text', async () => {
  const [user, names] = ASKS[0];
  const media = names.map((n) => img[n]);
  const ctx = context();
  const pieces = ctx.generateStream(chatml(user), N, greedy, { media, ignoreEos: true });
  assert.ok(pieces.length > 1);
  assert.equal(pieces.join(''), ref.asks[0].cli);
  const fresh = context();
  assert.equal(await fresh.generateAsync(chatml(user), N, greedy, { media, ignoreEos: true }), ref.asks[0].cli);
  ctx.close();
  fresh.close();
  // two contexts sharing the projector, encoding at once: libmtmd's encodes are queued, one at a time
  const [a, b] = [context(), context()];
  const both = await Promise.all(ASKS.slice(0, 2).map(([u, names], i) => [a, b][i].generateAsync(chatml(u), N, greedy,
    { media: names.map((n) => img[n]), ignoreEos: true })));
  assert.deepEqual(both, [ref.asks[0].cli, ref.asks[1].cli]);
  a.close();
  b.close();
});

test('a path, a Buffer, a Uint8Array, raw pixels and a Media give the same tokens', () => {
  const file = img.array;
  const rgb = new Uint8Array(fs.readFileSync(path.join(tmp, 'array.rgb')));
  const pixels = { rgb, width: 70, height: 90 };
  const made = proj.media(pixels);
  assert.ok(made instanceof Media);
  assert.deepEqual([made.kind, made.width, made.height, made.nBytes], ['image', 70, 90, 70 * 90 * 3]);
  const user = '<__media__>Tell me.';
  const results = [file, fs.readFileSync(file), new Uint8Array(fs.readFileSync(file)), pixels, made].map((source) => {
    const ctx = context();
    const t = ctx.complete(chatml(user), N, greedy, { media: [source], ignoreEos: true }).tokens;
    ctx.close();
    return JSON.stringify(t);
  });
  assert.equal(new Set(results).size, 1);
  assert.equal(proj.media(file).id, proj.media(fs.readFileSync(file)).id);
  assert.notEqual(proj.media(file).id, made.id);
  assert.equal(proj.media(pixels).id, made.id);
});

test('a follow-up turn does not encode the image again', () => {
  const turn1 = chatml('<__media__>What is in the image?');
  const ctx = context();
  const answer = ctx.generate(turn1, N, greedy, { media: [JPEG], ignoreEos: true });
  const first = proj.tokenize(turn1, [JPEG]);
  assert.equal(ctx.lastPromptEvaluated, first.nPos);
  const turn2 = `${turn1}${answer}<|im_end|>\n<|im_start|>user\nAnd the colours?<|im_end|>\n<|im_start|>assistant\n`;
  const follow = ctx.generate(turn2, N, greedy, { media: [JPEG], ignoreEos: true });
  const second = proj.tokenize(turn2, [JPEG]);
  assert.ok(ctx.lastPromptEvaluated < second.nPos - first.nPos + 2, `${ctx.lastPromptEvaluated}`);
  ctx.close();
  const fresh = context();
  assert.equal(fresh.generate(turn2, N, greedy, { media: [JPEG], ignoreEos: true }), follow);
  fresh.close();
});

test('chat messages with image parts', () => {
  const url = `data:image/jpeg;base64,${fs.readFileSync(JPEG).toString('base64')}`;
  for (const part of [{ type: 'image', image: JPEG }, { type: 'image_url', image_url: { url } }]) {
    const { prompt, media } = proj.applyChatTemplate([{ role: 'user', content: [part, { type: 'text', text: 'Hi?' }] }]);
    assert.equal(prompt, model.applyChatTemplate([{ role: 'user', content: '<__media__>Hi?' }]));
    assert.equal(media.length, 1);
    const a = context();
    const b = context();
    assert.equal(a.generate(prompt, N, greedy, { media, ignoreEos: true }),
      b.generate(prompt, N, greedy, { media: [JPEG], ignoreEos: true }));
    a.close();
    b.close();
  }
  assert.throws(() => splitChatMedia([{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://x/y.png' } }] }],
    '<m>'), { name: 'RangeError', message: /remote image URLs/ });
  assert.throws(() => splitChatMedia([{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/png;base64,@@' } }] }],
    '<m>'), { name: 'RangeError', message: /base64/ });
  assert.throws(() => splitChatMedia([{ role: 'user', content: [{ type: 'video', video: 'x' }] }], '<m>'),
    { name: 'RangeError', message: /unsupported content part type "video"/ });
});

test('hostile media are clear errors and the process lives', () => {
  const good = fs.readFileSync(img.array);
  const header = (w, h) => { // a PNG that claims w x h pixels and holds almost nothing
    const b = Buffer.from(good);
    b.writeUInt32BE(w, 16);
    b.writeUInt32BE(h, 20);
    return b;
  };
  const notes = path.join(tmp, 'notes.png');
  fs.writeFileSync(notes, 'this is not a picture');
  const cases = [
    [good.subarray(0, good.length >> 1), RangeError, /could not be decoded.*PNG/],
    [header(20000, 20000), RangeError, /20000x20000 PNG image .* above maxImagePixels/],
    [header(0, 5), RangeError, /size of 0x5/],
    [Buffer.from('just some text, not an image'), RangeError, /not a PNG, JPEG, BMP, GIF image/],
    // a TGA header claiming 26000x26000: a format whose size is not checked before decoding is refused
    [Buffer.from([0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x90, 0x65, 0x90, 0x65, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0]), RangeError,
      /not a PNG, JPEG, BMP, GIF image/],
    [good.subarray(0, 20), RangeError, /PNG header is truncated/],
    [Buffer.alloc(0), RangeError, /empty/],
    [Buffer.from('RIFF\0\0\0\0WEBPVP8 ', 'latin1'), RangeError, /WebP/],
    [Buffer.from('RIFF$\0\0\0WAVEfmt ', 'latin1'), RangeError, /WAV audio, but this projector takes no audio/],
    [new Float32Array(16), RangeError, /takes no audio/],
    [{ rgb: new Uint8Array(10), width: 4, height: 4 }, RangeError, /needs 48/],
    [12, TypeError, /a medium must be/],
    [path.join(tmp, 'missing.png'), RangeError, /not found/],
    [tmp, RangeError, /directory/],
    [notes, RangeError, /not a PNG, JPEG, BMP, GIF image/],
  ];
  for (const [source, kind, message] of cases) {
    assert.throws(() => proj.media(source), (e) => e instanceof kind && message.test(e.message), String(message));
  }
  const ctx = context();
  const prompt = chatml('<__media__>What?');
  assert.throws(() => ctx.generate(prompt, 4, greedy, { media: [] }), { name: 'RangeError', message: /1 media marker.* but 0 media/ });
  assert.throws(() => ctx.generate(chatml('What?'), 4, greedy, { media: [JPEG] }), { name: 'RangeError', message: /0 media marker/ });
  assert.throws(() => ctx.generate(prompt, 4, greedy, { media: JPEG }), { name: 'TypeError', message: /array of media/ });
  assert.throws(() => ctx.generateFromTokens([1, 2], 4, greedy, { media: [JPEG] }), { name: 'TypeError', message: /must be text/ });
  assert.ok(ctx.generate(prompt, 4, greedy, { media: [img.square], ignoreEos: true }).length > 0);
  // a saved state records token ids only: a cache that holds an image cannot be saved
  assert.throws(() => ctx.stateBytes(), { name: 'RangeError', message: /cannot record/ });
  // media: [] with no marker is a plain prompt
  assert.ok(ctx.generate(chatml('Hi'), 2, greedy, { media: [], ignoreEos: true }).length >= 0);
  ctx.close();
  const plain = new JsContext(model, { nCtx: 256 });
  assert.throws(() => plain.generate(prompt, 4, greedy, { media: [JPEG] }), { name: 'RangeError', message: /no projector/ });
  plain.close();
  assert.throws(() => Projector.load(files.wrong_mmproj, model), { name: 'RangeError', message: /n_embd/ });
  assert.throws(() => Projector.load(path.join(tmp, 'missing.gguf'), model), /Failed to load projector/);
  assert.throws(() => Projector.load(files.mmproj, model, { imageMinTokens: 9, imageMaxTokens: 4 }), RangeError);
  assert.throws(() => Projector.load(files.mmproj, model, { bogus: 1 }), TypeError);
  assert.throws(() => new JsContext(model, { projector: 'mmproj.gguf' }), TypeError);
  const small = Projector.load(files.mmproj, model, { maxImagePixels: 100, maxMediaBytes: 1000 });
  assert.throws(() => small.media(JPEG), { name: 'RangeError', message: /maxMediaBytes=1000/ });
  small.close();
  const full = new JsContext(model, { nCtx: 256, projector: proj });
  const long = Array(226).fill('word').join(' ');
  assert.throws(() => full.generate(chatml(`${long}<__media__>What?`), 4, greedy, { media: [JPEG] }), ContextFullError);
  full.close();
  assert.deepEqual([proj.supportsVision, proj.supportsAudio, proj.audioSampleRate, proj.usesMrope, proj.marker],
    [true, false, null, false, '<__media__>']);
});

test('a text model without the image template tokens is a clear error', () => {
  const plainModel = JsModel.load(img.plain_vocab_model);
  const p = Projector.load(files.mmproj, plainModel);
  assert.throws(() => p.tokenize('<__media__>What?', [JPEG]), { name: 'RangeError', message: /lacks special tokens/ });
  const ctx = new JsContext(plainModel, { nCtx: 256, projector: p });
  assert.throws(() => ctx.generate('<__media__>What?', 4, greedy, { media: [JPEG] }), /lacks special tokens/);
  assert.ok(ctx.generate('Still fine?', 2, greedy, { ignoreEos: true }).length >= 0);
  ctx.close();
  p.close();
  plainModel.close();
});

test('sounds: the same text as llama-mtmd-cli from a file, a Buffer and raw samples', () => {
  const paths = audioPaths();
  const m = JsModel.load(paths.model);
  const p = Projector.load(paths.mmproj, m);
  assert.deepEqual([p.supportsAudio, p.supportsVision, p.audioSampleRate], [true, false, 16000]);
  const prompt = chatml('<__media__>What do you hear?');
  const mp = p.tokenize(prompt, [ref.sounds.mp3.path]);
  assert.deepEqual(mp.chunks.filter((c) => c.kind === 'audio').map((c) => c.nTokens), [ref.sounds.mp3.audio_tokens]);
  const sine = new Float32Array(new Uint8Array(fs.readFileSync(path.join(tmp, 'sine.f32'))).buffer);
  const cases = [[ref.sounds.mp3.path, ref.sounds.mp3.cli], [fs.readFileSync(ref.sounds.mp3.path), ref.sounds.mp3.cli],
    [ref.sounds.sine.path, ref.sounds.sine.cli], [sine, ref.sounds.sine.cli]];
  for (const [source, want] of cases) {
    const ctx = new JsContext(m, { nCtx: 2048, projector: p });
    assert.equal(ctx.generate(prompt, N, greedy, { media: [source], ignoreEos: true }), want);
    ctx.close();
  }
  assert.throws(() => p.media(new Float32Array(1)), { name: 'RangeError', message: /too short: at least 1600 samples/ });
  const nan = new Float32Array(1600);
  nan[7] = NaN;
  assert.throws(() => p.media(nan), { name: 'RangeError', message: /NaN/ });
  assert.throws(() => p.media(JPEG), { name: 'RangeError', message: /takes audio only/ });
  assert.throws(() => proj.media(ref.sounds.mp3.path), { name: 'RangeError', message: /MP3 audio, but this projector takes no audio/ });
  assert.equal(p.media(new Float32Array(1600)).width, 1600); // a tenth of a second: the shortest taken
  p.close();
  m.close();
});

test('M-RoPE images (Qwen2-VL): the same text as llama-mtmd-cli, the cache budgeted in cells', () => {
  const paths = qwen2vlPaths();
  const m = JsModel.load(paths.model);
  const p = Projector.load(paths.mmproj, m);
  assert.equal(p.usesMrope, true);
  const prompt = chatml('<__media__>What is in the image?');
  const mp = p.tokenize(prompt, [JPEG]);
  const pics = mp.chunks.filter((c) => c.kind === 'image');
  assert.equal(pics.reduce((a, c) => a + c.nTokens, 0), ref.mrope.image_tokens);
  assert.ok(pics.every((c) => c.nPos < c.nTokens) && mp.cacheIds.length === mp.nPos && mp.nPos < mp.nTokens);
  const ctx = new JsContext(m, { nCtx: 2048, projector: p });
  const text = ctx.generate(prompt, N, greedy, { media: [JPEG], ignoreEos: true });
  assert.equal(text, ref.mrope.cli);
  const turn2 = `${prompt}${text}<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\n`;
  const follow = ctx.generate(turn2, N, greedy, { media: [JPEG], ignoreEos: true });
  assert.ok(ctx.lastPromptEvaluated < 20, String(ctx.lastPromptEvaluated));
  ctx.close();
  const fresh = new JsContext(m, { nCtx: 2048, projector: p });
  assert.equal(fresh.generate(turn2, N, greedy, { media: [JPEG], ignoreEos: true }), follow);
  fresh.close();
  const small = new JsContext(m, { nCtx: 512, projector: p });
  const two = chatml('<__media__><__media__>What?');
  assert.throws(() => small.generate(two, 4, greedy, { media: [JPEG, JPEG] }), ContextFullError);
  assert.throws(() => small.generate(prompt, 512, greedy, { media: [JPEG], ignoreEos: true }),
    { name: 'ContextFullError', message: /the context is full/ });
  assert.ok(small.generate(chatml('Hi'), 2, greedy, { ignoreEos: true }).length > 0);
  small.close();
  p.close();
  m.close();
});
