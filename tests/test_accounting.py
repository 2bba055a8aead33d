"""The per-request bookkeeping kept cheap for ``video.jpg`` (issue 11): the in-flight count the
stop waits for, the plain-number metrics and their exposition, and the cursor cookie's memory of
the values it wrote.

The app-level behaviour (stop, limits, metrics by route, cookies) is tested in test_stop.py,
test_limits.py, test_observability.py and test_cursor_cookie.py; these are the pieces on their own.
"""

from __future__ import annotations

import asyncio
import time
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpClient
from aiohttp.test_utils import make_mocked_request
from cryptography.fernet import Fernet
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.app import COOKIE_NAME
from server.ops.metrics import HttpRequestCounts, Metrics, PlainCounter
from server.settings import ServerSettings
from server.web import cursor_cookie
from server.web.accounting import Accounting
from server.web.connections import ConnectionGuard
from server.web.cursor_cookie import CursorCookieStorage
from server.web.socketio import InFlight

MAX_AGE = 3600
BUCKETS = (0.001, 0.01, 0.1)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample but the ``_created`` timestamps, keyed by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _created(registry: CollectorRegistry) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {
        (sample.name, frozenset(sample.labels.items()))
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name.endswith("_created")
    }


# In flight -----------------------------------------------------------------------------------


async def test_wait_idle_returns_at_once_when_nothing_is_in_flight() -> None:
    in_flight = InFlight()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await in_flight.wait_idle(loop.time() + 10)
    assert loop.time() - started < 1


async def test_wait_idle_waits_for_the_last_request_and_no_longer() -> None:
    in_flight = InFlight()
    transport = mock.Mock()
    in_flight.started(None)
    in_flight.started(transport)
    assert in_flight.socketio_transports == {transport}
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(in_flight.wait_idle(loop.time() + 10))
    await asyncio.sleep(0.01)
    in_flight.ended(None)
    await asyncio.sleep(0.01)
    assert not waiting.done()
    in_flight.ended(transport)
    await asyncio.wait_for(waiting, 1)
    assert in_flight.requests == 0 and not in_flight.socketio_transports


async def test_wait_idle_gives_up_at_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    in_flight = InFlight()
    in_flight.started(None)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(in_flight.wait_idle(loop.time() + 0.05), 1)
    assert "stopping with 1 requests still being answered" in caplog.text
    in_flight.ended(None)  # a request ending after the stop gave up waiting is no error


async def test_requests_are_counted_in_flight_while_answered(
    aiohttp_client: AiohttpClient,
) -> None:
    metrics, in_flight = Metrics(), InFlight()
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(in_flight.requests)
        return web.Response(text="ok")

    accounting = Accounting(in_flight, ConnectionGuard(ServerSettings(), metrics), metrics)
    app = web.Application(middlewares=[accounting.middleware])
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    assert (await client.get("/")).status == 200
    assert seen == [1]
    assert in_flight.requests == 0


# Plain-number metrics ------------------------------------------------------------------------


def test_plain_counter_is_scraped_as_a_prometheus_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    plain = PlainCounter("framehub_things", "Things", ["kind", "code"])
    ours.register(plain)
    counter = Counter("framehub_things", "Things", ["kind", "code"], registry=theirs)
    for kind, code in [("a", 1), ("a", 1), ("b", 2)]:
        plain.labels(kind, code).inc()
        counter.labels(kind, str(code)).inc()
    assert _samples(ours) == _samples(theirs)
    assert _created(ours) == _created(theirs)


def test_http_request_counts_are_scraped_as_a_counter_and_a_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counts = HttpRequestCounts(BUCKETS)
    ours.register(counts)
    requests = Counter(
        "framehub_http_requests",
        "HTTP requests answered, by route pattern (or unmatched), method and status",
        ["route", "method", "status"],
        registry=theirs,
    )
    seconds = Histogram(
        "framehub_http_request_seconds",
        "Time to answer an HTTP request, by route pattern; streams and Socket.IO not included",
        ["route"],
        buckets=BUCKETS,
        registry=theirs,
    )
    answers = [
        ("/a", "GET", 200, 0.0005),
        ("/a", "GET", 200, 0.001),  # on a bound: in that bucket, as Prometheus counts
        ("/a", "GET", 404, 0.05),
        ("/a", "HEAD", 200, 3.0),  # past the last bound: +Inf only
        ("/stream", "GET", 200, None),  # counted, never timed
    ]
    for route, method, status, elapsed in answers:
        counts.count(route, method, status, elapsed)
        requests.labels(route, method, str(status)).inc()
        if elapsed is not None:
            seconds.labels(route).observe(elapsed)
    assert _samples(ours) == pytest.approx(_samples(theirs))
    assert _created(ours) == _created(theirs)
    # Registering twice is refused by name, as the library's own metrics are.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        ours.register(HttpRequestCounts(BUCKETS))


# The cookie's memory of the values it wrote -------------------------------------------------


def _storage() -> CursorCookieStorage:
    return CursorCookieStorage([Fernet.generate_key()], cookie_name=COOKIE_NAME, max_age=MAX_AGE)


def _request_with(value: str) -> web.Request:
    return make_mocked_request(
        "GET", "/cam/video.jpg", headers={"Cookie": f"{COOKIE_NAME}={value}"}
    )


def _written(storage: CursorCookieStorage, issued: int, cursors: dict[str, int]) -> str:
    response = web.Response()
    storage.write(response, issued, cursors)
    return response.headers["Set-Cookie"].split(";")[0].partition("=")[2]


def test_a_value_just_written_is_read_without_decrypting() -> None:
    storage = _storage()
    cursors = {"cam": 7}
    value = _written(storage, int(time.time()), cursors)
    cursors["cam"] = 8  # the writer's dict is not the one remembered
    with mock.patch.object(storage, "open", side_effect=AssertionError("decrypted")):
        issued, read = storage.read(_request_with(value)) or (0, {})
    assert read == {"cam": 7}
    # Read once, forgotten: the same value again (a second tab) is decrypted, to the same cursors.
    assert storage.read(_request_with(value)) == (issued, {"cam": 7})


def test_a_remembered_value_past_max_age_is_refused() -> None:
    storage = _storage()
    value = _written(storage, int(time.time()) - MAX_AGE - 10, {"cam": 7})
    assert storage.read(_request_with(value)) is None


def test_an_altered_value_is_not_taken_for_a_remembered_one() -> None:
    storage = _storage()
    value = _written(storage, int(time.time()), {"cam": 7})
    altered = value[:-2] + ("AA" if value[-2:] != "AA" else "BB")
    assert storage.read(_request_with(altered)) is None


def test_only_the_latest_values_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cursor_cookie, "RECENT_COOKIES", 3)
    storage = _storage()
    values = [_written(storage, int(time.time()), {"cam": i}) for i in range(5)]
    assert list(storage._recent) == values[2:]
    # The forgotten ones still open, by decryption.
    assert storage.read(_request_with(values[0])) == (mock.ANY, {"cam": 0})
