"""Outbound HTTP requests with retries: the one retry policy of the processors and the webhooks.

A caller writes one attempt (post, read the answer) and runs it through :func:`with_retries`:

- inside the attempt, :func:`attempt_errors` turns what aiohttp raises into an
  :class:`AttemptFailed` (a timeout is final; connection errors are retried), and
  :func:`http_failure` words an answer of status 400 or more (5xx and 429 retried, other 4xx final,
  ``Retry-After`` kept);
- :func:`with_retries` repeats a retryable failure up to ``retries`` more times, sleeping
  :func:`backoff` between attempts (exponential from FIRST_BACKOFF to MAX_BACKOFF, at least what
  ``Retry-After`` asked, never more than MAX_BACKOFF), tells the caller of every failed attempt,
  and raises the last failure, its ``attempts`` filled in, when it gives up.

Metrics and log lines stay with the callers, who know what they are sending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 5.0
# Characters of an error answer quoted in the failure: enough to tell why, short enough for a log.
MAX_TEXT_IN_ERROR = 200


class AttemptFailed(Exception):
    """One failed attempt: its message, ``kind`` (a metric label), HTTP ``status`` if any, and
    whether it may be retried (after ``retry_after`` seconds, if the server asked)."""

    def __init__(
        self,
        message: str,
        kind: str,
        status: int | None = None,
        retry: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry = retry
        self.retry_after = retry_after
        # Set by with_retries on the failure it gives up with.
        self.attempts = 1


def http_failure(status: int, text: str, retry_after: str | None) -> AttemptFailed:
    """The failure of an answer with ``status`` >= 400, quoting the start of its ``text``."""
    excerpt = " ".join(text[:MAX_TEXT_IN_ERROR].split())
    return AttemptFailed(
        f"HTTP {status}: {excerpt}".rstrip(": "),
        f"http_{status // 100}xx",
        status=status,
        retry=status in RETRY_STATUSES,
        retry_after=parse_retry_after(retry_after),
    )


@contextlib.contextmanager
def attempt_errors(timeout: float) -> Iterator[None]:
    """Turn the errors of one request made with a ``timeout`` into :class:`AttemptFailed`."""
    try:
        yield
    # TimeoutError first: it is an OSError, and aiohttp's timeouts are ClientErrors too.
    except TimeoutError:
        raise AttemptFailed(f"no answer within the {timeout:g} s timeout", "timeout") from None
    except aiohttp.ClientConnectorError as exc:
        raise AttemptFailed(
            f"cannot connect: {exc.strerror or exc}", "connect", retry=True
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise AttemptFailed(f"request failed: {exc}", "connection", retry=True) from None


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0 for the first)."""
    # The exponent is capped long past MAX_BACKOFF: 2.0**1024 would overflow a float.
    delay = min(FIRST_BACKOFF * 2.0 ** min(attempt, 32), MAX_BACKOFF)
    if retry_after is not None:
        # The server's wish is honoured up to our own cap: a retry never waits longer than that.
        delay = min(max(delay, retry_after), MAX_BACKOFF)
    return delay


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    retries: int,
    failed: Callable[[AttemptFailed], object] = lambda failure: None,
) -> T:
    """What ``attempt()`` returns, retrying a retryable :class:`AttemptFailed` up to ``retries``
    times; ``failed`` hears of every failed attempt; the last failure is raised."""
    number = 0
    while True:
        try:
            return await attempt()
        except AttemptFailed as failure:
            failure.attempts = number + 1
            failed(failure)
            if not failure.retry or number >= retries:
                raise
            delay = backoff(number, failure.retry_after)
            number += 1
            await asyncio.sleep(delay)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None when absent or unreadable."""
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None
