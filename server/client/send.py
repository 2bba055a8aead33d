"""``framehub-send``: the reference client, and the load generator of the benchmarks.

It gets a session id (``GET /get_session_id``), connects over Socket.IO and streams frames from a
video file (decoded with PyAV), a folder of images or a framehub repository URL at a chosen rate,
printing every ``result`` as one JSON line on stdout. At the end it waits for the last results and
prints a summary (frames sent, rejected, dropped, results received) as JSON on stderr.

    framehub-send clip.mp4 --server http://localhost:7466 --fps 10
    framehub-send ./images/ --fps 25
    framehub-send http://localhost:7466/demo --frames 90

With ``--batch FILE`` it uploads a whole video file to ``POST /batch`` instead, streamed from disk
(with a progress bar on stderr for large files when stderr is a terminal), and prints the JSON
answer on stdout: the result, or with ``--no-wait`` the job id to follow at ``GET /batch/ID``.

    framehub-send --batch match.mp4 --processes goal_try,pass_drive
    framehub-send --batch match.mp4 --no-wait

The API token comes from ``--token`` or, kept out of ``ps``, from ``$FRAMEHUB_TOKEN``; ``--token``
wins when both are given.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import mimetypes
import os
import sys
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import socketio

from server.names import is_image_name, natural_key

DEFAULT_SERVER = "http://127.0.0.1:7466"
# The variable holding the API token, which unlike --token does not show in ps.
TOKEN_VARIABLE = "FRAMEHUB_TOKEN"
UPLOAD_CHUNK = 1 << 20
# Files smaller than this upload too fast for a progress bar to be of use.
PROGRESS_MIN_BYTES = 16 << 20
PROGRESS_INTERVAL = 0.2
PROGRESS_WIDTH = 30


@dataclass(slots=True)
class SendReport:
    """What a run of the client did."""

    frames_sent: int = 0
    frames_accepted: int = 0
    frames_rejected: int = 0
    dropped: int = 0
    results: int = 0
    seconds: float = 0.0


def _video_frames(path: Path, quality: int) -> Generator[bytes, None, None]:
    """Decode a video file with PyAV and yield each frame as JPEG bytes (blocking)."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out = io.BytesIO()
            frame.to_image().save(out, format="JPEG", quality=quality)  # type: ignore[no-untyped-call]
            yield out.getvalue()


def _folder_frames(path: Path) -> list[Path]:
    images = [p for p in path.iterdir() if p.is_file() and is_image_name(p.name)]
    return sorted(images, key=lambda p: natural_key(p.name))


async def frames_from(
    source: str, http: aiohttp.ClientSession, limit: int | None, quality: int
) -> AsyncIterator[bytes]:
    """Frames of ``source``: a video file, a folder of images or a repository URL."""
    count = 0
    if source.startswith(("http://", "https://")):
        base = source.rstrip("/")
        async with http.get(base) as resp:
            resp.raise_for_status()
            total = (await resp.json()).get("count", 0)
        wanted = limit if limit is not None else total
        while count < wanted:
            async with http.get(f"{base}/video.jpg") as resp:
                resp.raise_for_status()
                yield await resp.read()
            count += 1
        return
    path = Path(source)
    if await asyncio.to_thread(path.is_dir):
        for image in await asyncio.to_thread(_folder_frames, path):
            if limit is not None and count >= limit:
                return
            yield await asyncio.to_thread(image.read_bytes)
            count += 1
        return
    decoder = _video_frames(path, quality)
    try:
        while limit is None or count < limit:
            frame = await asyncio.to_thread(next, decoder, None)
            if frame is None:
                return
            yield frame
            count += 1
    finally:
        decoder.close()


async def send(
    source: str,
    server: str = DEFAULT_SERVER,
    fps: float = 10.0,
    limit: int | None = None,
    token: str | None = None,
    session_id_name: str = "session_id",
    settle: float = 5.0,
    quality: int = 85,
    out: Any = None,
    camera: str | None = None,
) -> SendReport:
    """Stream ``source`` to ``server`` and collect its results (see the module docstring)."""
    out = out if out is not None else sys.stdout
    report = SendReport()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    last_result = asyncio.Event()
    started = time.monotonic()
    # unsafe=True: keep the cursor cookie of servers addressed by IP, such as 127.0.0.1.
    async with aiohttp.ClientSession(
        headers=headers, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        async with http.get(f"{server.rstrip('/')}/get_session_id") as resp:
            if resp.status != 200:
                raise SystemExit(f"framehub-send: GET /get_session_id: {await resp.text()}")
            session_id = (await resp.json())["session_id"]
        sio = socketio.AsyncClient(reconnection=False)

        async def on_result(message: dict[str, Any]) -> None:
            report.results += 1
            report.dropped += int(message.get("clip", {}).get("dropped", 0))
            print(json.dumps(message), file=out, flush=True)
            last_result.set()

        sio.on("result", on_result)

        auth: dict[str, str] = {session_id_name: session_id}
        if camera:
            auth["camera"] = camera
        if token:
            auth["token"] = token
        await sio.connect(server, auth=auth, transports=["websocket"])
        try:
            interval = 1.0 / fps if fps > 0 else 0.0
            loop = asyncio.get_running_loop()
            next_at = loop.time()
            async for frame in frames_from(source, http, limit, quality):
                ack = await sio.call("process", frame, timeout=30)
                report.frames_sent += 1
                if ack.get("ok"):
                    report.frames_accepted += 1
                else:
                    report.frames_rejected += 1
                    print(json.dumps({"rejected": ack}), file=sys.stderr)
                next_at = max(next_at + interval, loop.time())
                await asyncio.sleep(next_at - loop.time())
            # The last clip is flushed after [clips] max_wait: wait while results keep coming.
            while True:
                last_result.clear()
                try:
                    await asyncio.wait_for(last_result.wait(), settle)
                except TimeoutError:
                    break
        finally:
            await sio.disconnect()
    report.seconds = round(time.monotonic() - started, 3)
    return report


class Progress:
    """A one-line progress bar, redrawn with a carriage return at most every PROGRESS_INTERVAL."""

    def __init__(self, total: int, out: IO[str]) -> None:
        self.total = total
        self.out = out
        self.started = time.monotonic()
        self._drawn_at = 0.0

    def update(self, done: int) -> None:
        """Redraw for ``done`` bytes sent (always at the end, otherwise when due)."""
        now = time.monotonic()
        if done < self.total and now - self._drawn_at < PROGRESS_INTERVAL:
            return
        self._drawn_at = now
        share = done / self.total if self.total else 1.0
        filled = round(share * PROGRESS_WIDTH)
        rate = done / max(now - self.started, 1e-6) / 1e6
        bar = "#" * filled + " " * (PROGRESS_WIDTH - filled)
        line = f"\r[{bar}] {share:4.0%} {done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.0f} MB/s"
        end = "\n" if done >= self.total else ""
        print(line, end=end, file=self.out, flush=True)


async def _file_chunks(path: Path, progress: Progress | None) -> AsyncIterator[bytes]:
    """The file's bytes, read in a worker thread one chunk at a time."""
    sent = 0
    with path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, UPLOAD_CHUNK):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress.update(sent)


async def send_batch(
    path: Path,
    server: str = DEFAULT_SERVER,
    processes: list[str] | None = None,
    wait: bool = True,
    token: str | None = None,
    progress_out: IO[str] | None = None,
) -> tuple[int, Any]:
    """Upload the video at ``path`` to ``POST /batch``; the HTTP status and the JSON answer.

    The progress bar goes to ``progress_out`` when given, otherwise to stderr for large files
    when it is a terminal.
    """
    size = (await asyncio.to_thread(path.stat)).st_size
    if progress_out is None and size >= PROGRESS_MIN_BYTES and sys.stderr.isatty():
        progress_out = sys.stderr
    progress = Progress(size, progress_out) if progress_out is not None else None
    guessed, _ = mimetypes.guess_type(path.name)
    headers = {
        # The server probes the file whatever this says; it only has to be a video/* type.
        "Content-Type": guessed if guessed and guessed.startswith("video/") else "video/mp4",
        # A declared length lets the server refuse an oversized file before it is sent.
        "Content-Length": str(size),
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    params = {"wait": "true" if wait else "false"}
    if processes:
        params["processes"] = ",".join(processes)
    # No total timeout: a long video may take long to analyse with wait=true.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(
            f"{server.rstrip('/')}/batch",
            params=params,
            data=_file_chunks(path, progress),
            headers=headers,
            # Wait for "100 Continue": a refused upload (token, size, name) costs no transfer.
            expect100=True,
        ) as resp,
    ):
        try:
            answer = await resp.json(content_type=None)
        except ValueError:
            answer = {"error": (await resp.text())[:500]}
        return resp.status, answer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="framehub-send", description="Stream frames to a framehub server over Socket.IO."
    )
    parser.add_argument(
        "source", nargs="?", help="a video file, a folder of images or a repository URL"
    )
    parser.add_argument(
        "--batch", type=Path, metavar="FILE", help="upload FILE whole to POST /batch instead"
    )
    parser.add_argument(
        "--processes", help="with --batch: the processors to use, comma-separated (default all)"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="with --batch: print the job id at once instead of waiting for the result",
    )
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"default {DEFAULT_SERVER}")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second (0: no pause)")
    parser.add_argument("--frames", type=int, help="stop after this many frames")
    parser.add_argument(
        "--token",
        help=f"API token, when the server has one (default ${TOKEN_VARIABLE}, hidden from ps)",
    )
    parser.add_argument("--camera", help="the live camera name to stream as (default: generated)")
    parser.add_argument("--session-id-name", default="session_id")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds to wait for late results (default 5)"
    )
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality for video frames")
    args = parser.parse_args(argv)
    if args.token is None:
        args.token = os.environ.get(TOKEN_VARIABLE) or None
    if (args.source is None) == (args.batch is None):
        parser.error("give either a SOURCE to stream or --batch FILE")
    if args.batch is None and (args.processes or args.no_wait):
        parser.error("--processes and --no-wait go with --batch")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``framehub-send`` and ``python -m server.client``."""
    args = parse_args(argv)
    if args.batch is not None:
        return _main_batch(args)
    report = asyncio.run(
        send(
            args.source,
            server=args.server,
            fps=args.fps,
            limit=args.frames,
            token=args.token,
            session_id_name=args.session_id_name,
            settle=args.settle,
            quality=args.quality,
            camera=args.camera,
        )
    )
    print(json.dumps(asdict(report)), file=sys.stderr)
    return 0


def _main_batch(args: argparse.Namespace) -> int:
    """``--batch FILE``: the answer on stdout; exit status 1 when the server refused or failed."""
    if not args.batch.is_file():
        print(f"framehub-send: {args.batch}: no such file", file=sys.stderr)
        return 2
    processes = [name.strip() for name in args.processes.split(",")] if args.processes else None
    try:
        status, answer = asyncio.run(
            send_batch(
                args.batch,
                server=args.server,
                processes=processes,
                wait=not args.no_wait,
                token=args.token,
            )
        )
    except aiohttp.ClientError as exc:
        print(f"framehub-send: POST {args.server.rstrip('/')}/batch: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0 if status < 400 else 1


if __name__ == "__main__":
    raise SystemExit(main())
