"""Webhooks (``[webhooks.NAME]``): results and events POSTed as JSON to URLs that asked for them.

The camera and batch code call :meth:`Webhooks.publish` with an event (``result``, ``camera``,
``batch``) and its body. The body is encoded to JSON once, there and then (later changes to the
dict do not leak into what is sent), and put on the bounded queue of every webhook whose
``events`` list has the event; a full queue drops its oldest event. Publishing never waits and
never raises, so a dead or slow receiver never holds back ingest, and never grows memory past
``max_queued`` events per webhook. After :meth:`Webhooks.close` nothing more is taken.

One sender task per webhook (:meth:`Webhooks.start`) takes its events in order and delivers them
one at a time: a POST with the webhook's headers through the app's one ``ClientSession``, each
attempt within ``timeout``, retried ``retries`` times with backoff on connection errors, 5xx and
429 (the policy of :mod:`server.web.retries`, shared with the processors). A delivery given up is
counted and logged once, with the webhook's name and the reason, never its header values.

:meth:`Webhooks.close` is the stop: what is queued is delivered until a deadline, then the senders
are cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
from multidict import CIMultiDict

from server.ops.metrics import Metrics
from server.ops.tasks import cancel_and_wait
from server.settings import Settings, WebhookSettings
from server.web.retries import AttemptFailed, attempt_errors, http_failure, with_retries

_LOGGER = logging.getLogger(__name__)

# Bytes of an error answer read to quote in the log; the rest is not waited for.
MAX_ERROR_BYTES = 4096


class _Sender:
    """One webhook: its queue of (event, JSON body) and the task that delivers them in order."""

    def __init__(
        self,
        name: str,
        webhook: WebhookSettings,
        client: aiohttp.ClientSession,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.webhook = webhook
        self._client = client
        self._metrics = metrics
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(webhook.max_queued)
        self.task: asyncio.Task[None] | None = None
        self.busy = False
        self._headers: CIMultiDict[str] = CIMultiDict()
        self.reconfigure(webhook)
        # Series that exist from the start, so a rate of failures reads 0 rather than nothing.
        for outcome in ("ok", "failed"):
            metrics.webhook_deliveries.labels(name, outcome)
        metrics.webhook_dropped.labels(name)

    def reconfigure(self, webhook: WebhookSettings) -> None:
        """New settings for this webhook; the events it holds stay queued (the newest ones, when
        ``max_queued`` shrank)."""
        self.webhook = webhook
        # The receiver's own Content-Type, if its headers name one, wins over ours.
        self._headers = CIMultiDict({"Content-Type": "application/json"})
        self._headers.update(webhook.headers)
        if self.queue.maxsize != webhook.max_queued:
            old, self.queue = self.queue, asyncio.Queue(webhook.max_queued)
            while not old.empty():
                event, data = old.get_nowait()
                old.task_done()
                self.offer(event, data)
        self._metrics.webhook_queued.labels(self.name).set_function(self.queue.qsize)

    def offer(self, event: str, data: bytes) -> None:
        """Queue one event, dropping the oldest queued one when full."""
        if self.queue.full():
            self.queue.get_nowait()
            self.queue.task_done()  # close() joins the queue: a dropped event is done with
            self._metrics.webhook_dropped.labels(self.name).inc()
        self.queue.put_nowait((event, data))

    @property
    def undelivered(self) -> int:
        """Events queued or being delivered."""
        return self.queue.qsize() + self.busy

    async def run(self) -> None:
        """Until cancelled: deliver the queued events one at a time, in order."""
        while True:
            event, data = await self.queue.get()
            self.busy = True
            try:
                await self._deliver(event, data)
            finally:
                self.busy = False
                self.queue.task_done()

    async def _deliver(self, event: str, data: bytes) -> None:
        started = time.monotonic()
        try:
            await with_retries(lambda: self._post(data), self.webhook.retries)
        except AttemptFailed as failure:
            outcome = "failed"
            _LOGGER.warning(
                "webhook %s: %s event not delivered after %d attempt(s) in %.2f s: %s",
                self.name,
                event,
                failure.attempts,
                time.monotonic() - started,
                failure,
            )
        except Exception:
            # A bug, or something aiohttp raises that nobody foresaw: this event is lost, the
            # sender goes on with the next one.
            outcome = "failed"
            _LOGGER.exception("webhook %s: %s event not delivered", self.name, event)
        else:
            outcome = "ok"
        self._metrics.webhook_deliveries.labels(self.name, outcome).inc()
        self._metrics.webhook_seconds.labels(self.name).observe(time.monotonic() - started)

    async def _post(self, data: bytes) -> None:
        webhook = self.webhook
        with attempt_errors(webhook.timeout):
            # Not following redirects: aiohttp would turn a redirected POST into a GET without the
            # event, and a receiver that moved should be told to us, not papered over.
            async with self._client.post(
                webhook.url,
                data=data,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=webhook.timeout),
                allow_redirects=False,
            ) as resp:
                if resp.status >= 400:
                    excerpt = await resp.content.read(MAX_ERROR_BYTES)
                    text = excerpt.decode(resp.charset or "utf-8", errors="replace")
                    raise http_failure(resp.status, text, resp.headers.get("Retry-After"))
                if resp.status >= 300:
                    raise AttemptFailed(
                        f"HTTP {resp.status}: redirects are not followed", "http_3xx"
                    )


class Webhooks:
    """The configured webhooks; one per app, see ``server.app``."""

    def __init__(self, settings: Settings, client: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics
        self._senders = [
            _Sender(name, webhook, client, metrics) for name, webhook in settings.webhooks.items()
        ]
        self._closed = False

    async def reconfigure(self, settings: Settings, deadline: float) -> None:
        """New ``[webhooks]``: a webhook kept keeps its queue under its new settings, a new one
        starts, a removed one delivers what it holds until ``deadline`` (loop time), then stops."""
        current = {sender.name: sender for sender in self._senders}
        senders = []
        for name, webhook in settings.webhooks.items():
            sender = current.pop(name, None)
            if sender is None:
                sender = _Sender(name, webhook, self._client, self._metrics)
            else:
                sender.reconfigure(webhook)
            senders.append(sender)
        self._senders = senders
        await self.start()
        removed = list(current.values())
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.gather(*(sender.queue.join() for sender in removed))
        except TimeoutError:
            _LOGGER.warning("webhooks removed with events still queued; those are dropped")
        finally:
            await cancel_and_wait([s.task for s in removed if s.task is not None])

    async def start(self) -> None:
        """Start one sender task per configured webhook."""
        for sender in self._senders:
            if sender.task is None:
                sender.task = asyncio.create_task(sender.run(), name=f"webhook {sender.name}")

    def publish(self, event: str, body: dict[str, Any]) -> None:
        """Queue ``body`` (holding ``"event": event``) for every webhook that wants ``event``.

        Never blocks, never raises: each webhook has a bounded queue (``max_queued``) whose
        oldest event is dropped, and counted in ``webhook_dropped``, to make room.
        """
        senders = [s for s in self._senders if event in s.webhook.events]
        if not senders or self._closed:
            return
        try:
            # allow_nan=False: NaN is not JSON, and a receiver's parser may well refuse it.
            data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            _LOGGER.warning("webhooks: %s event not sent, its body is not JSON: %s", event, exc)
            return
        for sender in senders:
            sender.offer(event, data)

    async def close(self, deadline: float) -> None:
        """Deliver what is queued until ``deadline`` (event loop time), then cancel the senders."""
        running = [s for s in self._senders if s.task is not None]
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.gather(*(s.queue.join() for s in running))
        except TimeoutError:
            for sender in running:
                if sender.undelivered:
                    _LOGGER.warning(
                        "webhook %s: %d event(s) not delivered before the stop",
                        sender.name,
                        sender.undelivered,
                    )
        finally:
            # Events published while the queues drained were still taken; from now on none is.
            self._closed = True
            tasks = [s.task for s in running if s.task is not None]
            await cancel_and_wait(tasks)
