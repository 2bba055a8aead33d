"""Batch jobs: uploads spooled to disk, a FIFO queue of analyses, and their state on disk.

Data flow of ``POST /batch``: :func:`receive_upload` streams the body into a temp file under
``state_dir/uploads`` (a few MiB at a time written in a worker thread while the next ones arrive,
never the whole body in memory, cut off past ``[batch] max_bytes``); the handler probes
it (:mod:`server.media.probe`) and hands it to :meth:`JobQueue.submit`, which owns the file from
then on. At most ``[batch] concurrency`` jobs run at once, each streaming the file from disk to
its processors through :meth:`server.processors.ProcessorPool.analyse`; up to ``max_queued`` more
wait in arrival order. The upload is removed when its job ends, whatever the ending.

Each job is also a small JSON file, ``state_dir/jobs/ID.json``, rewritten atomically at every
change of status. On start (:meth:`JobQueue.start`) jobs a previous run left queued or running are
marked failed with :data:`RESTARTED` and every leftover upload is removed; finished jobs are kept
``[batch] keep`` seconds after they end, then purged (lazily, whenever the queue is used).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from aiohttp.http_exceptions import HttpProcessingError

from server.errors import (
    BatchUnavailable,
    FramehubError,
    InsufficientStorage,
    JobNotFound,
    PayloadTooLarge,
)
from server.media.probe import VideoInfo
from server.metrics import Metrics
from server.processors import Payload, ProcessorPool
from server.settings import Settings

_LOGGER = logging.getLogger(__name__)

# Bytes gathered for one trip to the writer thread. Each trip costs the event loop a little and the
# writer the GIL: 4 MiB kept uploads over loopback at the speed of a bare handler writing on the
# loop (bench/upload.py), where 1 MiB lost about a fifth; two batches at most are held per upload.
WRITE_SIZE = 4 << 20
JOB_ID_BYTES = 12
RESTARTED = "the server restarted before this job finished"
STOPPED = "the server stopped before this job finished"
NOT_STARTED = "the server stopped before this job started"
STOPPING = "the server is stopping; send the video again later"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_UNFINISHED = ("queued", "running")
STATUSES = (*_UNFINISHED, "done", "failed")

Read = Callable[[], Awaitable[bytes]]


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


async def receive_upload(
    read: Read, folder: Path, limit: int, filename: str, content_type: str
) -> Upload:
    """Stream the chunks ``read`` returns into a new temp file in ``folder``; removed on failure."""
    fd, name = await asyncio.to_thread(
        tempfile.mkstemp, prefix="upload-", suffix=".part", dir=folder
    )
    path = Path(name)
    try:
        with os.fdopen(fd, "wb", buffering=0) as file:
            size = await copy_to_file(read, file, limit)
    except BaseException:
        await remove_file(path)
        raise
    return Upload(path, filename, content_type, size)


async def copy_to_file(read: Read, file: IO[bytes], limit: int) -> int:
    """Write what ``read`` returns to ``file`` until it returns b""; the number of bytes.

    Raises PayloadTooLarge past ``limit`` bytes, InsufficientStorage when the disk is full and
    FramehubError when the body ends early (the client went away) or is malformed.
    """
    size = 0
    # Chunks are handed to the writer as they came, about WRITE_SIZE at a time: no copy.
    batch: list[bytes] = []
    batch_size = 0
    writing: asyncio.Future[None] | None = None
    try:
        while True:
            try:
                chunk = await read()
            except (ConnectionError, HttpProcessingError) as exc:
                raise FramehubError(
                    f"the upload ended before the whole body arrived: {exc}"
                ) from None
            except ValueError as exc:  # aiohttp's multipart reader, on a malformed body
                raise FramehubError(f"malformed upload: {exc}") from None
            size += len(chunk)
            if size > limit:
                raise upload_too_large(limit)
            if chunk:
                batch.append(chunk)
                batch_size += len(chunk)
            if batch_size >= WRITE_SIZE or (not chunk and batch):
                # One write in flight while the next megabyte arrives.
                if writing is not None:
                    await asyncio.shield(writing)
                writing = asyncio.ensure_future(asyncio.to_thread(_write_all, file, batch))
                batch, batch_size = [], 0
            if not chunk:
                break
        if writing is not None:
            await asyncio.shield(writing)
    finally:
        # A thread cannot be stopped: never close the file under a write still running (shield
        # above keeps cancellation out of the write itself).
        if writing is not None and not writing.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(writing)
    return size


def upload_too_large(limit: int) -> PayloadTooLarge:
    """The error for a body over ``[batch] max_bytes``, declared or found while reading."""
    return PayloadTooLarge(f"the upload is over the {limit}-byte limit ([batch] max_bytes)")


def _write_all(file: IO[bytes], chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                written = file.write(view)
                view = view[written or 0 :]
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise InsufficientStorage(
                "the server has no disk space left for this upload; try again later"
            ) from None
        raise


@dataclass(slots=True)
class Job:
    """One batch analysis; everything but ``finished`` is saved in ``jobs/ID.json``."""

    id: str
    status: str
    submitted_at: float
    processes: list[str]
    video: dict[str, Any]
    filename: str
    content_type: str
    upload: str | None
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The saved form of the job."""
        return {
            "id": self.id,
            "status": self.status,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "processes": self.processes,
            "video": self.video,
            "filename": self.filename,
            "content_type": self.content_type,
            "upload": self.upload,
            "result": self.result,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """A job saved by :meth:`to_json`."""
        return cls(**data)

    def end(
        self, status: str, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """Record the end of the job (``done`` with a result, or ``failed`` with an error)."""
        self.status = status
        self.result = result
        self.error = error
        self.finished_at = time.time()

    def describe(self, position: int | None) -> dict[str, Any]:
        """What ``GET /batch/{ID}`` answers."""
        answer: dict[str, Any] = {"job": self.id, "status": self.status}
        if position is not None:
            answer["position"] = position
        answer.update(
            submitted=_iso(self.submitted_at),
            started=_iso(self.started_at),
            finished=_iso(self.finished_at),
            processes=self.processes,
            video=self.video,
        )
        if self.status == "done":
            answer["result"] = self.result
        elif self.status == "failed":
            answer["error"] = self.error
        return answer


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


class JobQueue:
    """The batch jobs of one app: a FIFO of waiting jobs, the running ones and the finished ones."""

    def __init__(self, settings: Settings, pool: ProcessorPool, metrics: Metrics) -> None:
        self._batch = settings.batch
        self._pool = pool
        # Absolute, as the probe runs in another working directory.
        self.uploads_dir = (settings.server.state_dir / "uploads").absolute()
        self._jobs_dir = settings.server.state_dir / "jobs"
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        for status in STATUSES:
            metrics.batch_jobs.labels(status).set_function(functools.partial(self.count, status))

    async def start(self) -> None:
        """Create the folders, fail what a previous run left unfinished, remove leftover uploads."""
        for job in await asyncio.to_thread(self._recover):
            job.finished.set()
            self._jobs[job.id] = job
        self._purge()

    def _recover(self) -> list[Job]:
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self._jobs_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.uploads_dir.iterdir():
            # No job survives a restart, so no upload has an owner any more.
            leftover.unlink(missing_ok=True)
        for partial in self._jobs_dir.glob("*.tmp"):
            partial.unlink(missing_ok=True)
        jobs = []
        for saved in self._jobs_dir.glob("*.json"):
            try:
                job = Job.from_json(json.loads(saved.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                _LOGGER.warning("removing unreadable batch job %s: %s", saved.name, exc)
                saved.unlink(missing_ok=True)
                continue
            if job.status in _UNFINISHED:
                _LOGGER.warning("batch job %s was %s when the server stopped", job.id, job.status)
                job.upload = None
                job.end("failed", error=RESTARTED)
                self._save(job)
            jobs.append(job)
        return jobs

    async def submit(self, upload: Upload, video: VideoInfo, processes: list[str]) -> Job:
        """Queue an analysis of ``upload``; once queued, the queue owns and removes the file."""
        self._purge()
        if self._closing:
            raise BatchUnavailable(STOPPING)
        if len(self._waiting) >= self._batch.max_queued:
            raise BatchUnavailable(
                f"{len(self._waiting)} batch jobs are already waiting ([batch] max_queued); "
                "try again later"
            )
        job = Job(
            id=secrets.token_urlsafe(JOB_ID_BYTES),
            status="queued",
            submitted_at=time.time(),
            processes=processes,
            video=video.to_json(),
            filename=upload.filename,
            content_type=upload.content_type,
            upload=str(upload.path),
        )
        await asyncio.to_thread(self._save, job)
        if self._closing:  # stopped while the job was being saved: it never was
            self._forget(job)
            raise BatchUnavailable(STOPPING)
        self._jobs[job.id] = job
        self._waiting.append(job)
        _LOGGER.info(
            "batch job %s queued at position %d: %d bytes for %s",
            job.id,
            len(self._waiting),
            video.bytes,
            ", ".join(processes) or "no processor",
        )
        self._dispatch()
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id, or JobNotFound."""
        self._purge()
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(
                f"no batch job {job_id!r}: unknown, or finished over {self._batch.keep:g} s ago "
                "([batch] keep)"
            )
        return job

    def count(self, status: str) -> int:
        """How many of the jobs kept have this status."""
        return sum(1 for job in self._jobs.values() if job.status == status)

    def position(self, job: Job) -> int | None:
        """1 for the next job to start, 2 for the one after it; None unless queued."""
        if job.status != "queued":
            return None
        return self._waiting.index(job) + 1

    async def close(self, grace: float) -> None:
        """Fail the waiting jobs, give the running ones ``grace`` seconds, then stop them."""
        self._closing = True
        while self._waiting:
            job = self._waiting.popleft()
            await self._discard_upload(job)
            job.end("failed", error=NOT_STARTED)
            job.finished.set()
            self._save(job)
        running = list(self._running.values())
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _dispatch(self) -> None:
        while self._waiting and len(self._running) < self._batch.concurrency and not self._closing:
            job = self._waiting.popleft()
            task = asyncio.create_task(self._run(job), name=f"batch job {job.id}")
            self._running[job.id] = task
            task.add_done_callback(functools.partial(self._job_done, job.id))

    def _job_done(self, job_id: str, _task: asyncio.Task[None]) -> None:
        del self._running[job_id]
        self._dispatch()

    async def _run(self, job: Job) -> None:
        job.status = "running"
        job.started_at = time.time()
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            await asyncio.to_thread(self._save, job)
            payload = Payload(job.filename, job.content_type, path=Path(job.upload or ""))
            result = await self._pool.analyse(payload, job.processes)
        except asyncio.CancelledError:
            await self._discard_upload(job)
            job.end("failed", error=STOPPED)
            job.finished.set()
            self._save(job)  # on the loop: a task being stopped may not get another turn
            raise
        except Exception as exc:
            _LOGGER.exception("batch job %s failed", job.id)
            error = f"internal error while analysing: {exc}"
        await self._discard_upload(job)
        job.end("failed" if error else "done", result=result, error=error)
        job.finished.set()
        _LOGGER.info("batch job %s %s in %.1f s", job.id, job.status, time.time() - job.started_at)
        try:
            await asyncio.to_thread(self._save, job)
        except (OSError, FramehubError) as exc:
            _LOGGER.error("cannot save the end of batch job %s: %s", job.id, exc)

    @staticmethod
    async def _discard_upload(job: Job) -> None:
        if job.upload is not None:
            path, job.upload = Path(job.upload), None
            await remove_file(path)

    def _save(self, job: Job) -> None:
        """Write ``jobs/ID.json`` atomically: readers find the old state or the new, never half."""
        path = self._jobs_dir / f"{job.id}.json"
        temp = path.with_suffix(".tmp")
        try:
            temp.write_text(json.dumps(job.to_json()))
            os.replace(temp, path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in _DISK_FULL:
                raise InsufficientStorage(
                    "the server has no disk space left to record the job; try again later"
                ) from None
            raise

    def _purge(self) -> None:
        """Forget the jobs that finished over ``[batch] keep`` seconds ago."""
        horizon = time.time() - self._batch.keep
        for job in list(self._jobs.values()):
            if job.finished.is_set() and job.finished_at is not None and job.finished_at <= horizon:
                self._forget(job)

    def _forget(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        (self._jobs_dir / f"{job.id}.json").unlink(missing_ok=True)
