"""``mullama serve``: an OpenAI-compatible HTTP server over the batched :class:`~mullama.engine.Engine`.

Needs the ``server`` extra (``pip install mullama[server]``: Starlette and uvicorn).
Routes: ``/v1/chat/completions``, ``/v1/completions`` (plain, or server-sent
events with ``stream: true``), ``/v1/embeddings``, ``/v1/models``, ``/health``
and ``/metrics`` (Prometheus).  SIGTERM or Ctrl-C stops accepting requests,
lets those under way finish, and exits.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass
class ServeOptions:
    model: Path
    host: str = "127.0.0.1"
    port: int = 8080
    parallel: int = 4
    n_ctx: int = 0
    n_gpu_layers: int = 0
    n_threads: int = 0
    embedding_model: Path | None = None
    api_key: str | None = None
    model_id: str | None = None
    cors_origins: tuple[str, ...] = ()
    loras: tuple[tuple[str, Path], ...] = ()  # (name, GGUF adapter)
    state_dir: Path | None = None  # named saved caches (/v1/cache/save, /v1/cache/restore)
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool | str = "auto"
    draft_model: Path | None = None  # speculative decoding with this model (same vocabulary)
    lookup: int = 0  # or by prompt lookup with n-grams of this size
    draft_max: int | None = None
    draft_p_min: float = 0.75
    n_gpu_layers_draft: int | None = None  # (default: n_gpu_layers)
    mmproj: Path | None = None  # a multimodal projector: images (and audio) in chat messages
    remote_media: bool = False  # fetch http(s) image URLs (off: only data: URLs)


def build(opts: ServeOptions) -> tuple[Any, Any]:
    """Load the models and make the app; returns (app, engine)."""
    from ..embedding import EmbeddingGenerator
    from ..engine import Engine
    from ..model import Model
    from .app import create_app

    model = Model.load(opts.model, n_gpu_layers=opts.n_gpu_layers)
    names = [name for name, _ in opts.loras]
    if len(set(names)) < len(names):
        raise ValueError(f"--lora names must differ: {', '.join(names)}")
    adapters = {name: model.load_lora(path) for name, path in opts.loras}
    state_dir = Path(opts.state_dir) if opts.state_dir is not None else None
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    from ..speculative import from_options
    ngld = opts.n_gpu_layers if opts.n_gpu_layers_draft is None else opts.n_gpu_layers_draft
    draft = from_options(None if opts.draft_model is None else str(opts.draft_model), opts.lookup, opts.draft_max,
                         opts.draft_p_min, ngld)
    projector = None
    if opts.mmproj is not None:
        from ..multimodal import Projector
        # a warm-up encode at start, so that the first image request does not pay for it
        projector = Projector.load(opts.mmproj, model, n_threads=opts.n_threads or None, warmup=True)
    engine = Engine(model, parallel=opts.parallel, n_ctx=opts.n_ctx, n_threads=opts.n_threads, type_k=opts.type_k,
                    type_v=opts.type_v, flash_attn=opts.flash_attn, draft=draft, projector=projector)
    if model._output_on_device:
        warm_up(engine, model.n_vocab)
    emb_model = Model.load(opts.embedding_model, n_gpu_layers=opts.n_gpu_layers) if opts.embedding_model else model
    embedder = EmbeddingGenerator(emb_model, n_threads=opts.n_threads)
    model_id = opts.model_id or Path(opts.model).stem
    emb_id = Path(opts.embedding_model).stem if opts.embedding_model else None
    if model_id in adapters:
        raise ValueError(f"--lora name {model_id!r} is the model's own name")
    app = create_app(engine, embedder, model_id, emb_id, opts.api_key, cors_origins=opts.cors_origins,
                     system_fingerprint=fingerprint(Path(opts.model)), loras=adapters, state_dir=state_dir,
                     projector=projector, remote_media=opts.remote_media)
    return app, engine


def warm_up(engine: Engine, n_vocab: int) -> None:
    """Pay a GPU's one-time costs before the server takes requests.

    CUDA loads each kernel the first time it runs (lazy module loading), and
    llama.cpp reserves graphs again when a device sampler chain is attached.
    Left to the first requests, this made one of a lone client's first
    answers 10-20 ms slower to start.  A short greedy and a short
    default-sampled generation pay for the sampling side; then one prompt of
    each width that the quantized matrix products (tiles of 8 to 128 columns)
    and flash attention pick a kernel for pays for the prompt side.  Each
    warm-up prompt starts with a different token, so that none reuses the
    cache of another and every width is really decoded.
    """
    if engine.n_ctx < 5:  # no room for a prompt and its answer
        return
    from .protocol import Generation
    greedy = Generation({"temperature": 0}).params
    for params in (greedy, Generation({}).params):
        engine.generate([1 % n_vocab, 2 % n_vocab], 2, params)
    # a prompt must leave room for the token it samples in a sequence's n_ctx
    for i, width in enumerate(range(8, min(128, engine.n_ctx - 2) + 1, 8)):
        first = 1000 + 97 * i
        engine.generate([(first + 13 * j) % n_vocab for j in range(width)], 1, greedy)


def fingerprint(model: Path) -> str:
    """OpenAI's ``system_fingerprint``: what answers depend on, the model file and llama.cpp's commit.

    The file is identified by its size and its first and last MiB (the GGUF
    header and metadata, and the last tensor data), not a hash of every byte,
    so that a server of a large model starts at once.
    """
    import hashlib

    from .. import _backend

    h = hashlib.sha256()
    size = model.stat().st_size
    h.update(str(size).encode())
    with open(model, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    h.update(str(_backend.lib().build_info.get("llama_cpp_commit", "")).encode())
    return "fp_" + h.hexdigest()[:12]


def serve(opts: ServeOptions) -> int:
    try:
        import uvicorn
    except ImportError:
        print("mullama serve needs the server extra: pip install 'mullama[server]' (starlette, uvicorn)",
              file=sys.stderr)
        return 1
    if not _is_loopback(opts.host) and not opts.api_key:
        print(f"mullama serve: warning: listening on {opts.host} without --api-key: anyone who can reach this "
              f"address can use the model", file=sys.stderr)
    app, engine = build(opts)
    # uvicorn handles SIGTERM and SIGINT: it stops accepting, waits for the
    # requests under way (streams included), then returns; the engine drains last.
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=300)
    server = uvicorn.Server(config)
    print(f"mullama serve: http://{opts.host}:{opts.port}/v1 ({opts.parallel} parallel sequences of "
          f"{engine.n_ctx} tokens)", file=sys.stderr, flush=True)
    # uvicorn raises the signal that stopped it again once it has shut down;
    # with these handlers that returns here instead of killing the process
    # before the engine has drained.
    stopped_by: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        engine.close(drain=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped_by:
        print(f"mullama serve: stopped by {signal.Signals(stopped_by[0]).name}, every request answered",
              file=sys.stderr)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
