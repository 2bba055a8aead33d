"""Image repositories: folders of frames kept indexed in memory, listed and served.

Data flow: at start :meth:`RepositoryStore.start` scans ``[repositories] dir`` (creating the
``demo`` repository on first start) and begins downloading ``initial``. A request names a
repository; :meth:`RepositoryStore.lookup` validates the name, re-lists the folder when its
modification time moved (at most once per ``rescan_interval``) and, for a repository that is not
on disk, starts one shared download task (:class:`server.store.downloads.ArchiveDownloader`). A
failed download leaves nothing behind, records why and is retried on a later request after an
exponential backoff. In a cluster the processes share ``[repositories] dir`` and a download is
single-flight across them (a Redis lock, ``server.cluster.locks``): the others wait for it, then
find the repository on disk.

Frame bytes are read from disk in a worker thread and kept in a :class:`FrameCache`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import aiohttp

from server.errors import FramehubError, FrameNotFound, InvalidRepositoryName, RepositoryNotFound
from server.media.images import write_demo_repository
from server.names import image_content_type, is_image_name, is_valid_repository_name, natural_key
from server.ops.metrics import Metrics
from server.ops.tasks import cancel_and_wait
from server.settings import Settings
from server.store.downloads import ArchiveDownloader
from server.store.frame_cache import FrameCache, FrameKey

if TYPE_CHECKING:
    from server.cluster.locks import SharedLocks

_LOGGER = logging.getLogger(__name__)

Status = Literal["available", "preparing", "failed"]

# Work folders live beside the repositories (same filesystem, so the final rename is atomic) under
# a name no repository can have, since repository names never start with a dot.
_WORK_DIR = ".incoming"


class Frame(NamedTuple):
    """One image of a repository, as indexed."""

    name: str
    path: str
    size: int
    mtime_ns: int
    content_type: str

    @property
    def key(self) -> FrameKey:
        return FrameKey(self.path, self.size, self.mtime_ns)


@dataclass(slots=True)
class Repository:
    """What the store knows of one repository."""

    name: str
    path: Path
    status: Status = "preparing"
    frames: list[Frame] = field(default_factory=list)
    progress: float | None = None
    error: str | None = None
    folder_mtime_ns: int = -1
    checked_at: float = float("-inf")
    download: asyncio.Task[None] | None = None
    failures: int = 0
    retry_at: float = 0.0
    available_since: float = 0.0  # time.monotonic() when it last became available

    def playing_now(self, fps: float) -> int:
        """The frame a camera playing the repository at ``fps`` since it became available
        shows now, wrapping at the end; the same for every client asking at the same moment."""
        return int((time.monotonic() - self.available_since) * fps) % len(self.frames)

    def describe(self, with_images: bool = False) -> dict[str, Any]:
        """The JSON shape of ``GET /`` (without images) and ``GET /{repo}`` (with)."""
        info: dict[str, Any] = {
            "count": len(self.frames),
            "progress": self.progress,
            "status": self.status,
        }
        if self.error is not None:
            info["error"] = self.error
        if with_images:
            info["images"] = [frame.name for frame in self.frames]
        return info


def list_frames(folder: Path) -> list[Frame]:
    """The images directly inside ``folder``, in natural order (blocking: call in a thread)."""
    frames = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_image_name(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            stat = entry.stat(follow_symlinks=False)
            content_type = image_content_type(entry.name)
            frames.append(
                Frame(entry.name, entry.path, stat.st_size, stat.st_mtime_ns, content_type)
            )
    frames.sort(key=lambda frame: natural_key(frame.name))
    return frames


class RepositoryStore:
    """The index of repositories and their downloads, owned by the app (see ``server.app``)."""

    def __init__(
        self,
        settings: Settings,
        client: aiohttp.ClientSession,
        metrics: Metrics | None = None,
        locks: SharedLocks | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._locks = locks
        self._settings = settings.repositories
        self.root = settings.repositories_dir
        self._repositories: dict[str, Repository] = {}
        self._root_mtime_ns = -1
        self._root_checked_at = float("-inf")
        self.cache = FrameCache(settings.camera.cache_bytes, settings.camera.cache_max_frame_bytes)
        self._downloader = ArchiveDownloader(self._settings, client, self._work_dir)

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Scan the folder, create the demo repository if wanted, start the initial downloads."""
        await asyncio.to_thread(self._prepare_root)
        if self._settings.create_demo and not (self.root / "demo").exists():
            _LOGGER.info("creating demo repository with %d frames", self._settings.demo_frames)
            await asyncio.to_thread(
                write_demo_repository, self.root, self._work_dir, "demo", self._settings.demo_frames
            )
        await self._rescan_root(force=True)
        for name in self._settings.initial:
            await self.lookup(name)
        _LOGGER.info(
            "repository store ready: %d repositories in %s", len(self._repositories), self.root
        )

    async def close(self) -> None:
        """Cancel running downloads and remove their work files."""
        tasks = [repo.download for repo in self._repositories.values() if repo.download]
        await cancel_and_wait(tasks)
        await asyncio.to_thread(shutil.rmtree, self._work_dir, True)

    @property
    def _work_dir(self) -> Path:
        return self.root / _WORK_DIR

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Leftovers of a download cut off by a crash or kill: never a repository, always removable.
        shutil.rmtree(self._work_dir, ignore_errors=True)

    # ---- lookups ----------------------------------------------------------------------------

    async def lookup(self, name: str) -> Repository:
        """The repository called ``name``, starting its download if it is not on disk."""
        if not is_valid_repository_name(name):
            raise InvalidRepositoryName(
                f"invalid repository name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        repo = self._repositories.get(name)
        if repo is None:
            repo = await self._discover(name)
        if repo.status == "available":
            await self._maybe_rescan(repo)
        elif (
            repo.status == "failed" and repo.download is None and time.monotonic() >= repo.retry_at
        ):
            self._start_download(repo)
        return repo

    async def _discover(self, name: str) -> Repository:
        path = self.root / name
        if path.is_dir():
            frames = await asyncio.to_thread(list_frames, path)
            repo = self._repositories.get(name)  # another request may have listed it meanwhile
            if repo is None:
                repo = Repository(name=name, path=path, frames=frames)
                self._mark_available(repo, path)
                self._repositories[name] = repo
            return repo
        if not self._settings.source_url:
            raise RepositoryNotFound(
                f"no repository {name!r}: there is no such folder and no source_url to download from"
            )
        repo = Repository(name=name, path=path)
        self._repositories[name] = repo
        self._start_download(repo)
        return repo

    def _mark_available(self, repo: Repository, path: Path) -> None:
        repo.status, repo.progress, repo.error = "available", 1.0, None
        repo.folder_mtime_ns = path.stat().st_mtime_ns
        repo.checked_at = repo.available_since = time.monotonic()

    async def _maybe_rescan(self, repo: Repository) -> None:
        now = time.monotonic()
        if now - repo.checked_at < self._settings.rescan_interval:
            return
        repo.checked_at = now
        try:
            mtime_ns = repo.path.stat().st_mtime_ns
        except FileNotFoundError:
            _LOGGER.info("repository %s: folder removed", repo.name)
            repo.frames = []
            del self._repositories[repo.name]
            return
        if mtime_ns != repo.folder_mtime_ns:
            repo.folder_mtime_ns = mtime_ns
            await self._relist(repo)

    async def _relist(self, repo: Repository) -> None:
        try:
            repo.frames = await asyncio.to_thread(list_frames, repo.path)
        except OSError as exc:
            _LOGGER.warning("repository %s: cannot list folder: %s", repo.name, exc.strerror)
            return
        _LOGGER.info("repository %s: %d frames after change", repo.name, len(repo.frames))

    async def describe_all(self) -> dict[str, dict[str, Any]]:
        """``{NAME: {count, progress, status}}`` for every repository known."""
        await self._rescan_root()
        return {name: repo.describe() for name, repo in sorted(self._repositories.items())}

    async def _rescan_root(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._root_checked_at < self._settings.rescan_interval:
            return
        self._root_checked_at = now
        mtime_ns = self.root.stat().st_mtime_ns
        if mtime_ns == self._root_mtime_ns and not force:
            return
        self._root_mtime_ns = mtime_ns
        found = await asyncio.to_thread(self._scan_root)
        for name, frames in found.items():
            repo = self._repositories.get(name)
            if repo is None or repo.status != "available":
                if repo is not None and repo.download is not None:
                    continue
                repo = Repository(name=name, path=self.root / name, frames=frames)
                self._mark_available(repo, repo.path)
                self._repositories[name] = repo
        for name, repo in list(self._repositories.items()):
            if repo.status == "available" and name not in found:
                del self._repositories[name]

    def _scan_root(self) -> dict[str, list[Frame]]:
        found = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                if is_valid_repository_name(entry.name) and entry.is_dir(follow_symlinks=False):
                    found[entry.name] = list_frames(Path(entry.path))
        return found

    # ---- frames -----------------------------------------------------------------------------

    def frame_at(self, repo: Repository, index: int) -> Frame:
        """Frame number ``index`` (from 0) of an available repository."""
        count = len(repo.frames)
        if not 0 <= index < count:
            allowed = f"0 to {count - 1}" if count else "none: the repository is empty"
            raise FrameNotFound(
                f"no frame {index} in repository {repo.name!r}; frames are {allowed}"
            )
        return repo.frames[index]

    @staticmethod
    def next_frame(repo: Repository, cursor: int) -> tuple[Frame | None, int]:
        """The frame at ``cursor`` (wrapping at the end) and the cursor for the next call."""
        count = len(repo.frames)
        if count == 0:
            return None, 0
        index = cursor % count
        return repo.frames[index], (index + 1) % count

    async def cached_frame_bytes(self, frame: Frame) -> bytes | None:
        """The frame's bytes through the cache, or None for frames too big to cache."""
        if not self.cache.accepts(frame.key):
            return None
        return await self.read_frame(frame)

    async def read_frame(self, frame: Frame) -> bytes:
        """The frame's bytes, from the cache when there, else from disk (then cached if small)."""
        data = self.cache.get(frame.key)
        if data is None:
            data = await asyncio.to_thread(_read_file, frame.path)
            self.cache.put(frame.key, data)
        return data

    # ---- downloads --------------------------------------------------------------------------

    def _start_download(self, repo: Repository) -> None:
        repo.status, repo.progress, repo.error = "preparing", None, None
        repo.download = asyncio.get_running_loop().create_task(
            self._download(repo), name=f"download-{repo.name}"
        )

    async def _download(self, repo: Repository) -> None:
        def progress(fraction: float | None) -> None:
            repo.progress = fraction

        try:
            async with self._single_flight(repo.name):
                # Another process of the cluster may have put it there while this one waited.
                shared = await asyncio.to_thread(repo.path.is_dir)
                if not shared:
                    report = await self._downloader.download(repo.name, repo.path, progress)
                frames = await asyncio.to_thread(list_frames, repo.path)
        except (FramehubError, OSError) as exc:
            repo.download = None
            self._metrics.repository_downloads.labels("failed").inc()
            error = str(exc) if isinstance(exc, FramehubError) else exc.strerror or str(exc)
            self._mark_failed(repo, error)
            return
        repo.download = None
        repo.frames = frames
        self._mark_available(repo, repo.path)
        repo.failures = 0
        if shared:
            _LOGGER.info("repository %s: downloaded by another process", repo.name)
            return
        self._metrics.repository_downloads.labels("done").inc()
        _LOGGER.info(
            "repository %s: downloaded, %d images (%d non-image members skipped)",
            repo.name,
            report.images,
            report.skipped,
        )

    def _single_flight(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """In a cluster, one process at a time downloads repository ``name``."""
        if self._locks is None:
            return contextlib.nullcontext()
        return self._locks.hold(f"download:{name}")

    def _mark_failed(self, repo: Repository, error: str) -> None:
        repo.failures += 1
        backoff = min(
            self._settings.retry_backoff * 2 ** (repo.failures - 1),
            self._settings.max_retry_backoff,
        )
        repo.status, repo.error, repo.progress = "failed", error, None
        repo.retry_at = time.monotonic() + backoff
        _LOGGER.warning(
            "repository %s: download failed (%s); next try in %.0f s", repo.name, error, backoff
        )


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()
