"""HTTP request metrics: every answer counted by route pattern, method and status, and timed.

:func:`http_metrics_middleware` labels a request with its route's pattern
(``request.match_info.route.resource.canonical``, e.g. ``/{repo}/video.jpg``), never the raw path,
so a scan of made-up paths cannot grow the label set; requests no route matched (404, 405) are
``route="unmatched"``, and methods outside the standard ones are ``method="other"``. It must sit
outside the error middleware, so that errors are counted with the status of the JSON answer the
client got; an ``HTTPException`` that passes through (a redirect) is counted with its own status.
Requests that got no answer (the handler was cancelled, the client went away mid-write) are not
counted.

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

from server.keys import metrics_key
from server.web.socketio import SOCKETIO_PREFIX

UNMATCHED = "unmatched"
OTHER_METHOD = "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@web.middleware
async def http_metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time the request (see the module docstring)."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _record(request, exc.status, time.perf_counter() - started)
        raise
    _record(request, response.status, None if response.prepared else time.perf_counter() - started)
    return response


def _record(request: web.Request, status: int, seconds: float | None) -> None:
    resource = request.match_info.route.resource
    route = UNMATCHED if resource is None else resource.canonical
    method = request.method if request.method in _METHODS else OTHER_METHOD
    if route == SOCKETIO_PREFIX:
        seconds = None
    request.app[metrics_key].count_http_request(route, method, status, seconds)
