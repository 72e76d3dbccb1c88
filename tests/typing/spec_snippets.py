"""The spec's typed snippets: type-checked with mypy --strict by tests/test_typing.py (never run)."""

from __future__ import annotations

import numpy as np

from mullama import (Completion, Context, EmbeddingGenerator, LoraAdapter, Model, SamplerParams, TokenLogprob,
                     backend_free, backend_init, cosine_similarity, max_devices, supports_gpu_offload, system_info)


def snippets() -> None:
    model: Model = Model.load("./model.gguf")
    gpu: Model = Model.load("./model.gguf", n_gpu_layers=-1, use_mmap=True, use_mlock=False, vocab_only=False)
    ctx: Context = Context(model, n_ctx=2048, n_batch=512, n_threads=4, embeddings=False)
    text: str = ctx.generate("Once upon a time", max_tokens=100)
    tokens: list[int] = model.tokenize("Hello, world!", add_bos=True, special=False)
    again: str = ctx.generate(tokens, max_tokens=50, params=SamplerParams(temperature=0.7, top_p=0.9))
    back: str = model.detokenize(tokens, remove_special=False, unparse_special=False)
    prompt: str = model.apply_chat_template([("system", "Be brief."), ("user", "Hi")], add_generation_prompt=True)
    for piece in ctx.generate_stream(prompt, max_tokens=10, params=SamplerParams.creative()):
        s: str = piece
    meta: dict[str, str] = model.metadata()
    eog: bool = model.token_is_eog(model.token_eos)
    sizes: tuple[int, int, int, int, int, int, int, int, int] = (
        model.n_ctx_train, model.n_embd, model.n_vocab, model.n_layer, model.n_head, model.token_bos,
        model.token_eos, model.size, model.n_params)
    names: tuple[str, str | None, str | None] = (model.description, model.architecture, model.name)
    ctx.decode(tokens)
    ctx.clear_cache()
    emb_ctx: Context = Context(model, embeddings=True)
    maybe: np.ndarray | None = emb_ctx.get_embeddings()
    n: tuple[int, int] = (ctx.n_ctx, ctx.n_batch)
    params: SamplerParams = SamplerParams.greedy()
    params.top_k = 50
    temp: float = params.temperature
    gen: EmbeddingGenerator = EmbeddingGenerator(model, n_ctx=512, normalize=True)
    e: np.ndarray = gen.embed("Hello")
    batch: list[np.ndarray] = gen.embed_batch(["a", "b"])
    dim: int = gen.n_embd
    sim: float = cosine_similarity(e, batch[0])
    backend_init()
    flags: tuple[bool, int, str] = (supports_gpu_offload(), max_devices(), system_info())
    backend_free()
    done: Completion = ctx.complete("Once", 8, params, logprobs=3, stop=["."])
    first: TokenLogprob | None = done.logprobs[0] if done.logprobs else None
    alt: float = first.top[0].logprob if first is not None else 0.0
    chunk_texts: list[str] = [c.text for c in ctx.complete_stream("Once", 4)]
    adapter: LoraAdapter = model.load_lora("adapter.gguf")
    ctx.set_loras({adapter: 0.5})
    applied: dict[LoraAdapter, float] = ctx.loras
    saved: bytes = ctx.state_bytes()
    ctx.load_state_bytes(saved)
    ctx.save_state("chat.state")
    ctx.load_state("chat.state")
    del gpu, text, again, back, s, meta, eog, sizes, names, maybe, n, temp, dim, sim, flags
    del alt, chunk_texts, applied
