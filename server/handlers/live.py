"""Live ingest over Socket.IO, and the HTTP routes that go with it.

``GET /get_session_id`` hands out an id; a client connects to ``/socket.io/`` with it (query
parameter ``[sessions] session_id_name`` or the ``auth`` dict) and streams frames as ``process``
events. :class:`LiveNamespace` only translates: per-connection state lives in the
:class:`server.live.sessions.SessionRegistry`, keyed by sid, never on the namespace.

A generated id is announced in a ``session`` event from a task started by ``on_connect``:
python-socketio sends the connect packet as soon as the handler returns, before that task first
runs, so the event always reaches a connected client.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from server.errors import FramehubError
from server.keys import processor_pool_key, session_registry_key, settings_key
from server.live.processors import public_description
from server.web.auth import bearer_token, require_token, token_matches

_LOGGER = logging.getLogger(__name__)


async def get_session_id(request: web.Request) -> web.Response:
    """``GET /get_session_id``: ``{"session_id": ...}`` for one connection."""
    require_token(request)
    session_id = request.app[session_registry_key].issue_id()
    return web.json_response({"session_id": session_id}, headers={"Cache-Control": "no-store"})


async def options(request: web.Request) -> web.Response:
    """``GET /options``: the processor names (the seed's shape) and their public details."""
    pool = request.app[processor_pool_key]
    return web.json_response(
        {
            "processes": list(pool.processors),
            "processors": [
                public_description(name, processor) for name, processor in pool.processors.items()
            ],
        }
    )


class LiveNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Socket.IO events of the default namespace: connect, disconnect, test, process."""

    def __init__(self, app: web.Application) -> None:
        super().__init__("/")
        self._app = app

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        settings = self._app[settings_key]
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("token") or bearer_token(environ.get("HTTP_AUTHORIZATION"))
        if not token_matches(settings.server.api_token, token if isinstance(token, str) else None):
            raise socketio.exceptions.ConnectionRefusedError(
                "missing or wrong API token: connect with auth={'token': TOKEN}"
            )
        name = settings.sessions.session_id_name
        query = parse_qs(environ.get("QUERY_STRING", ""))
        session_id = auth.get(name) or (query.get(name) or [None])[0]
        if session_id is not None and not isinstance(session_id, str):
            session_id = None
        registry = self._app[session_registry_key]

        async def emit_result(message: dict[str, Any]) -> None:
            await self.emit("result", message, to=sid)

        try:
            session = registry.open(sid, session_id, emit_result)
        except FramehubError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        _LOGGER.info("session %s… connected as %s", session.session_id[:8], sid)
        if session_id is None:
            # Runs after the connect packet is sent (see the module docstring).
            self.server.start_background_task(
                self.emit, "session", {"session_id": session.session_id}, to=sid
            )

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        _LOGGER.info("session of %s disconnected (%s)", sid, reason or "client")
        self._app[session_registry_key].end(sid)

    async def on_test(self, sid: str, data: Any = None) -> Any:
        await self.emit("test", data, to=sid)
        return data

    async def on_process(self, sid: str, data: Any = None) -> dict[str, Any]:
        session = self._app[session_registry_key].get(sid)
        if session is None:
            return {"ok": False, "error": "no live session for this connection"}
        return await session.process(data)


def setup_routes(app: web.Application) -> None:
    """Register the live-ingest HTTP routes."""
    app.router.add_get("/get_session_id", get_session_id)
    app.router.add_get("/options", options)
