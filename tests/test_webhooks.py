"""Webhooks: events POSTed as JSON in order, retried like processor requests, dropped oldest-first
when a receiver falls behind, drained at the stop, and their header values kept out of the log.

Everything is a real part: :class:`server.live.webhooks.Webhooks` posts through a real
``aiohttp.ClientSession`` to receivers that are aiohttp applications on loopback ports, served by
pytest-aiohttp's ``aiohttp_server``. A receiver records what it gets and can be told to answer
with scripted statuses or to hold its answers until its gate opens.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from common import until
from server.live.webhooks import Webhooks
from server.ops.logs import secrets_of
from server.ops.metrics import Metrics

if TYPE_CHECKING:
    from conftest import SettingsFactory

# Seconds within which a whole test's deliveries are done.
WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Received:
    """One request a receiver got."""

    headers: dict[str, str]
    content_type: str
    body: Any
    at: float


class Receiver:
    """A webhook receiver on a loopback port at ``url``.

    ``answers`` holds (status, headers) answers given first, one per request, before the default
    204; while ``gate`` is clear each answer waits for it. ``most_in_flight`` tells the most
    requests it was answering at once.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.url = ""
        self.in_flight = 0
        self.most_in_flight = 0

    def app(self) -> web.Application:
        """The receiver as an aiohttp application."""
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        return app

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies received, in arrival order."""
        return [received.body for received in self.received]

    async def _receive(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            data = await request.read()
            self.received.append(
                Received(
                    dict(request.headers),
                    request.content_type,
                    json.loads(data),
                    asyncio.get_running_loop().time(),
                )
            )
            await asyncio.sleep(0.01)  # long enough for an overlapping request to show
            await self.gate.wait()
            if self.answers:
                status, headers = self.answers.pop(0)
                return web.Response(status=status, text=f"scripted {status}", headers=headers)
            return web.Response(status=204)
        finally:
            self.in_flight -= 1


ReceiverFactory = Callable[[], Awaitable[Receiver]]
Started = tuple[Webhooks, Metrics]
WebhooksFactory = Callable[..., Awaitable[Started]]


@pytest.fixture
async def receiver(aiohttp_server: AiohttpServer) -> AsyncIterator[ReceiverFactory]:
    """``await receiver()``: a new :class:`Receiver` serving on loopback."""
    made: list[Receiver] = []

    async def start() -> Receiver:
        made.append(Receiver())
        server = await aiohttp_server(made[-1].app())
        made[-1].url = str(server.make_url("/hook"))
        return made[-1]

    yield start
    for each in made:
        each.gate.set()  # no answer left hanging when the servers stop


@pytest.fixture
async def webhooks(make_settings: SettingsFactory) -> AsyncIterator[WebhooksFactory]:
    """``await webhooks(hook={"url": ...})``: started :class:`Webhooks` for these tables, and
    their metrics; each is closed when the test ends."""
    made: list[Webhooks] = []
    async with aiohttp.ClientSession() as client:

        async def start(**tables: dict[str, Any]) -> Started:
            metrics = Metrics()
            hooks = Webhooks(make_settings(webhooks=tables), client, metrics)
            await hooks.start()
            made.append(hooks)
            return hooks, metrics

        yield start
        for hooks in made:
            await hooks.close(asyncio.get_running_loop().time())


def deliveries(metrics: Metrics, outcome: str, webhook: str = "hook") -> float | None:
    """``framehub_webhook_deliveries`` of ``webhook`` for ``outcome``."""
    return metrics.registry.get_sample_value(
        "framehub_webhook_deliveries_total", {"webhook": webhook, "outcome": outcome}
    )


def sample(metrics: Metrics, name: str, webhook: str = "hook") -> float | None:
    """The sample ``name`` of ``webhook``."""
    return metrics.registry.get_sample_value(name, {"webhook": webhook})


def result(index: int) -> dict[str, Any]:
    """A result event of camera "gate", told apart by ``index``."""
    return {"event": "result", "camera": "gate", "clip": {"index": index}, "result": {"ok": True}}


def sender_tasks() -> list[asyncio.Task[Any]]:
    """The webhook sender tasks still running."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("webhook ") and not task.done()
    ]


# Delivery ---------------------------------------------------------------------------------------


async def test_events_are_posted_as_json_with_headers_in_order(
    receiver: ReceiverFactory, webhooks: WebhooksFactory
) -> None:
    api = await receiver()
    hooks, metrics = await webhooks(
        hook={"url": api.url, "headers": {"Authorization": "Bearer t0ken", "X-Team": "blue"}}
    )
    bodies = [result(index) for index in range(5)]
    for body in bodies:
        hooks.publish("result", body)
    bodies[0]["clip"]["index"] = 99  # what was published is what is sent, whatever comes after
    await until(lambda: len(api.received) == 5, "five events received", WAIT)
    assert api.bodies == [result(index) for index in range(5)]
    assert api.most_in_flight == 1  # one at a time
    for received in api.received:
        assert received.content_type == "application/json"
        assert received.headers["Authorization"] == "Bearer t0ken"
        assert received.headers["X-Team"] == "blue"
    await until(lambda: deliveries(metrics, "ok") == 5, "five deliveries counted", WAIT)
    assert deliveries(metrics, "failed") == 0
    assert sample(metrics, "framehub_webhook_seconds_count") == 5
    assert sample(metrics, "framehub_webhook_queued") == 0


async def test_each_webhook_gets_only_the_events_it_asked_for(
    receiver: ReceiverFactory, webhooks: WebhooksFactory
) -> None:
    results, everything = await receiver(), await receiver()
    hooks, metrics = await webhooks(
        results={"url": results.url, "events": ["result"]}, everything={"url": everything.url}
    )
    camera = {"event": "camera", "camera": "gate", "online": True}
    batch = {"event": "batch", "job": "j1", "status": "done"}
    hooks.publish("camera", camera)
    hooks.publish("result", result(0))
    hooks.publish("batch", batch)
    hooks.publish("unknown", {"event": "unknown"})  # no webhook wants it: nothing happens
    await hooks.close(asyncio.get_running_loop().time() + WAIT)
    assert everything.bodies == [camera, result(0), batch]
    assert results.bodies == [result(0)]
    assert deliveries(metrics, "ok", "results") == 1
    assert deliveries(metrics, "ok", "everything") == 3


async def test_a_body_that_is_not_json_is_refused_without_raising(
    receiver: ReceiverFactory, webhooks: WebhooksFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api = await receiver()
    hooks, _metrics = await webhooks(hook={"url": api.url})
    hooks.publish("result", {"event": "result", "clip": object()})
    hooks.publish("result", {"event": "result", "score": float("nan")})
    hooks.publish("result", result(1))
    await hooks.close(asyncio.get_running_loop().time() + WAIT)
    assert api.bodies == [result(1)]
    assert caplog.text.count("its body is not JSON") == 2


# Retries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "headers"), [(500, {}), (503, {}), (429, {"Retry-After": "0"})])
async def test_a_receiver_failing_once_is_retried(
    receiver: ReceiverFactory, webhooks: WebhooksFactory, status: int, headers: dict[str, str]
) -> None:
    api = await receiver()
    api.answers = [(status, headers)]
    hooks, metrics = await webhooks(hook={"url": api.url, "retries": 2})
    hooks.publish("result", result(0))
    await until(lambda: deliveries(metrics, "ok") == 1, "delivered on the retry", WAIT)
    assert api.bodies == [result(0), result(0)]
    assert deliveries(metrics, "failed") == 0


async def test_retry_after_is_honoured(
    receiver: ReceiverFactory, webhooks: WebhooksFactory
) -> None:
    api = await receiver()
    api.answers = [(429, {"Retry-After": "1"})]
    hooks, metrics = await webhooks(hook={"url": api.url, "retries": 1})
    hooks.publish("result", result(0))
    await until(lambda: deliveries(metrics, "ok") == 1, "delivered after Retry-After", WAIT)
    first, second = api.received
    assert second.at - first.at >= 0.9  # not the first backoff of 0.2 s


async def test_a_receiver_failing_every_time_is_given_up_after_its_retries(
    receiver: ReceiverFactory, webhooks: WebhooksFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api = await receiver()
    api.answers = [(500, {})] * 3
    hooks, metrics = await webhooks(hook={"url": api.url, "retries": 2})
    hooks.publish("result", result(0))
    hooks.publish("result", result(1))  # the sender goes on with the next event
    await hooks.close(asyncio.get_running_loop().time() + WAIT)
    assert api.bodies == [result(0)] * 3 + [result(1)]
    assert deliveries(metrics, "failed") == 1
    assert deliveries(metrics, "ok") == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(
        "webhook hook: result event not delivered after 3 attempt(s)"
    )
    assert warning.getMessage().endswith("HTTP 500: scripted 500")


@pytest.mark.parametrize("status", [400, 404])
async def test_a_client_error_is_not_retried(
    receiver: ReceiverFactory,
    webhooks: WebhooksFactory,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    api = await receiver()
    api.answers = [(status, {})]
    hooks, metrics = await webhooks(hook={"url": api.url, "retries": 2})
    hooks.publish("result", result(0))
    await hooks.close(asyncio.get_running_loop().time() + WAIT)
    assert len(api.received) == 1
    assert deliveries(metrics, "failed") == 1
    assert "after 1 attempt(s) in" in caplog.text
    assert f"HTTP {status}: scripted {status}" in caplog.text


async def test_a_redirect_is_not_followed(
    receiver: ReceiverFactory, webhooks: WebhooksFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api = await receiver()
    api.answers = [(307, {"Location": "/hook"})]
    hooks, metrics = await webhooks(hook={"url": api.url, "retries": 2})
    hooks.publish("result", result(0))
    await hooks.close(asyncio.get_running_loop().time() + WAIT)
    assert len(api.received) == 1
    assert deliveries(metrics, "failed") == 1
    assert "HTTP 307: redirects are not followed" in caplog.text


async def test_a_receiver_refusing_connections(
    webhooks: WebhooksFactory, refused_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    hooks, metrics = await webhooks(hook={"url": refused_url, "retries": 2})
    hooks.publish("camera", {"event": "camera", "camera": "gate", "online": False})
    await until(lambda: deliveries(metrics, "failed") == 1, "given up", WAIT)
    assert "webhook hook: camera event not delivered after 3 attempt(s)" in caplog.text
    assert "cannot connect" in caplog.text


async def test_a_receiver_slower_than_its_timeout(
    receiver: ReceiverFactory, webhooks: WebhooksFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api = await receiver()
    api.gate.clear()  # never answers
    hooks, metrics = await webhooks(hook={"url": api.url, "timeout": 0.3, "retries": 2})
    loop = asyncio.get_running_loop()
    started = loop.time()
    hooks.publish("result", result(0))
    await until(lambda: deliveries(metrics, "failed") == 1, "given up", WAIT)
    assert loop.time() - started < 2.0  # the timeout, not the receiver, decided
    assert len(api.received) == 1  # a timeout is not retried: the receiver may have the event
    assert "no answer within the 0.3 s timeout" in caplog.text


# Queue and stop ---------------------------------------------------------------------------------


async def test_a_full_queue_drops_its_oldest_event(
    receiver: ReceiverFactory, webhooks: WebhooksFactory
) -> None:
    api = await receiver()
    api.gate.clear()
    hooks, metrics = await webhooks(hook={"url": api.url, "max_queued": 2})
    hooks.publish("result", result(0))
    await until(lambda: len(api.received) == 1, "the first event held by the receiver", WAIT)
    for index in range(1, 6):
        hooks.publish("result", result(index))  # never waits for the held receiver
    assert sample(metrics, "framehub_webhook_queued") == 2
    assert sample(metrics, "framehub_webhook_dropped_total") == 3
    api.gate.set()
    await until(lambda: deliveries(metrics, "ok") == 3, "the rest delivered", WAIT)
    assert api.bodies == [result(0), result(4), result(5)]
    assert sample(metrics, "framehub_webhook_queued") == 0


async def test_close_delivers_what_is_queued_then_leaves_nothing_running(
    receiver: ReceiverFactory, webhooks: WebhooksFactory
) -> None:
    api = await receiver()
    api.gate.clear()
    hooks, metrics = await webhooks(hook={"url": api.url})
    for index in range(4):
        hooks.publish("result", result(index))
    await until(lambda: len(api.received) == 1, "the first event held by the receiver", WAIT)
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, api.gate.set)
    await hooks.close(loop.time() + WAIT)
    assert api.bodies == [result(index) for index in range(4)]
    assert deliveries(metrics, "ok") == 4
    assert sender_tasks() == []
    hooks.publish("result", result(4))  # after the stop: not taken
    assert sample(metrics, "framehub_webhook_queued") == 0


async def test_close_gives_up_at_its_deadline(
    receiver: ReceiverFactory, webhooks: WebhooksFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api = await receiver()
    api.gate.clear()  # never answers
    hooks, _metrics = await webhooks(hook={"url": api.url, "timeout": 60.0})
    for index in range(3):
        hooks.publish("result", result(index))
    await until(lambda: len(api.received) == 1, "the first event held by the receiver", WAIT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await hooks.close(started + 0.3)
    assert 0.25 <= loop.time() - started < 2.0
    assert sender_tasks() == []
    assert "webhook hook: 3 event(s) not delivered before the stop" in caplog.text


# Secrets ----------------------------------------------------------------------------------------


async def test_header_values_never_reach_the_log(
    receiver: ReceiverFactory,
    webhooks: WebhooksFactory,
    make_settings: SettingsFactory,
    refused_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_headers = {"Authorization": "Bearer s3cret-token", "X-Api-Key": "k3y-value"}
    picky, slow = await receiver(), await receiver()
    picky.answers = [(401, {}), (503, {})]
    slow.gate.clear()
    tables = {
        "picky": {"url": picky.url, "headers": secret_headers, "retries": 0},
        "down": {"url": refused_url, "headers": secret_headers, "retries": 1},
        "slow": {"url": slow.url, "headers": secret_headers, "timeout": 0.3, "retries": 0},
    }
    hooks, metrics = await webhooks(**tables)
    hooks.publish("result", result(0))
    hooks.publish("result", result(1))
    await until(
        lambda: all(deliveries(metrics, "failed", name) for name in tables),
        "every webhook failed",
        WAIT,
    )
    assert set(secret_headers.values()) <= set(secrets_of(make_settings(webhooks=tables)))
    for name in tables:
        assert f"webhook {name}: result event not delivered" in caplog.text
    for value in secret_headers.values():
        assert value not in caplog.text


async def test_reconfigure_keeps_starts_and_drains(
    webhooks: WebhooksFactory, receiver: ReceiverFactory, make_settings: SettingsFactory
) -> None:
    kept, removed, added = await receiver(), await receiver(), await receiver()
    hooks, _metrics = await webhooks(kept={"url": kept.url}, removed={"url": removed.url})
    removed.gate.clear()  # its event is still being delivered when the reload comes
    hooks.publish("result", {"event": "result", "n": 1})
    await until(lambda: removed.received, "the removed webhook's event arriving", WAIT)
    settings = make_settings(
        webhooks={
            "kept": {"url": kept.url, "headers": {"X-New": "yes"}},
            "added": {"url": added.url},
        }
    )
    loop = asyncio.get_running_loop()
    reconfiguring = asyncio.create_task(hooks.reconfigure(settings, loop.time() + WAIT))
    await asyncio.sleep(0)  # the new webhooks are in place; the removed one is draining
    hooks.publish("result", {"event": "result", "n": 2})
    removed.gate.set()
    await asyncio.wait_for(reconfiguring, WAIT)
    await until(lambda: len(kept.received) == 2 and added.received, "the deliveries", WAIT)
    assert kept.bodies == [{"event": "result", "n": 1}, {"event": "result", "n": 2}]
    assert kept.received[1].headers["X-New"] == "yes"  # its new settings apply
    assert added.bodies == [{"event": "result", "n": 2}]
    assert removed.bodies == [{"event": "result", "n": 1}]  # delivered, then it stopped
