"""Reading request bodies that routes stream themselves (clips, batch uploads)."""

from __future__ import annotations

from aiohttp import MultipartReader, web

from server.errors import FramehubError


class MalformedBody(FramehubError):
    """A body that does not parse as its Content-Type says."""

    status = 400


async def multipart_reader(request: web.Request) -> MultipartReader:
    """The multipart reader of ``request``; a header without a boundary is a 400, not a 500."""
    try:
        return await request.multipart()
    except ValueError as exc:  # aiohttp: "boundary missed for Content-Type: ..."
        raise MalformedBody(f"malformed multipart body: {exc}") from None
