"""Clips: a session's frames (JPEG, PNG or WebP files) encoded in memory into one MP4 file.

:func:`encode_clip` gets the frames of one clip, already checked by
:func:`server.media.frames.inspect_frame`, reads each header again with
:func:`~server.media.frames.frame_info`, and writes an MP4 into an ``io.BytesIO``:

- ``h264``: each frame is decoded (JPEG with FFmpeg's own mjpeg decoder, about three times faster
  than Pillow and already in YUV; PNG and WebP with Pillow), scaled and converted to yuv420p by a
  ``VideoReformatter``, both in a second thread a few frames ahead, and encoded with libx264 at the
  given preset and CRF in the calling thread.
- ``mjpeg``, the fast path: a JPEG already at the clip's size becomes an MP4 sample as it is, no
  decode and no re-encode. Only the other frames (PNG, WebP, JPEG of another size) are decoded,
  scaled and written as JPEG by Pillow.

The clip's size is its first frame's; frames of another size are stretched to it. For h264 the
size is rounded down to even numbers (at least 2), since yuv420p halves both dimensions for
chroma; mjpeg keeps odd sizes, as JPEG allows them.

Timing: without ``timestamps``, frame ``i`` has pts ``i`` in a time base of ``1/fps``, so a clip
of ``n`` frames lasts exactly ``n / fps`` seconds. With ``timestamps`` (seconds, one per frame:
when each was taken or arrived), the pts are those times from the first, in a 1/90000 s time base
(MP4's usual video clock), which makes a variable-rate MP4 whose duration is the real one; each
frame lasts until the next, the last one as long as the mean interval (``1/fps`` for one frame).
Times that do not increase (a client clock stepping back) are moved one tick past the previous.

The MP4 is fragmented (``frag_keyframe+empty_moov+delay_moov+default_base_moof``): the muxer
writes front to back and never seeks back, which is what an in-memory output needs, and
``delay_moov`` holds the index until the first fragment is known so that it carries the edit list
that makes h264's first frame (held back by B-frames) start at 0, as in a plain MP4. ``faststart``
(a plain MP4 with the index at the front) is not possible here: FFmpeg moves the index by reopening
the output by name, which fails for a file object.
"""

from __future__ import annotations

import io
import itertools
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
from av.codec.context import ThreadType
from av.container import OutputContainer
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame
from av.video.reformatter import ColorRange, VideoReformatter
from av.video.stream import VideoStream
from PIL import Image

from server.errors import FrameRejected
from server.media.frames import FrameInfo, frame_info

Codec = Literal["h264", "mjpeg"]
CODECS: tuple[Codec, ...] = ("h264", "mjpeg")
MP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof"}
# Frames rewritten on the mjpeg path are a minority (odd sizes, PNG/WebP clients); keep them close
# to the camera's own JPEGs.
REENCODED_JPEG_QUALITY = 90
# fps as a fraction for the time base: 30000/1001 and 29.97 stay exact, and MP4 timescales stay
# small integers.
_MAX_RATE_DENOMINATOR = 1001
# The time base of clips timed by timestamps: 90 kHz, MP4's and MPEG's usual video clock.
TIMESTAMP_TIME_BASE = Fraction(1, 90_000)
# How many h264 frames may be decoded ahead of the encoder, each width * height * 1.5 bytes: 2, 4
# and 8 were alike within the noise, so few enough to keep a clip's memory small.
_CONVERT_AHEAD = 4


@dataclass(frozen=True, slots=True)
class _Timing:
    """Each frame's pts and duration in ``time_base``."""

    time_base: Fraction
    pts: list[int]
    durations: list[int]

    @property
    def seconds(self) -> float:
        return float((self.pts[-1] + self.durations[-1] - self.pts[0]) * self.time_base)


def _timing(count: int, rate: Fraction, timestamps: Sequence[float] | None) -> _Timing:
    if timestamps is None:
        return _Timing(1 / rate, list(range(count)), [1] * count)
    if len(timestamps) != count:
        raise ValueError(f"{len(timestamps)} timestamps for {count} frames")
    ticks: list[int] = []
    for ts in timestamps:
        tick = round((ts - timestamps[0]) / TIMESTAMP_TIME_BASE)
        ticks.append(tick if not ticks or tick > ticks[-1] else ticks[-1] + 1)
    durations = [after - before for before, after in itertools.pairwise(ticks)]
    last = round(ticks[-1] / (count - 1)) if count > 1 else round(1 / rate / TIMESTAMP_TIME_BASE)
    return _Timing(TIMESTAMP_TIME_BASE, ticks, [*durations, max(last, 1)])


@dataclass(frozen=True, slots=True)
class EncodedClip:
    """One encoded clip: a complete, playable MP4 file and what it holds."""

    data: bytes
    frames: int
    width: int
    height: int
    codec: str
    duration: float


def encode_clip(
    frames: Sequence[bytes],
    fps: float,
    codec: Codec,
    *,
    h264_preset: str = "veryfast",
    h264_crf: int = 23,
    infos: Sequence[FrameInfo] | None = None,
    timestamps: Sequence[float] | None = None,
) -> EncodedClip:
    """Encode image files into an in-memory MP4 at ``fps``; the first frame sets the size.

    ``infos`` are the frames' headers when the caller has read them already (live sessions do);
    ``timestamps`` time the frames by when they were taken (see the module docstring).
    """
    if not frames:
        raise ValueError("a clip needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, not {fps}")
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}, expected one of {', '.join(CODECS)}")
    if infos is None or len(infos) != len(frames):
        infos = [frame_info(data) for data in frames]
    width, height = infos[0].width, infos[0].height
    rate = Fraction(fps).limit_denominator(_MAX_RATE_DENOMINATOR)
    timing = _timing(len(frames), rate, timestamps)
    output = io.BytesIO()
    with av.open(output, "w", format="mp4", options=MP4_OPTIONS) as container:
        if codec == "h264":
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = _even(width), _even(height)
            stream.pix_fmt = "yuv420p"
            stream.options = {"preset": h264_preset, "crf": str(h264_crf)}
            # x264's frame threads (the CLI's default) rather than PyAV's slice threads: more
            # throughput for whole clips, at the cost of latency we do not need here.
            stream.codec_context.thread_type = ThreadType.AUTO
            # The encoder's clock is the frames' own, so no pts is rounded onto another.
            stream.codec_context.time_base = stream.time_base = timing.time_base
            _write_h264(container, stream, frames, infos, timing)
        else:
            stream = container.add_stream("mjpeg", rate=rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuvj420p"
            stream.time_base = timing.time_base
            _write_mjpeg(container, stream, frames, infos, timing)
        # Nothing is buffered on the mjpeg path (its encoder is never fed), but flushing is what
        # ends every stream we write.
        container.mux(stream.encode(None))
    return EncodedClip(
        data=output.getvalue(),
        frames=len(frames),
        width=stream.width,
        height=stream.height,
        codec=codec,
        duration=timing.seconds,
    )


def _even(size: int) -> int:
    """``size`` rounded down to an even number, at least 2, as yuv420p needs."""
    return max(2, size - size % 2)


def _write_h264(
    container: OutputContainer,
    stream: VideoStream,
    frames: Sequence[bytes],
    infos: Sequence[FrameInfo],
    timing: _Timing,
) -> None:
    jpeg_decoder = av.CodecContext.create("mjpeg", "r")
    # One scaler for the clip, single-threaded: frame.reformat builds a new one for every frame,
    # and with it a pool of swscale threads that is started and joined again behind x264's busy
    # threads. That was 40% of this thread's py-spy samples; one scaler alone took one 300-frame
    # 640x480 clip from 237 to 288 frames/s (bench/encoder.py's frames, best of 15 rounds).
    reformatter = VideoReformatter()

    def convert(index: int) -> VideoFrame:
        frame = _decode(jpeg_decoder, frames[index], infos[index], index)
        # JPEG decodes to full-range YUV; the h264 stream is limited range (what players assume),
        # so convert the range too, or colours come out stretched.
        return reformatter.reformat(
            frame,
            stream.width,
            stream.height,
            "yuv420p",
            dst_color_range=ColorRange.MPEG,
            threads=1,
        )

    # Frames are decoded and converted in a second thread, up to _CONVERT_AHEAD ahead of the
    # encoder: libav releases the GIL, so the decoding overlaps x264's work in this thread instead
    # of taking turns with it, as the CLI's threaded decoder does. 288 -> 328 frames/s for one
    # 300-frame clip, 299 -> 376 for 30-frame clips (same runs). The decoder and the scaler are
    # only ever used by that one thread, in frame order.
    count = len(frames)
    with ThreadPoolExecutor(1, thread_name_prefix="clip-convert") as converter:
        ahead = deque(
            converter.submit(convert, index) for index in range(min(_CONVERT_AHEAD, count))
        )
        for index in range(count):
            frame = ahead.popleft().result()
            if index + _CONVERT_AHEAD < count:
                ahead.append(converter.submit(convert, index + _CONVERT_AHEAD))
            # A decoded JPEG is marked as an I picture, and libx264 obeys the mark: every frame
            # would be a keyframe. FFmpeg's CLI clears it too.
            frame.pict_type = PictureType.NONE
            frame.pts = timing.pts[index]
            frame.duration = timing.durations[index]
            frame.time_base = timing.time_base
            container.mux(stream.encode(frame))


def _write_mjpeg(
    container: OutputContainer,
    stream: VideoStream,
    frames: Sequence[bytes],
    infos: Sequence[FrameInfo],
    timing: _Timing,
) -> None:
    jpeg_decoder = av.CodecContext.create("mjpeg", "r")
    size = (stream.width, stream.height)
    for index, (data, info) in enumerate(zip(frames, infos, strict=True)):
        if info.format != "JPEG" or (info.width, info.height) != size:
            data = _reencode_jpeg(_decode(jpeg_decoder, data, info, index), size)
        packet = av.Packet(data)
        packet.stream = stream
        packet.time_base = timing.time_base
        packet.pts = packet.dts = timing.pts[index]
        packet.duration = timing.durations[index]
        # Every JPEG stands alone; unmarked samples would also keep frag_keyframe from cutting.
        packet.is_keyframe = True
        container.mux(packet)


def _decode(
    jpeg_decoder: VideoCodecContext, data: bytes, info: FrameInfo, index: int
) -> VideoFrame:
    """One image file as a VideoFrame: JPEG through FFmpeg, PNG and WebP through Pillow."""
    try:
        if info.format == "JPEG":
            # Intra-only and without frame threads, the decoder gives each frame back at once.
            decoded = jpeg_decoder.decode(av.Packet(data))
            if len(decoded) != 1:
                raise FrameRejected(f"frame {index}: the JPEG decoder returned no picture")
            return decoded[0]
        with Image.open(io.BytesIO(data), formats=[info.format]) as image:
            rgb = image.convert("RGB")
        # PyAV's stubs leave from_image and to_image without annotations.
        frame: VideoFrame = VideoFrame.from_image(rgb)  # type: ignore[no-untyped-call]
        return frame
    except av.FFmpegError as error:
        # The header was fine (inspect_frame read it) but the pixels are not.
        raise FrameRejected(f"frame {index} cannot be decoded: {error.strerror}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise FrameRejected(f"frame {index} cannot be decoded: {error}") from None


def _reencode_jpeg(frame: VideoFrame, size: tuple[int, int]) -> bytes:
    """``frame`` scaled to ``size`` as a JPEG file, 4:2:0 like the stream it joins."""
    rgb = frame.reformat(size[0], size[1], "rgb24")
    image: Image.Image = rgb.to_image()  # type: ignore[no-untyped-call]
    output = io.BytesIO()
    image.save(output, format="JPEG", quality=REENCODED_JPEG_QUALITY)
    return output.getvalue()
