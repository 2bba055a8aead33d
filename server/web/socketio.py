"""The Socket.IO server attached to the app, the requests in flight, and how connections end.

:func:`socketio_server` builds python-socketio's ``AsyncServer`` from the settings. The
:class:`InFlight` middleware counts the HTTP requests being answered and remembers the transports
of Socket.IO ones, so that a stop can wait for the first and close the second.

:func:`disconnect_clients` is the last step of a stop, once every session's last result is out:
Socket.IO clients get a disconnect, then each Engine.IO socket a close packet. python-engineio's
own ``disconnect()`` waits until each client has taken that packet, which a polling client that
has gone away never does (a stop then took 71 s, past systemd's ``TimeoutStopSec``); here that wait
is bounded by :data:`CLOSE_WAIT`. Transports still open after that (websockets whose client waits
for the server to close, half-open connections) are closed, so their handlers return at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import socketio
from aiohttp import web
from aiohttp.typedefs import Handler

from server.settings import Settings

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


def socketio_server(settings: Settings) -> socketio.AsyncServer:
    """python-socketio's server with framehub's CORS rule and message limit."""
    origins = settings.server.cors_allowed_origins
    return socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins=origin_rule(origins),
        max_http_buffer_size=settings.sessions.max_buffer_size,
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

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the request while it is answered (see the class docstring)."""
        transport = request.transport
        tracked = transport is not None and request.path.startswith(SOCKETIO_PREFIX)
        if tracked and transport is not None:
            self.socketio_transports.add(transport)
        self.requests += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.requests -= 1
            if not self.requests:
                self._idle.set()
            if tracked and transport is not None:
                self.socketio_transports.discard(transport)

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
