"""Live ingest over Socket.IO, and the HTTP routes that go with it.

``GET /get_session_id`` hands out an id; a client connects to ``/socket.io/`` with it (query
parameter ``[sessions] session_id_name`` or the ``auth`` dict) and streams frames as ``process``
events. :class:`LiveNamespace` only translates: per-connection state lives in the
:class:`server.store.sessions.SessionRegistry`, keyed by sid, never on the namespace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from server.auth import bearer_token, require_token, token_matches
from server.errors import FramehubError
from server.keys import processor_pool_key, session_registry_key, settings_key
from server.processors import public_description

_LOGGER = logging.getLogger(__name__)

# How long the `session` announcement waits for the connection to be complete.
ANNOUNCE_WAIT = 5.0


async def get_session_id(request: web.Request) -> web.Response:
    """``GET /get_session_id``: ``{"session_id": ...}`` for one connection."""
    require_token(request)
    session_id = request.app[session_registry_key].issue_id()
    return web.json_response({"session_id": session_id}, headers={"Cache-Control": "no-store"})


async def options(request: web.Request) -> web.Response:
    """``GET /options``: the processor names (the seed's shape) and their public details."""
    settings = request.app[settings_key]
    pool = request.app[processor_pool_key]
    return web.json_response(
        {
            "processes": list(pool.processors),
            "processors": [
                public_description(name, processor, settings)
                for name, processor in pool.processors.items()
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
            self.server.start_background_task(self._announce, sid, session.session_id)

    async def _announce(self, sid: str, session_id: str) -> None:
        """Send a generated id as a ``session`` event once the connection is complete."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANNOUNCE_WAIT
        # python-socketio offers no "connected" hook for a handler to await, so poll, briefly.
        while not self.server.manager.is_connected(sid, "/") and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await self.emit("session", {"session_id": session_id}, to=sid)

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
        client_ts = None
        if isinstance(data, dict):
            ts = data.get("ts")
            client_ts = (
                float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
            )
            data = data.get("image")
        return session.accept(data, client_ts)


def setup_routes(app: web.Application) -> None:
    """Register the live-ingest HTTP routes."""
    app.router.add_get("/get_session_id", get_session_id)
    app.router.add_get("/options", options)
