"""The optional API token (``[server] api_token``) and the CORS answer for browser clients.

With a token set, ``GET /get_session_id``, ``POST /batch`` and Socket.IO connects need it, as
``Authorization: Bearer TOKEN`` (HTTP) or ``auth={"token": TOKEN}`` (Socket.IO). Comparison is in
constant time, and the token never appears in an error or a log line.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from server.errors import Unauthorized
from server.keys import settings_key
from server.web.socketio import SOCKETIO_PREFIX

CORS_METHODS = "GET, POST, HEAD, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"
# Answer headers a cross-origin fetch may read: which frame it got, and where a batch job lives.
CORS_EXPOSED = "X-Placeholder, X-Frame-Name, X-Frame-Number, X-Frame-Timestamp, Location"


def token_matches(expected: str, presented: str | None) -> bool:
    """Whether ``presented`` is the configured token (always true when none is configured)."""
    if not expected:
        return True
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header value."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def require_token(request: web.Request) -> None:
    """Raise :class:`Unauthorized` unless the request carries the configured token."""
    expected = request.app[settings_key].server.api_token
    if not token_matches(expected, bearer_token(request.headers.get("Authorization"))):
        raise Unauthorized("missing or wrong API token: send Authorization: Bearer TOKEN")


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflights and tag answers for origins listed in ``cors_allowed_origins``."""
    if request.path.startswith(SOCKETIO_PREFIX):  # Engine.IO answers CORS for its own route
        return await handler(request)
    origin = request.headers.get("Origin")
    allowed = request.app[settings_key].server.cors_allowed_origins
    permitted = origin is not None and ("*" in allowed or origin in allowed)
    if (
        permitted
        and request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
    ):
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    if permitted and origin is not None and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
        response.headers["Vary"] = "Origin"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
    return response
