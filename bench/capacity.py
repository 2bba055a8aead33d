"""Live capacity (issue 11): how many paced cameras framehub analyses in full, and what past that.

framehub runs with the shipped settings (``[clips]`` and ``[frames]`` defaults, the two built-in
processors of ``settings.toml``) in a process of its own; the cameras run in another,
``bench/_capacity_cameras.py`` (one event loop), so neither the server nor the load shares a GIL
with anything. Each camera sends the ingest benchmark's frames (640x480 JPEGs of the demo
pattern, 22.6 KB on average) at 30 fps, one ``process`` call at a time, and waits for each ack.

The load goes up in steps of cameras (:data:`STEPS`), each on the same server once it is idle
again: ``WARM_UP`` seconds, then a window of ``ctx.duration`` seconds, then a tail in which the
cameras wait until every acked frame has been accounted for. Per step the rows give the frames
per second analysed (frames inside results, every processor answering, that arrived in the
window) against those sent, the frames lost (dropped, as results report, or refused, or never
returned) against those acked, the result latency (send of a clip's last frame to its result),
the cores used by the server (and by its main process alone), by the cameras and by everything
else on the machine, the frames analysed per core the analysis workers got (they run at nice 5,
so what they analyse is what the others leave them), and the server's resident memory after
the step, its main process alone and with the processes below it (the analysis workers and
their fork server, pages they share counted in each).

A step is kept up when every frame came back inside a result with nothing dropped, refused or
failed, the cameras held their pace (a server slow to ack holds a camera back) and so did the
results: frames analysed in the window at least :data:`MIN_PACE` of those sent. A server that
falls behind drops frames only once a session's queue is full (``[frames] queue_size``, about 2 s
at 30 fps), which a 10 s window may not reach; a backlog growing meanwhile shows in the results'
pace, and the latency rows tell how far behind they were. Targets: at least
:data:`MIN_CAMERAS` cameras kept up, and past capacity a plateau: at twice the capacity the frames
analysed per second stay at least :data:`MIN_PLATEAU` of the figure at capacity.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    MB,
    PROJECT_ROOT,
    BenchContext,
    BenchError,
    Row,
    Server,
    memory_use,
    start_framehub,
)
from bench.ingest import BUILT_IN_PROCESSORS, make_frames, tree_rss, wait_idle

BENCHMARK = "capacity"
FPS = 30.0
STEPS = (16, 32, 48, 64, 96)
QUICK_STEPS = (16, 48, 96)
WARM_UP = 2.0
# Long enough for the last partial clip ([clips] max_wait, 2 s) and a backlog behind it.
TAIL = 10.0
# Time for the cameras' process to connect everyone, on top of warm-up, window and tail.
CAMERAS_SLACK = 30.0
# Targets of issue 11.
MIN_CAMERAS = 48
MIN_PLATEAU = 0.9
# Cameras that send below this share of their pace, or results that come back below this share
# of the frames sent, are not kept up.
MIN_PACE = 0.95


@dataclass(frozen=True, slots=True)
class Step:
    """What the cameras' process reported for one number of cameras."""

    cameras: int
    seconds: float
    sent: int
    acked: int
    refused: int
    dropped: int
    frames_in_results: int
    failed_frames: int
    missing: int
    sent_in_window: int
    analysed_in_window: int
    latencies: list[float]
    cpu: dict[str, float]
    # Resident memory of the server at the end of the step: its main process, and with the
    # processes below it (the fork server and the analysis workers).
    rss: int = 0
    tree_rss: int = 0

    @property
    def lost(self) -> int:
        """Frames refused, dropped, analysed with an error or never returned."""
        return self.refused + self.dropped + self.failed_frames + self.missing

    @property
    def analysed_fps(self) -> float:
        """Frames per second that came back inside results in the window."""
        return self.analysed_in_window / self.seconds

    @property
    def sent_fps(self) -> float:
        """Frames per second the cameras sent in the window."""
        return self.sent_in_window / self.seconds

    def latency(self, percent: int) -> float:
        """A percentile of the result latency in seconds (infinite without any result)."""
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("inf")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[percent - 1]

    @property
    def kept_up(self) -> bool:
        """Nothing lost, and cameras and results at their pace (see the module docstring)."""
        return (
            self.lost == 0
            and self.sent_fps >= MIN_PACE * self.cameras * FPS
            and self.analysed_fps >= MIN_PACE * self.sent_fps
        )

    @property
    def analysed_per_worker_core(self) -> float:
        """Frames per second analysed per core the analysis workers (and their fork server) used:
        what the server analyses depends on what the other processes leave to its workers."""
        workers = self.cores("server") - self.cores("main")
        return self.analysed_fps / workers if workers > 0 else 0.0

    def cores(self, what: str) -> float:
        """Cores used in the window: ``server`` (with its analysis workers), ``main`` (its main
        process alone), ``cameras`` or ``other``."""
        if what == "other":
            used = self.cpu["machine"] - self.cpu["server"] - self.cpu["cameras"]
            return max(0.0, used) / self.seconds
        return self.cpu[what] / self.seconds


def run(ctx: BenchContext) -> list[Row]:
    """Every step of cameras against one framehub, then the capacity and plateau rows."""
    folder = ctx.tmp / "frames"
    folder.mkdir()
    for index, frame in enumerate(make_frames()):
        (folder / f"frame-{index:03d}.jpg").write_bytes(frame)
    steps = []
    with start_framehub(ctx, "framehub-capacity", BUILT_IN_PROCESSORS) as server:
        for cameras in QUICK_STEPS if ctx.quick else STEPS:
            wait_idle(server.pid)
            steps.append(run_step(ctx, server, folder, cameras))
    rows = [row for step in steps for row in step_rows(step)]
    return rows + summary_rows(steps)


def run_step(ctx: BenchContext, server: Server, frames: Path, cameras: int) -> Step:
    """One step: ``cameras`` paced cameras in their own process, as ``bench._capacity_cameras``."""
    argv = [str(ctx.python), "-m", "bench._capacity_cameras", server.url().rstrip("/")]
    argv += ["--frames", str(frames), "--cameras", str(cameras), "--server-pid", str(server.pid)]
    argv += ["--fps", f"{FPS:g}", "--warm-up", f"{WARM_UP:g}", "--seconds", f"{ctx.duration:g}"]
    argv += ["--tail", f"{TAIL:g}"]
    timeout = WARM_UP + ctx.duration + TAIL + CAMERAS_SLACK
    try:
        done = subprocess.run(
            argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{cameras} cameras did not finish within {timeout:g} s") from None
    lines = done.stdout.strip().splitlines()
    report: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0 or "error" in report or not report:
        reason = report.get("error") or done.stderr.strip()[-2000:]
        raise BenchError(f"{cameras} cameras failed (status {done.returncode}): {reason}")
    return Step(**report, rss=memory_use(server.pid).rss, tree_rss=tree_rss(server.pid))


def step_rows(step: Step) -> list[Row]:
    """The rows of one step."""
    prefix = f"{step.cameras} cameras x {FPS:g} fps"
    state = "kept up" if step.kept_up else "behind"
    return [
        Row(
            BENCHMARK,
            f"{prefix}: frames/s analysed vs sent ({state})",
            step.analysed_fps,
            "frames/s",
            reference=step.sent_fps,
            ratio=step.analysed_fps / step.sent_fps if step.sent_fps else None,
        ),
        Row(
            BENCHMARK,
            f"{prefix}: frames lost vs acked (dropped {step.dropped}, refused {step.refused}, "
            f"failed {step.failed_frames}, not returned {step.missing})",
            step.lost,
            "frames",
            reference=step.acked,
            ratio=step.lost / step.acked if step.acked else None,
        ),
        Row(
            BENCHMARK,
            f"{prefix}: result latency p90 (p50 {step.latency(50) * 1e3:,.0f} ms)",
            step.latency(90) * 1e3,
            "ms",
        ),
        Row(
            BENCHMARK,
            f"{prefix}: server CPU vs cameras' process CPU (server's main process "
            f"{step.cores('main'):.2f}, other processes {step.cores('other'):.2f} of "
            f"{os.cpu_count()})",
            step.cores("server"),
            "cores",
            reference=step.cores("cameras"),
        ),
        Row(
            BENCHMARK,
            f"{prefix}: frames/s analysed per core the analysis workers used (those left to them "
            "by the main process, the cameras and other processes)",
            step.analysed_per_worker_core,
            "frames/s",
        ),
        Row(
            BENCHMARK,
            f"{prefix}: server RSS after the step, main process vs with the analysis workers and "
            "their fork server",
            step.rss / MB,
            "MB",
            reference=step.tree_rss / MB,
        ),
    ]


def summary_rows(steps: list[Step]) -> list[Row]:
    """Capacity (the most cameras up to which every step kept up) and the plateau past it."""
    capacity: Step | None = None
    for step in steps:
        if not step.kept_up:
            break
        capacity = step
    rows = [
        Row(
            BENCHMARK,
            f"cameras kept up at {FPS:g} fps (every frame back in a result at the pace sent, "
            "nothing dropped), shipped settings",
            capacity.cameras if capacity else 0,
            "cameras",
            target=f">= {MIN_CAMERAS}",
            passed=capacity is not None and capacity.cameras >= MIN_CAMERAS,
        )
    ]
    beyond = [step for step in steps if capacity is None or step.cameras > capacity.cameras]
    if capacity is None or not beyond:
        return rows
    # Twice the capacity, or the most cameras there were a step for.
    past = next((s for s in beyond if s.cameras >= 2 * capacity.cameras), beyond[-1])
    ratio = past.analysed_fps / capacity.analysed_fps
    times = past.cameras / capacity.cameras
    return [
        *rows,
        Row(
            BENCHMARK,
            f"frames/s analysed at {times:.1f}x capacity ({past.cameras} cameras) vs at "
            f"capacity ({capacity.cameras})",
            past.analysed_fps,
            "frames/s",
            reference=capacity.analysed_fps,
            ratio=ratio,
            target=f">= {MIN_PLATEAU:g}x",
            passed=ratio >= MIN_PLATEAU if times >= 2 else None,
        ),
    ]
