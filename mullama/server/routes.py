"""The server's routes: plain endpoint functions, each reading the shared :class:`.state.Server` from
``request.app.state.server``.

They stay thin: they check the request (:mod:`.protocol`), submit it to the engine, and stream or
collect what it produces.  Streams are server-sent events in OpenAI's chunk format; a client that
disconnects mid-stream cancels its request, and the engine frees the sequence at its next step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..completion import TokenLogprob
from ..context import ContextFullError
from ..engine import Request as EngineRequest
from ..grammar import GrammarIncompleteError
from . import protocol as P
from . import responses as R
from . import structured as S
from .state import Server
from .streams import EventStream, unless_gone


def server(request: Request) -> Server:
    """The shared state of the app that serves ``request``."""
    srv: Server = request.app.state.server
    return srv


async def completions(request: Request) -> Response:
    srv = server(request)
    body = P.parse_json(await request.body())
    prompt = P.prompt_text(body)
    gen = P.Generation(body, chat=False, loras=srv.adapters)
    if body.get("tools") is not None:
        raise P.ApiError(400, "'tools' are for /v1/chat/completions", param="tools")
    grammar = S.response_format(body)
    reqs = await srv.submit(prompt, gen, grammar)
    return await respond(srv, request, reqs, gen, "text_completion", None)


async def chat_completions(request: Request) -> Response:
    srv = server(request)
    prompt, gen, grammar, tools, media = await srv.chat(P.parse_json(await request.body()))
    reqs = await srv.submit(prompt, gen, grammar, media)
    return await respond(srv, request, reqs, gen, "chat.completion", tools if tools.active else None)


async def responses(request: Request) -> Response:
    srv = server(request)
    body = P.parse_json(await request.body())
    prompt, gen, grammar, tools, media = await srv.chat(R.chat_body(body))
    req = (await srv.submit(prompt, gen, grammar, media))[0]
    answer = R.Answer(body, srv.model_id)

    def item(text: str, complete: bool) -> dict[str, Any]:
        call = tools.parse(text) if tools.active and complete else None
        return R.call_item(call) if call is not None else R.message_item(text)

    def finish() -> None:
        answer.finish(req.finish_reason, req.prompt_tokens, req.prompt_tokens - req.prompt_evaluated,
                      req.completion_tokens)

    if not gen.stream:
        try:
            text, complete = await unless_gone(request, req), True
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

    return EventStream(events(), media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def respond(srv: Server, request: Request, reqs: list[EngineRequest], gen: P.Generation, kind: str,
                  tools: S.Tools | None) -> Response:
    """The choices (one per request, ``index`` in order) as one JSON body or one event stream."""
    rid, created = P.new_id("chatcmpl" if kind == "chat.completion" else "cmpl"), P.now()
    head: dict[str, Any] = {"id": rid, "created": created, "model": srv.model_id}
    if srv.system_fingerprint is not None:
        head["system_fingerprint"] = srv.system_fingerprint
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
                return await unless_gone(request, req), True
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

    return EventStream(events(), media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def embeddings(request: Request) -> Response:
    srv = server(request)
    if srv.emb is None:
        raise P.ApiError(404, "this server has no embedding model", code="model_not_found")
    body = P.parse_json(await request.body())
    inputs = P.embedding_inputs(body)
    fmt = P.encoding_format(body)
    P.embedding_dimensions(body, srv.emb.gen.n_embd)
    token_lists = srv.emb.tokens(inputs)
    n_tokens = sum(map(len, token_lists))
    vectors = await asyncio.to_thread(srv.emb.embed, token_lists, fmt)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": srv.emb.model_id,
                         "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})


async def cache_save(request: Request) -> Response:
    """Evaluate a prompt (or chat messages, without the assistant's turn) and save its cache by name."""
    srv = server(request)
    body = P.parse_json(await request.body())
    name, path = srv.cache_file(body)
    if body.get("messages") is not None:
        try:
            prompt: str | list[int] = srv.engine.model.apply_chat_template(P.chat_messages(body), False)
        except (ValueError, RuntimeError, TypeError) as e:
            raise P.ApiError(400, str(e), param="messages") from None
    else:
        prompt = P.prompt_text(body)
    try:
        n = await asyncio.to_thread(srv.engine.save_cache, path, prompt)
    except ContextFullError as e:
        raise P.ApiError(400, str(e), param="prompt", code="context_length_exceeded") from None
    except (ValueError, TypeError) as e:
        raise P.ApiError(400, str(e)) from None
    except RuntimeError as e:
        raise P.ApiError(503, str(e), type="server_error") from None
    return JSONResponse({"object": "cache", "name": name, "tokens": n, "bytes": path.stat().st_size})


async def cache_restore(request: Request) -> Response:
    """Load a saved cache into an idle sequence: requests that start with its prompt evaluate only the rest."""
    srv = server(request)
    body = P.parse_json(await request.body())
    name, path = srv.cache_file(body)
    if not path.is_file():
        raise P.ApiError(404, f"no saved cache named {name!r}", param="name", code="not_found")
    try:
        n = await asyncio.to_thread(srv.engine.load_cache, path)
    except ValueError as e:  # not a state, corrupted, another model, too long (ContextFullError)
        raise P.ApiError(400, str(e), param="name") from None
    except RuntimeError as e:  # every sequence busy, or llama.cpp refused it
        raise P.ApiError(409, str(e), param="name", code="conflict") from None
    return JSONResponse({"object": "cache", "name": name, "tokens": n})


async def cache_list(request: Request) -> Response:
    srv = server(request)
    if srv.state_dir is None:
        return JSONResponse({"object": "list", "data": []})
    data = [{"object": "cache", "name": f.stem, "bytes": f.stat().st_size}
            for f in sorted(srv.state_dir.glob("*.state")) if P.CACHE_NAME.fullmatch(f.stem)]
    return JSONResponse({"object": "list", "data": data})


async def models(request: Request) -> Response:
    srv = server(request)
    return JSONResponse({"object": "list", "data": srv.model_list()})


async def health(request: Request) -> Response:
    srv = server(request)
    return JSONResponse({"status": "ok", "slots_busy": srv.engine.busy_slots, "slots": srv.engine.parallel,
                         "queue": srv.engine.queue_depth})


async def prometheus(request: Request) -> Response:
    srv = server(request)
    return PlainTextResponse(srv.metrics.render(), media_type="text/plain; version=0.0.4")


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, P.ApiError)
    return JSONResponse(exc.body, status_code=exc.status)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(P.ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                   code=code).body, status_code=exc.status_code)


# (path, endpoint, method): each served with and without the /v1 prefix
OPENAI_ROUTES = [("/completions", completions, "POST"), ("/chat/completions", chat_completions, "POST"),
                 ("/responses", responses, "POST"),
                 ("/embeddings", embeddings, "POST"), ("/models", models, "GET"),
                 ("/cache", cache_list, "GET"), ("/cache/save", cache_save, "POST"),
                 ("/cache/restore", cache_restore, "POST")]
# served at their path only
OTHER_ROUTES = [("/health", health, "GET"), ("/metrics", prometheus, "GET")]
