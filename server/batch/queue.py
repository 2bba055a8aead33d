"""The batch queue: jobs run in arrival order, a few at a time, each fanned out to its processors.

Data flow of ``POST /batch``: the handler spools the body to disk
(:func:`server.batch.uploads.receive_upload`), probes it (:mod:`server.media.probe`) and hands it
to :meth:`JobQueue.submit`, which owns the file from then on. At most ``[batch] concurrency`` jobs
run at once, each streaming the file from disk to its processors through
:meth:`server.live.processors.ProcessorPool.analyse`; up to ``max_queued`` more wait in arrival
order. The upload is removed when its job ends, whatever the ending. In a cluster every record is
also written to Redis (``server.cluster.jobs``), so that any process answers ``GET /batch/{ID}``.

Every change of a job's status is saved (:func:`server.batch.jobs.save_job`). On start
(:meth:`JobQueue.start`) jobs a previous run left queued or running are marked failed with
:data:`RESTARTED` and every leftover upload is removed; finished jobs are kept ``[batch] keep``
seconds after they end, then purged (lazily, whenever the queue is used). Every job that ends,
done or failed, is published to the webhooks (event ``batch``). :meth:`JobQueue.close` is the
stop: waiting jobs fail at once, running ones get a grace period.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.batch.jobs import STATUSES, UNFINISHED, Job, load_jobs, save_job
from server.batch.uploads import Upload, remove_file
from server.errors import BatchUnavailable, FramehubError, JobNotFound
from server.live.processors import Payload, ProcessorPool
from server.live.webhooks import Webhooks
from server.media.probe import VideoInfo
from server.ops.metrics import Metrics
from server.ops.tasks import wait_then_cancel
from server.settings import Settings

if TYPE_CHECKING:
    from server.cluster.jobs import SharedJobs

_LOGGER = logging.getLogger(__name__)

JOB_ID_BYTES = 12
RESTARTED = "the server restarted before this job finished"
STOPPED = "the server stopped before this job finished"
NOT_STARTED = "the server stopped before this job started"
STOPPING = "the server is stopping; send the video again later"


class JobQueue:
    """The batch jobs of one app: a FIFO of waiting jobs, the running ones and the finished ones."""

    def __init__(
        self,
        settings: Settings,
        pool: ProcessorPool,
        webhooks: Webhooks,
        metrics: Metrics,
        shared: SharedJobs | None = None,
    ) -> None:
        self._batch = settings.batch
        self._shared = shared
        self._pool = pool
        self._webhooks = webhooks
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
            self._jobs[job.id] = job
            self._share(job)  # a job of this node's last run, failed now, is seen so everywhere
        self._purge()

    def _recover(self) -> list[Job]:
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self._jobs_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.uploads_dir.iterdir():
            # No job survives a restart, so no upload has an owner any more.
            leftover.unlink(missing_ok=True)
        jobs = load_jobs(self._jobs_dir)
        for job in jobs:
            if job.status in UNFINISHED:
                _LOGGER.warning("batch job %s was %s when the server stopped", job.id, job.status)
                job.upload = None
                job.end("failed", error=RESTARTED)
                save_job(self._jobs_dir, job)
            job.finished.set()
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
        await self._save_off_loop(job)
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

    def local(self, job_id: str) -> Job | None:
        """The job with this id if this process took it."""
        self._purge()
        return self._jobs.get(job_id)

    async def get(self, job_id: str) -> Job:
        """The job with this id, taken by this process or, in a cluster, by any; JobNotFound."""
        job = self.local(job_id)
        if job is None and self._shared is not None:
            job = await self._shared.load(job_id)
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

    async def close(self, deadline: float) -> None:
        """Fail the waiting jobs, give the running ones until ``deadline`` (loop time), then stop
        them."""
        if self._closing:
            return
        self._closing = True
        while self._waiting:
            job = self._waiting.popleft()
            await self._discard_upload(job)
            job.end("failed", error=NOT_STARTED)
            self._published(job)
            self._save(job)
        await wait_then_cancel(list(self._running.values()), deadline)

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
            await self._save_off_loop(job)
            payload = Payload(job.filename, job.content_type, path=Path(job.upload or ""))
            result = await self._pool.analyse(payload, job.processes)
        except asyncio.CancelledError:
            await self._discard_upload(job)
            job.end("failed", error=STOPPED)
            self._published(job)
            self._save(job)  # on the loop: a task being stopped may not get another turn
            raise
        except Exception as exc:
            _LOGGER.exception("batch job %s failed", job.id)
            error = f"internal error while analysing: {exc}"
        await self._discard_upload(job)
        job.end("failed" if error else "done", result=result, error=error)
        self._published(job)
        _LOGGER.info("batch job %s %s in %.1f s", job.id, job.status, time.time() - job.started_at)
        try:
            await self._save_off_loop(job)
        except (OSError, FramehubError) as exc:
            _LOGGER.error("cannot save the end of batch job %s: %s", job.id, exc)

    @staticmethod
    async def _discard_upload(job: Job) -> None:
        if job.upload is not None:
            path, job.upload = Path(job.upload), None
            await remove_file(path)

    def _published(self, job: Job) -> None:
        self._webhooks.publish("batch", {"event": "batch", **job.describe(None)})

    def _save(self, job: Job) -> None:
        save_job(self._jobs_dir, job)
        self._share(job)

    async def _save_off_loop(self, job: Job) -> None:
        await asyncio.to_thread(save_job, self._jobs_dir, job)
        self._share(job)

    def _share(self, job: Job) -> None:
        if self._shared is not None:
            self._shared.save(job)

    def _purge(self) -> None:
        """Forget the jobs that finished over ``[batch] keep`` seconds ago."""
        horizon = time.time() - self._batch.keep
        for job in list(self._jobs.values()):
            if job.finished.is_set() and job.finished_at is not None and job.finished_at <= horizon:
                self._forget(job)

    def _forget(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        (self._jobs_dir / f"{job.id}.json").unlink(missing_ok=True)
