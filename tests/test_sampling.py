"""The two sampling paths: the host chain (over the top-k candidates) and the chain in the decode graph.

Every expectation is computed in the same run: token ids by llama.cpp's own
sampler chain (tests/native/sampled_ref.c, the whole vocabulary on the host,
or the chain attached to the context), distributions from the logits the
model gives here.  On a CPU-only library the device path runs in ggml's CPU
graph; with MULLAMA_TEST_NGL=-1 on a GPU build the same tests run it on the GPU.
MULLAMA_TEST_SAMPLING_MODEL replaces SmolLM2 in the reference comparisons
(for a machine without it).
"""

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

from mullama import Context, Grammar, Model, SamplerParams, _backend, _sequence
from mullama.engine import Engine
from mullama.sampling import SamplerChain

from .conftest import compile_c

ROOT = Path(__file__).resolve().parent.parent
NGL = int(os.environ.get("MULLAMA_TEST_NGL", "0"))
PROMPT = "Once upon a time, in a small village by the sea,"


@pytest.fixture(scope="module")
def ref_model_path(request: pytest.FixtureRequest) -> Path:
    other = os.environ.get("MULLAMA_TEST_SAMPLING_MODEL")
    return Path(other) if other else Path(request.getfixturevalue("smollm_path"))


@pytest.fixture(scope="module")
def ref_model(ref_model_path: Path) -> Iterator[Model]:
    m = Model.load(ref_model_path, n_gpu_layers=NGL)
    yield m
    m.close()


@pytest.fixture(scope="module")
def peaked_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    """A 2-layer random llama with a 512-token vocabulary and trained-model-like peaked logits (fast to decode)."""
    out = tmp_path_factory.mktemp("peaked") / "peaked.gguf"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_model.py"), "--preset", "tiny", "--ftype", "f16",
                    "--synthetic-vocab", "--n-vocab", "512", "--logit-scale", "6", "--out", str(out)],
                   check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    m = Model.load(out, n_gpu_layers=NGL)
    yield m
    m.close()


@pytest.fixture(scope="module")
def sampled_ref(tmp_path_factory: pytest.TempPathFactory, c_compiler: str, lib_dir: Path) -> Path:
    return compile_c(c_compiler, ROOT / "tests/native/sampled_ref.c", tmp_path_factory.mktemp("sref") / "sampled_ref",
                     lib_dir)


def _reference(exe: Path, model_path: Path, mode: str, p: SamplerParams, n: int) -> list[int]:
    env = {**os.environ, "GGML_BACKEND_DIR": str(_backend.lib().path.parent), "REF_N_GPU_LAYERS": str(NGL)}
    args = [str(exe), str(model_path), mode, str(n), "512", str(p.seed), str(p.top_k), repr(p.top_p), repr(p.min_p),
            repr(p.temperature), str(p.penalty_last_n), repr(p.penalty_repeat), repr(p.penalty_freq),
            repr(p.penalty_present), PROMPT]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout.split("\n")
    return [int(x) for x in out[1].split()]


def _generated(ctx: Context, model: Model, p: SamplerParams, n: int) -> list[int]:
    n_prompt = len(model.tokenize(PROMPT, add_bos=True, special=True))
    ctx.clear_cache()
    ctx.generate(PROMPT, max_tokens=n, params=p, ignore_eos=True)
    return ctx.tokens[n_prompt:]  # all but the last sampled token (it was never decoded)


PARAM_SETS = {
    "default": SamplerParams(seed=7),
    "creative": SamplerParams(temperature=1.2, top_k=100, top_p=0.95, min_p=0.0, penalty_repeat=1.0, seed=11),
    "precise": SamplerParams(temperature=0.3, top_k=20, top_p=0.8, min_p=0.05, penalty_repeat=1.1, seed=3),
    "freq-presence": SamplerParams(temperature=0.9, top_k=30, penalty_repeat=1.3, penalty_freq=0.4,
                                   penalty_present=0.6, penalty_last_n=16, seed=5),
    "no-top-k": SamplerParams(temperature=0.7, top_k=0, top_p=0.9, min_p=0.02, seed=9),
    "negative-freq": SamplerParams(temperature=0.9, top_k=30, penalty_repeat=1.0, penalty_freq=-0.3,
                                   penalty_last_n=16, seed=4),
}
# Parameter sets whose device path cuts the vocabulary to top_k + window on the
# device and runs the chain on the host over those: the host path's tokens.
# The others (no top-k; a penalty that raises logits) run llama.cpp's device
# samplers in the graph, with their own random draws.
DEVICE_CUT = {"default", "creative", "precise", "freq-presence"}


@pytest.mark.parametrize("name", list(PARAM_SETS))
@pytest.mark.parametrize("path", ["cpu", "device"])
def test_same_tokens_as_llama_cpp_chain(ref_model: Model, ref_model_path: Path, sampled_ref: Path,
                                        name: str, path: str) -> None:
    """Seeded, each path gives exactly the ids llama.cpp's own chain gives, on the host or in the graph."""
    p = PARAM_SETS[name]
    n = 40
    cut = path == "device" and name in DEVICE_CUT
    ref = _reference(sampled_ref, ref_model_path, "host" if path == "cpu" or cut else "device", p, n)
    with Context(ref_model, n_ctx=512, sampling=path) as ctx:
        got = _generated(ctx, ref_model, p, n)
        if path == "device":
            names = ctx._attached[0].describe()
            assert (names[:2] == ["+top-k", "top-n-sigma"]) == cut, names
            assert cut or names[0].startswith("+")
    assert got == ref[:n - 1]


def test_host_candidates_equal_the_whole_vocabulary(ref_model: Model) -> None:
    """The host path's candidates hold every token the chain's top-k can keep, penalties included."""
    p = SamplerParams(top_k=40, penalty_repeat=1.5, penalty_last_n=64)
    chain = SamplerChain(p, ref_model.n_vocab, 512)
    rng = np.random.default_rng(0)
    recent = [int(x) for x in rng.integers(0, ref_model.n_vocab, 64)]
    chain.start(recent)
    out = np.zeros(ref_model.n_vocab, dtype=_sequence._TOKEN_DATA)
    for scale in (0.5, 3.0, 30.0):  # flat to peaked logits: the cut near the top widens as needed
        logits = (rng.standard_normal(ref_model.n_vocab) * scale).astype(np.float32)
        logits[recent[:8]] = logits.max() + 1.0  # recent tokens on top: the penalties push them down
        n = chain.candidates(logits, out)
        ids = set(out["id"][:n].tolist())
        pen = logits.copy()
        for t in set(recent):
            pen[t] = pen[t] / 1.5 if pen[t] > 0 else pen[t] * 1.5
        top = set(np.argsort(-pen, kind="stable")[:40].tolist())
        assert top <= ids
        assert set(recent) <= ids
        assert n <= 40 + 2 * 64  # top_k + 2 x the window at most, never the vocabulary
    chain.close()


@pytest.mark.parametrize("path", ["cpu", "device"])
def test_seeded_runs_reproduce(ref_model: Model, path: str) -> None:
    # Each run from an empty cache: with the prompt's prefix reused, a GPU
    # evaluates the last token alone, and its kernels for one token round
    # differently from those for the whole prompt.
    with Context(ref_model, n_ctx=512, sampling=path) as ctx:
        a = ctx.generate(PROMPT, 30, SamplerParams(seed=42), ignore_eos=True)
        ctx.clear_cache()
        b = ctx.generate(PROMPT, 30, SamplerParams(seed=42), ignore_eos=True)
        ctx.clear_cache()
        c = ctx.generate(PROMPT, 30, SamplerParams(seed=43), ignore_eos=True)
    assert a == b and a
    assert c != a


def test_typical_runs_its_part_on_the_host(ref_model: Model) -> None:
    """typical-p has no device implementation: the device part stops before it, and the result is the host's."""
    p = SamplerParams(typical_p=0.9, top_k=0, seed=13)
    with Context(ref_model, n_ctx=512, sampling="device") as dev, Context(ref_model, n_ctx=512, sampling="cpu") as host:
        a = _generated(dev, ref_model, p, 30)
        assert dev._attached[0].describe() == ["+penalties", "typical", "top-p", "min-p", "temp", "dist"]
        assert a == _generated(host, ref_model, p, 30)


def test_penalties_on_the_device_equal_the_host(ref_model: Model) -> None:
    p = SamplerParams(temperature=0.0, top_k=1, penalty_repeat=1.5, penalty_freq=0.3, penalty_last_n=32)
    with Context(ref_model, n_ctx=512, sampling="device") as dev, Context(ref_model, n_ctx=512, sampling="cpu") as host:
        a = _generated(dev, ref_model, p, 40)
        assert dev._attached[0].describe() == ["+penalties", "+greedy"]
        b = _generated(host, ref_model, p, 40)
        # the penalties change the answer (so the comparison says something)
        plain = _generated(host, ref_model, SamplerParams.greedy(), 40)
    assert a == b
    assert a != plain


def test_grammar_samples_on_the_host(ref_model: Model) -> None:
    g = Grammar('root ::= "yes" | "no" | "maybe"')
    with Context(ref_model, n_ctx=512, sampling="auto") as auto, Context(ref_model, n_ctx=512, sampling="device") as dev:
        # a device chain first, then a grammar: the chain leaves the graph so the logits come back
        dev.generate(PROMPT, 5, SamplerParams(seed=1))
        assert 0 in dev._attached
        with pytest.raises(ValueError, match="sampling='device' cannot apply a grammar"):
            dev.generate("Answer:", 5, SamplerParams(seed=1), grammar=g)
        for seed in (1, 2, 3):
            assert auto.generate("Answer:", 8, SamplerParams(seed=seed), grammar=g) in ("yes", "no", "maybe")
        assert not auto._attached
    with pytest.raises(ValueError, match="grammar"):
        Engine(ref_model, parallel=1, sampling="device").submit("Answer:", 5, grammar=g)


def test_switching_paths_in_one_context(ref_model: Model) -> None:
    p = SamplerParams(seed=21)
    with Context(ref_model, n_ctx=512, sampling="device") as fresh:
        want = _generated(fresh, ref_model, p, 20)
    with Context(ref_model, n_ctx=512, sampling="device") as ctx:
        for _ in range(3):
            assert _generated(ctx, ref_model, p, 20) == want
            ctx.generate(PROMPT, 10, SamplerParams(seed=5, top_k=7))  # another chain replaces it
            ctx.generate(PROMPT, 10, SamplerParams(seed=5), grammar=None)
        ctx.close()
        ctx.close()


def test_engine_device_chains_equal_a_lone_context(ref_model: Model) -> None:
    """One chain per sequence in the graph: each seeded request samples what a lone Context samples."""
    seeds = [101, 102, 103, 104, 105]
    with Context(ref_model, n_ctx=512, sampling="device") as ctx:
        want = [ctx.generate(PROMPT, 24, SamplerParams(seed=s), ignore_eos=True) for s in seeds]
    eng = Engine(ref_model, parallel=3, n_ctx=512, sampling="device")
    try:
        # one at a time: the slots' chains are replaced and reused, and every decode has a lone Context's shape
        assert [eng.submit(PROMPT, 24, SamplerParams(seed=s), ignore_eos=True).text() for s in seeds] == want
        if NGL == 0:
            # together: on the CPU the kernels round alike whatever the batch (GPU kernels differ by batch size)
            reqs = [eng.submit(PROMPT, 24, SamplerParams(seed=s), ignore_eos=True) for s in seeds]
            assert [r.text() for r in reqs] == want
        # a greedy request afterwards, on a slot whose chain stays attached, is greedy
        greedy = eng.submit(PROMPT, 16, SamplerParams.greedy()).text()
    finally:
        eng.close()
    with Context(ref_model, n_ctx=512, sampling="cpu") as host:
        assert greedy == host.generate(PROMPT, 16, SamplerParams.greedy())


def test_sampling_argument_is_checked(ref_model: Model) -> None:
    with pytest.raises(ValueError, match="sampling must be one of"):
        Context(ref_model, n_ctx=256, sampling="gpu")
    with pytest.raises(TypeError, match="sampling must be one of"):
        Context(ref_model, n_ctx=256, sampling=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampling must be one of"):
        Engine(ref_model, parallel=1, sampling="host")
    with Context(ref_model, n_ctx=256) as ctx:
        assert ctx.sampling == "auto"
        # auto samples on the device exactly where the logits are made on one
        assert ctx._on_device(SamplerParams(), None) == ref_model._output_on_device
        assert not ctx._on_device(SamplerParams(), Grammar.json())


# -- distributions ---------------------------------------------------------------------


def _expected(logits: np.ndarray, kind: str) -> np.ndarray:
    """llama.cpp's definition of each sampler alone (temperature 1), as probabilities over the vocabulary."""
    z = logits.astype(np.float64)
    if kind == "top_k":
        keep = np.argsort(-z, kind="stable")[:5]
        mask = np.zeros_like(z, dtype=bool)
        mask[keep] = True
    elif kind == "top_p":
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        last = int(np.searchsorted(cum, 0.8))  # the first index where the sum reaches p is kept
        mask = np.zeros_like(z, dtype=bool)
        mask[order[:last + 1]] = True
    elif kind == "min_p":
        mask = z >= z.max() + math.log(0.1)
    else:
        mask = np.ones_like(z, dtype=bool)
    p = np.where(mask, np.exp(z - z.max()), 0.0)
    return np.asarray(p / p.sum())


KINDS = {
    "temperature": SamplerParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, penalty_repeat=1.0, seed=1234),
    "top_k": SamplerParams(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, penalty_repeat=1.0, seed=1234),
    "top_p": SamplerParams(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0, penalty_repeat=1.0, seed=1234),
    "min_p": SamplerParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1, penalty_repeat=1.0, seed=1234),
}
N_DRAWS = 3000


def _chi_square(draws: list[int], p: np.ndarray) -> tuple[float, float, int]:
    """Pearson's statistic over the tokens expected at least 5 times (the rest pooled), and its 0.1% critical value."""
    n = len(draws)
    counts = Counter(draws)
    big = [t for t in range(len(p)) if p[t] * n >= 5]
    obs = [counts.get(t, 0) for t in big]
    exp = [p[t] * n for t in big]
    rest_exp = n - sum(exp)
    if rest_exp >= 5:
        obs.append(n - sum(obs))
        exp.append(rest_exp)
    elif any(p[t] == 0 for t in counts):
        return math.inf, 0.0, len(obs) - 1  # a token the sampler must exclude was drawn
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    df = len(obs) - 1
    z = 3.0902  # the 0.999 quantile of the standard normal; Wilson-Hilferty for chi-square's
    crit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat, crit, df


def _draws(model: Model, params: SamplerParams, path: str) -> tuple[list[int], np.ndarray]:
    """N_DRAWS tokens for one prompt, each from the same logits, and those logits."""
    with Context(model, n_ctx=128, sampling=path) as ctx:
        prompt = model.tokenize("My favourite colour is", add_bos=True)
        ctx.decode(prompt[:-1])
        n = len(prompt) - 1
        L = _backend.lib()
        chain = ctx._chain(params, 0, path == "device")
        chain.start(prompt)
        ctx.decode(prompt[-1:])
        if path == "cpu":
            logits = _sequence.LogitRows(ctx.ptr(), model.n_vocab).view(-1).copy()
            sample = _sequence.sampler(ctx.ptr(), chain, _sequence.LogitRows(ctx.ptr(), model.n_vocab))
            return [sample(-1) for _ in range(N_DRAWS)], logits
        draws = []
        for _ in range(N_DRAWS):
            draws.append(int(L.llama_sampler_sample(chain.ptr(), ctx.ptr(), -1)))
            ctx._truncate_cache(n)  # the same last token again: the same logits, the next random number
            ctx.decode(prompt[-1:])
    with Context(model, n_ctx=128, sampling="cpu") as host:  # the logits the device sampled from
        host.decode(prompt[:-1])
        host.decode(prompt[-1:])
        logits = _sequence.LogitRows(host.ptr(), model.n_vocab).view(-1).copy()
    return draws, logits


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("path", ["cpu", "device"])
def test_each_path_samples_its_distribution(peaked_model: Model, kind: str, path: str) -> None:
    draws, logits = _draws(peaked_model, KINDS[kind], path)
    p = _expected(logits, kind)
    stat, crit, df = _chi_square(draws, p)
    assert crit > 0 and stat < crit, f"{path} {kind}: chi-square {stat:.1f} >= {crit:.1f} (df {df}, p < 0.001)"
    # ...and the test can tell: the same draws against another distribution fail it
    wrong = _expected(logits * 0.8, kind)
    assert _chi_square(draws, wrong)[0] > crit


def test_step_rows_take_each_rows_argmax_at_once(model: Model) -> None:
    # The engine's reader: after one synchronize, one llama_get_logits call and
    # the argmax of every greedy row in one NumPy call over the block that holds them.  It must give each
    # row's own first largest logit, for rows side by side, rows among others
    # (the block then spans them too) and rows too scattered for one block.
    with Context(model, n_ctx=256, n_seq_max=3) as ctx:
        raw = ctx.ptr()
        seqs = [model.tokenize(t) for t in ("The ocean is", "def fibonacci(n):", "Les fleurs du jardin")]
        ctx._batch.fill_sequences(seqs)
        L = _backend.lib()
        assert L.llama_decode(raw, ctx._batch.struct) == 0
        L.llama_synchronize(raw)
        n = sum(len(s) for s in seqs)
        alone = _sequence.LogitRows(raw, model.n_vocab)
        expected = {i: int(np.argmax(alone.view(i).copy())) for i in range(n)}
        assert len(set(expected.values())) > 3  # the rows really differ
        rows = _sequence.StepRows(raw, model.n_vocab)
        for greedy in (list(range(n)), [1, 2, 4, 5], [0, n - 1], [3]):
            rows.new_step(list(range(n)), greedy)
            assert {i: rows.argmax(i) for i in greedy} == {i: expected[i] for i in greedy}
            assert rows.view(greedy[0]).argmax() == expected[greedy[0]]
        # A step whose outputs are some of its tokens (each prompt's last, two more): rows are
        # found by the order of the outputs in the batch, as llama_get_logits_ith finds them.
        outputs = sorted({len(seqs[0]) - 1, len(seqs[0]) + len(seqs[1]) - 1, n - 1, 1, 4})
        ctx.clear_cache()
        ctx._batch.fill_sequences(seqs)
        ctx._batch.logits[:n] = 0
        ctx._batch.logits[outputs] = 1
        assert L.llama_decode(raw, ctx._batch.struct) == 0
        L.llama_synchronize(raw)
        own = {i: alone.view(i).copy() for i in outputs}
        for greedy in (outputs, outputs[1:3], [outputs[-1]], []):
            rows.new_step(outputs, greedy)
            assert {i: rows.argmax(i) for i in outputs} == {i: int(own[i].argmax()) for i in outputs}
            for i in outputs:
                assert np.array_equal(rows.view(i), own[i])
