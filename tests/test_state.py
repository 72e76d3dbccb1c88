"""Saved state of a Context: a loaded state continues exactly as the original would, and bad input is refused.

Every expectation is computed in the same run (greedy output differs between
CPUs): a reference Context that never saves generates the prompt and then
its continuation; a Context that loads the state saved after the prompt
must produce the same continuation, token for token, evaluating one token.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from mullama import Context, ContextFullError, EmbeddingGenerator, Model, SamplerParams

from .conftest import run_python

PROMPT = "Once upon a time, in a small village by the sea,"
N_FIRST = 16  # tokens generated before the save
N_NEXT = 16  # tokens generated after it
GREEDY = SamplerParams.greedy()
MAGIC = b"MULLAMA-STATE\0"


@dataclass
class Reference:
    saved: bytes  # the state after the prompt and N_FIRST tokens
    tokens: list[int]  # the tokens it holds
    continuation: str  # what a Context that never saved generates next
    after: list[int]  # the tokens that Context holds then
    first: str  # the text of the first generation


def _continue(ctx: Context, tokens: list[int]) -> str:
    return ctx.generate(tokens, N_NEXT, GREEDY, ignore_eos=True)


@pytest.fixture(scope="module")
def ref(model: Model) -> Reference:
    with Context(model, n_ctx=256) as plain:
        first = plain.generate(PROMPT, N_FIRST, GREEDY, ignore_eos=True)
        tokens = plain.tokens
        continuation = _continue(plain, tokens)
        after = plain.tokens
    with Context(model, n_ctx=256) as saver:
        assert saver.generate(PROMPT, N_FIRST, GREEDY, ignore_eos=True) == first
        assert saver.tokens == tokens
        saved = saver.state_bytes()
        assert saver.tokens == tokens  # saving changes nothing
        assert _continue(saver, tokens) == continuation
    return Reference(saved, tokens, continuation, after, first)


@pytest.fixture()
def ctx(model: Model) -> Iterator[Context]:
    c = Context(model, n_ctx=256)
    yield c
    c.close()


def _check_continues(ctx: Context, ref: Reference) -> None:
    assert ctx.tokens == ref.tokens
    assert _continue(ctx, ref.tokens) == ref.continuation
    assert ctx.last_prompt_evaluated == 1  # only the last token was evaluated again
    assert ctx.tokens == ref.after


def test_state_bytes_continue_identically(ctx: Context, ref: Reference) -> None:
    assert ref.saved.startswith(MAGIC)
    ctx.load_state_bytes(ref.saved)
    assert ctx.n_past == len(ref.tokens)
    _check_continues(ctx, ref)


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_state_bytes_like(ctx: Context, ref: Reference, wrap: Callable[[bytes], Any]) -> None:
    ctx.load_state_bytes(wrap(ref.saved))
    _check_continues(ctx, ref)


def test_state_is_deterministic(model: Model, ref: Reference) -> None:
    with Context(model, n_ctx=256) as c:
        c.load_state_bytes(ref.saved)
        assert c.state_bytes() == ref.saved  # loading then saving gives the same bytes


def test_state_file_continue_identically(ctx: Context, ref: Reference, model: Model, tmp_path: Path) -> None:
    path = tmp_path / "chat.state"
    path.write_bytes(b"an older file, replaced")
    with Context(model, n_ctx=256) as saver:
        saver.load_state_bytes(ref.saved)
        saver.save_state(path)
        saver.save_state(str(path))  # str or PathLike
    assert path.read_bytes() == ref.saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.state"]  # no temporary file left
    if sys.platform != "win32":
        assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    ctx.load_state(path)
    _check_continues(ctx, ref)


def test_prompt_extending_the_saved_tokens_evaluates_only_the_new_part(ctx: Context, model: Model,
                                                                       ref: Reference) -> None:
    extra = model.tokenize(" The end.", add_bos=False)
    ctx.load_state_bytes(ref.saved)
    text = ctx.generate(ref.tokens + extra, 8, GREEDY, ignore_eos=True)
    assert ctx.last_prompt_evaluated == len(extra)
    with Context(model, n_ctx=256) as fresh:
        assert fresh.generate(ref.tokens + extra, 8, GREEDY, ignore_eos=True) == text


def test_state_in_a_new_process(ref: Reference, smollm_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    path.write_bytes(ref.saved)
    code = f"""
import json
from mullama import Context, Model, SamplerParams
m = Model.load({str(smollm_path)!r})
c = Context(m, n_ctx=256)
c.load_state({str(path)!r})
tokens = c.tokens
text = c.generate(tokens, {N_NEXT}, SamplerParams.greedy(), ignore_eos=True)
print(json.dumps([tokens, text, c.last_prompt_evaluated, c.tokens]))
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    tokens, text, evaluated, after = json.loads(r.stdout.strip().splitlines()[-1])
    assert (tokens, text, evaluated, after) == (ref.tokens, ref.continuation, 1, ref.after)


def test_empty_state_clears(model: Model, ctx: Context, ref: Reference) -> None:
    with Context(model, n_ctx=256) as empty:
        blank = empty.state_bytes()
    ctx.load_state_bytes(ref.saved)
    ctx.load_state_bytes(blank)
    assert ctx.tokens == []
    assert ctx.generate(PROMPT, N_FIRST, GREEDY, ignore_eos=True) == ref.first


def test_several_sequences_save_and_load_sequence_0(model: Model, ref: Reference) -> None:
    with Context(model, n_ctx=512, n_seq_max=2) as c:
        c.load_state_bytes(ref.saved)
        assert c.tokens == ref.tokens
        assert c.state_bytes() == ref.saved
        text = _continue(c, ref.tokens)
        assert c.last_prompt_evaluated == 1 and text


# -- bad input ---------------------------------------------------------------------------------------


def _layout(state: bytes) -> dict[str, tuple[int, int]]:
    """Where each field of a state is: name -> (offset, length), read as the README documents it."""
    out: dict[str, tuple[int, int]] = {"magic": (0, 14), "version": (14, 4)}
    pos = 18
    for name in ("architecture", "name", "description"):
        (n,) = struct.unpack_from("<I", state, pos)
        out[name] = (pos + 4, n)
        pos += 4 + n
    for name in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_params", "size"):
        out[name] = (pos, 8)
        pos += 8
    (n_tokens,) = struct.unpack_from("<I", state, pos)
    out["n_tokens"] = (pos, 4)
    out["tokens"] = (pos + 4, 4 * n_tokens)
    pos += 4 + 4 * n_tokens
    (blob_len,) = struct.unpack_from("<Q", state, pos)
    out["blob_len"] = (pos, 8)
    out["sha256"] = (pos + 8, 32)
    out["blob"] = (pos + 40, blob_len)
    assert pos + 40 + blob_len == len(state)
    return out


def _forge(state: bytes, edit: Callable[[bytearray, dict[str, tuple[int, int]]], bytearray]) -> bytes:
    """``edit`` the state's bytes, then give it a valid checksum again (as a deliberate forgery would)."""
    data = edit(bytearray(state), _layout(state))
    lay = _layout(bytes(data))
    sha_at = lay["sha256"][0]
    data[sha_at:sha_at + 32] = hashlib.sha256(bytes(data[:sha_at]) + bytes(data[sha_at + 32:])).digest()
    return bytes(data)


def _set_u64(name: str, delta: int) -> Callable[[bytearray, dict[str, tuple[int, int]]], bytearray]:
    def edit(b: bytearray, lay: dict[str, tuple[int, int]]) -> bytearray:
        at = lay[name][0]
        struct.pack_into("<Q", b, at, struct.unpack_from("<Q", b, at)[0] + delta)
        return b
    return edit


def _replace_description(b: bytearray, lay: dict[str, tuple[int, int]]) -> bytearray:
    at, n = lay["description"]
    new = b"llama 7B Q8_0"
    return b[:at - 4] + struct.pack("<I", len(new)) + new + b[at + n:]


def _drop_last_token(b: bytearray, lay: dict[str, tuple[int, int]]) -> bytearray:
    at, n = lay["tokens"]
    struct.pack_into("<I", b, lay["n_tokens"][0], n // 4 - 1)
    return b[:at + n - 4] + b[at + n:]


def _token(value: int) -> Callable[[bytearray, dict[str, tuple[int, int]]], bytearray]:
    def edit(b: bytearray, lay: dict[str, tuple[int, int]]) -> bytearray:
        struct.pack_into("<i", b, lay["tokens"][0], value)
        return b
    return edit


def _flip(field: str, at: int = 0) -> Callable[[bytes], bytes]:
    def corrupt(state: bytes) -> bytes:
        offset, n = _layout(state)[field]
        i = offset + (at if at >= 0 else n + at)
        return state[:i] + bytes([state[i] ^ 0x40]) + state[i + 1:]
    return corrupt


def _blob_magic(b: bytearray, lay: dict[str, tuple[int, int]]) -> bytearray:
    b[lay["blob"][0]] ^= 0xFF  # llama.cpp's own magic: llama.cpp refuses it
    return b


BAD: dict[str, tuple[Callable[[bytes], bytes], type[Exception], str]] = {
    "not a state": (lambda s: b"GGUF" + s[4:], ValueError, "not a mullama state"),
    "empty": (lambda s: b"", ValueError, "truncated"),
    "truncated in the header": (lambda s: s[:40], ValueError, "truncated"),
    "truncated in the tokens": (lambda s: s[:_layout(s)["tokens"][0] + 6], ValueError, "truncated"),
    "truncated in the blob": (lambda s: s[:len(s) // 2], ValueError, "truncated"),
    "one byte short": (lambda s: s[:-1], ValueError, "truncated"),
    "trailing bytes": (lambda s: s + b"\0", ValueError, "unexpected bytes"),
    "corrupted blob": (_flip("blob", -100), ValueError, "checksum"),
    "corrupted token": (_flip("tokens", 0), ValueError, "checksum"),
    "corrupted fingerprint": (_flip("n_embd", 0), ValueError, "checksum"),
    "newer version": (lambda s: s[:14] + struct.pack("<I", 2) + s[18:], ValueError, "version 2"),
    "another model: n_layer": (lambda s: _forge(s, _set_u64("n_layer", 1)), ValueError,
                               "another model: n_layer is 31 in the state but 30 in this model"),
    "another model: size": (lambda s: _forge(s, _set_u64("size", 4096)), ValueError, "size is"),
    "another model: description": (lambda s: _forge(s, _replace_description), ValueError,
                                   "description is 'llama 7B Q8_0' in the state"),
    "token outside the vocabulary": (lambda s: _forge(s, _token(1 << 30)), ValueError, "outside the vocabulary"),
    "tokens disagree with the cache": (lambda s: _forge(s, _drop_last_token), RuntimeError, "cache is now empty"),
    "refused by llama.cpp": (lambda s: _forge(s, _blob_magic), RuntimeError, "could not load"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("via", ["bytes", "file"])
def test_bad_state_is_refused_and_the_context_still_works(ctx: Context, ref: Reference, tmp_path: Path,
                                                          case: str, via: str) -> None:
    make, error, needle = BAD[case]
    bad = make(ref.saved)
    ctx.load_state_bytes(ref.saved)  # a cache to keep, or to lose cleanly
    with pytest.raises(error, match=needle):
        if via == "bytes":
            ctx.load_state_bytes(bad)
        else:
            (tmp_path / "bad.state").write_bytes(bad)
            ctx.load_state(tmp_path / "bad.state")
    assert ctx.tokens in (ref.tokens, [])
    assert _continue(ctx, ref.tokens) == ref.continuation
    assert ctx.tokens == ref.after


def test_file_messages_name_the_file(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "x.state").write_bytes(b"hello")
    with pytest.raises(ValueError, match="x.state"):
        ctx.load_state(tmp_path / "x.state")
    with pytest.raises(FileNotFoundError):
        ctx.load_state(tmp_path / "missing.state")
    with pytest.raises(OSError):
        ctx.save_state(tmp_path / "no" / "such" / "folder.state")


def test_context_too_small(model: Model, ref: Reference) -> None:
    # llama.cpp rounds n_ctx up to a multiple of 256: n_ctx=128 holds 256 tokens
    with Context(model, n_ctx=512) as big:
        big.generate(model.tokenize(PROMPT * 30)[:300], 1, GREEDY, ignore_eos=True)
        assert big.n_past == 300
        state = big.state_bytes()
    with Context(model, n_ctx=128) as small:
        assert small.n_ctx == 256
        small.load_state_bytes(ref.saved)
        with pytest.raises(ContextFullError, match="holds 300 tokens, more than this Context's n_ctx=256") as e:
            small.load_state_bytes(state)
        assert isinstance(e.value, ValueError)
        assert small.tokens == ref.tokens  # checked before anything changed
        assert _continue(small, ref.tokens) == ref.continuation


def test_state_of_another_real_model(model: Model, minilm_path: Path, ref: Reference) -> None:
    minilm = Model.load(minilm_path)
    try:
        with EmbeddingGenerator(minilm) as gen:
            before = gen.embed("a sentence")
            with pytest.raises(ValueError, match="another model: architecture is 'llama' in the state but 'bert'"):
                gen.context.load_state_bytes(ref.saved)
            with pytest.raises(RuntimeError, match="no KV cache"):
                gen.context.state_bytes()
            assert (gen.embed("a sentence") == before).all()
    finally:
        minilm.close()


@pytest.mark.parametrize("call,arg", [
    ("load_state_bytes", "a string"), ("load_state_bytes", None), ("load_state_bytes", [1, 2, 3]),
    ("load_state", 42), ("load_state", None), ("load_state", b"bytes.state"),
    ("save_state", None), ("save_state", 3.5),
])
def test_wrong_types(ctx: Context, call: str, arg: Any) -> None:
    with pytest.raises(TypeError):
        getattr(ctx, call)(arg)


def test_empty_path(ctx: Context) -> None:
    with pytest.raises(ValueError, match="empty"):
        ctx.save_state("")
    with pytest.raises(ValueError, match="empty"):
        ctx.load_state("")


def test_closed_context(model: Model, ref: Reference, tmp_path: Path) -> None:
    c = Context(model, n_ctx=128)
    c.close()
    for call in (c.state_bytes, lambda: c.load_state_bytes(ref.saved), lambda: c.save_state(tmp_path / "s")):
        with pytest.raises(RuntimeError, match="closed"):
            call()


def test_not_while_another_thread_generates(ctx: Context, ref: Reference, tmp_path: Path) -> None:
    started, done = threading.Event(), threading.Event()

    def worker() -> None:
        stream = ctx.generate_stream(PROMPT, 8, GREEDY, ignore_eos=True)
        next(stream)
        started.set()
        done.wait(30)
        stream.close()

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert started.wait(60)
        for call in (ctx.state_bytes, lambda: ctx.save_state(tmp_path / "s"),
                     lambda: ctx.load_state_bytes(ref.saved)):
            with pytest.raises(RuntimeError, match="another thread"):
                call()
    finally:
        done.set()
        t.join()
    assert not (tmp_path / "s").exists()
    ctx.load_state_bytes(ref.saved)
    _check_continues(ctx, ref)


def test_a_stream_left_on_this_thread_is_finished_first(ctx: Context, ref: Reference) -> None:
    stream = ctx.generate_stream(PROMPT, N_FIRST, GREEDY, ignore_eos=True)
    next(stream)
    state = ctx.state_bytes()  # closes the stream: the cache is consistent
    with Context(ctx.model, n_ctx=256) as other:
        other.load_state_bytes(state)
        assert other.tokens == ctx.tokens


# -- the engine's and the server's named caches ---------------------------------------------------------------

_SYSTEM = "You are a helpful assistant who knows the history of printing in detail. " * 12


def _chat(model: Model, question: str) -> str:
    return model.apply_chat_template([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": question}])


def test_an_engine_cache_survives_a_restart(model: Model, tmp_path: Path) -> None:
    from mullama.engine import Engine
    prefix = model.apply_chat_template([{"role": "system", "content": _SYSTEM}], False)
    prompt = _chat(model, "Who invented it?")
    path = tmp_path / "system.state"
    with Engine(model, parallel=2, n_ctx=1024) as eng:
        n = eng.save_cache(path, prefix)
        assert n >= len(model.tokenize(prefix, add_bos=True, special=True)) > 100
        want = eng.submit(prompt, 16, SamplerParams.greedy()).text()
    with Engine(model, parallel=2, n_ctx=1024) as eng:  # "after a restart"
        assert eng.load_cache(path) == n
        req = eng.submit(prompt, 16, SamplerParams.greedy())
        assert req.text() == want
        assert req.prompt_evaluated < 20  # only the question, not the system prompt
    with Engine(model, parallel=3, n_ctx=1024) as eng:
        with pytest.raises(RuntimeError, match="same parallel"):
            eng.load_cache(path)
        with pytest.raises(ValueError):
            bad = tmp_path / "bad.state"
            bad.write_bytes(path.read_bytes()[:-10])
            eng.load_cache(bad)
        assert eng.submit(prompt, 16, SamplerParams.greedy()).text() == want  # still serving


def test_the_server_saves_and_restores_named_caches(smollm_path: Path, model: Model, tmp_path: Path) -> None:
    pytest.importorskip("openai")
    import json

    from mullama.server import ServeOptions

    from .test_server import Server
    opts = ServeOptions(model=smollm_path, parallel=2, n_ctx=1024, model_id="smollm2", state_dir=tmp_path)
    system = {"role": "system", "content": _SYSTEM}
    msgs = [system, {"role": "user", "content": "Who invented it?"}]
    s = Server(opts)
    try:
        status, body = s.raw("POST", "/v1/cache/save", json.dumps({"name": "printing", "messages": [system]}).encode())
        assert status == 200, body
        saved = json.loads(body)
        assert saved["tokens"] > 100 and (tmp_path / "printing.state").stat().st_size == saved["bytes"]
        want = s.client().chat.completions.create(model="smollm2", messages=msgs, max_tokens=12, temperature=0)
        for name, status_want in (("../x", 400), ("", 400), (".hidden", 400)):
            status, body = s.raw("POST", "/v1/cache/save", json.dumps({"name": name, "prompt": "x"}).encode())
            assert status == status_want, body
    finally:
        s.stop()
    s = Server(opts)  # a restart
    try:
        status, body = s.raw("GET", "/v1/cache")
        assert [c["name"] for c in json.loads(body)["data"]] == ["printing"]
        status, body = s.raw("POST", "/v1/cache/restore", b'{"name": "printing"}')
        assert status == 200 and json.loads(body)["tokens"] == saved["tokens"], body
        got = s.client().chat.completions.create(model="smollm2", messages=msgs, max_tokens=12, temperature=0)
        assert got.choices[0].message.content == want.choices[0].message.content
        assert got.usage.prompt_tokens_details.cached_tokens >= saved["tokens"] - 1
        status, body = s.raw("POST", "/v1/cache/restore", b'{"name": "missing"}')
        assert status == 404, body
        (tmp_path / "broken.state").write_bytes(b"MULLAMA-STATE\0junk")
        status, body = s.raw("POST", "/v1/cache/restore", b'{"name": "broken"}')
        assert status == 400 and b"error" in body, body
    finally:
        s.stop()
    s = Server(ServeOptions(model=smollm_path, parallel=2, n_ctx=1024))
    try:
        status, body = s.raw("POST", "/v1/cache/save", b'{"name": "x", "prompt": "hello"}')
        assert status == 404 and b"--state-dir" in body
    finally:
        s.stop()
