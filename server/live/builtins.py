"""The built-in processors, ``summary`` and ``motion``, called directly and run by worker processes.

A ``[processors.NAME]`` table with ``builtin = "summary"`` (or ``"motion"``) is served here rather
than over HTTP: :meth:`BuiltinAnalyses.analyse` runs :func:`server.media.analysis.analyse_clip` in
a pool of worker processes of its own (``[clips] analysis_workers`` of them), so that decoding can
never starve ingest. The fork server and the workers start with the first analysis, not with the
server: a server used as a camera only, or not sent a clip yet, spends no memory on them (their
proportional share, PSS, once clips flow: the fork server about 26 MB, a worker about 22 MB). When several
built-ins get the same clip, it is decoded once. ``POST /analyze/{kind}`` serves outside callers
through the same method, so both give the same answers. Nothing here goes through the server's
own port, so a stop that has closed the listener still analyses every last clip.

Why processes and not threads: a decoding thread needs the GIL back after every FFmpeg call, and
next to a busy event loop each of those waits lasts up to the interpreter's 5 ms switch interval.
One analysis thread fell from 1,030 to 160 frames/s (640x480 MJPEG clips) beside a thread running
Python code, and the event loop lost whatever the analysis held the GIL for; past capacity that
made analysed frames/s collapse as ingest grew (bench/capacity.py). A worker process shares no
GIL; a clip goes to it as bytes (a pipe write of about 0.7 MB per 30-frame clip) or, for a batch
upload, as the path of the checked file.

The workers run at a lower CPU priority (:data:`WORKER_NICENESS`): when every core is busy, acks
come first and the sessions drop frames (counted) rather than ingest slowing down. They ignore
SIGINT and SIGTERM, which are the server's to act on (it analyses the last clips, then ends the
workers). A worker that dies, say on a clip that crashes FFmpeg, fails the analyses then in flight
with an error and new workers start with the next analysis; the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from server.errors import ClipUnreadable
from server.settings import Settings

_LOGGER = logging.getLogger(__name__)

# Nice value of the analysis workers: below the event loop, which then wins a contended core, yet
# not so low that ingest past capacity takes the workers' share. bench/capacity.py on 2 cores: at
# nice 10 (a CFS weight of 110 against the loop's 1,024) 96 cameras analysed 0.84x what 48 did; at
# nice 5 (weight 335) 0.98x, and 48 still kept up.
WORKER_NICENESS = 5
# What the fork server loads for the workers it forks. server.cli too: a worker first runs the
# server's main module again (multiprocessing's spawn.prepare, as __mp_main__), and main.py and
# the framehub script import server.cli, the whole server. Loaded once here, that cost each worker
# 0.44 s and 14 MB (PSS 36 MB a worker without, 22 MB with; the fork server 23 MB, 26 MB with).
WORKER_MODULES = ["server.cli", "server.live.builtins", "server.media.analysis"]
WORKER_DIED = (
    "the analysis worker process ended before answering (a clip may have crashed the decoder); "
    "another starts with the next analysis"
)


def _start_worker() -> None:
    """Set up a worker process: its priority and its signals."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)


def _analyse_in_worker(
    source: bytes | Path, kinds: list[str], max_pixels: int
) -> dict[str, dict[str, Any]]:
    """Run in a worker: the analyses of one clip or video."""
    # Imported here (the fork server has it loaded): the server process needs no PyAV for this.
    from server.media.analysis import analyse_clip

    return analyse_clip(source, kinds, max_pixels)


class BuiltinAnalyses:
    """The analysis workers and the calls that use them; one per app, see ``server.app``."""

    def __init__(self, settings: Settings) -> None:
        self._max_pixels = settings.frames.max_pixels
        self._workers = settings.clips.analysis_workers
        # Workers are forked from multiprocessing's fork server, a process that has PyAV loaded
        # already (forking this process, with its threads and event loop, would not be safe).
        # Both start with the first analysis (see _started), so a server that has none to do,
        # or none yet, spends nothing on them and a stop never waits for one to start.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(WORKER_MODULES)
        self._executor: ProcessPoolExecutor | None = None
        self._starting = asyncio.Lock()
        self._warming: asyncio.Task[Any] | None = None
        self._closed = False

    def warm_up(self) -> None:
        """Start the workers in the background now, if they are not running: called when a live
        session connects or a batch job is taken, so that its first clip does not wait the
        fork server's start (0.5 to 0.7 s) while a server that only serves repositories still
        spends nothing on them."""
        if self._executor is None and self._warming is None and not self._closed:
            self._warming = asyncio.get_running_loop().create_task(
                self._started(), name="analysis-warm-up"
            )
            self._warming.add_done_callback(self._warmed)

    def _warmed(self, task: asyncio.Task[Any]) -> None:
        self._warming = None
        if not task.cancelled() and task.exception() is not None:
            # The analysis that needs them starts them again, and fails with the reason.
            _LOGGER.warning("analysis workers did not start: %s", task.exception())

    async def _started(self) -> ProcessPoolExecutor:
        """The workers, started by the first analysis that needs them; the others wait for it."""
        async with self._starting:
            if self._closed:
                raise RuntimeError("the analysis workers have been stopped")
            if self._executor is None:
                started = time.perf_counter()
                self._executor = await asyncio.to_thread(self._start_workers)
                _LOGGER.info("analysis workers started in %.2f s", time.perf_counter() - started)
            return self._executor

    def _start_workers(self) -> ProcessPoolExecutor:
        """A new pool with its first worker running; called in a thread, for the event loop not to
        wait: the first start of the fork server (and of multiprocessing's resource tracker)
        waits until it has loaded its modules, 0.5 to 0.7 s on the development machine, while the
        event loop runs on (no stall over 10 ms). The other workers start on demand and fork in
        a few milliseconds."""
        executor = ProcessPoolExecutor(
            self._workers, mp_context=self._context, initializer=_start_worker
        )
        executor.submit(int).result()
        return executor

    async def analyse(self, source: bytes | Path, kinds: Sequence[str]) -> dict[str, Any]:
        """``{kind: answer}`` for a clip (bytes) or a checked video file; ClipUnreadable if the
        source does not decode."""
        job = functools.partial(_analyse_in_worker, source, list(kinds), self._max_pixels)
        executor = await self._started()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, job)
        except BrokenProcessPool:
            if executor is self._executor:  # the first analysis to notice: the next starts new ones
                self._executor = None
                executor.shutdown(wait=False)
            raise ClipUnreadable(WORKER_DIED) from None

    async def close(self) -> None:
        """Wait for the analyses still running, then end the workers."""
        if self._warming is not None:
            with contextlib.suppress(Exception):  # said by _warmed
                await self._warming
        async with self._starting:
            self._closed = True
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)
