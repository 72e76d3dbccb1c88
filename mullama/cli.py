"""The ``mullama`` command: run, chat, embed, info, tokenize, serve, rpc-server.

MODEL may be omitted (or given as ``-``): the default model,
SmolLM2-135M-Instruct (Q4_1), is then downloaded once into the user cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _backend
from ._download import ensure_model
from .context import Context
from .embedding import EmbeddingGenerator
from .model import Model
from .multimodal import Projector
from .sampling import SamplerParams

PRESETS = {"greedy": SamplerParams.greedy, "creative": SamplerParams.creative, "precise": SamplerParams.precise,
           "default": SamplerParams}


def _model_path(arg: str | None) -> Path:
    return ensure_model() if arg in (None, "", "-") else Path(arg)


def _load(args: argparse.Namespace, vocab_only: bool = False) -> Model:
    path = _model_path(args.model)
    show = sys.stderr.isatty() and not vocab_only

    def progress(fraction: float) -> bool:
        width = 30
        done = int(fraction * width)
        print(f"\rloading {path.name} [{'#' * done}{'.' * (width - done)}] {fraction:4.0%}",
              end="" if fraction < 1 else "\n", file=sys.stderr, flush=True)
        return True
    return Model.load(path, n_gpu_layers=getattr(args, "n_gpu_layers", 0), vocab_only=vocab_only,
                      progress_callback=progress if show else None)


def _params(args: argparse.Namespace) -> SamplerParams:
    p = PRESETS[args.preset]()
    for name in ("temperature", "top_k", "top_p", "min_p", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(p, name, value)
    if args.repeat_penalty is not None:
        p.penalty_repeat = args.repeat_penalty
    return p


def _cache_args(args: argparse.Namespace) -> dict[str, Any]:
    """--cache-type-k, --cache-type-v and --flash-attn as Context's keyword arguments."""
    fa = {"auto": "auto", "on": True, "off": False}[args.flash_attn]
    return {"type_k": args.cache_type_k, "type_v": args.cache_type_v, "flash_attn": fa}


def _draft(args: argparse.Namespace) -> Any:
    """--draft-model / --lookup as a Context's or Engine's ``draft=``."""
    from .speculative import from_options
    ngld = args.n_gpu_layers_draft if args.n_gpu_layers_draft is not None else args.n_gpu_layers
    return from_options(args.draft_model, args.lookup, args.draft_max, args.draft_p_min, ngld)


def cmd_run(args: argparse.Namespace) -> int:
    model = _load(args)
    if args.image and not args.mmproj:
        raise SystemExit("mullama run: --image needs --mmproj (the model's multimodal projector)")
    projector = Projector.load(args.mmproj, model, n_threads=args.threads or None) if args.mmproj else None
    ctx = Context(model, n_ctx=args.ctx, n_threads=args.threads, draft=_draft(args), projector=projector,
                  **_cache_args(args))
    prompt = args.prompt
    media = list(args.image) if args.image else None
    if media and projector is not None and projector.marker not in prompt:
        prompt = projector.marker * len(media) + prompt  # as llama-mtmd-cli does: the images first
    if args.chat_template:
        prompt = model.apply_chat_template([("user", prompt)])
    for piece in ctx.generate_stream(prompt, max_tokens=args.max_tokens, params=_params(args), media=media):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    model = _load(args)
    ctx = Context(model, n_ctx=args.ctx, n_threads=args.threads, draft=_draft(args), **_cache_args(args))
    params = _params(args)
    messages: list[tuple[str, str]] = [("system", args.system)] if args.system else []
    print("Type /quit to exit, /reset to clear history.", file=sys.stderr)
    while True:
        try:
            line = input("You: ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line:
            continue
        if line == "/quit":
            return 0
        if line == "/reset":
            messages = messages[:1] if args.system else []
            ctx.clear_cache()
            print("[Conversation reset]")
            continue
        messages.append(("user", line))
        prompt = model.apply_chat_template(messages)
        print("Assistant: ", end="", flush=True)
        reply = []
        try:
            for piece in ctx.generate_stream(prompt, max_tokens=args.max_tokens, params=params):
                reply.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [interrupted]", end="")
        print()
        messages.append(("assistant", "".join(reply)))


def cmd_embed(args: argparse.Namespace) -> int:
    model = _load(args)
    gen = EmbeddingGenerator(model, n_ctx=args.ctx or 512, normalize=not args.no_normalize)
    matrix = gen.embed_matrix(args.texts)
    if args.output:
        import numpy as np
        np.save(args.output, matrix)
        print(f"wrote {matrix.shape[0]}x{matrix.shape[1]} float32 to {args.output}", file=sys.stderr)
    else:
        json.dump([row.tolist() for row in matrix], sys.stdout)
        sys.stdout.write("\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    print(_backend.system_info())
    if args.model is None and not args.with_model:
        return 0
    model = _load(args, vocab_only=False)
    props: dict[str, Any] = {name: getattr(model, name) for name in (
        "name", "architecture", "description", "n_params", "size", "n_ctx_train", "n_embd", "n_vocab", "n_layer",
        "n_head", "token_bos", "token_eos")}
    print(f"\nmodel: {model.path}")
    for k, v in props.items():
        print(f"  {k}: {v}")
    print("metadata:")
    for k, v in sorted(model.metadata().items()):
        print(f"  {k}: {v if len(v) < 120 else v[:117] + '...'}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    model = _load(args, vocab_only=True)
    ids = model.tokenize(args.text, add_bos=not args.no_bos, special=args.special)
    if args.show_pieces:
        for t in ids:
            print(t, repr(model.token_to_piece(t, special=True).decode("utf-8", "replace")))
    else:
        print(json.dumps(ids))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import ServeOptions, serve
    return serve(ServeOptions(model=_model_path(args.model), host=args.host, port=args.port, parallel=args.parallel,
                              n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads,
                              embedding_model=Path(args.embedding_model) if args.embedding_model else None,
                              api_key=args.api_key, model_id=args.model_id,
                              cors_origins=tuple(args.cors_origin or ()),
                              loras=tuple(_lora_arg(a) for a in args.lora or ()),
                              state_dir=Path(args.state_dir) if args.state_dir else None,
                              draft_model=Path(args.draft_model) if args.draft_model else None,
                              lookup=args.lookup, draft_max=args.draft_max, draft_p_min=args.draft_p_min,
                              n_gpu_layers_draft=args.n_gpu_layers_draft,
                              mmproj=Path(args.mmproj) if args.mmproj else None,
                              remote_media=args.allow_remote_media, **_cache_args(args)))


def _lora_arg(arg: str) -> tuple[str, Path]:
    """``NAME=PATH`` (or a bare PATH, named after its file)."""
    name, sep, path = arg.partition("=")
    if not sep:
        name, path = Path(arg).stem, arg
    if not name or not path:
        raise SystemExit(f"mullama serve: --lora {arg!r}: expected NAME=PATH")
    return name, Path(path)


def cmd_rpc_server(args: argparse.Namespace) -> int:
    from . import rpc
    if not rpc.is_loopback(args.host):
        print(f"mullama rpc-server: WARNING: listening on {args.host}, not on loopback. The RPC protocol has no "
              f"authentication and no encryption: anyone who can reach port {args.port} can run code on this "
              f"host's devices and read what they hold. Use it only on a private network, or over an SSH tunnel "
              f"or WireGuard.", file=sys.stderr, flush=True)
    devices = [d for part in args.device for d in part.replace("/", ",").split(",") if d] if args.device else []
    rpc.serve(args.host, args.port, n_threads=args.threads, devices=devices, cache_dir=args.cache_dir)
    return 1  # serve() returns only by raising


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mullama", description="Local LLM inference over llama.cpp.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--n-gpu-layers", "-ngl", type=int, default=0, help="layers on the GPU (-1 = all)")
        sp.add_argument("--ctx", type=int, default=0, help="context size (0 = model default)")
        sp.add_argument("--threads", "-t", type=int, default=0, help="CPU threads (0 = all usable)")
        cache_options(sp)

    def cache_options(sp: argparse.ArgumentParser) -> None:
        from .kv_cache import KV_TYPES
        sp.add_argument("--cache-type-k", "-ctk", choices=list(KV_TYPES), default="f16", help="KV cache type of keys")
        sp.add_argument("--cache-type-v", "-ctv", choices=list(KV_TYPES), default="f16",
                        help="KV cache type of values (quantized ones need flash attention)")
        sp.add_argument("--flash-attn", "-fa", choices=["auto", "on", "off"], default="auto")

    def draft_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--draft-model", "-md", metavar="PATH",
                        help="speculative decoding with a smaller model of the same vocabulary")
        sp.add_argument("--lookup", type=int, default=0, metavar="N",
                        help="speculative decoding by prompt lookup: drafts follow the last earlier occurrence of "
                             "the text's final N tokens (try 3)")
        sp.add_argument("--draft-max", type=int, metavar="N",
                        help="most tokens drafted at a time (default 16 with --draft-model, 10 with --lookup)")
        sp.add_argument("--draft-p-min", type=float, default=0.75,
                        help="the draft model drafts while its best token is at least this likely (default 0.75)")
        sp.add_argument("--n-gpu-layers-draft", "-ngld", type=int, metavar="N",
                        help="the draft model's layers on the GPU (default: as --n-gpu-layers)")

    def sampling(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--preset", choices=sorted(PRESETS), default="default")
        sp.add_argument("--temperature", "--temp", type=float)
        sp.add_argument("--top-k", type=int)
        sp.add_argument("--top-p", type=float)
        sp.add_argument("--min-p", type=float)
        sp.add_argument("--repeat-penalty", type=float)
        sp.add_argument("--seed", type=int)
        sp.add_argument("--max-tokens", "-n", type=int, default=256)

    run = sub.add_parser("run", help="stream a completion of PROMPT")
    run.add_argument("model", help="GGUF file ('-' for the default SmolLM2-135M-Instruct)")
    run.add_argument("prompt")
    common(run)
    sampling(run)
    draft_options(run)
    run.add_argument("--chat-template", action="store_true", help="wrap PROMPT as a user message")
    run.add_argument("--mmproj", metavar="PATH", help="the model's multimodal projector (GGUF), for --image")
    run.add_argument("--image", action="append", metavar="PATH",
                     help="an image (or, for audio models, a sound) for the prompt: it goes where PROMPT has "
                          "<__media__>, or before PROMPT; repeatable")
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser("chat", help="interactive chat with the model's template (/reset, /quit)")
    chat.add_argument("model", nargs="?", help="GGUF file (default: SmolLM2-135M-Instruct)")
    common(chat)
    sampling(chat)
    draft_options(chat)
    chat.add_argument("--system", default="You are a helpful assistant.")
    chat.set_defaults(func=cmd_chat, preset="precise")

    emb = sub.add_parser("embed", help="print embedding vectors of TEXTs as JSON (or save .npy)")
    emb.add_argument("model")
    emb.add_argument("texts", nargs="+")
    common(emb)
    emb.add_argument("--output", "-o", help="write a (n, n_embd) float32 .npy file instead")
    emb.add_argument("--no-normalize", action="store_true")
    emb.set_defaults(func=cmd_embed)

    info = sub.add_parser("info", help="library, build and devices; with MODEL also its properties and metadata")
    info.add_argument("model", nargs="?")
    info.add_argument("--with-model", action="store_true", help="show the default model too")
    common(info)
    info.set_defaults(func=cmd_info)

    tok = sub.add_parser("tokenize", help="print the token ids of TEXT")
    tok.add_argument("model")
    tok.add_argument("text")
    tok.add_argument("--no-bos", action="store_true")
    tok.add_argument("--special", action="store_true", help="parse special tokens")
    tok.add_argument("--show-pieces", action="store_true")
    tok.set_defaults(func=cmd_tokenize)
    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs: pip install 'mullama[server]')")
    srv.add_argument("model", nargs="?", help="GGUF file (default: SmolLM2-135M-Instruct)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    srv.add_argument("--port", type=int, default=8080)
    srv.add_argument("--parallel", "-np", type=int, default=4, help="sequences decoded together (default 4)")
    srv.add_argument("--n-ctx", "-c", type=int, default=0,
                     help="tokens each sequence may hold (default: the model's, at most 4096)")
    srv.add_argument("--n-gpu-layers", "-ngl", type=int, default=0, help="layers on the GPU (-1 = all)")
    srv.add_argument("--threads", "-t", type=int, default=0, help="CPU threads (0 = all usable)")
    cache_options(srv)
    draft_options(srv)
    srv.add_argument("--embedding-model", help="a second GGUF served on /v1/embeddings (default: the main model)")
    srv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health")
    srv.add_argument("--model-id", help="the model name /v1/models reports (default: the file's name)")
    srv.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                     help="let browser pages from ORIGIN (e.g. http://localhost:3000, or *) call the server; "
                          "repeatable (default: none)")
    srv.add_argument("--lora", action="append", metavar="NAME=PATH",
                     help="a LoRA adapter (GGUF) requests may apply: with \"lora\": {\"NAME\": scale} or "
                          "\"model\": \"NAME\"; repeatable (default: none)")
    srv.add_argument("--state-dir", metavar="DIR",
                     help="keep named prompt caches here: POST /v1/cache/save and /v1/cache/restore (a long system "
                          "prompt evaluated once survives a restart)")
    srv.add_argument("--mmproj", metavar="PATH",
                     help="the model's multimodal projector (GGUF): chat messages may then carry images "
                          "(image_url parts with data: URLs) and, for audio models, input_audio parts")
    srv.add_argument("--allow-remote-media", action="store_true",
                     help="also fetch http(s) image URLs (at most 10 MiB, 10 s each); off by default, since "
                          "the server would fetch any address a client names")
    srv.set_defaults(func=cmd_serve)

    rs = sub.add_parser("rpc-server", help="serve this host's devices to other hosts' models (llama.cpp RPC)",
                        description="Serve this host's devices (GPUs, else the CPU) to models loaded elsewhere with "
                                    "rpc_servers=['host:port']. The protocol is unauthenticated and unencrypted.")
    rs.add_argument("--host", default="127.0.0.1",
                    help="IPv4 address to listen on (default: loopback only; anything else is reachable by others)")
    rs.add_argument("--port", "-p", type=int, default=50052)
    rs.add_argument("--threads", "-t", type=int, default=0, help="CPU threads for a CPU device (0 = all usable)")
    rs.add_argument("--device", "-d", action="append",
                    help="device(s) to serve, e.g. CUDA0 or CUDA0,CUDA1 (default: all GPUs, else the CPU)")
    rs.add_argument("--cache-dir", help="keep large tensors sent by clients here, so a reload sends only hashes")
    rs.set_defaults(func=cmd_rpc_server)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (RuntimeError, ValueError, TypeError, OSError) as e:
        print(f"mullama: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmullama: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
