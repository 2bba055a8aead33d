"""Bodies that routes and clients read themselves, never whole in memory unless small and capped.

- :func:`multipart_reader`: the multipart reader of a request, a missing boundary a 400, not a 500;
  :func:`multipart_parts`: its parts, each awaited within ``[server] body_idle_timeout``.
- :func:`idle_limited`: a ``read`` that gives up (:class:`~server.errors.BodyStalled`, 408) when no
  byte came for ``body_idle_timeout``, so a client sending a byte a minute cannot hold a request,
  its temp file and its connection; a body that keeps moving is never cut, however long it takes.
- :func:`read_capped`: a body into memory up to a limit (clips for ``/analyze/*``, the answers of
  analysis APIs).
- :func:`copy_to_file`: a body streamed to a file up to a limit, written in a worker thread a few
  MiB at a time while the next ones arrive (batch uploads, repository archive downloads).

Each takes a ``read`` callable, so the same code serves a request body, a multipart part and a
client response alike; each takes the error to raise past the limit, which only the caller can
word.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO

from aiohttp import BodyPartReader, MultipartReader, web

from server.errors import BodyStalled, InsufficientStorage, MalformedBody

# Bytes asked for at a time: whatever is buffered up to this comes back in one call, and each call
# costs the event loop a turn.
READ_SIZE = 1 << 20
# Bytes gathered for one trip to the writer thread. Each trip costs the event loop a little and the
# writer the GIL: 4 MiB kept uploads over loopback at the speed of a bare handler writing on the
# loop (bench/upload.py), where 1 MiB lost about a fifth; two batches at most are held per body.
WRITE_SIZE = 4 << 20
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

Read = Callable[[int], Awaitable[bytes]]
TooLarge = Callable[[], Exception]


async def multipart_reader(request: web.Request) -> MultipartReader:
    """The multipart reader of ``request``; a header without a boundary is a 400, not a 500."""
    try:
        return await request.multipart()
    except ValueError as exc:  # aiohttp: "boundary missed for Content-Type: ..."
        raise MalformedBody(f"malformed multipart body: {exc}") from None


def body_stalled(seconds: float) -> BodyStalled:
    """The error for a request body that stopped flowing for ``seconds``."""
    return BodyStalled(
        f"the request body stopped: nothing arrived for {seconds:g} s ([server] body_idle_timeout)"
    )


def idle_limited(read: Read, seconds: float) -> Read:
    """``read``, raising :func:`body_stalled` when a call waits ``seconds`` for its bytes."""

    async def read_or_give_up(size: int) -> bytes:
        try:
            async with asyncio.timeout(seconds):
                return await read(size)
        except TimeoutError:
            raise body_stalled(seconds) from None

    return read_or_give_up


async def multipart_parts(
    request: web.Request, seconds: float
) -> AsyncIterator[BodyPartReader | MultipartReader]:
    """The parts of a multipart request body, each part's headers awaited within ``seconds``."""
    reader = await multipart_reader(request)
    while True:
        try:
            async with asyncio.timeout(seconds):
                part = await reader.next()
        except TimeoutError:
            raise body_stalled(seconds) from None
        if part is None:
            return
        yield part


async def read_capped(read: Read, limit: int, too_large: TooLarge) -> bytes:
    """What ``read`` returns until b"", all in memory; ``too_large()`` is raised past ``limit``."""
    data = bytearray()
    while chunk := await read(READ_SIZE):
        data += chunk
        if len(data) > limit:
            raise too_large()
    return bytes(data)


async def copy_to_file(
    read: Read,
    file: IO[bytes],
    limit: int,
    too_large: TooLarge,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write what ``read`` returns to ``file`` until b""; the number of bytes written.

    ``too_large()`` is raised past ``limit`` bytes and InsufficientStorage when the disk is full;
    ``progress`` hears the byte count after every chunk.
    """
    size = 0
    # Chunks are handed to the writer as they came, about WRITE_SIZE at a time: no copy.
    batch: list[bytes] = []
    batch_size = 0
    writing: asyncio.Future[None] | None = None
    try:
        while True:
            chunk = await read(READ_SIZE)
            size += len(chunk)
            if size > limit:
                raise too_large()
            if progress is not None:
                progress(size)
            if chunk:
                batch.append(chunk)
                batch_size += len(chunk)
            if batch_size >= WRITE_SIZE or (not chunk and batch):
                # One write in flight while the next megabytes arrive.
                if writing is not None:
                    await asyncio.shield(writing)
                writing = asyncio.ensure_future(asyncio.to_thread(_write_all, file, batch))
                batch, batch_size = [], 0
            if not chunk:
                break
        if writing is not None:
            await asyncio.shield(writing)
    finally:
        # A thread cannot be stopped: never let the caller close the file under a write still
        # running (shield above keeps cancellation out of the write itself).
        if writing is not None and not writing.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(writing)
    return size


def _write_all(file: IO[bytes], chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                written = file.write(view)
                view = view[written or 0 :]
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise InsufficientStorage(
                "the server has no disk space left for this; try again later"
            ) from None
        raise
