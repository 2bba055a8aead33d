"""Routes for operators: liveness, readiness, Prometheus metrics and the OpenAPI document.

The OpenAPI 3.1 document is data, not code: ``openapi.json``, a file kept beside the handlers it
describes and shipped as package data. It is read and parsed once, given the installed package's
version as ``info.version``, and served as it is. The tests check it against the app's router and
run schemathesis against the running app with it, so a route or answer that drifts from the file
fails them.
"""

from __future__ import annotations

import functools
import json
from importlib import metadata, resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from server.keys import lifecycle_key, metrics_key, redis_link_key

OPENAPI_FILE = "openapi.json"


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is alive and its event loop answers."""
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 when listening with the store loaded and not shutting down, else 503.

    In a cluster it also tells whether Redis answers; a process that lost Redis stays ready, since
    it still serves its own cameras, sessions and repositories (and the others lost it too)."""
    lifecycle = request.app[lifecycle_key]
    body: dict[str, object] = {
        "ready": lifecycle.is_ready,
        "listening": lifecycle.listening,
        "shutting_down": lifecycle.stopping.is_set(),
    }
    link = request.app.get(redis_link_key)
    if link is not None:
        body["node"] = link.node
        body["redis"] = "ok" if link.up else "unreachable"
    return web.json_response(body, status=200 if lifecycle.is_ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: every framehub metric in Prometheus text format."""
    body = request.app[metrics_key].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the OpenAPI 3 description of every HTTP route."""
    return web.Response(text=openapi_document(), content_type="application/json")


@functools.cache
def openapi_document() -> str:
    """The JSON text of :data:`OPENAPI_FILE` with ``info.version`` the installed framehub's."""
    text = resources.files("server.handlers").joinpath(OPENAPI_FILE).read_text(encoding="utf-8")
    document = json.loads(text)
    document["info"]["version"] = metadata.version("framehub")
    return json.dumps(document)


def setup_routes(app: web.Application) -> None:
    """Register the operator routes."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
