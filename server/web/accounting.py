"""The outermost middleware: each request's bookkeeping, and its errors turned into JSON answers.

:class:`Accounting` does, around every request, what the stop, the connection limits and
``/metrics`` need to know of it, in one middleware (each had its own: merged, a ``video.jpg``
request costs about 6 us less, bench/camera.py):

- the requests in flight (:class:`server.web.socketio.InFlight`), which the ordered stop waits
  for, and the transports of Socket.IO ones, which it closes;
- the connection guard's per-request part (:class:`server.web.connections.ConnectionGuard`): the
  header deadline is off while a request is answered, requests through a trusted proxy are capped
  per client, stalled bodies are counted;
- errors: whatever the handler raises becomes its JSON answer through
  :func:`server.web.middleware.error_answer`, so that the metrics below see the final status;
- the HTTP metrics: every answer counted by route pattern, method and status, and timed.

Requests are labelled with their route's pattern (``request.match_info.route.resource.canonical``,
e.g. ``/{repo}/video.jpg``), never the raw path, so a scan of made-up paths cannot grow the label
set; requests no route matched (404, 405) are ``route="unmatched"``, and methods outside the
standard ones are ``method="other"``. An ``HTTPException`` that passes through the error mapping
(a redirect) is counted with its own status. Requests that got no answer (the handler was
cancelled, the client went away mid-write) are not counted.

Every request is counted once it ends. ``framehub_http_request_seconds`` times only those whose
whole answer is known when the handler returns. Long-lived ones are counted but never timed,
since their duration is how long someone watched: answers the handler prepared and streamed
itself (MJPEG, Server-Sent Events, websockets; ``response.prepared`` on return tells them apart)
and anything on Socket.IO's route, whose long-polling GETs are held open by design until there is
something to send.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

from server.errors import BodyStalled
from server.ops.metrics import Metrics
from server.web.connections import ConnectionGuard
from server.web.middleware import error_answer
from server.web.socketio import SOCKETIO_PREFIX, InFlight

UNMATCHED = "unmatched"
OTHER_METHOD = "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Accounting:
    """The bookkeeping middleware of one app (see the module docstring)."""

    def __init__(self, in_flight: InFlight, guard: ConnectionGuard, metrics: Metrics) -> None:
        self._in_flight = in_flight
        self._guard = guard
        self._count = metrics.http_requests.count

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count, guard, answer errors of and time the request (see the module docstring)."""
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = UNMATCHED if resource is None else resource.canonical
        method = request.method if request.method in _METHODS else OTHER_METHOD
        socketio = route == SOCKETIO_PREFIX
        socketio_transport = request.transport if socketio else None
        guard = self._guard
        self._in_flight.started(socketio_transport)
        connection = guard.request_started(request)
        try:
            try:
                forwarded = guard.admit_request(request, connection)
                try:
                    response = await handler(request)
                finally:
                    if forwarded is not None:
                        guard.release_request(forwarded)
            except BodyStalled as exc:
                guard.body_stalled()
                response = error_answer(request, exc)
            except Exception as exc:
                response = error_answer(request, exc)
        except web.HTTPException as exc:  # passed through the error mapping: a redirect
            self._count(route, method, exc.status, time.perf_counter() - started)
            raise
        finally:
            guard.request_ended(connection)
            self._in_flight.ended(socketio_transport)
        timed = not (response.prepared or socketio)
        self._count(
            route, method, response.status, time.perf_counter() - started if timed else None
        )
        return response
