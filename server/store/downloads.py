"""Repository downloads: ``{source_url}/NAME.tar`` (``.tar.gz`` on 404) fetched and unpacked into
place, the layout paradrop-imserve used.

:meth:`ArchiveDownloader.download` streams the archive into a work folder with
:func:`server.web.bodies.copy_to_file` (byte-capped, progress reported, the disk written in a
worker thread), unpacks its images with :func:`server.store.archives.extract_images` in a worker
thread, and renames the result into place only when complete. Any failure raises
:class:`~server.errors.DownloadFailed` or :class:`~server.errors.ArchiveRejected`, and the work
folder is always removed. The repository store decides when to download and what to record.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import aiohttp

from server.errors import ArchiveRejected, DownloadFailed, FramehubError
from server.settings import RepositorySettings
from server.store.archives import ArchiveBudget, ExtractionReport, extract_images
from server.web.bodies import copy_to_file

Progress = Callable[[float | None], None]


class ArchiveDownloader:
    """Downloads repositories from ``[repositories] source_url`` into ``root``."""

    def __init__(
        self,
        settings: RepositorySettings,
        client: aiohttp.ClientSession,
        work_dir: Path,
    ) -> None:
        self._settings = settings
        self._client = client
        self._work_dir = work_dir
        self._budget = ArchiveBudget(
            max_members=settings.max_members,
            max_member_bytes=settings.max_member_bytes,
            max_total_bytes=settings.max_total_bytes,
            max_name_length=settings.max_name_length,
        )

    async def download(self, name: str, target: Path, progress: Progress) -> ExtractionReport:
        """Fetch and unpack repository ``name`` into the new folder ``target``."""
        work = self._work_dir / f"{name}-{os.getpid()}-{id(target):x}"
        try:
            await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
            archive = work / "archive"
            await self._fetch(name, archive, progress)
            report = await asyncio.to_thread(extract_images, archive, work / "tree", self._budget)
            await asyncio.to_thread(_move_into_place, report.root, target)
            return report
        except OSError as exc:
            raise DownloadFailed(f"cannot store repository: {exc.strerror or exc}") from None
        finally:
            # Shielded: a retry reuses the name, and nobody should see a leftover of a download.
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, True))

    async def _fetch(self, name: str, target: Path, progress: Progress) -> None:
        base = self._settings.source_url.rstrip("/")
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._settings.connect_timeout,
            sock_read=self._settings.read_timeout,
        )
        for suffix in (".tar", ".tar.gz"):
            try:
                async with self._client.get(f"{base}/{name}{suffix}", timeout=timeout) as resp:
                    if resp.status == 404 and suffix == ".tar":
                        continue
                    if resp.status != 200:
                        raise DownloadFailed(
                            f"source answered HTTP {resp.status} for {name}{suffix}"
                        )
                    await self._save(resp, target, progress)
                    return
            except TimeoutError:
                raise DownloadFailed(
                    f"source timed out for {name}{suffix} (connect "
                    f"{self._settings.connect_timeout:g} s, read {self._settings.read_timeout:g} s)"
                ) from None
            except aiohttp.ClientConnectorError as exc:
                raise DownloadFailed(
                    f"cannot connect to the source: {exc.strerror or exc}"
                ) from None
            except aiohttp.ClientError as exc:
                raise DownloadFailed(f"download of {name}{suffix} broke off: {exc}") from None

    async def _save(self, resp: aiohttp.ClientResponse, target: Path, progress: Progress) -> None:
        limit = self._settings.max_download_bytes
        expected = resp.content_length
        if expected is not None and expected > limit:
            raise DownloadFailed(f"archive is {expected} bytes, over max_download_bytes ({limit})")

        def too_large() -> FramehubError:
            return DownloadFailed(f"archive is over max_download_bytes ({limit})")

        def received(size: int) -> None:
            progress(min(size / expected, 1.0) if expected else None)

        progress(0.0 if expected else None)
        with await asyncio.to_thread(target.open, "wb") as out:
            size = await copy_to_file(resp.content.read, out, limit, too_large, received)
        if expected is not None and size < expected:
            raise DownloadFailed(f"archive truncated: got {size} of {expected} bytes")


def _move_into_place(source: Path, target: Path) -> None:
    if target.exists():
        raise ArchiveRejected(
            f"folder {target.name!r} appeared while downloading; kept the existing one"
        )
    os.rename(source, target)
