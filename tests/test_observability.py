"""Observability: journal priorities on log lines, process and build metrics, HTTP request metrics.

The log prefix is what a real process does with its environment, so that test starts ``main.py``;
the metrics are read from ``/metrics`` of apps built by ``create_app``, or, for the middleware's
corner cases, of a small app of its own.
"""

from __future__ import annotations

import logging
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpClient
from prometheus_client.parser import text_string_to_metric_families

from common import Images
from fakes import free_port
from server.app import create_app
from server.handlers import service
from server.keys import metrics_key
from server.ops.logs import LogfmtFormatter
from server.ops.metrics import Metrics
from server.settings import ServerSettings
from server.web.accounting import Accounting
from server.web.connections import ConnectionGuard
from server.web.socketio import InFlight

if TYPE_CHECKING:
    from apps import Framehub, SettingsFactory

BOUND = 20.0  # seconds any wait in this file may take at most

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _scrape(client: Any) -> Samples:
    """Every sample of ``GET /metrics``, keyed by name and label set."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await resp.text())
        for sample in family.samples
    }


def _requests(route: str, method: str, status: int) -> tuple[str, frozenset[tuple[str, str]]]:
    labels = {"route": route, "method": method, "status": str(status)}
    return "framehub_http_requests_total", frozenset(labels.items())


def _timed(route: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return "framehub_http_request_seconds_count", frozenset({("route", route)})


# Logs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "terminal"])
def test_log_lines_carry_journal_priorities_only_under_systemd(
    start_server: Any, journal: bool
) -> None:
    # A source that refuses connections: the initial download fails with a warning.
    server = start_server(
        {
            "repositories": {
                "source_url": f"http://127.0.0.1:{free_port()}",
                "initial": ["cam"],
                "retry_backoff": 60.0,
            }
        },
        # Empty, not absent, so that a test run under systemd does not pass its own on.
        JOURNAL_STREAM="8:1234" if journal else "",
    )
    server.wait_ready()
    deadline = time.monotonic() + BOUND
    while "download failed" not in server.stderr():
        assert time.monotonic() < deadline, server.stderr()
        time.sleep(0.05)
    assert server.stop() == 0
    lines = server.stderr().splitlines()
    listening = next(line for line in lines if "listening on" in line)
    failed = next(line for line in lines if "download failed" in line)
    if journal:
        assert listening.startswith("<6>ts="), listening
        assert failed.startswith("<4>ts="), failed
        assert all(line[:1] == "<" and line[2:6] == ">ts=" for line in lines), lines
    else:
        assert all(line.startswith("ts=") for line in lines), lines


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.INFO + 5, "<5>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
    ],
)
def test_journal_priority_of_each_level(level: int, prefix: str) -> None:
    record = logging.LogRecord("framehub", level, __file__, 1, "hello", None, None)
    assert LogfmtFormatter(journal=True).format(record).startswith(f"{prefix}ts=")
    assert LogfmtFormatter().format(record).startswith("ts=")


# Process and build metrics ------------------------------------------------------------------


async def test_metrics_show_the_process_and_the_installed_version(
    framehub: Framehub, make_settings: SettingsFactory
) -> None:
    samples = await _scrape(await framehub.client(make_settings()))
    assert samples["process_resident_memory_bytes", frozenset()] > 0
    assert samples["process_open_fds", frozenset()] > 0
    assert ("process_cpu_seconds_total", frozenset()) in samples
    version = {("version", metadata.version("framehub"))}
    assert samples["framehub_build_info", frozenset(version)] == 1


# HTTP request metrics -----------------------------------------------------------------------


async def test_http_requests_counted_by_route_pattern_and_final_status(
    tmp_path: Path, make_settings: SettingsFactory, aiohttp_client: AiohttpClient, images: Images
) -> None:
    images.folder(tmp_path / "state" / "repositories" / "cam", ["a.jpg", "b.jpg"])
    client = await aiohttp_client(create_app(make_settings()))
    for _ in range(2):
        assert (await client.get("/cam/video.jpg")).status == 200
    assert (await client.get("/no/such/route")).status == 404  # no route: the router's 404
    assert (await client.post("/healthz")).status == 405
    assert (await client.get("/nothing-here")).status == 404  # RepositoryNotFound
    assert (await client.get("/cam/video.mjpg?fps=fast")).status == 400  # InvalidParameter
    assert (await client.head("/cam/video.mjpg")).status == 200  # a stream, prepared and ended
    assert (await client.get("/socket.io/")).status == 400  # Engine.IO's own answer

    samples = await _scrape(client)
    assert samples[_requests("/{repo}/video.jpg", "GET", 200)] == 2
    assert samples[_requests("unmatched", "GET", 404)] == 1
    assert samples[_requests("unmatched", "POST", 405)] == 1
    assert samples[_requests("/{repo}", "GET", 404)] == 1
    assert samples[_requests("/{repo}/video.mjpg", "GET", 400)] == 1
    assert samples[_requests("/{repo}/video.mjpg", "HEAD", 200)] == 1
    assert samples[_requests("/socket.io/", "GET", 400)] == 1
    assert samples[_timed("/{repo}/video.jpg")] == 2
    assert samples[_timed("/{repo}/video.mjpg")] == 1  # the 400 only: streams are not timed
    assert _timed("/socket.io/") not in samples
    routes = {dict(labels)["route"] for name, labels in samples if name.startswith("framehub_http")}
    assert "/no/such/route" not in routes and "/nothing-here" not in routes


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _boom(request: web.Request) -> web.Response:
    raise ValueError("a bug")


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ok")


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"part")
    return response


async def test_http_metrics_count_the_final_answer(aiohttp_client: AiohttpClient) -> None:
    metrics = Metrics()
    guard = ConnectionGuard(ServerSettings(), metrics)
    app = web.Application(middlewares=[Accounting(InFlight(), guard, metrics).middleware])
    app[metrics_key] = metrics
    app.router.add_get("/ok", _ok)
    app.router.add_get("/boom", _boom)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/stream", _stream)
    app.router.add_route("*", "/any", _ok)
    app.router.add_get("/metrics", service.metrics)
    client = await aiohttp_client(app)

    assert (await client.get("/boom")).status == 500
    assert (await client.get("/redirect", allow_redirects=False)).status == 302
    assert (await client.get("/stream")).status == 200
    assert (await client.request("PROPFIND", "/any")).status == 200
    assert (await client.request("PROPFIND", "/ok")).status == 405

    samples = await _scrape(client)
    assert samples[_requests("/boom", "GET", 500)] == 1  # the error mapping's final answer
    assert samples[_requests("/redirect", "GET", 302)] == 1  # an HTTPException passed through
    assert samples[_requests("/stream", "GET", 200)] == 1
    assert samples[_requests("/any", "other", 200)] == 1  # methods are a closed set
    assert samples[_requests("unmatched", "other", 405)] == 1
    assert samples[_timed("/boom")] == 1
    assert samples[_timed("/redirect")] == 1
    assert _timed("/stream") not in samples  # counted, never timed
