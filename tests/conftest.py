"""Shared fixtures: settings in a temporary folder, images made on the fly, the fake third parties
(an archive source, analysis APIs) on loopback ports, and framehub apps behind real test servers.

The helpers the fixtures hand out live in their own modules, which tests import directly:
``common`` (images, videos, tar archives, bounded waits), ``fakes`` (``free_port``, ``TarSource``,
``ClipApi``) and ``apps`` (``Framehub``, ``LiveServer``, ``LiveClient``). The names below are
also importable from here, for the type hints of test modules written against this file.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from apps import (
    PROCESS_BOUND,
    Framehub,
    FramehubClient,
    LiveClient,
    LiveServer,
    LiveServerFactory,
    LiveServerWithApiFactory,
    ServerProcess,
    SettingsFactory,
)
from cluster import NGINX, REDIS_SERVER, FramehubCluster, Nginx, RedisServer
from common import LIVE_TIMEOUT, Images, LiveFrames, Member, decode_clip
from fakes import ClipApi, ClipApiFactory, ReceivedClip, TarSource, free_port
from server.app import create_app
from server.live.builtins import WORKER_MODULES

__all__ = [
    "LIVE_TIMEOUT",
    "ClipApi",
    "ClipApiFactory",
    "Framehub",
    "FramehubClient",
    "Images",
    "LiveClient",
    "LiveFrames",
    "LiveServer",
    "LiveServerFactory",
    "LiveServerWithApiFactory",
    "Member",
    "ReceivedClip",
    "ServerProcess",
    "SettingsFactory",
    "TarSource",
    "decode_clip",
    "free_port",
]


def pytest_configure(config: pytest.Config) -> None:
    """Let third-party warnings we cannot fix through ``filterwarnings = error``."""
    # aiohttp-session keeps its storage under plain string request keys, which aiohttp 3.14 warns
    # about (NotAppKeyWarning) once per process, inside whichever test first touches a session.
    config.addinivalue_line(
        "filterwarnings", "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"
    )


@pytest.fixture(scope="session", autouse=True)
def analysis_fork_server() -> None:
    """multiprocessing's fork server, started once for the whole run as the first app would.

    It belongs to the process, not to an app: in a server it starts with the first analysis (or
    the first session, see BuiltinAnalyses.warm_up) and every later app forks its workers from it
    in milliseconds. Tests run many apps in this one process; started here, no test's timing
    depends on whether an earlier test happened to start it (0.5 to 1 s). The lazy start itself
    is tested on a real server process in test_builtins.py.
    """
    multiprocessing.get_context("forkserver").set_forkserver_preload(WORKER_MODULES)
    forkserver.ensure_running()


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings with state under ``tmp_path``; pass tables to override (see SettingsFactory)."""
    return SettingsFactory(tmp_path)


@pytest.fixture
def images() -> Images:
    """Maker of small Pillow images, image folders and tar archives."""
    return Images()


@pytest.fixture
def live_frames() -> LiveFrames:
    """The same maker, as live ingest tests call it: frames whose colour tells their number."""
    return LiveFrames()


@pytest.fixture
async def tar_source(aiohttp_server: AiohttpServer) -> AsyncIterator[TarSource]:
    """An empty archive source serving on a loopback port; fill ``archives`` in the test."""
    source = TarSource()
    server = await aiohttp_server(source.app())
    source.url = str(server.make_url("/"))
    yield source
    source.release()


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


@pytest.fixture
def framehub(aiohttp_client: AiohttpClient) -> Framehub:
    """Starts framehub apps for given settings and waits on their repositories."""
    return Framehub(aiohttp_client)


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
def start_server(tmp_path: Path) -> Iterator[Any]:
    """``start_server(tables, **env)``: ``main.py`` in a child process (killed at the end)."""
    started: list[ServerProcess] = []

    def start(tables: dict[str, dict[str, Any]] | None = None, **env: str) -> ServerProcess:
        server = ServerProcess(tmp_path, tables or {}, env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(PROCESS_BOUND)


# A cluster: Redis, framehub processes on it, nginx in front (tests/cluster.py) ------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running ``redis-server`` on a loopback port; ``stop()``/``start()`` keep that port."""
    if not REDIS_SERVER.exists():
        pytest.skip(f"{REDIS_SERVER} is missing: install the Debian package redis-server")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def framehub_cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[FramehubCluster]:
    """``framehub_cluster.start(2, tables)``: framehub processes on ``redis_server``, each ready;
    stopped at the end."""
    cluster = FramehubCluster(tmp_path / "cluster", redis_server)
    yield cluster
    cluster.close()


@pytest.fixture
def nginx_proxy(tmp_path: Path) -> Iterator[Callable[[Sequence[ServerProcess]], Nginx]]:
    """``nginx_proxy(nodes)``: nginx running ``deploy/nginx.conf`` in front of ``nodes``."""
    if not NGINX.exists():
        pytest.skip(f"{NGINX} is missing: install the Debian package nginx-light")
    started: list[Nginx] = []

    def start(nodes: Sequence[ServerProcess]) -> Nginx:
        proxy = Nginx(tmp_path / f"nginx-{len(started)}", [f"127.0.0.1:{n.port}" for n in nodes])
        started.append(proxy)
        proxy.start()
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
