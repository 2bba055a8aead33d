"""Live cameras: ``latest.jpg`` latency, MJPEG fan-out to 50 viewers, and what recording costs.

The frames are the 60 JPEGs of the 640x480 test pattern that ``bench/ingest.py`` sends (about
23 KB each); framehub serves the same frames as the repository ``bench`` too, for the references.
framehub runs as a subprocess on 127.0.0.1, the camera is a ``socketio.AsyncClient`` in this
process (websocket, session id from ``GET /get_session_id?camera=NAME``), and every wait and load
has a deadline.

1. Latency: the camera sends one frame at a time; after each ack, ``GET /live/NAME/latest.jpg``
   is timed until its body is read (one keep-alive ``ClientSession``), and must carry the acked
   frame's number in ``X-Frame-Number``. The reference is ``GET /bench/frames/I`` of the same
   frame, timed the same way right after, so that both figures see the same client and minutes.
   Rows: p50 (target at most 2 ms) and p90 against the reference, and how many answers were the
   acked frame.
2. Fan-out: the camera sends at 30 fps, each frame tagged with its serial number in a JPEG
   comment, to ``VIEWERS`` viewers of ``/live/NAME/video.mjpg``. The viewers run in a child process
   of their own (``bench/_live_viewers.py``, one event loop for all), so the load is three
   processes that never share a GIL: framehub, the viewers, and this one, which only paces the
   camera. Nothing is pinned: on 2 cores framehub can have one while the viewers and the camera
   share the other, and the rows say how many cores each used. A viewer counts the serials it
   got, so "frames sent during the window" and "frames received" need no shared clock. Rows: the
   fewest frames any viewer got out of those sent (target at least 95 %), and framehub's CPU per
   delivered frame against its CPU per ``GET /bench/video.jpg`` under wrk (the cursor cookie kept
   as ``bench/camera.py`` does), measured on the same server right after (target at most 0.5x).
3. Recording: two framehubs side by side, identical but for ``[recording] cameras = ["*"]``
   (into their temp repositories folder), shipped ``[clips]`` and ``[frames]`` defaults and no
   processors, each loaded as ``bench/ingest.py``'s throughput part loads its servers (``CLIENTS``
   connections, ``WINDOW`` frames in flight each), in alternating turns, each turn waiting until
   the other server is idle. Rows: acked frames/s with recording on against off (target at least
   0.8x), the share of frames the recorder wrote (it drops rather than slow ingest down), the
   servers' CPU, and how much CPU the rest of the machine took meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

import aiohttp

from bench._live_viewers import tag_frame
from bench.camera import COOKIE_SCRIPT, REPOSITORY, Load, warm_up_and_load
from bench.common import (
    PROJECT_ROOT,
    BenchContext,
    BenchError,
    Row,
    Server,
    Tables,
    cpu_seconds,
    http_get,
    start_framehub,
)
from bench.ingest import (
    CLIENTS,
    WINDOW,
    Connection,
    Counters,
    machine_cpu_seconds,
    make_frames,
    open_connection,
    throughput,
    wait_idle,
)

BENCHMARK = "live"
LATENCY_CAMERA = "bench-latency"
FAN_OUT_CAMERA = "bench-fan-out"
LATENCY_SAMPLES = 300
QUICK_LATENCY_SAMPLES = 100
LATENCY_WARM_UP = 20
HTTP_TIMEOUT = 5.0
LATENCY_TIMEOUT = 60.0
VIEWERS = 50
CAMERA_FPS = 30.0
FAN_OUT_WARM_UP = 1.0
# After the window the camera goes on a little, so its last frames reach every viewer.
FAN_OUT_TAIL = 0.5
VIEWERS_READY_TIMEOUT = 20.0
VIEWERS_STOP_TIMEOUT = 10.0
RECORDING_ROUNDS = 2
# Targets of the live cameras issue.
MAX_LATENCY_P50_MS = 2.0
MIN_FRAMES_RECEIVED = 0.95
MAX_CPU_RATIO = 0.5
MIN_RECORDING_RATIO = 0.8


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds from each ack to ``latest.jpg`` read, and to the same frame from the repository."""

    latest: list[float]
    reference: list[float]
    matched: int


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far by framehub, the viewers, this process and the whole machine."""

    seconds: float = 0.0
    server: float = 0.0
    viewers: float = 0.0
    camera: float = 0.0
    machine: float = 0.0

    @classmethod
    def take(cls, server_pid: int, viewers_pid: int) -> CpuSample:
        """The counters now."""
        return cls(
            seconds=time.perf_counter(),
            server=cpu_seconds(server_pid),
            viewers=cpu_seconds(viewers_pid),
            camera=time.process_time(),
            machine=machine_cpu_seconds(),
        )

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def cores(self, cpu: float) -> float:
        """``cpu`` seconds as cores used over the sample's seconds."""
        return cpu / self.seconds

    @property
    def other(self) -> float:
        """CPU seconds of every other process on the machine."""
        return max(0.0, self.machine - self.server - self.viewers - self.camera)


@dataclass(frozen=True, slots=True)
class FanOut:
    """One MJPEG window: frames sent, frames each viewer got of them, and the CPU meanwhile."""

    sent: int
    received: list[int]
    cpu: CpuSample

    @property
    def server_cpu_per_frame_us(self) -> float:
        """framehub's CPU time per frame delivered to a viewer, in microseconds."""
        return self.cpu.server / max(sum(self.received), 1) * 1e6


@dataclass(slots=True)
class Pacer:
    """Sends tagged frames at ``fps`` until cancelled; ``sent`` is the serial of the next one."""

    frames: list[bytes]
    fps: float
    sent: int = 0

    async def run(self, camera: Connection) -> None:
        """Send through ``camera``, each frame once the previous one is acked and its time came."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            serial = self.sent
            self.sent += 1
            await camera.process(tag_frame(self.frames[serial % len(self.frames)], serial))
            # Paced from the start, not from the last ack, so a late ack does not lower the rate.
            delay = start + self.sent / self.fps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


def run(ctx: BenchContext) -> list[Row]:
    """Latency and fan-out on one framehub with the video.jpg reference, then recording on/off."""
    frames = make_frames()
    repositories = ctx.tmp / "repositories"
    write_repository(repositories / REPOSITORY, frames)
    script = ctx.tmp / "cookie.lua"
    script.write_text(COOKIE_SCRIPT)
    tables: Tables = {
        "repositories": {"dir": repositories, "create_demo": False},
        "live": {"max_viewers": VIEWERS},
    }
    samples = QUICK_LATENCY_SAMPLES if ctx.quick else LATENCY_SAMPLES
    with start_framehub(ctx, "framehub", tables) as server:
        latency = asyncio.run(
            asyncio.wait_for(measure_latency(server, frames, samples), LATENCY_TIMEOUT)
        )
        wait_idle(server.pid)
        fan_out = asyncio.run(measure_fan_out(ctx, server, frames))
        wait_idle(server.pid)
        video_jpg = warm_up_and_load(ctx, server, script, "framehub video.jpg")
    off, on, recorded = measure_recording(ctx, frames)
    return [
        *latency_rows(latency),
        *fan_out_rows(fan_out, video_jpg),
        *recording_rows(off, on, recorded),
    ]


def write_repository(folder: Path, frames: list[bytes]) -> None:
    """The frames the camera sends, as a repository for the references."""
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        (folder / f"frame-{index}.jpg").write_bytes(frame)


async def timed_get(http: aiohttp.ClientSession, url: str) -> tuple[float, aiohttp.ClientResponse]:
    """Seconds until the whole body of ``GET url`` is read, and the (read) response."""
    started = time.perf_counter()
    async with http.get(url) as response:
        await response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise BenchError(f"GET {url} answered {response.status}")
    return elapsed, response


# --- latency ------------------------------------------------------------------------------------


async def measure_latency(server: Server, frames: list[bytes], count: int) -> Latency:
    """``count`` frames, one at a time: ack to ``latest.jpg`` read, and to the repository frame."""
    latest_url = server.url(f"/live/{LATENCY_CAMERA}/latest.jpg")
    latest: list[float] = []
    reference: list[float] = []
    matched = 0
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        camera = await open_connection(http, server, LATENCY_CAMERA)
        try:
            for index in range(LATENCY_WARM_UP + count):
                position = index % len(frames)
                ack = await camera.process(frames[position])
                served_in, response = await timed_get(http, latest_url)
                same_in, _ = await timed_get(http, server.url(f"/{REPOSITORY}/frames/{position}"))
                if index >= LATENCY_WARM_UP:
                    latest.append(served_in)
                    reference.append(same_in)
                    matched += response.headers.get("X-Frame-Number") == str(ack["frame"])
        finally:
            await camera.sio.disconnect()
    return Latency(latest, reference, matched)


def latency_rows(latency: Latency) -> list[Row]:
    """p50 and p90 of ``latest.jpg`` against the repository frame, and the frames it served."""
    p50, p90 = percentiles_ms(latency.latest)
    reference_p50, reference_p90 = percentiles_ms(latency.reference)
    count = len(latency.latest)
    return [
        Row(
            BENCHMARK,
            "latest.jpg latency p50, ack to body read (vs /bench/frames/N)",
            p50,
            "ms",
            reference=reference_p50,
            ratio=p50 / reference_p50,
            target=f"<= {MAX_LATENCY_P50_MS:g} ms",
            passed=p50 <= MAX_LATENCY_P50_MS,
        ),
        Row(
            BENCHMARK,
            "latest.jpg latency p90 (vs /bench/frames/N)",
            p90,
            "ms",
            reference=reference_p90,
            ratio=p90 / reference_p90,
        ),
        Row(
            BENCHMARK,
            "latest.jpg answers with the acked frame (X-Frame-Number)",
            latency.matched,
            "answers",
            reference=count,
            target=f"all {count}",
            passed=latency.matched == count,
        ),
    ]


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    """The median and 90th percentile of ``seconds``, in milliseconds."""
    deciles = statistics.quantiles(seconds, n=10, method="inclusive")
    return statistics.median(seconds) * 1e3, deciles[8] * 1e3


# --- fan-out ------------------------------------------------------------------------------------


async def measure_fan_out(ctx: BenchContext, server: Server, frames: list[bytes]) -> FanOut:
    """A 30 fps camera watched by ``VIEWERS`` viewers in a child process, for ``ctx.duration``."""
    pacer = Pacer(frames, CAMERA_FPS)
    limit = VIEWERS_READY_TIMEOUT + FAN_OUT_WARM_UP + ctx.duration + FAN_OUT_TAIL
    limit += VIEWERS_STOP_TIMEOUT
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        camera = await open_connection(http, server, FAN_OUT_CAMERA)
        # A first frame, untagged, so that the camera is online before the viewers come.
        await camera.process(frames[0])
        sending = asyncio.create_task(pacer.run(camera))
        try:
            url = server.url(f"/live/{FAN_OUT_CAMERA}/video.mjpg")
            with viewers_log(ctx) as log:
                viewers = await asyncio.create_subprocess_exec(
                    str(ctx.python),
                    "-m",
                    "bench._live_viewers",
                    url,
                    f"--viewers={VIEWERS}",
                    f"--timeout={limit:g}",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    cwd=PROJECT_ROOT,
                )
            try:
                return await _watch(ctx, server, viewers, pacer, sending)
            finally:
                if viewers.returncode is None:
                    viewers.kill()
                    await viewers.wait()
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            await camera.sio.disconnect()


@contextlib.contextmanager
def viewers_log(ctx: BenchContext) -> Iterator[int]:
    """The file descriptor of the viewers' log, for their stderr."""
    with (ctx.tmp / "viewers.log").open("wb") as log:
        yield log.fileno()


async def _watch(
    ctx: BenchContext,
    server: Server,
    viewers: asyncio.subprocess.Process,
    pacer: Pacer,
    sending: asyncio.Task[None],
) -> FanOut:
    assert viewers.stdout is not None
    try:
        ready = await asyncio.wait_for(viewers.stdout.readline(), VIEWERS_READY_TIMEOUT)
    except TimeoutError:
        raise BenchError(
            f"{VIEWERS} MJPEG viewers not streaming within {VIEWERS_READY_TIMEOUT:g} s"
        ) from None
    if ready.strip() != b"ready":
        raise BenchError(f"the MJPEG viewers failed: {_viewers_error(ctx)}")
    await asyncio.sleep(FAN_OUT_WARM_UP)
    _check_sending(sending)
    start, first = CpuSample.take(server.pid, viewers.pid), pacer.sent
    await asyncio.sleep(ctx.duration)
    end, last = CpuSample.take(server.pid, viewers.pid), pacer.sent - 1
    await asyncio.sleep(FAN_OUT_TAIL)
    _check_sending(sending)
    try:
        answer, _ = await asyncio.wait_for(
            viewers.communicate(f"{first} {last}\n".encode()), VIEWERS_STOP_TIMEOUT
        )
    except TimeoutError:
        raise BenchError(
            f"the MJPEG viewers did not stop within {VIEWERS_STOP_TIMEOUT:g} s"
        ) from None
    if viewers.returncode != 0:
        raise BenchError(f"the MJPEG viewers failed: {_viewers_error(ctx)}")
    counts = json.loads(answer)
    return FanOut(last - first + 1, counts["received"], end - start)


def _viewers_error(ctx: BenchContext) -> str:
    return (ctx.tmp / "viewers.log").read_text(errors="replace").strip() or "(no message)"


def _check_sending(sending: asyncio.Task[None]) -> None:
    if sending.done():
        sending.result()  # the camera's own error: a refused frame, a timeout
        raise BenchError("the camera stopped sending before the end of the run")


def fan_out_rows(fan_out: FanOut, video_jpg: Load) -> list[Row]:
    """Frames the worst viewer got, CPU per delivered frame against video.jpg, and the cores."""
    worst = min(fan_out.received)
    share = worst / fan_out.sent
    per_frame = fan_out.server_cpu_per_frame_us
    per_request = video_jpg.cpu_per_request_us
    cpu = fan_out.cpu
    return [
        Row(
            BENCHMARK,
            f"MJPEG frames the worst of {VIEWERS} viewers got vs camera sent",
            worst,
            "frames",
            reference=fan_out.sent,
            ratio=share,
            target=f">= {MIN_FRAMES_RECEIVED:g}x",
            passed=share >= MIN_FRAMES_RECEIVED,
        ),
        Row(
            BENCHMARK,
            "camera frame rate achieved vs asked",
            cpu.cores(fan_out.sent),
            "fps",
            reference=CAMERA_FPS,
            ratio=cpu.cores(fan_out.sent) / CAMERA_FPS,
        ),
        Row(
            BENCHMARK,
            "server CPU per MJPEG frame delivered vs per video.jpg (wrk)",
            per_frame,
            "us",
            reference=per_request,
            ratio=per_frame / per_request,
            target=f"<= {MAX_CPU_RATIO:g}x",
            passed=per_frame / per_request <= MAX_CPU_RATIO,
        ),
        Row(BENCHMARK, "cores during fan-out: framehub", cpu.cores(cpu.server), "cores"),
        Row(
            BENCHMARK,
            f"cores during fan-out: {VIEWERS} viewers (own process)",
            cpu.cores(cpu.viewers),
            "cores",
        ),
        Row(
            BENCHMARK, "cores during fan-out: camera (this process)", cpu.cores(cpu.camera), "cores"
        ),
        Row(BENCHMARK, "cores during fan-out: other processes", cpu.cores(cpu.other), "cores"),
    ]


# --- recording ----------------------------------------------------------------------------------


def measure_recording(
    ctx: BenchContext, frames: list[bytes]
) -> tuple[Counters, Counters, tuple[int, int]]:
    """Ingest with recording off and on, in turns: (off, on, (frames recorded, dropped))."""
    totals = {"off": Counters(), "on": Counters()}
    with (
        start_framehub(ctx, "recording-off", recording_tables(ctx, "recording-off")) as off,
        start_framehub(
            ctx,
            "recording-on",
            {**recording_tables(ctx, "recording-on"), "recording": {"cameras": ["*"]}},
        ) as on,
    ):
        servers = {"off": off, "on": on}
        for _round in range(RECORDING_ROUNDS):
            for name, server in servers.items():
                for other in servers.values():
                    wait_idle(other.pid)
                totals[name] += asyncio.run(
                    throughput(server, frames, ctx.duration / RECORDING_ROUNDS)
                )
        wait_idle(on.pid)
        recorded = metric_total(on, "framehub_recorded_frames_total")
        dropped = metric_total(on, "framehub_recording_dropped_total")
    if not recorded:
        raise BenchError("recording on recorded no frame: the comparison measured nothing")
    return totals["off"], totals["on"], (recorded, dropped)


def recording_tables(ctx: BenchContext, name: str) -> Tables:
    """Shipped defaults, no processors, repositories in the server's temp folder."""
    return {"repositories": {"dir": ctx.tmp / name / "repositories", "create_demo": False}}


def metric_total(server: Server, name: str) -> int:
    """The sum over labels of metric ``name`` in the server's ``/metrics``."""
    status, _, body = http_get(server.url("/metrics"))
    if status != 200:
        raise BenchError(f"GET /metrics answered {status}")
    return sum(
        int(float(line.rpartition(" ")[2]))
        for line in body.decode().splitlines()
        if line.startswith((f"{name}{{", f"{name} "))
    )


def recording_rows(off: Counters, on: Counters, recorded: tuple[int, int]) -> list[Row]:
    """Acks with recording on against off, the share recorded, and the servers' CPU."""
    fps_on, fps_off = on.per_second(on.acked), off.per_second(off.acked)
    written, dropped = recorded
    return [
        Row(
            BENCHMARK,
            f"acked frames/s, recording on vs off ({CLIENTS} clients x {WINDOW} in flight)",
            fps_on,
            "frames/s",
            reference=fps_off,
            ratio=fps_on / fps_off,
            target=f">= {MIN_RECORDING_RATIO:g}x",
            passed=fps_on / fps_off >= MIN_RECORDING_RATIO,
        ),
        Row(
            BENCHMARK,
            "frames the recorder wrote vs offered (the rest dropped, never refused)",
            written,
            "frames",
            reference=written + dropped,
            ratio=written / (written + dropped),
        ),
        Row(
            BENCHMARK,
            "server CPU under load, recording on vs off",
            on.per_second(on.server_cpu),
            "cores",
            reference=off.per_second(off.server_cpu),
        ),
        Row(
            BENCHMARK,
            f"other processes' CPU (of {os.cpu_count()}), recording on vs off turns",
            on.per_second(on.other_cpu),
            "cores",
            reference=off.per_second(off.other_cpu),
        ),
    ]
