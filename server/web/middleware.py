"""The one place where errors become HTTP answers: :func:`error_answer`, which the accounting
middleware (``server.web.accounting``) calls for whatever a handler raises.

Domain errors (:class:`server.errors.FramehubError`) and aiohttp's own HTTP errors (unknown route,
wrong method, body too large) all leave as ``{"error": "..."}`` JSON with the right status, so
every client, script or browser, reads the same shape.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from server.errors import FramehubError

_LOGGER = logging.getLogger(__name__)


def error_response(status: int, message: str, **headers: str) -> web.Response:
    """A JSON error answer."""
    return web.json_response({"error": message}, status=status, headers=headers or None)


def error_answer(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer to ``exc``, raised while answering ``request``; call it from the ``except``
    clause. Raises ``exc`` again when it is no error to answer: an ``HTTPException`` below 400
    (a redirect) or already JSON, a connection gone away."""
    if isinstance(exc, FramehubError):
        if exc.status == 401:
            return error_response(exc.status, str(exc), **{"WWW-Authenticate": "Bearer"})
        return error_response(exc.status, str(exc))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or exc.content_type == "application/json":
            raise exc
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} not allowed for {request.path}"
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return error_response(exc.status, message, **headers)
    if isinstance(exc, HttpProcessingError):  # e.g. a malformed multipart body
        reason = " ".join(str(exc.message).split()) or "malformed request"
        return error_response(400, f"malformed request body: {reason}")
    if isinstance(exc, ConnectionError):
        raise exc
    _LOGGER.exception("unexpected error answering %s %s", request.method, request.path)
    return error_response(500, "internal error; the server log has the details")
