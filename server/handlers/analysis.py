"""The built-in analyses over HTTP, for outside callers: ``POST /analyze/summary`` and ``/motion``.

Each takes a clip as an external analysis API would (a multipart file field, or a raw ``video/*``
body), reads it up to ``[clips] max_clip_bytes`` and answers what
:meth:`server.live.builtins.BuiltinAnalyses.analyse` computes, the very call the built-in
processors make in-process.
"""

from __future__ import annotations

from aiohttp import BodyPartReader, web

from server.errors import MissingUpload, PayloadTooLarge
from server.keys import builtin_analyses_key, settings_key
from server.settings import BUILTIN_KINDS
from server.web.bodies import idle_limited, multipart_parts, read_capped


async def _read_clip(request: web.Request) -> bytes:
    """The clip bytes of a multipart upload (first file field) or of a raw body, size-capped."""
    limit = request.app[settings_key].clips.max_clip_bytes

    def too_large() -> PayloadTooLarge:
        return PayloadTooLarge(f"clip is over the {limit}-byte limit ([clips] max_clip_bytes)")

    if request.content_length is not None and request.content_length > limit:
        raise too_large()
    idle = request.app[settings_key].server.body_idle_timeout
    if request.content_type.startswith("multipart/"):
        async for part in multipart_parts(request, idle):
            if isinstance(part, BodyPartReader) and part.filename is not None:
                return await read_capped(idle_limited(part.read_chunk, idle), limit, too_large)
        raise MissingUpload("no file in the multipart body: send the clip as a file field")
    return await read_capped(idle_limited(request.content.read, idle), limit, too_large)


async def analyze(request: web.Request) -> web.Response:
    """``POST /analyze/{kind}``: the built-in analysis ``kind`` of one clip."""
    kind = request.match_info["kind"]
    clip = await _read_clip(request)
    answers = await request.app[builtin_analyses_key].analyse(clip, [kind])
    return web.json_response(answers[kind])


def setup_routes(app: web.Application) -> None:
    """Register the built-in analysis routes."""
    app.router.add_post(f"/analyze/{{kind:{'|'.join(BUILTIN_KINDS)}}}", analyze)
