"""Fuzz target: the upload probe, :func:`server.media.probe.probe_video`, on a mutation corpus.

The seeds are small videos written with PyAV, one per container and codec family the probe takes
(:func:`fuzz.seeds.videos`); the inputs are those videos as they are, then with bytes flipped,
ranges cut out or repeated and tails cut off (:func:`fuzz.engine.mutate`). Each is written to
``WORK/probe/upload`` and probed as ``POST /batch`` does, in a child process under ``[batch]
probe_timeout``.

The probe must answer a :class:`~server.media.probe.VideoInfo` that fits the file (every seed
must pass) or VideoRejected, within its timeout and a margin. VideoRejected also covers a child
that failed, and these are told apart: a Python exception in the child (the probe's own code let
an error through; the child is run again to get its traceback) is a finding, a child killed by a
signal (FFmpeg crashed, or the CPU limit) or stopped at the timeout is a note.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import time
from pathlib import Path

from fuzz.engine import Broken, Noted, Target
from fuzz.seeds import videos
from server.errors import VideoRejected
from server.media.probe import IMPORT_ROOT, MODULE, VideoInfo, probe_video
from server.settings import BatchSettings

BATCH = BatchSettings(probe_timeout=5.0, max_duration=600.0, max_pixels=1920 * 1080)
# Seconds past probe_timeout that probe_video may take to kill its child and answer.
MARGIN = 3.0
_CHILD_RAISED = "the probe ended with status"
_CHILD_KILLED = re.compile(r"the probe was stopped by (SIG\w+)")
_TIMED_OUT = "took longer than [batch] probe_timeout"
_TRACEBACK_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+)', re.MULTILINE)


class Probes:
    """Probes each input as ``POST /batch`` does and tells its outcome apart."""

    def __init__(self, work: Path) -> None:
        self.work = work
        folder = work / "probe"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = (folder / "upload").absolute()
        self.loop = asyncio.new_event_loop()
        self._seeds: set[bytes] = set()

    def seeds(self) -> list[bytes]:
        """The PyAV-made videos."""
        made = videos(self.work / "videos")
        self._seeds = set(made)
        return made

    def check(self, data: bytes) -> None:
        """Probe ``data``; see the module docstring for what must hold."""
        self.path.write_bytes(data)
        started = time.monotonic()
        try:
            info = self.loop.run_until_complete(probe_video(self.path, BATCH))
        except VideoRejected as exc:
            self._check_time(started)
            if data in self._seeds:
                raise Broken(f"a valid video was refused: {exc}") from None
            problem = self._failed_child(str(exc))
            if problem is not None:
                raise problem from None
            raise
        self._check_time(started)
        _check_info(info, len(data))

    @staticmethod
    def _check_time(started: float) -> None:
        elapsed = time.monotonic() - started
        if elapsed > BATCH.probe_timeout + MARGIN:
            raise Broken(
                f"probe_video answered after {elapsed:.1f} s, past probe_timeout "
                f"({BATCH.probe_timeout:g} s) and a {MARGIN:g} s margin"
            )

    def _failed_child(self, message: str) -> Exception | None:
        """What a refusal that tells of a failed child means (see the module docstring)."""
        killed = _CHILD_KILLED.search(message)
        if killed is not None:
            return Noted(f"the probe's child was killed by {killed[1]} (refused: {message})")
        if _TIMED_OUT in message:
            return Noted(f"the probe's child was stopped at probe_timeout (refused: {message})")
        if _CHILD_RAISED in message:
            stderr = self._child_stderr()
            return Broken(f"the probe's child raised {_summary(stderr)}\n\n{stderr}")
        return None

    def _child_stderr(self) -> str:
        """What the child prints on stderr for the current upload (probe_video discards it)."""
        command = [sys.executable, "-m", MODULE, str(self.path)]
        command += ["--max-pixels", str(BATCH.max_pixels)]
        command += ["--max-duration", repr(BATCH.max_duration)]
        command += ["--cpu-seconds", str(math.ceil(BATCH.probe_timeout) + 1)]
        try:
            done = subprocess.run(
                command,
                cwd=IMPORT_ROOT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=BATCH.probe_timeout + MARGIN,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "(the child hung when run again)"
        return done.stderr.decode(errors="replace")


def _summary(stderr: str) -> str:
    """``ErrorType at file:line`` from a child's traceback, the line the last in framehub's code."""
    lines = [line for line in stderr.strip().splitlines() if line and not line[0].isspace()]
    error = lines[-1].split(":", 1)[0] if lines else "nothing on stderr"
    frames = [m for m in _TRACEBACK_FRAME.finditer(stderr) if "/server/" in m["file"]]
    if not frames:
        return error
    where = frames[-1]
    return f"{error} at server/{where['file'].rsplit('/server/', 1)[-1]}:{where['line']}"


def _check_info(info: VideoInfo, size: int) -> None:
    if info.bytes != size:
        raise Broken(f"the probe says {info.bytes} bytes of a {size}-byte file")
    if info.width <= 0 or info.height <= 0 or info.width * info.height > BATCH.max_pixels:
        raise Broken(f"the probe passed frames of {info.width}x{info.height}")
    if info.frames <= 0:
        raise Broken(f"the probe passed a video of {info.frames} frames")
    if not (math.isfinite(info.duration) and 0 <= info.duration <= BATCH.max_duration):
        raise Broken(f"the probe passed a video of {info.duration} s")


def target(work: Path) -> Target:
    """The probe, on the mutation corpus, as a fuzz target."""
    probes = Probes(work)
    return Target(
        check=probes.check,
        seeds=probes.seeds,
        refusals=(VideoRejected,),
        slow_seconds=BATCH.probe_timeout + MARGIN,
        hang_seconds=2 * (BATCH.probe_timeout + MARGIN) + 5.0,
        guided=False,
    )
