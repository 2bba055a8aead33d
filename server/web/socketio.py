"""The Socket.IO server attached to the app, the requests in flight, and how connections end.

:func:`socketio_server` builds python-socketio's ``AsyncServer`` from the settings.
:class:`InFlight` holds the count of HTTP requests being answered and the transports of Socket.IO
ones (kept by ``server.web.accounting``'s middleware), so that a stop can wait for the first and
close the second.

:func:`disconnect_clients` is the last step of a stop, once every session's last result is out:
Socket.IO clients get a disconnect, then each Engine.IO socket a close packet. python-engineio's
own ``disconnect()`` waits until each client has taken that packet, which a polling client that
has gone away never does (a stop then took 71 s, past systemd's ``TimeoutStopSec``); here that wait
is bounded by :data:`CLOSE_WAIT`. Transports still open after that (websockets whose client waits
for the server to close, half-open connections) are closed, so their handlers return at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import socketio

from server.settings import SessionSettings, Settings

_LOGGER = logging.getLogger(__name__)

SOCKETIO_PREFIX = "/socket.io/"
# A polling client that is still there has its next poll in flight and takes the close packet at
# once; one that has not asked within this time is gone.
CLOSE_WAIT = 1.0


def origin_rule(listed: list[str]) -> str | Callable[[str | None, dict[str, Any]], bool] | None:
    """python-engineio's ``cors_allowed_origins`` for ``[server] cors_allowed_origins``: None is
    its same-origin rule, "*" any origin; a list is the listed origins and the server's own
    still, since engineio's list would replace its same-origin rule and refuse the pages under
    ``/ui/`` once another site is listed."""
    if "*" in listed:
        return "*"
    if not listed:
        return None
    allowed = frozenset(listed)

    def allowed_origin(origin: str | None, environ: dict[str, Any]) -> bool:
        return origin in allowed or origin in _own_origins(environ)

    return allowed_origin


def _own_origins(environ: dict[str, Any]) -> set[str]:
    """The origins a page of this server has: its Host, and what a proxy says it forwarded
    (engineio's own same-origin rule)."""
    scheme, host = environ.get("wsgi.url_scheme", "http"), environ.get("HTTP_HOST", "")
    forwarded_scheme = environ.get("HTTP_X_FORWARDED_PROTO", scheme).split(",")[0].strip()
    forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip()
    return {f"{scheme}://{host}", f"{forwarded_scheme}://{forwarded_host}"}


class SocketIOServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, keeping Engine.IO handshakes that connect to no namespace cheap.

    A handshake costs a session whose ping task holds it for engineio's ping interval (25 s)
    even once closed, so a client opening them in a loop could grow memory without bound. Each
    handshake is therefore counted until it connects to the namespace, at most ``max_pending`` at
    once and ``max_pending_per_ip`` per client address (the ``[sessions]`` caps of unused session
    ids; more are answered 401 naming the limit, and nothing is kept); one that has not connected
    within ``handshake_timeout`` is closed.
    """

    def __init__(
        self,
        *,
        sessions: SessionSettings,
        address_of: Callable[[dict[str, Any]], str],
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._sessions = sessions
        self._address_of = address_of
        self._handshakes: dict[str, str] = {}  # eio sid -> client address, for handshake_timeout
        self._handshakes_per_address: Counter[str] = Counter()

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> str | None:
        # python-socketio has no public hook for a new Engine.IO connection: this method is the
        # engine's "connect" handler, whose non-None answer engineio turns into a 401.
        address = self._address_of(environ)
        if len(self._handshakes) >= self._sessions.max_pending:
            return (
                f"too many Socket.IO handshakes at once ([sessions] max_pending = "
                f"{self._sessions.max_pending}); retry in a moment"
            )
        if self._handshakes_per_address[address] >= self._sessions.max_pending_per_ip:
            return (
                f"too many Socket.IO handshakes from {address} ([sessions] max_pending_per_ip "
                f"= {self._sessions.max_pending_per_ip}); retry in a moment"
            )
        await super()._handle_eio_connect(eio_sid, environ)
        self._handshakes[eio_sid] = address
        self._handshakes_per_address[address] += 1
        loop = asyncio.get_running_loop()
        loop.call_later(self._sessions.handshake_timeout, self._handshake_over, eio_sid)
        return None

    async def _handle_connect(self, eio_sid: str, namespace: str, data: Any) -> None:
        # The namespace connect packet (python-socketio's handler, private as the one above):
        # from here the connection counts as a session, not as a bare handshake.
        self._forget_handshake(eio_sid)
        await super()._handle_connect(eio_sid, namespace, data)

    def _forget_handshake(self, eio_sid: str) -> bool:
        """Stop counting a handshake; False when it was not counted (any more)."""
        address = self._handshakes.pop(eio_sid, None)
        if address is None:
            return False
        self._handshakes_per_address[address] -= 1
        if not self._handshakes_per_address[address]:
            del self._handshakes_per_address[address]
        return True

    def _handshake_over(self, eio_sid: str) -> None:
        if not self._forget_handshake(eio_sid):
            return  # it connected in time
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or self.manager.sid_from_eio_sid(eio_sid, "/") is not None:
            return
        _LOGGER.debug("closing Engine.IO connection %s: no namespace connect in time", eio_sid)
        self.start_background_task(self._close, eio_sid, socket)

    async def _close(self, eio_sid: str, socket: Any) -> None:
        # The socket is marked closed at once; only the wait for its client to hear it is
        # bounded. engineio drops closed sockets in a sweep that takes ping_timeout (20 s) to
        # go round: drop it here at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                socket.close(reason=self.eio.reason.SERVER_DISCONNECT), CLOSE_WAIT
            )
        self.eio.sockets.pop(eio_sid, None)


def socketio_server(
    settings: Settings,
    address_of: Callable[[dict[str, Any]], str],
    client_manager: socketio.AsyncManager | None = None,
) -> socketio.AsyncServer:
    """python-socketio's server with framehub's CORS rule, message limit and handshake caps;
    ``address_of`` names the client of a request's WSGI-style environ; ``client_manager`` is the
    Redis manager of a cluster."""
    origins = settings.server.cors_allowed_origins
    return SocketIOServer(
        client_manager=client_manager,
        sessions=settings.sessions,
        address_of=address_of,
        async_mode="aiohttp",
        cors_allowed_origins=origin_rule(origins),
        max_http_buffer_size=settings.sessions.max_buffer_size,
        # A client's events are handled one after the other, in the task reading its connection,
        # rather than each in a task of its own: every handler answers at once (a frame is
        # checked and queued in microseconds), so the task per event only cost time, about 4 us
        # a frame with its done callback (of some 200 us, bench/ingest.py).
        async_handlers=False,
        logger=False,
        engineio_logger=False,
    )


class InFlight:
    """The HTTP requests being answered, and the transports of the Socket.IO ones."""

    def __init__(self) -> None:
        self.requests = 0
        self.socketio_transports: set[asyncio.BaseTransport] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def started(self, socketio_transport: asyncio.BaseTransport | None) -> None:
        """A request is being answered; ``socketio_transport`` is that of a Socket.IO one."""
        self.requests += 1
        self._idle.clear()
        if socketio_transport is not None:
            self.socketio_transports.add(socketio_transport)

    def ended(self, socketio_transport: asyncio.BaseTransport | None) -> None:
        """The request :meth:`started` with the same transport is answered."""
        self.requests -= 1
        if not self.requests:
            self._idle.set()
        if socketio_transport is not None:
            self.socketio_transports.discard(socketio_transport)

    async def wait_idle(self, deadline: float) -> None:
        """Until no request is being answered, or ``deadline`` (loop time)."""
        timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            _LOGGER.warning("stopping with %d requests still being answered", self.requests)


async def disconnect_clients(sio: socketio.AsyncServer, in_flight: InFlight) -> None:
    """Close every Socket.IO connection, waiting at most :data:`CLOSE_WAIT` for any client."""
    for namespace in list(sio.manager.get_namespaces()):
        for sid, _eio_sid in list(sio.manager.get_participants(namespace, None)):
            await sio.disconnect(sid, namespace=namespace)
    sockets = list(sio.eio.sockets.values())
    if sockets:
        reason = sio.eio.reason.SERVER_DISCONNECT
        closes = [asyncio.ensure_future(socket.close(reason=reason)) for socket in sockets]
        _, late = await asyncio.wait(closes, timeout=CLOSE_WAIT)
        for close in late:  # the socket is marked closed already; only the wait is given up
            close.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        sio.eio.sockets.clear()
    await sio.shutdown()
    for transport in list(in_flight.socketio_transports):
        transport.close()
