"""The third parties framehub talks to, as real aiohttp applications on loopback ports.

:class:`TarSource` is the archive server of ``[repositories] source_url``; :class:`ClipApi` is
the one analysis API, for live clips and batch videos alike: it records every file it receives
and what PyAV decodes from it, and can be told to fail. Both are served by ``aiohttp_server``
(see the ``tar_source`` and ``clip_api`` fixtures), in the manner of aiohttp's
``examples/fake_server.py``. :func:`free_port` is the one way tests pick a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import BodyPartReader, web

from common import LIVE_TIMEOUT, Images, Size, decode_clip, until


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bound, then closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TarSource:
    """A real archive server on a loopback port: the ``[repositories] source_url`` of tests.

    ``archives`` maps file names (``cam.tar``) to bodies; any other name answers 404. Every request
    is recorded in ``requests``. ``delay`` holds each answer back that many seconds; an event in
    ``gates`` (see :meth:`gate`) sends half the body, then waits for the event before the rest;
    ``chunked`` sends bodies without a Content-Length.
    """

    def __init__(self) -> None:
        self.archives: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.delay = 0.0
        self.chunked = False
        self.gates: dict[str, asyncio.Event] = {}
        self.url = ""
        self._closing = asyncio.Event()

    def app(self) -> web.Application:
        """The source as an aiohttp application."""
        app = web.Application()
        app.router.add_get("/{file}", self._serve)
        return app

    def gate(self, file: str) -> asyncio.Event:
        """Hold the second half of ``file`` back until the returned event is set."""
        return self.gates.setdefault(file, asyncio.Event())

    def release(self) -> None:
        """Let every held answer finish (called when the test ends)."""
        self._closing.set()
        for event in self.gates.values():
            event.set()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        file = request.match_info["file"]
        self.requests.append(file)
        if self.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.delay)
        body = self.archives.get(file)
        if body is None:
            raise web.HTTPNotFound(text=f"no {file} here")
        gate = self.gates.get(file)
        if gate is None and not self.chunked:
            return web.Response(body=body, content_type="application/x-tar")
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        if self.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(body)
        await response.prepare(request)
        half = len(body) // 2
        await response.write(body[:half])
        if gate is not None:
            await gate.wait()
        await response.write(body[half:])
        await response.write_eof()
        return response


@dataclass(slots=True)
class ReceivedClip:
    """One request an analysis API got, and what PyAV decoded from its file."""

    field: str | None
    filename: str | None
    content_type: str | None
    headers: dict[str, str]
    data: bytes
    frames: int
    size: Size | None
    codec: str | None
    colours: list[tuple[float, float, float]]

    @property
    def clip_id(self) -> int:
        """The clip's number in its session, from the file name framehub gives it."""
        assert self.filename is not None
        return int(self.filename.removesuffix(".mp4").rsplit("-", 1)[1])

    @property
    def frame_numbers(self) -> list[int]:
        """The numbers of the frames decoded from the clip, told by their colour (see Images)."""
        return [Images.number(colour) for colour in self.colours]


class ClipApi:
    """A real analysis API on a loopback port: it decodes every file it gets and answers JSON.

    It takes a multipart body (the file in its first part) or a raw one, a live clip or a batch
    video. The answer is ``{"api", "frames", "width", "height", "codec", "filename"}`` of the
    decoded file. Faults are scripted: ``failures`` lists ``(status, headers)`` answers given, one
    per request, before answering normally; ``delay`` holds every answer back; while ``gate`` is
    clear, answers wait for it; ``body`` (bytes) replaces the JSON answer, sent without a
    Content-Length when ``chunked``. ``requests`` counts every request; ``clips`` holds what was
    received, in arrival order (two clips of a session may be in flight at once, so they can
    arrive out of order; ``ReceivedClip.clip_id`` tells their order).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = ""
        self.requests = 0
        self.clips: list[ReceivedClip] = []
        self.failures: list[tuple[int, dict[str, str]]] = []
        self.delay = 0.0
        self.body: bytes | None = None
        self.chunked = False
        self.gate = asyncio.Event()
        self.gate.set()
        self._released = asyncio.Event()

    def app(self) -> web.Application:
        """The API as an aiohttp application."""
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/analyse", self._analyse)
        return app

    def release(self) -> None:
        """Let every held answer go (called when the test ends)."""
        self._released.set()
        self.gate.set()

    def frame_numbers(self) -> list[list[int]]:
        """The live frame numbers decoded from each clip received, in clip order."""
        return [clip.frame_numbers for clip in sorted(self.clips, key=lambda c: c.clip_id)]

    async def until_clips(self, count: int, seconds: float = LIVE_TIMEOUT) -> list[ReceivedClip]:
        """Wait until ``count`` clips have arrived; the clips."""
        await until(lambda: len(self.clips) >= count, f"{count} clips at API {self.name}", seconds)
        return self.clips

    async def _analyse(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        field = filename = content_type = None
        data = b""
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            part = await reader.next()
            if isinstance(part, BodyPartReader):
                field, filename = part.name, part.filename
                content_type = part.headers.get("Content-Type")
                data = bytes(await part.read())
        else:
            data = await request.read()
        frames, size, codec, colours = await asyncio.to_thread(decode_clip, data)
        self.clips.append(
            ReceivedClip(
                field,
                filename,
                content_type,
                dict(request.headers),
                data,
                frames,
                size,
                codec,
                colours,
            )
        )
        await self.gate.wait()
        if self.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), self.delay)
        if self.failures:
            status, headers = self.failures.pop(0)
            return web.json_response(
                {"error": f"scripted {status}"}, status=status, headers=headers
            )
        if self.body is not None and self.chunked:
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(self.body), 1 << 16):
                await response.write(self.body[start : start + (1 << 16)])
            await response.write_eof()
            return response
        if self.body is not None:
            return web.Response(body=self.body, content_type="text/plain")
        width, height = size or (0, 0)
        return web.json_response(
            {
                "api": self.name,
                "frames": frames,
                "width": width,
                "height": height,
                "codec": codec,
                "filename": filename,
            }
        )


ClipApiFactory = Callable[[str], Awaitable[ClipApi]]
