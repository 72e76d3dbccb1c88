"""Small media files made here, byte for byte: PNG and BMP encoders for RGB arrays (lossless, so a
decoder gives back the array exactly), a float WAV encoder for samples, and the hostile variants the
multimodal tests feed in."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB image with structure (gradients and a seeded speckle)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    img = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    ((x + y) * 7) % 256], axis=-1).astype(np.int64)
    img = (img + rng.integers(0, 48, size=img.shape)) % 256
    return img.astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    """``rgb`` (h, w, 3) uint8 as a PNG file (8-bit truecolour, no filtering)."""
    h, w, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def bmp(rgb: np.ndarray) -> bytes:
    """``rgb`` (h, w, 3) uint8 as a 24-bit BMP file (bottom-up rows, BGR, padded to 4 bytes)."""
    h, w, _ = rgb.shape
    pad = (4 - (w * 3) % 4) % 4
    rows = b"".join(rgb[row, :, ::-1].tobytes() + b"\x00" * pad for row in range(h - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    return header + info + rows


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG that starts like a real one of ``width`` x ``height`` pixels but holds almost no data."""
    small = png(pattern(2, 2))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = b"IHDR" + ihdr
    return small[:8] + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF) + small[33:]


def wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """``samples`` as a mono 32-bit float WAV file (format 3, IEEE float): decoded back exactly."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt))
            + fmt + b"data" + struct.pack("<I", len(data)) + data)
