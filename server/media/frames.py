"""Live frames: check what a client sent before it is queued for a clip.

A ``process`` event carries the bytes of one image file. :func:`inspect_frame` checks them in the
order that costs least: the byte count first, then the format and size read from the file's header
(the pixels are never decoded), then the pixel count. It runs on the event loop, once per frame,
so JPEG and PNG headers are read by a few lines of our own (:func:`_jpeg_info`, :func:`_png_info`)
in microseconds; anything else, or anything those are unsure of, goes through Pillow's header
parsing, which also words the errors. A frame that passes goes to the session's queue and later
to :func:`server.media.clips.encode_clip` with its :class:`FrameInfo`, which decides whether a
JPEG can be muxed as it is.

Pillow's ``Image.open`` is not used: it checks sizes against its own process-wide limit
(``Image.MAX_IMAGE_PIXELS``) and warns with ``DecompressionBombWarning``, which could only be
silenced with ``warnings.catch_warnings``, a global filter change that is not thread-safe on Python
3.11 (``encode_clip`` reads headers in worker threads too). Instead the format is found with the
same header tests ``Image.open`` uses (Pillow's plugin registry) and the plugin's image class reads
the header; ``max_pixels`` is the only size limit, and the message names the claimed size.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from server.errors import FrameRejected

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# Pillow's names are upper case; people write WebP.
_ALLOWED_TEXT = "JPEG, PNG, WebP"
# Image.open reads this many bytes to tell formats apart.
_PREFIX_BYTES = 16


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What a frame's header says: Pillow's format name and the size in pixels."""

    format: str
    width: int
    height: int


def inspect_frame(data: bytes, max_bytes: int, max_pixels: int) -> FrameInfo:
    """Check a live frame without decoding its pixels; FrameRejected says what is wrong."""
    if len(data) > max_bytes:
        raise FrameRejected(f"frame is {len(data)} bytes, over max_bytes {max_bytes}")
    info = frame_info(data)
    pixels = info.width * info.height
    if pixels > max_pixels:
        raise FrameRejected(
            f"frame is {info.width}x{info.height} = {pixels} pixels, over max_pixels {max_pixels}"
        )
    return info


def frame_info(data: bytes) -> FrameInfo:
    """Format and size from the header of a JPEG, PNG or WebP file; FrameRejected otherwise."""
    # Live frames are checked on the event loop, one per `process` event, so the common cases
    # take a fast path: Pillow's route (trying every format's signature test, then the JPEG
    # plugin parsing each quantization table) was a seventh of the loop's time under load
    # (bench/ingest.py). Anything the fast path does not recognise gets Pillow's full check.
    fast = _jpeg_info(data) or _png_info(data)
    if fast is not None:
        return fast
    # Pillow is imported where it is used, so that a server that never meets such a frame never
    # loads it (2 MB of a camera-only server's memory, server.media.images).
    from PIL import Image

    name = _identify(data[:_PREFIX_BYTES])
    if name is None:
        raise FrameRejected("frame is not an image")
    if name not in ALLOWED_FORMATS:
        raise FrameRejected(f"unsupported format {name}, allowed {_ALLOWED_TEXT}")
    factory, _accept = Image.OPEN[name]
    try:
        with factory(io.BytesIO(data), "") as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        # Only WebP checks Pillow's limit while reading the header, since libwebp allocates its
        # canvas then; anything that large is far over any max_pixels.
        raise FrameRejected(f"frame is too large: {error}") from None
    except (SyntaxError, OSError, ValueError, EOFError) as error:
        raise FrameRejected(f"frame is not a valid {name} image: {error}") from None
    if width <= 0 or height <= 0:
        raise FrameRejected(f"frame is not a valid {name} image: size {width}x{height}")
    return FrameInfo(name, width, height)


_JPEG_SOI = b"\xff\xd8\xff"
# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
_JPEG_SOS = 0xDA
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR = b"\x00\x00\x00\x0dIHDR"  # length 13, then the chunk type


def _jpeg_info(data: bytes) -> FrameInfo | None:
    """Size from a JPEG's start-of-frame segment, walking the segment lengths; None if unsure."""
    if not data.startswith(_JPEG_SOI):
        return None
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker == _JPEG_SOS:
            return None  # image data before any size: leave it to Pillow
        # Big-endian 16-bit fields, read byte by byte: slicing and int.from_bytes took a third of
        # the check (1 of 3 us for a 640x480 frame).
        length = data[position + 2] << 8 | data[position + 3]
        if marker in _JPEG_SOF:
            if length < 8 or position + 9 > end:
                return None
            height = data[position + 5] << 8 | data[position + 6]
            width = data[position + 7] << 8 | data[position + 8]
            return FrameInfo("JPEG", width, height) if width and height else None
        if length < 2:
            return None
        position += 2 + length
    return None


def _png_info(data: bytes) -> FrameInfo | None:
    """Size from a PNG's IHDR chunk, which must come first, whole and with a good CRC; else None."""
    if not data.startswith(_PNG_SIGNATURE) or data[8:16] != _PNG_IHDR or len(data) < 33:
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    width, height = struct.unpack(">II", data[16:24])
    return FrameInfo("PNG", width, height) if width and height else None


def _identify(prefix: bytes) -> str | None:
    """Pillow's name for the format whose signature ``prefix`` matches, as Image.open tests it."""
    from PIL import Image

    Image.init()
    for name in Image.ID:
        _factory, accept = Image.OPEN[name]
        # A format without a signature test would claim anything; a str is Pillow's "looks like
        # this format, but not one it can read" answer.
        if accept is None:
            continue
        try:
            result = accept(prefix)
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # a prefix too short for the test, as Image.open treats it
        if result and not isinstance(result, str):
            return name
    return None


def first_pixel(data: bytes, info: FrameInfo) -> list[int]:
    """The ``[r, g, b]`` of a frame's top-left pixel (blocking: decodes the image).

    A JPEG is decoded at 1/8 scale (its DCT allows it, about a tenth of the cost), so what comes
    back is the mean of the top-left 8x8 block: the first pixel wherever that block is flat. Other
    formats are decoded whole.
    """
    from PIL import Image

    factory, _accept = Image.OPEN[info.format]
    try:
        with factory(io.BytesIO(data), "") as image:
            if info.format == "JPEG":
                image.draft("RGB", (max(1, info.width // 8), max(1, info.height // 8)))
            corner = image.crop((0, 0, 1, 1)).convert("RGB")
            red, green, blue = corner.getpixel((0, 0))  # type: ignore[misc]
    except (SyntaxError, OSError, ValueError, EOFError) as error:
        raise FrameRejected(f"frame cannot be decoded: {error}") from None
    return [red, green, blue]
