"""Context and generation on SmolLM2: identical to llama.cpp's greedy decoding, streaming, cache reuse."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from mullama import Context, ContextFullError, Model, SamplerParams
from mullama._cpus import usable_cpus

from .conftest import compile_c, unique_stop_piece

ROOT = Path(__file__).resolve().parent.parent
CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
# No token ids or texts are recorded here: greedy output legitimately differs
# between CPUs (SIMD code paths round differently), so every expectation is
# computed in the same run, on the same machine, by tests/native/greedy_ref.c
# (argmax decoding straight on libllama) or by an earlier call.


@pytest.fixture(scope="module")
def greedy_ref(tmp_path_factory: pytest.TempPathFactory, c_compiler: str, lib_dir: Path) -> Path:
    return compile_c(c_compiler, ROOT / "tests/native/greedy_ref.c", tmp_path_factory.mktemp("ref") / "greedy_ref",
                     lib_dir)


@pytest.fixture()
def ctx(model: Model) -> Context:
    c = Context(model, n_ctx=1024)
    yield c  # type: ignore[misc]
    c.close()


def _reference(exe: Path, model_path: Path, prompt: str, n: int) -> tuple[list[int], list[int]]:
    import os

    from mullama import _backend
    env = {**os.environ, "GGML_BACKEND_DIR": str(_backend.lib().path.parent)}
    out = subprocess.run([str(exe), str(model_path), str(n), "1024", prompt], capture_output=True, text=True,
                         check=True, env=env).stdout.split("\n")
    return [int(x) for x in out[0].split()], [int(x) for x in out[1].split()]


def _generated_ids(ctx: Context, model: Model, prompt_ids: list[int], text: str) -> list[int]:
    # The cache holds the prompt and every generated token but the last one.
    return ctx.tokens[len(prompt_ids):]


@pytest.mark.parametrize("prompt,n", [(CHAT, 48), ("Once upon a time", 40), ("def fibonacci(n):", 40),
                                      ("Les fleurs du jardin", 32)])
def test_greedy_matches_llama_cpp(ctx: Context, model: Model, smollm_path: Path, greedy_ref: Path,
                                  prompt: str, n: int) -> None:
    ref_prompt, ref_ids = _reference(greedy_ref, smollm_path, prompt, n)
    assert model.tokenize(prompt, special=True) == ref_prompt
    text = ctx.generate(prompt, max_tokens=n, params=SamplerParams.greedy())
    assert text == model.detokenize(ref_ids)
    generated = ctx.tokens[len(ref_prompt):]
    assert generated == ref_ids[:len(generated)] and len(generated) >= len(ref_ids) - 1


def test_token_id_prompt_equals_text_prompt(ctx: Context, model: Model) -> None:
    a = ctx.generate("Hello, AI!", max_tokens=20, params=SamplerParams.greedy())
    ctx.clear_cache()
    b = ctx.generate(model.tokenize("Hello, AI!"), max_tokens=20, params=SamplerParams.greedy())
    assert a == b and a


def test_stream_joins_to_generate_and_arrives_incrementally(ctx: Context, model: Model) -> None:
    prompt = "Write a story about a dragon."
    full = ctx.generate(prompt, max_tokens=80, params=SamplerParams.greedy(), ignore_eos=True)
    ctx.clear_cache()
    n_prompt = len(model.tokenize(prompt, special=True))
    pieces: list[str] = []
    cached_at_piece: list[int] = []  # how many tokens the cache held when each piece arrived
    for piece in ctx.generate_stream(prompt, max_tokens=80, params=SamplerParams.greedy(), ignore_eos=True):
        pieces.append(piece)
        cached_at_piece.append(ctx.n_past)
    assert "".join(pieces) == full
    assert len(pieces) > 40
    # Each piece came as soon as its token was sampled and sent to the decoder
    # (its text is made while the decode runs): one piece per cache position at
    # most (a token whose text is empty, a special token, yields none), but the
    # last token's, which is never decoded; and the first long before the end.
    assert all(a < b for a, b in zip(cached_at_piece[:-1], cached_at_piece[1:-1]))
    assert cached_at_piece[-2] <= cached_at_piece[-1]
    assert n_prompt <= cached_at_piece[0] < n_prompt + 10
    assert cached_at_piece[-1] == ctx.n_past == n_prompt + 79


def test_stream_never_splits_utf8(ctx: Context, model: Model) -> None:
    # Emoji and CJK need several byte-level tokens each; no piece may hold a broken character.
    prompt = "<|im_start|>user\nRepeat exactly: 🦙🦙 日本語 café 🚀🚀<|im_end|>\n<|im_start|>assistant\n"
    pieces = list(ctx.generate_stream(prompt, max_tokens=40, params=SamplerParams.greedy()))
    text = "".join(pieces)
    # Only a character cut off by max_tokens at the very end may be incomplete.
    assert "\ufffd" not in "".join(pieces[:-1])
    assert any(ord(ch) > 0xFFFF for ch in text) or any("\u3040" <= ch <= "\u9fff" for ch in text)
    ids = ctx.tokens
    assert all(p for p in pieces)
    assert len(pieces) < len(ids)  # several tokens were merged into whole characters


def test_breaking_out_early_keeps_the_context_usable(ctx: Context) -> None:
    expected = ctx.generate("The moon is", max_tokens=30, params=SamplerParams.greedy())
    ctx.clear_cache()
    for i, _ in enumerate(ctx.generate_stream("A completely different prompt", max_tokens=50)):
        if i == 3:
            break
    assert ctx.generate("The moon is", max_tokens=30, params=SamplerParams.greedy()) == expected
    stream = ctx.generate_stream("Abandoned", max_tokens=50)
    next(stream)  # left suspended: the next call on this thread finishes it first
    assert ctx.generate("The moon is", max_tokens=30, params=SamplerParams.greedy()) == expected
    stream = ctx.generate_stream("Abandoned again", max_tokens=50)
    next(stream)
    ctx.clear_cache()  # finishes the suspended stream too, and the cache agrees with itself
    assert ctx.n_past == 0 and list(stream) == []
    assert ctx.generate("The moon is", max_tokens=30, params=SamplerParams.greedy()) == expected
    assert ctx.last_prompt_evaluated == len(ctx.model.tokenize("The moon is"))


def test_second_chat_turn_evaluates_only_new_tokens(ctx: Context, model: Model) -> None:
    msgs = [("system", "You are terse."), ("user", "Name a color.")]
    p1 = model.apply_chat_template(msgs)
    answer = ctx.generate(p1, max_tokens=20, params=SamplerParams.greedy())
    assert ctx.last_prompt_evaluated == len(model.tokenize(p1, special=True))
    msgs += [("assistant", answer), ("user", "Another one.")]
    p2 = model.apply_chat_template(msgs)
    ids2 = model.tokenize(p2, special=True)
    cached_before = ctx.tokens
    ctx.generate(p2, max_tokens=10, params=SamplerParams.greedy())
    common = next(i for i, (a, b) in enumerate(zip(cached_before + [-1], ids2)) if a != b)
    assert ctx.last_prompt_evaluated == len(ids2) - common
    assert ctx.last_prompt_evaluated < len(ids2) // 2
    # same result as a cold start
    warm = ctx.generate(p2, max_tokens=10, params=SamplerParams.greedy())
    assert ctx.last_prompt_evaluated == 1
    ctx.clear_cache()
    assert ctx.n_past == 0
    assert ctx.generate(p2, max_tokens=10, params=SamplerParams.greedy()) == warm
    assert ctx.last_prompt_evaluated == len(ids2)


def test_decode_appends(ctx: Context, model: Model) -> None:
    ids = model.tokenize("One two three")
    ctx.decode(ids)
    ctx.decode(model.tokenize(" four", add_bos=False))
    assert ctx.tokens == ids + model.tokenize(" four", add_bos=False)
    with pytest.raises(ValueError):
        ctx.decode([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ctx.decode([10**9])


def test_long_prompt_in_batches(model: Model) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. " * 60  # ~600 tokens
    small = Context(model, n_ctx=1024, n_batch=64)
    big = Context(model, n_ctx=1024, n_batch=1024)
    assert small.n_batch == 64
    a = small.generate(prompt, max_tokens=16, params=SamplerParams.greedy())
    b = big.generate(prompt, max_tokens=16, params=SamplerParams.greedy())
    assert a == b and small.n_past == big.n_past > 600


def test_prompt_too_long_raises_before_work(model: Model) -> None:
    c = Context(model, n_ctx=64)
    assert c.n_ctx == 256  # llama.cpp rounds the context up to a multiple of 256
    c.decode(model.tokenize("keep"))
    before = c.tokens
    with pytest.raises(ContextFullError, match="n_ctx=256"):
        c.generate("word " * 300, max_tokens=5)
    assert c.tokens == before
    with pytest.raises(ValueError):  # ContextFullError is also a ValueError
        c.generate("word " * 300)


def test_generation_reaching_the_end_of_the_context(model: Model) -> None:
    c = Context(model, n_ctx=256)
    pieces: list[str] = []
    with pytest.raises(ContextFullError, match="context is full"):
        for p in c.generate_stream("Tell me a long story.", max_tokens=400, params=SamplerParams.greedy(),
                                   ignore_eos=True):
            pieces.append(p)
    assert pieces and c.n_past == 256
    c.clear_cache()
    assert c.generate("Hi", max_tokens=3, params=SamplerParams.greedy()) is not None


def test_max_tokens_and_empty_prompt(ctx: Context) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        ctx.generate("Hi", max_tokens=-1)
    with pytest.raises(TypeError):
        ctx.generate("Hi", max_tokens="3")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="empty"):
        ctx.generate("", max_tokens=0)
    with pytest.raises(RuntimeError, match="empty"):
        ctx.generate([], max_tokens=5)
    assert ctx.generate("Hi", max_tokens=0) == ""
    with pytest.raises(TypeError):
        ctx.generate(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.generate("Hi", params={"temperature": 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        list(ctx.generate_stream("Hi", max_tokens=-5))


def test_stop_strings(ctx: Context) -> None:
    full = ctx.generate(CHAT, max_tokens=30, params=SamplerParams.greedy())
    # A word from the second half of this machine's own greedy answer.
    words = [w.strip(".,;:!?\"'()") for w in full[len(full) // 2:].split()]
    stop = next(w for w in words if len(w) >= 4)
    cut = ctx.generate(CHAT, max_tokens=30, params=SamplerParams.greedy(), stop=[stop])
    assert cut == full[:full.index(stop)] and len(cut) < len(full)
    prefix = stop[:-1]  # stopping on a prefix of a later token
    streamed = "".join(ctx.generate_stream(CHAT, max_tokens=30, params=SamplerParams.greedy(), stop=[prefix]))
    assert streamed == full[:full.index(prefix)]
    both = ctx.generate(CHAT, max_tokens=30, params=SamplerParams.greedy(), stop=[stop, "\u2603never"])
    assert both == cut
    with pytest.raises(ValueError):
        ctx.generate("x", stop=[""])


def test_seeds(ctx: Context) -> None:
    p = SamplerParams(seed=1234, temperature=1.0)
    a = ctx.generate("Once upon a time", max_tokens=30, params=p)
    b = ctx.generate("Once upon a time", max_tokens=30, params=p)
    assert a == b
    outs = {ctx.generate("Once upon a time", max_tokens=30, params=SamplerParams(temperature=1.0)) for _ in range(3)}
    assert len(outs) >= 2  # seed=0 draws a new seed each time


def test_sampler_chain_is_built_once_per_parameter_set(ctx: Context) -> None:
    p = SamplerParams(seed=7)
    ctx.generate("Hi", max_tokens=2, params=p)
    chain = ctx._chains[p.key()]
    ctx.generate("Hi", max_tokens=2, params=SamplerParams(seed=7))
    assert ctx._chains[p.key()] is chain and len(ctx._chains) == 1
    assert chain.describe() == ["penalties", "top-k", "top-p", "min-p", "temp", "dist"]
    greedy = ctx._chain(SamplerParams.greedy())
    assert greedy.describe() == ["greedy"]
    typical = ctx._chain(SamplerParams(typical_p=0.5, penalty_repeat=1.0))
    assert typical.describe() == ["top-k", "typical", "top-p", "min-p", "temp", "dist"]


def test_context_properties_and_validation(model: Model) -> None:
    c = Context(model)
    assert c.n_ctx == model.n_ctx_train and c.n_batch == 2048
    assert c.n_threads == usable_cpus()
    c.close()
    c = Context(model, n_ctx=4096, n_batch=512, n_threads=1)
    assert (c.n_ctx, c.n_batch, c.n_threads) == (4096, 512, 1)
    assert repr(c) == "Context(n_ctx=4096, n_batch=512, n_past=0)"
    c.close()
    assert repr(c) == "Context(closed)"
    with pytest.raises(RuntimeError, match="closed"):
        c.generate("Hi")
    with pytest.raises(ValueError, match="n_ctx_train"):
        Context(model, n_ctx=model.n_ctx_train + 1)
    for bad in ({"n_batch": 0}, {"n_ctx": -1}, {"n_threads": -2}, {"n_batch": 10**9}):
        with pytest.raises(ValueError):
            Context(model, **bad)  # type: ignore[arg-type]
    for bad in ({"n_ctx": "1"}, {"embeddings": 1}, {"n_batch": 2.0}):
        with pytest.raises(TypeError):
            Context(model, **bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Context("model.gguf")  # type: ignore[arg-type]


def test_same_context_from_two_threads_is_refused(model: Model) -> None:
    c = Context(model, n_ctx=512)
    errors: list[BaseException] = []
    started, tried = threading.Event(), threading.Event()

    def worker() -> None:
        for i, _ in enumerate(c.generate_stream("Tell me a story", max_tokens=60, ignore_eos=True)):
            if i == 0:
                started.set()
                tried.wait(30)  # stay mid-generation until the other thread has tried

    t = threading.Thread(target=worker)
    t.start()
    assert started.wait(60)
    try:
        c.generate("Hi", max_tokens=2)
    except RuntimeError as e:
        errors.append(e)
    finally:
        tried.set()
    t.join()
    assert errors and "another thread" in str(errors[0])
    assert c.generate("Hi", max_tokens=2, params=SamplerParams.greedy()) is not None


class TestSamplerParams:
    def test_defaults(self) -> None:
        p = SamplerParams()
        assert p.to_dict() == {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "typical_p": 1.0,
                               "penalty_repeat": 1.1, "penalty_freq": 0.0, "penalty_present": 0.0,
                               "penalty_last_n": 64, "seed": 0}

    def test_presets_follow_the_node_spec(self) -> None:
        g, c, p = SamplerParams.greedy(), SamplerParams.creative(), SamplerParams.precise()
        assert (g.temperature, g.top_k, g.top_p, g.min_p, g.penalty_repeat) == (0.0, 1, 1.0, 0.0, 1.0)
        assert (c.temperature, c.top_k, c.top_p, c.min_p, c.penalty_repeat) == (1.2, 100, 0.95, 0.0, 1.0)
        assert (p.temperature, p.top_k, p.top_p, p.min_p, p.penalty_repeat) == (0.3, 20, 0.8, 0.05, 1.1)

    def test_read_write(self) -> None:
        params = SamplerParams(temperature=0.7)
        params.top_p = 0.9
        params.top_k = 50
        assert params.temperature == 0.7 and params.top_p == 0.9 and params.top_k == 50

    @pytest.mark.parametrize("field,value", [("temperature", -0.1), ("top_p", 1.5), ("top_p", 0.0), ("min_p", -1),
                                             ("typical_p", 2.0), ("penalty_repeat", 0.0), ("top_k", -1),
                                             ("penalty_last_n", -2), ("seed", -1), ("seed", 2**32),
                                             ("temperature", float("nan")), ("penalty_freq", float("inf"))])
    def test_out_of_range(self, field: str, value: float) -> None:
        with pytest.raises(ValueError, match=field):
            SamplerParams(**{field: value})
        p = SamplerParams()
        with pytest.raises(ValueError):
            setattr(p, field, value)

    @pytest.mark.parametrize("field,value", [("temperature", "hot"), ("top_k", 1.5), ("seed", None),
                                             ("top_k", True), ("penalty_last_n", "64")])
    def test_wrong_types(self, field: str, value: object) -> None:
        with pytest.raises(TypeError):
            SamplerParams(**{field: value})  # type: ignore[arg-type]

    def test_unknown_field(self) -> None:
        p = SamplerParams()
        with pytest.raises(AttributeError):
            p.temprature = 0.5  # type: ignore[attr-defined]

    def test_repr_and_equality(self) -> None:
        assert SamplerParams(seed=3) == SamplerParams(seed=3) != SamplerParams(seed=4)
        assert repr(SamplerParams.greedy()).startswith("SamplerParams(temperature=0.0, top_k=1, top_p=1.0")
        assert eval(repr(SamplerParams(seed=9)), {"SamplerParams": SamplerParams}) == SamplerParams(seed=9)


def test_a_stop_string_leaves_its_token_out_of_the_cache(ctx: Context, model: Model) -> None:
    """The token whose text completes a stop string was sent to the decoder before its text was made;
    the cache then drops it, and holds exactly the prompt and the tokens before it."""
    prompt = "Write a story about a dragon."
    prompt_ids = model.tokenize(prompt, special=True)
    full = ctx.generate(prompt, max_tokens=40, params=SamplerParams.greedy(), ignore_eos=True)
    gen = ctx.tokens[len(prompt_ids):]
    j, stop = unique_stop_piece(model, gen, full)
    ctx.clear_cache()
    out = ctx.generate(prompt, max_tokens=40, params=SamplerParams.greedy(), ignore_eos=True, stop=[stop])
    assert out == full[:full.find(stop)]
    assert ctx.tokens == prompt_ids + gen[:j]
    assert ctx.n_past == len(prompt_ids) + j
    # and the next generation reuses that cache as it stands
    assert ctx.generate(prompt, max_tokens=40, params=SamplerParams.greedy(), ignore_eos=True) == full
