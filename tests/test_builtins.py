"""The built-in processors, called in-process: the same answers as ``POST /analyze/*``, no use of
the server's own port, batch videos on disk analysed by them too, and a worker process that dies
costing only its own analysis; the workers start with the first analysis, not with the server,
and end with it.

framehub comes from ``create_app`` on a loopback port, fed by a python-socketio client. A real
analysis API beside the built-ins receives the very clip the built-ins analysed, so the test can
send that clip to the HTTP routes and compare.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import av
import pytest

from apps import PROCESS_BOUND
from common import Images
from server.keys import builtin_analyses_key
from server.live.builtins import WORKER_NICENESS
from server.media.clips import encode_clip

if TYPE_CHECKING:
    from conftest import ClipApiFactory, LiveFrames, LiveServer, LiveServerFactory

BUILTINS = {"summary": {"builtin": "summary"}, "motion": {"builtin": "motion"}}


async def post_clip(server: LiveServer, kind: str, clip: bytes) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", clip, filename="clip.mp4", content_type="video/mp4")
    async with server.http.post(f"{server.url}/analyze/{kind}", data=form) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


@pytest.mark.parametrize("codec", ["mjpeg", "h264"])
async def test_in_process_answers_equal_the_http_routes(
    live_server: LiveServerFactory,
    clip_api: ClipApiFactory,
    live_frames: LiveFrames,
    codec: str,
) -> None:
    copy = await clip_api("copy")
    server = await live_server(
        processors={**BUILTINS, "copy": {"url": copy.url, "retries": 0}},
        clips={"frames": 5, "codec": codec},
    )
    client = await server.connect()
    for index in range(5):
        assert (await client.process(live_frames.encode(index)))["ok"]
    (result,) = await client.until_results(1)
    (received,) = copy.clips
    for kind in ("summary", "motion"):
        assert result["result"][kind] == await post_clip(server, kind, received.data)
    assert result["result"]["summary"]["frames"] == 5
    assert result["result"]["motion"]["frames"] == 5


async def test_options_tell_which_processors_are_built_in(
    live_server: LiveServerFactory, clip_api: ClipApiFactory
) -> None:
    api = await clip_api("api")
    server = await live_server(processors={**BUILTINS, "api": {"url": api.url}})
    async with server.http.get(f"{server.url}/options") as resp:
        processors = {p["name"]: p for p in (await resp.json())["processors"]}
    assert processors["summary"]["builtin"] == "summary"
    assert processors["motion"]["builtin"] == "motion"
    assert processors["summary"]["url"] is None
    assert processors["api"]["builtin"] is None
    assert processors["api"]["url"] == api.url


async def test_built_ins_need_no_port_of_their_own(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    # [server] port 0 used to make the built-ins' URLs point at port 0.
    server = await live_server(server={"port": 0}, processors=BUILTINS, clips={"frames": 2})
    assert server.settings.server.port == 0
    client = await server.connect()
    for index in range(2):
        assert (await client.process(live_frames.encode(index)))["ok"]
    (result,) = await client.until_results(1)
    assert result["result"]["summary"]["frames"] == 2
    assert result["result"]["motion"]["frames"] == 2


def matroska(frames: int) -> bytes:
    """A small Matroska video made with PyAV: a container the built-ins' MP4 reader would refuse."""
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame(64, 48, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([index * 20 % 256]) * plane.buffer_size)
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


async def test_batch_videos_go_to_the_built_ins_from_disk(live_server: LiveServerFactory) -> None:
    server = await live_server(processors=BUILTINS)
    form = aiohttp.FormData()
    form.add_field("file", matroska(8), filename="match.mkv", content_type="video/x-matroska")
    async with server.http.post(f"{server.url}/batch", data=form) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["result"]["summary"]["frames"] == 8
    assert answer["result"]["summary"]["codec"] == "mpeg4"
    assert answer["result"]["motion"]["frames"] == 8
    assert answer["result"]["motion"]["ranges"] == [[1, 7]]


def where_it_runs(*_args: Any) -> dict[str, Any]:
    """Stands for the analyses: the process the worker is and its CPU priority."""
    return {"pid": os.getpid(), "nice": os.getpriority(os.PRIO_PROCESS, 0)}


async def test_analyses_run_in_a_worker_process_below_the_event_loop(
    live_server: LiveServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await live_server(processors=BUILTINS)
    monkeypatch.setattr("server.live.builtins._analyse_in_worker", where_it_runs)
    worker = await server.app[builtin_analyses_key].analyse(b"", ["summary"])
    # Its own GIL, and a core the event loop needs goes to the event loop.
    assert worker["pid"] != os.getpid()
    assert worker["nice"] == min(os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS, 19)


def worker_dies(*_args: Any) -> None:
    """Stands for a clip that crashes the decoder: the analysis worker process ends at once."""
    os._exit(70)


async def test_a_worker_that_dies_fails_its_analysis_and_is_replaced(
    live_server: LiveServerFactory, live_frames: LiveFrames, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await live_server(processors=BUILTINS, clips={"frames": 2})
    client = await server.connect()
    # The worker is handed this module's function instead of the analyses.
    monkeypatch.setattr("server.live.builtins._analyse_in_worker", worker_dies)
    for index in range(2):
        assert (await client.process(live_frames.encode(index)))["ok"]
    (result,) = await client.until_results(1)
    for kind in ("summary", "motion"):
        assert "worker process ended" in result["result"][kind]["error"]
        assert result["result"][kind]["status"] == 422
    monkeypatch.undo()
    for index in range(2, 4):
        assert (await client.process(live_frames.encode(index)))["ok"]
    results = await client.until_results(2)
    assert results[1]["result"]["summary"]["frames"] == 2
    assert results[1]["result"]["motion"]["frames"] == 2


def live_processes() -> dict[int, int]:
    """``{pid: parent pid}`` of the processes alive; zombies waiting to be reaped do not count."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    return parents


def processes_below(pid: int) -> set[int]:
    """The processes ``pid`` started, and those they started in turn (the fork server's workers)."""
    parents = live_processes()
    below, parents_left = set(), [pid]
    while parents_left:
        parent = parents_left.pop()
        children = [child for child, of in parents.items() if of == parent]
        below.update(children)
        parents_left += children
    return below


def still_alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` alive after ``PROCESS_BOUND`` seconds, or as soon as none is."""
    deadline = time.monotonic() + PROCESS_BOUND
    while (alive := pids & live_processes().keys()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


async def test_workers_start_with_the_first_analysis_and_end_with_the_server(
    start_server: Any,
) -> None:
    server = start_server({"processors.summary": {"builtin": "summary"}})
    await asyncio.to_thread(server.wait_ready)
    # Before its first clip a server spends nothing on the fork server (PyAV, ~21 MB) or workers.
    assert processes_below(server.process.pid) == set()
    frames = [Images.encode(index, size=(64, 48)) for index in range(3)]
    form = aiohttp.FormData()
    form.add_field("file", encode_clip(frames, 10, "mjpeg").data, filename="clip.mp4")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/analyze/summary", data=form) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["frames"] == 3
    started = processes_below(server.process.pid)
    assert started  # the fork server and a worker forked from it
    assert await asyncio.to_thread(server.stop) == 0
    assert not await asyncio.to_thread(still_alive, started), "processes outlived the server"
