"""The check of an uploaded video before it is fanned out, run in a child process.

An upload is untrusted: a crafted file could make FFmpeg crash, hang or eat memory. So the server
never opens it itself. :func:`probe_video` (the parent half, awaited by ``POST /batch``) starts
``python -m server.media.probe PATH --max-pixels N --max-duration S --cpu-seconds C`` and kills it
after ``[batch] probe_timeout``. The child (:func:`main`) first caps its own address space, CPU
time and file writes (:mod:`resource`), then :func:`inspect_video` opens the file with PyAV,
restricted to local files and to the video containers in :data:`VIDEO_DEMUXERS` (so a playlist
cannot make FFmpeg fetch URLs or other files), checks the first video stream's frame size, demuxes
every packet without decoding (counting the video packets and noticing a truncated file), decodes
the first frame, and prints one JSON line: ``{"video": {duration, frames, width, height, codec,
bytes}}`` or ``{"rejected": "reason"}``. The parent turns that into a :class:`VideoInfo` or a
:class:`~server.errors.VideoRejected` (422); a child that crashes, runs out of a limit or says
nothing is a rejection too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import VideoRejected

if TYPE_CHECKING:  # the child imports no more than it needs
    from av.container import InputContainer
    from av.packet import Packet
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

    from server.settings import BatchSettings

# PyAV is imported inside the child-side functions only: the server process imports this module
# for probe_video and VideoInfo, and importing av there would cost it about 17 MB for nothing.

MODULE = "server.media.probe"
# Where ``python -m server.media.probe`` finds the package, wherever it is installed.
IMPORT_ROOT = Path(__file__).resolve().parents[2]
# Python with PyAV needs about 300 MB of address space to decode one large frame with threads.
PROBE_MEMORY_BYTES = 1 << 30
# FFmpeg demuxers (their first name) of the video containers taken. Playlist and pattern demuxers
# (hls, dash, concat, image2) are left out: they open other files named inside the upload.
VIDEO_DEMUXERS = (
    "mov",
    "matroska",
    "avi",
    "mpegts",
    "mpeg",
    "flv",
    "ogg",
    "asf",
    "ivf",
    "nut",
    "h264",
    "hevc",
)
VIDEO_OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(VIDEO_DEMUXERS)}
NOT_A_VIDEO = (
    "not a video file framehub can read: send MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, Ogg, "
    "ASF/WMV, IVF, NUT or raw H.264/H.265"
)
# Packets fed to the decoder before giving up on decoding a first frame.
MAX_PACKETS_FOR_FIRST_FRAME = 64


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the probe found: seconds, video frames, frame size, codec name and file size."""

    duration: float
    frames: int
    width: int
    height: int
    codec: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        """The ``video`` object of a batch answer."""
        return asdict(self)


async def probe_video(path: Path, batch: BatchSettings) -> VideoInfo:
    """Probe ``path`` (absolute) in a child process under ``batch``'s limits, or VideoRejected."""
    cpu_seconds = math.ceil(batch.probe_timeout) + 1
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        MODULE,
        str(path),
        "--max-pixels",
        str(batch.max_pixels),
        "--max-duration",
        repr(batch.max_duration),
        "--cpu-seconds",
        str(cpu_seconds),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        # FFmpeg's messages about a crafted file could be endless; the reason comes on stdout.
        stderr=asyncio.subprocess.DEVNULL,
        cwd=IMPORT_ROOT,
    )
    try:
        async with asyncio.timeout(batch.probe_timeout):
            stdout, _ = await process.communicate()
    except TimeoutError:
        raise VideoRejected(
            f"checking the video took longer than [batch] probe_timeout ({batch.probe_timeout:g} s)"
        ) from None
    finally:
        # Also on cancellation (client gone, server stopping): no probe outlives its request.
        if process.returncode is None:
            process.kill()
            await process.wait()
    return _read_report(stdout, process.returncode)


def _read_report(stdout: bytes, returncode: int | None) -> VideoInfo:
    lines = stdout.decode(errors="replace").strip().splitlines()
    report: Any = None
    if returncode == 0 and lines:
        try:
            report = json.loads(lines[-1])
        except ValueError:
            report = None
    if isinstance(report, dict) and isinstance(report.get("rejected"), str):
        raise VideoRejected(report["rejected"])
    if isinstance(report, dict) and isinstance(report.get("video"), dict):
        try:
            return VideoInfo(**report["video"])
        except TypeError:
            pass
    if returncode is not None and returncode < 0:
        how = f"was stopped by {signal.Signals(-returncode).name}"
    else:
        how = f"ended with status {returncode} and no report"
    raise VideoRejected(f"the video could not be checked safely: the probe {how}")


def inspect_video(path: Path, max_pixels: int, max_duration: float) -> VideoInfo:
    """Check the video file at ``path`` (blocking; run it in the child only, see the docstring)."""
    import av

    size = path.stat().st_size
    try:
        container = av.open(str(path), "r", options=VIDEO_OPEN_OPTIONS)
    except (av.FFmpegError, UnicodeDecodeError):
        raise VideoRejected(NOT_A_VIDEO) from None
    with container:
        if not container.streams.video:
            raise VideoRejected("the file has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # a damaged sample table (found by make fuzz)
            raise VideoRejected("the video stream's codec is not one framehub can decode")
        stream.codec_context.thread_count = 1
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels(width, height, max_pixels)
        declared = _declared_duration(container, stream)
        _check_duration(declared or 0.0, max_duration)
        packets, span, first = _demux(container, stream)
        if packets == 0:
            raise VideoRejected("the video stream holds no frames")
        if stream.frames and packets < stream.frames:
            raise VideoRejected(
                f"the file is truncated: its index lists {stream.frames} video frames "
                f"but only {packets} are in the file"
            )
        if first is None:
            raise VideoRejected(
                f"no frame of the {stream.codec_context.name} stream can be decoded"
            )
        # The frames themselves may be larger than the header said.
        _check_pixels(first.width, first.height, max_pixels)
        # A header may also understate the duration: the packets have the last word.
        duration = max(declared or 0.0, span)
        _check_duration(duration, max_duration)
        return VideoInfo(
            duration=round(duration, 3),
            frames=packets,
            width=width,
            height=height,
            codec=stream.codec_context.name,
            bytes=size,
        )


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise VideoRejected("the video stream does not say its frame size")
    if width * height > max_pixels:
        raise VideoRejected(
            f"frames of {width}x{height} pixels are over [batch] max_pixels ({max_pixels} pixels)"
        )


def _check_duration(duration: float, max_duration: float) -> None:
    if duration > max_duration:
        raise VideoRejected(
            f"the video lasts {duration:.1f} s, over [batch] max_duration ({max_duration:g} s)"
        )


def _declared_duration(container: InputContainer, stream: VideoStream) -> float | None:
    """Seconds the stream or container header claims, if any."""
    import av

    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


def _demux(container: InputContainer, stream: VideoStream) -> tuple[int, float, VideoFrame | None]:
    """Video packets in the file, the seconds they span, and the first frame they decode to."""
    import av

    packets = 0
    start: float | None = None
    end = 0.0
    first: VideoFrame | None = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the empty packet that ends a demux
                continue
            packets += 1
            if packet.pts is not None and packet.time_base is not None:
                at = float(packet.pts * packet.time_base)
                start = at if start is None else min(start, at)
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            if first is None and packets <= MAX_PACKETS_FOR_FIRST_FRAME:
                first = _first_frame(stream, packet)
        if first is None:
            first = _first_frame(stream, None)
    except av.FFmpegError as exc:
        raise VideoRejected(f"the file is damaged or truncated: {exc.strerror or exc}") from None
    return packets, max(end - (start or 0.0), 0.0), first


def _first_frame(stream: VideoStream, packet: Packet[VideoStream] | None) -> VideoFrame | None:
    """The first frame that feeding ``packet`` (None: flushing) to the decoder gives, if any."""
    import av

    try:
        frames = stream.codec_context.decode(packet)
    except av.FFmpegError:
        return None  # a stream may start with packets that need what follows
    return frames[0] if frames else None


def _limit_resources(cpu_seconds: int) -> None:
    """Cap this process so that a crafted file cannot take the machine with it."""
    resource.setrlimit(resource.RLIMIT_AS, (PROBE_MEMORY_BYTES, PROBE_MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    # Reading needs no files written; stdout is a pipe, which this limit does not cover.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def main(argv: list[str] | None = None) -> int:
    """The child: print one JSON line about the file (see the module docstring)."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--max-pixels", type=int, required=True)
    parser.add_argument("--max-duration", type=float, required=True)
    parser.add_argument("--cpu-seconds", type=int, required=True)
    args = parser.parse_args(argv)
    _limit_resources(args.cpu_seconds)
    try:
        info = inspect_video(args.path, args.max_pixels, args.max_duration)
    except VideoRejected as exc:
        report: dict[str, Any] = {"rejected": str(exc)}
    except MemoryError:
        report = {"rejected": f"reading the video needs more than {PROBE_MEMORY_BYTES >> 20} MiB"}
    except OSError as exc:
        report = {"rejected": f"the upload could not be read: {exc.strerror or exc}"}
    else:
        report = {"video": info.to_json()}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
