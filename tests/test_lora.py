"""LoRA adapters on SmolLM2: an adapter made with PEFT, converted and merged by llama.cpp's own tools."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from mullama import Context, LoraAdapter, Model, SamplerParams
from mullama.engine import Engine

PROMPT = "The history of the printing press"
CHAT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
GREEDY = SamplerParams.greedy()


@pytest.fixture(scope="module")
def base(lora_files: dict[str, Path]) -> Model:
    return Model.load(lora_files["base_f32"])


@pytest.fixture(scope="module")
def adapter(base: Model, lora_files: dict[str, Path]) -> LoraAdapter:
    return base.load_lora(lora_files["adapter"])


@pytest.fixture(scope="module")
def merged(lora_files: dict[str, Path]) -> dict[str, list[int]]:
    m = Model.load(lora_files["merged"])
    ctx = Context(m, n_ctx=256)
    out = {p: ctx.complete(p, 16, GREEDY, ignore_eos=True).tokens for p in (PROMPT, CHAT)}
    ctx.close()
    m.close()
    return out


@pytest.fixture(scope="module")
def plain(base: Model) -> dict[str, list[int]]:
    ctx = Context(base, n_ctx=256)
    return {p: ctx.complete(p, 16, GREEDY, ignore_eos=True).tokens for p in (PROMPT, CHAT)}


def test_scale_one_equals_the_merged_model_and_zero_the_base(base: Model, adapter: LoraAdapter,
                                                              merged: dict[str, list[int]],
                                                              plain: dict[str, list[int]]) -> None:
    assert merged[PROMPT] != plain[PROMPT]  # the adapter really changes the output
    ctx = Context(base, n_ctx=256)
    for p in (PROMPT, CHAT):
        ctx.set_loras({adapter: 1.0})
        assert ctx.loras == {adapter: 1.0}
        assert ctx.complete(p, 16, GREEDY, ignore_eos=True).tokens == merged[p]
        ctx.set_loras({adapter: 0.0})
        assert ctx.loras == {}
        assert ctx.complete(p, 16, GREEDY, ignore_eos=True).tokens == plain[p]
    ctx.set_loras(None)
    assert ctx.loras == {}


def test_switching_adapters_evaluates_the_prompt_again(base: Model, adapter: LoraAdapter,
                                                       merged: dict[str, list[int]]) -> None:
    ctx = Context(base, n_ctx=256)
    ctx.complete(PROMPT, 8, GREEDY)
    ctx.complete(PROMPT, 8, GREEDY)
    assert ctx.last_prompt_evaluated == 1  # the same adapters: the cached prefix is reused
    ctx.set_loras({adapter: 1.0})
    assert ctx.complete(PROMPT, 16, GREEDY, ignore_eos=True).tokens == merged[PROMPT]
    assert ctx.last_prompt_evaluated == len(base.tokenize(PROMPT, add_bos=True))  # not the base's cache
    ctx.complete(PROMPT, 8, GREEDY)
    assert ctx.last_prompt_evaluated == 1


def test_one_adapter_serves_many_contexts_and_outlives_close(lora_files: dict[str, Path],
                                                             merged: dict[str, list[int]]) -> None:
    m = Model.load(lora_files["base_f32"])
    a = m.load_lora(lora_files["adapter"])
    assert a.alpha == 16.0 and a.model is m and a.path == lora_files["adapter"]
    c1, c2 = Context(m, n_ctx=256), Context(m, n_ctx=256)
    c1.set_loras({a: 1.0})
    c2.set_loras({a: 1.0})
    a.close()  # still applied by two contexts: freed only when neither uses it
    assert a.closed
    assert c1.complete(PROMPT, 16, GREEDY, ignore_eos=True).tokens == merged[PROMPT]
    c1.close()
    assert c2.complete(PROMPT, 16, GREEDY, ignore_eos=True).tokens == merged[PROMPT]
    with pytest.raises(RuntimeError, match="closed"):
        c2.set_loras({a: 1.0})
    c2.set_loras({})
    c2.close()
    m.close()
    gc.collect()


def test_bad_adapters_and_arguments(base: Model, adapter: LoraAdapter, lora_files: dict[str, Path],
                                    smollm_path: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="shape|wrong base"):
        base.load_lora(lora_files["wrong_adapter"])
    with pytest.raises(RuntimeError, match="general.type|adapter"):
        base.load_lora(smollm_path)  # a model, not an adapter
    with pytest.raises(RuntimeError, match="No such file"):
        base.load_lora(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(RuntimeError, match="not a valid GGUF"):
        base.load_lora(junk)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(lora_files["adapter"].read_bytes()[:200_000])
    with pytest.raises(RuntimeError):
        base.load_lora(truncated)
    ctx = Context(base, n_ctx=128)
    with pytest.raises(TypeError):
        ctx.set_loras([adapter])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.set_loras({"name": 1.0})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        ctx.set_loras({adapter: "1"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        ctx.set_loras({adapter: float("nan")})
    other = Model.load(smollm_path)
    with pytest.raises(ValueError, match="another model"):
        Context(other, n_ctx=128).set_loras({adapter: 1.0})
    assert ctx.complete(PROMPT, 4, GREEDY).tokens  # still usable


def test_engine_requests_with_different_adapters_each_equal_their_lone_run(
        base: Model, adapter: LoraAdapter, merged: dict[str, list[int]], plain: dict[str, list[int]]) -> None:
    with Engine(base, parallel=4, n_ctx=256) as eng:
        reqs = [eng.submit(p, 16, GREEDY, ignore_eos=True, loras=lo)
                for p in (PROMPT, CHAT) for lo in ({adapter: 1.0}, None)]
        got = [r.completion().tokens for r in reqs]
        assert eng.stats["lora_switches"] >= 2
        # the next request of a conversation reuses only a cache made with its own adapters
        again = eng.submit(PROMPT, 16, GREEDY, ignore_eos=True, loras={adapter: 1.0})
        assert again.completion().tokens == merged[PROMPT] and again.prompt_evaluated == 1
        with pytest.raises(TypeError):
            eng.submit(PROMPT, 4, loras={"x": 1.0})  # type: ignore[dict-item]
    assert got == [merged[PROMPT], plain[PROMPT], merged[CHAT], plain[CHAT]]


def test_the_server_applies_adapters_by_request(lora_files: dict[str, Path], base: Model,
                                                merged: dict[str, list[int]], plain: dict[str, list[int]]) -> None:
    pytest.importorskip("openai")
    import openai

    from mullama.server import ServeOptions

    from .test_server import Server
    s = Server(ServeOptions(model=lora_files["base_f32"], parallel=2, n_ctx=256, model_id="base",
                            loras=(("ft", lora_files["adapter"]),)))
    try:
        client = s.client()
        assert [m.id for m in client.models.list().data] == ["base", "ft"]

        def text(**kw: object) -> str:
            r = client.completions.create(prompt=PROMPT, max_tokens=16, temperature=0, **kw)  # type: ignore
            return str(r.choices[0].text)
        want_ft, want_base = base.detokenize(merged[PROMPT]), base.detokenize(plain[PROMPT])
        extra = {"ignore_eos": True}
        assert text(model="base", extra_body={**extra, "lora": {"ft": 1.0}}) == want_ft
        assert text(model="ft", extra_body=extra) == want_ft  # the adapter's name as the model
        assert text(model="base", extra_body={**extra, "lora": [{"id": 0, "scale": 0.0}]}) == want_base
        assert text(model="base", extra_body=extra) == want_base
        for bad in ({"nope": 1.0}, {"ft": "x"}, [{"id": 5, "scale": 1}], "ft"):
            with pytest.raises(openai.BadRequestError, match="lora"):
                text(model="base", extra_body={"lora": bad})
    finally:
        s.stop()
