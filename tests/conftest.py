"""Shared fixtures: settings in a temporary folder, images and tar archives made on the fly, a real
archive source on a loopback port, and framehub apps behind real test servers.

Everything here is a real part: images come from Pillow, archives from :mod:`tarfile`, the source
is an aiohttp ``web.Application`` and framehub is built by ``server.app.create_app``. Fixtures that
make things return small helper objects; test modules import those classes only for type hints
(``if TYPE_CHECKING: from conftest import ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import socket
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
import socketio
from aiohttp import BodyPartReader, web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image, ImageDraw, ImageStat
from pytest_aiohttp import AiohttpClient, AiohttpServer

from server.app import create_app
from server.keys import metrics_key, session_registry_key, settings_key
from server.live.sessions import SessionRegistry
from server.settings import Settings, settings_from_mapping

IMAGE_SIZE = (64, 48)
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}

FramehubClient = TestClient[web.Request, web.Application]
# A tar member: (name, bytes) for a regular file, or a ready TarInfo without data (folders, links,
# devices).
Member = tuple[str, bytes] | tarfile.TarInfo


def pytest_configure(config: pytest.Config) -> None:
    """Let third-party warnings we cannot fix through ``filterwarnings = error``."""
    # aiohttp-session keeps its storage under plain string request keys, which aiohttp 3.14 warns
    # about (NotAppKeyWarning) once per process, inside whichever test first touches a session.
    config.addinivalue_line(
        "filterwarnings", "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"
    )


class SettingsFactory:
    """Builds checked :class:`Settings` for a test, with state kept under ``tmp_path``.

    ``make_settings(repositories={"source_url": url}, camera={...})`` takes one mapping per TOML
    table; the given keys replace the test defaults below, which keep tests fast and offline.
    """

    DEFAULTS: Mapping[str, Mapping[str, Any]] = {
        "server": {"state_dir": "state"},
        "repositories": {"create_demo": False},
    }

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir

    def __call__(self, **tables: Mapping[str, Any]) -> Settings:
        data = {name: dict(values) for name, values in self.DEFAULTS.items()}
        for name, values in tables.items():
            data.setdefault(name, {}).update(values)
        return settings_from_mapping(data, base_dir=self.base_dir)


class Images:
    """Small distinct images made with Pillow, folders of them and tar archives of them."""

    size = IMAGE_SIZE

    def encode(self, index: int = 0, image_format: str = "JPEG") -> bytes:
        """Image number ``index`` (each index has its own colour) in ``image_format``."""
        colour = ((index * 67) % 256, (index * 131 + 40) % 256, (index * 29 + 80) % 256)
        out = io.BytesIO()
        Image.new("RGB", self.size, colour).save(out, format=image_format)
        return out.getvalue()

    def for_name(self, name: str, index: int = 0) -> bytes:
        """Image number ``index`` in the format its file name asks for (``.png`` gives PNG)."""
        return self.encode(index, _FORMATS[Path(name).suffix.lower()])

    def members(self, names: Iterable[str]) -> list[tuple[str, bytes]]:
        """Tar members holding one image per name, numbered in the given order."""
        return [(name, self.for_name(name, index)) for index, name in enumerate(names)]

    def folder(self, path: Path, names: Iterable[str]) -> Path:
        """Write one image per name into the folder ``path`` (created if needed)."""
        path.mkdir(parents=True, exist_ok=True)
        for name, data in self.members(names):
            (path / name).write_bytes(data)
        return path

    @staticmethod
    def tar(members: Iterable[Member], *, gzip: bool = False) -> bytes:
        """A tar archive (gzip-compressed if asked) of ``members``, in order."""
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz" if gzip else "w") as archive:
            for member in members:
                if isinstance(member, tarfile.TarInfo):
                    archive.addfile(member)
                    continue
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 1_700_000_000
                archive.addfile(info, io.BytesIO(data))
        return out.getvalue()


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


class Framehub:
    """framehub apps from ``create_app``, each behind a real test server with its own cookie jar."""

    def __init__(self, aiohttp_client: AiohttpClient) -> None:
        self._aiohttp_client = aiohttp_client

    async def client(self, settings: Settings) -> FramehubClient:
        """A client of a new framehub app for ``settings`` (closed when the test ends)."""
        return await self._aiohttp_client(create_app(settings))

    @staticmethod
    async def settled(client: FramehubClient, name: str, seconds: float = 5.0) -> dict[str, Any]:
        """``GET /{name}`` until the repository is no longer preparing; its last description."""
        info: dict[str, Any] = {}
        try:
            async with asyncio.timeout(seconds):
                while True:
                    async with client.get(f"/{name}") as resp:
                        assert resp.status == 200, await resp.text()
                        info = await resp.json()
                    if info["status"] != "preparing":
                        return info
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pytest.fail(f"repository {name!r} still preparing after {seconds} s: {info}")

    @staticmethod
    def assert_nothing_left(settings: Settings, name: str) -> None:
        """Neither repository ``name`` nor any download work folder is on disk."""
        root = settings.repositories_dir
        assert not (root / name).exists()
        incoming = root / ".incoming"
        assert not incoming.exists() or not any(incoming.iterdir())

    @staticmethod
    async def until(condition: Callable[[], object], what: str, seconds: float = 5.0) -> None:
        """Wait until ``condition()`` is true, polling; fail the test after ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                while True:
                    if condition():
                        return
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pytest.fail(f"{what}: not within {seconds} s")


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings with state under ``tmp_path``; pass tables to override (see SettingsFactory)."""
    return SettingsFactory(tmp_path)


@pytest.fixture
def images() -> Images:
    """Maker of small Pillow images, image folders and tar archives."""
    return Images()


@pytest.fixture
async def tar_source(aiohttp_server: AiohttpServer) -> AsyncIterator[TarSource]:
    """An empty archive source serving on a loopback port; fill ``archives`` in the test."""
    source = TarSource()
    server = await aiohttp_server(source.app())
    source.url = str(server.make_url("/"))
    yield source
    source.release()


@pytest.fixture
def framehub(aiohttp_client: AiohttpClient) -> Framehub:
    """Starts framehub apps for given settings and waits on their repositories."""
    return Framehub(aiohttp_client)


# Live ingest ------------------------------------------------------------------------------------
# framehub on a known loopback port (so that processor URLs such as "/analyze/summary" reach it),
# real python-socketio clients that record what the server sends them, frames made with Pillow and
# analysis APIs that decode every clip they receive with PyAV.

LIVE_TIMEOUT = 10.0
LIVE_FRAME_SIZE = (64, 48)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bound, then closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveFrames:
    """Live frames made with Pillow: frame ``index`` is one plain colour that tells its number."""

    size = LIVE_FRAME_SIZE

    @staticmethod
    def colour(index: int) -> tuple[int, int, int]:
        """The colour of frame ``index`` (25 colours, then again)."""
        return (5 + 10 * (index % 25), 120 + (index * 37) % 100, 200 - (index * 53) % 100)

    @classmethod
    def number(cls, colour: Sequence[float]) -> int:
        """The frame number (modulo 25) whose colour is nearest to a decoded ``colour``.

        The 25 colours are at least 33 apart, far more than what a codec changes.
        """
        return min(range(25), key=lambda index: math.dist(colour, cls.colour(index)))

    def encode(
        self, index: int = 0, image_format: str = "JPEG", size: tuple[int, int] | None = None
    ) -> bytes:
        """Frame ``index`` as a file in ``image_format`` (JPEG, PNG, WEBP, GIF...)."""
        out = io.BytesIO()
        Image.new("RGB", size or self.size, self.colour(index)).save(out, format=image_format)
        return out.getvalue()

    def detailed(self, index: int, size: tuple[int, int]) -> bytes:
        """A JPEG with gradients and a moving square, costlier to encode than a plain colour."""
        width, height = size
        image = Image.linear_gradient("L").resize(size).convert("RGB")
        x = (index * 8) % max(1, width - 40)
        ImageDraw.Draw(image).rectangle([x, height // 3, x + 40, height // 3 + 40], fill="red")
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()


@dataclass(slots=True)
class ReceivedClip:
    """One request an analysis API got, and what PyAV decoded from its file."""

    field: str | None
    filename: str | None
    content_type: str | None
    headers: dict[str, str]
    data: bytes
    frames: int
    size: tuple[int, int] | None
    codec: str | None
    colours: list[tuple[float, float, float]]

    @property
    def clip_id(self) -> int:
        """The clip's number in its session, from the file name framehub gives it."""
        assert self.filename is not None
        return int(self.filename.removesuffix(".mp4").rsplit("-", 1)[1])

    @property
    def frame_numbers(self) -> list[int]:
        """The numbers of the live frames decoded from the clip, told by their colour."""
        return [LiveFrames.number(colour) for colour in self.colours]


def decode_clip(data: bytes) -> tuple[int, tuple[int, int] | None, str | None, list[Any]]:
    """Frame count, size, codec and each frame's mean RGB colour of an MP4 clip, decoded by PyAV."""
    colours: list[tuple[float, float, float]] = []
    size: tuple[int, int] | None = None
    codec: str | None = None
    try:
        with av.open(io.BytesIO(data), "r", format="mp4") as container:
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            for frame in container.decode(stream):
                size = (frame.width, frame.height)
                small = frame.reformat(8, 6, "rgb24")
                picture: Image.Image = small.to_image()  # type: ignore[no-untyped-call]
                red, green, blue = ImageStat.Stat(picture).mean
                colours.append((red, green, blue))
    except (av.FFmpegError, IndexError):
        return 0, None, None, []
    return len(colours), size, codec, colours


class ClipApi:
    """A real analysis API on a loopback port: it decodes every clip it gets and answers JSON.

    The answer is ``{"api", "frames", "width", "height", "codec", "filename"}`` of the decoded
    clip. Faults are scripted: ``failures`` lists ``(status, headers)`` answers given, one per
    request, before answering normally; ``delay`` holds every answer back; while ``gate`` is
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
        await Framehub.until(
            lambda: len(self.clips) >= count, f"{count} clips at API {self.name}", seconds
        )
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


@pytest.fixture
async def clip_api(aiohttp_server: AiohttpServer) -> AsyncIterator[ClipApiFactory]:
    """``await clip_api("name")``: a new :class:`ClipApi` serving at ``api.url`` on loopback."""
    made: list[ClipApi] = []

    async def start(name: str) -> ClipApi:
        api = ClipApi(name)
        server = await aiohttp_server(api.app())
        api.url = str(server.make_url("/analyse"))
        made.append(api)
        return api

    yield start
    for api in made:
        api.release()


@pytest.fixture
def refused_url() -> str:
    """The URL of an analysis API that refuses connections: its port was bound, then closed."""
    return f"http://127.0.0.1:{free_port()}/analyse"


class LiveClient:
    """A real ``socketio.AsyncClient`` that records the events the server sends it.

    ``results`` holds the ``result`` events, ``events[name]`` the others (``session``, ``test``),
    ``connect_errors`` the reasons of refused connections, all in arrival order.
    """

    def __init__(self) -> None:
        self.sio: Any = socketio.AsyncClient(reconnection=False)
        self.results: list[dict[str, Any]] = []
        self.events: dict[str, list[Any]] = {"session": [], "test": []}
        self.connect_errors: list[Any] = []
        self.sio.on("result", self._on_result)
        self.sio.on("connect_error", self.connect_errors.append)
        for name, received in self.events.items():
            self.sio.on(name, received.append)

    async def _on_result(self, message: dict[str, Any]) -> None:
        self.results.append(message)

    async def process(self, frame: Any) -> dict[str, Any]:
        """Send one ``process`` event and return its acknowledgement."""
        ack: dict[str, Any] = await self.sio.call("process", frame, timeout=LIVE_TIMEOUT)
        return ack

    async def until_results(
        self, count: int, seconds: float = LIVE_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` results have arrived; all results so far."""
        await Framehub.until(lambda: len(self.results) >= count, f"{count} results", seconds)
        return self.results

    async def disconnect(self) -> None:
        """Leave, if connected."""
        if not self.sio.connected:
            return
        if self.sio.transport() == "websocket":
            await self.sio.disconnect()
            return
        # Over long polling, python-engineio's client waits for its pending GET, which the server
        # holds for up to its ping interval (25 s). Abort instead: the server still gets the close
        # packet, and the poll ends as the client's HTTP session closes.
        read_loop = self.sio.eio.read_loop_task
        await self.sio.eio.disconnect(abort=True)
        await asyncio.wait_for(read_loop, LIVE_TIMEOUT)


class LiveServer:
    """A framehub app from ``create_app`` serving on ``url``, and the clients connected to it.

    ``await server.test_server.close()`` stops it as a shutdown would (closing is idempotent).
    """

    def __init__(self, test_server: TestServer, http: aiohttp.ClientSession) -> None:
        self.test_server = test_server
        self.app = test_server.app
        self.url = str(test_server.make_url("")).rstrip("/")
        self.http = http
        self.clients: list[LiveClient] = []

    @property
    def settings(self) -> Settings:
        """The app's settings."""
        return self.app[settings_key]

    @property
    def registry(self) -> SessionRegistry:
        """The app's session registry."""
        return self.app[session_registry_key]

    @property
    def clips_encoded(self) -> int:
        """Clips encoded so far, of any codec, as ``/metrics`` counts them."""
        registry = self.app[metrics_key].registry
        counts = (
            registry.get_sample_value("framehub_clips_encoded_total", {"codec": codec})
            for codec in ("h264", "mjpeg")
        )
        return int(sum(count or 0 for count in counts))

    async def session_id(self, token: str | None = None) -> str:
        """A new id from ``GET /get_session_id`` (the test fails on any other answer)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(f"{self.url}/get_session_id", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            session_id: str = (await resp.json())["session_id"]
            return session_id

    async def connect(
        self,
        session_id: str | None = None,
        *,
        fetch_id: bool = True,
        in_query: bool = False,
        token: str | None = None,
        transports: Sequence[str] = ("websocket",),
    ) -> LiveClient:
        """Connect a new client with ``session_id`` (a fresh one unless ``fetch_id`` is false).

        The id goes in the ``auth`` dict, or in the query string with ``in_query``; ``token``
        goes in ``auth`` too. Raises ``socketio.exceptions.ConnectionError`` when refused; the
        server's reason is then in the client's ``connect_errors``.
        """
        client = LiveClient()
        self.clients.append(client)
        await self.connect_client(
            client,
            session_id,
            fetch_id=fetch_id,
            in_query=in_query,
            token=token,
            transports=transports,
        )
        return client

    async def connect_client(
        self,
        client: LiveClient,
        session_id: str | None = None,
        *,
        fetch_id: bool = True,
        in_query: bool = False,
        token: str | None = None,
        transports: Sequence[str] = ("websocket",),
    ) -> None:
        """Connect ``client`` as :meth:`connect` does (a client may connect again after leaving)."""
        if session_id is None and fetch_id:
            session_id = await self.session_id(token)
        name = self.settings.sessions.session_id_name
        auth: dict[str, str] = {"token": token} if token else {}
        url = self.url
        if session_id is not None and in_query:
            url = f"{url}?{name}={session_id}"
        elif session_id is not None:
            auth[name] = session_id
        await client.sio.connect(
            url, auth=auth, transports=list(transports), wait_timeout=LIVE_TIMEOUT
        )

    async def refusal(self, session_id: str | None = None, **options: Any) -> Any:
        """Connect expecting a refusal; the reason the client was given."""
        client = LiveClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await self.connect_client(client, session_id, **options)
        assert not client.sio.connected
        assert client.connect_errors, "refused without a reason"
        return client.connect_errors[-1]

    async def until(
        self, condition: Callable[[], object], what: str, seconds: float = LIVE_TIMEOUT
    ) -> None:
        """Wait until ``condition()`` is true, polling; fail the test after ``seconds``."""
        await Framehub.until(condition, what, seconds)

    @staticmethod
    def session_tasks() -> list[asyncio.Task[Any]]:
        """Tasks of live sessions: encoders, session closers and analyses still running."""
        return [
            task
            for task in asyncio.all_tasks()
            if task.get_name().startswith(("encoder-", "close-"))
            or "LiveSession." in getattr(task.get_coro(), "__qualname__", "")
        ]

    async def until_sessions_freed(self, seconds: float = LIVE_TIMEOUT) -> None:
        """Wait until no session is live or closing and none of their tasks is left."""
        await Framehub.until(
            lambda: (
                not self.session_tasks()
                and self.registry.live_count == 0
                and self.registry.closing_count == 0
            ),
            "every session freed",
            seconds,
        )

    async def close_clients(self) -> None:
        """Disconnect every client still connected."""
        for client in self.clients:
            await client.disconnect()


LiveServerFactory = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def live_server(
    aiohttp_server: AiohttpServer, make_settings: SettingsFactory
) -> AsyncIterator[LiveServerFactory]:
    """``await live_server(clips={...}, processors={...})``: framehub serving on a loopback port.

    Tables given replace these test defaults: the server listens on 127.0.0.1 at a port picked
    here and written into ``[server] port`` (so processor paths such as "/analyze/summary" reach
    this server), stops within 2 s, and makes clips of 4 frames flushed after 0.3 s. Clients still
    connected when the test ends are disconnected before the server stops.
    """
    servers: list[LiveServer] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIVE_TIMEOUT)) as http:

        async def start(**tables: Mapping[str, Any]) -> LiveServer:
            port = free_port()
            defaults: dict[str, dict[str, Any]] = {
                "server": {"host": "127.0.0.1", "port": port, "shutdown_timeout": 2.0},
                "clips": {"frames": 4, "max_wait": 0.3, "fps": 10.0},
            }
            for name, values in tables.items():
                defaults.setdefault(name, {}).update(values)
            test_server = await aiohttp_server(create_app(make_settings(**defaults)), port=port)
            server = LiveServer(test_server, http)
            servers.append(server)
            return server

        yield start
        for server in servers:
            await server.close_clients()


LiveServerWithApiFactory = Callable[..., Awaitable[tuple[LiveServer, ClipApi]]]


@pytest.fixture
def live_server_with_api(
    live_server: LiveServerFactory, clip_api: ClipApiFactory
) -> LiveServerWithApiFactory:
    """``await live_server_with_api(clips={...})``: framehub whose one processor, ``a``, is a
    :class:`ClipApi` (no retries, 5 s timeout); the server and the API."""

    async def start(**tables: Mapping[str, Any]) -> tuple[LiveServer, ClipApi]:
        api = await clip_api("a")
        processors = {"a": {"url": api.url, "retries": 0, "timeout": 5.0}}
        return await live_server(**{"processors": processors, **tables}), api

    return start


@pytest.fixture
def live_frames() -> LiveFrames:
    """Maker of live frames whose colour tells their number."""
    return LiveFrames()
