"""Seed inputs made in code, so that no binary file is kept in git: images with Pillow, tar
archives with :mod:`tarfile`, videos with PyAV."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

Size = tuple[int, int]
# A tar member: (name, bytes) for a regular file, or a ready TarInfo without data.
Member = tuple[str, bytes] | tarfile.TarInfo
IMAGE_SIZE: Size = (32, 24)
VIDEO_SIZE: Size = (64, 48)
# A fixed time for tar members and the like: seeds are the same from run to run.
MTIME = 1_700_000_000


def picture(index: int = 0, size: Size = IMAGE_SIZE, mode: str = "RGB") -> Image.Image:
    """A small picture of a square on a gradient, different for each ``index``."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    left = (index * 3) % max(1, size[0] - size[0] // 3)
    draw.rectangle((left, 2, left + size[0] // 3, size[1] - 3), fill=(200, 40 + index % 200, 60))
    return image.convert(mode)


def image(image_format: str, mode: str = "RGB", size: Size = IMAGE_SIZE, **options: Any) -> bytes:
    """``picture()`` saved in ``image_format`` with Pillow's ``options``."""
    out = io.BytesIO()
    picture(0, size, mode).save(out, image_format, **options)
    return out.getvalue()


def tar(members: Iterable[Member], mode: str = "w", tar_format: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar archive of ``members`` in order; ``mode`` as tarfile's (``w:gz``, ``w:xz``, ...)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tar_format) as archive:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    """A tar member without data: a folder, link or device (``tarfile.DIRTYPE``, ...)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mtime = MTIME
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    return info


def video(
    folder: Path,
    name: str,
    codec: str,
    *,
    container_format: str | None = None,
    pix_fmt: str = "yuv420p",
    size: Size = VIDEO_SIZE,
    frames: int = 8,
    fps: int = 10,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> bytes:
    """The bytes of a small video written with PyAV into ``folder/name`` (format by its suffix
    unless ``container_format`` says)."""
    import av

    path = folder / name
    with av.open(
        str(path), "w", format=container_format, options=container_options or {}
    ) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        if not isinstance(stream, av.VideoStream):
            raise TypeError(f"{codec} is not a video codec")
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        for index in range(frames):
            # PyAV's stubs leave from_image without annotations.
            frame = av.VideoFrame.from_image(picture(index, size))  # type: ignore[no-untyped-call]
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the encoder before the container closes
    return path.read_bytes()


def videos(folder: Path) -> list[bytes]:
    """One small video per container and codec family the probe takes."""
    folder.mkdir(parents=True, exist_ok=True)
    x264 = {"preset": "ultrafast"}
    made = [
        video(folder, "h264.mp4", "libx264", options=x264),
        video(
            folder,
            "faststart.mp4",
            "libx264",
            options=x264,
            container_options={"movflags": "faststart"},
        ),
        video(folder, "mpeg4.mov", "mpeg4"),
        video(folder, "vp8.webm", "libvpx", options={"deadline": "realtime"}),
        video(folder, "vp9.mkv", "libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"}),
        video(folder, "mjpeg.avi", "mjpeg", pix_fmt="yuvj420p"),
        video(folder, "mpeg2.ts", "mpeg2video"),
        video(folder, "mpeg1.mpg", "mpeg1video", fps=25),
        video(folder, "flv1.flv", "flv"),
        video(folder, "wmv2.wmv", "wmv2", container_format="asf"),
        video(folder, "ffv1.nut", "ffv1"),
        video(folder, "vp8.ivf", "libvpx", options={"deadline": "realtime"}),
        video(folder, "raw.h264", "libx264", options=x264, container_format="h264"),
        video(
            folder,
            "hevc.mp4",
            "libx265",
            size=(64, 64),
            options={"preset": "ultrafast", "x265-params": "log-level=error"},
        ),
    ]
    return made
