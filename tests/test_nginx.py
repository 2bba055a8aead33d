"""framehub behind a real nginx running ``deploy/nginx.conf``, two processes on one Redis.

The conf is the shipped file with only its ``EDIT`` lines replaced (``cluster.nginx_conf``). Through
it: Socket.IO clients over websocket and over polling only (polling needs every request of a
session on one process: the conf's stickiness), each with an id from ``GET /get_session_id``
(which may come from the other process), streaming frames and getting acks and results; a
``POST /batch`` that reaches framehub while the client is still sending (``proxy_request_buffering
off``); ``video.jpg`` spread over both processes with the cursor cookie carrying on, and an MJPEG
stream.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apps import ServerProcess
from cluster import NGINX, NGINX_CONF, FramehubCluster, Nginx, connect_remote, nginx_conf
from common import LIVE_TIMEOUT, Images, LiveFrames, until, write_video

NginxFactory = Callable[[Sequence[ServerProcess]], Nginx]
FRAMES_PER_CLIP = 4
SUMMARY: dict[str, dict[str, Any]] = {"processors.summary": {"builtin": "summary"}}
# nginx's address, so framehub takes the client from X-Forwarded-For.
BEHIND_NGINX: dict[str, dict[str, Any]] = {
    "server": {"trusted_proxies": ["127.0.0.1"]},
    "clips": {"frames": FRAMES_PER_CLIP},
    # A camera clock this slow shows frame 0 to a cookieless client throughout the test.
    "camera": {"fps": 0.001},
    **SUMMARY,
}
REPOSITORY = "cam"
REPOSITORY_FRAMES = 10
VIDEO_FRAMES = 10
VIDEO_SIZE = (320, 240)
_FRAMES_SERVED = re.compile(
    r'^framehub_camera_frames_served_total\{[^}]*endpoint="video\.jpg"[^}]*\} (\S+)$', re.MULTILINE
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client with a cookie jar that keeps cookies of 127.0.0.1 too."""
    timeout = aiohttp.ClientTimeout(total=LIVE_TIMEOUT)
    async with aiohttp.ClientSession(
        timeout=timeout, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as session:
        yield session


@pytest.fixture
def behind_nginx(framehub_cluster: FramehubCluster, nginx_proxy: NginxFactory) -> Nginx:
    """Two framehub processes with a repository ``cam`` and the summary analysis, behind nginx."""
    Images.folder(
        framehub_cluster.repositories / REPOSITORY,
        [f"frame-{index}.jpg" for index in range(REPOSITORY_FRAMES)],
    )
    nodes = framehub_cluster.start(2, BEHIND_NGINX)
    return nginx_proxy(nodes)


@pytest.mark.skipif(not NGINX.exists(), reason=f"{NGINX} is missing (Debian package nginx-light)")
def test_the_shipped_conf_passes_nginx_t_with_its_edit_lines_replaced(tmp_path: Path) -> None:
    proxy = Nginx(tmp_path / "nginx", ["127.0.0.1:17466", "127.0.0.1:17467", "127.0.0.1:17468"])

    done = proxy.test_conf()

    assert done.returncode == 0, done.stdout + done.stderr
    conf = proxy.conf.read_text()
    assert conf.count("server 127.0.0.1:1746") == 3
    assert f"listen 127.0.0.1:{proxy.port};" in conf


def test_conf_without_its_marks_is_refused() -> None:
    unmarked = NGINX_CONF.read_text().replace("# EDIT", "#")

    with pytest.raises(ValueError, match="EDIT"):
        nginx_conf(unmarked, ["127.0.0.1:1"], "127.0.0.1:2")


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=lambda t: t[0])
async def test_socketio_session_streams_frames_through_nginx(
    behind_nginx: Nginx,
    http: aiohttp.ClientSession,
    live_frames: LiveFrames,
    transports: list[str],
) -> None:
    client = await connect_remote(http, behind_nginx.url, transports)
    try:
        assert client.sio.transport() == transports[0]
        acks = [await client.process(live_frames.encode(index)) for index in range(FRAMES_PER_CLIP)]
        assert [(ack["ok"], ack["frame"]) for ack in acks] == [
            (True, index) for index in range(FRAMES_PER_CLIP)
        ]
        (result,) = await client.until_results(1)
        assert result["clip"]["frames"] == FRAMES_PER_CLIP
        assert result["result"]["summary"]["frames"] == FRAMES_PER_CLIP
        # Polling went on all along (a poll per ping at least) on the process that holds the
        # session: a request sent to the other one would have ended the session.
        assert client.sio.connected
    finally:
        await client.disconnect()


async def test_batch_upload_reaches_framehub_while_the_client_still_sends(
    framehub_cluster: FramehubCluster,
    behind_nginx: Nginx,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    # Noise, so that the video is large (about 400 kB): far more than nginx's buffers hold.
    pictures = (Images.noise(VIDEO_SIZE) for _ in range(VIDEO_FRAMES))
    video = write_video(tmp_path / "noise.mp4", pictures, size=VIDEO_SIZE, fps=10).read_bytes()
    half = len(video) // 2
    uploads = [framehub_cluster.state_dir(index) / "uploads" for index in range(2)]

    def upload_started() -> bool:
        return any(any(folder.glob("upload-*.part")) for folder in uploads)

    async def body() -> AsyncIterator[bytes]:
        yield video[:half]
        # framehub's upload file exists once its handler reads the body. An nginx buffering the
        # request would not even connect to framehub before the last byte: this wait would fail.
        await until(
            upload_started, "framehub receiving the upload while it is being sent", LIVE_TIMEOUT
        )
        yield video[half:]

    headers = {"Content-Type": "video/mp4", "Content-Length": str(len(video))}
    # The probe and the analysis after the upload, on a busy machine, may take a while.
    slow = aiohttp.ClientTimeout(total=3 * LIVE_TIMEOUT)
    url = f"{behind_nginx.url}/batch"
    async with http.post(url, data=body(), headers=headers, timeout=slow) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["result"]["summary"]["frames"] == VIDEO_FRAMES
    assert answer["video"]["bytes"] == len(video)
    # The job record is shared: either process answers for it.
    for node in framehub_cluster.nodes:
        async with http.get(f"{node.url}/batch/{answer['job']}") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["status"] == "done"


async def test_video_jpg_is_spread_over_both_processes_with_one_cursor(
    framehub_cluster: FramehubCluster, behind_nginx: Nginx, http: aiohttp.ClientSession
) -> None:
    numbers = []
    for _ in range(6):
        async with http.get(f"{behind_nginx.url}/{REPOSITORY}/video.jpg") as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"] == "image/jpeg"
            assert "X-Placeholder" not in resp.headers
            numbers.append(int(resp.headers["X-Frame-Number"]))
            await resp.read()

    # The cookie written by one process is read by the other: one cursor, frame after frame.
    assert numbers == list(range(6))
    served = [await frames_served(http, node) for node in framehub_cluster.nodes]
    assert sum(served) == 6
    assert min(served) >= 1, served


async def test_video_jpg_of_a_client_id_stays_on_the_process_keeping_its_cursor(
    behind_nginx: Nginx,
) -> None:
    numbers = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as cookieless:
        for _ in range(4):
            url = f"{behind_nginx.url}/{REPOSITORY}/video.jpg?client=lobby"
            async with cookieless.get(url) as resp:
                assert resp.status == 200, await resp.text()
                numbers.append(int(resp.headers["X-Frame-Number"]))

    # Spread over two processes, each with a cursor of its own, it would read 0, 0, 1, 1.
    assert numbers == [0, 1, 2, 3]


async def test_mjpeg_stream_flows_through_nginx(
    behind_nginx: Nginx, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{behind_nginx.url}/{REPOSITORY}/video.mjpg?fps=20") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        received = b""
        while received.count(b"\xff\xd8") < 3:
            received += await resp.content.readany()


async def frames_served(http: aiohttp.ClientSession, node: ServerProcess) -> int:
    """The ``video.jpg`` frames ``node`` served, from its ``/metrics``."""
    async with http.get(f"{node.url}/metrics") as resp:
        found = _FRAMES_SERVED.search(await resp.text())
    return int(float(found[1])) if found else 0
