"""Recording (``[recording]``): a live camera's frames written into a repository, one file each.

Data flow: when a camera's session connects, the camera code calls :meth:`Recorder.open`, which
checks the camera's repository folder (``[repositories] dir`` / ``[recording] repository``) in a
worker thread. A folder holding images that are not frames of a recording is an unrelated
repository and is refused (:class:`RecordingRefused`); a missing, empty or recorded folder is
taken. The first open of a camera also reads the frames already there, so the numbering continues
after the highest one and retention knows what is kept, and starts the camera's writer task.

Every frame the camera queues goes to :meth:`Recorder.offer` (on the event loop, during ingest).
It only puts the bytes, as received, on the camera's bounded queue (``queue_size``): never a
wait, never an exception. A full queue, or a recording paused after a write error, drops the
frame and counts it, so a slow or failing disk costs ingest nothing and memory stays bounded.

The writer gathers frames for :data:`BATCH_GATHER` seconds, takes every frame waiting (up to
:data:`BATCH_FRAMES`) and, in one hop to its own thread (at the lowest CPU priority, so a busy box
drops recorded frames rather than slowing ingest), writes
each as ``frame-<number>-<unix ms>.<ext>`` under a hidden temporary name renamed into place (a
reader never sees half a file; repository listings skip hidden names), then deletes the oldest
frames that retention (``max_frames``, ``max_bytes``, ``max_age``) no longer keeps. Retention
works on an in-memory index of the frames kept, never by listing the folder again. The numbers
give the arrival order, and :func:`server.names.natural_key` sorts them so, so the recording
plays back as a repository in the order it was received.

A write error (a full disk, a folder gone) pauses the camera's recording: one warning, frames
dropped until ``retry_backoff`` has passed (doubling up to ``max_retry_backoff`` while writes keep
failing), then the next frames are tried again; the first write that succeeds logs one line and
resumes. :meth:`Recorder.close` writes what is queued until a deadline, then stops the writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from server.errors import RecordingRefused
from server.names import is_image_name, is_valid_repository_name
from server.ops.metrics import Metrics
from server.ops.tasks import cancel_and_wait
from server.settings import RecordingSettings, Settings

_LOGGER = logging.getLogger(__name__)

# The suffix a frame is recorded under, by Content-Type: one per type, so names stay predictable.
RECORDED_SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}
_SUFFIX_PATTERN = "|".join(re.escape(suffix) for suffix in RECORDED_SUFFIXES.values())
# A recorded frame: its number (arrival order, continuing across restarts) and the unix
# milliseconds it was received at. Image files named otherwise belong to another repository.
FRAME_NAME = re.compile(rf"frame-(\d+)-(\d+)(?:{_SUFFIX_PATTERN})")
# A frame being written; one left by a crash is removed at the next first open.
PART_NAME = re.compile(rf"\.frame-\d+-\d+(?:{_SUFFIX_PATTERN})\.part")
# Frames written per thread hop. Each hop costs the event loop a wakeup, so a camera that fell
# behind catches up in few hops; the bound keeps a hop short, since close() past its deadline
# still waits for the hop in flight (a thread cannot be stopped).
BATCH_FRAMES = 128
# Seconds a writer waits for more frames before a hop: short next to a recording's purpose, long
# enough that a camera at 30 fps or a burst of thousands a second makes a batch per hop.
BATCH_GATHER = 0.05
# Foreign image names quoted in a refusal: enough to recognise the folder, not a listing.
REFUSAL_EXAMPLES = 3
TEMPLATE_ADVICE = (
    'pick another [recording] repository template, such as "rec-{camera}", '
    "or move those images away"
)


class _Kept(NamedTuple):
    """A recorded frame on disk, as the retention index knows it."""

    name: str
    size: int
    received_ms: int


class _Pending(NamedTuple):
    """A frame offered and not yet written."""

    data: bytes
    suffix: str
    received_ms: int


class _Scan(NamedTuple):
    """What a repository folder holds, as :meth:`Recorder.open` needs it."""

    exists: bool
    is_folder: bool
    frames: list[_Kept]
    next_number: int
    foreign: list[str]


class _Outcome(NamedTuple):
    """What one thread hop did: frames written and frames deleted, in order, until ``error``."""

    written: int
    deleted: int
    error: str | None


def _unix_ms(received_at: float) -> int:
    # A name with a negative or missing time would not match FRAME_NAME, and the folder would be
    # refused at the next start; a bogus clock reading falls back to now.
    if not math.isfinite(received_at) or received_at < 0:
        received_at = time.time()
    return int(received_at * 1000)


def _scan_folder(folder: Path, remove_parts: bool) -> _Scan:
    """The recorded frames (in number order) and foreign images of ``folder`` (blocking)."""
    frames: list[tuple[int, _Kept]] = []
    foreign: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                # Only regular files, as the repository listing counts them.
                if not entry.is_file(follow_symlinks=False):
                    continue
                match = FRAME_NAME.fullmatch(entry.name)
                if match is not None:
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # deleted by retention while being listed
                        continue
                    frames.append((int(match[1]), _Kept(entry.name, size, int(match[2]))))
                elif is_image_name(entry.name):
                    foreign.append(entry.name)
                elif remove_parts and PART_NAME.fullmatch(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
    except FileNotFoundError:
        return _Scan(False, False, [], 0, [])
    except NotADirectoryError:
        return _Scan(True, False, [], 0, [])
    frames.sort()
    next_number = frames[-1][0] + 1 if frames else 0
    return _Scan(True, True, [kept for _, kept in frames], next_number, sorted(foreign))


def _write_file(folder: Path, name: str, data: bytes) -> None:
    part = folder / f".{name}.part"
    try:
        with open(part, "wb") as fh:
            fh.write(data)
        # No fsync: a flush per frame would cost more than the frames lost to a power cut are
        # worth; the rename alone is what keeps readers from half files.
        os.replace(part, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise


def _write_frames(folder: Path, frames: list[tuple[str, bytes]], evict: list[str]) -> _Outcome:
    """Write ``frames`` into ``folder`` in order, then delete ``evict``; stop at the first
    error, deleting nothing unless every frame was written (blocking: call in a thread)."""
    written = deleted = 0
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in frames:
            _write_file(folder, name, data)
            written += 1
        for name in evict:
            # A frame someone removed by hand is gone all the same.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
            deleted += 1
    except OSError as exc:
        return _Outcome(written, deleted, str(exc))
    return _Outcome(written, deleted, None)


# Nice value of the writer thread. Creating a file costs the kernel 0.4 ms or so on an SD card or
# a VM's ext4 (bench/live.py), which at thousands of frames a second is half a core: at the
# lowest priority the writer gets only what the event loop and the rest leave idle, so a box at
# full load drops recorded frames (counted) instead of slowing ingest.
WRITER_NICENESS = 19


def _yield_the_cpu() -> None:
    """Lower the calling thread's CPU priority (Linux: a thread is scheduled on its own)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)


class _Recording:
    """One camera's recording: its queue, its index of frames kept and its writer task."""

    def __init__(
        self,
        camera: str,
        repository: str,
        folder: Path,
        settings: RecordingSettings,
        metrics: Metrics,
        scan: _Scan,
        writer: Executor,
    ) -> None:
        self.camera = camera
        self._writer = writer
        self.repository = repository
        self.folder = folder
        self._settings = settings
        self._metrics = metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(settings.queue_size)
        self.kept: deque[_Kept] = deque(scan.frames)
        self.bytes = sum(kept.size for kept in scan.frames)
        self.next_number = scan.next_number
        self.dropped = 0
        self.error: str | None = None
        # True during the backoff after a failed write: frames are dropped, not queued.
        self.holding = False
        self._backoff = settings.retry_backoff
        self.task: asyncio.Task[None] | None = None
        # Series that exist from the start, so a rate reads 0 rather than nothing.
        for counter in (
            metrics.recorded_frames,
            metrics.recording_dropped,
            metrics.recording_deleted,
            metrics.recording_errors,
        ):
            counter.labels(camera)
        metrics.recording_paused.labels(camera).set(0)

    def describe(self) -> dict[str, Any]:
        """The shape :meth:`Recorder.state` returns."""
        return {
            "repository": self.repository,
            "frames": len(self.kept),
            "bytes": self.bytes,
            "dropped": self.dropped,
            "paused": self.error is not None,
            "error": self.error,
        }

    def reconfigure(self, settings: RecordingSettings) -> None:
        """New limits (the queue keeps the size it was made with)."""
        self._settings = settings

    def offer(self, data: bytes, content_type: str, received_at: float) -> None:
        """Queue one frame, or drop and count it (see the module docstring)."""
        suffix = RECORDED_SUFFIXES.get(content_type.partition(";")[0].strip().lower())
        if suffix is None or self.holding:
            self._drop(1)
            return
        try:
            self.queue.put_nowait(_Pending(data, suffix, _unix_ms(received_at)))
        except asyncio.QueueFull:
            self._drop(1)

    def _drop(self, count: int) -> None:
        if count:
            self.dropped += count
            self._metrics.recording_dropped.labels(self.camera).inc(count)

    async def run(self) -> None:
        """Until cancelled: write the frames queued, a batch per thread hop."""
        while True:
            batch = [await self.queue.get()]
            if self.queue.qsize() < BATCH_FRAMES:
                # Gather what comes meanwhile: one thread hop per batch costs the event loop (a
                # wake-up, the GIL handed back and forth) far less than one per frame.
                await asyncio.sleep(BATCH_GATHER)
            while len(batch) < BATCH_FRAMES and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._write(batch)
            except Exception:
                # A bug, not a disk: the recording pauses as for a write error, rather than
                # dying and leaving frames to pile up unseen.
                _LOGGER.exception("recording of camera %s: writer failed", self.camera)
                self._failed("internal error, see the server log", lost=len(batch))
            finally:
                for _ in batch:
                    self.queue.task_done()
            if self.holding:
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, self._settings.max_retry_backoff)
                self.holding = False

    async def _write(self, batch: list[_Pending]) -> None:
        first = self.next_number
        self.next_number += len(batch)
        new = [
            _Kept(
                f"frame-{first + i}-{frame.received_ms}{frame.suffix}",
                len(frame.data),
                frame.received_ms,
            )
            for i, frame in enumerate(batch)
        ]
        evict = self._evictions(new)
        hop = asyncio.get_running_loop().run_in_executor(
            self._writer,
            functools.partial(
                _write_frames,
                self.folder,
                [(kept.name, frame.data) for kept, frame in zip(new, batch, strict=True)],
                [kept.name for kept in evict],
            ),
        )
        try:
            outcome = await asyncio.shield(hop)
        except asyncio.CancelledError:
            # close() past its deadline: the thread cannot be stopped, so wait for it, keeping
            # the index true to the folder and nothing writing once close() has returned.
            await asyncio.wait([hop])
            if hop.exception() is None:
                self._account(new, hop.result())
            raise
        self._account(new, outcome)

    def _evictions(self, new: list[_Kept]) -> list[_Kept]:
        """The oldest frames retention drops once ``new`` is written; never the newest frame."""
        limits = self._settings
        count = len(self.kept) + len(new)
        size = self.bytes + sum(kept.size for kept in new)
        oldest_ms = (time.time() - limits.max_age) * 1000
        evict = []
        for kept in itertools.chain(self.kept, new):
            over = (
                0 < limits.max_frames < count
                or 0 < limits.max_bytes < size
                or (limits.max_age > 0 and kept.received_ms < oldest_ms)
            )
            # A recording always shows its latest frame, even one over max_bytes on its own.
            if not over or count <= 1:
                break
            evict.append(kept)
            count -= 1
            size -= kept.size
        return evict

    def _account(self, new: list[_Kept], outcome: _Outcome) -> None:
        written = new[: outcome.written]
        self.kept.extend(written)
        self.bytes += sum(kept.size for kept in written)
        # Numbers of frames not written are given again: the recording stays gapless on disk.
        self.next_number -= len(new) - outcome.written
        # Deletions happen only once the whole batch is written, and take the evictions in
        # order: they are the oldest frames of the index now.
        for _ in range(outcome.deleted):
            self.bytes -= self.kept.popleft().size
        if outcome.written:
            self._metrics.recorded_frames.labels(self.camera).inc(outcome.written)
        if outcome.deleted:
            self._metrics.recording_deleted.labels(self.camera).inc(outcome.deleted)
        if outcome.error is None:
            self._succeeded()
        else:
            self._failed(outcome.error, lost=len(new) - outcome.written)

    def _succeeded(self) -> None:
        if self.error is None:
            return
        _LOGGER.info(
            "recording of camera %s into repository %s resumed", self.camera, self.repository
        )
        self.error = None
        self._backoff = self._settings.retry_backoff
        self._metrics.recording_paused.labels(self.camera).set(0)

    def _failed(self, error: str, lost: int) -> None:
        # The frames queued behind the failed ones would be written after the backoff, long
        # after their time: they go too, and the memory with them.
        while not self.queue.empty():
            self.queue.get_nowait()
            self.queue.task_done()
            lost += 1
        self._drop(lost)
        self._metrics.recording_errors.labels(self.camera).inc()
        self.holding = True
        if self.error is None:
            # One line per pause, not per failed retry: a full disk stays full for a while.
            _LOGGER.warning(
                "recording of camera %s into repository %s paused: %s; frames are dropped, "
                "retrying after %g s (up to every %g s)",
                self.camera,
                self.repository,
                error,
                self._backoff,
                self._settings.max_retry_backoff,
            )
            self._metrics.recording_paused.labels(self.camera).set(1)
        self.error = error


class Recorder:
    """The recordings of live cameras; one per app, see ``server.app``."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings.recording
        self._root = settings.repositories_dir
        self._metrics = metrics
        self._recordings: dict[str, _Recording] = {}
        self._closed = False
        # Created on the first recording, so a server that records nothing has no thread for it.
        self._writer_pool: ThreadPoolExecutor | None = None

    @property
    def _writer(self) -> ThreadPoolExecutor:
        if self._writer_pool is None:
            self._writer_pool = ThreadPoolExecutor(
                1, thread_name_prefix="recorder", initializer=_yield_the_cpu
            )
        return self._writer_pool

    def reconfigure(self, settings: Settings) -> None:
        """New ``[recording]`` settings: retention and backoff apply to every recording at once;
        which cameras are recorded, and where, applies from their next :meth:`open`."""
        self._settings = settings.recording
        for recording in self._recordings.values():
            recording.reconfigure(settings.recording)

    def repository_of(self, camera: str) -> str | None:
        """The repository ``camera`` records into; None when ``[recording] cameras`` omits it."""
        if not self._settings.records(camera):
            return None
        return self._settings.repository_of(camera)

    async def open(self, camera: str) -> str | None:
        """Check and take the camera's repository folder before it streams; its name, or None when
        the camera is not recorded. RecordingRefused for a folder that is another repository."""
        repository = self.repository_of(camera)
        if repository is None:
            return None
        self._check_name(camera, repository)
        recording = self._recordings.get(camera)
        folder = self._root / repository
        try:
            # Leftover part files are removed only before the writer runs: later, one may be
            # the frame it is writing.
            scan = await asyncio.to_thread(_scan_folder, folder, recording is None)
        except OSError as exc:
            why = f"its folder cannot be read ({exc.strerror})"
            raise self._refusal(camera, repository, why) from None
        if not scan.is_folder and scan.exists:
            raise self._refusal(camera, repository, "it is a file, not a folder")
        if scan.foreign:
            examples = ", ".join(scan.foreign[:REFUSAL_EXAMPLES])
            more = len(scan.foreign) - REFUSAL_EXAMPLES
            if more > 0:
                examples += f" and {more} more"
            raise self._refusal(
                camera,
                repository,
                f"its folder holds images that are not frames of a recording ({examples})",
            )
        # Another open of this camera may have finished while the folder was read.
        recording = self._recordings.get(camera)
        if recording is None:
            self._check_name(camera, repository)
            recording = _Recording(
                camera, repository, folder, self._settings, self._metrics, scan, self._writer
            )
            self._recordings[camera] = recording
            if not self._closed:
                recording.task = asyncio.create_task(recording.run(), name=f"recording-{camera}")
            _LOGGER.info(
                "recording camera %s into repository %s: %d frames kept, next is number %d",
                camera,
                repository,
                len(recording.kept),
                recording.next_number,
            )
        return repository

    def _check_name(self, camera: str, repository: str) -> None:
        if not is_valid_repository_name(repository):
            raise RecordingRefused(
                f"camera {camera!r} cannot be recorded: {repository!r} is not a valid repository "
                "name (1-64 letters, digits, '.', '_' or '-'); use a shorter camera name or "
                "[recording] repository template"
            )
        # Two cameras in one folder would number their frames over each other.
        for other in self._recordings.values():
            if other.repository == repository and other.camera != camera:
                raise RecordingRefused(
                    f"camera {camera!r} cannot be recorded into repository {repository!r}: "
                    f"camera {other.camera!r} records there; put {{camera}} in the "
                    "[recording] repository template"
                )

    def _refusal(self, camera: str, repository: str, why: str) -> RecordingRefused:
        # The client is told the repository; the full path is for the operator's log only.
        _LOGGER.warning("camera %s not recorded: %s (%s)", camera, why, self._root / repository)
        return RecordingRefused(
            f"camera {camera!r} cannot be recorded into repository {repository!r}: {why}; "
            + TEMPLATE_ADVICE
        )

    def offer(self, camera: str, data: bytes, content_type: str, received_at: float) -> None:
        """Queue one live frame for writing; never blocks, never raises (see the module docstring)."""
        recording = self._recordings.get(camera)
        if recording is None or self._closed:
            return
        recording.offer(data, content_type, received_at)

    def state(self, camera: str) -> dict[str, Any] | None:
        """None when not recorded, else the repository, frames and bytes kept, frames dropped,
        whether paused and the write error that paused it."""
        repository = self.repository_of(camera)
        if repository is None:
            return None
        recording = self._recordings.get(camera)
        if recording is None:
            return {
                "repository": repository,
                "frames": 0,
                "bytes": 0,
                "dropped": 0,
                "paused": False,
                "error": None,
            }
        return recording.describe()

    async def close(self, deadline: float) -> None:
        """Write what is queued until ``deadline`` (event loop time), then stop the writers."""
        running = [r for r in self._recordings.values() if r.task is not None]
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.gather(*(r.queue.join() for r in running))
        except TimeoutError:
            for recording in running:
                if recording.queue.qsize():
                    _LOGGER.warning(
                        "recording of camera %s: %d frame(s) not written before the stop",
                        recording.camera,
                        recording.queue.qsize(),
                    )
        finally:
            # Frames offered while the queues drained were still taken; from now on none is.
            self._closed = True
            tasks = [r.task for r in running if r.task is not None]
            await cancel_and_wait(tasks)
            if self._writer_pool is not None:
                await asyncio.to_thread(self._writer_pool.shutdown, True)
                self._writer_pool = None
            for recording in running:
                recording.task = None
