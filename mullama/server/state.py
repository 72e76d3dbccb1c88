"""What every route of the server shares: the engine, the embedding model, the names it answers to,
its LoRA adapters and saved caches, and the steps several routes take (submitting a request, rendering
a chat request, naming a cache file)."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from ..context import ContextFullError
from ..embedding import EmbeddingGenerator
from ..engine import Engine
from ..engine import Request as EngineRequest
from ..grammar import Grammar
from ..lora import LoraAdapter
from ..multimodal import MediaSource, Projector
from . import protocol as P
from . import structured as S
from .media import fetch_remote_media
from .metrics import Metrics


class Embedder:
    """One EmbeddingGenerator (one context): calls are serialised and run off the event loop."""

    def __init__(self, gen: EmbeddingGenerator, model_id: str) -> None:
        self.gen = gen
        self.model_id = model_id
        self.lock = threading.Lock()

    def tokens(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """Each input as this model's token ids, checked: a 400 names the input that does not fit."""
        model, limit = self.gen.model, self.gen.max_tokens
        out: list[list[int]] = []
        for i, inp in enumerate(cast("list[str | list[int]]", inputs)):
            if isinstance(inp, str):
                ids = model.tokenize(inp, add_bos=True)
            else:
                ids = inp
                bad = next((t for t in ids if not 0 <= t < model.n_vocab), None)
                if bad is not None:
                    raise P.ApiError(400, f"'input[{i}]' holds token id {bad}, outside this model's vocabulary "
                                     f"(0 to {model.n_vocab - 1}): token ids must be the embedding model's own. "
                                     f"LangChain's OpenAIEmbeddings sends OpenAI's tiktoken ids unless it is made "
                                     f"with check_embedding_ctx_length=False, which sends the text",
                                     param="input", code="invalid_value")
            if len(ids) > limit:
                raise P.ApiError(400, f"'input[{i}]' is {len(ids)} tokens long; this server embeds at most {limit} "
                                 f"tokens per input (the embedding model's context): shorten it or split it",
                                 param="input", code="context_length_exceeded")
            out.append(ids)
        return out

    def embed(self, token_lists: list[list[int]], fmt: str) -> list[Any]:
        with self.lock:
            matrix = self.gen.embed_tokens(token_lists)
        if fmt == "base64":  # little-endian float32, as OpenAI sends it
            return [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in matrix]
        return list(matrix.tolist())



def with_instructions(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The tool instructions as (or added to) the system message."""
    if messages and messages[0]["role"] == "system":
        content = messages[0]["content"]
        if isinstance(content, list):  # text and media parts: one more text part
            return [{**messages[0], "content": content + [{"type": "text", "text": f"\n\n{text}"}]}] + messages[1:]
        return [{**messages[0], "content": f"{content}\n\n{text}".strip()}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


class Server:
    """The state behind the routes (``request.app.state.server``)."""

    def __init__(self, engine: Engine, embedder: EmbeddingGenerator | None, model_id: str,
                 embedding_model_id: str | None = None, *, system_fingerprint: str | None = None,
                 loras: Mapping[str, LoraAdapter] | None = None, state_dir: Path | None = None,
                 projector: Projector | None = None, remote_media: bool = False) -> None:
        self.engine = engine
        self.projector = projector
        self.remote_media = remote_media
        self.model_id = model_id
        self.system_fingerprint = system_fingerprint
        self.adapters = dict(loras or {})
        self.state_dir = state_dir
        self.metrics = Metrics(engine)
        self.emb = Embedder(embedder, embedding_model_id or model_id) if embedder is not None else None

    def model_list(self) -> list[dict[str, Any]]:
        """What /v1/models lists: the model, the embedding model, and each adapter by its name."""
        emb = self.emb
        ids = [self.model_id] + ([emb.model_id] if emb is not None and emb.model_id != self.model_id else [])
        out = [{"id": i, "object": "model", "created": P.now(), "owned_by": "mullama"} for i in ids]
        # each adapter also answers as a model of its own name: for clients that send only 'model'
        return out + [{"id": name, "object": "model", "created": P.now(), "owned_by": "mullama",
                       "parent": self.model_id} for name in self.adapters]

    def submit_one(self, prompt: str | list[int], gen: P.Generation, grammar: Grammar | None,
                   i: int, media: list[MediaSource] | None = None) -> EngineRequest:
        max_tokens = self.engine.n_ctx if gen.max_tokens is None else gen.max_tokens
        try:
            return self.engine.submit(prompt, max_tokens, gen.choice_params(i), stop=gen.stop,
                                      ignore_eos=gen.ignore_eos, grammar=grammar,
                                      logprobs=P.engine_logprobs(gen.top_logprobs), loras=gen.loras, media=media)
        except ContextFullError as e:
            raise P.ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
        except (ValueError, TypeError) as e:
            raise P.ApiError(400, str(e)) from None

    async def submit(self, prompt: str | list[int], gen: P.Generation,
                     grammar: Grammar | None, media: list[MediaSource] | None = None) -> list[EngineRequest]:
        """One engine request per choice.  With ``n`` > 1 the others wait until the first has decoded the
        prompt, then copy its cache instead of evaluating the prompt again.  Media are decoded and
        preprocessed off the event loop."""
        if media:
            reqs: list[EngineRequest] = []
            try:
                for i in range(gen.n):
                    reqs.append(await asyncio.to_thread(self.submit_one, prompt, gen, grammar, i, media))
            except BaseException:
                for r in reqs:
                    r.cancel()
                raise
            return reqs
        first = self.submit_one(prompt, gen, grammar, 0)
        if gen.n == 1:
            return [first]
        while not first.prompt_decoded and not first.done:
            await asyncio.sleep(0.002)
        reqs = [first]
        try:
            for i in range(1, gen.n):
                reqs.append(self.submit_one(prompt, gen, grammar, i))
        except BaseException:
            for r in reqs:
                r.cancel()
            raise
        return reqs

    async def chat(self, body: dict[str, Any]) -> tuple[str, P.Generation, Grammar | None, S.Tools,
                                                          list[MediaSource] | None]:
        """:meth:`chat_request`, off the event loop when the server takes media (it may fetch them)."""
        if self.projector is None:
            return self.chat_request(body)
        return await asyncio.to_thread(self.chat_request, body)

    def chat_request(self, body: dict[str, Any]) -> tuple[str, P.Generation, Grammar | None, S.Tools,
                                                          list[MediaSource] | None]:
        """A chat request's prompt (the model's template), generation arguments, grammar, tools and media
        (None without media parts)."""
        messages = P.chat_messages(body, media=self.projector is not None)
        if self.projector is not None and self.remote_media:
            messages = fetch_remote_media(messages)
        gen = P.Generation(body, loras=self.adapters)
        tools = S.Tools(body)
        grammar = S.response_format(body)
        if tools.active:
            if grammar is not None:
                raise P.ApiError(400, "'response_format' cannot be combined with tool calls",
                                 param="response_format")
            grammar = tools.grammar()
            if not S.template_uses_tools(self.engine.model.chat_template):
                messages = with_instructions(messages, tools.instructions())
        media: list[MediaSource] | None = None
        try:
            if self.projector is not None and any(isinstance(m["content"], list) for m in messages):
                prompt, media = self.projector.apply_chat_template(messages, True,
                                                                   tools=tools.tools if tools.active else None)
            else:
                prompt = self.engine.model.apply_chat_template(messages, True,
                                                               tools=tools.tools if tools.active else None)
        except (ValueError, RuntimeError, TypeError) as e:
            raise P.ApiError(400, str(e), param="messages") from None
        return prompt, gen, grammar, tools, media or None

    def cache_file(self, body: dict[str, Any]) -> tuple[str, Path]:
        if self.state_dir is None:
            raise P.ApiError(404, "this server keeps no saved caches: start it with --state-dir DIR",
                             code="not_found")
        name = body.get("name")
        if not isinstance(name, str) or not P.CACHE_NAME.fullmatch(name):
            raise P.ApiError(400, "'name' must be 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'",
                             param="name", code="invalid_value")
        return name, self.state_dir / f"{name}.state"
