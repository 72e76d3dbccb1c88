"""The ASGI app: OpenAI-compatible routes over an :class:`~mullama.engine.Engine`.

Routes stay thin: they check the request (:mod:`.protocol`), submit it to the
engine, and stream or collect what it produces.  Streams are server-sent
events in OpenAI's chunk format; a client that disconnects mid-stream
cancels its request, and the engine frees the sequence at its next step.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..completion import TokenLogprob
from ..context import ContextFullError
from ..embedding import EmbeddingGenerator
from ..engine import Engine
from ..engine import Request as EngineRequest
from ..grammar import Grammar, GrammarIncompleteError
from ..lora import LoraAdapter
from . import protocol as P
from . import responses as R
from . import structured as S
from .metrics import Metrics


class _Embedder:
    """One EmbeddingGenerator (one context): calls are serialised and run off the event loop."""

    def __init__(self, gen: EmbeddingGenerator, model_id: str) -> None:
        self.gen = gen
        self.model_id = model_id
        self.lock = threading.Lock()

    def tokens(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """Each input as this model's token ids, checked: a 400 names the input that does not fit."""
        model, limit = self.gen._model, self.gen.max_tokens
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
            matrix = self.gen._embed_tokens(token_lists)
        if fmt == "base64":  # little-endian float32, as OpenAI sends it
            return [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in matrix]
        return list(matrix.tolist())


def create_app(engine: Engine, embedder: EmbeddingGenerator | None, model_id: str,
               embedding_model_id: str | None = None, api_key: str | None = None, *,
               cors_origins: Sequence[str] = (), system_fingerprint: str | None = None,
               loras: Mapping[str, LoraAdapter] | None = None, state_dir: Path | None = None) -> Any:
    """The ASGI app (a Starlette app, wrapped by the request counter, the API-key check and CORS).

    Every route is served with and without the ``/v1`` prefix, as llama-server
    does, for clients whose ``base_url`` lacks it.  ``cors_origins``: the
    origins whose browser pages may call the server (``*`` for any); none by
    default.  ``system_fingerprint`` goes into every completion.  ``loras``:
    the LoRA adapters requests may apply, by name (:func:`.protocol.request_loras`).
    ``state_dir``: where ``/v1/cache/save`` writes named caches and ``/v1/cache/restore`` reads them.
    """
    adapters = dict(loras or {})
    metrics = Metrics(engine)
    emb = _Embedder(embedder, embedding_model_id or model_id) if embedder is not None else None

    def model_list() -> list[dict[str, Any]]:
        ids = [model_id] + ([emb.model_id] if emb is not None and emb.model_id != model_id else [])
        out = [{"id": i, "object": "model", "created": P.now(), "owned_by": "mullama"} for i in ids]
        # each adapter also answers as a model of its own name: for clients that send only 'model'
        return out + [{"id": name, "object": "model", "created": P.now(), "owned_by": "mullama", "parent": model_id}
                      for name in adapters]

    def submit_one(prompt: str | list[int], gen: P.Generation, grammar: Grammar | None, i: int) -> EngineRequest:
        max_tokens = engine.n_ctx if gen.max_tokens is None else gen.max_tokens
        try:
            return engine.submit(prompt, max_tokens, gen.choice_params(i), stop=gen.stop, ignore_eos=gen.ignore_eos,
                                 grammar=grammar, logprobs=P.engine_logprobs(gen.top_logprobs), loras=gen.loras)
        except ContextFullError as e:
            raise P.ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
        except (ValueError, TypeError) as e:
            raise P.ApiError(400, str(e)) from None

    async def submit(prompt: str | list[int], gen: P.Generation, grammar: Grammar | None) -> list[EngineRequest]:
        """One engine request per choice.  With ``n`` > 1 the others wait until the first has decoded the
        prompt, then copy its cache instead of evaluating the prompt again."""
        first = submit_one(prompt, gen, grammar, 0)
        if gen.n == 1:
            return [first]
        while not first.prompt_decoded and not first.done:
            await asyncio.sleep(0.002)
        reqs = [first]
        try:
            for i in range(1, gen.n):
                reqs.append(submit_one(prompt, gen, grammar, i))
        except BaseException:
            for r in reqs:
                r.cancel()
            raise
        return reqs

    async def completions(request: Request) -> Response:
        body = P.parse_json(await request.body())
        prompt = P.prompt_text(body)
        gen = P.Generation(body, chat=False, loras=adapters)
        if body.get("tools") is not None:
            raise P.ApiError(400, "'tools' are for /v1/chat/completions", param="tools")
        grammar = S.response_format(body)
        reqs = await submit(prompt, gen, grammar)
        return await respond(request, reqs, gen, "text_completion", None)

    def chat_request(body: dict[str, Any]) -> tuple[str, P.Generation, Grammar | None, S.Tools]:
        """A chat request's prompt (the model's template), generation arguments, grammar and tools."""
        messages = P.chat_messages(body)
        gen = P.Generation(body, loras=adapters)
        tools = S.Tools(body)
        grammar = S.response_format(body)
        if tools.active:
            if grammar is not None:
                raise P.ApiError(400, "'response_format' cannot be combined with tool calls", param="response_format")
            grammar = tools.grammar()
            if not S.template_uses_tools(engine.model.chat_template):
                messages = _with_instructions(messages, tools.instructions())
        try:
            prompt = engine.model.apply_chat_template(messages, True, tools=tools.tools if tools.active else None)
        except (ValueError, RuntimeError, TypeError) as e:
            raise P.ApiError(400, str(e), param="messages") from None
        return prompt, gen, grammar, tools

    async def chat_completions(request: Request) -> Response:
        prompt, gen, grammar, tools = chat_request(P.parse_json(await request.body()))
        reqs = await submit(prompt, gen, grammar)
        return await respond(request, reqs, gen, "chat.completion", tools if tools.active else None)

    async def responses(request: Request) -> Response:
        body = P.parse_json(await request.body())
        prompt, gen, grammar, tools = chat_request(R.chat_body(body))
        req = (await submit(prompt, gen, grammar))[0]
        answer = R.Answer(body, model_id)

        def item(text: str, complete: bool) -> dict[str, Any]:
            call = tools.parse(text) if tools.active and complete else None
            return R.call_item(call) if call is not None else R.message_item(text)

        def finish() -> None:
            answer.finish(req.finish_reason, req.prompt_tokens, req.prompt_tokens - req.prompt_evaluated,
                          req.completion_tokens)

        if not gen.stream:
            try:
                text, complete = await _unless_gone(request, req), True
            except GrammarIncompleteError as e:
                text, complete = e.text, False
            answer.output.append(item(text, complete))
            finish()
            return JSONResponse(answer.body())

        async def events() -> AsyncIterator[str]:
            ev = R.Events(answer)
            try:
                for e in ev.start():
                    yield e
                if tools.active:  # sent once it is known to be a call or text
                    held: list[str] = []
                    complete = True
                    try:
                        async for pieces in req.batches():
                            held += pieces
                    except GrammarIncompleteError:
                        complete = False
                    out = item("".join(held), complete)
                    answer.output.append(out)
                    if out["type"] == "function_call":
                        for e in ev.function_call(0, out):
                            yield e
                    else:
                        for e in [*ev.open_message(0, out), ev.delta(0, out, out["content"][0]["text"]),
                                  *ev.close_message(0, out)]:
                            yield e
                else:
                    async for e in R.stream_text(ev, req.batches()):
                        yield e
                finish()
                yield ev.end()
            finally:
                req.cancel()

        return _EventStream(events(), media_type="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def respond(request: Request, reqs: list[EngineRequest], gen: P.Generation, kind: str,
                      tools: S.Tools | None) -> Response:
        """The choices (one per request, ``index`` in order) as one JSON body or one event stream."""
        rid, created = P.new_id("chatcmpl" if kind == "chat.completion" else "cmpl"), P.now()
        head: dict[str, Any] = {"id": rid, "created": created, "model": model_id}
        if system_fingerprint is not None:
            head["system_fingerprint"] = system_fingerprint
        chat = kind == "chat.completion"
        first = reqs[0]

        def usage() -> dict[str, Any]:
            # the prompt counts once, as OpenAI counts it for n > 1
            return P.usage(first.prompt_tokens, sum(r.completion_tokens for r in reqs),
                           first.prompt_tokens - first.prompt_evaluated)

        def tool_call(req: EngineRequest, text: str, complete: bool) -> tuple[dict[str, Any], str | None]:
            # a finished tool call becomes tool_calls; plain text (tool_choice "auto") or a cut-off call stays text
            call = tools.parse(text) if tools is not None and complete else None
            if call is None:
                return {"role": "assistant", "content": text}, req.finish_reason
            return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"

        top = gen.top_logprobs
        text_offsets = [0] * len(reqs)

        def logprobs(entries: list[TokenLogprob] | None, i: int) -> dict[str, Any] | None:
            if top is None or entries is None:
                return None
            if chat:
                return P.chat_logprobs(entries, top)
            lp = P.completion_logprobs(entries, top, text_offsets[i])
            text_offsets[i] += sum(len(e.piece) for e in entries)
            return lp

        if not gen.stream:
            async def answer(req: EngineRequest) -> tuple[str, bool]:
                try:
                    return await _unless_gone(request, req), True
                except GrammarIncompleteError as e:  # OpenAI's convention: finish_reason "length", the text so far
                    return e.text, False
            try:
                answers = await asyncio.gather(*(answer(r) for r in reqs))
            finally:
                for r in reqs:
                    r.cancel()  # no-op for those that ended
            choices: list[dict[str, Any]] = []
            for i, (req, (text, complete)) in enumerate(zip(reqs, answers)):
                c: dict[str, Any] = {"index": i, "finish_reason": req.finish_reason}
                if chat:
                    c["message"], c["finish_reason"] = tool_call(req, text, complete)
                    c["logprobs"] = logprobs(req.logprobs, i)
                else:
                    c.update({"text": text, "logprobs": logprobs(req.logprobs, i)})
                choices.append(c)
            return JSONResponse({**head, "object": kind, "choices": choices, "usage": usage()})

        def chunk(i: int, delta: dict[str, Any] | None, finish: str | None,
                  entries: list[TokenLogprob] | None = None) -> str:
            c: dict[str, Any] = {"index": i, "finish_reason": finish}
            if chat:
                c["delta"] = delta or {}
                if entries:
                    c["logprobs"] = logprobs(entries, i)
            else:
                c.update({"text": (delta or {}).get("text", ""), "logprobs": logprobs(entries, i) if entries else None})
            obj = {**head, "object": f"{kind}.chunk" if chat else kind, "choices": [c]}
            if gen.include_usage:
                obj["usage"] = None
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        Item = tuple[int, "list[str | TokenLogprob] | bool | Exception"]

        async def pump(i: int, req: EngineRequest, out: asyncio.Queue[Item]) -> None:
            """Each choice's pieces into one queue; last, whether its text completed its grammar (or what failed)."""
            end: bool | Exception = True
            try:
                async for pieces in req.items():  # what arrived since the last event, as one event
                    await out.put((i, pieces))
            except GrammarIncompleteError:
                end = False
            except Exception as e:  # noqa: BLE001 - an engine failure ends the stream, as it did with one choice
                end = e
            await out.put((i, end))

        async def events() -> AsyncIterator[str]:
            out: asyncio.Queue[Item] = asyncio.Queue()
            pumps = [asyncio.ensure_future(pump(i, r, out)) for i, r in enumerate(reqs)]
            try:
                if chat:
                    for i in range(len(reqs)):
                        yield chunk(i, {"role": "assistant", "content": None}, None)
                held: list[list[str]] = [[] for _ in reqs]  # with tools, sent once known to be a call or text
                held_entries: list[list[TokenLogprob]] = [[] for _ in reqs]
                running = len(reqs)
                while running:
                    i, item = await out.get()
                    if isinstance(item, list):
                        pieces = [x for x in item if isinstance(x, str)]
                        entries = [x for x in item if not isinstance(x, str)]
                        if tools is not None:
                            held[i] += pieces
                            held_entries[i] += entries
                            continue
                        text = "".join(pieces)
                        yield chunk(i, {"content": text} if chat else {"text": text}, None, entries)
                        continue
                    if isinstance(item, Exception):
                        raise item
                    running -= 1
                    req, finish = reqs[i], reqs[i].finish_reason
                    if tools is not None:
                        message, finish = tool_call(req, "".join(held[i]), item)
                        if "tool_calls" in message:
                            calls = [{"index": 0, **call} for call in message["tool_calls"]]
                            yield chunk(i, {"tool_calls": calls}, None)
                        elif message["content"]:
                            yield chunk(i, {"content": message["content"]}, None, held_entries[i])
                    yield chunk(i, {}, finish)
                if gen.include_usage:
                    tail = {**head, "object": f"{kind}.chunk" if chat else kind, "choices": [], "usage": usage()}
                    yield f"data: {json.dumps(tail)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                for r in reqs:
                    r.cancel()  # a client gone mid-stream: the engine frees the sequences at its next step
                for p in pumps:
                    p.cancel()

        return _EventStream(events(), media_type="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def embeddings(request: Request) -> Response:
        if emb is None:
            raise P.ApiError(404, "this server has no embedding model", code="model_not_found")
        body = P.parse_json(await request.body())
        inputs = P.embedding_inputs(body)
        fmt = P.encoding_format(body)
        P.embedding_dimensions(body, emb.gen.n_embd)
        token_lists = emb.tokens(inputs)
        n_tokens = sum(map(len, token_lists))
        vectors = await asyncio.to_thread(emb.embed, token_lists, fmt)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": emb.model_id,
                             "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})

    def cache_file(body: dict[str, Any]) -> tuple[str, Path]:
        if state_dir is None:
            raise P.ApiError(404, "this server keeps no saved caches: start it with --state-dir DIR",
                             code="not_found")
        name = body.get("name")
        if not isinstance(name, str) or not P.CACHE_NAME.fullmatch(name):
            raise P.ApiError(400, "'name' must be 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'",
                             param="name", code="invalid_value")
        return name, state_dir / f"{name}.state"

    async def cache_save(request: Request) -> Response:
        """Evaluate a prompt (or chat messages, without the assistant's turn) and save its cache by name."""
        body = P.parse_json(await request.body())
        name, path = cache_file(body)
        if body.get("messages") is not None:
            try:
                prompt: str | list[int] = engine.model.apply_chat_template(P.chat_messages(body), False)
            except (ValueError, RuntimeError, TypeError) as e:
                raise P.ApiError(400, str(e), param="messages") from None
        else:
            prompt = P.prompt_text(body)
        try:
            n = await asyncio.to_thread(engine.save_cache, path, prompt)
        except ContextFullError as e:
            raise P.ApiError(400, str(e), param="prompt", code="context_length_exceeded") from None
        except (ValueError, TypeError) as e:
            raise P.ApiError(400, str(e)) from None
        except RuntimeError as e:
            raise P.ApiError(503, str(e), type="server_error") from None
        return JSONResponse({"object": "cache", "name": name, "tokens": n, "bytes": path.stat().st_size})

    async def cache_restore(request: Request) -> Response:
        """Load a saved cache into an idle sequence: requests that start with its prompt evaluate only the rest."""
        body = P.parse_json(await request.body())
        name, path = cache_file(body)
        if not path.is_file():
            raise P.ApiError(404, f"no saved cache named {name!r}", param="name", code="not_found")
        try:
            n = await asyncio.to_thread(engine.load_cache, path)
        except ValueError as e:  # not a state, corrupted, another model, too long (ContextFullError)
            raise P.ApiError(400, str(e), param="name") from None
        except RuntimeError as e:  # every sequence busy, or llama.cpp refused it
            raise P.ApiError(409, str(e), param="name", code="conflict") from None
        return JSONResponse({"object": "cache", "name": name, "tokens": n})

    async def cache_list(request: Request) -> Response:
        if state_dir is None:
            return JSONResponse({"object": "list", "data": []})
        data = [{"object": "cache", "name": f.stem, "bytes": f.stat().st_size}
                for f in sorted(state_dir.glob("*.state")) if P.CACHE_NAME.fullmatch(f.stem)]
        return JSONResponse({"object": "list", "data": data})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": model_list()})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "slots_busy": engine.busy_slots, "slots": engine.parallel,
                             "queue": engine.queue_depth})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, P.ApiError)
        return JSONResponse(exc.body, status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(P.ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                       code=code).body, status_code=exc.status_code)

    openai_routes = [("/completions", completions, "POST"), ("/chat/completions", chat_completions, "POST"),
                     ("/responses", responses, "POST"),
                     ("/embeddings", embeddings, "POST"), ("/models", models, "GET"),
                     ("/cache", cache_list, "GET"), ("/cache/save", cache_save, "POST"),
                     ("/cache/restore", cache_restore, "POST")]
    app = Starlette(
        routes=[Route(prefix + path, endpoint, methods=[method])
                for path, endpoint, method in openai_routes for prefix in ("/v1", "")]
        + [Route("/health", health, methods=["GET"]), Route("/metrics", prometheus, methods=["GET"])],
        exception_handlers={P.ApiError: api_error, HTTPException: http_error},
    )
    wrapped = _count_requests(app, metrics)
    if api_key:
        wrapped = _require_key(wrapped, api_key)
    return _cors(wrapped, cors_origins) if cors_origins else wrapped


class _EventStream(StreamingResponse):
    """A stream whose generator is closed however the response ends.

    When the client has gone, the server's send raises (ASGI 2.4) and
    Starlette leaves the body generator suspended; closing it here runs its
    cleanup at once, which cancels the request.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def _with_instructions(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The tool instructions as (or added to) the system message."""
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}".strip()}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


async def _unless_gone(request: Request, req: EngineRequest) -> str:
    """The whole answer; a client that hangs up meanwhile cancels the request."""
    answer = asyncio.ensure_future(req.atext())
    while True:
        done, _ = await asyncio.wait({answer}, timeout=0.25)
        if done:
            return answer.result()
        if await request.is_disconnected():
            req.cancel()


def _count_requests(app: Any, metrics: Metrics) -> Any:
    async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        status = [0]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                metrics.http(scope["path"], status[0])
            await send(message)
        await app(scope, receive, send_status)
    return counted


def _require_key(app: Any, api_key: str) -> Any:
    """Every route but /health needs ``Authorization: Bearer <key>``; otherwise 401 with OpenAI's error body."""
    expected = f"Bearer {api_key}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                err = P.ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                                 type="authentication_error", code="invalid_api_key")
                await JSONResponse(err.body, status_code=401)(scope, receive, send)
                return
        await app(scope, receive, send)
    return guarded


def _cors(app: Any, origins: Sequence[str]) -> Any:
    """CORS for browser pages on ``origins``: preflights are answered here, before the API-key check
    (browsers send them without credentials), and allowed origins get their header on every response."""
    allowed = {o.encode() for o in origins}
    any_origin = b"*" in allowed

    async def with_cors(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        ok = origin is not None and (any_origin or origin in allowed)
        cors = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")] if ok and origin else []
        if scope["method"] == "OPTIONS" and origin is not None and b"access-control-request-method" in headers:
            if not ok:
                err = P.ApiError(403, f"origin {origin.decode(errors='replace')} may not call this server "
                                 f"(mullama serve --cors-origin ORIGIN allows one)", code="cors_origin_not_allowed")
                await JSONResponse(err.body, status_code=403)(scope, receive, send)
                return
            asked = headers.get(b"access-control-request-headers", b"authorization, content-type")
            await Response(status_code=204, headers={
                "Access-Control-Allow-Origin": origin.decode(), "Vary": "Origin",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": asked.decode(errors="replace"),
                "Access-Control-Max-Age": "600"})(scope, receive, send)
            return

        async def send_cors(message: dict[str, Any]) -> None:
            if cors and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)
        await app(scope, receive, send_cors)
    return with_cors
