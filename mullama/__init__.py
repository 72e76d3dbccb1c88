"""mullama: fast local LLM inference over llama.cpp, from Python.

    from mullama import Model, Context, SamplerParams
    model = Model.load("model.gguf")
    ctx = Context(model, n_ctx=2048)
    print(ctx.generate("Once upon a time", max_tokens=50))
"""

from __future__ import annotations

from ._backend import backend_free, backend_init, devices, max_devices, supports_gpu_offload, system_info, version
from ._lib import LibraryLoadError
from .model import Model, builtin_chat_templates

__version__ = "0.1.0"

__all__ = [
    "LibraryLoadError",
    "Model",
    "backend_free",
    "backend_init",
    "builtin_chat_templates",
    "devices",
    "max_devices",
    "supports_gpu_offload",
    "system_info",
    "version",
]

from .context import Context, ContextFullError, GenerationCancelled  # noqa: E402
from .sampling import SamplerParams  # noqa: E402
from .completion import Completion, CompletionChunk, TokenLogprob, TopLogprob  # noqa: E402

__all__ += ["Completion", "CompletionChunk", "Context", "ContextFullError", "GenerationCancelled", "SamplerParams",
            "TokenLogprob", "TopLogprob"]

from .embedding import EmbeddingGenerator, cosine_similarity  # noqa: E402

__all__ += ["EmbeddingGenerator", "cosine_similarity"]

from .quantize import quantize  # noqa: E402
from .perplexity import Perplexity, perplexity  # noqa: E402

__all__ += ["Perplexity", "perplexity", "quantize"]

from .grammar import Grammar, GrammarIncompleteError  # noqa: E402

__all__ += ["Grammar", "GrammarIncompleteError"]

from .rpc import RPCError  # noqa: E402
from .lora import LoraAdapter  # noqa: E402
from .speculative import DraftModel, PromptLookup  # noqa: E402

__all__ += ["DraftModel", "LoraAdapter", "PromptLookup", "RPCError"]

from .multimodal import Chunk, Media, MediaPrompt, Projector  # noqa: E402

__all__ += ["Chunk", "Media", "MediaPrompt", "Projector"]
