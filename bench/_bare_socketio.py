"""The reference server of ``bench/ingest.py``: python-socketio on aiohttp that only counts frames.

``python -m bench._bare_socketio --port P`` listens on 127.0.0.1 with the same stack as framehub
(aiohttp, python-socketio's ``AsyncServer`` in aiohttp mode, the same message size limit) and a
``process`` event that counts the frame and acknowledges it at once, in framehub's ack shape. It
answers ``GET /get_session_id`` too, so that one load generator drives both servers, and ``GET /``
with the count. The leading underscore keeps ``python -m bench`` from running it as a benchmark.
"""

from __future__ import annotations

import argparse
import secrets
from typing import Any

import socketio
from aiohttp import web

from bench.common import LOOPBACK
from server.settings import SessionSettings

frames_key = web.AppKey("frames", list[int])


def create_app() -> web.Application:
    """The bare Socket.IO app: ``process`` is counted and acknowledged, nothing else happens."""
    app = web.Application()
    # One counter in a list, so the handlers can change it without module-level state.
    app[frames_key] = [0]
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        max_http_buffer_size=SessionSettings().max_buffer_size,
        logger=False,
        engineio_logger=False,
    )

    async def process(sid: str, data: Any = None) -> dict[str, Any]:
        count = app[frames_key]
        count[0] += 1
        return {"ok": True, "frame": count[0] - 1}

    async def get_session_id(request: web.Request) -> web.Response:
        return web.json_response({"session_id": secrets.token_urlsafe(24)})

    async def frames(request: web.Request) -> web.Response:
        return web.json_response({"frames": app[frames_key][0]})

    sio.on("process", process)
    sio.attach(app)
    app.router.add_get("/get_session_id", get_session_id)
    app.router.add_get("/", frames)
    return app


def main() -> None:
    """Serve the bare app on 127.0.0.1 at ``--port`` until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench._bare_socketio")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host=LOOPBACK, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
