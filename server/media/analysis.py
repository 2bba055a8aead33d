"""The built-in analyses: what the ``summary`` and ``motion`` processors compute from a clip.

:func:`analyse_clip` decodes a clip once, with PyAV, and feeds every frame to each analysis asked
for, so that both built-ins together cost one decode. Bytes (a live clip, an upload to
``/analyze/*``) are opened as MP4, the only container framehub writes, rather than probed, so that
bytes from the network can never select a playlist or concat demuxer that would open other files
or URLs; a batch upload on disk, already checked by :mod:`server.media.probe`, is opened with the
probe's own list of containers. Frames are dropped after use; only small numbers are kept.

- ``summary`` counts the decoded frames and adds up the durations of their samples.
- ``motion`` turns each frame into a small grey picture (FFmpeg scales and drops the colour in one
  step) and measures how far it is from the previous one with Pillow, since numpy is not a
  dependency: the mean absolute difference in grey levels (0 to 255). Runs of frames above the
  threshold are reported as ranges of frame indices.

A source that is not a decodable video raises :class:`~server.errors.ClipUnreadable` (HTTP 422).
"""

from __future__ import annotations

import io
import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
from av.codec.context import ThreadType
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream
from PIL import Image, ImageChops

from server.errors import ClipUnreadable
from server.media.probe import VIDEO_OPEN_OPTIONS
from server.settings import BUILTIN_KINDS

# Width of the grey picture motion is measured on: enough to see a moving object, small enough
# that compression noise averages out and the comparison costs next to nothing.
MOTION_GRID_WIDTH = 64
# Mean grey-level change between two frames above which a frame counts as moving. Encoding noise on
# a still scene stays well below 1; an object of a few percent of the picture moving clears 1.
MOTION_THRESHOLD = 1.0
_ENERGY_DECIMALS = 3
# Frames larger than this are refused before decoding (4096x4096, as ``[frames] max_pixels``).
DEFAULT_MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True, slots=True)
class _Stream:
    """What the clip's header says of its video stream."""

    width: int
    height: int
    codec: str


class _Analysis(Protocol):
    def add(self, frame: VideoFrame) -> None: ...

    def answer(self, stream: _Stream) -> dict[str, Any]: ...


class _Summary:
    """Frame count, duration, size and codec, read from the decoded frames."""

    def __init__(self) -> None:
        self.frames = 0
        # Durations added up in ticks of each time base (one, in practice), turned into seconds
        # once: a Fraction product and sum per frame cost more than the rest of this class.
        self.ticks: dict[tuple[int, int], int] = {}

    def add(self, frame: VideoFrame) -> None:
        self.frames += 1
        duration = frame.duration
        if duration:
            time_base = frame.time_base
            if time_base is not None:
                key = (time_base.numerator, time_base.denominator)
                self.ticks[key] = self.ticks.get(key, 0) + duration

    def answer(self, stream: _Stream) -> dict[str, Any]:
        duration = sum((ticks * Fraction(*key) for key, ticks in self.ticks.items()), Fraction(0))
        # The stream's size, not the decoded frames': with lowres they come out smaller.
        return {
            "frames": self.frames,
            "duration": float(duration),
            "width": stream.width,
            "height": stream.height,
            "codec": stream.codec,
        }


class _Motion:
    """Per-frame motion energy and the frame ranges where it exceeds the threshold."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.energy: list[float] = []
        self.previous: Image.Image | None = None
        # One reformatter for the clip: frame.reformat would build a new scaler for every frame.
        self.reformatter = VideoReformatter()

    def add(self, frame: VideoFrame) -> None:
        grid_height = max(1, round(MOTION_GRID_WIDTH * frame.height / frame.width))
        small = self.reformatter.reformat(frame, MOTION_GRID_WIDTH, grid_height, "gray")
        plane = small.planes[0]
        grey = Image.frombuffer(
            "L", (small.width, small.height), bytes(plane), "raw", "L", plane.line_size, 1
        )
        if self.previous is None:
            self.energy.append(0.0)
        else:
            difference = ImageChops.difference(grey, self.previous)
            self.energy.append(round(_mean_grey(difference), _ENERGY_DECIMALS))
        self.previous = grey

    def answer(self, stream: _Stream) -> dict[str, Any]:
        return {
            "frames": len(self.energy),
            "energy": self.energy,
            "threshold": self.threshold,
            "ranges": _ranges_above(self.energy, self.threshold),
        }


def analyse_clip(
    source: bytes | Path,
    kinds: Sequence[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    motion_threshold: float = MOTION_THRESHOLD,
) -> dict[str, dict[str, Any]]:
    """``{kind: answer}`` for each of ``kinds`` (``summary``, ``motion``), from one decode."""
    analyses: dict[str, _Analysis] = {}
    for kind in kinds:
        if kind == "summary":
            analyses[kind] = _Summary()
        elif kind == "motion":
            analyses[kind] = _Motion(motion_threshold)
        else:
            raise ValueError(f"unknown analysis {kind!r}; known: {', '.join(BUILTIN_KINDS)}")
    frames = 0
    with _video(source, max_pixels) as (stream, decoded):
        # Read before decoding: with lowres, the decoder's size shrinks.
        context = stream.codec_context
        header = _Stream(context.width, context.height, context.name)
        for frame in decoded:
            frames += 1
            for analysis in analyses.values():
                analysis.add(frame)
    if frames == 0:
        raise ClipUnreadable("the clip has no decodable video frame")
    return {kind: analysis.answer(header) for kind, analysis in analyses.items()}


def _mean_grey(image: Image.Image) -> float:
    """The mean grey level of an ``L`` image, from its histogram.

    What ``ImageStat.Stat(image).mean[0]`` gives, bit for bit (a sum of integers, divided once),
    without its lazily computed statistics, which took 30 us more a frame: a third of what the
    motion analysis adds to decoding (bench/capacity.py's frames).
    """
    histogram = image.histogram()
    total: int = sum(map(operator.mul, histogram, range(len(histogram))))
    return total / (sum(histogram) or 1)


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
    source: bytes | Path, max_pixels: int
) -> Iterator[tuple[VideoStream, Iterator[VideoFrame]]]:
    """The source's first video stream and an iterator over its decoded frames.

    FFmpeg errors while opening or decoding, inside the ``with`` block too, become ClipUnreadable.
    A stream whose declared size is over ``max_pixels`` is refused before any frame is decoded.
    MJPEG frames decode at 1/8 size (FFmpeg's ``lowres``): the built-in analyses need every frame,
    not every pixel, and this makes them about four times cheaper.
    """
    try:
        if isinstance(source, Path):
            container = av.open(str(source), "r", options=VIDEO_OPEN_OPTIONS)
        else:
            container = av.open(io.BytesIO(source), "r", format="mp4")
        with container:
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
            if stream.codec_context.name == "mjpeg":
                stream.codec_context.options = {"lowres": "3"}
            yield stream, container.decode(stream)
    except av.FFmpegError as error:
        what = "video" if isinstance(source, Path) else "MP4 video"
        raise ClipUnreadable(f"not a decodable {what}: {error.strerror}") from None
