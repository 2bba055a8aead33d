"""Live cameras over HTTP: ``GET /live`` and ``/live/{name}/...`` for dashboards.

``latest.jpg`` answers the camera's newest frame as it was received (or the placeholder, as
``video.jpg`` does); ``video.mjpg`` pushes frames as they arrive, each viewer always getting the
newest one, never a backlog (one frame of memory per viewer, the part built once per frame for
all); ``result`` is the newest result; ``events`` is a Server-Sent Events stream of ``result``,
``online`` and ``offline``. The state lives in :class:`server.live.cameras.CameraRegistry`. With
``[server] api_token`` set and "live" not in ``[server] public``, every route needs the token
(``server.web.auth``). In a cluster every route answers for the cameras of every process
(:class:`server.live.cameras.CameraRegistry` reads Redis for those of the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import web

from server.errors import TooManyViewers
from server.handlers.camera import NO_STORE, fps_parameter, placeholder_response
from server.keys import (
    camera_registry_key,
    lifecycle_key,
    metrics_key,
    placeholder_key,
    settings_key,
)
from server.live.cameras import CameraFeed, check_camera_name
from server.web.mjpeg import MJPEG_CONTENT_TYPE, mjpeg_part

_LOGGER = logging.getLogger(__name__)

# Seconds between Server-Sent Events comments that keep idle proxies from closing the stream.
EVENTS_KEEPALIVE = 15.0


def _guard(request: web.Request) -> str:
    """The checked camera name of the request."""
    return check_camera_name(request.match_info["name"])


async def list_cameras(request: web.Request) -> web.Response:
    """``GET /live``: every camera, online or recently offline."""
    cameras = await request.app[camera_registry_key].describe_all()
    return web.json_response(cameras, headers=NO_STORE)


async def latest_frame(request: web.Request) -> web.Response:
    """``GET /live/{name}/latest.jpg``: the newest frame, or the placeholder while offline."""
    frame = await request.app[camera_registry_key].newest_frame(_guard(request))
    if frame is None:
        return placeholder_response(request)
    return web.Response(
        body=frame.data,
        content_type=frame.content_type,
        headers={
            "X-Frame-Number": str(frame.number),
            "X-Frame-Timestamp": f"{frame.ts:.3f}",
            **NO_STORE,
        },
    )


async def latest_result(request: web.Request) -> web.Response:
    """``GET /live/{name}/result``: the newest result of the camera."""
    result = await request.app[camera_registry_key].newest_result(_guard(request))
    return web.json_response(result, headers=NO_STORE)


async def mjpeg_stream(request: web.Request) -> web.StreamResponse:
    """``GET /live/{name}/video.mjpg[?fps=N]``: frames as they arrive, at most ``fps`` a second."""
    name = _guard(request)
    cameras = request.app[camera_registry_key]
    max_fps = request.app[settings_key].camera.mjpeg_max_fps
    fps = fps_parameter(request, max_fps)
    limit = request.app[settings_key].live.max_viewers
    if cameras.viewers(name) >= limit:
        raise TooManyViewers(f"camera {name!r} has {limit} viewers already ([live] max_viewers)")
    response = web.StreamResponse(headers={"Content-Type": MJPEG_CONTENT_TYPE, **NO_STORE})
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    placeholder = mjpeg_part(request.app[placeholder_key], "image/jpeg")
    gauge = request.app[metrics_key].live_viewers.labels("mjpeg")
    await cameras.add_viewer(name)
    gauge.inc()
    try:
        await _push_frames(request, response, name, placeholder, 1 / fps if fps else 0.0)
    except ConnectionError:
        _LOGGER.debug("live mjpeg viewer of %s left", name)
    finally:
        gauge.dec()
        await cameras.remove_viewer(name)
    return response


async def _push_frames(
    request: web.Request, response: web.StreamResponse, name: str, placeholder: bytes, gap: float
) -> None:
    cameras = request.app[camera_registry_key]
    stopping = request.app[lifecycle_key].stopping
    loop = asyncio.get_running_loop()
    sent_serial: int | None = None
    showing_placeholder = False
    next_at = 0.0
    while not cameras.streams_ended and not stopping.is_set():
        camera = cameras.feed(name)
        frame = camera.latest if camera is not None and camera.online else None
        if frame is None:
            if not showing_placeholder:
                await response.write(placeholder)
                showing_placeholder, sent_serial = True, None
            await cameras.changed(name)  # woken too when the camera appears or streams end
            continue
        if frame.serial == sent_serial:
            await cameras.changed(name)
            continue
        if gap and loop.time() < next_at:
            # Capped rate: wait, then send whatever is newest by then.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), next_at - loop.time())
            continue
        # A slow viewer waits here for its socket; meanwhile newer frames replace this one.
        await response.write(frame.mjpeg_part)
        showing_placeholder, sent_serial = False, frame.serial
        next_at = loop.time() + gap


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /live/{name}/events``: Server-Sent Events ``result``, ``online``, ``offline``."""
    cameras = request.app[camera_registry_key]
    camera = await cameras.follow(_guard(request))
    try:
        return await _send_events(request, camera)
    finally:
        await cameras.unfollow(camera)


async def _send_events(request: web.Request, camera: CameraFeed) -> web.StreamResponse:
    cameras = request.app[camera_registry_key]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no", **NO_STORE}
    )
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    queue = camera.subscribe()
    gauge = request.app[metrics_key].live_viewers.labels("events")
    gauge.inc()
    try:
        state = "online" if camera.online else "offline"
        await response.write(_event(state, {"camera": camera.name, "online": camera.online}))
        while not cameras.streams_ended:
            try:
                event, body = await asyncio.wait_for(queue.get(), EVENTS_KEEPALIVE)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event == "end":
                break
            await response.write(_event(event, body))
    except ConnectionError:
        _LOGGER.debug("events subscriber of %s left", camera.name)
    finally:
        camera.unsubscribe(queue)
        gauge.dec()
    return response


def _event(event: str, body: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(body)}\n\n".encode()


def setup_routes(app: web.Application) -> None:
    """Register the live camera routes (before the repositories' catch-all ``/{repo}``)."""
    app.router.add_get("/live", list_cameras)
    app.router.add_get("/live/{name}/latest.jpg", latest_frame)
    app.router.add_get("/live/{name}/video.mjpg", mjpeg_stream)
    app.router.add_get("/live/{name}/result", latest_result)
    app.router.add_get("/live/{name}/events", events)
