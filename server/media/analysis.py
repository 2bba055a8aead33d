"""The built-in analysis APIs: what ``POST /analyze/summary`` and ``POST /analyze/motion`` compute.

Each takes the bytes of a clip as an external analysis API would get them and decodes it with
PyAV, so the whole pipeline runs without another service. The clip is opened as MP4 (the only
container framehub writes) rather than probed, so that bytes from the network can never select a
playlist or concat demuxer that would open other files or URLs. Frames are decoded one at a time
and dropped after use; only small numbers are kept.

- :func:`summarize_clip` counts the decoded frames and adds up the durations of their samples.
- :func:`motion_report` turns each frame into a small grey picture (FFmpeg scales and drops the
  colour in one step) and measures how far it is from the previous one with Pillow, since numpy is
  not a dependency: the mean absolute difference in grey levels (0 to 255). Runs of frames above
  the threshold are reported as ranges of frame indices.

Bytes that are not a decodable video raise :class:`ClipUnreadable` (HTTP 422).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import av
from av.codec.context import ThreadType
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream
from PIL import Image, ImageChops, ImageStat

from server.errors import FramehubError

# Width of the grey picture motion is measured on: enough to see a moving object, small enough
# that compression noise averages out and the comparison costs next to nothing.
MOTION_GRID_WIDTH = 64
# Mean grey-level change between two frames above which a frame counts as moving. Encoding noise on
# a still scene stays well below 1; an object of a few percent of the picture moving clears 1.
MOTION_THRESHOLD = 1.0
_ENERGY_DECIMALS = 3


# Frames larger than this are refused before decoding (4096x4096, as ``[frames] max_pixels``).
DEFAULT_MAX_PIXELS = 4096 * 4096


class ClipUnreadable(FramehubError):
    """Bytes sent for analysis that are not a video we can decode."""

    status = 422


def summarize_clip(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Frame count, duration, size and codec of a clip, read from its decoded frames."""
    frames = 0
    duration = Fraction(0)
    with _video(data, max_pixels, lowres=True) as (stream, decoded):
        # The stream's size, not the decoded frames': with lowres they come out smaller.
        width, height = stream.codec_context.width, stream.codec_context.height
        for frame in decoded:
            frames += 1
            if frame.duration and frame.time_base is not None:
                duration += frame.duration * frame.time_base
        codec = stream.codec_context.name
    if frames == 0:
        raise ClipUnreadable("the clip has no decodable video frame")
    return {
        "frames": frames,
        "duration": float(duration),
        "width": width,
        "height": height,
        "codec": codec,
    }


def motion_report(
    data: bytes, threshold: float = MOTION_THRESHOLD, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, Any]:
    """Per-frame motion energy of a clip and the frame ranges where it exceeds ``threshold``."""
    energy: list[float] = []
    previous: Image.Image | None = None
    # One reformatter for the clip: frame.reformat would build a new scaler for every frame.
    reformatter = VideoReformatter()
    with _video(data, max_pixels, lowres=True) as (_stream, decoded):
        for frame in decoded:
            grid_height = max(1, round(MOTION_GRID_WIDTH * frame.height / frame.width))
            small = reformatter.reformat(frame, MOTION_GRID_WIDTH, grid_height, "gray")
            plane = small.planes[0]
            grey = Image.frombuffer(
                "L", (small.width, small.height), bytes(plane), "raw", "L", plane.line_size, 1
            )
            if previous is None:
                energy.append(0.0)
            else:
                difference = ImageChops.difference(grey, previous)
                energy.append(round(ImageStat.Stat(difference).mean[0], _ENERGY_DECIMALS))
            previous = grey
    if not energy:
        raise ClipUnreadable("the clip has no decodable video frame")
    return {
        "frames": len(energy),
        "energy": energy,
        "threshold": threshold,
        "ranges": _ranges_above(energy, threshold),
    }


def _ranges_above(values: list[float], threshold: float) -> list[list[int]]:
    """``[first, last]`` index pairs of the runs of values above ``threshold``."""
    ranges: list[list[int]] = []
    for index, value in enumerate(values):
        if value <= threshold:
            continue
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ranges


@contextmanager
def _video(
    data: bytes, max_pixels: int, lowres: bool = False
) -> Iterator[tuple[VideoStream, Iterator[VideoFrame]]]:
    """The clip's first video stream and an iterator over its decoded frames.

    FFmpeg errors while opening or decoding, inside the ``with`` block too, become ClipUnreadable.
    A stream whose declared size is over ``max_pixels`` is refused before any frame is decoded.
    With ``lowres``, MJPEG frames decode at 1/8 size (FFmpeg's ``lowres``): the built-in analyses
    need every frame, not every pixel, and this makes them about four times cheaper.
    """
    try:
        with av.open(io.BytesIO(data), "r", format="mp4") as container:
            if not container.streams.video:
                raise ClipUnreadable("the clip has no video stream")
            stream = container.streams.video[0]
            pixels = stream.codec_context.width * stream.codec_context.height
            if pixels > max_pixels:
                raise ClipUnreadable(
                    f"the clip's frames are {stream.codec_context.width}x"
                    f"{stream.codec_context.height} = {pixels} pixels, over {max_pixels}"
                )
            # Frame threads where the codec has them (h264): decoding is most of the work here.
            stream.codec_context.thread_type = ThreadType.AUTO
            if lowres and stream.codec_context.name == "mjpeg":
                stream.codec_context.options = {"lowres": "3"}
            yield stream, container.decode(stream)
    except av.FFmpegError as error:
        raise ClipUnreadable(f"not a decodable MP4 video: {error.strerror}") from None
