"""Token log-probabilities: checked against a log-softmax of the full logits, computed here with NumPy."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

from mullama import Completion, Context, Model, SamplerParams, _backend
from mullama.engine import Engine

CHAT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
PROMPT = "The history of the printing press"


def _reference(model: Model, prompt_ids: list[int], generated: list[int]) -> list[np.ndarray]:
    """The log-softmax of the logits at each generated position, from a context of its own, one token at a time."""
    ctx = Context(model, n_ctx=512, sampling="cpu")
    L = _backend.lib()
    out = []
    ctx.decode(prompt_ids)
    for tok in generated:
        addr = L.llama_get_logits_ith(ctx.ptr(), -1)
        logits = np.ctypeslib.as_array(ctypes.cast(addr, ctypes.POINTER(ctypes.c_float)), shape=(model.n_vocab,))
        x = logits.astype(np.float64)
        out.append(x - (x.max() + np.log(np.exp(x - x.max()).sum())))
        ctx.decode([tok])
    ctx.close()
    return out


def _check_against(model: Model, prompt_ids: list[int], c: Completion, k: int) -> None:
    assert c.logprobs is not None and len(c.logprobs) == len(c.tokens) > 0
    ref = _reference(model, prompt_ids, c.tokens)
    for tok, entry, dist in zip(c.tokens, c.logprobs, ref):
        assert entry.token == tok
        assert entry.logprob == pytest.approx(dist[tok], abs=1e-4)  # its entry in the full distribution
        assert entry.bytes == model.token_to_piece(tok, special=True)
        assert len(entry.top) == k
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
        kth = np.sort(dist)[-k]
        for t in entry.top:
            assert t.logprob == pytest.approx(dist[t.token], abs=1e-4)
            assert dist[t.token] >= kth - 1e-4  # really among the k largest
        assert len({t.token for t in entry.top}) == k
        assert entry.logprob <= entry.top[0].logprob + 1e-6


def test_greedy_logprobs_are_the_models_distribution(model: Model) -> None:
    ctx = Context(model, n_ctx=512)
    prompt = model.tokenize(CHAT, add_bos=True, special=True)
    c = ctx.complete(prompt, 24, SamplerParams.greedy(), logprobs=5, ignore_eos=True)
    assert c.finish_reason == "length" and len(c.tokens) == 24
    _check_against(model, prompt, c, 5)
    for entry in c.logprobs or []:
        assert entry.top[0].token == entry.token  # greedy: the chosen token is the most probable
    # the same text and tokens as without logprobs
    assert c.text == ctx.generate(prompt, 24, SamplerParams.greedy(), ignore_eos=True)
    assert ctx.complete(prompt, 24, SamplerParams.greedy(), ignore_eos=True).tokens == c.tokens


def test_sampled_tokens_report_the_unmodified_distribution(model: Model) -> None:
    ctx = Context(model, n_ctx=512)
    prompt = model.tokenize(PROMPT, add_bos=True, special=True)
    params = SamplerParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, penalty_repeat=1.3, seed=7)
    c = ctx.complete(prompt, 20, params, logprobs=3, ignore_eos=True)
    _check_against(model, prompt, c, 3)
    # with these settings the sampler strays from the argmax at least once, and the value is still the model's
    assert any(e.top[0].token != e.token for e in c.logprobs or [])


def test_completion_fields_text_tokens_and_finish(model: Model) -> None:
    ctx = Context(model, n_ctx=512)
    c = ctx.complete(CHAT, 200, SamplerParams.greedy())
    assert c.finish_reason == "stop" and c.logprobs is None
    # the end-of-generation token that ended it is not part of the answer
    assert not any(model.token_is_eog(t) for t in c.tokens)
    assert model.detokenize(c.tokens) == c.text == ctx.generate(CHAT, 200, SamplerParams.greedy())
    # a stop string: the token that completed it is kept; the text is cut before it
    full = ctx.complete(PROMPT, 30, SamplerParams.greedy(), ignore_eos=True)
    word = full.text.split()[3]
    cut = ctx.complete(PROMPT, 30, SamplerParams.greedy(), ignore_eos=True, stop=[word], logprobs=2)
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(word)]
    assert cut.tokens == full.tokens[:len(cut.tokens)] and word in model.detokenize(cut.tokens)
    assert cut.logprobs is not None and len(cut.logprobs) == len(cut.tokens)


def test_stream_is_one_chunk_per_token(model: Model) -> None:
    ctx = Context(model, n_ctx=512)
    whole = ctx.complete(PROMPT, 16, SamplerParams.greedy(), logprobs=2, ignore_eos=True)
    chunks = list(ctx.complete_stream(PROMPT, 16, SamplerParams.greedy(), logprobs=2, ignore_eos=True))
    assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert all(len(c.tokens) == 1 for c in chunks)
    assert "".join(c.text for c in chunks) == whole.text
    assert [t for c in chunks for t in c.tokens] == whole.tokens
    assert [e for c in chunks for e in c.logprobs or []] == whole.logprobs
    # max_tokens 0: one chunk, nothing in it
    [only] = ctx.complete_stream(PROMPT, 0, logprobs=1)
    assert only.tokens == [] and only.text == "" and only.finish_reason == "length"


def test_logprobs_with_a_grammar(model: Model) -> None:
    from mullama import Grammar
    ctx = Context(model, n_ctx=512)
    prompt = model.tokenize(CHAT, add_bos=True, special=True)
    c = ctx.complete(prompt, 40, SamplerParams.greedy(), logprobs=2, grammar=Grammar('root ::= "red" | "blue"'))
    assert c.text in ("red", "blue") and c.finish_reason == "stop"
    _check_against(model, prompt, c, 2)  # the model's values, not the grammar's masked ones


def test_bad_logprobs_arguments(model: Model) -> None:
    ctx = Context(model, n_ctx=256)
    for bad, err in ((21, ValueError), (-1, ValueError), ("3", TypeError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(err, match="logprobs"):
            ctx.complete(PROMPT, 4, logprobs=bad)
        with pytest.raises(err, match="logprobs"):
            ctx.complete_stream(PROMPT, 4, logprobs=bad)
    dev = Context(model, n_ctx=256, sampling="device")
    with pytest.raises(ValueError, match="logprobs"):
        dev.complete(PROMPT, 4, logprobs=1)
    assert ctx.complete(PROMPT, 4, SamplerParams.greedy(), logprobs=20).logprobs is not None


def test_engine_requests_carry_logprobs(model: Model) -> None:
    prompts = [CHAT, PROMPT, "def fibonacci(n):"]
    lone = [Context(model, n_ctx=512).complete(p, 16, SamplerParams.greedy(), logprobs=3, ignore_eos=True)
            for p in prompts]
    with Engine(model, parallel=3, n_ctx=256) as eng:
        reqs = [eng.submit(p, 16, SamplerParams.greedy(), logprobs=3, ignore_eos=True) for p in prompts]
        plain = eng.submit(PROMPT, 16, SamplerParams.greedy(), ignore_eos=True)
        got = [r.completion() for r in reqs]
        assert plain.completion().logprobs is None and plain.tokens == lone[1].tokens
        with pytest.raises(ValueError, match="logprobs"):
            eng.submit(PROMPT, 4, logprobs=99)
    for g, want in zip(got, lone):
        assert g.tokens == want.tokens and g.text == want.text and g.finish_reason == want.finish_reason
        assert g.logprobs is not None and want.logprobs is not None
        for a, b in zip(g.logprobs, want.logprobs):
            assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert [t.token for t in a.top] == [t.token for t in b.top]


def test_engine_streams_each_tokens_logprobs_with_its_text(model: Model) -> None:
    import asyncio

    async def consume(eng: Engine) -> list[list[object]]:
        req = eng.submit(PROMPT, 10, SamplerParams.greedy(), logprobs=1, ignore_eos=True)
        return [items async for items in req.items()]

    with Engine(model, parallel=2, n_ctx=256) as eng:
        batches = asyncio.run(consume(eng))
    items = [x for b in batches for x in b]
    entries = [x for x in items if not isinstance(x, str)]
    assert len(entries) == 10
    text = ""
    pieces = ""
    for x in items:  # each entry follows the text of its token (ASCII text: one piece per token)
        if isinstance(x, str):
            text += x
        else:
            pieces += x.piece  # type: ignore[attr-defined]
            assert text == pieces
    for b in batches:  # and arrives in the same batch
        assert not isinstance(b[-1], str)


def test_logprobs_in_threads_share_no_state(model: Model) -> None:
    results: dict[int, Completion] = {}

    def run(i: int) -> None:
        results[i] = Context(model, n_ctx=256).complete(PROMPT, 8, SamplerParams.greedy(), logprobs=2)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1]


# -- the server, through the official client ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(smollm_path):  # type: ignore[no-untyped-def]
    pytest.importorskip("openai")
    from mullama.server import ServeOptions

    from .test_server import Server
    s = Server(ServeOptions(model=smollm_path, parallel=2, n_ctx=512, model_id="smollm2"))
    try:
        yield s
    finally:
        s.stop()


def test_chat_logprobs_through_the_openai_client(server, model: Model) -> None:  # type: ignore[no-untyped-def]
    client = server.client()
    msgs = [{"role": "user", "content": "Name three colours."}]
    r = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=12, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    prompt = model.tokenize(model.apply_chat_template(msgs, True), add_bos=True, special=True)
    want = Context(model, n_ctx=512).complete(prompt, 12, SamplerParams.greedy(), logprobs=3)
    assert "".join(e.token for e in content) == r.choices[0].message.content == want.text
    assert want.logprobs is not None and len(content) == len(want.logprobs)
    for got, ref in zip(content, want.logprobs):
        assert got.logprob == pytest.approx(ref.logprob, abs=1e-4) and bytes(got.bytes) == ref.bytes
        assert [t.token for t in got.top_logprobs] == [t.piece for t in ref.top]
    # streamed: the same entries, spread over the chunks
    stream = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=12, temperature=0,
                                            logprobs=True, top_logprobs=3, stream=True)
    streamed = [e for ch in stream if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]
    # logprobs without alternatives; none at all by default
    r = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=4, temperature=0, logprobs=True)
    assert [e.top_logprobs for e in r.choices[0].logprobs.content] == [[]] * 4
    r = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=4, temperature=0)
    assert r.choices[0].logprobs is None


def test_completion_logprobs_through_the_openai_client(server, model: Model) -> None:  # type: ignore[no-untyped-def]
    client = server.client()
    r = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=10, temperature=0, logprobs=4)
    lp = r.choices[0].logprobs
    want = Context(model, n_ctx=512).complete(PROMPT, 10, SamplerParams.greedy(), logprobs=4)
    assert want.logprobs is not None
    assert lp.tokens == [e.piece for e in want.logprobs] and "".join(lp.tokens) == r.choices[0].text
    assert lp.token_logprobs == pytest.approx([e.logprob for e in want.logprobs], abs=1e-4)
    assert [list(d) for d in lp.top_logprobs] == [[t.piece for t in e.top] for e in want.logprobs]
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    stream = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=10, temperature=0, logprobs=4,
                                       stream=True)
    tokens, offsets = [], []
    for ch in stream:
        if ch.choices[0].logprobs:
            tokens += ch.choices[0].logprobs.tokens
            offsets += ch.choices[0].logprobs.text_offset
    assert tokens == lp.tokens and offsets == lp.text_offset
    # logprobs 0: the chosen tokens only
    r = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=3, temperature=0, logprobs=0)
    assert r.choices[0].logprobs.top_logprobs == [{}, {}, {}] and len(r.choices[0].logprobs.token_logprobs) == 3
    with pytest.raises(openai_error()):
        client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=3, logprobs=21)


def openai_error() -> type[Exception]:
    import openai
    return openai.BadRequestError
