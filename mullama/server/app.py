"""The ASGI app: the routes of :mod:`.routes` over one :class:`.state.Server`, wrapped by the request
counter, the API-key check and CORS."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..embedding import EmbeddingGenerator
from ..engine import Engine
from ..lora import LoraAdapter
from ..multimodal import Projector
from . import protocol as P
from . import routes
from .metrics import Metrics
from .state import Server


def create_app(engine: Engine, embedder: EmbeddingGenerator | None, model_id: str,
               embedding_model_id: str | None = None, api_key: str | None = None, *,
               cors_origins: Sequence[str] = (), system_fingerprint: str | None = None,
               loras: Mapping[str, LoraAdapter] | None = None, state_dir: Path | None = None,
               projector: Projector | None = None, remote_media: bool = False) -> Any:
    """The ASGI app (a Starlette app, wrapped by the request counter, the API-key check and CORS).

    Every route is served with and without the ``/v1`` prefix, as llama-server
    does, for clients whose ``base_url`` lacks it.  ``cors_origins``: the
    origins whose browser pages may call the server (``*`` for any); none by
    default.  ``system_fingerprint`` goes into every completion.  ``loras``:
    the LoRA adapters requests may apply, by name (:func:`.protocol.request_loras`).
    ``state_dir``: where ``/v1/cache/save`` writes named caches and ``/v1/cache/restore`` reads them.
    ``projector``: the engine's multimodal projector, for image (and audio) parts in chat messages;
    ``remote_media``: fetch ``http(s)`` image URLs too (size and time limited), not only ``data:`` URLs.
    """
    srv = Server(engine, embedder, model_id, embedding_model_id, system_fingerprint=system_fingerprint,
                 loras=loras, state_dir=state_dir, projector=projector, remote_media=remote_media)
    app = Starlette(
        routes=[Route(prefix + path, endpoint, methods=[method])
                for path, endpoint, method in routes.OPENAI_ROUTES for prefix in ("/v1", "")]
        + [Route(path, endpoint, methods=[method]) for path, endpoint, method in routes.OTHER_ROUTES],
        exception_handlers={P.ApiError: routes.api_error, HTTPException: routes.http_error},
    )
    app.state.server = srv
    wrapped = _count_requests(app, srv.metrics)
    if api_key:
        wrapped = _require_key(wrapped, api_key)
    return _cors(wrapped, cors_origins) if cors_origins else wrapped








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
