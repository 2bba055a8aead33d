"""The MJPEG viewers of ``bench/live.py``, in a process of their own so they do not share its GIL.

``python -m bench._live_viewers URL --viewers N --timeout S`` opens ``N`` streams ``GET URL`` (a
live camera's ``video.mjpg``) on one aiohttp ``ClientSession`` and reads them part by part: the
part's headers up to the blank line, then exactly ``Content-Length`` bytes. Each frame the camera
sends carries its serial number in a JPEG comment segment (:func:`tag_frame`); a viewer notes the
serial of every part it gets (:func:`frame_serial`), so counting needs no clock shared between
processes. Once every viewer has its first part the process prints ``ready``; it then waits for
one line ``FIRST LAST`` on stdin and answers with one JSON line ``{"received": [...]}``: per
viewer, how many frames with a serial from FIRST to LAST it received. Everything ends after
``--timeout`` seconds at the latest (exit status 1). The leading underscore keeps
``python -m bench`` from running it as a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from dataclasses import dataclass, field

import aiohttp

# A JPEG comment segment (COM): marker, then a 2-byte length that counts itself.
_JPEG_COM = b"\xff\xfe"
_TAG = b"framehub-bench serial "
_CONTENT_LENGTH = re.compile(rb"Content-Length: (\d+)", re.IGNORECASE)
_PART_END = b"\r\n"
# A part's headers are a boundary line and two headers; more means the stream is not ours.
MAX_HEADER_BYTES = 1024
CONNECT_TIMEOUT = 10.0
# A viewer hearing nothing for this long has lost its stream (the camera sends 30 a second).
READ_TIMEOUT = 10.0


def tag_frame(jpeg: bytes, serial: int) -> bytes:
    """``jpeg`` with a comment segment carrying ``serial`` right after its start-of-image marker."""
    text = _TAG + str(serial).encode()
    return jpeg[:2] + _JPEG_COM + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def frame_serial(jpeg: bytes) -> int | None:
    """The serial :func:`tag_frame` put into ``jpeg``, or None for a frame without one."""
    if jpeg[2:4] != _JPEG_COM:
        return None
    text = jpeg[6 : 4 + int.from_bytes(jpeg[4:6], "big")]
    if not text.startswith(_TAG):
        return None
    return int(text[len(_TAG) :])


@dataclass(slots=True)
class Viewer:
    """One MJPEG stream: the serials of the frames it got, in order."""

    serials: list[int] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def watch(self, http: aiohttp.ClientSession, url: str) -> None:
        """Read parts of ``url`` until cancelled; an error status or a stream that ends raises."""
        async with http.get(url) as response:
            if response.status != 200:
                raise RuntimeError(f"GET {url} answered {response.status}: {await response.text()}")
            content = response.content
            while True:
                headers = await content.readuntil(b"\r\n\r\n", max_size=MAX_HEADER_BYTES)
                length = _CONTENT_LENGTH.search(headers)
                if length is None:
                    raise RuntimeError(f"an MJPEG part without Content-Length: {headers!r}")
                part = await content.readexactly(int(length.group(1)) + len(_PART_END))
                serial = frame_serial(part)
                if serial is not None:  # None: the placeholder, or a frame sent before the tags
                    self.serials.append(serial)
                self.started.set()

    def received(self, first: int, last: int) -> int:
        """Frames with a serial from ``first`` to ``last`` this viewer got, each counted once."""
        return len({serial for serial in self.serials if first <= serial <= last})


async def watch_until_told(url: str, count: int) -> dict[str, object]:
    """``count`` viewers of ``url``: ``ready`` once all stream, the counts once stdin says."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
    # No pool limit: every viewer holds its own connection for the whole run.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        viewers = [Viewer() for _ in range(count)]
        tasks = [asyncio.create_task(viewer.watch(http, url)) for viewer in viewers]
        everyone = asyncio.create_task(_all_started(viewers))
        try:
            await asyncio.wait([everyone, *tasks], return_when=asyncio.FIRST_COMPLETED)
            _raise_if_failed(tasks)
            print("ready", flush=True)
            command = await stdin.readline()
            _raise_if_failed(tasks)
        finally:
            for task in [everyone, *tasks]:
                task.cancel()
            await asyncio.gather(everyone, *tasks, return_exceptions=True)
    if not command.strip():
        raise RuntimeError("stdin closed before the stop line")
    first, last = (int(word) for word in command.split())
    return {"received": [viewer.received(first, last) for viewer in viewers]}


async def _all_started(viewers: list[Viewer]) -> None:
    await asyncio.gather(*(viewer.started.wait() for viewer in viewers))


def _raise_if_failed(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done():
            task.result()  # a viewer's own error
            raise RuntimeError("an MJPEG stream ended while the camera was streaming")


def main(argv: list[str] | None = None) -> int:
    """Run the viewers; 1 when a stream fails or the time limit passes."""
    parser = argparse.ArgumentParser(prog="python -m bench._live_viewers")
    parser.add_argument("url", help="the video.mjpg URL to watch")
    parser.add_argument("--viewers", type=int, required=True, help="streams to open")
    parser.add_argument("--timeout", type=float, required=True, help="seconds before giving up")
    args = parser.parse_args(argv)
    try:
        answer = asyncio.run(
            asyncio.wait_for(watch_until_told(args.url, args.viewers), args.timeout)
        )
    except TimeoutError:
        print(f"viewers: no stop within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, RuntimeError, asyncio.IncompleteReadError) as exc:
        print(f"viewers: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
