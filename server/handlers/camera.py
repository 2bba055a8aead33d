"""The virtual camera: repositories of images served frame by frame (paradrop-imserve's API and more).

``GET /`` and ``GET /{repo}`` describe repositories. ``GET /{repo}/video.jpg`` hands each client the
next frame; its position per repository lives in an encrypted cookie, or on the
server for a client named with ``?client=`` (:mod:`server.store.cursors`), and a client with
neither gets the frame playing now. While a
repository is being prepared (or failed) the answer is a placeholder JPEG with ``X-Placeholder:
true``, so ``<img>`` dashboards keep showing something. ``GET /{repo}/video.mjpg`` pushes frames as
``multipart/x-mixed-replace`` at a chosen rate; ``GET /{repo}/frames/{index}`` gives one frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web

from server.errors import FramehubError, InvalidParameter, RepositoryNotFound
from server.keys import (
    client_cursors_key,
    cursor_storage_key,
    lifecycle_key,
    metrics_key,
    placeholder_key,
    repository_store_key,
    settings_key,
)
from server.store.cursors import check_client_id
from server.store.repositories import Frame, RepositoryStore
from server.web.cursor_cookie import MAX_CURSORS
from server.web.mjpeg import MJPEG_CONTENT_TYPE, mjpeg_part

_LOGGER = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store"}
# More digits than any repository has frames; also keeps int() clear of its 4300-digit limit.
MAX_INDEX_DIGITS = 18


async def list_repositories(request: web.Request) -> web.Response:
    """``GET /``: every repository with its count, progress and status."""
    store = request.app[repository_store_key]
    return web.json_response(await store.describe_all(), headers=NO_STORE)


async def describe_repository(request: web.Request) -> web.Response:
    """``GET /{repo}``: one repository with its images (starts a download if needed)."""
    repo = await request.app[repository_store_key].lookup(request.match_info["repo"])
    return web.json_response(repo.describe(with_images=True), headers=NO_STORE)


async def next_frame(request: web.Request) -> web.StreamResponse:
    """``GET /{repo}/video.jpg[?client=ID]``: the next frame for this client, wrapping at the end.

    A ``client`` id keeps its cursor on the server, from frame 0; without one the cursor cookie
    keeps it, as paradrop-imserve does. A request with neither gets the frame playing now (see
    :meth:`~server.store.repositories.Repository.playing_now`) and a cookie to go on from there. ``HEAD`` describes that frame
    without taking it: the cursor stays, nothing is counted.
    """
    app = request.app
    client = request.query.get("client")
    if client is not None:
        check_client_id(client)
    store = app[repository_store_key]
    name = request.match_info["repo"]
    try:
        repo = await store.lookup(name)
    except RepositoryNotFound:
        return placeholder_response(request)
    count = len(repo.frames)
    if repo.status != "available" or not count:
        return placeholder_response(request)
    cookie: tuple[int, dict[str, int]] | None = None
    if client is not None:
        position = app[client_cursors_key].position(client, name)
    else:
        cookie = app[cursor_storage_key].read(request)
        if cookie is None:
            position = repo.playing_now(app[settings_key].camera.fps)
            cookie = (int(time.time()), {})
        else:
            position = cookie[1].get(name, 0)
    index = position % count
    frame = repo.frames[index]
    if request.method == "HEAD":
        return await _frame_response(store, frame, index)
    following = (index + 1) % count
    if cookie is not None:
        _move_cookie_cursor(cookie[1], name, following)
    elif client is not None:
        app[client_cursors_key].move(client, name, following)
    app[metrics_key].video_jpg_served.inc()
    response = await _frame_response(store, frame, index)
    if cookie is not None:
        app[cursor_storage_key].write(response, *cookie)
    return response


def _move_cookie_cursor(cursors: dict[str, int], name: str, position: int) -> None:
    """Set the cookie's cursor of repository ``name``, keeping the newest :data:`MAX_CURSORS`."""
    cursors.pop(name, None)
    cursors[name] = position
    while len(cursors) > MAX_CURSORS:
        cursors.pop(next(iter(cursors)))


async def frame_by_index(request: web.Request) -> web.StreamResponse:
    """``GET /{repo}/frames/{index}``: one frame by its position (from 0)."""
    store = request.app[repository_store_key]
    repo = await store.lookup(request.match_info["repo"])
    raw = request.match_info["index"]
    # str.isdigit() alone also passes "²" (which int() refuses) and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_INDEX_DIGITS:
        raise InvalidParameter(f"frame index must be a whole number from 0, not {raw!r}")
    if repo.status != "available":
        return placeholder_response(request)
    frame = store.frame_at(repo, int(raw))
    request.app[metrics_key].camera_frames_served.labels("frames").inc()
    return await _frame_response(store, frame, int(raw))


async def mjpeg_stream(request: web.Request) -> web.StreamResponse:
    """``GET /{repo}/video.mjpg?fps=N``: the repository as an endless MJPEG stream."""
    settings = request.app[settings_key].camera
    fps = fps_parameter(request, settings.mjpeg_max_fps) or settings.mjpeg_fps
    store = request.app[repository_store_key]
    repo = await store.lookup(request.match_info["repo"])
    response = web.StreamResponse(headers={"Content-Type": MJPEG_CONTENT_TYPE, **NO_STORE})
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    loop = asyncio.get_running_loop()
    interval = 1.0 / fps
    cursor = 0
    deadline = loop.time()
    metrics = request.app[metrics_key]
    stopping = request.app[lifecycle_key].stopping
    metrics.mjpeg_viewers.inc()
    try:
        while not stopping.is_set():
            frame, cursor = await _stream_position(store, repo.name, cursor)
            if frame is None:
                body, content_type = request.app[placeholder_key], "image/jpeg"
            else:
                body, content_type = await store.read_frame(frame), frame.content_type
                metrics.camera_frames_served.labels("video.mjpg").inc()
            await response.write(mjpeg_part(body, content_type))
            deadline = max(deadline + interval, loop.time())
            # Waiting on the stopping event rather than sleeping ends streams at once on shutdown.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), deadline - loop.time())
    except (ConnectionResetError, ConnectionError):
        _LOGGER.debug("mjpeg viewer of %s left", repo.name)
    finally:
        metrics.mjpeg_viewers.dec()
    return response


def fps_parameter(request: web.Request, maximum: float) -> float | None:
    """The ``?fps=`` asked for, above 0 and at most ``maximum``; None when not asked."""
    raw = request.query.get("fps")
    if raw is None:
        return None
    try:
        fps = float(raw)
    except ValueError:
        fps = -1.0
    if not 0 < fps <= maximum:
        raise InvalidParameter(f"fps must be a number above 0 and at most {maximum:g}, not {raw!r}")
    return fps


async def _stream_position(
    store: RepositoryStore, name: str, cursor: int
) -> tuple[Frame | None, int]:
    """The next frame of a stream; a repository that went away shows the placeholder."""
    try:
        repo = await store.lookup(name)
    except FramehubError:
        return None, 0
    if repo.status != "available":
        return None, 0
    return store.next_frame(repo, cursor)


def placeholder_response(request: web.Request) -> web.Response:
    """The "image is not available" JPEG, marked ``X-Placeholder: true``."""
    return web.Response(
        body=request.app[placeholder_key],
        content_type="image/jpeg",
        headers={"X-Placeholder": "true", **NO_STORE},
    )


async def _frame_response(store: RepositoryStore, frame: Frame, index: int) -> web.StreamResponse:
    # A frame in the cache straight from it, without cached_frame_bytes' two coroutines (about
    # 1 us of a video.jpg request, bench/camera.py).
    body = store.cache.get(frame.key)
    if body is None:
        body = await store.cached_frame_bytes(frame)
    headers = {"X-Frame-Name": frame.name, "X-Frame-Number": str(index), **NO_STORE}
    if body is None:
        response = web.FileResponse(frame.path, headers=headers)
        response.content_type = frame.content_type
        return response
    return web.Response(body=body, content_type=frame.content_type, headers=headers)


def setup_routes(app: web.Application) -> None:
    """Register the camera routes; call last, since ``/{repo}`` matches any single segment."""
    # video.jpg first: the router tries the resources under "/" in the order they were added,
    # each a regular expression, and this one is asked for most.
    app.router.add_get("/{repo}/video.jpg", next_frame)
    app.router.add_get("/", list_repositories)
    app.router.add_get("/{repo}", describe_repository)
    app.router.add_get("/{repo}/video.mjpg", mjpeg_stream)
    app.router.add_get("/{repo}/frames/{index}", frame_by_index)
