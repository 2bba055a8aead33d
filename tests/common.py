"""Test media made on the fly, in the manner of Home Assistant's stream tests ``common.py``.

:class:`Images` is the one image maker: plain frames whose colour tells their number, pictures of
a square (moving when its position changes), noise, and folders and tar archives of them.
:func:`write_video` writes those pictures into a video file with PyAV; :func:`decode_clip` reads a
clip back. Nothing here is a binary blob. :func:`until` is the bounded wait every helper polls
with.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import av
import pytest
from PIL import Image, ImageDraw, ImageStat

Size = tuple[int, int]
Colour = tuple[int, int, int]
# A tar member: (name, bytes) for a regular file, or a ready TarInfo without data (folders, links,
# devices).
Member = tuple[str, bytes] | tarfile.TarInfo

IMAGE_SIZE: Size = (64, 48)
# Frame numbers are told apart modulo this many; their colours are at least 33 apart, far more
# than what a codec changes, so a decoded frame still tells its number.
COLOURS = 25
SQUARE_BACKGROUND: Colour = (40, 90, 40)
WHITE: Colour = (250, 250, 250)
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}

# Seconds a wait may take: any wait, and waits in live ingest tests (a clip is encoded, analysed
# and its result sent back).
WAIT = 5.0
LIVE_TIMEOUT = 10.0


class Images:
    """Small images made with Pillow, folders of them and tar archives of them.

    Every method works on the class too (``Images.encode(3)``), for module-level test data.
    """

    size: Size = IMAGE_SIZE

    @staticmethod
    def colour(index: int) -> Colour:
        """The colour of image ``index``; :meth:`number` tells it back, modulo ``COLOURS``."""
        return (5 + 10 * (index % COLOURS), 120 + (index * 37) % 100, 200 - (index * 53) % 100)

    @classmethod
    def number(cls, colour: Sequence[float]) -> int:
        """The image number (modulo ``COLOURS``) whose colour is nearest to a decoded ``colour``."""
        return min(range(COLOURS), key=lambda index: math.dist(colour, cls.colour(index)))

    @classmethod
    def picture(cls, index: int = 0, size: Size | None = None) -> Image.Image:
        """Image ``index``: one plain colour that tells its number."""
        return Image.new("RGB", size or cls.size, cls.colour(index))

    @staticmethod
    def square(
        x: int,
        size: Size,
        *,
        background: Colour | Literal["gradient"] = SQUARE_BACKGROUND,
        side: int = 20,
        fill: Colour | str = WHITE,
    ) -> Image.Image:
        """A square of ``side`` pixels, its left edge at ``x`` and its top a third of the way down,
        on a plain ``background`` or on a gradient (costlier to encode)."""
        if background == "gradient":
            image = Image.linear_gradient("L").resize(size).convert("RGB")
        else:
            image = Image.new("RGB", size, background)
        top = size[1] // 3
        ImageDraw.Draw(image).rectangle([x, top, x + side, top + side], fill=fill)
        return image

    @staticmethod
    def noise(size: Size) -> Image.Image:
        """Random pixels: large once encoded, since noise does not compress."""
        return Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))

    @staticmethod
    def save(image: Image.Image, image_format: str = "JPEG", **options: Any) -> bytes:
        """``image`` as a file in ``image_format`` (JPEG, PNG, WEBP, GIF...)."""
        out = io.BytesIO()
        image.save(out, format=image_format, **options)
        return out.getvalue()

    @classmethod
    def encode(cls, index: int = 0, image_format: str = "JPEG", size: Size | None = None) -> bytes:
        """Image ``index`` (see :meth:`picture`) as a file in ``image_format``."""
        return cls.save(cls.picture(index, size), image_format)

    @classmethod
    def detailed(cls, index: int, size: Size) -> bytes:
        """A JPEG of a red square moving 8 pixels per ``index`` over a gradient."""
        x = (index * 8) % max(1, size[0] - 40)
        picture = cls.square(x, size, background="gradient", side=40, fill="red")
        return cls.save(picture, "JPEG", quality=85)

    @classmethod
    def for_name(cls, name: str, index: int = 0) -> bytes:
        """Image number ``index`` in the format its file name asks for (``.png`` gives PNG)."""
        return cls.encode(index, _FORMATS[Path(name).suffix.lower()])

    @classmethod
    def members(cls, names: Iterable[str]) -> list[tuple[str, bytes]]:
        """Tar members holding one image per name, numbered in the given order."""
        return [(name, cls.for_name(name, index)) for index, name in enumerate(names)]

    @classmethod
    def folder(cls, path: Path, names: Iterable[str]) -> Path:
        """Write one image per name into the folder ``path`` (created if needed)."""
        path.mkdir(parents=True, exist_ok=True)
        for name, data in cls.members(names):
            (path / name).write_bytes(data)
        return path

    @staticmethod
    def tar(members: Iterable[Member], *, gzip: bool = False) -> bytes:
        """A tar archive (gzip-compressed if asked) of ``members``, in order."""
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz" if gzip else "w") as archive:
            for member in members:
                if isinstance(member, tarfile.TarInfo):
                    archive.addfile(member)
                    continue
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 1_700_000_000
                archive.addfile(info, io.BytesIO(data))
        return out.getvalue()


# The live ingest tests' name for the same maker: frames whose colour tells their number.
LiveFrames = Images


def write_video(
    path: Path,
    pictures: Iterable[Image.Image],
    *,
    size: Size,
    fps: int,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    faststart: bool = False,
    quality: int | None = None,
) -> Path:
    """Write ``pictures`` into the video file ``path`` with PyAV; ``path``.

    ``faststart`` puts the MP4 index at the front; ``quality`` pins the quantiser (MJPEG).
    """
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        if quality is not None:
            stream.codec_context.qmin = stream.codec_context.qmax = quality
        for picture in pictures:
            # PyAV's stubs leave from_image without annotations.
            frame = av.VideoFrame.from_image(picture)  # type: ignore[no-untyped-call]
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the encoder before the container closes
    return path


def decode_clip(data: bytes) -> tuple[int, Size | None, str | None, list[Any]]:
    """Frame count, size, codec and each frame's mean RGB colour of an MP4 clip, decoded by PyAV.

    What is not a decodable MP4 gives ``(0, None, None, [])``.
    """
    colours: list[tuple[float, float, float]] = []
    size: Size | None = None
    codec: str | None = None
    try:
        with av.open(io.BytesIO(data), "r", format="mp4") as container:
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            for frame in container.decode(stream):
                size = (frame.width, frame.height)
                small = frame.reformat(8, 6, "rgb24")
                picture: Image.Image = small.to_image()  # type: ignore[no-untyped-call]
                red, green, blue = ImageStat.Stat(picture).mean
                colours.append((red, green, blue))
    except (av.FFmpegError, IndexError):
        return 0, None, None, []
    return len(colours), size, codec, colours


async def until(
    condition: Callable[[], object], what: str | Callable[[], str], seconds: float = WAIT
) -> None:
    """Wait until ``condition()`` is true, polling; fail the test after ``seconds``, saying
    ``what`` was awaited (or ``what()``, to tell the state at that moment)."""
    try:
        async with asyncio.timeout(seconds):
            # Polling: a condition is any callable over state the test can see, with no event.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{what() if callable(what) else what}: not within {seconds} s")
