"""Still images made with Pillow: the placeholder frame and the demo repository's test pattern."""

from __future__ import annotations

import io
import math
import os
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

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
    return ImageFont.load_default(size=size)


def placeholder_jpeg(size: tuple[int, int] = DEMO_SIZE, text: str = PLACEHOLDER_TEXT) -> bytes:
    """A grey JPEG that reads ``text``, served while a repository has no frame to give."""
    image = Image.new("RGB", size, (48, 48, 48))
    draw = ImageDraw.Draw(image)
    font = _font(size[1] // 16)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    position = ((size[0] - (right - left)) / 2, (size[1] - (bottom - top)) / 2)
    draw.text(position, text, fill=(230, 230, 230), font=font)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def demo_frame(index: int, count: int, size: tuple[int, int] = DEMO_SIZE) -> Image.Image:
    """Frame ``index`` of the moving test pattern: sliding colour bars, a ball, the frame number."""
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
