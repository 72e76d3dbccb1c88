"""A browser page on another origin calls ``mullama serve`` with fetch and reads a streamed answer.

Headless Chromium (Debian's package; scripts/test.sh installs it where it can) loads a page from a small
server on one loopback port; ``mullama serve`` listens on another with ``--cors-origin`` naming the
page's origin and an API key, so the browser sends a preflight first.  The page posts what it got back
to its own server.  A page from an origin the server does not name must fail, as browsers enforce it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mullama import Context, Model, SamplerParams
from mullama.server import ServeOptions

from .test_server import KEY, Server

pytest.importorskip("uvicorn")
BROWSER = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium on PATH (apt-get install chromium)")

MESSAGES = [{"role": "user", "content": "Name a color."}]
PAGE = """<!doctype html><html><body><script>
(async () => {
  const out = {};
  try {
    const r = await fetch(%(api)s + '/v1/chat/completions', {method: 'POST',
      headers: {'Authorization': 'Bearer %(key)s', 'Content-Type': 'application/json'},
      body: JSON.stringify({messages: %(messages)s, max_tokens: 16, temperature: 0, stream: true})});
    out.status = r.status;
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = '', text = '', events = 0;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf('\\n\\n')) >= 0) {
        const ev = buf.slice(0, i); buf = buf.slice(i + 2);
        if (ev.startsWith('data: {')) { events++; text += JSON.parse(ev.slice(6)).choices[0].delta.content || ''; }
      }
    }
    out.text = text; out.events = events;
  } catch (e) { out.error = String(e); }
  await fetch('/result', {method: 'POST', body: JSON.stringify(out)});
})();
</script></body></html>"""


class PageServer:
    """Serves the page on a loopback port of its own (its own origin) and receives the page's result."""

    def __init__(self) -> None:
        self.page = ""
        self.result: dict[str, object] | None = None
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = outer.page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                outer.result = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()
                outer.got.set()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def visit(self, api: str) -> dict[str, object]:
        """Load the page in headless Chromium until it posts its result."""
        self.page = PAGE % {"api": json.dumps(api), "key": KEY, "messages": json.dumps(MESSAGES)}
        self.result, _ = None, self.got.clear()
        assert BROWSER is not None
        profile = tempfile.mkdtemp(prefix="mullama-chromium-")
        # a session of its own, so that the browser's helper processes end with it
        proc = subprocess.Popen([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                 "--disable-sync", f"--user-data-dir={profile}", self.origin + "/"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            assert self.got.wait(180), "the page posted no result"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            shutil.rmtree(profile, ignore_errors=True)
        assert self.result is not None
        return self.result

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[PageServer, PageServer]]:
    allowed, other = PageServer(), PageServer()
    try:
        yield allowed, other
    finally:
        allowed.close()
        other.close()


def test_a_page_on_an_allowed_origin_streams_an_answer(smollm_path: Path, model: Model,
                                                       pages: tuple[PageServer, PageServer]) -> None:
    allowed, other = pages
    with Context(model, n_ctx=1024) as ctx:
        expected = ctx.generate(model.apply_chat_template(MESSAGES), max_tokens=16, params=SamplerParams.greedy())
    srv = Server(ServeOptions(model=smollm_path, parallel=2, n_ctx=1024, api_key=KEY, cors_origins=(allowed.origin,)))
    try:
        got = allowed.visit(srv.base)
        assert got.get("error") is None, got
        assert got["status"] == 200 and got["text"] == expected and int(got["events"]) > 2, got  # type: ignore[call-overload]
        refused = other.visit(srv.base)  # the preflight gets no CORS headers for this origin: fetch fails
        assert "error" in refused and "text" not in refused, refused
    finally:
        srv.stop()
