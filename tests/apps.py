"""framehub under test: its settings, its apps behind real test servers, and live ingest clients.

Each app comes from ``server.app.create_app``, as in production. :class:`Framehub` drives apps
through aiohttp test clients (one cookie jar each); :class:`LiveServer` is an app on a known
loopback port (so that processor URLs such as "/analyze/summary" reach it) with real
python-socketio clients, :class:`LiveClient`, that record what the server sends them. Tests look
at framehub only from outside: HTTP answers, Socket.IO events, ``/metrics`` values, public
properties, and the asyncio tasks left running.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

import server
from common import LIVE_TIMEOUT, WAIT, until
from fakes import ClipApi, free_port
from server.app import create_app
from server.keys import metrics_key, session_registry_key, settings_key
from server.live.sessions import SessionRegistry
from server.settings import Settings, settings_from_mapping

FramehubClient = TestClient[web.Request, web.Application]
FRAMEHUB_CODE = Path(server.__file__).parent


class SettingsFactory:
    """Builds checked :class:`Settings` for a test, with state kept under ``tmp_path``.

    ``make_settings(repositories={"source_url": url}, camera={...})`` takes one mapping per TOML
    table; the given keys replace the test defaults below, which keep tests fast and offline.
    """

    DEFAULTS: Mapping[str, Mapping[str, Any]] = {
        "server": {"state_dir": "state"},
        "repositories": {"create_demo": False},
        # A camera clock slow enough that a cookieless request gets frame 0 throughout a test;
        # the tests of the clock set their own.
        "camera": {"fps": 0.001},
    }

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir

    def __call__(self, **tables: Mapping[str, Any]) -> Settings:
        data = {name: dict(values) for name, values in self.DEFAULTS.items()}
        for name, values in tables.items():
            data.setdefault(name, {}).update(values)
        return settings_from_mapping(data, base_dir=self.base_dir)


class Framehub:
    """framehub apps from ``create_app``, each behind a real test server with its own cookie jar."""

    until = staticmethod(until)

    def __init__(self, aiohttp_client: AiohttpClient) -> None:
        self._aiohttp_client = aiohttp_client

    async def client(self, settings: Settings) -> FramehubClient:
        """A client of a new framehub app for ``settings`` (closed when the test ends)."""
        return await self._aiohttp_client(create_app(settings))

    @staticmethod
    async def settled(client: FramehubClient, name: str, seconds: float = WAIT) -> dict[str, Any]:
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

    async def failed(
        self,
        client: FramehubClient,
        settings: Settings,
        name: str,
        error: str,
        seconds: float = 5.0,
    ) -> dict[str, Any]:
        """Wait until repository ``name`` failed for ``error``, leaving nothing on disk; its
        description."""
        info = await self.settled(client, name, seconds)
        assert info["status"] == "failed", info
        assert error in info["error"], info
        self.assert_nothing_left(settings, name)
        return info

    @staticmethod
    def assert_nothing_left(settings: Settings, name: str) -> None:
        """Neither repository ``name`` nor any download work folder is on disk."""
        root = settings.repositories_dir
        assert not (root / name).exists()
        assert list(root.glob(".incoming/*")) == []


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
        await until(lambda: len(self.results) >= count, f"{count} results", seconds)
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
    Made once the server listens: the asyncio tasks running then (the app's own background
    tasks among them) are the ones a freed server may still have, see :meth:`framehub_tasks`.
    """

    def __init__(self, test_server: TestServer, http: aiohttp.ClientSession) -> None:
        self.test_server = test_server
        self.app = test_server.app
        self.url = str(test_server.make_url("")).rstrip("/")
        self.http = http
        self.clients: list[LiveClient] = []
        self._tasks_at_start = asyncio.all_tasks()

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
        await until(condition, what, seconds)

    def framehub_tasks(self) -> list[asyncio.Task[Any]]:
        """:func:`framehub_tasks` started since this server did."""
        return framehub_tasks(self._tasks_at_start)

    async def until_sessions_freed(self, seconds: float = LIVE_TIMEOUT) -> None:
        """Wait until no session is live or closing and :meth:`framehub_tasks` is empty."""
        await until(
            lambda: (
                self.registry.live_count == 0
                and self.registry.closing_count == 0
                and not self.framehub_tasks()
            ),
            lambda: (
                f"every session freed ({self.registry.live_count} live, "
                f"{self.registry.closing_count} closing, tasks {self.framehub_tasks()})"
            ),
            seconds,
        )

    async def close_clients(self) -> None:
        """Disconnect every client still connected."""
        for client in self.clients:
            await client.disconnect()


def framehub_tasks(before: AbstractSet[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """asyncio tasks running framehub code that were not running ``before`` (a snapshot of
    ``asyncio.all_tasks()``): encoders, session closers, analyses, requests being handled...

    What the libraries keep running for themselves (idle keep-alive connections, python-engineio's
    pings) does not count, nor does anything by its task name.
    """
    tasks = asyncio.all_tasks() - before
    return [task for task in tasks if not task.done() and runs_framehub_code(task)]


def runs_framehub_code(task: asyncio.Task[Any]) -> bool:
    """Whether a coroutine of the ``server`` package is in ``task``'s chain of awaits."""
    awaiting: object = task.get_coro()
    while isinstance(awaiting, types.CoroutineType | types.GeneratorType):
        if isinstance(awaiting, types.CoroutineType):
            code, awaiting = awaiting.cr_code, awaiting.cr_await
        else:
            code, awaiting = awaiting.gi_code, awaiting.gi_yieldfrom
        if Path(code.co_filename).is_relative_to(FRAMEHUB_CODE):
            return True
    return False


LiveServerFactory = Callable[..., Awaitable[LiveServer]]
LiveServerWithApiFactory = Callable[..., Awaitable[tuple[LiveServer, ClipApi]]]


# Real processes ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PROCESS_BOUND = 20.0  # seconds a process may take to start or stop


def toml_value(value: Any) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    raise TypeError(value)


def write_settings(path: Path, tables: dict[str, dict[str, Any]]) -> None:
    """A settings file at ``path`` holding ``tables``."""
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")


class ServerProcess:
    """``main.py`` in a child process on a free loopback port, with ``tables`` as its settings
    (state under ``tmp_path``; host, port and ``create_demo = false`` filled in)."""

    def __init__(self, tmp_path: Path, tables: dict[str, dict[str, Any]], env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = {"host": "127.0.0.1", "port": self.port, "state_dir": str(tmp_path / "state")}
        tables = {"server": server | tables.pop("server", {}), **tables}
        tables.setdefault("repositories", {}).setdefault("create_demo", False)
        config = tmp_path / "settings.toml"
        write_settings(config, tables)
        self.stderr_path = tmp_path / "stderr.log"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env={**os.environ, **env},
        )

    def wait_ready(self) -> None:
        """Until the port takes connections; fails if the process ended."""
        deadline = time.monotonic() + PROCESS_BOUND
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.stderr()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not start listening")

    def stop(self) -> int:
        """SIGTERM, then the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(PROCESS_BOUND)
        finally:
            self._stderr.close()

    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def wait_until_ready(self) -> dict[str, Any]:
        """Until ``GET /readyz`` answers 200 (listening, repositories loaded, and Redis reached
        with ``[cluster] redis_url`` set); its body. Fails if the process ended, or after
        ``PROCESS_BOUND`` seconds with the last answer."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + PROCESS_BOUND
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.stderr()
            try:
                with opener.open(f"{self.url}/readyz", timeout=1.0) as resp:
                    ready: dict[str, Any] = json.loads(resp.read())
                    return ready
            except urllib.error.HTTPError as exc:
                last = f"{exc.code} {exc.read().decode(errors='replace')}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise AssertionError(f"{self.url}/readyz not 200 within {PROCESS_BOUND} s: {last}")

    def kill(self) -> None:
        """SIGKILL if still running, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(PROCESS_BOUND)
        self._stderr.close()
