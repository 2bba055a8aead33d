"""The built-in processors, ``summary`` and ``motion``, called directly and run by worker processes.

A ``[processors.NAME]`` table with ``builtin = "summary"`` (or ``"motion"``) is served here rather
than over HTTP: :meth:`BuiltinAnalyses.analyse` runs :func:`server.media.analysis.analyse_clip` in
a pool of worker processes of its own (``[clips] analysis_threads`` of them), so that decoding can
never starve ingest. When several built-ins get the same clip, it is decoded once. ``POST
/analyze/{kind}`` serves outside callers through the same method, so both give the same answers.
Nothing here goes through the server's own port, so a stop that has closed the listener still
analyses every last clip.

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
with an error and the workers are started again; the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

from server.errors import ClipUnreadable
from server.settings import Settings

# Nice value of the analysis workers: below the event loop, which then wins a contended core, yet
# not the lowest, so that analyses still get a share of a box busy with other work.
WORKER_NICENESS = 10
# What the fork server loads for the workers it forks.
WORKER_MODULES = ["server.live.builtins", "server.media.analysis"]
WORKER_DIED = (
    "the analysis worker process ended before answering (a clip may have crashed the decoder); "
    "it has been restarted"
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
        self._workers = settings.clips.analysis_threads
        # Workers are forked from multiprocessing's fork server, a process that has PyAV loaded
        # already (forking this process, with its threads and event loop, would not be safe).
        # They start with the first analysis, so a server that has none to do spends nothing on
        # them and a stop never waits for one to start.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(WORKER_MODULES)
        if any(processor.builtin for processor in settings.processors.values()):
            forkserver.ensure_running()  # it loads PyAV while the server starts
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._workers, mp_context=self._context, initializer=_start_worker
        )

    async def analyse(self, source: bytes | Path, kinds: Sequence[str]) -> dict[str, Any]:
        """``{kind: answer}`` for a clip (bytes) or a checked video file; ClipUnreadable if the
        source does not decode."""
        job = functools.partial(_analyse_in_worker, source, list(kinds), self._max_pixels)
        executor = self._executor
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, job)
        except BrokenProcessPool:
            if executor is self._executor:  # the first analysis to notice starts new workers
                self._executor = self._start()
                executor.shutdown(wait=False)
            raise ClipUnreadable(WORKER_DIED) from None

    async def close(self) -> None:
        """Wait for the analyses still running, then end the workers."""
        await asyncio.to_thread(self._executor.shutdown, True)
