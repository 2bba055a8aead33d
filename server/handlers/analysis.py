"""The built-in analysis APIs, so the embedded default runs the whole pipeline with no other service.

``POST /analyze/summary`` and ``POST /analyze/motion`` take a clip as the external APIs do (a
multipart field, or a raw ``video/*`` body), decode it in a worker thread and answer JSON.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from aiohttp import BodyPartReader, web

from server.errors import FramehubError, PayloadTooLarge
from server.handlers.bodies import multipart_reader
from server.keys import analysis_executor_key, settings_key

# Bytes asked for at a time: clips are hundreds of KB, and each read costs the event loop a turn.
READ_SIZE = 1 << 20


async def _read_clip(request: web.Request) -> bytes:
    """The clip bytes of a multipart upload (first file field) or of a raw body, size-capped."""
    limit = request.app[settings_key].clips.max_clip_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"clip is over the {limit}-byte limit ([clips] max_clip_bytes)")
    if request.content_type.startswith("multipart/"):
        reader = await multipart_reader(request)
        async for part in reader:
            if isinstance(part, BodyPartReader) and part.filename is not None:
                return await _read_capped(part.read_chunk, limit)
        raise FramehubError("no file in the multipart body: send the clip as a file field")
    return await _read_capped(request.content.read, limit)


async def _read_capped(read: Callable[[int], Any], limit: int) -> bytes:
    data = bytearray()
    while chunk := await read(READ_SIZE):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"clip is over the {limit}-byte limit ([clips] max_clip_bytes)")
    return bytes(data)


async def summary(request: web.Request) -> web.Response:
    """``POST /analyze/summary``: frames, duration, size and codec of the decoded clip."""
    from server.media.analysis import summarize_clip  # PyAV loads on first use, see sessions.py

    clip = await _read_clip(request)
    max_pixels = request.app[settings_key].frames.max_pixels
    return web.json_response(await _in_executor(request, summarize_clip, clip, max_pixels))


async def motion(request: web.Request) -> web.Response:
    """``POST /analyze/motion``: per-frame motion energy and the frame ranges with motion."""
    from server.media.analysis import motion_report  # PyAV loads on first use, see sessions.py

    clip = await _read_clip(request)
    max_pixels = request.app[settings_key].frames.max_pixels
    job = functools.partial(motion_report, clip, max_pixels=max_pixels)
    return web.json_response(await _in_executor(request, job))


async def _in_executor(request: web.Request, job: Callable[..., Any], *args: Any) -> Any:
    """Run a decode on the analysis executor: a bounded pool, apart from ingest's threads."""
    executor = request.app[analysis_executor_key]
    return await asyncio.get_running_loop().run_in_executor(executor, job, *args)


def setup_routes(app: web.Application) -> None:
    """Register the built-in analysis routes."""
    app.router.add_post("/analyze/summary", summary)
    app.router.add_post("/analyze/motion", motion)
