"""Fuzz target: the live frame check, :func:`server.media.frames.inspect_frame`.

Each input is the bytes of one ``process`` event. The check either passes, with a format among
JPEG, PNG and WebP and a size within ``max_pixels``, or raises FrameRejected; a frame that passes
is then decoded by :func:`server.media.frames.first_pixel` (``[frames] ack_first_pixel``), which
may also only raise FrameRejected.
"""

from __future__ import annotations

from pathlib import Path

from fuzz.engine import Broken, Target
from fuzz.seeds import image, picture
from server.errors import FrameRejected
from server.media.frames import ALLOWED_FORMATS, first_pixel, inspect_frame

MAX_BYTES = 1 << 20
# Small, since first_pixel decodes what passes.
MAX_PIXELS = 640 * 480


def check(data: bytes) -> None:
    """Check ``data`` as a live frame, then decode its first pixel."""
    info = inspect_frame(data, MAX_BYTES, MAX_PIXELS)
    if info.format not in ALLOWED_FORMATS:
        raise Broken(f"inspect_frame passed a {info.format} frame")
    if not (0 < info.width * info.height <= MAX_PIXELS):
        raise Broken(f"inspect_frame passed a frame of {info.width}x{info.height}")
    pixel = first_pixel(data, info)
    if len(pixel) != 3 or not all(0 <= value <= 255 for value in pixel):
        raise Broken(f"first_pixel gave {pixel!r}")


def seeds() -> list[bytes]:
    """Frames of each format and flavour the check has a path for, and two it refuses."""
    exif = picture().getexif()
    exif[0x010E] = "fuzz seed"  # ImageDescription: an APP1 segment before the frame header
    return [
        image("JPEG", quality=75),
        image("JPEG", progressive=True),
        image("JPEG", "L"),
        image("JPEG", "CMYK"),
        image("JPEG", exif=exif.tobytes(), subsampling=0),
        image("PNG"),
        image("PNG", "RGBA"),
        image("PNG", "P"),
        image("PNG", "I;16"),
        image("PNG", "1"),
        image("WEBP", quality=50),
        image("WEBP", "RGBA", lossless=True),
        image("GIF"),
        image("BMP"),
    ]


def target(work: Path) -> Target:
    """The frame check as a fuzz target."""
    del work  # no files needed
    return Target(check=check, seeds=seeds, refusals=(FrameRejected,), max_len=8192)
