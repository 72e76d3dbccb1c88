"""asyncio front-ends: generation that never blocks the event loop.

``await agenerate(ctx, ...)`` runs :meth:`Context.generate` in a worker
thread; ``async for piece in agenerate_stream(ctx, ...)`` streams pieces as
they are decoded.  Cancelling the awaiting task (or leaving the ``async for``)
cancels the native work within about one token, and the Context stays usable.
The same are available as ``Context.agenerate`` / ``Context.agenerate_stream``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import Context
    from .sampling import SamplerParams

_DONE = object()


async def agenerate(ctx: Context, prompt: str | Sequence[int], max_tokens: int = 100,
                    params: SamplerParams | None = None, **kwargs: Any) -> str:
    """Awaitable :meth:`Context.generate`."""
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(ctx.generate, prompt, max_tokens, params, cancel=cancel, **kwargs)
    except asyncio.CancelledError:
        cancel.set()  # the worker thread stops at its next token and releases the Context
        raise


async def agenerate_stream(ctx: Context, prompt: str | Sequence[int], max_tokens: int = 100,
                           params: SamplerParams | None = None, **kwargs: Any) -> AsyncIterator[str]:
    """Async iterator over the pieces of :meth:`Context.generate_stream`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()
    # Validate in the caller, so bad arguments raise here rather than in the thread.
    stream = ctx.generate_stream(prompt, max_tokens, params, cancel=cancel, **kwargs)

    def produce() -> None:
        try:
            for piece in stream:
                loop.call_soon_threadsafe(queue.put_nowait, piece)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                from .context import GenerationCancelled
                if isinstance(item, GenerationCancelled) and cancel.is_set():
                    break
                raise item
            yield item
    finally:
        cancel.set()
        await asyncio.shield(worker)
