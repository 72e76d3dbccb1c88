"""The batched Engine on SmolLM2: the same answers as a lone Context, one llama_decode per step."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mullama import Context, ContextFullError, Model, SamplerParams, _backend
from mullama.engine import Engine

from .conftest import unique_stop_piece

GREEDY = SamplerParams.greedy()
PROMPTS = [f"Write one sentence about the number {i}." for i in range(12)] + \
          ["Once upon a time", "def fibonacci(n):", "Les fleurs du jardin", "The ocean is"]


@pytest.fixture(scope="module")
def alone(model: Model) -> dict[str, str]:
    ctx = Context(model, n_ctx=512)
    out = {}
    for p in PROMPTS:
        ctx.clear_cache()
        out[p] = ctx.generate(p, max_tokens=24, params=GREEDY)
    return out


@pytest.fixture()
def engine(model: Model) -> Engine:
    e = Engine(model, parallel=4, n_ctx=512)
    yield e  # type: ignore[misc]
    e.close()


def test_a_request_alone_equals_a_lone_context(engine: Engine, alone: dict[str, str]) -> None:
    for p in PROMPTS[:4]:
        assert engine.generate(p, 24, GREEDY) == alone[p]


def test_concurrent_requests_each_equal_a_lone_context(engine: Engine, alone: dict[str, str]) -> None:
    # 16 requests over 4 slots: they queue, join and leave at different steps,
    # and slots are reused with prefixes of earlier prompts.
    reqs = [engine.submit(p, 24, GREEDY) for p in PROMPTS]
    assert {p: r.text() for p, r in zip(PROMPTS, reqs)} == alone
    assert all(r.finish_reason in ("stop", "length") for r in reqs)
    assert engine.busy_slots == 0 and engine.queue_depth == 0
    # decoding was batched: far fewer steps than tokens
    assert engine.stats["steps"] < engine.stats["completion_tokens"]


def test_requests_from_many_threads(engine: Engine, alone: dict[str, str]) -> None:
    results: dict[str, str] = {}

    def one(p: str) -> None:
        results[p] = "".join(engine.submit(p, 24, GREEDY))
    threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS[:8]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {p: alone[p] for p in PROMPTS[:8]}


def test_async_consumers(engine: Engine, alone: dict[str, str]) -> None:
    async def main() -> list[str]:
        reqs = [engine.submit(p, 24, GREEDY) for p in PROMPTS[:6]]
        return await asyncio.gather(*(r.atext() for r in reqs))
    assert asyncio.run(main()) == [alone[p] for p in PROMPTS[:6]]


def test_the_next_turn_reuses_the_cached_prefix(engine: Engine, model: Model) -> None:
    msgs = [("system", "You are terse."), ("user", "Name a color.")]
    first = engine.submit(model.apply_chat_template(msgs), 16, GREEDY)
    answer = first.text()
    assert first.prompt_evaluated == first.prompt_tokens
    msgs += [("assistant", answer), ("user", "Another one.")]
    second = engine.submit(model.apply_chat_template(msgs), 16, GREEDY)
    second.text()
    assert second.prompt_evaluated < second.prompt_tokens // 2
    assert engine.stats["prompt_tokens_evaluated"] < engine.stats["prompt_tokens"]


def test_stop_strings_max_tokens_and_usage(engine: Engine, alone: dict[str, str], model: Model) -> None:
    p = "Once upon a time"
    full = alone[p]
    word = next(w for w in full.split()[2:] if len(w) >= 4)
    r = engine.submit(p, 24, GREEDY, stop=[word])
    assert r.text() == full[:full.index(word)] and r.finish_reason == "stop"
    r = engine.submit(p, 5, GREEDY)
    assert r.text() and r.finish_reason == "length" and r.completion_tokens == 5
    assert r.prompt_tokens == len(model.tokenize(p, special=True))
    r = engine.submit(p, 0, GREEDY)
    assert r.text() == "" and r.finish_reason == "length"


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    params = SamplerParams(seed=99, temperature=1.0)
    texts = [r.text() for r in [engine.submit("My favourite animal is", 20, params) for _ in range(3)]]
    assert texts[0] == texts[1] == texts[2]


def test_cancel_frees_the_slot_at_the_next_step(engine: Engine, alone: dict[str, str]) -> None:
    r = engine.submit("Tell me a long story.", 400, GREEDY, ignore_eos=True)
    it = iter(r)
    next(it)
    r.cancel()
    rest = list(it)
    assert r.finish_reason == "cancelled" and len(rest) < 5
    assert engine.generate(PROMPTS[0], 24, GREEDY) == alone[PROMPTS[0]]


def test_async_consumer_leaving_early_cancels(engine: Engine) -> None:
    r = engine.submit("Tell me a long story.", 400, GREEDY, ignore_eos=True)

    async def main() -> None:
        async for _ in r:
            break
    asyncio.run(main())
    r.text()  # drains to the end the engine gives it
    assert r.finish_reason == "cancelled"


def test_limits_and_errors(model: Model) -> None:
    with Engine(model, parallel=2, n_ctx=256) as e:
        with pytest.raises(ContextFullError):
            e.submit("word " * 400)
        r = e.submit("Tell me a story.", 1000, GREEDY, ignore_eos=True)
        assert r.text() and r.finish_reason == "length" and r.prompt_tokens + r.completion_tokens <= 257
        for bad in ({"max_tokens": -1}, {"stop": [""]}):
            with pytest.raises(ValueError):
                e.submit("Hi", **bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            e.submit("Hi", params={"temperature": 0})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="outside the vocabulary"):
            e.submit([1, 10**9])
    with pytest.raises(RuntimeError, match="closed"):
        e.submit("Hi")
    with pytest.raises(ValueError):
        Engine(model, parallel=0)
    with pytest.raises(ValueError, match="n_ctx_train"):
        Engine(model, n_ctx=model.n_ctx_train + 1)
    with pytest.raises(TypeError):
        Engine("model.gguf")  # type: ignore[arg-type]


def test_close_with_drain_finishes_what_was_submitted(model: Model, alone: dict[str, str]) -> None:
    e = Engine(model, parallel=2, n_ctx=512)
    reqs = [e.submit(p, 24, GREEDY) for p in PROMPTS[:5]]
    e.close(drain=True)
    assert [r.text() for r in reqs] == [alone[p] for p in PROMPTS[:5]]
    e2 = Engine(model, parallel=2, n_ctx=512)
    reqs = [e2.submit(p, 24, GREEDY) for p in PROMPTS[:5]]
    e2.close()
    assert all(r.finish_reason in ("cancelled", "stop", "length") for r in reqs)
    for r in reqs:
        r.text()


def test_a_stop_string_leaves_its_token_out_of_the_slot_cache(model: Model) -> None:
    """The engine sends each token to the decoder before making its text; when that text completes a
    stop string, the token leaves the slot's cache again, which the next request then reuses."""
    prompt = "Write a story about a dragon."
    prompt_ids = model.tokenize(prompt, special=True)
    with Engine(model, parallel=1, n_ctx=256) as eng:
        full = eng.generate(prompt, 40, SamplerParams.greedy(), ignore_eos=True)
        gen = eng._slots[0].tokens[len(prompt_ids):]
        j, stop = unique_stop_piece(model, gen, full)
        req = eng.submit(prompt, 40, SamplerParams.greedy(), ignore_eos=True, stop=[stop])
        assert req.text() == full[:full.find(stop)]
        assert eng._slots[0].tokens == prompt_ids + gen[:j]
        assert eng.generate(prompt, 40, SamplerParams.greedy(), ignore_eos=True) == full


def test_a_finished_sequence_decoded_nothing_past_its_last_token(model: Model) -> None:
    """The engine picks a greedy sequence's next token before its loop runs (so that only the argmax
    lies between two decodes); a token that ends the generation (max_tokens, end of generation) must
    still never reach the decoder: each slot's cache then holds the prompt and every generated token
    but the last, in llama.cpp's memory as in the engine's record, and the text is a lone Context's."""
    chat = model.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True)
    cases = [("Once upon a time", 1, True), ("Les fleurs du jardin", 2, True), ("The ocean is", 9, True),
             (chat, 200, False)]
    ctx = Context(model, n_ctx=512)
    expected = []
    for prompt, n, ignore in cases:
        ctx.clear_cache()
        expected.append(ctx.generate(prompt, max_tokens=n, params=GREEDY, ignore_eos=ignore))
    ctx.close()
    for (prompt, n, ignore), text in zip(cases, expected):
        with Engine(model, parallel=2, n_ctx=512) as eng:
            beside = eng.submit("Write a long story about a dragon.", 60, GREEDY, ignore_eos=True)
            req = eng.submit(prompt, n, GREEDY, ignore_eos=ignore)
            assert req.text() == text
            slot = next(s for s in eng._slots if s.tokens[:req.prompt_tokens] == req.prompt)
            assert len(slot.tokens) == req.prompt_tokens + req.completion_tokens - 1
            assert _backend.lib().llama_memory_seq_pos_max(eng._ctx._mem, slot.seq) + 1 == len(slot.tokens)
            assert beside.text() and beside.completion_tokens == 60
        if not ignore:
            assert req.finish_reason == "stop" and req.completion_tokens < n  # ended by end of generation


# Openings of different subjects, each far longer than _COPY_MIN_TOKENS tokens,
# that share nothing from their first token on.
BURST = [
    "The ocean covers most of the planet, and its deepest trenches are darker and colder than anything",
    "Les fleurs du jardin s'ouvrent au printemps quand le soleil revient et que les jours deviennent",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number, computed iteratively.\"\"\"\n    a, b = 0, 1",
    "Mountains form where tectonic plates collide, pushing rock upward over millions of years until",
    "A good cup of coffee starts with freshly ground beans, water just below boiling, and patience while",
    "In the year 1969 three astronauts flew to the Moon, and two of them walked on its dusty surface for",
]


def _lone(model: Model, prompt: str, n: int) -> str:
    with Context(model, n_ctx=512) as ctx:
        return ctx.generate(prompt, max_tokens=n, params=GREEDY, ignore_eos=True)


def _cache_matches_record(eng: Engine) -> None:
    for s in eng._slots:
        assert _backend.lib().llama_memory_seq_pos_max(eng._ctx._mem, s.seq) + 1 == len(s.tokens), s.seq


def test_after_a_burst_a_smaller_load_is_one_run_of_sequences(model: Model) -> None:
    """llama.cpp decodes a step's sequences in one pass only while their ids are consecutive; after
    every slot has been used, follow-ups whose cached prefixes lie in slots 5, 2 and 4 still run in
    slots 0-2 (those caches are copied there), reuse their prefixes and equal a lone Context."""
    follow = [BURST[k] + " it was" for k in (5, 2, 4)]
    expected = [_lone(model, p, 12) for p in follow]
    with Engine(model, parallel=6, n_ctx=256) as eng:
        for r in [eng.submit(p, 8, GREEDY, ignore_eos=True) for p in BURST]:
            r.text()
        assert eng.stats["split_steps"] == 0
        reqs = [eng.submit(p, 12, GREEDY, ignore_eos=True) for p in follow]
        assert [r.text() for r in reqs] == expected
        used = sorted(next(s.seq for s in eng._slots if s.tokens[:r.prompt_tokens] == r.prompt) for r in reqs)
        assert used == [0, 1, 2]
        assert eng.stats["cache_copies"] == 3
        assert all(r.prompt_evaluated < r.prompt_tokens - 16 for r in reqs), [r.prompt_evaluated for r in reqs]
        assert eng.stats["split_steps"] == 0
        _cache_matches_record(eng)


def test_a_gap_left_by_a_finished_request_is_closed(model: Model) -> None:
    """The second of four requests ends early; the highest running sequence moves into its slot (cache
    copied, state following), every step stays one run, and every answer equals a lone Context's."""
    lengths = [40, 3, 40, 40]
    expected = [_lone(model, p, n) for p, n in zip(BURST, lengths)]
    with Engine(model, parallel=4, n_ctx=256) as eng:
        reqs = [eng.submit(p, n, GREEDY, ignore_eos=True) for p, n in zip(BURST, lengths)]
        assert [r.text() for r in reqs] == expected
        assert eng.stats["sequence_moves"] >= 1
        assert eng.stats["split_steps"] == 0
        _cache_matches_record(eng)


def test_an_idle_slot_keeps_no_device_chain_for_long(model: Model) -> None:
    """A device chain stays attached to an idle slot for a while (the next request with the same
    parameters keeps it), then leaves the graph that every step would otherwise carry it in."""
    params = SamplerParams(temperature=0.8, seed=7)
    with Engine(model, parallel=4, n_ctx=256, sampling="device") as eng:
        for r in [eng.submit(p, 4, params) for p in BURST[:4]]:
            r.text()
        assert sorted(eng._ctx._attached) == [0, 1, 2, 3]  # kept, idle for less than _IDLE_CHAIN_STEPS
        long = eng.submit(BURST[4], 80, params, ignore_eos=True)
        long.text()
        assert sorted(eng._ctx._attached) == [0]  # the long request's own, which has only just gone idle


def test_a_request_copies_the_prompt_a_busy_sequence_has_decoded(model: Model) -> None:
    """A second request with the same prompt, submitted while the first generates, takes the first's
    cache (a copy of its stream) instead of evaluating the prompt again, and answers the same."""
    prompt = BURST[0] + " and"
    expected = _lone(model, prompt, 20)
    with Engine(model, parallel=2, n_ctx=256) as eng:
        first = eng.submit(prompt, 20, GREEDY, ignore_eos=True)
        while not first.prompt_decoded:
            threading.Event().wait(0.001)
        second = eng.submit(prompt, 20, GREEDY, ignore_eos=True)
        assert (first.text(), second.text()) == (expected, expected)
        assert first.prompt_evaluated == first.prompt_tokens
        assert second.prompt_evaluated == 1  # only the last prompt token, for its logits
        assert eng.stats["cache_copies"] == 1 and eng.stats["split_steps"] == 0
        _cache_matches_record(eng)


def test_a_lone_client_keeps_its_device_chain_across_parameter_changes(model: Model) -> None:
    """With every slot idle, a request takes sequence 0 or 1, whichever keeps the attached device chains:
    a lone client alternating two parameter sets reuses each chain instead of attaching it again (each
    attach makes llama.cpp reserve its graphs)."""
    a, b = SamplerParams(temperature=0.7, seed=3), SamplerParams(temperature=1.1, top_k=20, seed=4)
    with Engine(model, parallel=4, n_ctx=256, sampling="device") as eng:
        eng.generate(BURST[0], 4, a)
        chain_a = eng._ctx._attached[0]
        eng.generate(BURST[1], 4, b)
        chain_b = eng._ctx._attached[1]  # slot 0 keeps a's chain
        for p in BURST[2:4]:
            eng.generate(p, 4, a)
            eng.generate(p, 4, b)
        assert eng._ctx._attached[0] is chain_a and eng._ctx._attached[1] is chain_b
        assert eng.stats["split_steps"] == 0


def test_the_servers_warm_up_leaves_the_engine_as_a_fresh_one(model: Model, alone: dict[str, str]) -> None:
    """The GPU warm-up (one prompt per kernel width, two sampled generations) runs here on the CPU:
    it fits a small n_ctx, leaves every cache as its record says, and the requests that follow answer
    as on a fresh engine."""
    from mullama.server import warm_up
    with Engine(model, parallel=4, n_ctx=64) as eng:
        warm_up(eng, model.n_vocab)
        assert eng.stats["split_steps"] == 0
        _cache_matches_record(eng)
        reqs = [eng.submit(p, 24, GREEDY) for p in PROMPTS[:4]]
        assert [r.text() for r in reqs] == [alone[p] for p in PROMPTS[:4]]
        _cache_matches_record(eng)
    with Engine(model, parallel=1, n_ctx=4) as tiny:
        warm_up(tiny, model.n_vocab)  # too small to warm up: nothing is run, nothing fails
        assert all(len(s.tokens) == 0 for s in tiny._slots)
