"""KV-cache types and the flash-attention switch: what llama.cpp allocates, what it refuses, what it generates."""

from __future__ import annotations

import logging
import re

import pytest

from mullama import Context, Model, SamplerParams
from mullama.engine import Engine
from mullama.kv_cache import KV_TYPES

PROMPT = "The history of the printing press"
GREEDY = SamplerParams.greedy()


def _logged_kv_mib(caplog: pytest.LogCaptureFixture) -> float:
    """llama.cpp's own report of the cache it allocated ('llama_kv_cache: size = X MiB ...')."""
    sizes = [float(m.group(1)) for r in caplog.records
             if (m := re.search(r"llama_kv_cache: size =\s*([\d.]+) MiB", r.getMessage()))]
    assert sizes, "llama.cpp did not log its cache size"
    return sizes[-1]


@pytest.mark.parametrize("type_k,type_v", [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("bf16", "f16"),
                                           ("f32", "f32"), ("q5_1", "iq4_nl")])
def test_each_type_allocates_what_kv_bytes_says_and_generates(model: Model, caplog: pytest.LogCaptureFixture,
                                                              type_k: str, type_v: str) -> None:
    caplog.set_level(logging.INFO, logger="mullama")
    ctx = Context(model, n_ctx=512, type_k=type_k, type_v=type_v, flash_attn=True)
    assert (ctx.type_k, ctx.type_v) == (type_k, type_v)
    assert ctx.kv_bytes / 2**20 == pytest.approx(_logged_kv_mib(caplog), abs=0.01)
    c = ctx.complete(PROMPT, 12, GREEDY, ignore_eos=True)
    assert len(c.tokens) == 12 and c.text.strip()


def test_quantized_caches_are_smaller_in_the_expected_ratio(model: Model) -> None:
    f16 = Context(model, n_ctx=1024).kv_bytes
    assert Context(model, n_ctx=1024, type_k="q8_0", type_v="q8_0", flash_attn=True).kv_bytes / f16 == 34 / 64
    assert Context(model, n_ctx=1024, type_k="q4_0", type_v="q4_0", flash_attn=True).kv_bytes / f16 == 18 / 64


@pytest.mark.parametrize("flash_attn,reported", [(True, "enabled"), (False, "disabled")])
def test_the_flash_attention_switch_reaches_llama_cpp(model: Model, caplog: pytest.LogCaptureFixture,
                                                      flash_attn: bool, reported: str) -> None:
    caplog.set_level(logging.INFO, logger="mullama")
    ctx = Context(model, n_ctx=256, flash_attn=flash_attn)
    said = [r.getMessage() for r in caplog.records if re.search(r"llama_context: flash_attn\s*=", r.getMessage())]
    assert said and said[-1].split("=")[-1].strip() == reported
    assert len(ctx.complete(PROMPT, 8, GREEDY, ignore_eos=True).tokens) == 8


def test_refused_combinations_and_bad_arguments(model: Model) -> None:
    with pytest.raises(ValueError, match="flash attention"):
        Context(model, n_ctx=256, type_v="q8_0", flash_attn=False)
    with pytest.raises(ValueError, match="q3_k"):
        Context(model, n_ctx=256, type_k="q3_k")
    with pytest.raises(TypeError, match="type_v"):
        Context(model, n_ctx=256, type_v=8)  # type: ignore[arg-type]
    for bad in ("on", 1, None):
        with pytest.raises(TypeError, match="flash_attn"):
            Context(model, n_ctx=256, flash_attn=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flash attention"):
        Engine(model, parallel=2, n_ctx=256, type_v="q4_0", flash_attn=False)
    # a quantized K cache alone is allowed without flash attention
    assert Context(model, n_ctx=256, type_k="q8_0", flash_attn=False).complete(PROMPT, 4, GREEDY).tokens
    assert set(KV_TYPES) == {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"}


def test_engine_with_a_quantized_cache_equals_a_lone_context_with_it(model: Model) -> None:
    kw = {"type_k": "q8_0", "type_v": "q8_0", "flash_attn": True}
    lone = Context(model, n_ctx=256, **kw).complete(PROMPT, 16, GREEDY, ignore_eos=True).tokens  # type: ignore[arg-type]
    with Engine(model, parallel=2, n_ctx=256, **kw) as eng:  # type: ignore[arg-type]
        assert eng.submit(PROMPT, 16, GREEDY, ignore_eos=True).completion().tokens == lone


def test_perplexity_follows_llama_cpps_method(model: Model) -> None:
    """mullama.perplexity against the same quantity made here, one token at a time, with NumPy."""
    import ctypes

    import numpy as np

    from mullama import _backend
    from mullama.perplexity import perplexity
    text = ("The printing press is a mechanical device for applying pressure to an inked surface resting upon a "
            "print medium, thereby transferring the ink. It marked a dramatic improvement on earlier printing "
            "methods in which the cloth, paper or other medium was brushed or rubbed repeatedly. ") * 3
    tokens = model.tokenize(text, add_bos=True)
    chunk = 64
    got = perplexity(model, tokens, chunk=chunk)
    assert got.n_chunks == len(tokens) // chunk and got.n_scored == got.n_chunks * (chunk - 1 - chunk // 2)
    L = _backend.lib()
    nll = []
    for c in range(got.n_chunks):
        part = tokens[c * chunk:(c + 1) * chunk]
        ctx = Context(model, n_ctx=256)
        ctx.decode(part[:chunk // 2 + 1])
        for i in range(chunk // 2, chunk - 1):
            row = np.ctypeslib.as_array(ctypes.cast(L.llama_get_logits_ith(ctx.ptr(), -1),
                                                    ctypes.POINTER(ctypes.c_float)), shape=(model.n_vocab,))
            x = row.astype(np.float64)
            nll.append(-(x[part[i + 1]] - x.max() - np.log(np.exp(x - x.max()).sum())))
            if i + 1 < chunk - 1:
                ctx.decode([part[i + 1]])
        ctx.close()
    # the reference decodes one token at a time, another float path than one batch per chunk: 1% (a token
    # scored off by one position moves it by far more); benchmarks/perplexity.py matches llama-perplexity
    assert got.nll == pytest.approx(float(np.mean(nll)), rel=1e-2)
    assert got.value == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-2)
    with pytest.raises(ValueError, match="needs at least"):
        perplexity(model, tokens[:100], chunk=64)
