"""Remote images for chat messages (``--allow-remote-media``): fetched with a size and a time limit.

Off by default: a server that fetches any address a client names can be made
to reach hosts only it can see.  ``data:`` URLs need none of this; the
projector decodes them (:func:`mullama.multimodal.split_chat_media`).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any, Final

from . import protocol as P

MAX_BYTES: Final = 10 << 20  # 10 MiB, as llama-server's limit
TIMEOUT_S: Final = 10.0  # for the whole download, not per read


def fetch(url: str, where: str, max_bytes: int = MAX_BYTES, timeout_s: float = TIMEOUT_S) -> bytes:
    """The body of ``url`` (http or https), or an ApiError 400 that says what went wrong."""
    deadline = time.monotonic() + timeout_s
    req = urllib.request.Request(url, headers={"User-Agent": "mullama", "Accept": "image/*, audio/*"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only, checked
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise P.ApiError(400, f"'{where}': {url[:100]} is {length} bytes, above the limit of {max_bytes}",
                                 param=where)
            parts: list[bytes] = []
            got = 0
            while True:
                if time.monotonic() > deadline:
                    raise P.ApiError(400, f"'{where}': fetching {url[:100]} took more than {timeout_s:g} s",
                                     param=where)
                block = resp.read(65536)
                if not block:
                    break
                got += len(block)
                if got > max_bytes:
                    raise P.ApiError(400, f"'{where}': {url[:100]} is larger than the limit of {max_bytes} bytes",
                                     param=where)
                parts.append(block)
            return b"".join(parts)
    except urllib.error.HTTPError as e:
        raise P.ApiError(400, f"'{where}': fetching {url[:100]} failed with HTTP status {e.code}",
                         param=where) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise P.ApiError(400, f"'{where}': could not fetch {url[:100]} ({reason})", param=where) from None


def fetch_remote_media(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with every http(s) image_url part replaced by an image part holding its bytes."""
    out = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, list):
            out.append(m)
            continue
        parts = []
        for j, part in enumerate(content):
            spec = part.get("image_url") if part.get("type") == "image_url" else None
            url = spec.get("url") if isinstance(spec, dict) else None
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                part = {"type": "image", "image": fetch(url, f"messages[{i}].content[{j}].image_url")}
            parts.append(part)
        out.append({**m, "content": parts})
    return out
