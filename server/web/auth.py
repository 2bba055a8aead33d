"""The optional API token (``[server] api_token``) and the CORS answer for browser clients.

Every route belongs to one group (:func:`route_group`): ``camera`` (repositories), ``live`` (live
cameras and Socket.IO connections that only watch), ``ui``, ``metrics`` (with the OpenAPI
document), ``health``, ``ingest`` (session ids, options and Socket.IO connections that stream),
``batch`` and ``analyze``. With a token set, the groups not listed in ``[server] public`` need it,
as ``Authorization: Bearer TOKEN`` (HTTP, checked by :func:`token_middleware` before a handler
reads a byte of the body) or ``auth={"token": TOKEN}`` (Socket.IO, checked at connect).
``/healthz`` is always open, for the supervisor's liveness probe. Comparison is in constant time,
and the token never appears in an error or a log line.
"""

from __future__ import annotations

import functools
import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from server.errors import Unauthorized
from server.keys import settings_key
from server.settings import ServerSettings
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


# Route groups by path prefix, the first that matches wins; "/{repo}..." is everything left.
_GROUP_PREFIXES = (
    ("/healthz", "health"),
    ("/readyz", "health"),
    ("/metrics", "metrics"),
    ("/openapi.json", "metrics"),
    ("/ui", "ui"),
    ("/live", "live"),
    ("/get_session_id", "ingest"),
    ("/options", "ingest"),
    ("/batch", "batch"),
    ("/analyze", "analyze"),
)
ALWAYS_OPEN = "/healthz"


@functools.cache  # a few dozen route patterns, asked on every request with a token set
def route_group(path: str) -> str:
    """The group of a route's path pattern (``/live/{name}/latest.jpg`` is ``live``)."""
    for prefix, group in _GROUP_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return group
    return "camera"


def require_token(request: web.Request) -> None:
    """Raise :class:`Unauthorized` unless the request carries the configured token."""
    expected = request.app[settings_key].server.api_token
    if not token_matches(expected, bearer_token(request.headers.get("Authorization"))):
        raise Unauthorized("missing or wrong API token: send Authorization: Bearer TOKEN")


def needs_token(settings: ServerSettings, group: str) -> bool:
    """Whether requests of route ``group`` need the token under ``settings``."""
    return bool(settings.api_token) and group not in settings.public


def require_token_for_route(request: web.Request) -> None:
    """:func:`require_token` when the request's route is in a group that needs it."""
    resource = request.match_info.route.resource
    if resource is None or resource.canonical == ALWAYS_OPEN:
        return
    if needs_token(request.app[settings_key].server, route_group(resource.canonical)):
        require_token(request)


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The token check of every route not in a public group (installed only with a token set);
    Socket.IO checks its own connects (see server.handlers.live)."""
    if not request.path.startswith(SOCKETIO_PREFIX):
        require_token_for_route(request)
    return await handler(request)


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
