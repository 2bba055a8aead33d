"""Live ingest over Socket.IO, and the HTTP routes that go with it.

``GET /get_session_id`` hands out an id; a client connects to ``/socket.io/`` with it (query
parameter ``[sessions] session_id_name`` or the ``auth`` dict) and streams frames as ``process``
events. :class:`LiveNamespace` only translates: per-connection state lives in the
:class:`server.live.sessions.SessionRegistry`, keyed by sid, never on the namespace.

Every session is a camera named with ``camera`` (in ``/get_session_id?camera=NAME``, the connect's
``auth`` dict or its query) or under a generated name. A connection with ``auth={"watch": true}``
(or ``?watch=1``) streams nothing: it only ``watch``es cameras, joining the Socket.IO room
``camera:NAME`` whose ``result`` events the camera registry broadcasts; with "live" in
``[server] public`` it needs no token.

A generated id or camera name is announced in a ``session`` event from a task started by
``on_connect``:
python-socketio sends the connect packet as soon as the handler returns, before that task first
runs, so the event always reaches a connected client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from server.errors import FramehubError, InvalidCameraName
from server.keys import (
    connection_guard_key,
    processor_pool_key,
    session_registry_key,
    settings_key,
)
from server.live.cameras import check_camera_name
from server.live.processors import public_description
from server.web.auth import bearer_token, needs_token, token_matches
from server.web.connections import client_address

_LOGGER = logging.getLogger(__name__)


async def get_session_id(request: web.Request) -> web.Response:
    """``GET /get_session_id[?camera=NAME]``: ``{"session_id": ...}`` for one connection."""
    camera = request.query.get("camera")
    address = client_address(request, request.app[connection_guard_key].trusted)
    session_id = await request.app[session_registry_key].issue_id(camera, address)
    body = {"session_id": session_id} | ({"camera": camera} if camera else {})
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def camera_room(name: str) -> str:
    """The Socket.IO room of camera ``name``'s watchers."""
    return f"camera:{name}"


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
    """Socket.IO events of the default namespace: connect, disconnect, test, process, watch."""

    def __init__(self, app: web.Application) -> None:
        super().__init__("/")
        self._app = app

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        settings = self._app[settings_key]
        auth = auth if isinstance(auth, dict) else {}
        query = parse_qs(environ.get("QUERY_STRING", ""))

        def given(key: str) -> Any:
            return auth.get(key) if key in auth else (query.get(key) or [None])[0]

        watch_only = given("watch") in (True, "1", "true")
        token = auth.get("token") or bearer_token(environ.get("HTTP_AUTHORIZATION"))
        group = "live" if watch_only else "ingest"
        if needs_token(settings.server, group) and not token_matches(
            settings.server.api_token, token if isinstance(token, str) else None
        ):
            raise socketio.exceptions.ConnectionRefusedError(
                "missing or wrong API token: connect with auth={'token': TOKEN}"
            )
        if watch_only:
            _LOGGER.info("watcher connected as %s", sid)
            return
        session_id = given(settings.sessions.session_id_name)
        if session_id is not None and not isinstance(session_id, str):
            session_id = None
        camera = given("camera")

        async def emit_result(message: dict[str, Any]) -> None:
            # The client is connected here: in a cluster, Redis has no part in it.
            await self.emit("result", message, to=sid, ignore_queue=True)

        try:
            session, taken_from = await self._app[session_registry_key].open(
                sid, session_id, emit_result, camera
            )
        except FramehubError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        self._app[processor_pool_key].warm_up()  # before the session's first clip
        _LOGGER.info(
            "session %s… connected as %s, camera %s",
            session.session_id[:8],
            sid,
            session.camera.name,
        )
        if taken_from is not None:  # its session is ended already; now its connection
            self.server.start_background_task(self.server.disconnect, taken_from)
        if session_id is None or camera is None:
            # Runs after the connect packet is sent (see the module docstring).
            announcement = {"session_id": session.session_id, "camera": session.camera.name}
            self.server.start_background_task(
                self.emit, "session", announcement, to=sid, ignore_queue=True
            )

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        _LOGGER.info("session of %s disconnected (%s)", sid, reason or "client")
        self._app[session_registry_key].end(sid)

    async def on_test(self, sid: str, data: Any = None) -> Any:
        await self.emit("test", data, to=sid, ignore_queue=True)
        return data

    async def on_process(self, sid: str, data: Any = None) -> dict[str, Any]:
        session = self._app[session_registry_key].get(sid)
        if session is None:
            return {
                "ok": False,
                "error": "no live session for this connection: connect with a session id to "
                "stream frames",
            }
        return await session.process(data)

    async def on_watch(self, sid: str, data: Any = None) -> dict[str, Any]:
        """``watch {"camera": NAME}``: this connection gets that camera's ``result`` events."""
        return await self._watch(sid, data, self.server.enter_room)

    async def on_unwatch(self, sid: str, data: Any = None) -> dict[str, Any]:
        """``unwatch {"camera": NAME}``: no more of that camera's events."""
        return await self._watch(sid, data, self.server.leave_room)

    @staticmethod
    async def _watch(
        sid: str, data: Any, join_or_leave: Callable[[str, str], Awaitable[None]]
    ) -> dict[str, Any]:
        name = data.get("camera") if isinstance(data, dict) else None
        try:
            if name is None:
                raise InvalidCameraName('name the camera to watch: send {"camera": NAME}')
            check_camera_name(name)
        except FramehubError as exc:
            return {"ok": False, "error": str(exc)}
        await join_or_leave(sid, camera_room(name))
        return {"ok": True, "camera": name}


def setup_routes(app: web.Application) -> None:
    """Register the live-ingest HTTP routes."""
    app.router.add_get("/get_session_id", get_session_id)
    app.router.add_get("/options", options)
