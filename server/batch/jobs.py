"""The record of one batch job, and how it is kept on disk.

A :class:`Job` is what ``GET /batch/{ID}`` describes and what ``state_dir/jobs/ID.json`` holds.
:func:`save_job` writes that file so that a power cut (an SD card box losing power) leaves the
previous state or the new one, never an empty or half file: the new text goes to ``ID.tmp``, is
fsynced, renamed over ``ID.json``, and the folder is fsynced so the rename itself is on disk.
:func:`load_jobs` reads them back at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.errors import InsufficientStorage
from server.web.bodies import DISK_FULL

_LOGGER = logging.getLogger(__name__)

UNFINISHED = ("queued", "running")
STATUSES = (*UNFINISHED, "done", "failed")


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
        self.finished.set()

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


def save_job(folder: Path, job: Job) -> None:
    """Write ``folder/ID.json`` durably and atomically (blocking: call in a thread when you can)."""
    path = folder / f"{job.id}.json"
    temp = path.with_suffix(".tmp")
    try:
        with temp.open("wb") as out:
            out.write(json.dumps(job.to_json()).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        fsync_folder(folder)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.errno in DISK_FULL:
            raise InsufficientStorage(
                "the server has no disk space left to record the job; try again later"
            ) from None
        raise


def fsync_folder(folder: Path) -> None:
    """Make the names in ``folder`` (a rename, a removal) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_jobs(folder: Path) -> list[Job]:
    """The jobs saved in ``folder``; unreadable files and leftover temp files are removed."""
    for partial in folder.glob("*.tmp"):
        partial.unlink(missing_ok=True)
    jobs = []
    for saved in folder.glob("*.json"):
        try:
            jobs.append(Job.from_json(json.loads(saved.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            _LOGGER.warning("removing unreadable batch job %s: %s", saved.name, exc)
            saved.unlink(missing_ok=True)
    return jobs
