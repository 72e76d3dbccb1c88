"""OpenAI's wire format: request bodies checked into library arguments, results into response bodies.

Every problem with a request becomes an :class:`ApiError` carrying the HTTP
status and OpenAI's error body (``{"error": {"message", "type", "param",
"code"}}``), so that clients such as the official ``openai`` package report
it as they would for OpenAI itself.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, overload

from ..completion import MAX_LOGPROBS, TokenLogprob
from ..lora import LoraAdapter
from ..sampling import SamplerParams

MAX_STOPS = 16
CACHE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")  # a saved cache's name: a file name, no path
MAX_N = 16  # choices per request


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:  # noqa: A002 - OpenAI's field name
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float | None,
            lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ApiError(400, f"'{name}' must be a number, not {json.dumps(v)}", param=name, code="invalid_type")
    if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
        bound = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ApiError(400, f"'{name}' must be {bound}, got {v}", param=name, code="invalid_value")
    return float(v)


@overload
def _integer(body: dict[str, Any], name: str, default: int, lo: int, hi: int | None = None) -> int: ...
@overload
def _integer(body: dict[str, Any], name: str, default: None, lo: int, hi: int | None = None) -> int | None: ...
def _integer(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"'{name}' must be an integer, not {json.dumps(v)}", param=name, code="invalid_type")
    if v < lo or (hi is not None and v > hi):
        raise ApiError(400, f"'{name}' must be >= {lo}" + (f" and <= {hi}" if hi is not None else "")
                       + f", got {v}", param=name, code="invalid_value")
    return v


def _boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, f"'{name}' must be a boolean, not {json.dumps(v)}", param=name, code="invalid_type")
    return v


class Generation:
    """The generation arguments common to both completion routes (``chat``: /v1/chat/completions' dialect)."""

    def __init__(self, body: dict[str, Any], chat: bool = True, loras: Mapping[str, LoraAdapter] | None = None) -> None:
        # choices of one prompt: each its own sequence and seed, sharing the prompt's cache
        self.n = _integer(body, "n", 1, 1, MAX_N)
        self.loras = request_loras(body, loras or {})
        # alternatives to report per token; None: no logprobs
        self.top_logprobs = _chat_logprobs(body) if chat else _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
        # Refused rather than ignored: a client asking for these would get something else.
        for name, harmless in (("echo", (None, False)),
                               ("best_of", (None, 1)), ("logit_bias", (None, {})), ("suffix", (None, ""))):
            if body.get(name) not in harmless:
                raise ApiError(400, f"'{name}' is not supported by this server", param=name)
        for legacy in ("functions", "function_call"):
            if body.get(legacy) is not None:
                raise ApiError(400, f"'{legacy}' (deprecated by OpenAI) is not supported: use 'tools'", param=legacy)
        max_tokens = _integer(body, "max_completion_tokens", None, 0)
        self.max_tokens = _integer(body, "max_tokens", max_tokens, 0)
        self.stream = _boolean(body, "stream", False)
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise ApiError(400, "'stream_options' must be an object", param="stream_options")
        self.include_usage = bool(opts and opts.get("include_usage"))
        self.ignore_eos = _boolean(body, "ignore_eos", False)
        stop = body.get("stop")
        if stop is None:
            self.stop: list[str] = []
        elif isinstance(stop, str):
            self.stop = [stop]
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            self.stop = list(stop)
        else:
            raise ApiError(400, "'stop' must be a string or a list of strings", param="stop", code="invalid_type")
        if len(self.stop) > MAX_STOPS or any(not s for s in self.stop):
            raise ApiError(400, f"'stop' takes at most {MAX_STOPS} non-empty strings", param="stop",
                           code="invalid_value")
        seed = _integer(body, "seed", None, -(2 ** 63), 2 ** 64 - 1)
        # OpenAI's defaults (temperature 1, top_p 1, no penalties) with llama.cpp's top_k and min_p.
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
        top_k = _integer(body, "top_k", 40, 0)
        min_p = _number(body, "min_p", 0.05, 0.0, 1.0)
        repeat = _number(body, "repeat_penalty", 1.0, 0.0, None, lo_open=True)
        presence = _number(body, "presence_penalty", 0.0, -2.0, 2.0)
        frequency = _number(body, "frequency_penalty", 0.0, -2.0, 2.0)
        self.params = SamplerParams(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, penalty_repeat=repeat,
            penalty_present=presence, penalty_freq=frequency,
            # every OpenAI seed is a fixed seed; mullama's 0 means "draw one", so they are shifted by one
            seed=0 if seed is None else seed % 0xFFFFFFFE + 1)
        self._seed = seed

    def choice_params(self, i: int) -> SamplerParams:
        """Choice ``i``'s parameters: with a seed, choice i draws from seed + i (each reproducible, each other)."""
        if i == 0 or self._seed is None:
            return self.params
        params = self.params.copy()
        params.seed = (self._seed + i) % 0xFFFFFFFE + 1
        return params


def request_loras(body: dict[str, Any], adapters: Mapping[str, LoraAdapter]) -> dict[LoraAdapter, float] | None:
    """The LoRA adapters a request applies.

    ``lora``: ``{"NAME": scale, ...}``, or a list of ``{"name": NAME, "scale": s}`` or of llama-server's
    ``{"id": i, "scale": s}`` (``i``: the adapter's place among the ``--lora`` options).  Without it,
    ``model`` naming an adapter applies that one at scale 1; otherwise none.
    """
    spec = body.get("lora")
    names = list(adapters)
    if spec is None:
        model = body.get("model")
        return {adapters[model]: 1.0} if isinstance(model, str) and model in adapters else None
    entries: list[tuple[Any, Any]]
    if isinstance(spec, dict):
        entries = list(spec.items())
    elif isinstance(spec, list) and all(isinstance(e, dict) for e in spec):
        entries = []
        for e in spec:
            key = e.get("name", e.get("id"))
            entries.append((key, e.get("scale", 1.0)))
    else:
        raise ApiError(400, "'lora' must be an object of adapter names to scales, or a list of "
                       "{\"name\" (or \"id\"), \"scale\"} objects", param="lora", code="invalid_type")
    out: dict[LoraAdapter, float] = {}
    for key, scale in entries:
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(names):
            key = names[key]
        if not isinstance(key, str) or key not in adapters:
            have = ", ".join(names) if names else "none (start the server with --lora NAME=PATH)"
            raise ApiError(400, f"'lora': no adapter {json.dumps(key)} on this server; it has: {have}",
                           param="lora", code="invalid_value")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ApiError(400, f"'lora': the scale of {key!r} must be a finite number, not {json.dumps(scale)}",
                           param="lora", code="invalid_value")
        out[adapters[key]] = float(scale)
    return out


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """/v1/chat/completions: ``logprobs: true`` and ``top_logprobs`` (0 to 20, only with logprobs)."""
    on = _boolean(body, "logprobs", False)
    top = _integer(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    if top is not None and not on:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs", code="invalid_value")
    return (top or 0) if on else None


def engine_logprobs(top_logprobs: int | None) -> int:
    """What to ask the engine for: it reports at least one alternative whenever it reports anything."""
    return 0 if top_logprobs is None else max(top_logprobs, 1)


def chat_logprobs(entries: list[TokenLogprob], top: int) -> dict[str, Any]:
    """A chat choice's ``logprobs``: one entry per token, as OpenAI writes it."""
    def one(token: str, raw: bytes, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(raw)}
    return {"content": [{**one(e.piece, e.bytes, e.logprob),
                         "top_logprobs": [one(t.piece, t.bytes, t.logprob) for t in e.top[:top]]}
                        for e in entries],
            "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], top: int, offset: int) -> dict[str, Any]:
    """A /v1/completions choice's ``logprobs`` (OpenAI's legacy layout); ``offset``: where the text starts."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.piece)
    return {"tokens": [e.piece for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.piece: t.logprob for t in e.top[:top]} for e in entries], "text_offset": offsets}


def prompt_text(body: dict[str, Any]) -> str | list[int]:
    """/v1/completions' prompt: a string, a list of one string, or token ids."""
    p = body.get("prompt")
    if p is None:
        raise ApiError(400, "'prompt' is required", param="prompt", code="missing_required_parameter")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        if not p:
            raise ApiError(400, "'prompt' is empty", param="prompt", code="invalid_value")
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return p
    raise ApiError(400, "'prompt' must be a non-empty string or a list of token ids (one prompt per request)",
                   param="prompt", code="invalid_type")


MEDIA_PARTS = ("image_url", "input_audio")


def chat_messages(body: dict[str, Any], media: bool = False) -> list[dict[str, Any]]:
    """The checked messages.  With ``media`` (a projector is loaded), a content list that holds
    image_url or input_audio parts is kept as a list for the projector to split."""
    msgs = body.get("messages")
    if msgs is None:
        raise ApiError(400, "'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages", code="invalid_type")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"'{where}' must be an object", param=where, code="invalid_type")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ApiError(400, f"'{where}.role' must be a non-empty string", param=f"{where}.role")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in MEDIA_PARTS:
                    if not media:
                        raise ApiError(400, f"'{where}.content[{j}]' is an {kind} part, but this server takes no "
                                       f"media: start it with --mmproj (the model's multimodal projector)",
                                       param=f"{where}.content")
                    continue
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"'{where}.content' parts must be text parts ({{\"type\": \"text\", "
                                   f"\"text\": ...}})" + (", image_url or input_audio parts" if media else
                                                          "; images and audio need --mmproj"),
                                   param=f"{where}.content")
                texts.append(part["text"])
            if len(texts) == len(content):
                content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise ApiError(400, f"'{where}.content' must be a string or an array of text parts",
                           param=f"{where}.content", code="invalid_type")
        msg: dict[str, Any] = {"role": role, "content": content}
        # a tool round trip: the assistant's calls and the tools' answers reach the template as sent
        for key in ("tool_calls", "tool_call_id", "name"):
            if m.get(key) is not None:
                msg[key] = m[key]
        if isinstance(msg.get("tool_calls"), list):
            for call in msg["tool_calls"]:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ApiError(400, f"'{where}.tool_calls' entries need function.name", param=f"{where}.tool_calls")
                args = fn.get("arguments")
                if isinstance(args, str):  # templates expect the arguments as an object, as transformers does
                    try:
                        fn = {**fn, "arguments": json.loads(args)}
                    except ValueError:
                        raise ApiError(400, f"'{where}.tool_calls': arguments are not valid JSON",
                                       param=f"{where}.tool_calls") from None
                call["function"] = fn
        out.append(msg)
    return out


def embedding_inputs(body: dict[str, Any]) -> list[str] | list[list[int]]:
    """'input': a string, an array of strings, an array of token ids, or an array of such arrays."""
    inp = body.get("input")
    if inp is None:
        raise ApiError(400, "'input' is required", param="input", code="missing_required_parameter")

    def is_ids(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
    if isinstance(inp, str):
        inp = [inp]
    if is_ids(inp):
        return [list(inp)]
    if isinstance(inp, list) and inp and all(is_ids(v) for v in inp):
        return [list(v) for v in inp]
    if not isinstance(inp, list) or not inp or not all(isinstance(t, str) for t in inp):
        raise ApiError(400, "'input' must be a string, an array of strings, an array of token ids or an array of "
                       "arrays of token ids (none of them empty)", param="input", code="invalid_type")
    for i, t in enumerate(inp):
        if not t:
            raise ApiError(400, f"'input[{i}]' is an empty string, which has no embedding", param="input",
                           code="invalid_value")
    return list(inp)


def embedding_dimensions(body: dict[str, Any], n_embd: int) -> None:
    """'dimensions' is accepted only as the model's own size: no GGUF says that a model was trained to be cut."""
    d = _integer(body, "dimensions", None, 1)
    if d is not None and d != n_embd:
        raise ApiError(400, f"'dimensions': this model's embeddings have {n_embd} dimensions and it does not support "
                       f"shortening them; leave 'dimensions' out or send {n_embd}", param="dimensions",
                       code="invalid_value")


def encoding_format(body: dict[str, Any]) -> str:
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be \"float\" or \"base64\"", param="encoding_format")
    return str(fmt)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens``: prompt tokens that came from the cache instead of being evaluated."""
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out
