"""Speculative decoding: drafted tokens change how many decodes run, never which tokens come out."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mullama import Context, DraftModel, Model, PromptLookup, SamplerParams
from mullama.engine import Engine
from mullama.speculative import lookup

from .test_sampling import _chi_square

ROOT = Path(__file__).resolve().parents[1]
GREEDY = SamplerParams.greedy()
PARAGRAPH = ("The quick brown fox jumps over the lazy dog near the river bank, while the farmer watches from "
             "his old wooden porch and drinks a cup of strong black coffee every single morning.")


@pytest.fixture(scope="module")
def copy_prompt(model: Model) -> str:
    """A task that copies from its prompt: where prompt lookup drafts well."""
    return model.apply_chat_template(
        [{"role": "user", "content": "Repeat this text exactly, word for word:\n\n" + PARAGRAPH}],
        add_generation_prompt=True)


def _tokens(model: Model, prompt: str, n: int, params: SamplerParams = GREEDY, **kw: object) -> tuple[list[int], dict[str, int]]:
    ctx = Context(model, n_ctx=1024, **kw)  # type: ignore[arg-type]
    out = ctx.complete(prompt, n, params, ignore_eos=True).tokens
    stats = dict(ctx.draft_stats)
    ctx.close()
    return out, stats


def test_lookup_finds_the_last_earlier_ngram() -> None:
    h = [1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3]
    assert lookup(h, 3, 1, 4) == [4, 5, 6, 7]  # the later of the two earlier "1 2 3"
    assert lookup(h, 3, 1, 2) == [4, 5]
    assert lookup([5, 6, 7, 8], 3, 1, 4) == []  # no earlier occurrence of any suffix
    assert lookup([5, 6, 5, 8, 5], 3, 1, 4) == [8, 5]  # down to one token
    assert lookup([5, 6, 5, 8, 5], 3, 2, 4) == []  # not below n_min
    assert lookup([7], 3, 1, 4) == [] and lookup([1, 1], 3, 1, 0) == []


def test_prompt_lookup_gives_the_same_greedy_tokens_in_fewer_decodes(model: Model, copy_prompt: str) -> None:
    plain, none = _tokens(model, copy_prompt, 48)
    drafted, stats = _tokens(model, copy_prompt, 48, draft=PromptLookup(n=3, draft_max=8))
    assert drafted == plain
    # (the last token is sampled, never decoded)
    assert none == {"drafted": 0, "accepted": 0, "decodes": 47}
    assert stats["accepted"] > 10
    assert stats["decodes"] + stats["accepted"] == 47  # every token is a decode or an accepted draft


def test_a_draft_model_gives_the_same_greedy_tokens(model: Model, copy_prompt: str) -> None:
    prompt = "The history of the printing press begins"
    for p in (prompt, copy_prompt):
        plain, _ = _tokens(model, p, 40)
        drafted, stats = _tokens(model, p, 40, draft=DraftModel(model, 6, p_min=0.0))
        assert drafted == plain
        # the model drafting for itself: its greedy guesses are the target's own
        assert stats["accepted"] >= stats["drafted"] // 2 > 0
        assert stats["decodes"] + stats["accepted"] == 39


def test_seeded_sampling_draws_the_same_tokens_with_drafts(model: Model, copy_prompt: str) -> None:
    """Each token is still one draw of the chain from the target's logits: a seed reproduces it exactly."""
    params = SamplerParams(temperature=0.8, top_k=40, top_p=0.95, seed=77)
    plain, _ = _tokens(model, copy_prompt, 40, params)
    for draft in (PromptLookup(), DraftModel(model, 4)):
        drafted, stats = _tokens(model, copy_prompt, 40, params, draft=draft)
        assert drafted == plain and stats["accepted"] > 0, draft


def test_stop_strings_logprobs_and_grammar_see_only_kept_tokens(model: Model, copy_prompt: str) -> None:
    plain = Context(model, n_ctx=1024)
    ctx = Context(model, n_ctx=1024, draft=PromptLookup())
    a = plain.complete(copy_prompt, 40, GREEDY, logprobs=3, stop=["river"])
    b = ctx.complete(copy_prompt, 40, GREEDY, logprobs=3, stop=["river"])
    assert (b.text, b.tokens, b.finish_reason) == (a.text, a.tokens, "stop")
    assert a.logprobs is not None and b.logprobs is not None
    for x, y in zip(a.logprobs, b.logprobs):
        assert x.token == y.token and x.logprob == pytest.approx(y.logprob, abs=1e-3)
        assert [t.token for t in x.top] == [t.token for t in y.top]
    # the cache holds exactly the kept tokens: the next turn reuses it like a plain context's
    assert ctx.tokens == plain.tokens
    assert ctx.generate(copy_prompt + b.text, 8, GREEDY) == plain.generate(copy_prompt + a.text, 8, GREEDY)
    assert ctx.last_prompt_evaluated == plain.last_prompt_evaluated
    from mullama import Grammar
    g = Grammar.from_json_schema({"type": "object", "properties": {"fox": {"type": "string"}}, "required": ["fox"]})
    assert ctx.generate(copy_prompt, 40, GREEDY, grammar=g) == plain.generate(copy_prompt, 40, GREEDY, grammar=g)


def test_streams_and_cancelling_keep_the_cache_consistent(model: Model, copy_prompt: str) -> None:
    ctx = Context(model, n_ctx=1024, draft=PromptLookup())
    whole = ctx.generate(copy_prompt, 30, GREEDY)
    stream = ctx.generate_stream(copy_prompt, 30, GREEDY)
    got = [next(stream) for _ in range(5)]
    stream.close()  # left with drafts decoded but not checked
    n = len(model.tokenize(copy_prompt, add_bos=True, special=True))
    assert n < len(ctx.tokens) <= n + 30
    assert whole.startswith("".join(got))
    assert ctx.generate(copy_prompt, 30, GREEDY) == whole


def test_the_context_full_limit_counts_kept_tokens_only(model: Model, copy_prompt: str) -> None:
    texts = []
    for draft in (None, PromptLookup(draft_max=16)):
        ctx = Context(model, n_ctx=256, draft=draft)
        pieces: list[str] = []
        with pytest.raises(RuntimeError, match="context is full"):
            for piece in ctx.generate_stream(copy_prompt, 400, GREEDY, ignore_eos=True):
                pieces.append(piece)
        assert len(ctx.tokens) == ctx.n_ctx
        texts.append("".join(pieces))
    assert texts[0] == texts[1]


def test_bad_drafts_are_refused(model: Model, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="draft must be"):
        Context(model, draft="lookup")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampling='device'"):
        Context(model, draft=PromptLookup(), sampling="device")
    with pytest.raises(ValueError, match="draft_max"):
        PromptLookup(draft_max=0)
    with pytest.raises(ValueError, match="n_min"):
        PromptLookup(n=2, n_min=3)
    with pytest.raises(ValueError, match="p_min"):
        DraftModel(model, p_min=1.5)
    with pytest.raises(TypeError, match="mullama.Model"):
        DraftModel("model.gguf")  # type: ignore[arg-type]
    vocab = ROOT / "native" / "llama.cpp" / "models" / "ggml-vocab-gpt-2.gguf"
    other = Model.load(vocab, vocab_only=True)
    with pytest.raises(ValueError, match="vocabulary is not the target model's: 50257 tokens against the target's 49152"):
        Context(model, draft=DraftModel(other))
    assert Context(model, n_ctx=256).generate("Hi", 4, GREEDY)  # nothing left behind


# -- the distribution --------------------------------------------------------------------


@pytest.fixture(scope="module")
def peaked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    out = tmp_path_factory.mktemp("peaked") / "peaked.gguf"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_model.py"), "--preset", "tiny", "--ftype", "f16",
                    "--synthetic-vocab", "--n-vocab", "512", "--logit-scale", "6", "--out", str(out)],
                   check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    m = Model.load(out)
    yield m
    m.close()


class _Fixed(PromptLookup):
    """Drafts one chosen token after every token: the rule is checked against a draft of known probability."""

    def __init__(self, token: int) -> None:
        super().__init__(draft_max=1)
        self.token = token

    def _start(self, target: Context, n_seq: int) -> _FixedDrafter:
        return _FixedDrafter(self)


class _FixedDrafter:
    def __init__(self, spec: _Fixed) -> None:
        self.spec, self.draft_max = spec, 1

    def draft(self, histories: dict[int, list[int]], room: dict[int, int]) -> dict[int, list[int]]:
        return {seq: [self.spec.token] for seq in histories}

    def forget(self, seq: int) -> None:
        pass

    def move(self, src: int, dst: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_drafted_positions_keep_the_target_distribution(peaked: Model) -> None:
    """The second token, after the most likely first one, drawn 3000 times with a draft of probability ~1/3."""
    prompt = peaked.tokenize("My favourite colour is", add_bos=True)
    with Context(peaked, n_ctx=64) as ref:
        rows = ref.complete(prompt, 2, GREEDY, logprobs=1)
        first = rows.tokens[0]
        ref.clear_cache()
        ref.decode(prompt + [first])
        from mullama import _sequence
        logits = _sequence.LogitRows(ref.ptr(), peaked.n_vocab).view(-1).astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    drafted = int(np.argmin(np.abs(p - 1 / 3)))
    assert 0.1 < p[drafted] < 0.9, "the draft should be neither certain nor hopeless"
    params = SamplerParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, penalty_repeat=1.0)
    draws: list[int] = []
    with Context(peaked, n_ctx=64, draft=_Fixed(drafted)) as ctx:
        for _ in range(3000):
            toks = ctx.complete(prompt, 3, params, ignore_eos=True).tokens  # the 2nd is checked, not last
            if toks[0] == first:
                draws.append(toks[1])
        stats = ctx.draft_stats
    assert len(draws) >= 300
    share = Counter(draws)[drafted] / len(draws)
    assert abs(share - p[drafted]) < 4 * math.sqrt(p[drafted] * (1 - p[drafted]) / len(draws))
    stat, crit, df = _chi_square(draws, p)
    assert crit > 0 and stat < crit, f"chi-square {stat:.1f} >= {crit:.1f} (df {df}, p < 0.001)"
    assert _chi_square(draws, np.where(np.arange(len(p)) == drafted, 1.0, 0.0))[0] > crit  # the test can fail
    assert 0 < stats["accepted"] < stats["drafted"]


# -- the engine --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lookup", "model"])
def test_engine_requests_with_drafts_equal_lone_contexts(model: Model, copy_prompt: str, kind: str) -> None:
    draft = PromptLookup() if kind == "lookup" else DraftModel(model, 4)
    # (no two prompts share a long prefix: a prefix copied from another sequence's cache can
    # flip a near-tie, drafts or not, and that is not what this compares)
    prompts = [copy_prompt, "The history of the printing press begins",
               "Text: " + PARAGRAPH.replace("fox", "cat") + "\nThe same text again: The quick", "Write a list of five fruits:"]
    sampled = SamplerParams(temperature=0.7, seed=5)
    want = [_tokens(model, p, 24, GREEDY if i % 2 == 0 else sampled)[0] for i, p in enumerate(prompts)]
    with Engine(model, parallel=3, n_ctx=512, draft=draft) as eng:
        reqs = [eng.submit(p, 24, GREEDY if i % 2 == 0 else sampled, ignore_eos=True) for i, p in enumerate(prompts)]
        got = [r.completion().tokens for r in reqs]
        stats = dict(eng.stats)
    assert stats["cache_copies"] == 0
    assert got == want
    assert stats["drafts_accepted"] > 0 and stats["drafted"] >= stats["drafts_accepted"]
    assert stats["completion_tokens"] == 4 * 24


# -- the server --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lookup", "model"])
def test_the_server_drafts_and_answers_as_without(smollm_path: Path, model: Model, copy_prompt: str,
                                                  kind: str) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("openai")
    from mullama.server import ServeOptions

    from .test_server import Server
    draft = {"lookup": 3} if kind == "lookup" else {"draft_model": smollm_path, "draft_max": 4}
    srv = Server(ServeOptions(model=smollm_path, parallel=2, n_ctx=1024, api_key="k", model_id="smollm2",
                              **draft))  # type: ignore[arg-type]
    try:
        want = _tokens(model, copy_prompt, 32)[0]
        r = srv.client("k").completions.create(model="smollm2", prompt=copy_prompt, max_tokens=32, temperature=0,
                                               logprobs=1)
        assert r.choices[0].logprobs.tokens == [model.token_to_piece(t, True).decode("utf-8", "replace")
                                                for t in want][:len(r.choices[0].logprobs.tokens)]
        assert r.choices[0].text == model.detokenize(want[:r.usage.completion_tokens])
        status, body = srv.raw("GET", "/metrics", key="k")
        accepted = [line for line in body.decode().splitlines() if line.startswith("mullama_draft_tokens_accepted")]
        assert status == 200 and float(accepted[0].split()[-1]) > 0
    finally:
        srv.stop()
