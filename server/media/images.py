"""Still images made with Pillow: the placeholder frame and the demo repository's test pattern.

Pillow is imported only when a picture is drawn. The placeholder is drawn once and kept in
``state_dir`` (:func:`stored_placeholder`), and the demo is written on the first start only, so a
camera-only server that has started before never loads Pillow, FreeType and HarfBuzz: 4.4 MB of
its resident memory (bench/camera.py measures it).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image, ImageFont

PLACEHOLDER_TEXT = "The image is not available."
DEMO_SIZE = (640, 480)
_BAR_COLOURS = [
    (192, 192, 192),
    (192, 192, 0),
    (0, 192, 192),
    (0, 192, 0),
    (192, 0, 192),
    (192, 0, 0),
    (0, 0, 192),
]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def placeholder_jpeg(size: tuple[int, int] = DEMO_SIZE, text: str = PLACEHOLDER_TEXT) -> bytes:
    """A grey JPEG that reads ``text``, served while a repository has no frame to give."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (48, 48, 48))
    draw = ImageDraw.Draw(image)
    font = _font(size[1] // 16)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    position = ((size[0] - (right - left)) / 2, (size[1] - (bottom - top)) / 2)
    draw.text(position, text, fill=(230, 230, 230), font=font)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def stored_placeholder(state_dir: Path) -> bytes:
    """The placeholder JPEG: read from ``state_dir``, or drawn and stored there for next time.

    The file's name carries a digest of what is drawn, so a new text or size draws it anew.
    """
    digest = hashlib.sha256(f"{PLACEHOLDER_TEXT}|{DEMO_SIZE}".encode()).hexdigest()[:12]
    path = state_dir / f"placeholder-{digest}.jpg"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    if data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9"):  # a whole JPEG
        return data
    data = placeholder_jpeg()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, path)  # never a half-written file under the final name
    return data


def demo_frame(index: int, count: int, size: tuple[int, int] = DEMO_SIZE) -> Image.Image:
    """Frame ``index`` of the moving test pattern: sliding colour bars, a ball, the frame number."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    bar = width / len(_BAR_COLOURS)
    shift = (index * 4) % width
    for i, colour in enumerate(_BAR_COLOURS):
        x0 = (i * bar + shift) % width
        draw.rectangle([x0, 0, x0 + bar, height * 2 // 3], fill=colour)
        if x0 + bar > width:
            draw.rectangle([x0 - width, 0, x0 + bar - width, height * 2 // 3], fill=colour)
    angle = 2 * math.pi * index / max(count, 1)
    cx = width / 2 + width / 3 * math.cos(angle)
    cy = height * 5 / 6 + height / 12 * math.sin(2 * angle)
    draw.ellipse([cx - 24, cy - 24, cx + 24, cy + 24], fill=(255, 255, 255))
    draw.text((16, 16), f"frame {index}", fill=(0, 0, 0), font=_font(height // 10))
    return image


def write_demo_repository(root: Path, work_dir: Path, name: str, count: int) -> None:
    """Write ``count`` JPEG frames of the test pattern as repository ``name`` under ``root``.

    The frames go to a folder under ``work_dir`` first and are renamed into place when complete,
    so an interrupted first start never leaves a half-made demo behind.
    """
    staging = work_dir / f"{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for index in range(count):
            demo_frame(index, count).save(staging / f"frame-{index}.jpg", quality=80)
        os.rename(staging, root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
