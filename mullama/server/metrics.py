"""Prometheus text exposition of the server's counters and the engine's state."""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine import Engine


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.http_responses: Counter[tuple[str, int]] = Counter()

    def http(self, path: str, status: int) -> None:
        with self.lock:
            self.http_responses[(path, status)] += 1

    def render(self) -> str:
        e = self.engine
        st = dict(e.stats)
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP mullama_{name} {help_}")
            lines.append(f"# TYPE mullama_{name} {kind}")
            lines.extend(f"mullama_{name}{labels} {value:g}" for labels, value in samples)

        metric("requests_total", "counter", "Generation requests submitted to the engine.", [("", st["requests"])])
        reasons = sorted(e.finish_reasons.items())
        ttft = list(e.ttft_seconds)
        with self.lock:
            http = sorted(self.http_responses.items())
        metric("requests_finished_total", "counter", "Generation requests finished, by finish reason.",
               [(f'{{reason="{r}"}}', n) for r, n in reasons])
        metric("prompt_tokens_total", "counter", "Prompt tokens submitted.", [("", st["prompt_tokens"])])
        metric("prompt_tokens_evaluated_total", "counter", "Prompt tokens decoded (the rest came from the cache).",
               [("", st["prompt_tokens_evaluated"])])
        metric("completion_tokens_total", "counter", "Tokens generated.", [("", st["completion_tokens"])])
        metric("decode_steps_total", "counter", "Batched llama_decode calls.", [("", st["steps"])])
        metric("draft_tokens_total", "counter", "Tokens drafted (speculative decoding).", [("", st["drafted"])])
        metric("draft_tokens_accepted_total", "counter", "Drafted tokens kept: each saved a decode step.",
               [("", st["drafts_accepted"])])
        metric("queue_depth", "gauge", "Requests waiting for a free slot.", [("", e.queue_depth)])
        metric("slots_busy", "gauge", "Sequences being generated.", [("", e.busy_slots)])
        metric("slots", "gauge", "Sequences decoded together (--parallel).", [("", e.parallel)])
        metric("time_to_first_token_seconds", "summary", "From submission to the first piece of text.",
               [("_sum", ttft[0]), ("_count", ttft[1])])
        metric("http_responses_total", "counter", "HTTP responses, by path and status.",
               [(f'{{path="{p}",status="{s}"}}', n) for (p, s), n in http])
        return "\n".join(lines) + "\n"
