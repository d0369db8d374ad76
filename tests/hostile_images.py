"""Image files made to hurt a server, for the server tests and ``benchmarks/attack.py`` (pytest puts
tests/ on sys.path; the benchmark adds it): a PNG that decodes to 64 MiB, a header claiming any size, a
progressive JPEG whose tiny scans each cost a pass over the whole image, and a JPEG whose EXIF block is
noise."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def huge_transparent_png() -> bytes:
    """A 4096x4096 RGBA PNG of about 75 KB: 64 MiB once decoded."""
    pixels = np.zeros((4096, 4096, 4), np.uint8)
    pixels[..., 0], pixels[..., 3] = 200, 255
    pixels[1000:3000, 1000:3000, 1] = 180
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG holding only its header: the claimed size, no pixel data (a decompression-bomb probe)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _segments(jpeg: bytes) -> list[bytes]:
    """A JPEG's marker segments in order, each with its marker; a scan with its coded data."""
    segments, at = [], 2  # after SOI
    while at < len(jpeg):
        marker = jpeg[at + 1]
        if marker == 0xD9:  # EOI
            break
        end = at + 2 + struct.unpack(">H", jpeg[at + 2 : at + 4])[0]
        if marker == 0xDA:  # SOS: coded data until the next marker (FF not followed by 00 or RSTn)
            while True:
                end = jpeg.index(b"\xff", end)
                if jpeg[end + 1] == 0 or 0xD0 <= jpeg[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        segments.append(jpeg[at:end])
        at = end
    return segments


def progressive_jpeg_bomb(side: int = 4096, scans: int = 100_000) -> bytes:
    """A grey ``side`` x ``side`` progressive JPEG whose last AC scan is repeated ``scans`` times.

    Each copy is 33 bytes (the scan header and an end-of-band run over every block), and each costs the
    decoder a pass over all ``(side / 8) ** 2`` blocks: 4096 x 4096 and 100,000 scans is 3.4 MB within
    the pixel limit that takes hours to decode.
    """
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, format="JPEG", progressive=True, quality=90)
    segments = _segments(buffer.getvalue())
    index = max(i for i, segment in enumerate(segments) if segment[1] == 0xDA and _spectral_start(segment))
    table = segments[index - 1] if segments[index - 1][1] == 0xC4 else b""  # its Huffman table (DHT)
    return b"\xff\xd8" + b"".join(segments) + table + segments[index] * scans + b"\xff\xd9"


def _spectral_start(scan: bytes) -> int:
    """Ss of a start-of-scan segment: 0 for a DC scan, the first coefficient of an AC one."""
    components = scan[4]
    return scan[5 + 2 * components]


def garbage_exif_jpeg(noise_bytes: int = 60_000) -> bytes:
    """A 64x64 JPEG with an APP1 ``Exif`` block of random bytes (not even a TIFF header)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    payload = b"Exif\x00\x00" + rng.integers(0, 256, noise_bytes, dtype=np.uint8).tobytes()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
