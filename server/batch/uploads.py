"""Batch uploads spooled to disk: the body of ``POST /batch`` streamed into a temp file.

:func:`receive_upload` creates ``state_dir/uploads/upload-*.part`` and streams the body into it with
:func:`server.web.bodies.copy_to_file` (never the whole body in memory, cut off past ``[batch]
max_bytes``). The returned :class:`Upload` is owned by whoever holds it: the handler until the job
is queued, the job queue from then on; every ending, good or bad, removes the file.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp.http_exceptions import HttpProcessingError

from server.errors import MalformedBody, PayloadTooLarge, UploadIncomplete
from server.web.bodies import Read, copy_to_file


@dataclass(frozen=True, slots=True)
class Upload:
    """A received upload: its temp file, the name and type to send it under, and its size."""

    path: Path
    filename: str
    content_type: str
    size: int

    async def discard(self) -> None:
        """Remove the temp file."""
        await remove_file(self.path)


async def remove_file(path: Path) -> None:
    """Remove ``path`` if it is there, in a worker thread: freeing the pages of a large file takes
    tens of milliseconds. A task being cancelled (again) removes it on the loop instead."""
    try:
        await asyncio.to_thread(_remove, path)
    except asyncio.CancelledError:
        _remove(path)
        raise


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def upload_too_large(limit: int) -> PayloadTooLarge:
    """The error for a body over ``[batch] max_bytes``, declared or found while reading."""
    return PayloadTooLarge(f"the upload is over the {limit}-byte limit ([batch] max_bytes)")


async def receive_upload(
    read: Read, folder: Path, limit: int, filename: str, content_type: str
) -> Upload:
    """Stream the chunks ``read`` returns into a new temp file in ``folder``; removed on failure."""
    fd, name = await asyncio.to_thread(
        tempfile.mkstemp, prefix="upload-", suffix=".part", dir=folder
    )
    path = Path(name)

    async def read_body(size: int) -> bytes:
        try:
            return await read(size)
        except (ConnectionError, HttpProcessingError) as exc:
            raise UploadIncomplete(
                f"the upload ended before the whole body arrived: {exc}"
            ) from None
        except ValueError as exc:  # aiohttp's multipart reader, on a malformed body
            raise MalformedBody(f"malformed upload: {exc}") from None

    try:
        with os.fdopen(fd, "wb", buffering=0) as file:
            size = await copy_to_file(read_body, file, limit, lambda: upload_too_large(limit))
    except BaseException:
        await remove_file(path)
        raise
    return Upload(path, filename, content_type, size)
