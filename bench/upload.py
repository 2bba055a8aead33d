"""Batch uploads' speed and memory (issue 4): a 500 MB video into ``POST /batch`` over loopback.

A valid 500 MB MP4 is written with PyAV into the temp folder (one 1920x1080 MJPEG frame of noise,
encoded once and muxed over and over, so it takes seconds). Four servers run side by side: the
reference, a bare aiohttp handler that streams a body to disk with plain writes (this module, run
as ``python -m bench.upload reference PORT DIR``); framehub with no processors, so that
``POST /batch?wait=false`` measures the upload and the check alone; the sink APIs (the same
module, ``/sink/NAME``), which read an upload and keep nothing; and framehub with two processors
pointing at them.

The client sends the file with ``socket.sendfile`` and a declared length, so that the servers, not
the client, set the pace. Upload speed is the file's size over the time until the last byte is
taken by the server; the rows also give the time until the answer (with the check for framehub).
After a warm-up, framehub and the reference get ``RUNS`` uploads in pairs, back to back; the ratio
is the median of the pairs' ratios, as other work on the machine scatters single figures.
framehub's memory is read from ``/proc/PID/status``: the peak (VmHWM, reset through
``/proc/PID/clear_refs`` before each upload where the kernel allows) less the resident memory just
before. The probe runs in a child process, which is not counted, by design.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiohttp import BodyPartReader, web
from PIL import Image

from bench.common import (
    LOOPBACK,
    MB,
    PROJECT_ROOT,
    BenchContext,
    BenchError,
    Row,
    Server,
    free_port,
    memory_use,
    start_framehub,
    start_process,
)

BENCHMARK = "upload"
VIDEO_BYTES = 500 * MB
QUICK_VIDEO_BYTES = 100 * MB
FRAME_SIZE = (1920, 1080)
FPS = 25
RUNS = 5
QUICK_RUNS = 1
UPLOAD_TIMEOUT = 300.0
# Targets of issue 4.
MIN_RATIO = 0.8
MAX_RSS_GROWTH = 50 * MB
SINK_CHUNK = 1 << 20
# The read size of the reference: iter_chunked takes what is buffered up to this, which measured
# faster than readany (one network chunk per call).
REFERENCE_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Upload:
    """One upload: its size, seconds until the body was sent and until the answer, the answer."""

    size: int
    sent: float
    answered: float
    status: int
    answer: Any


@dataclass(frozen=True, slots=True)
class Measured:
    """Pairs of uploads, the reference's and framehub's back to back, and framehub's memory."""

    reference: list[Upload]
    framehub: list[Upload]
    rss_growth: int

    @staticmethod
    def rate(uploads: list[Upload], answered: bool = False) -> float:
        """Median MB/s until the body was taken, or until the answer."""
        return (
            statistics.median(u.size / (u.answered if answered else u.sent) for u in uploads) / MB
        )

    def ratio(self, answered: bool = False) -> float:
        """Median of framehub's speed over the reference's, pair by pair: load from other work
        on the machine drifts slowly, so it mostly cancels out within a pair."""
        return statistics.median(
            (ref.answered if answered else ref.sent) / (ours.answered if answered else ours.sent)
            for ref, ours in zip(self.reference, self.framehub, strict=True)
        )


def run(ctx: BenchContext) -> list[Row]:
    """Measure the reference and framehub on the same file, in turns, then the fan-out."""
    video = ctx.tmp / "video.mp4"
    warm_up = ctx.tmp / "warm-up.mp4"
    try:
        size = write_video(video, QUICK_VIDEO_BYTES if ctx.quick else VIDEO_BYTES)
        write_video(warm_up, 2 * MB)
        return measure(ctx, video, warm_up, size)
    finally:
        video.unlink(missing_ok=True)
        warm_up.unlink(missing_ok=True)


def measure(ctx: BenchContext, video: Path, warm_up: Path, size: int) -> list[Row]:
    runs = QUICK_RUNS if ctx.quick else RUNS
    big = {"max_bytes": 2 * size, "probe_timeout": 120}
    with (
        start_reference(ctx, "reference") as reference,
        start_reference(ctx, "sinks") as sinks,
        start_framehub(ctx, "framehub", {"batch": big}) as framehub,
        start_framehub(
            ctx,
            "fanout",
            {
                "batch": big,
                "processors.sink_a": {"url": sinks.url("/sink/a"), "timeout": UPLOAD_TIMEOUT},
                "processors.sink_b": {"url": sinks.url("/sink/b"), "timeout": UPLOAD_TIMEOUT},
            },
        ) as fanout,
    ):
        # Warm-up: imports, the probe's first start, the page cache of the file.
        for server, target in ((reference, "/upload"), (framehub, "/batch?wait=false")):
            for path in (warm_up, video):
                check(send(server, target, path), 200 if server is reference else 202)
        reference_uploads: list[Upload] = []
        framehub_uploads: list[Upload] = []
        growth = 0
        for run_index in range(runs):

            def ours() -> Upload:
                return send(framehub, "/batch?wait=false", video)

            # Who goes first alternates, so that neither always follows the other's clean-up.
            if run_index % 2:
                upload, grown = with_memory(framehub, ours)
                reference_uploads.append(check(send(reference, "/upload", video), 200))
            else:
                reference_uploads.append(check(send(reference, "/upload", video), 200))
                upload, grown = with_memory(framehub, ours)
            framehub_uploads.append(check(upload, 202))
            growth = max(growth, grown)
        fanned, fanout_growth = with_memory(fanout, lambda: send(fanout, "/batch", video))
        check(fanned, 200)
        leftovers = len(list((ctx.tmp / "framehub" / "state" / "uploads").iterdir()))
    measured = Measured(reference_uploads, framehub_uploads, growth)
    return rows(measured, fanned, fanout_growth, size, leftovers)


def rows(
    measured: Measured, fanned: Upload, fanout_growth: int, size: int, leftovers: int
) -> list[Row]:
    ratio = measured.ratio()
    sinks = fanned.answer.get("result", {})
    complete = [name for name, answer in sinks.items() if answer.get("bytes") == size]
    return [
        Row(
            BENCHMARK,
            f"upload {size / MB:.0f} MB, body taken (ratio: median of pairs)",
            Measured.rate(measured.framehub),
            "MB/s",
            reference=Measured.rate(measured.reference),
            ratio=ratio,
            target=f">= {MIN_RATIO:g}x bare aiohttp",
            passed=ratio >= MIN_RATIO,
        ),
        Row(
            BENCHMARK,
            "upload until answered, framehub + check (ratio: median of pairs)",
            Measured.rate(measured.framehub, answered=True),
            "MB/s",
            reference=Measured.rate(measured.reference, answered=True),
            ratio=measured.ratio(answered=True),
        ),
        Row(
            BENCHMARK,
            "peak RSS growth, upload",
            measured.rss_growth / MB,
            "MB",
            target=f"< {MAX_RSS_GROWTH / MB:g} MB",
            passed=measured.rss_growth < MAX_RSS_GROWTH,
        ),
        Row(
            BENCHMARK,
            "upload + fan-out to 2 sinks, until answered",
            size / fanned.answered / MB,
            "MB/s",
        ),
        Row(
            BENCHMARK,
            "sinks that got the whole file",
            len(complete),
            "APIs",
            target="2",
            passed=len(complete) == 2,
        ),
        Row(
            BENCHMARK,
            "peak RSS growth, upload + fan-out",
            fanout_growth / MB,
            "MB",
            target=f"< {MAX_RSS_GROWTH / MB:g} MB",
            passed=fanout_growth < MAX_RSS_GROWTH,
        ),
        Row(
            BENCHMARK,
            "temp files left in uploads/",
            leftovers,
            "files",
            target="0",
            passed=leftovers == 0,
        ),
    ]


def write_video(path: Path, target_bytes: int) -> int:
    """A valid MJPEG MP4 of about ``target_bytes``: one frame of noise muxed over and over."""
    width, height = FRAME_SIZE
    image = Image.frombytes("RGB", FRAME_SIZE, os.urandom(width * height * 3))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=FPS)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p"
        stream.codec_context.qmin = stream.codec_context.qmax = 2
        frame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
        data = bytes(stream.encode(frame)[0])
        for index in range(max(target_bytes // len(data), 1)):
            packet = av.Packet(data)
            packet.stream = stream
            packet.time_base = Fraction(1, FPS)
            packet.pts = packet.dts = index
            packet.duration = 1
            packet.is_keyframe = True
            container.mux(packet)
    return path.stat().st_size


@contextlib.contextmanager
def start_reference(ctx: BenchContext, name: str) -> Iterator[Server]:
    """This module's bare aiohttp app (``/upload`` and ``/sink/NAME``) on a free port."""
    folder = ctx.tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(ctx.python), "-m", "bench.upload", "reference", str(port), str(folder)]
    with start_process(argv, port, folder / "server.log", cwd=PROJECT_ROOT) as server:
        yield server


def send(server: Server, target: str, path: Path) -> Upload:
    """POST ``path`` with ``socket.sendfile`` and a declared length; times and the JSON answer."""
    size = path.stat().st_size
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {LOOPBACK}:{server.port}\r\n"
        f"Content-Type: video/mp4\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    with (
        socket.create_connection((LOOPBACK, server.port), timeout=UPLOAD_TIMEOUT) as sock,
        path.open("rb") as body,
    ):
        started = time.perf_counter()
        sock.sendall(head.encode())
        sock.sendfile(body)
        sent = time.perf_counter() - started
        response = http.client.HTTPResponse(sock)
        response.begin()
        raw = response.read()
        answered = time.perf_counter() - started
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {"error": raw[:200].decode(errors="replace")}
    return Upload(size, sent, answered, response.status, answer)


def check(upload: Upload, status: int) -> Upload:
    """``upload`` if it got ``status``; otherwise the benchmark cannot go on."""
    if upload.status != status:
        raise BenchError(f"upload answered {upload.status}, not {status}: {upload.answer}")
    return upload


def with_memory(server: Server, action: Any) -> tuple[Upload, int]:
    """Run ``action``; how far the server's resident memory rose above where it was before."""
    reset_peak(server.pid)
    before = memory_use(server.pid).rss
    upload: Upload = action()
    return upload, max(memory_use(server.pid).peak - before, 0)


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux 4.0+); without it the growth read is an upper bound."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


# The reference and the sinks: ``python -m bench.upload reference PORT DIR``.


async def _bare_upload(request: web.Request) -> web.Response:
    """The bare handler: the body streamed into a file with plain writes, then removed."""
    path = request.app[_FOLDER] / f"upload-{secrets.token_hex(8)}"
    size = 0
    # Plain blocking writes: the plainest handler is the reference.
    with path.open("wb") as file:
        async for chunk in request.content.iter_chunked(REFERENCE_CHUNK):
            file.write(chunk)
            size += len(chunk)
    path.unlink()
    return web.json_response({"bytes": size})


async def _sink(request: web.Request) -> web.Response:
    """An analysis API that reads a multipart upload and keeps nothing of it."""
    size = 0
    reader = await request.multipart()
    async for part in reader:
        if isinstance(part, BodyPartReader):
            while chunk := await part.read_chunk(SINK_CHUNK):
                size += len(chunk)
    return web.json_response({"bytes": size, "api": request.match_info["name"]})


_FOLDER = web.AppKey("folder", Path)


def _serve_reference(port: int, folder: Path) -> None:
    app = web.Application()
    app[_FOLDER] = folder
    app.router.add_post("/upload", _bare_upload)
    app.router.add_post("/sink/{name}", _sink)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the reference server."""
    parser = argparse.ArgumentParser(prog="python -m bench.upload")
    parser.add_argument("mode", choices=["reference"])
    parser.add_argument("port", type=int)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    _serve_reference(args.port, args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
