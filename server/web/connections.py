"""Limits on connections, so slow or greedy clients cannot take the server from everyone else.

``server.cli`` listens through :meth:`ConnectionGuard.protocol_factory`, which puts a thin
:class:`GuardedConnection` between each accepted socket and aiohttp's own protocol:

- past ``[server] max_connections`` open connections (kept below the process's file limit, which
  :func:`raise_file_limit` lifts from its soft to its hard value at start), or past
  ``max_connections_per_ip`` from one address, a new connection is closed at once, before aiohttp
  sees it;
- a connection must deliver a request's headers within ``header_timeout`` of opening, or of the
  first byte after its previous request (checked once a second by :meth:`ConnectionGuard.sweep`):
  the deadline is cleared by :meth:`ConnectionGuard.request_started`, which the accounting
  middleware (``server.web.accounting``) calls only once aiohttp has parsed the headers, so a
  client trickling a header line every few
  seconds is closed (a keep-alive connection that sends nothing is aiohttp's ``keepalive_timeout``
  to close);
- a request body that stops flowing is the body readers' ``body_idle_timeout`` (``server.web.bodies``).

Connections from ``trusted_proxies`` (nginx in front) are not capped per address, since one proxy
carries many clients; :func:`client_address` reads their client from ``X-Forwarded-For``, and
:meth:`ConnectionGuard.admit_request` caps the requests in flight per such address instead.
Refusals and timeouts are counted in ``/metrics`` and logged at most once per
:data:`LOG_INTERVAL`, with a count, never per connection; so is running out of files at
``accept()``, which asyncio would report every time.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, cast

from aiohttp import web

from server.errors import TooManyConnections
from server.ops.metrics import Metrics
from server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)

# At most one log line per kind of refusal in this many seconds.
LOG_INTERVAL = 10.0
# File descriptors kept free beyond max_connections: the listener, repositories being read, clip
# temp files, the sd_notify socket, outgoing requests to the analysis APIs and webhooks.
RESERVED_FILES = 128
# At most how often overdue request headers are looked for.
SWEEP_INTERVAL = 1.0
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def raise_file_limit() -> int:
    """Lift the soft limit on open files to the hard one; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a hard limit of "unlimited" some kernels refuse
            _LOGGER.warning("cannot raise the open files limit from %d: %s", soft, exc)
    return soft


def connection_cap(configured: int, file_limit: int) -> int:
    """``max_connections`` as it can be honoured under ``file_limit`` (0 asks for the most)."""
    most = max(file_limit - RESERVED_FILES, 1)
    return most if configured == 0 else min(configured, most)


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` entries (addresses or networks) as networks."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def is_trusted(address: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether ``address`` is one of the trusted proxies."""
    if not networks or not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request: web.Request, networks: tuple[Network, ...]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the last address
    in ``X-Forwarded-For`` that is not one (what nginx's ``realip`` module does)."""
    peer = request.remote or ""
    if not is_trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
    for hop in reversed(hops):
        if hop and not is_trusted(hop, networks):
            return hop
    return peer


class _Throttled:
    """Counts of one kind of event, logged at most once per :data:`LOG_INTERVAL`."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._count = 0
        self._last = float("-inf")

    def happened(self, **details: Any) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= LOG_INTERVAL:
            _LOGGER.warning(self._message, {"count": self._count, **details})
            self._count = 0
            self._last = now


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the guard's checks (see the module docs).

    ``deadline`` is when the headers it waits for are due (``time.monotonic()``; 0 when it waits
    for none): a float set and cleared per request, swept once a second by
    :meth:`ConnectionGuard.sweep`, where a timer per request cost 3.5 us of a ``video.jpg``
    request of about 126 (bench/camera.py).
    """

    __slots__ = (
        "_guard",
        "_inner",
        "_make",
        "address",
        "deadline",
        "in_request",
        "transport",
        "via_proxy",
    )

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make = make
        self._inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.address = ""
        self.via_proxy = False
        self.deadline = 0.0
        self.in_request = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.address = peer[0] if isinstance(peer, tuple) and peer else ""
        self.via_proxy = is_trusted(self.address, self._guard.trusted)
        if not self._guard.admit(self):
            self.transport.abort()
            return
        self._inner = self._make()
        self._inner.connection_made(transport)
        self.deadline = time.monotonic() + self._guard.header_timeout

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self.deadline and not self.in_request:
            # The first byte of the next request on a kept-alive connection.
            self.deadline = time.monotonic() + self._guard.header_timeout
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline = 0.0
        if self._inner is None:
            return
        self._guard.release(self)
        inner, self._inner = self._inner, None
        inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class ConnectionGuard:
    """The connection limits of ``[server]`` for one app (see the module docstring)."""

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.header_timeout = settings.header_timeout
        self.max_connections = settings.max_connections
        self.max_per_address = settings.max_connections_per_ip
        self.trusted = parse_networks(settings.trusted_proxies)
        self._metrics = metrics
        self._file_limit = 0
        self._open: dict[asyncio.BaseTransport, GuardedConnection] = {}
        self._per_address: Counter[str] = Counter()
        self._forwarded_in_flight: Counter[str] = Counter()
        self._refused_total = _Throttled(
            "refused %(count)d connections: max_connections (%(limit)d) are open"
        )
        self._refused_address = _Throttled(
            "refused %(count)d connections: %(address)s has max_connections_per_ip (%(limit)d) open"
        )
        self._slow_headers = _Throttled(
            "closed %(count)d connections that sent no complete request headers within "
            "header_timeout (%(timeout)g s)"
        )
        self._out_of_files = _Throttled(
            "accept() failed %(count)d times: out of file descriptors (limit %(limit)d); "
            "lower [server] max_connections or raise LimitNOFILE"
        )

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def limit_connections(self, file_limit: int) -> None:
        """Keep ``max_connections`` below ``file_limit``, the open files the process may have."""
        self._file_limit = file_limit
        self.max_connections = connection_cap(self.max_connections, file_limit)

    def protocol_factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], Any]:
        """What ``loop.create_server`` calls per connection: ``make()``'s protocol, guarded."""
        return lambda: GuardedConnection(self, make)

    def admit(self, connection: GuardedConnection) -> bool:
        """Count a new connection in, or say why it is refused."""
        if self.max_connections and len(self._open) >= self.max_connections:
            self._metrics.connections_refused.labels("max_connections").inc()
            self._refused_total.happened(limit=self.max_connections)
            return False
        address = connection.address
        per_address = not connection.via_proxy
        if per_address and self._per_address[address] >= self.max_per_address:
            self._metrics.connections_refused.labels("max_connections_per_ip").inc()
            self._refused_address.happened(address=address, limit=self.max_per_address)
            return False
        assert connection.transport is not None
        self._open[connection.transport] = connection
        if per_address:
            self._per_address[address] += 1
        return True

    def release(self, connection: GuardedConnection) -> None:
        if connection.transport is not None:
            self._open.pop(connection.transport, None)
        if not connection.via_proxy:
            self._per_address[connection.address] -= 1
            if self._per_address[connection.address] <= 0:
                del self._per_address[connection.address]

    def timed_out(self) -> None:
        self._metrics.connections_timed_out.labels("headers").inc()
        self._slow_headers.happened(timeout=self.header_timeout)

    def loop_exception_handler(
        self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]
    ) -> None:
        """The event loop's exception handler: running out of files at ``accept()`` is counted
        and logged once per interval; everything else goes to asyncio's default handler."""
        exc = context.get("exception")
        out_of_files = isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
        if context.get("message") == ACCEPT_OUT_OF_RESOURCES or out_of_files:
            self._metrics.connections_refused.labels("out_of_files").inc()
            self._out_of_files.happened(limit=self._file_limit)
            return
        loop.default_exception_handler(context)

    async def sweep(self) -> None:
        """Close, once a second, the connections whose request headers are overdue."""
        interval = min(SWEEP_INTERVAL, self.header_timeout / 2)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self._open.values()):
                if connection.deadline and connection.deadline < now and not connection.in_request:
                    connection.deadline = 0.0
                    self.timed_out()
                    if connection.transport is not None:
                        connection.transport.abort()

    # The per-request part, called around each request by the accounting middleware
    # (server.web.accounting), which does the in-flight count and the HTTP metrics too: a
    # middleware of its own cost about 2 us a request.

    def request_started(self, request: web.Request) -> GuardedConnection | None:
        """Mark the request's connection as in a request (its headers arrived): its header
        deadline is off until :meth:`request_ended`. None when it is not behind the guard (a
        test server)."""
        connection = self._open.get(request.transport)  # type: ignore[arg-type]
        if connection is not None:
            connection.deadline = 0.0
            connection.in_request += 1
        return connection

    def request_ended(self, connection: GuardedConnection | None) -> None:
        if connection is not None:
            connection.in_request -= 1

    def admit_request(
        self, request: web.Request, connection: GuardedConnection | None
    ) -> str | None:
        """The client of a request through a trusted proxy, counted in until
        :meth:`release_request`; None for any other request. TooManyConnections past the cap."""
        if connection is None or not connection.via_proxy:
            return None
        forwarded = client_address(request, self.trusted)
        if self._forwarded_in_flight[forwarded] >= self.max_per_address:
            self._metrics.connections_refused.labels("max_connections_per_ip").inc()
            raise TooManyConnections(
                f"{forwarded} has max_connections_per_ip ({self.max_per_address}) "
                "requests open; try again later"
            )
        self._forwarded_in_flight[forwarded] += 1
        return forwarded

    def release_request(self, forwarded: str) -> None:
        self._forwarded_in_flight[forwarded] -= 1
        if not self._forwarded_in_flight[forwarded]:
            del self._forwarded_in_flight[forwarded]

    def body_stalled(self) -> None:
        """Count a request whose body stopped flowing (``BodyStalled``)."""
        self._metrics.connections_timed_out.labels("body").inc()
