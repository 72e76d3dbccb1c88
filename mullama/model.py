"""``Model``: a loaded GGUF model, its vocabulary, metadata and chat template."""

from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from . import _backend, _gguf, _lib, _validate
from . import rpc as _rpc
from ._handle import NativeHandle
from .chat_template import Message, normalize_messages, render

if TYPE_CHECKING:
    from .lora import LoraAdapter

PathLike = Union[str, "os.PathLike[str]"]
ProgressCallback = Callable[[float], Optional[bool]]


def _load_mode(use_mmap: bool, use_mlock: bool) -> int:
    if use_mmap and use_mlock:
        return _lib.LLAMA_LOAD_MODE_MMAP_MLOCK
    if use_mmap:
        return _lib.LLAMA_LOAD_MODE_MMAP
    if use_mlock:
        return _lib.LLAMA_LOAD_MODE_MLOCK
    return _lib.LLAMA_LOAD_MODE_NONE


_UNSET = object()  # a token whose piece is not looked up yet

# llama_split_mode by name ("tensor", llama.cpp's experimental fourth mode, is not offered)
SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}


def _split_args(tensor_split: Any, split_mode: Any, main_gpu: Any) -> tuple[list[float] | None, int, int]:
    if not isinstance(split_mode, str):
        raise TypeError(f"split_mode must be a str, not {type(split_mode).__name__}")
    if split_mode not in SPLIT_MODES:
        raise ValueError(f"split_mode must be one of {', '.join(map(repr, SPLIT_MODES))}, not {split_mode!r}")
    main_gpu = _validate.integer("main_gpu", main_gpu, lo=0)
    if tensor_split is None:
        return None, SPLIT_MODES[split_mode], main_gpu
    if isinstance(tensor_split, (str, bytes)) or not isinstance(tensor_split, Sequence):
        raise TypeError(f"tensor_split must be a list of numbers, not {type(tensor_split).__name__}")
    ts = [_validate.number(f"tensor_split[{i}]", v, lo=0.0) for i, v in enumerate(tensor_split)]
    if not ts or sum(ts) <= 0:
        raise ValueError(f"tensor_split must have at least one positive entry, got {list(tensor_split)!r}")
    return ts, SPLIT_MODES[split_mode], main_gpu


def _placement(L: _lib._Lib, rpc_servers: list[str]) -> tuple[list[int] | None, list[int]]:
    """The devices a model is placed on: the RPC servers' first (as llama.cpp orders them), then local GPUs.

    Returns (what to pass as ``llama_model_params.devices`` (None: llama.cpp's
    own choice), the devices the model will use).  Once any server is
    registered in this process the list is always explicit, so that a model
    loaded without ``rpc_servers`` stays local.
    """
    remote = _rpc.register(rpc_servers) if rpc_servers else []
    devices = remote + _rpc.local_offload_devices()
    explicit = bool(rpc_servers) or bool(L.has_rpc and _rpc.registered())
    return (devices if explicit else None), devices


def builtin_chat_templates() -> list[str]:
    """Names of the chat templates built into llama.cpp (usable as ``template=``)."""
    L = _backend.lib()
    n = L.llama_chat_builtin_templates(None, 0)
    arr = (ctypes.c_char_p * n)()
    L.llama_chat_builtin_templates(arr, n)
    return sorted(s.decode() for s in arr if s)


class Model(NativeHandle):
    """A GGUF model loaded by llama.cpp.  Create it with :meth:`Model.load`.

    A Model may be shared by many threads; each thread should use its own
    :class:`~mullama.Context`.  ``close()`` (or ``with``) frees it at once;
    Contexts still using it keep the native model alive until they close.
    """

    _path: Path
    _vocab: int
    _n_vocab: int
    _piece_table: list[object]
    _rpc_servers: tuple[str, ...] = ()
    _output_on_device: bool = False  # the logits are made on a GPU or RPC device

    def __init__(self) -> None:  # use Model.load()
        raise TypeError("use Model.load(path, ...) to create a Model")

    @classmethod
    def load(
        cls,
        path: PathLike,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        use_mlock: bool = False,
        vocab_only: bool = False,
        progress_callback: ProgressCallback | None = None,
        *,
        rpc_servers: Sequence[str] | None = None,
        tensor_split: Sequence[float] | None = None,
        split_mode: str = "layer",
        main_gpu: int = 0,
    ) -> Model:
        """Load a GGUF model.

        ``n_gpu_layers``: layers to offload to the GPU (0 = CPU only, -1 = all).
        ``progress_callback(fraction)`` is called during loading; returning
        ``False`` cancels the load (RuntimeError).  Raises RuntimeError when
        the file is missing, unreadable or not a valid GGUF model.

        ``rpc_servers``: ``["host:port", ...]`` of ``mullama rpc-server``
        processes; their devices come first, then this host's GPUs, and the
        offloaded layers are spread over all of them.  ``tensor_split``: the
        share of each of those devices, in that order (default: by free
        memory); ``split_mode``: ``"layer"`` (whole layers per device),
        ``"row"`` (rows of each matrix, CUDA only) or ``"none"`` (everything
        on device ``main_gpu``).  An unreachable server raises
        :class:`mullama.rpc.RPCError` (a RuntimeError) naming it.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        n_gpu_layers = _validate.integer("n_gpu_layers", n_gpu_layers, lo=-1)
        use_mmap = _validate.boolean("use_mmap", use_mmap)
        use_mlock = _validate.boolean("use_mlock", use_mlock)
        vocab_only = _validate.boolean("vocab_only", vocab_only)
        if progress_callback is not None and not callable(progress_callback):
            raise TypeError("progress_callback must be callable")
        rpc_eps = _rpc.parse_endpoints(rpc_servers) if rpc_servers is not None else []
        ts, split, main_gpu = _split_args(tensor_split, split_mode, main_gpu)
        fspath = _gguf.check_file(path, "model")
        p = Path(fspath)

        L = _backend.lib()
        explicit, devices = _placement(L, rpc_eps)
        names = [(L.ggml_backend_dev_name(d) or b"?").decode() for d in devices]
        if ts is not None and len(ts) > max(len(devices), 1):
            raise ValueError(f"tensor_split has {len(ts)} entries but the model is placed on {len(devices)} "
                             f"device(s){': ' + ', '.join(names) if names else ''}")
        if devices and main_gpu >= len(devices):
            raise ValueError(f"main_gpu={main_gpu} is out of range: the model is placed on {len(devices)} "
                             f"device(s) ({', '.join(names)}), numbered from 0")
        if not devices and main_gpu != 0:
            raise ValueError(f"main_gpu={main_gpu} given, but there is no GPU or RPC device to choose from")
        if n_gpu_layers != 0 and not devices:
            warnings.warn(
                f"n_gpu_layers={n_gpu_layers} ignored: no GPU offload (the loaded library, {L.path.name}, "
                f"{L.build_info.get('backend', 'unknown')} build, sees no GPU, and no rpc_servers were given); "
                f"running on the CPU",
                RuntimeWarning, stacklevel=2,
            )
        params = L.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.split_mode = split
        params.main_gpu = main_gpu
        c_devices = _rpc.device_array(explicit) if explicit is not None else None
        if c_devices is not None:
            params.devices = ctypes.cast(c_devices, ctypes.POINTER(ctypes.c_void_p))
        c_split = None
        if ts is not None:
            c_split = (ctypes.c_float * max(int(L.llama_max_devices()), len(ts)))(*ts)
            params.tensor_split = ctypes.cast(c_split, ctypes.POINTER(ctypes.c_float))
        params.load_mode = _load_mode(use_mmap, use_mlock)
        params.vocab_only = vocab_only
        callback_error: list[BaseException] = []
        if progress_callback is not None:
            def _progress(fraction: float, _user: Any) -> bool:
                try:
                    return progress_callback(fraction) is not False
                except BaseException as e:  # noqa: BLE001 - re-raised after the load
                    callback_error.append(e)
                    return False
            c_progress = _lib.llama_progress_callback(_progress)
            params.progress_callback = c_progress
        _lib.take_errors()
        ptr = L.llama_model_load_from_file(fspath.encode("utf-8"), params)
        if callback_error:
            if ptr:
                L.llama_model_free(ptr)
            raise callback_error[0]
        if not ptr:
            why = _lib.take_errors() or "llama.cpp could not load it (enable logging for 'mullama' for details)"
            if progress_callback is not None and "cancel" in why.lower():
                why = "loading was cancelled by progress_callback"
            raise RuntimeError(f"Failed to load model: {fspath}: {why}")
        del c_devices, c_split  # read during the load only
        self = object.__new__(cls)
        self._attach(ptr, _rpc.guarded_free(L.llama_model_free, rpc_eps))
        self._rpc_servers = tuple(rpc_eps)
        self._path = p
        self._vocab = L.llama_model_get_vocab(ptr)
        self._n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self._piece_table = [_UNSET] * self._n_vocab
        # llama.cpp puts the output layer on a device once every repeating layer
        # is there too (n_gpu_layers > n_layer, or -1): then the logits are
        # made on it, and sampling there saves copying them to the host.
        n_layer = int(L.llama_model_n_layer(ptr))
        self._output_on_device = bool(devices) and not vocab_only and (n_gpu_layers < 0 or n_gpu_layers > n_layer)
        return self

    # -- RPC servers ------------------------------------------------------------

    @property
    def rpc_servers(self) -> tuple[str, ...]:
        """The RPC endpoints this model was placed on (empty for a local model)."""
        return self._rpc_servers

    def _check_servers(self) -> None:
        """Raise RPCError when a server of this model is gone, before ggml would abort on it."""
        for ep in self._rpc_servers:
            try:
                _rpc.check_server(ep)
            except _rpc.RPCError as e:
                raise _rpc.RPCError(f"{e}; this model has layers there and cannot run until it is back "
                                    f"(a restarted server has lost them: load the model again)") from None

    def _free_guard(self, free: Callable[[int], None]) -> Callable[[int], None]:
        """``free`` for an object holding buffers on this model's servers (a context's KV cache)."""
        return _rpc.guarded_free(free, self._rpc_servers)  # type: ignore[no-any-return]

    # -- properties -----------------------------------------------------------

    @property
    def path(self) -> Path:
        """The file this model was loaded from."""
        return self._path

    @property
    def n_ctx_train(self) -> int:
        """Context length the model was trained with."""
        return int(_backend.lib().llama_model_n_ctx_train(self.ptr()))

    @property
    def n_embd(self) -> int:
        """Embedding dimension."""
        return int(_backend.lib().llama_model_n_embd(self.ptr()))

    @property
    def n_vocab(self) -> int:
        """Number of tokens in the vocabulary."""
        self.ptr()
        return self._n_vocab

    @property
    def n_layer(self) -> int:
        """Number of layers."""
        return int(_backend.lib().llama_model_n_layer(self.ptr()))

    @property
    def n_head(self) -> int:
        """Number of attention heads."""
        return int(_backend.lib().llama_model_n_head(self.ptr()))

    @property
    def token_bos(self) -> int:
        """Beginning-of-sequence token id (-1 if the model has none)."""
        self.ptr()
        return int(_backend.lib().llama_vocab_bos(self._vocab))

    @property
    def token_eos(self) -> int:
        """End-of-sequence token id (-1 if the model has none)."""
        self.ptr()
        return int(_backend.lib().llama_vocab_eos(self._vocab))

    @property
    def size(self) -> int:
        """Total size of the model's tensors in bytes."""
        return int(_backend.lib().llama_model_size(self.ptr()))

    @property
    def n_params(self) -> int:
        """Number of parameters."""
        return int(_backend.lib().llama_model_n_params(self.ptr()))

    @property
    def description(self) -> str:
        """llama.cpp's one-line description, e.g. 'llama ?B Q4_1'."""
        ptr = self.ptr()
        buf = ctypes.create_string_buffer(256)
        n = _backend.lib().llama_model_desc(ptr, buf, len(buf))
        return buf.raw[:max(0, min(n, len(buf) - 1))].decode("utf-8", "replace")

    @property
    def architecture(self) -> str | None:
        """Architecture name from the metadata (e.g. 'llama')."""
        return self.meta("general.architecture")

    @property
    def name(self) -> str | None:
        """Model name from the metadata, if any."""
        return self.meta("general.name")

    @property
    def add_bos(self) -> bool:
        """Whether the vocabulary asks for a BOS token at the start of a prompt."""
        self.ptr()
        return bool(_backend.lib().llama_vocab_get_add_bos(self._vocab))

    # -- metadata ----------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """One metadata value as a string, or None if the key is absent."""
        _validate.string("key", key)
        ptr = self.ptr()
        L = _backend.lib()
        k = key.encode("utf-8")
        n = L.llama_model_meta_val_str(ptr, k, None, 0)
        if n < 0:
            return None
        buf = ctypes.create_string_buffer(n + 1)
        L.llama_model_meta_val_str(ptr, k, buf, n + 1)
        return buf.raw[:n].decode("utf-8", "replace")

    def metadata(self) -> dict[str, str]:
        """All metadata as strings (arrays are summarised by llama.cpp)."""
        ptr = self.ptr()
        L = _backend.lib()
        out: dict[str, str] = {}
        for i in range(L.llama_model_meta_count(ptr)):
            kn = L.llama_model_meta_key_by_index(ptr, i, None, 0)
            vn = L.llama_model_meta_val_str_by_index(ptr, i, None, 0)
            if kn < 0 or vn < 0:
                continue
            kb = ctypes.create_string_buffer(kn + 1)
            vb = ctypes.create_string_buffer(vn + 1)
            L.llama_model_meta_key_by_index(ptr, i, kb, kn + 1)
            L.llama_model_meta_val_str_by_index(ptr, i, vb, vn + 1)
            out[kb.raw[:kn].decode("utf-8", "replace")] = vb.raw[:vn].decode("utf-8", "replace")
        return out

    # -- tokenizer -------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text -> token ids.

        ``add_bos`` adds the model's start-of-sequence tokens (BOS, and those
        the vocabulary asks for) when it has them; ``special`` parses special
        tokens such as ``<|im_start|>`` in the text.
        """
        _validate.string("text", text)
        _validate.boolean("add_bos", add_bos)
        _validate.boolean("special", special)
        self.ptr()
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not valid Unicode at position {e.start}: lone surrogate "
                             f"{text[e.start]!r} cannot be encoded as UTF-8") from None
        return self._tokenize_bytes(raw, add_bos, special)

    def _tokenize_bytes(self, raw: bytes, add_bos: bool, special: bool) -> list[int]:
        L = _backend.lib()
        if len(raw) > 0x7FFFFFF0:
            raise ValueError(f"text of {len(raw)} bytes is too long to tokenize")
        cap = len(raw) + 8
        buf = (_lib.llama_token * cap)()
        n = L.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (_lib.llama_token * cap)()
            n = L.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_bos, special)
        if n < 0:
            raise RuntimeError(f"tokenization failed ({n})")
        return buf[:n]

    def detokenize(self, tokens: Sequence[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        """Token ids -> text.  Ids outside the vocabulary raise ValueError.

        ``remove_special`` drops the BOS/EOS the tokenizer would add;
        ``unparse_special`` renders special tokens (e.g. ``<|im_end|>``) as text.
        """
        _validate.boolean("remove_special", remove_special)
        _validate.boolean("unparse_special", unparse_special)
        self.ptr()
        ids = _validate.token_list("tokens", tokens, self._n_vocab)
        return self._detokenize_bytes(ids, remove_special, unparse_special).decode("utf-8", "replace")

    def _detokenize_bytes(self, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        if not ids:
            return b""
        L = _backend.lib()
        arr = (_lib.llama_token * len(ids))(*ids)
        cap = len(ids) * 8 + 16
        buf = ctypes.create_string_buffer(cap)
        n = L.llama_detokenize(self._vocab, arr, len(ids), buf, cap, remove_special, unparse_special)
        if n < 0:
            cap = -n
            buf = ctypes.create_string_buffer(cap)
            n = L.llama_detokenize(self._vocab, arr, len(ids), buf, cap, remove_special, unparse_special)
        if n < 0:
            raise RuntimeError(f"detokenization failed ({n})")
        return buf.raw[:n]

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character)."""
        _validate.integer("token", token, 0, self.n_vocab - 1)
        return self._piece(token, special)

    def _piece(self, token: int, special: bool) -> bytes:
        L = _backend.lib()
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:  # longer than 64 bytes: llama.cpp says how long
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def _piece_or_eog(self, token: int) -> bytes | None:
        """The token loop's lookup: the bytes of ``token``, or None for an end-of-generation token, cached."""
        table = self._piece_table
        piece = table[token]
        if piece is _UNSET:
            piece = table[token] = None if _backend.lib().llama_vocab_is_eog(self._vocab, token) \
                else self._piece(token, False)
        return piece  # type: ignore[return-value]

    def load_lora(self, path: str | os.PathLike[str]) -> LoraAdapter:
        """Load a LoRA adapter for this model (a GGUF from llama.cpp's ``convert_lora_to_gguf.py``).

        One adapter serves any number of contexts (:meth:`Context.set_loras`,
        ``Engine.submit(..., loras=...)``).  An adapter for another
        architecture or base model raises RuntimeError naming what does
        not match.  It is freed by ``close()``, or with this model.
        """
        from .lora import LoraAdapter
        return LoraAdapter(self, path)

    def token_is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, <|im_end|>, ...)."""
        self.ptr()
        t = _validate.integer("token", token, 0, self._n_vocab - 1)
        return bool(_backend.lib().llama_vocab_is_eog(self._vocab, t))

    # -- chat templates ----------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The model's own Jinja chat template (``tokenizer.chat_template``), if any."""
        ptr = self.ptr()
        t = _backend.lib().llama_model_chat_template(ptr, None)
        return t.decode("utf-8") if t else None

    def _special_tokens(self) -> dict[str, str]:
        L = _backend.lib()
        out: dict[str, str] = {}
        unk = self.meta("tokenizer.ggml.unknown_token_id")  # the C API has no getter for it
        for key, tok in (("bos_token", L.llama_vocab_bos(self._vocab)), ("eos_token", L.llama_vocab_eos(self._vocab)),
                         ("pad_token", L.llama_vocab_pad(self._vocab)),
                         ("unk_token", int(unk) if unk and unk.lstrip("-").isdigit() else -1)):
            if 0 <= tok < self._n_vocab:
                text = L.llama_vocab_get_text(self._vocab, tok)
                if text is not None:
                    out[key] = text.decode("utf-8", "replace")
        return out

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                            template: str | None = None, *, tools: Sequence[Any] | None = None) -> str:
        """Format a conversation with the model's own chat template.

        ``messages`` is a list of ``(role, content)`` tuples (or dicts with
        ``role`` and ``content``).  The model's Jinja template is rendered as
        Hugging Face transformers renders it.  ``template`` overrides it: the
        name of one of llama.cpp's built-in templates (see
        :func:`mullama.builtin_chat_templates`) or Jinja source.  ``tools``
        (OpenAI-style tool definitions) reach a Jinja template as ``tools``,
        as transformers passes them.
        """
        _validate.boolean("add_generation_prompt", add_generation_prompt)
        if tools is not None and (isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence)):
            raise TypeError(f"tools must be a list of tool definitions, not {type(tools).__name__}")
        if template is not None:
            _validate.string("template", template)
        self.ptr()
        msgs = normalize_messages(messages)
        source = template if template is not None else self.chat_template
        if source is None:
            raise RuntimeError(
                f"model {self.name or self._path.name} has no chat template; pass template= with the name of a "
                f"built-in template ({', '.join(builtin_chat_templates()[:6])}, ...) or Jinja source"
            )
        if template is not None and "{" not in template:
            return self._apply_builtin_template(template, msgs, add_generation_prompt)
        return render(source, msgs, add_generation_prompt, self._special_tokens(), tools)

    def _apply_builtin_template(self, name: str, msgs: list[dict[str, Any]], add_ass: bool) -> str:
        if name not in builtin_chat_templates():
            raise ValueError(f"unknown built-in chat template {name!r}; known: {', '.join(builtin_chat_templates())}")
        L = _backend.lib()
        encoded = [(m["role"].encode("utf-8"), m["content"].encode("utf-8")) for m in msgs]
        arr = (_lib.llama_chat_message * len(encoded))(*[_lib.llama_chat_message(r, c) for r, c in encoded])
        cap = sum(len(r) + len(c) for r, c in encoded) * 2 + 256
        buf = ctypes.create_string_buffer(cap)
        n = L.llama_chat_apply_template(name.encode(), arr, len(encoded), add_ass, buf, cap)
        if n > cap:
            buf = ctypes.create_string_buffer(n)
            n = L.llama_chat_apply_template(name.encode(), arr, len(encoded), add_ass, buf, n)
        if n < 0:
            raise ValueError(f"llama.cpp could not apply chat template {name!r}")
        return buf.raw[:n].decode("utf-8", "replace")

    def __repr__(self) -> str:
        if self.closed:
            return "Model(closed)"
        return (f"Model(name={self.name!r}, arch={self.architecture!r}, params={self.n_params}, "
                f"size={self.size // 1_000_000}MB)")
