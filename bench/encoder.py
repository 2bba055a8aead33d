"""The clip encoder's speed (issues 3 and 11): ``encode_clip`` against the ffmpeg CLI, same frames.

300 frames of the 640x480 test pattern (90 in quick mode) are saved as JPEG, in memory for
:func:`server.media.clips.encode_clip` and as files for the ``ffmpeg`` CLI (Debian's package). Both
encode them with the shipped ``[clips]`` defaults (fps, x264 preset and CRF, yuv420p, x264's own
thread count) to the same fragmented MP4 layout: framehub in memory, the CLI from the image2 demuxer
to a file, one process per clip, as a service shelling out to ffmpeg would run. Two cases: clips of
``[clips] frames`` (30), where the CLI pays a process start per clip, and all frames as one clip,
where it does not and its threaded JPEG decoder and x264 have a long run to overlap. Every encoder
runs over all frames in alternating rounds, so that all see the same machine; the first round warms
up and is not counted, the best of the others is.

Rows: h264 frames per second against the CLI in short clips (target at least 1.2x) and in one long
clip (at least 1.0x), and mjpeg frames per second against our own h264 (at least 20x).
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import BenchContext, BenchError, Row, ensure_tool
from server.media.clips import MP4_OPTIONS, Codec, encode_clip
from server.media.images import DEMO_SIZE, demo_frame
from server.settings import ClipSettings

BENCHMARK = "encoder"
FRAMES = 300
QUICK_FRAMES = 90
JPEG_QUALITY = 80
ROUNDS = 3
QUICK_ROUNDS = 1
CLI_TIMEOUT = 120.0
# Targets of issue 3 (mjpeg) and issue 11 (h264).
MIN_H264_RATIO = 1.2
MIN_H264_LONG_RATIO = 1.0
MIN_MJPEG_RATIO = 20.0


def run(ctx: BenchContext) -> list[Row]:
    """Frames per second of encode_clip (h264, mjpeg) and of the ffmpeg CLI, same frames."""
    ffmpeg = ensure_tool("ffmpeg", package="ffmpeg")
    clips = ClipSettings()
    count = QUICK_FRAMES if ctx.quick else FRAMES
    frames = [_jpeg(index, count) for index in range(count)]
    folder = ctx.tmp / "frames"
    folder.mkdir()
    for index, data in enumerate(frames):
        (folder / f"frame-{index:04d}.jpg").write_bytes(data)
    pattern = folder / "frame-%04d.jpg"
    output = ctx.tmp / "clip.mp4"

    def ours(codec: Codec, length: int) -> Callable[[], None]:
        def encode() -> None:
            for start in range(0, count, length):
                encode_clip(
                    frames[start : start + length],
                    clips.fps,
                    codec,
                    h264_preset=clips.h264_preset,
                    h264_crf=clips.h264_crf,
                )

        return encode

    def cli(length: int) -> Callable[[], None]:
        def encode() -> None:
            for start in range(0, count, length):
                _ffmpeg(ffmpeg, clips, pattern, start, min(length, count - start), output)

        return encode

    measured = {
        "h264": ours("h264", clips.frames),
        "mjpeg": ours("mjpeg", clips.frames),
        "cli": cli(clips.frames),
        "h264 long": ours("h264", count),
        "cli long": cli(count),
    }
    rates = _best_rates(measured, count, QUICK_ROUNDS if ctx.quick else ROUNDS)
    per_clip = (
        f"{clips.frames}-frame clips at {clips.fps:g} fps, {clips.h264_preset} crf {clips.h264_crf}"
    )
    return [
        _row(
            f"h264 frames/s vs ffmpeg CLI ({per_clip})",
            rates["h264"],
            rates["cli"],
            MIN_H264_RATIO,
        ),
        _row(
            f"h264 frames/s vs ffmpeg CLI (one {count}-frame clip)",
            rates["h264 long"],
            rates["cli long"],
            MIN_H264_LONG_RATIO,
        ),
        _row(
            f"mjpeg frames/s vs our h264 ({clips.frames}-frame clips)",
            rates["mjpeg"],
            rates["h264"],
            MIN_MJPEG_RATIO,
        ),
    ]


def _jpeg(index: int, count: int) -> bytes:
    output = io.BytesIO()
    demo_frame(index, count, DEMO_SIZE).save(output, format="JPEG", quality=JPEG_QUALITY)
    return output.getvalue()


def _ffmpeg(
    ffmpeg: str, clips: ClipSettings, pattern: Path, start: int, frames: int, output: Path
) -> None:
    """One clip with the CLI: the settings encode_clip uses, frames read by the image2 demuxer."""
    argv = [ffmpeg, "-nostdin", "-v", "error", "-y", "-framerate", f"{clips.fps:g}"]
    argv += ["-start_number", str(start), "-i", str(pattern), "-frames:v", str(frames)]
    argv += ["-c:v", "libx264", "-preset", clips.h264_preset, "-crf", str(clips.h264_crf)]
    argv += ["-pix_fmt", "yuv420p", "-movflags", MP4_OPTIONS["movflags"], "-f", "mp4", str(output)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"ffmpeg took over {CLI_TIMEOUT:.0f} s for {frames} frames") from None
    if done.returncode != 0:
        raise BenchError(f"ffmpeg failed with status {done.returncode}: {done.stderr.strip()}")


def _best_rates(
    measured: dict[str, Callable[[], None]], frames: int, rounds: int
) -> dict[str, float]:
    """Frames per second of each encoder in its best round; round 0 is the warm-up."""
    best = dict.fromkeys(measured, 0.0)
    for round_number in range(rounds + 1):
        for name, encode in measured.items():
            started = time.perf_counter()
            encode()
            if round_number > 0:
                best[name] = max(best[name], frames / (time.perf_counter() - started))
    return best


def _row(metric: str, value: float, reference: float, target: float | None) -> Row:
    ratio = value / reference
    return Row(
        benchmark=BENCHMARK,
        metric=metric,
        value=value,
        unit="frames/s",
        reference=reference,
        ratio=ratio,
        target="" if target is None else f">= {target:g}x",
        passed=None if target is None else ratio >= target,
    )
