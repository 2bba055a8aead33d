"""Fan-out of a clip or video to every configured processor (``[processors.NAME]``).

:meth:`ProcessorPool.analyse` hands one payload (bytes in memory, or a file streamed from disk) to
each chosen processor concurrently. A built-in one (``builtin = "summary"``) is called in-process
(:class:`server.live.builtins.BuiltinAnalyses`, one decode for all the built-ins of a payload).
An external one gets the payload posted as multipart through the app's one ``ClientSession``,
under a global limit of concurrent requests. Each processor answers on its own: connection errors,
5xx and 429 are retried with exponential backoff (``retries``; the policy of
:mod:`server.web.retries`, shared with the webhooks), a timeout or any other failure becomes
``{"error": ..., "status": ...}`` for that processor only, so one bad API never holds back the
rest. JSON answers are passed through; other answers as text, both capped at
``max_response_bytes``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from server.errors import FramehubError, UnknownProcessor
from server.live.builtins import BuiltinAnalyses
from server.ops.metrics import Metrics
from server.settings import ProcessorSettings, Settings
from server.web.bodies import read_capped
from server.web.retries import AttemptFailed, attempt_errors, http_failure, with_retries

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Payload:
    """What is sent: ``data`` in memory or the file at ``path``, under ``filename``."""

    filename: str
    content_type: str
    data: bytes | None = None
    path: Path | None = None


def public_description(name: str, processor: ProcessorSettings) -> dict[str, Any]:
    """What ``GET /options`` tells about a processor: no header values, no credentials in URLs."""
    url = None
    if processor.url:
        parts = urlsplit(processor.url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host  # urlsplit drops an IPv6 address's brackets
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        url = f"{parts.scheme}://{netloc}{parts.path}"
    return {
        "name": name,
        "builtin": processor.builtin or None,
        "url": url,
        "field": processor.field,
        "timeout": processor.timeout,
        "retries": processor.retries,
        "headers": sorted(processor.headers),
        "max_response_bytes": processor.max_response_bytes,
    }


class ProcessorPool:
    """Posts payloads to the configured processors; one per app, see ``server.app``."""

    def __init__(
        self,
        settings: Settings,
        client: aiohttp.ClientSession,
        builtins: BuiltinAnalyses,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self.processors = dict(settings.processors)
        self._client = client
        self._builtins = builtins
        self._limit = asyncio.Semaphore(settings.clips.max_concurrent_requests)

    def reconfigure(self, settings: Settings) -> None:
        """New ``[processors]``: payloads from now on go to these; those in flight finish as they
        began."""
        self.processors = dict(settings.processors)

    def warm_up(self) -> None:
        """Work is coming (a live session, a batch job): start the built-ins' workers if any
        processor is built in."""
        if any(processor.builtin for processor in self.processors.values()):
            self._builtins.warm_up()

    def select(self, names: Iterable[str] | None) -> list[str]:
        """The processors to use: all, or the ``names`` asked for (each must exist)."""
        if names is None:
            return list(self.processors)
        chosen = []
        for name in names:
            if name not in self.processors:
                known = ", ".join(sorted(self.processors)) or "none configured"
                raise UnknownProcessor(f"unknown processor {name!r}; known processors: {known}")
            if name not in chosen:
                chosen.append(name)
        return chosen

    async def analyse(self, payload: Payload, names: Iterable[str] | None = None) -> dict[str, Any]:
        """``{NAME: answer or {"error", "status"}}`` for every chosen processor.

        Names are chosen against today's processors; a batch job chosen before a reload removed
        one of its processors gets an error for that one.
        """
        processors = self.processors  # a reload replaces the dict; this payload keeps its own
        chosen = list(processors) if names is None else list(dict.fromkeys(names))
        answers: dict[str, Any] = {
            name: {"error": "this processor was removed by a settings reload", "status": None}
            for name in chosen
            if name not in processors
        }
        builtin = [name for name in chosen if name in processors and processors[name].builtin]
        remote = [name for name in chosen if name in processors and not processors[name].builtin]

        async def ask_builtins() -> None:
            answers.update(await self._ask_builtins(builtin, processors, payload))

        async def ask(name: str) -> None:
            answers[name] = await self._ask(name, processors[name], payload)

        await asyncio.gather(ask_builtins(), *(ask(name) for name in remote))
        return {name: answers[name] for name in chosen}

    async def _ask_builtins(
        self, names: list[str], processors: dict[str, ProcessorSettings], payload: Payload
    ) -> dict[str, Any]:
        """The built-ins' answers from one in-process decode, under the longest of their
        timeouts."""
        if not names:
            return {}
        started = time.monotonic()
        kinds = sorted({processors[name].builtin for name in names})
        timeout = max(processors[name].timeout for name in names)
        source = payload.path if payload.path is not None else (payload.data or b"")
        try:
            async with asyncio.timeout(timeout):
                by_kind = await self._builtins.analyse(source, kinds)
        except FramehubError as exc:
            failed: Any = {"error": str(exc), "status": exc.status}
            by_kind = dict.fromkeys(kinds, failed)
        except TimeoutError:
            failed = {"error": f"no answer within the {timeout:g} s timeout", "status": None}
            by_kind = dict.fromkeys(kinds, failed)
        seconds = time.monotonic() - started
        answers = {}
        for name in names:
            answers[name] = by_kind[processors[name].builtin]
            ok = not (isinstance(answers[name], dict) and "error" in answers[name])
            self._metrics.processor_requests.labels(name, "ok" if ok else "error").inc()
            self._metrics.processor_seconds.labels(name).observe(seconds)
        return answers

    async def _ask(self, name: str, processor: ProcessorSettings, payload: Payload) -> Any:
        started = time.monotonic()

        async def attempt() -> Any:
            # The request slot is held for one attempt, never through a backoff.
            async with self._limit:
                return await self._post(processor, payload)

        def failed(failure: AttemptFailed) -> None:
            self._metrics.processor_errors.labels(name, failure.kind).inc()

        try:
            answer = await with_retries(attempt, processor.retries, failed)
        except AttemptFailed as failure:
            self._metrics.processor_requests.labels(name, "error").inc()
            self._metrics.processor_seconds.labels(name).observe(time.monotonic() - started)
            _LOGGER.warning(
                "processor %s failed after %d attempt(s) in %.2f s: %s",
                name,
                failure.attempts,
                time.monotonic() - started,
                failure,
            )
            return {"error": str(failure), "status": failure.status}
        self._metrics.processor_requests.labels(name, "ok").inc()
        self._metrics.processor_seconds.labels(name).observe(time.monotonic() - started)
        return answer

    async def _post(self, processor: ProcessorSettings, payload: Payload) -> Any:
        form = aiohttp.FormData()
        timeout = aiohttp.ClientTimeout(total=processor.timeout)
        with attempt_errors(processor.timeout):
            if payload.path is not None:
                # aiohttp reads file payloads in its executor, chunk by chunk: never all in memory.
                with payload.path.open("rb") as body:
                    form.add_field(
                        processor.field,
                        body,
                        filename=payload.filename,
                        content_type=payload.content_type,
                    )
                    return await self._send(processor, form, timeout)
            form.add_field(
                processor.field,
                payload.data or b"",
                filename=payload.filename,
                content_type=payload.content_type,
            )
            return await self._send(processor, form, timeout)

    async def _send(
        self,
        processor: ProcessorSettings,
        form: aiohttp.FormData,
        client_timeout: aiohttp.ClientTimeout,
    ) -> Any:
        async with self._client.post(
            processor.url, data=form, headers=processor.headers, timeout=client_timeout
        ) as resp:
            body = await _read_capped(resp, processor.max_response_bytes)
            text = body.decode(resp.charset or "utf-8", errors="replace")
            if resp.status >= 400:
                raise http_failure(resp.status, text, resp.headers.get("Retry-After"))
            try:
                return json.loads(text)
            except ValueError:
                return text


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    def too_large() -> AttemptFailed:
        size = f"of {resp.content_length} bytes " if resp.content_length is not None else ""
        return AttemptFailed(
            f"answer {size}is over max_response_bytes ({limit})", "too_large", status=resp.status
        )

    if resp.content_length is not None and resp.content_length > limit:
        raise too_large()
    return await read_capped(resp.content.read, limit, too_large)
