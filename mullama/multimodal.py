"""Images and audio in the prompt, through llama.cpp's multimodal library (libmtmd).

A vision or audio model comes as two GGUF files: the text model, and a
projector (``mmproj``) that turns an image or a sound into embeddings the text
model reads in place of tokens.  :class:`Projector` loads the second for a
loaded :class:`~mullama.Model`; a prompt then carries one marker
(:attr:`Projector.marker`, ``<__media__>``) where each medium goes, and
``media=[...]`` gives them, in order::

    proj = Projector.load("mmproj.gguf", model)
    ctx = Context(model, projector=proj)
    ctx.generate(f"What is in this picture? {proj.marker}", media=["cat.jpg"])

Everything that depends on the model family (resizing, tiling into slices, the
text that frames each slice, how many embeddings an image becomes) is
libmtmd's: :meth:`Projector.tokenize` asks it to split a prompt into chunks of
text tokens and of media, and a context evaluates a media chunk with libmtmd's
helper (encode, then decode the embeddings into the sequence).  What is here is
what a binding owes its callers: media from paths, bytes or arrays, checked
before any decoder sees them (a header that claims 20000 x 20000 pixels is
refused, not allocated), clear errors, and an identity per chunk so that a
context's cache can keep an image across turns (:attr:`MediaPrompt.cache_ids`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Sequence, Union

import numpy as np

from . import _backend, _gguf, _lib, _validate
from ._cpus import usable_cpus
from ._handle import NativeHandle

if TYPE_CHECKING:
    from .model import Model

# A sound shorter than a tenth of a second is refused: libmtmd asserts (aborting the process) on sounds
# shorter than its preprocessing window, which depends on the model (2 samples for Whisper-style
# encoders, 2 hops of 160 samples for conformer ones).
MIN_AUDIO_SECONDS: Final = 0.1
# Images larger than this (width x height) are refused before they are decoded:
# decoding allocates 3 bytes per pixel whatever the file's size.
DEFAULT_MAX_IMAGE_PIXELS: Final = 1 << 26  # 67 million pixels, e.g. 8192 x 8192
# Encoded media larger than this are refused before they are read.
DEFAULT_MAX_MEDIA_BYTES: Final = 1 << 28  # 256 MiB

# What is accepted: the formats whose size the header gives away (so that a huge image is refused
# before stb_image allocates it), of those libmtmd's helper decodes (stb_image, miniaudio).
IMAGE_FORMATS: Final = ("PNG", "JPEG", "BMP", "GIF")
AUDIO_FORMATS: Final = ("WAV", "MP3", "FLAC")

KIND_TEXT: Final = "text"
KIND_IMAGE: Final = "image"
KIND_AUDIO: Final = "audio"
_KINDS: Final = {_lib.MTMD_INPUT_CHUNK_TYPE_TEXT: KIND_TEXT, _lib.MTMD_INPUT_CHUNK_TYPE_IMAGE: KIND_IMAGE,
                 _lib.MTMD_INPUT_CHUNK_TYPE_AUDIO: KIND_AUDIO}


class Media(NativeHandle):
    """One decoded image or sound (a libmtmd bitmap), ready to go into a prompt.

    Made by :meth:`Projector.media`; a prompt may use it any number of times.
    ``id`` is a SHA-256 of what it was made from (the file's bytes, or the
    array's shape and data): a context's cache recognises the same medium by it.
    """

    kind: str
    width: int  # pixels (an image) or samples (a sound)
    height: int  # pixels (an image), 1 for a sound
    id: str

    def __init__(self, pointer: int, projector: Projector) -> None:
        M = projector._mtmd
        self._attach(pointer, M.mtmd_bitmap_free)
        self.projector = projector
        self.kind = KIND_AUDIO if M.mtmd_bitmap_is_audio(pointer) else KIND_IMAGE
        self.width = int(M.mtmd_bitmap_get_nx(pointer))
        self.height = int(M.mtmd_bitmap_get_ny(pointer))
        self.id = (M.mtmd_bitmap_get_id(pointer) or b"").decode("ascii", "replace")

    @property
    def n_bytes(self) -> int:
        """The decoded size: 3 bytes per pixel, or 4 per audio sample."""
        return int(self.projector._mtmd.mtmd_bitmap_get_n_bytes(self.ptr()))

    def __repr__(self) -> str:
        if self.closed:
            return "<Media closed>"
        size = f"{self.width}x{self.height}" if self.kind == KIND_IMAGE else f"{self.width} samples"
        return f"<Media {self.kind} {size} id={self.id[:12]}>"


MediaSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray, Media]


@dataclass(frozen=True)
class Chunk:
    """One piece of a prompt as libmtmd split it: text tokens, or one image (slice) or sound."""

    kind: str  # "text", "image" or "audio"
    n_tokens: int  # tokens, or embeddings the medium becomes
    n_pos: int  # positions it takes in the sequence (differs from n_tokens under M-RoPE)
    tokens: tuple[int, ...]  # the token ids of a text chunk; empty for media
    id: str | None  # the medium's id (Media.id) for a media chunk


class MediaPrompt(NativeHandle):
    """A prompt with media, split by libmtmd into :attr:`chunks` (made by :meth:`Projector.tokenize`)."""

    def __init__(self, pointer: int, projector: Projector, media: list[Media]) -> None:
        M = projector._mtmd
        self._attach(pointer, M.mtmd_input_chunks_free)
        self.projector = projector
        self._media = media  # the bitmaps stay alive while their chunks may be evaluated
        chunks: list[Chunk] = []
        self._pointers: list[int] = []
        for i in range(int(M.mtmd_input_chunks_size(pointer))):
            c = M.mtmd_input_chunks_get(pointer, i)
            kind = _KINDS.get(int(M.mtmd_input_chunk_get_type(c)), "unknown")
            n_tokens = int(M.mtmd_input_chunk_get_n_tokens(c))
            if kind == KIND_TEXT:
                n = ctypes.c_size_t()
                ids = M.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                tokens = tuple(int(ids[j]) for j in range(n.value))
                if any(t < 0 for t in tokens):
                    self.close()
                    raise ValueError("the text model's vocabulary lacks special tokens that this projector's image "
                                     "template needs (libmtmd gave none for them): the projector is not for this "
                                     "model")
                chunks.append(Chunk(kind, len(tokens), len(tokens), tokens, None))
            else:
                raw = M.mtmd_input_chunk_get_id(c)
                chunks.append(Chunk(kind, n_tokens, int(M.mtmd_input_chunk_get_n_pos(c)), (),
                                    raw.decode("ascii", "replace") if raw else None))
            self._pointers.append(int(c))
        self.chunks: tuple[Chunk, ...] = tuple(chunks)
        self.cache_ids = _cache_ids(self.chunks)

    @property
    def n_tokens(self) -> int:
        """Text tokens and media embeddings, all chunks together."""
        return sum(c.n_tokens for c in self.chunks)

    @property
    def n_pos(self) -> int:
        """Positions the prompt takes in a sequence (its length in a context's cache)."""
        return sum(c.n_pos for c in self.chunks)

    @property
    def text_tokens(self) -> list[int]:
        """The text tokens alone, in order (what a repetition penalty sees of the prompt)."""
        return [t for c in self.chunks for t in c.tokens]

    def segments(self) -> list[tuple[int, Chunk, int]]:
        """(first position, chunk, native chunk pointer) for every chunk, in order."""
        out: list[tuple[int, Chunk, int]] = []
        pos = 0
        for c, p in zip(self.chunks, self._pointers):
            out.append((pos, c, p))
            pos += c.n_pos
        return out

    def __repr__(self) -> str:
        kinds = ", ".join(f"{c.kind}:{c.n_tokens}" for c in self.chunks)
        return f"<MediaPrompt {len(self.chunks)} chunks [{kinds}], {self.n_pos} positions>"


def _cache_ids(chunks: Sequence[Chunk]) -> list[int]:
    """One id per position: the text token ids, and for each position of a media chunk a
    negative id derived from the medium, the chunk's ordinal among that medium's chunks and its
    size, so that two prompts agree on a prefix exactly where they hold the same media there."""
    out: list[int] = []
    seen: dict[str | None, int] = {}
    for c in chunks:
        if c.kind == KIND_TEXT:
            out.extend(c.tokens)
            continue
        k = seen.get(c.id, 0)
        seen[c.id] = k + 1
        digest = hashlib.sha256(f"{c.kind}:{c.id}:{k}:{c.n_tokens}:{c.n_pos}".encode()).digest()
        out.extend([-1 - (int.from_bytes(digest[:4], "little") & 0x3FFFFFFF)] * c.n_pos)
    return out


class Projector(NativeHandle):
    """A multimodal projector (``mmproj`` GGUF) for one loaded text model.

    Use :meth:`load`.  One projector may serve any number of contexts and an
    Engine; its encoder runs one medium at a time (a lock), as libmtmd requires.
    """

    _mtmd: Any
    _model: Model
    _path: Path
    _lock: threading.Lock
    _use_gpu: bool
    max_image_pixels: int
    max_media_bytes: int

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Model, *, use_gpu: bool | None = None,
             n_threads: int | None = None, image_min_tokens: int | None = None,
             image_max_tokens: int | None = None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
             max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES, warmup: bool = False) -> Projector:
        """Load the projector at ``path`` for ``model``.

        ``use_gpu``: run the encoder on the GPU (None: where the model's
        output layer is, i.e. on the GPU when the model was loaded with all
        layers there).  ``True`` on a machine or build without a GPU is a
        ValueError, never a quiet CPU run.  ``image_min_tokens`` /
        ``image_max_tokens`` bound the embeddings per image for models with
        dynamic resolution (None: the file's own values).  Images above
        ``max_image_pixels`` and files above ``max_media_bytes`` are refused
        before they are decoded.  A projector made for another text model (its
        embeddings of another width) is a ValueError naming both widths.
        """
        from .model import Model
        if not isinstance(model, Model):
            raise TypeError(f"model must be a mullama.Model, not {type(model).__name__}")
        fspath = _gguf.check_file(path, "projector")
        if use_gpu is not None:
            _validate.boolean("use_gpu", use_gpu)
        n_threads = usable_cpus() if n_threads is None else _validate.integer("n_threads", n_threads, 1, 1024)
        mins = 0 if image_min_tokens is None else _validate.integer("image_min_tokens", image_min_tokens, 1, 1 << 20)
        maxs = 0 if image_max_tokens is None else _validate.integer("image_max_tokens", image_max_tokens, 1, 1 << 20)
        if mins and maxs and mins > maxs:
            raise ValueError(f"image_min_tokens={mins} is above image_max_tokens={maxs}")
        max_image_pixels = _validate.integer("max_image_pixels", max_image_pixels, 1)
        max_media_bytes = _validate.integer("max_media_bytes", max_media_bytes, 1)
        warmup = _validate.boolean("warmup", warmup)
        L = _backend.lib()
        M = L.mtmd()
        gpu = model._output_on_device if use_gpu is None else use_gpu
        if gpu and not _backend.supports_gpu_offload():
            raise ValueError(f"use_gpu=True, but the loaded library ({L.path.name}, "
                             f"{L.build_info.get('backend', 'unknown')} build) sees no GPU")
        params = M.mtmd_context_params_default()
        params.use_gpu = bool(gpu)
        params.print_timings = False
        params.n_threads = n_threads
        params.warmup = warmup
        params.image_min_tokens = mins or params.image_min_tokens
        params.image_max_tokens = maxs or params.image_max_tokens
        _lib.take_errors()
        ptr = M.mtmd_init_from_file(fspath.encode("utf-8"), model.ptr(), params)
        if not ptr:
            why = _lib.take_errors()
            if "n_embd" in why or "mismatch" in why:
                raise ValueError(f"{fspath} is not a projector for this model ({model.path.name}): {why}")
            raise RuntimeError(f"Failed to load projector {fspath}: {why or 'libmtmd refused it'}")
        self = object.__new__(cls)
        self._mtmd = M
        self._attach(ptr, M.mtmd_free, parent=model)
        self._model = model
        self._path = Path(fspath)
        self._lock = threading.Lock()
        self.max_image_pixels = max_image_pixels
        self.max_media_bytes = max_media_bytes
        self._use_gpu = bool(gpu)
        return self

    # -- what it is ------------------------------------------------------------

    @property
    def model(self) -> Model:
        """The text model this projector feeds."""
        return self._model

    @property
    def path(self) -> Path:
        return self._path

    @property
    def use_gpu(self) -> bool:
        return self._use_gpu

    @property
    def supports_vision(self) -> bool:
        return bool(self._mtmd.mtmd_support_vision(self.ptr()))

    @property
    def supports_audio(self) -> bool:
        return bool(self._mtmd.mtmd_support_audio(self.ptr()))

    @property
    def audio_sample_rate(self) -> int | None:
        """The sample rate (Hz) audio arrays must have, or None without audio input."""
        rate = int(self._mtmd.mtmd_get_audio_sample_rate(self.ptr()))
        return rate if rate > 0 else None

    @property
    def uses_mrope(self) -> bool:
        """True when media take fewer positions than embeddings (M-RoPE models: Qwen2-VL and others)."""
        return bool(self._mtmd.mtmd_decode_use_mrope(self.ptr()))

    @property
    def marker(self) -> str:
        """The text that marks where each medium goes in a prompt (``<__media__>``)."""
        return (self._mtmd.mtmd_get_marker(self.ptr()) or b"").decode("utf-8")

    # -- media -------------------------------------------------------------------

    def media(self, source: MediaSource) -> Media:
        """``source`` as a :class:`Media`: a path or the bytes of an image file (PNG, JPEG, BMP,
        GIF...) or a sound file (WAV, MP3, FLAC; audio models only), an ``uint8`` array of shape
        ``(height, width, 3)`` (RGB), or a 1-D ``float32`` array of samples at
        :attr:`audio_sample_rate`.  A Media is returned as is.  Anything that cannot be decoded,
        or is too large, is a ValueError naming what was wrong."""
        self.ptr()
        if isinstance(source, Media):
            if source.projector is not self:
                raise ValueError("this Media was made by another Projector; make it again with this one")
            source.ptr()
            return source
        if isinstance(source, np.ndarray):
            return self._from_array(source)
        if isinstance(source, (bytes, bytearray, memoryview)):
            return self._from_bytes(bytes(source), "the given bytes")
        if isinstance(source, (str, os.PathLike)):
            fspath = os.fspath(source)
            if not isinstance(fspath, str):
                raise TypeError("a media path must be a text path, not bytes")
            return self._from_bytes(self._read(fspath), fspath)
        raise TypeError(f"a medium must be a path, bytes, a NumPy array or a Media, not {type(source).__name__}")

    def _read(self, fspath: str) -> bytes:
        try:
            size = os.stat(fspath).st_size
            if Path(fspath).is_dir():
                raise ValueError(f"{fspath} is a directory, not a media file")
            if size > self.max_media_bytes:
                raise ValueError(f"{fspath} has {size} bytes, above max_media_bytes={self.max_media_bytes}")
            with open(fspath, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ValueError(f"media file not found: {fspath}") from None
        except OSError as e:
            raise ValueError(f"cannot read media file {fspath}: {e.strerror or e}") from None

    def _from_bytes(self, data: bytes, what: str) -> Media:
        if not data:
            raise ValueError(f"{what}: empty, not an image or sound")
        if len(data) > self.max_media_bytes:
            raise ValueError(f"{what}: {len(data)} bytes, above max_media_bytes={self.max_media_bytes}")
        fmt, size = sniff(data)
        if fmt is None:
            raise ValueError(f"{what} is not a {', '.join(IMAGE_FORMATS)} image"
                             + (f" or a {', '.join(AUDIO_FORMATS)} sound" if self.supports_audio else ""))
        if fmt in IMAGE_FORMATS and size is None:
            raise ValueError(f"{what}: its {fmt} header is truncated or corrupt (no image size in it)")
        if fmt == "WEBP":
            raise ValueError(f"{what} is a WebP image, which this build's libmtmd cannot decode (it needs ffmpeg); "
                             f"convert it to PNG or JPEG, or pass the pixels as an array")
        if size is not None:
            w, h = size
            if w <= 0 or h <= 0:
                raise ValueError(f"{what}: its {fmt} header gives a size of {w}x{h} pixels")
            if w * h > self.max_image_pixels:
                raise ValueError(f"{what}: a {w}x{h} {fmt} image ({w * h} pixels) is above "
                                 f"max_image_pixels={self.max_image_pixels}")
        if fmt in AUDIO_FORMATS and not self.supports_audio:
            raise ValueError(f"{what} is {fmt} audio, but this projector takes no audio")
        M = self._mtmd
        _lib.take_errors()
        wrapper = M.mtmd_helper_bitmap_init_from_buf(self.ptr(), data, len(data), False,
                                                      M.mtmd_helper_init_opt_default())
        if not wrapper.bitmap:
            why = _lib.take_errors()
            known = f" ({fmt}, possibly truncated or corrupt)" if fmt else ""
            raise ValueError(f"{what} could not be decoded as an image or sound{known}"
                             f"{': ' + why if why else ''}; images: {', '.join(IMAGE_FORMATS)}"
                             + (f"; audio: {', '.join(AUDIO_FORMATS)}" if self.supports_audio else ""))
        media = Media(int(wrapper.bitmap), self)
        self._check_kind(media, what)
        return media

    def _from_array(self, a: np.ndarray) -> Media:
        M = self._mtmd
        if a.dtype == np.uint8:
            if a.ndim != 3 or a.shape[2] != 3:
                raise ValueError(f"an image array must have shape (height, width, 3), not {a.shape}")
            h, w = int(a.shape[0]), int(a.shape[1])
            if h == 0 or w == 0:
                raise ValueError(f"an image array of shape {a.shape} has no pixels")
            if w * h > self.max_image_pixels:
                raise ValueError(f"a {w}x{h} image ({w * h} pixels) is above max_image_pixels={self.max_image_pixels}")
            data = np.ascontiguousarray(a)
            ptr = M.mtmd_bitmap_init(w, h, data.ctypes.data_as(ctypes.c_void_p))
            shape = f"{h}x{w}x3"
        elif a.dtype == np.float32:
            if a.ndim != 1:
                raise ValueError(f"an audio array must be 1-D float32 samples, not of shape {a.shape}")
            if not self.supports_audio:
                raise ValueError("a float32 array is audio, but this projector takes no audio")
            self._check_samples(a, f"an audio array of {a.shape[0]} samples")
            data = np.ascontiguousarray(a)
            ptr = M.mtmd_bitmap_init_from_audio(int(a.shape[0]), data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            shape = f"{a.shape[0]}"
        else:
            raise TypeError(f"a media array must be uint8 (an RGB image) or float32 (audio samples), not {a.dtype}")
        if not ptr:
            raise RuntimeError(f"libmtmd could not make a bitmap of shape {shape}")
        digest = hashlib.sha256(f"{a.dtype}:{shape}:".encode() + data.tobytes()).hexdigest()
        M.mtmd_bitmap_set_id(ptr, digest.encode())
        media = Media(int(ptr), self)
        self._check_kind(media, f"an array of shape {shape}")
        return media

    def _check_samples(self, samples: np.ndarray, what: str) -> None:
        rate = self.audio_sample_rate or 16000
        least = max(2, int(rate * MIN_AUDIO_SECONDS))
        if samples.shape[0] < least:
            raise ValueError(f"{what} is too short: at least {least} samples ({MIN_AUDIO_SECONDS:g} s at {rate} Hz) "
                             f"are needed")
        if not np.isfinite(samples).all():
            raise ValueError(f"{what} holds NaN or infinite samples")

    def _check_kind(self, media: Media, what: str) -> None:
        if media.kind == KIND_AUDIO and self.supports_audio:
            M = self._mtmd
            p = media.ptr()
            n = int(M.mtmd_bitmap_get_n_bytes(p)) // 4
            data = ctypes.cast(M.mtmd_bitmap_get_data(p), ctypes.POINTER(ctypes.c_float))
            try:  # a decoded file's samples: the same checks as an array's
                self._check_samples(np.ctypeslib.as_array(data, shape=(n,)) if n else np.zeros(0, np.float32), what)
            except ValueError:
                media.close()
                raise
        if media.kind == KIND_IMAGE and not self.supports_vision:
            media.close()
            raise ValueError(f"{what} is an image, but this projector takes audio only")
        if media.kind == KIND_AUDIO and not self.supports_audio:
            media.close()
            raise ValueError(f"{what} is audio, but this projector takes no audio")

    # -- prompts -------------------------------------------------------------------

    def tokenize(self, prompt: str, media: Sequence[MediaSource], *, add_special: bool = True) -> MediaPrompt:
        """Split ``prompt`` (text with one :attr:`marker` per medium) into chunks of text tokens and
        media, preprocessing each medium as the model expects.  ``add_special`` adds the model's BOS
        as ``Model.tokenize(add_bos=True)`` does; special tokens in the text are parsed."""
        if not isinstance(prompt, str):
            raise TypeError(f"a prompt with media must be text, not {type(prompt).__name__}")
        add_special = _validate.boolean("add_special", add_special)
        items = self._media_list(media)
        marker = self.marker
        n_markers = prompt.count(marker)
        if n_markers != len(items):
            raise ValueError(f"the prompt has {n_markers} media marker(s) ({marker!r}) but {len(items)} "
                             f"medi{'um was' if len(items) == 1 else 'a were'} given: put one marker where each goes")
        M = self._mtmd
        raw = prompt.encode("utf-8")
        text = _lib.mtmd_input_text(raw, len(raw), add_special, True)
        bitmaps = (ctypes.c_void_p * max(len(items), 1))(*(m.ptr() for m in items))
        chunks = M.mtmd_input_chunks_init()
        if not chunks:
            raise MemoryError("libmtmd could not allocate a chunk list")
        _lib.take_errors()
        # (no lock: mtmd_tokenize reads the projector only, and may run while another thread encodes,
        # as llama-server's HTTP threads do)
        rc = M.mtmd_tokenize(self.ptr(), chunks, ctypes.byref(text), bitmaps, len(items))
        if rc != 0:
            why = _lib.take_errors()
            M.mtmd_input_chunks_free(chunks)
            raise ValueError(f"libmtmd could not prepare the media for this prompt (status {rc})"
                             f"{': ' + why if why else ''}")
        return MediaPrompt(chunks, self, items)

    def _media_list(self, media: Sequence[MediaSource]) -> list[Media]:
        if isinstance(media, (str, bytes, bytearray, np.ndarray, Media)) or not isinstance(media, Sequence):
            raise TypeError(f"media must be a list of media, not {type(media).__name__}")
        return [self.media(m) for m in media]

    def apply_chat_template(self, messages: Sequence[Any], add_generation_prompt: bool = True,
                            template: str | None = None, *, tools: Sequence[Any] | None = None,
                            ) -> tuple[str, list[MediaSource]]:
        """:meth:`Model.apply_chat_template` for messages whose content may be a list of text and
        media parts (see :func:`split_chat_media`): returns the prompt, with :attr:`marker` where
        each medium goes, and the media in order, ready for ``generate(prompt, media=media)``."""
        messages, media = split_chat_media(messages, self.marker)
        return self._model.apply_chat_template(messages, add_generation_prompt, template, tools=tools), media

    def evaluate(self, lctx: int, chunk: int, n_past: int, seq: int, n_batch: int) -> int:
        """Encode one media chunk and decode its embeddings into sequence ``seq`` of context
        ``lctx`` from position ``n_past``; returns the next position (internal: contexts call it)."""
        new_n_past = ctypes.c_int32(0)
        _lib.take_errors()
        with self._lock:
            rc = self._mtmd.mtmd_helper_eval_chunk_single(self.ptr(), lctx, chunk, n_past, seq, n_batch, False,
                                                          ctypes.byref(new_n_past))
        if rc != 0:
            why = _lib.take_errors()
            raise RuntimeError(f"libmtmd could not evaluate a media chunk (status {rc})"
                               f"{': ' + why if why else ''}")
        return int(new_n_past.value)

    def __repr__(self) -> str:
        if self.closed:
            return "<Projector closed>"
        what = "+".join(k for k, ok in (("vision", self.supports_vision), ("audio", self.supports_audio)) if ok)
        return f"<Projector {self._path.name} ({what}) for {self._model.path.name}>"


# -- image headers -------------------------------------------------------------------
# Only the size is read, to refuse a huge image before a decoder allocates it.


def sniff(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """(format, (width, height) or None) from a file's first bytes; (None, None) when unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return "PNG", (w, h)
        return "PNG", None
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) >= 10:
            w, h = struct.unpack("<HH", data[6:10])
            return "GIF", (w, h)
        return "GIF", None
    if data[:2] == b"BM":
        if len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return "BMP", (abs(w), abs(h))
        return "BMP", None
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG", _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", None
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV", None
    if data[:4] == b"fLaC":
        return "FLAC", None
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "MP3", None
    return None, None


_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF and i + 9 <= n:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def media_prompt(prompt: Any, media: Sequence[MediaSource] | None, projector: Projector | None,
                 drafting: bool) -> MediaPrompt | None:
    """``media=`` for a Context or an Engine: the prompt split into chunks, or None without media.

    Checked here once for both: a projector, a text prompt, no drafter, and text after the last medium
    (libmtmd decodes a medium without outputs: a prompt that ended with one would leave no logits to
    sample from; every chat template's assistant prefix is text)."""
    if media is None:
        return None
    if projector is None:
        raise ValueError("media were given, but this context has no projector: "
                         "make it with projector=Projector.load(mmproj_path, model)")
    if not isinstance(prompt, str):
        raise TypeError("a prompt with media must be text (with a marker per medium), not token ids")
    if drafting:
        raise ValueError("draft= does not work with media yet: drafted tokens are checked against a cache "
                         "that holds media the drafter cannot see; use one without draft=")
    if not prompt:
        raise RuntimeError("the prompt is empty: there is nothing to generate from")
    plan = projector.tokenize(prompt, media)
    if all(c.kind == KIND_TEXT for c in plan.chunks):
        plan.close()
        return None  # no marker and no media: a plain prompt
    if plan.chunks[-1].kind != KIND_TEXT:
        plan.close()
        raise ValueError("a prompt with media must end with text after its last marker "
                         "(a chat template's assistant prefix does)")
    return plan


# -- chat messages with media parts ------------------------------------------------------


def decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` (or audio) URL; ValueError for anything else."""
    import base64
    import binascii
    head, sep, body = url.partition(",")
    if not sep or not head.startswith("data:"):
        raise ValueError(f"not a data URL: {url[:40]!r}")
    if not head.endswith(";base64"):
        raise ValueError(f"a data URL must be base64-encoded ({head[:40]!r})")
    kind = head[len("data:"):].split("/", 1)[0]
    if kind not in ("image", "audio", "application"):
        raise ValueError(f"a data URL of type {head[5:-7]!r} is neither an image nor audio")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data URL's base64 is malformed") from None


def split_chat_media(messages: Sequence[Any], marker: str) -> tuple[list[Any], list[MediaSource]]:
    """Messages whose ``content`` is a list of parts, as text with ``marker`` where each medium
    was, and the media in order.

    Parts: ``{"type": "text", "text": ...}``; images as ``{"type": "image", "image": source}``
    (a path, bytes, array or Media) or OpenAI's ``{"type": "image_url", "image_url": {"url":
    "data:image/...;base64,..."}}``; sounds as ``{"type": "audio", "audio": source}`` or OpenAI's
    ``{"type": "input_audio", "input_audio": {"data": base64, "format": "wav"}}``.  The parts of
    one message are joined without separators (as llama-server joins them).  Other messages are
    returned as they are.  A remote URL is a ValueError: fetch it first (the server can, when its
    operator allows it)."""
    import base64
    import binascii
    out: list[Any] = []
    media: list[MediaSource] = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            out.append(m)
            continue
        text: list[str] = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict):
                raise TypeError(f"{where} must be a dict with a 'type', not {type(part).__name__}")
            kind = part.get("type")
            if kind == "text":
                value = part.get("text")
                if not isinstance(value, str):
                    raise TypeError(f"{where}: a text part needs 'text' as a string")
                text.append(value)
                continue
            if kind in ("image", "audio"):
                source = part.get(kind)
                if source is None:
                    raise ValueError(f"{where}: an {kind} part needs '{kind}'")
                media.append(source)
            elif kind == "image_url":
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                if not isinstance(url, str):
                    raise TypeError(f"{where}: image_url needs a 'url' string")
                if url.startswith(("http://", "https://")):
                    raise ValueError(f"{where}: remote image URLs are not fetched here; download the image and "
                                     f"pass its bytes or a data: URL")
                if url.startswith("data:"):
                    try:
                        media.append(decode_data_url(url))
                    except ValueError as e:
                        raise ValueError(f"{where}: {e}") from None
                else:
                    raise ValueError(f"{where}: image_url must be a data: URL (data:image/png;base64,...)")
            elif kind == "input_audio":
                spec = part.get("input_audio")
                data = spec.get("data") if isinstance(spec, dict) else None
                if not isinstance(data, str):
                    raise TypeError(f"{where}: input_audio needs 'data' as a base64 string")
                try:
                    media.append(decode_data_url(data) if data.startswith("data:")
                                 else base64.b64decode(data, validate=True))
                except (binascii.Error, ValueError) as e:
                    raise ValueError(f"{where}: input_audio data is not valid base64 ({e})") from None
            else:
                raise ValueError(f"{where}: unsupported content part type {kind!r} "
                                 f"(text, image, image_url, audio, input_audio)")
            text.append(marker)
        out.append({**m, "content": "".join(text)})
    return out, media
