"""Live ingest's speed and memory (issue 3): frame throughput, result latency, memory per session.

The frames are the 640x480 test pattern saved as JPEG at a quality that makes them about 23 KB, a
typical camera frame. Every server runs as a subprocess on 127.0.0.1; the load generator is this
process, with one ``socketio.AsyncClient`` per connection (websocket transport, session id from
``GET /get_session_id``), so clients and server never share a GIL. Every wait has a deadline.

1. Throughput: ``CLIENTS`` connections each keep ``WINDOW`` ``process`` calls in flight (a new
   frame as soon as an ack comes back) against framehub (shipped ``[clips]`` and ``[frames]``
   defaults: 30-frame mjpeg clips, both built-in processors as in ``settings.toml``) and
   against ``bench/_bare_socketio.py``, the same aiohttp + python-socketio stack with a ``process``
   handler that only counts and acks. Both servers run side by side and are measured in turns,
   ``ROUNDS`` times ``ctx.duration / ROUNDS`` seconds each after ``WARM_UP`` seconds, so that load
   from other processes on the machine falls on both alike; each turn waits until the other server
   is idle. Rows: acked frames per second against the bare server (target at least 0.8x, issue
   11), the frames per second that came back in results, and the CPU the servers (framehub with
   its analysis worker processes), the load generator and everything else on the machine used
   meanwhile.
2. Latency: one client sends clips of 30 frames one call at a time to framehub whose only processor
   is an instant API (an aiohttp app in this process answering ``{}`` once it has read the clip);
   latency is the time from the ack of a clip's last frame to its ``result`` event. After each
   result the same frames are encoded with ``encode_clip`` in this process, so both medians come
   from the same minutes. Rows: the p50 against that encode time plus 15 ms (the target), for mjpeg
   and h264.
3. Memory: framehub's VmRSS idle (after one warm-up session; also with the processes below it,
   the analysis workers and their fork server, which that session's clip started), with
   ``SESSIONS`` connected idle sessions (each sent one frame and got its clip's result, so its
   queue and encoder task exist and its frame buffer is empty again), and after they left, once
   python-engineio has let go of their sockets (it keeps each closed one until its ping task
   wakes, up to ``ping_interval`` later); then the same again with another ``SESSIONS``. Rows:
   RSS per idle session (target at most 110 kB, issue 11) and the growth of the level after leaving from round 1 to round 2 (target: at most
   ``MAX_RSS_DRIFT``). The quick mode does not wait for engineio.
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aiohttp import web

from bench.common import (
    LOOPBACK,
    MB,
    PROJECT_ROOT,
    BenchContext,
    BenchError,
    Row,
    Server,
    Tables,
    free_port,
    memory_use,
    start_framehub,
    start_process,
)
from server.media.clips import Codec, encode_clip
from server.media.images import demo_frame
from server.settings import ClipSettings, SessionSettings

BENCHMARK = "ingest"
KB = 1000
# At this quality the test pattern is about 23 KB, like a 640x480 camera JPEG.
JPEG_QUALITY = 97
DISTINCT_FRAMES = 60
CLIENTS = 8
WINDOW = 4
ROUNDS = 2
WARM_UP = 2.0
CALL_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
RESULT_TIMEOUT = 30.0
STOP_TIMEOUT = CALL_TIMEOUT + 5.0
# A server counts as idle (its last clips analysed) below this share of a core.
IDLE_CORES = 0.05
IDLE_POLL = 0.25
IDLE_TIMEOUT = 20.0
CODECS: tuple[Codec, ...] = ("mjpeg", "h264")
LATENCY_CLIPS = 30
QUICK_LATENCY_CLIPS = 10
LATENCY_WARM_UP_CLIPS = 2
SESSIONS = 100
CONNECTING_AT_ONCE = 10
# Time for the server to close the sessions of clients that left.
SETTLE = 1.5
# python-engineio's default ping_interval, which framehub keeps: a closed socket stays referenced
# by its pending ping task for up to this long.
ENGINEIO_PING_INTERVAL = 25.0
# Targets of issue 3; the ingest ratio of issue 11.
MIN_INGEST_RATIO = 0.8
LATENCY_ALLOWANCE_MS = 15.0
MAX_SESSION_BYTES = 110 * KB  # issue 11: "as today"; issue 3 asked for under 1 MB
MAX_RSS_DRIFT = 5 * MB
# The shipped settings.toml's processors: the two built-in analyses.
BUILT_IN_PROCESSORS: Tables = {
    "repositories": {"create_demo": False},
    "processors.summary": {"builtin": "summary"},
    "processors.motion": {"builtin": "motion"},
}
SESSION_ID_NAME = SessionSettings().session_id_name


@dataclass(slots=True)
class Tally:
    """What the clients of one run got back."""

    acked: int = 0
    frames_in_results: int = 0


@dataclass(frozen=True, slots=True)
class Counters:
    """What a throughput run counts: at an instant (cumulative), or over windows (differences)."""

    seconds: float = 0.0
    acked: int = 0
    frames_in_results: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_cpu: float = 0.0

    @classmethod
    def take(cls, pid: int, connections: list[Connection]) -> Counters:
        """The counters now: clients' tallies, CPU seconds of the server, of this process, of all."""
        return cls(
            seconds=time.perf_counter(),
            acked=sum(c.tally.acked for c in connections),
            frames_in_results=sum(c.tally.frames_in_results for c in connections),
            server_cpu=tree_cpu_seconds(pid),
            client_cpu=time.process_time(),
            machine_cpu=machine_cpu_seconds(),
        )

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def per_second(self, amount: float) -> float:
        """``amount`` (frames or CPU seconds) per second of measurement."""
        return amount / self.seconds

    @property
    def other_cpu(self) -> float:
        """CPU seconds of everything on the machine but the server and the load generator."""
        return max(0.0, self.machine_cpu - self.server_cpu - self.client_cpu)


@dataclass(frozen=True, slots=True)
class Latency:
    """Result latency of one codec, and the encode time of the same clip in this process."""

    codec: Codec
    p50_ms: float
    p90_ms: float
    encode_ms: float


@dataclass(slots=True)
class MemoryLevels:
    """framehub's VmRSS in bytes: idle, then per round with sessions and once they have left."""

    linger: float
    idle: int = 0
    # The same with the processes below framehub: the analysis workers and their fork server.
    idle_tree: int = 0
    connected: list[int] = field(default_factory=list)
    settled: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Connection:
    """One Socket.IO client and what came back to it; results are queued with their arrival time."""

    sio: socketio.AsyncClient
    tally: Tally = field(default_factory=Tally)
    results: asyncio.Queue[tuple[float, dict[str, Any]]] = field(default_factory=asyncio.Queue)

    async def on_result(self, message: dict[str, Any]) -> None:
        arrived = time.perf_counter()
        clip = message.get("clip", {})
        self.tally.frames_in_results += int(clip.get("frames", 0))
        self.results.put_nowait((arrived, message))

    async def process(self, frame: bytes) -> dict[str, Any]:
        """Send one frame and count its ack; every frame here is valid, so a refusal is an error."""
        ack: dict[str, Any] = await self.sio.call("process", frame, timeout=CALL_TIMEOUT)
        if not ack.get("ok"):
            raise BenchError(f"the server refused a frame: {ack}")
        self.tally.acked += 1
        return ack


def run(ctx: BenchContext) -> list[Row]:
    """Throughput against the bare server, latency per codec, then memory per session."""
    frames = make_frames()
    framehub, bare = measure_throughput(ctx, frames)
    mean_kb = statistics.mean(len(frame) for frame in frames) / KB
    rows = throughput_rows(framehub, bare, mean_kb)
    for codec in CODECS:
        rows += latency_rows(measure_latency(ctx, codec, frames))
    rows += memory_rows(measure_memory(ctx, frames[0]))
    return rows


def make_frames() -> list[bytes]:
    """``DISTINCT_FRAMES`` JPEG frames of the moving test pattern, about 23 KB each."""
    frames = []
    for index in range(DISTINCT_FRAMES):
        output = io.BytesIO()
        demo_frame(index, DISTINCT_FRAMES).save(output, format="JPEG", quality=JPEG_QUALITY)
        frames.append(output.getvalue())
    return frames


def throughput_rows(framehub: Counters, bare: Counters, mean_kb: float) -> list[Row]:
    """The throughput rows: framehub against the bare server, and where the CPU went."""
    fps = framehub.per_second(framehub.acked)
    bare_fps = bare.per_second(bare.acked)
    analysed = framehub.per_second(framehub.frames_in_results)
    load = f"{CLIENTS} clients x {WINDOW} in flight, {mean_kb:.1f} KB JPEG"
    return [
        Row(
            BENCHMARK,
            f"acked frames/s vs bare python-socketio ({load})",
            fps,
            "frames/s",
            reference=bare_fps,
            ratio=fps / bare_fps,
            target=f">= {MIN_INGEST_RATIO:g}x",
            passed=fps / bare_fps >= MIN_INGEST_RATIO,
        ),
        Row(
            BENCHMARK,
            "frames/s in results vs acked (mjpeg clips, built-in processors)",
            analysed,
            "frames/s",
            reference=fps,
            ratio=analysed / fps,
        ),
        Row(
            BENCHMARK,
            "server CPU under load, framehub vs bare",
            framehub.per_second(framehub.server_cpu),
            "cores",
            reference=bare.per_second(bare.server_cpu),
        ),
        Row(
            BENCHMARK,
            "load generator CPU, framehub run vs bare run",
            framehub.per_second(framehub.client_cpu),
            "cores",
            reference=bare.per_second(bare.client_cpu),
        ),
        Row(
            BENCHMARK,
            f"other processes' CPU (of {os.cpu_count()}), framehub run vs bare run",
            framehub.per_second(framehub.other_cpu),
            "cores",
            reference=bare.per_second(bare.other_cpu),
        ),
    ]


def latency_rows(latency: Latency) -> list[Row]:
    """The latency rows of one codec: p50 against encode time plus the allowance, and p90."""
    limit = latency.encode_ms + LATENCY_ALLOWANCE_MS
    clips = ClipSettings()
    return [
        Row(
            BENCHMARK,
            f"result latency p50, {latency.codec} ({clips.frames}-frame clip, instant API)",
            latency.p50_ms,
            "ms",
            reference=limit,
            ratio=latency.p50_ms / limit,
            target=f"<= encode {latency.encode_ms:.1f} + {LATENCY_ALLOWANCE_MS:g} ms",
            passed=latency.p50_ms <= limit,
        ),
        Row(
            BENCHMARK,
            f"result latency p90, {latency.codec}",
            latency.p90_ms,
            "ms",
            reference=limit,
            ratio=latency.p90_ms / limit,
        ),
    ]


def memory_rows(levels: MemoryLevels) -> list[Row]:
    """The memory rows: idle level, cost per session, and round 2 against round 1."""
    per_session = (levels.connected[0] - levels.idle) / SESSIONS
    drift = levels.settled[1] - levels.settled[0]
    after = f"{levels.linger + SETTLE:g} s after {SESSIONS} sessions left"
    return [
        Row(
            BENCHMARK,
            "RSS idle (after one warm-up session), main process vs with the analysis workers and "
            "their fork server",
            levels.idle / MB,
            "MB",
            reference=levels.idle_tree / MB,
        ),
        Row(
            BENCHMARK,
            f"RSS per idle session ({SESSIONS} connected, each sent 1 frame, buffer empty)",
            per_session / KB,
            "kB",
            target=f"<= {MAX_SESSION_BYTES / KB:g} kB",
            passed=per_session <= MAX_SESSION_BYTES,
        ),
        Row(
            BENCHMARK,
            f"RSS with {SESSIONS} sessions, round 2 vs round 1",
            levels.connected[1] / MB,
            "MB",
            reference=levels.connected[0] / MB,
        ),
        Row(
            BENCHMARK,
            f"RSS {after}, round 2 vs round 1",
            levels.settled[1] / MB,
            "MB",
            reference=levels.settled[0] / MB,
        ),
        Row(
            BENCHMARK,
            f"RSS growth from round 1 to round 2, {after}",
            drift / MB,
            "MB",
            target=f"<= {MAX_RSS_DRIFT / MB:g} MB",
            passed=abs(drift) <= MAX_RSS_DRIFT,
        ),
    ]


# --- throughput ---------------------------------------------------------------------------------


def measure_throughput(ctx: BenchContext, frames: list[bytes]) -> tuple[Counters, Counters]:
    """framehub and the bare server, side by side, measured in turns: (framehub, bare)."""
    port = free_port()
    argv = [str(ctx.python), "-m", "bench._bare_socketio", "--port", str(port)]
    log = ctx.tmp / "bare" / "bare.log"
    totals = {"framehub": Counters(), "bare": Counters()}
    with (
        start_process(argv, port, log, cwd=PROJECT_ROOT) as bare,
        start_framehub(ctx, "framehub-throughput", BUILT_IN_PROCESSORS) as framehub,
    ):
        servers = {"framehub": framehub, "bare": bare}
        for _round in range(ROUNDS):
            for name, server in servers.items():
                for other in servers.values():
                    wait_idle(other.pid)
                window = ctx.duration / ROUNDS
                totals[name] += asyncio.run(throughput(server, frames, window))
    return totals["framehub"], totals["bare"]


async def throughput(server: Server, frames: list[bytes], duration: float) -> Counters:
    """Acks over ``duration`` seconds with ``CLIENTS`` connections, ``WINDOW`` calls in flight each."""
    stopping = False

    async def pusher(connection: Connection, first: int) -> None:
        index = first
        while not stopping:
            await connection.process(frames[index % len(frames)])
            index += WINDOW

    async with aiohttp.ClientSession() as http:
        connections = await asyncio.gather(*(open_connection(http, server) for _ in range(CLIENTS)))
        try:
            tasks = [
                asyncio.create_task(pusher(connection, offset))
                for connection in connections
                for offset in range(WINDOW)
            ]
            await asyncio.sleep(WARM_UP)
            _check_running(tasks)
            start = Counters.take(server.pid, connections)
            await asyncio.sleep(duration)
            end = Counters.take(server.pid, connections)
            _check_running(tasks)
            stopping = True
            await asyncio.wait_for(asyncio.gather(*tasks), STOP_TIMEOUT)
        finally:
            await asyncio.gather(*(c.sio.disconnect() for c in connections))
    return end - start


def _check_running(tasks: list[asyncio.Task[None]]) -> None:
    """Raise the error of the first pusher that stopped early (a timeout, a disconnect)."""
    for task in tasks:
        if task.done():
            task.result()
            raise BenchError("a load generator stopped before the end of the run")


def machine_cpu_seconds() -> float:
    """CPU time every process on the machine has used (all but idle and iowait), ``/proc/stat``."""
    first_line = Path("/proc/stat").read_text().partition("\n")[0]
    fields = [int(value) for value in first_line.split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _tree_stats(pid: int) -> list[list[str]]:
    """The ``/proc/PID/stat`` fields, from the process state on, of process ``pid`` and of every
    process below it: framehub's analysis workers are the children of its fork server, so
    grandchildren of framehub."""
    children: dict[str, list[str]] = {}
    stats: dict[str, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(fields[1], []).append(stat.parent.name)
        stats[stat.parent.name] = fields
    found, below = [], [str(pid)]
    while below:
        process = below.pop()
        found += [stats[process]] if process in stats else []
        below += children.get(process, [])
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` and of every process below it."""
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[11]) + int(fields[12]) for fields in _tree_stats(pid)) / ticks


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and of every process below it (the fork server and the
    analysis workers), pages they share counted in each."""
    page = os.sysconf("SC_PAGE_SIZE")
    return sum(int(fields[21]) * page for fields in _tree_stats(pid))


def wait_idle(pid: int) -> None:
    """Wait, at most ``IDLE_TIMEOUT`` seconds, until process ``pid`` (with the processes below
    it) uses almost no CPU."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    before = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(IDLE_POLL)
        now = tree_cpu_seconds(pid)
        if now - before < IDLE_CORES * IDLE_POLL:
            return
        before = now


async def open_connection(
    http: aiohttp.ClientSession, server: Server, camera: str | None = None
) -> Connection:
    """A client connected with a fresh session id, as ``framehub-send`` connects; as the live
    camera ``camera`` when named."""
    params = {"camera": camera} if camera else {}
    async with http.get(server.url("/get_session_id"), params=params) as resp:
        if resp.status != 200:
            raise BenchError(f"GET /get_session_id answered {resp.status}: {await resp.text()}")
        session_id = (await resp.json())["session_id"]
    sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
    connection = Connection(sio)
    sio.on("result", connection.on_result)
    try:
        await sio.connect(
            server.url(),
            auth={SESSION_ID_NAME: session_id},
            transports=["websocket"],
            wait_timeout=CONNECT_TIMEOUT,
        )
    except socketio.exceptions.ConnectionError as exc:
        raise BenchError(f"cannot connect over Socket.IO to {server.url()}: {exc}") from None
    return connection


# --- latency ------------------------------------------------------------------------------------


def measure_latency(ctx: BenchContext, codec: Codec, frames: list[bytes]) -> Latency:
    """Result latency of ``codec`` clips with an instant API, and their encode time in-process."""
    clips = ClipSettings()
    clip = frames[: clips.frames]

    def encode_seconds() -> float:
        started = time.perf_counter()
        encode_clip(clip, clips.fps, codec, h264_preset=clips.h264_preset, h264_crf=clips.h264_crf)
        return time.perf_counter() - started

    api_port = free_port()
    tables: Tables = {
        "repositories": {"create_demo": False},
        "clips": {"codec": codec},
        "processors.instant": {"url": f"http://{LOOPBACK}:{api_port}/"},
    }
    count = QUICK_LATENCY_CLIPS if ctx.quick else LATENCY_CLIPS
    with start_framehub(ctx, f"framehub-latency-{codec}", tables) as server:
        latencies, encodes = asyncio.run(
            clip_latencies(server, api_port, clip, count, encode_seconds)
        )
    deciles = statistics.quantiles(latencies, n=10, method="inclusive")
    return Latency(
        codec=codec,
        p50_ms=statistics.median(latencies) * 1e3,
        p90_ms=deciles[8] * 1e3,
        encode_ms=statistics.median(encodes) * 1e3,
    )


async def instant_answer(request: web.Request) -> web.Response:
    """The instant analysis API: reads the clip and answers ``{}``."""
    await request.read()
    return web.json_response({})


async def clip_latencies(
    server: Server, api_port: int, clip: list[bytes], count: int, encode: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Seconds from each clip's last ack to its result, and to encode it here, for ``count`` clips."""
    api = web.Application(client_max_size=64 * MB)
    api.router.add_post("/", instant_answer)
    runner = web.AppRunner(api, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, LOOPBACK, api_port).start()
        async with aiohttp.ClientSession() as http:
            connection = await open_connection(http, server)
            try:
                return await _send_clips(connection, clip, count, encode)
            finally:
                await connection.sio.disconnect()
    finally:
        await runner.cleanup()


async def _send_clips(
    connection: Connection, clip: list[bytes], count: int, encode: Callable[[], float]
) -> tuple[list[float], list[float]]:
    latencies: list[float] = []
    encodes: list[float] = []
    for number in range(LATENCY_WARM_UP_CLIPS + count):
        for frame in clip:
            ack = await connection.process(frame)
        acked_at = time.perf_counter()
        try:
            arrived_at, message = await asyncio.wait_for(connection.results.get(), RESULT_TIMEOUT)
        except TimeoutError:
            raise BenchError(f"no result for clip {number} within {RESULT_TIMEOUT:g} s") from None
        if message["clip"]["last_frame"] != ack["frame"] or message["result"] != {"instant": {}}:
            raise BenchError(f"unexpected result for clip {number}: {message}")
        # While the server is idle, so that both figures see the same machine.
        encoded_in = await asyncio.to_thread(encode)
        if number >= LATENCY_WARM_UP_CLIPS:
            latencies.append(arrived_at - acked_at)
            encodes.append(encoded_in)
    return latencies, encodes


# --- memory -------------------------------------------------------------------------------------


def measure_memory(ctx: BenchContext, frame: bytes) -> MemoryLevels:
    """framehub's RSS through two rounds of ``SESSIONS`` sessions coming and leaving."""
    # The quick mode only checks the harness: it does not wait for engineio to let go.
    linger = 0.0 if ctx.quick else ENGINEIO_PING_INTERVAL
    with start_framehub(ctx, "framehub-memory", BUILT_IN_PROCESSORS) as server:
        return asyncio.run(session_rounds(server, frame, linger))


async def session_rounds(server: Server, frame: bytes, linger: float) -> MemoryLevels:
    """RSS idle, then twice: with ``SESSIONS`` idle sessions, and ``linger`` s after they left."""
    levels = MemoryLevels(linger)
    async with aiohttp.ClientSession() as http:
        await _leave(await open_sessions(http, server, 1, frame))
        await asyncio.sleep(linger)
        levels.idle = memory_use(server.pid).rss
        levels.idle_tree = tree_rss(server.pid)
        for _round in range(2):
            connections = await open_sessions(http, server, SESSIONS, frame)
            levels.connected.append(memory_use(server.pid).rss)
            await _leave(connections)
            await asyncio.sleep(linger)
            levels.settled.append(memory_use(server.pid).rss)
    return levels


async def open_sessions(
    http: aiohttp.ClientSession, server: Server, count: int, frame: bytes
) -> list[Connection]:
    """``count`` sessions that each sent ``frame`` and got its clip's result, then idle."""
    limit = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def one() -> Connection:
        async with limit:
            connection = await open_connection(http, server)
        try:
            await connection.process(frame)
            # The one-frame clip goes out after [clips] max_wait.
            await asyncio.wait_for(connection.results.get(), RESULT_TIMEOUT)
        except BaseException:
            await connection.sio.disconnect()
            raise
        return connection

    try:
        connections = await asyncio.gather(*(one() for _ in range(count)))
    except TimeoutError:
        raise BenchError(f"a one-frame clip got no result within {RESULT_TIMEOUT:g} s") from None
    await asyncio.sleep(SETTLE)
    return connections


async def _leave(connections: list[Connection]) -> None:
    await asyncio.gather(*(c.sio.disconnect() for c in connections))
    await asyncio.sleep(SETTLE)
