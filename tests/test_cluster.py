"""Two real framehub processes on one real ``redis-server`` (``[cluster] redis_url``).

Each test starts the processes with ``main.py`` (``tests/cluster.py``); the clips go to a real
analysis API on a loopback port in this process, the archives come from a real tar source. What is
checked is what a client sees on the other process: ids, cameras, frames, results, batch jobs,
downloads; and that an outage of Redis costs a streaming session nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from apps import ROOT, LiveClient, ServerProcess
from cluster import SESSION_ID_NAME, FramehubCluster, RedisServer
from common import LIVE_TIMEOUT, until, write_video
from conftest import ClipApiFactory, Images, TarSource

FRAME_TYPES = {"Content-Type": "image/jpeg"}


def analysed_by(api_url: str) -> dict[str, dict[str, Any]]:
    """Settings tables sending every clip to the API at ``api_url``."""
    return {"processors": {"a": {"url": api_url, "retries": 0, "timeout": 5.0}}}


def small_video(tmp_path: Path, images: Images) -> Path:
    """A 10-frame H.264 MP4 of test pictures."""
    pictures = (images.picture(index, (64, 48)) for index in range(10))
    return write_video(tmp_path / "clip.mp4", pictures, size=(64, 48), fps=10)


async def session_id(http: aiohttp.ClientSession, node: ServerProcess, **params: str) -> str:
    async with http.get(f"{node.url}/get_session_id", params=params) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["session_id"])


async def connect(node: ServerProcess, sid: str | None = None, **auth: Any) -> LiveClient:
    client = LiveClient()
    if sid is not None:
        auth[SESSION_ID_NAME] = sid
    await client.sio.connect(
        node.url, auth=auth, transports=["websocket"], wait_timeout=LIVE_TIMEOUT
    )
    return client


async def refused(node: ServerProcess, sid: str) -> Any:
    client = LiveClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(
            node.url, auth={SESSION_ID_NAME: sid}, transports=["websocket"], wait_timeout=5
        )
    return client.connect_errors[0]


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def eventually(
    http: aiohttp.ClientSession, url: str, check: Callable[[int, bytes], bool], what: str
) -> bytes:
    """Poll ``url`` until ``check(status, body)`` holds (what another process wrote reaches Redis
    a moment after it was acked); the body then."""
    seen: list[tuple[int, bytes]] = []

    async def poll() -> bytes:
        while True:
            async with http.get(url) as resp:
                seen[:] = [(resp.status, await resp.read())]
            if check(*seen[0]):
                return seen[0][1]
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(poll(), LIVE_TIMEOUT)
    except TimeoutError:
        status, body = seen[0] if seen else (None, b"")
        pytest.fail(f"{what}: not within {LIVE_TIMEOUT} s; last {status}, {body[:200]!r}")


async def eventually_json(
    http: aiohttp.ClientSession, url: str, check: Callable[[int, Any], bool], what: str
) -> Any:
    """:func:`eventually` for a JSON answer."""
    body = await eventually(http, url, lambda status, body: check(status, json.loads(body)), what)
    return json.loads(body)


async def eventually_bytes(
    http: aiohttp.ClientSession, url: str, expected: bytes, what: str
) -> None:
    """:func:`eventually` until the answer is ``expected``."""
    await eventually(http, url, lambda _status, body: body == expected, what)


async def test_an_id_issued_by_one_process_is_accepted_once_by_any(
    framehub_cluster: FramehubCluster, clip_api: ClipApiFactory, live_frames: Images
) -> None:
    api = await clip_api("a")
    a, b = framehub_cluster.start(2, analysed_by(api.url))
    async with aiohttp.ClientSession() as http:
        sid = await session_id(http, a)
        client = await connect(b, sid)
        try:
            for index in range(4):
                assert (await client.process(live_frames.encode(index)))["ok"]
            results = await client.until_results(1)
            assert "a" in results[0]["result"]
            # Used on B: neither process takes it again.
            assert "unknown or expired" in str(await refused(a, sid))
            assert "already in use" in str(await refused(b, sid))
        finally:
            await client.disconnect()

        # Two processes offered one id at the same moment: exactly one accepts it.
        sid = await session_id(http, b)
        attempts = [connect(node, sid) for node in (a, b)]
        outcomes = await asyncio.gather(*attempts, return_exceptions=True)
        connected = [o for o in outcomes if isinstance(o, LiveClient)]
        assert len(connected) == 1, outcomes
        await connected[0].disconnect()


async def test_the_cap_on_unused_ids_holds_across_processes(
    framehub_cluster: FramehubCluster,
) -> None:
    a, b = framehub_cluster.start(2, {"sessions": {"max_pending_per_ip": 3}})
    async with aiohttp.ClientSession() as http:
        for node in (a, b, a):
            await session_id(http, node)
        async with http.get(f"{b.url}/get_session_id") as resp:
            assert resp.status == 503
            assert "in the cluster" in (await resp.json())["error"]


async def test_a_camera_streaming_into_one_process_is_seen_on_the_other(
    framehub_cluster: FramehubCluster, clip_api: ClipApiFactory, live_frames: Images
) -> None:
    api = await clip_api("a")
    a, b = framehub_cluster.start(2, analysed_by(api.url))
    async with aiohttp.ClientSession() as http:
        watcher = await connect(b, watch=True)
        assert (await watcher.sio.call("watch", {"camera": "door"}, timeout=5))["ok"]
        events = await http.get(f"{b.url}/live/door/events")  # 404 until some process has it
        assert events.status == 404
        events.close()

        streamer = await connect(a, await session_id(http, a, camera="door"))
        try:
            listed = await eventually_json(
                http,
                f"{b.url}/live",
                lambda status, body: body.get("door", {}).get("online"),
                "camera door listed on B",
            )
            assert listed["door"]["node"] == "node-0"

            events = await http.get(f"{b.url}/live/door/events")
            assert events.status == 200
            assert (await events.content.readuntil(b"\n\n")).startswith(b"event: online")

            # A frame sent before B's viewer subscribes is still shown: B reads the newest first.
            mjpeg = await http.get(f"{b.url}/live/door/video.mjpg")
            assert mjpeg.status == 200

            frames = [live_frames.encode(index) for index in range(4)]
            for frame in frames:
                assert (await streamer.process(frame))["ok"]

            await eventually_bytes(
                http, f"{b.url}/live/door/latest.jpg", frames[-1], "door's frame on B"
            )
            async with http.get(f"{b.url}/live/door/latest.jpg") as resp:
                assert resp.headers["X-Frame-Number"] == "3"

            # The newest frame reaches B's MJPEG viewer, byte for byte.
            part = b""
            async with asyncio.timeout(LIVE_TIMEOUT):
                while frames[-1] not in part:
                    part += await mjpeg.content.read(1 << 16)
            mjpeg.close()

            # The result reaches the watcher on B, the events stream on B and B's result route.
            await watcher.until_results(1)
            assert watcher.results[0]["camera"] == "door"
            async with asyncio.timeout(LIVE_TIMEOUT):
                while True:
                    event = await events.content.readuntil(b"\n\n")
                    if event.startswith(b"event: result"):
                        break
            events.close()
            body = await eventually_json(
                http,
                f"{b.url}/live/door/result",
                lambda status, body: status == 200,
                "result on B",
            )
            assert body["camera"] == "door" and "a" in body["result"]
        finally:
            await streamer.disconnect()
            await watcher.disconnect()

        # Gone from A: offline on B too, and B shows the placeholder.
        await eventually_json(
            http,
            f"{b.url}/live",
            lambda status, body: not body.get("door", {}).get("online", True),
            "camera door offline on B",
        )
        async with http.get(f"{b.url}/live/door/latest.jpg") as resp:
            assert resp.headers.get("X-Frame-Number") is None


async def test_a_camera_stays_seen_elsewhere_for_longer_than_the_lease(
    framehub_cluster: FramehubCluster, live_frames: Images
) -> None:
    a, b = framehub_cluster.start(2, {"cluster": {"lease": 0.6}})
    async with aiohttp.ClientSession() as http:
        client = await connect(a, await session_id(http, a, camera="porch"))
        try:
            assert (await client.process(live_frames.encode(7)))["ok"]
            await eventually_bytes(
                http, f"{b.url}/live/porch/latest.jpg", live_frames.encode(7), "porch on B"
            )
            await asyncio.sleep(2.0)  # over three leases without a frame: the heartbeat renews
            async with http.get(f"{b.url}/live/porch/latest.jpg") as resp:
                assert await resp.read() == live_frames.encode(7)
            _, cameras = await get_json(http, f"{b.url}/live")
            assert cameras["porch"]["online"]
        finally:
            await client.disconnect()


async def test_a_camera_name_taken_over_on_another_process(
    framehub_cluster: FramehubCluster, live_frames: Images
) -> None:
    a, b = framehub_cluster.start(2)
    async with aiohttp.ClientSession() as http:
        old = await connect(a, await session_id(http, a, camera="gate"))
        new = await connect(b, await session_id(http, b, camera="gate"))
        try:
            await until(lambda: not old.sio.connected, "the session on A ended by the takeover")
            assert (await new.process(live_frames.encode(1)))["ok"]
            listed = await eventually_json(
                http,
                f"{a.url}/live",
                lambda status, body: body.get("gate", {}).get("node") == "node-1",
                "camera gate now on B, as A lists it",
            )
            assert listed["gate"]["online"]
        finally:
            await new.disconnect()
            await old.disconnect()


async def test_takeover_off_refuses_a_name_streaming_on_another_process(
    framehub_cluster: FramehubCluster,
) -> None:
    a, b = framehub_cluster.start(2, {"live": {"takeover": False}})
    async with aiohttp.ClientSession() as http:
        first = await connect(a, await session_id(http, a, camera="gate"))
        try:
            reason = await refused(b, await session_id(http, b, camera="gate"))
            assert "already streaming on node-0" in str(reason)
        finally:
            await first.disconnect()


async def test_a_batch_job_posted_to_one_process_is_read_on_the_other(
    framehub_cluster: FramehubCluster, clip_api: ClipApiFactory, tmp_path: Path, images: Images
) -> None:
    api = await clip_api("a")
    a, b = framehub_cluster.start(2, analysed_by(api.url))
    video = small_video(tmp_path, images)
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("file", video.read_bytes(), filename="clip.mp4", content_type="video/mp4")
        async with http.post(f"{a.url}/batch?wait=false", data=form) as resp:
            assert resp.status == 202, await resp.text()
            job = (await resp.json())["job"]
        body = await eventually_json(
            http,
            f"{b.url}/batch/{job}",
            lambda status, body: status == 200 and body["status"] == "done",
            "job done as B tells it",
        )
        assert "a" in body["result"]
        status, _ = await get_json(http, f"{b.url}/batch/nosuchjob")
        assert status == 404


async def test_a_job_of_a_process_that_died_is_failed_by_the_others(
    framehub_cluster: FramehubCluster, clip_api: ClipApiFactory, tmp_path: Path, images: Images
) -> None:
    api = await clip_api("a")
    api.gate.clear()  # the analysis never answers: the job stays running
    a, b = framehub_cluster.start(2, {**analysed_by(api.url), "cluster": {"lease": 1.0}})
    video = small_video(tmp_path, images)
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("file", video.read_bytes(), filename="clip.mp4", content_type="video/mp4")
        async with http.post(f"{a.url}/batch?wait=false", data=form) as resp:
            job = (await resp.json())["job"]
        await eventually_json(
            http,
            f"{b.url}/batch/{job}",
            lambda status, body: status == 200 and body["status"] == "running",
            "job running as B tells it",
        )
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        body = await eventually_json(
            http,
            f"{b.url}/batch/{job}",
            lambda status, body: body.get("status") == "failed",
            "job failed once A is silent",
        )
        assert "node-0" in body["error"] and "stopped" in body["error"]
        api.gate.set()


async def test_one_download_for_two_processes_asking_at_once(
    framehub_cluster: FramehubCluster, tar_source: TarSource, images: Images
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(f"{i:03}.jpg" for i in range(5)))
    tar_source.delay = 0.5  # both ask while the first download is still under way
    a, b = framehub_cluster.start(2, {"repositories": {"source_url": tar_source.url}})
    async with aiohttp.ClientSession() as http:
        first = await asyncio.gather(*(http.get(f"{node.url}/cam/video.jpg") for node in (a, b)))
        for resp in first:
            resp.close()
        for node in (a, b):
            await eventually_json(
                http,
                f"{node.url}/cam",
                lambda status, body: body.get("status") == "available",
                f"cam available on {node.url}",
            )
            async with http.get(f"{node.url}/cam/video.jpg") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "image/jpeg"
    assert tar_source.requests == ["cam.tar"]


async def test_redis_lost_and_back_mid_stream(
    framehub_cluster: FramehubCluster,
    redis_server: RedisServer,
    clip_api: ClipApiFactory,
    live_frames: Images,
) -> None:
    api = await clip_api("a")
    a, b = framehub_cluster.start(2, analysed_by(api.url))
    async with aiohttp.ClientSession() as http:
        client = await connect(a, await session_id(http, a, camera="yard"))
        try:
            for index in range(4):
                assert (await client.process(live_frames.encode(index)))["ok"]
            await client.until_results(1)

            redis_server.stop()
            # The session goes on: frames acked, clips analysed, results emitted.
            for index in range(4, 12):
                assert (await client.process(live_frames.encode(index)))["ok"]
            await client.until_results(3)
            # Cluster features say so clearly; local ones go on.
            async with http.get(f"{a.url}/get_session_id") as resp:
                assert resp.status == 503
                assert "Redis" in (await resp.json())["error"]
            status, ready = await get_json(http, f"{a.url}/readyz")
            assert (status, ready["redis"]) == (200, "unreachable")
            async with http.get(f"{a.url}/live/yard/latest.jpg") as resp:
                assert await resp.read() == live_frames.encode(11)
            async with http.get(f"{a.url}/metrics") as resp:
                text = await resp.text()
            assert 'framehub_cluster_redis_up{node="node-0"} 0.0' in text

            redis_server.start()  # empty: every key is gone, as after a restart
            await eventually_json(
                http,
                f"{a.url}/readyz",
                lambda status, body: body.get("redis") == "ok",
                "A sees Redis again",
            )
            for index in range(12, 16):
                assert (await client.process(live_frames.encode(index)))["ok"]
            # The camera comes back on B from A's next heartbeat, with its newest frame.
            await eventually_json(
                http,
                f"{b.url}/live",
                lambda status, body: body.get("yard", {}).get("online"),
                "camera yard listed on B again",
            )
            await eventually_bytes(
                http, f"{b.url}/live/yard/latest.jpg", live_frames.encode(15), "yard's frame on B"
            )
            sid = await session_id(http, b)
            other = await connect(a, sid)
            await other.disconnect()
        finally:
            await client.disconnect()
        errors = a.stderr().count("Redis unreachable")
        assert errors == 1, a.stderr()


def test_redis_down_at_start_is_refused_in_one_line(
    framehub_cluster: FramehubCluster, redis_server: RedisServer
) -> None:
    redis_server.stop()
    node = ServerProcess(
        framehub_cluster.root,
        {"cluster": {"redis_url": redis_server.url, "node": "lonely"}},
        {},
    )
    assert node.process.wait(30) == 1
    node.kill()
    lines = [line for line in node.stderr().splitlines() if line.startswith("framehub:")]
    assert len(lines) == 1 and "cannot reach Redis" in lines[0], node.stderr()


async def test_metrics_and_readiness_name_the_node(framehub_cluster: FramehubCluster) -> None:
    (a,) = framehub_cluster.start(1)
    async with aiohttp.ClientSession() as http:
        status, ready = await get_json(http, f"{a.url}/readyz")
        assert (status, ready["node"], ready["redis"]) == (200, "node-0", "ok")
        async with http.get(f"{a.url}/metrics") as resp:
            text = await resp.text()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all('node="node-0"' in line for line in samples)
    assert json.dumps("node-0") in json.dumps(ready)


async def test_a_node_stops_cleanly_and_leaves_the_cluster(
    framehub_cluster: FramehubCluster, live_frames: Images
) -> None:
    a, b = framehub_cluster.start(2)
    async with aiohttp.ClientSession() as http:
        client = await connect(a, await session_id(http, a, camera="shed"))
        watcher = await connect(a, watch=True)  # the Socket.IO manager's listener is running
        assert (await client.process(live_frames.encode(0)))["ok"]
        await eventually_json(
            http,
            f"{b.url}/live",
            lambda status, body: body.get("shed", {}).get("online"),
            "shed listed on B",
        )
        await client.disconnect()
        await watcher.disconnect()
        assert a.stop() == 0
        assert "Task was destroyed" not in a.stderr() and "Traceback" not in a.stderr()
        # Gone with its node: B lists none of A's cameras.
        await eventually_json(
            http, f"{b.url}/live", lambda status, body: "shed" not in body, "shed gone from B"
        )


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_single_process_needs_nothing_of_the_cluster() -> None:
    done = run_python(
        "import sys\n"
        "sys.modules['redis'] = None  # as without framehub[cluster]\n"
        "from server.app import create_app\n"
        "from server.settings import Settings\n"
        "create_app(Settings())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'server'))\n"
    )
    assert done.returncode == 0, done.stderr
    assert "server.app" in done.stdout and "server.cluster" not in done.stdout


def test_redis_url_without_the_extra_installed_is_one_clear_line() -> None:
    done = run_python(
        "import sys\n"
        "sys.modules['redis'] = None  # as if framehub[cluster] were not installed\n"
        "from server.app import create_app\n"
        "from server.settings import ClusterSettings, Settings, SettingsError\n"
        "try:\n"
        "    create_app(Settings(cluster=ClusterSettings(redis_url='redis://127.0.0.1:1/0')))\n"
        "except SettingsError as exc:\n"
        "    print(exc)\n"
    )
    assert "pip install 'framehub[cluster]'" in done.stdout, done.stdout + done.stderr
