"""Responses that end with their request: an event stream whose generator is always closed, and a
wait for a request's text that cancels it when the client goes away."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from ..engine import Request as EngineRequest


class EventStream(StreamingResponse):
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


async def unless_gone(request: Request, req: EngineRequest) -> str:
    """The whole answer; a client that hangs up meanwhile cancels the request."""
    answer = asyncio.ensure_future(req.atext())
    while True:
        done, _ = await asyncio.wait({answer}, timeout=0.25)
        if done:
            return answer.result()
        if await request.is_disconnected():
            req.cancel()
