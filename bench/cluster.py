"""Scaling out (issue 12): two framehub processes behind nginx against one, and what a camera
costs when it is read from another process.

Everything runs on this machine, on 127.0.0.1: one ``redis-server`` (Debian's, nothing saved),
two clusters on it told apart by ``[cluster] prefix`` (one of one process, one of two processes,
the same settings otherwise: a shared repositories folder and one cookie key), and for each
cluster an nginx running ``deploy/nginx.conf`` itself, only its lines marked ``EDIT`` replaced
(the upstream servers, the listen address), with its ``worker_processes auto``.

How the cores are shared, on a 2-core machine: each framehub process is pinned to a core of its
own (every thread, as ``taskset -a -p -c``; the lone process and the pair's first share core 0,
the pair's second has core 1), while nginx's workers and the load generators (wrk, or this
process for Socket.IO) are left to the scheduler, so they take their CPU from both. The lone
process can never use more than one core; the pair can use both, minus what nginx and the load
take. Only one configuration is loaded at a time; the other is idle.

1. ``video.jpg``: bench/camera.py's repository (300 frames of the demo pattern) and its wrk load
   (1 thread, 64 connections: see VIDEO_CONNECTIONS; the Lua script keeping the cursor cookie), through each nginx, in
   turns (bench/camera.py's ``load_in_turns``). Rows: requests/s of two processes against one
   (target at least 1.3x), p99 latency, and whether the cookie carried the cursor frame after
   frame while the requests alternated between the two processes. Then where a request's CPU
   went, in each configuration: the framehub processes, nginx's workers and wrk, per answered
   request; and the ceiling those costs put on the pair: the lone process keeps its one core busy,
   so its rate is framehub's own limit, while the pair shares every core with nginx and wrk, so it
   answers at most (cores / the three costs together) requests per second, even at the lone
   process's cost per request.
2. Ingest: bench/ingest.py's throughput load (8 websocket clients x 4 ``process`` calls in flight,
   ids from ``GET /get_session_id``, the built-in processors) through each nginx, in turns, each
   turn after every framehub process is idle. Row: acked frames/s of two processes against one.
3. Cross-process ``latest.jpg``: a camera streams into the pair's process A (directly, one frame
   at a time); after each ack, ``GET /live/NAME/latest.jpg`` is read from process B until it
   carries the acked frame number (the frame reaches B through Redis), or, every other frame,
   from process A itself. Rows: p50 (target at most 3 ms) and p90 of B against A, and how often
   B's first answer already was the acked frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from cryptography.fernet import Fernet

from bench.camera import (
    COOKIE_SCRIPT,
    CURSOR_CHECKS,
    PATH,
    REPOSITORY,
    Load,
    frames_in_order,
    load_in_turns,
    write_repository,
)
from bench.common import (
    LOOPBACK,
    PROJECT_ROOT,
    START_TIMEOUT,
    BenchContext,
    BenchError,
    Row,
    Server,
    Tables,
    ensure_tool,
    free_port,
    http_get,
    redis_url,
    start_framehub,
    start_process,
    start_redis,
)
from bench.ingest import (
    BUILT_IN_PROCESSORS,
    CLIENTS,
    ROUNDS,
    WINDOW,
    Counters,
    machine_cpu_seconds,
    make_frames,
    open_connection,
    throughput,
    tree_cpu_seconds,
    wait_idle,
)
from bench.live import percentiles_ms, timed_get

BENCHMARK = "cluster"
# wrk's connections for video.jpg: bench/camera.py's 8 keep one process busy when it answers
# directly, but through nginx each request waits on two hops, so 8 requests in flight leave the
# processes idle between them (one process behind nginx gave 6,259 req/s against 10,056 direct,
# and a second one added 2 %): enough in flight that the processes, not the round trips, set
# the pace.
VIDEO_CONNECTIONS = 64
NGINX_CONF = PROJECT_ROOT / "deploy" / "nginx.conf"
# deploy/nginx.conf's lines an installer edits end with this mark.
_UPSTREAM_LINE = re.compile(r"^(\s*)server\s+\S+;\s*# EDIT\b.*$", re.MULTILINE)
_LISTEN_LINE = re.compile(r"^(\s*)listen\s+\S+;\s*# EDIT\b.*$", re.MULTILINE)
PAIR = ("a", "b")
LATENCY_CAMERA = "bench-cross"
LATENCY_SAMPLES = 300
QUICK_LATENCY_SAMPLES = 100
LATENCY_WARM_UP = 20
LATENCY_TIMEOUT = 60.0
# How long process B may take to show the acked frame before the sample counts as a failure.
VISIBLE_WITHIN = 1.0
HTTP_TIMEOUT = 5.0
# Targets of issue 12.
MIN_VIDEO_JPG_RATIO = 1.3
MAX_CROSS_LATENCY_P50_MS = 3.0


@dataclass(frozen=True, slots=True)
class Cluster:
    """framehub processes of one cluster and the nginx in front of them."""

    name: str
    nodes: list[Server]
    nginx: Server


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds so far: the whole machine, and what this benchmark runs (framehub with its
    analysis workers, nginx, Redis, this process and the wrk runs it waited for)."""

    seconds: float
    machine: float
    ours: float

    @classmethod
    def take(cls, servers: Sequence[Server]) -> CpuSample:
        """The counters now, ``servers`` being every process the benchmark started."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it ended
        ours = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        ours += sum(tree_cpu_seconds(server.pid) for server in servers)
        return cls(time.perf_counter(), machine_cpu_seconds(), ours)

    def others_cores_since(self, before: CpuSample) -> float:
        """Cores every other process on the machine used between ``before`` and this sample."""
        others = (self.machine - before.machine) - (self.ours - before.ours)
        return max(0.0, others) / (self.seconds - before.seconds)


@dataclass(frozen=True, slots=True)
class CrossLatency:
    """Seconds from each ack until ``latest.jpg`` carried that frame, read from the camera's own
    process and from the other one; how many of B's first answers were the acked frame."""

    same: list[float]
    other: list[float]
    first_answer_current: int


def run(ctx: BenchContext) -> list[Row]:
    """video.jpg and ingest through nginx, two processes against one; cross-process latest.jpg."""
    # framehub[cluster] needs redis-py, which make bench's runtime-only venv (--server-python)
    # lacks; the harness's own venv, with the test extras, has it.
    ctx = replace(ctx, python=Path(sys.executable))
    repositories = ctx.tmp / "repositories"
    write_repository(repositories / REPOSITORY)
    script = ctx.tmp / "cookie.lua"
    script.write_text(COOKIE_SCRIPT)
    frames = make_frames()
    cores = sorted(os.sched_getaffinity(0))
    with start_redis(ctx) as redis, contextlib.ExitStack() as stack:
        tables: Tables = {
            **BUILT_IN_PROCESSORS,
            "server": {"secret_key": Fernet.generate_key().decode()},
            "repositories": {"dir": repositories, "create_demo": False},
            "cluster": {"redis_url": redis_url(redis)},
        }
        single = stack.enter_context(start_cluster(ctx, "single", ["solo"], tables, cores))
        pair = stack.enter_context(start_cluster(ctx, "pair", list(PAIR), tables, cores))
        ours = [redis, *single.nodes, single.nginx, *pair.nodes, pair.nginx]
        in_order = frames_in_order(pair.nginx.url(PATH))
        before_video = CpuSample.take(ours)
        video = load_in_turns(
            ctx,
            {"single": single.nginx, "pair": pair.nginx},
            script,
            VIDEO_CONNECTIONS,
            behind={"single": single.nodes, "pair": pair.nodes},
        )
        before_ingest = CpuSample.take(ours)
        ingest = asyncio.run(ingest_in_turns(ctx, [single, pair], frames))
        after_ingest = CpuSample.take(ours)
        samples = QUICK_LATENCY_SAMPLES if ctx.quick else LATENCY_SAMPLES
        cross = asyncio.run(
            asyncio.wait_for(cross_latency(pair.nodes, frames, samples), LATENCY_TIMEOUT)
        )
    return [
        *video_rows(video["pair"], video["single"], in_order),
        *video_cpu_rows(video["pair"], video["single"], len(cores)),
        others_row("video.jpg", before_ingest.others_cores_since(before_video)),
        ingest_row(ingest["pair"], ingest["single"]),
        others_row("ingest", after_ingest.others_cores_since(before_ingest)),
        *cross_rows(cross),
    ]


def others_row(load: str, cores: float) -> Row:
    """How much of the machine other work took while ``load`` ran: the figures' disturbance."""
    return Row(
        BENCHMARK,
        f"other processes' CPU during the {load} turns (of {os.cpu_count()})",
        cores,
        "cores",
    )


# --- the clusters -------------------------------------------------------------------------------


@contextlib.contextmanager
def start_cluster(
    ctx: BenchContext, name: str, nodes: list[str], tables: Tables, cores: Sequence[int]
) -> Iterator[Cluster]:
    """framehub processes named ``nodes`` (Redis prefix ``bench-NAME``), each pinned to a core of
    its own, and an nginx of ``deploy/nginx.conf`` in front of them."""
    with contextlib.ExitStack() as stack:
        servers = []
        for index, node in enumerate(nodes):
            cluster = {**tables["cluster"], "node": f"{name}-{node}", "prefix": f"bench-{name}"}
            server = stack.enter_context(
                start_framehub(ctx, f"{name}-{node}", {**tables, "cluster": cluster})
            )
            wait_ready(server)
            pin(server.pid, cores[index % len(cores)])
            servers.append(server)
        proxy = stack.enter_context(start_nginx(ctx, name, servers))
        yield Cluster(name, servers, proxy)


def wait_ready(server: Server) -> None:
    """Until ``GET /readyz`` answers 200: listening, repositories loaded, Redis reached."""
    deadline = time.monotonic() + START_TIMEOUT
    status, body = 0, b""
    while time.monotonic() < deadline:
        status, _, body = http_get(server.url("/readyz"))
        if status == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{server.url('/readyz')} answered {status} {body!r} for {START_TIMEOUT} s")


def pin(pid: int, core: int) -> None:
    """Every thread of process ``pid`` onto ``core`` (``taskset -a -p -c CORE PID``); threads it
    starts later inherit it."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), {core})


def nginx_conf(text: str, upstreams: Sequence[Server], listen: str) -> str:
    """``deploy/nginx.conf``'s text with its ``EDIT`` lines replaced: one upstream ``server`` line
    per framehub process, and ``listen``."""
    servers = list(_UPSTREAM_LINE.finditer(text))
    if not servers or len(_LISTEN_LINE.findall(text)) != 1:
        raise BenchError(f"{NGINX_CONF}: its `server ...; # EDIT` and `listen ...; # EDIT` moved")
    indent = servers[0][1]
    lines = "\n".join(f"{indent}server {LOOPBACK}:{server.port};" for server in upstreams)
    text = text[: servers[0].start()] + lines + text[servers[-1].end() :]
    return _LISTEN_LINE.sub(lambda found: f"{found[1]}listen {listen};", text)


@contextlib.contextmanager
def start_nginx(ctx: BenchContext, name: str, upstreams: Sequence[Server]) -> Iterator[Server]:
    """nginx running ``deploy/nginx.conf`` in front of ``upstreams``, its prefix a temp folder."""
    nginx = ensure_tool("nginx", package="nginx-light")
    prefix = ctx.tmp / f"nginx-{name}"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(NGINX_CONF.read_text(), upstreams, f"{LOOPBACK}:{port}"))
    # As root the workers would run as nobody, who cannot enter the private temp folder.
    directives = "daemon off;" + (" user root root;" if os.geteuid() == 0 else "")
    argv = [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")]
    argv += ["-g", directives]
    with start_process(argv, port, prefix / "nginx.out", ready_path="/healthz") as server:
        yield server


# --- video.jpg ----------------------------------------------------------------------------------


def video_rows(pair: Load, single: Load, in_order: int) -> list[Row]:
    """Requests/s and p99 of two processes against one, and the cursor across processes."""
    ratio = pair.requests_per_second / single.requests_per_second
    return [
        Row(
            BENCHMARK,
            "video.jpg rps behind nginx, 2 processes vs 1 (1 core each; wrk 1x64, cookie)",
            pair.requests_per_second,
            "req/s",
            reference=single.requests_per_second,
            ratio=ratio,
            target=f">= {MIN_VIDEO_JPG_RATIO:g}x",
            passed=ratio >= MIN_VIDEO_JPG_RATIO,
        ),
        Row(
            BENCHMARK,
            "video.jpg p99 latency behind nginx, 2 processes vs 1",
            pair.p99_ms,
            "ms",
            reference=single.p99_ms,
        ),
        Row(
            BENCHMARK,
            "cookie advances cursor, requests alternating between 2 processes",
            in_order,
            "frames",
            target=f"{CURSOR_CHECKS} in order",
            passed=in_order == CURSOR_CHECKS,
        ),
    ]


def video_cpu_rows(pair: Load, single: Load, cores: int) -> list[Row]:
    """Where the CPU of a request goes, two processes against one, and the most two processes
    could answer on ``cores`` cores at the lone process's cost per request."""
    parts = {
        "framehub processes": (pair.behind_cpu_seconds, single.behind_cpu_seconds),
        "nginx": (pair.cpu_seconds, single.cpu_seconds),
        "wrk": (pair.wrk_cpu_seconds, single.wrk_cpu_seconds),
    }
    rows = []
    for part, (pair_seconds, single_seconds) in parts.items():
        pair_us, single_us = (
            pair.per_request_us(pair_seconds),
            single.per_request_us(single_seconds),
        )
        rows.append(
            Row(
                BENCHMARK,
                f"video.jpg CPU per request, {part}, 2 processes vs 1",
                pair_us,
                "us",
                reference=single_us,
                ratio=pair_us / single_us,
            )
        )
    # The lone process keeps its core busy, so its rate is what framehub alone allows; the pair
    # shares every core with nginx and wrk, so at best it answers cores / (all three per request).
    cpu_seconds = single.cpu_seconds + single.behind_cpu_seconds + single.wrk_cpu_seconds
    ceiling = cores * single.requests / cpu_seconds
    rows.append(
        Row(
            BENCHMARK,
            f"video.jpg ceiling of 2 processes: {cores} cores busy at the lone one's CPU/request",
            ceiling,
            "req/s",
            reference=single.requests_per_second,
            ratio=ceiling / single.requests_per_second,
        )
    )
    return rows


# --- ingest -------------------------------------------------------------------------------------


async def ingest_in_turns(
    ctx: BenchContext, clusters: Sequence[Cluster], frames: list[bytes]
) -> dict[str, Counters]:
    """bench/ingest.py's throughput load through each cluster's nginx, ``ROUNDS`` turns each."""
    totals = {cluster.name: Counters() for cluster in clusters}
    every_node = [node for cluster in clusters for node in cluster.nodes]
    for _round in range(ROUNDS):
        for cluster in clusters:
            for node in every_node:
                await asyncio.to_thread(wait_idle, node.pid)
            totals[cluster.name] += await throughput(cluster.nginx, frames, ctx.duration / ROUNDS)
    return totals


def ingest_row(pair: Counters, single: Counters) -> Row:
    """Acked frames/s of two processes against one."""
    fps, single_fps = pair.per_second(pair.acked), single.per_second(single.acked)
    return Row(
        BENCHMARK,
        f"acked frames/s behind nginx, 2 processes vs 1 ({CLIENTS} websocket x {WINDOW} in flight)",
        fps,
        "frames/s",
        reference=single_fps,
        ratio=fps / single_fps,
    )


# --- cross-process latest.jpg -------------------------------------------------------------------


async def cross_latency(nodes: Sequence[Server], frames: list[bytes], count: int) -> CrossLatency:
    """A camera on ``nodes[0]``; after each ack, ``latest.jpg`` from ``nodes[1]`` or, every other
    frame, from ``nodes[0]``, until it carries the acked frame."""
    camera_node, other_node = nodes[0], nodes[1]
    path = f"/live/{LATENCY_CAMERA}/latest.jpg"
    same: list[float] = []
    other: list[float] = []
    first_answer_current = 0
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        camera = await open_connection(http, camera_node, LATENCY_CAMERA)
        try:
            for index in range(LATENCY_WARM_UP + 2 * count):
                ack = await camera.process(frames[index % len(frames)])
                acked_at = time.perf_counter()
                reader = other_node if index % 2 else camera_node
                answers = await until_frame(http, reader.url(path), str(ack["frame"]))
                elapsed = time.perf_counter() - acked_at
                if index < LATENCY_WARM_UP:
                    continue
                if reader is other_node:
                    other.append(elapsed)
                    first_answer_current += answers == 1
                else:
                    same.append(elapsed)
        finally:
            await camera.sio.disconnect()
    return CrossLatency(same, other, first_answer_current)


async def until_frame(http: aiohttp.ClientSession, url: str, number: str) -> int:
    """``GET url`` until its ``X-Frame-Number`` is ``number``; how many GETs that took."""
    deadline = time.perf_counter() + VISIBLE_WITHIN
    answers = 0
    while True:
        _, response = await timed_get(http, url)
        answers += 1
        if response.headers.get("X-Frame-Number") == number:
            return answers
        if time.perf_counter() > deadline:
            raise BenchError(
                f"{url} still showed frame {response.headers.get('X-Frame-Number')} "
                f"{VISIBLE_WITHIN:g} s after frame {number} was acked"
            )


def cross_rows(latency: CrossLatency) -> list[Row]:
    """p50 and p90 of reading the camera from the other process against its own."""
    p50, p90 = percentiles_ms(latency.other)
    same_p50, same_p90 = percentiles_ms(latency.same)
    count = len(latency.other)
    return [
        Row(
            BENCHMARK,
            "latest.jpg p50, ack to that frame read from the other process (vs same)",
            p50,
            "ms",
            reference=same_p50,
            ratio=p50 / same_p50,
            target=f"<= {MAX_CROSS_LATENCY_P50_MS:g} ms",
            passed=p50 <= MAX_CROSS_LATENCY_P50_MS,
        ),
        Row(
            BENCHMARK,
            "latest.jpg p90, ack to that frame read from the other process (vs same)",
            p90,
            "ms",
            reference=same_p90,
            ratio=p90 / same_p90,
        ),
        Row(
            BENCHMARK,
            "other process's first answer already the acked frame",
            latency.first_answer_current,
            "answers",
            reference=count,
            ratio=latency.first_answer_current / count,
        ),
    ]
