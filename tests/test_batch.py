"""Batch analysis over HTTP: uploads streamed to disk, probed, fanned out, queued and recovered.

Everything is a real part: videos are written with PyAV into a temp folder (``common``), framehub
comes from ``create_app`` behind a test server, and each analysis API is a ``fakes.ClipApi`` on a
loopback port that keeps what it receives (the tests compare its digest with the uploaded file's)
and decodes it with PyAV. Clients that break off or send malformed requests talk over raw sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from common import Images, until, write_video
from server.app import create_app
from server.batch.jobs import Job
from server.batch.queue import NOT_STARTED, RESTARTED, STOPPED
from server.client.send import send_batch
from server.errors import InsufficientStorage
from server.media.probe import NOT_A_VIDEO
from server.web.bodies import copy_to_file

if TYPE_CHECKING:
    from apps import Framehub, FramehubClient, SettingsFactory
    from fakes import ClipApi, ClipApiFactory

SIZE = (160, 120)
FPS = 25
SECONDS = 2
TIMEOUT = 10.0
SMALL_LIMIT = 256 << 10


class Videos:
    """Test videos written with PyAV into one folder, each made once per test session."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def moving(
        self, name: str, seed: int = 0, size: tuple[int, int] = SIZE, faststart: bool = False
    ) -> Path:
        """An H.264 MP4 of SECONDS seconds: a square moving over a background of colour ``seed``."""
        path = self.folder / name
        if path.exists():
            return path
        background = Images.colour(seed)
        pictures = (
            Images.square((index * 3) % (size[0] - 20), size, background=background)
            for index in range(SECONDS * FPS)
        )
        return write_video(path, pictures, size=size, fps=FPS, faststart=faststart)

    def noisy(self, name: str = "noisy.mp4", frames: int = 75) -> Path:
        """An MJPEG MP4 of random pixels, a few MB: large enough to stream in many chunks."""
        path = self.folder / name
        if path.exists():
            return path
        size = (320, 240)
        pictures = (Images.noise(size) for _ in range(frames))
        return write_video(
            path, pictures, size=size, fps=FPS, codec="mjpeg", pix_fmt="yuvj420p", quality=2
        )

    def truncated(self, faststart: bool) -> Path:
        """The first half of an MP4, index at the front (faststart) or at the end."""
        whole = self.moving(f"whole-{faststart}.mp4", faststart=faststart)
        path = self.folder / f"truncated-{faststart}.mp4"
        data = whole.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def received(api: ClipApi) -> list[str]:
    """The digests of the files ``api`` received, in arrival order."""
    return [sha256(clip.data) for clip in api.clips]


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Videos:
    return Videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture
async def apis(clip_api: ClipApiFactory) -> dict[str, ClipApi]:
    """Two analysis APIs, ``a`` and ``b``, on loopback ports."""
    return {name: await clip_api(name) for name in ("a", "b")}


BatchFactory = Callable[..., Awaitable["FramehubClient"]]


@pytest.fixture
def batch_app(
    apis: dict[str, ClipApi], framehub: Framehub, make_settings: SettingsFactory
) -> BatchFactory:
    """``await batch_app(batch={...}, processors={...})``: framehub with the APIs as processors.

    ``apis`` comes first so that its servers stop last: framehub's jobs end before their APIs go.
    """

    async def make(**tables: dict[str, Any]) -> FramehubClient:
        processors = {name: {"url": api.url, "retries": 0} for name, api in apis.items()}
        tables.setdefault("processors", processors)
        return await framehub.client(make_settings(**tables))

    return make


def uploads(client: FramehubClient) -> list[Path]:
    return sorted((state_dir(client) / "uploads").iterdir())


def state_dir(client: FramehubClient) -> Path:
    from server.keys import settings_key

    return client.app[settings_key].server.state_dir


async def post_video(
    client: FramehubClient,
    path: Path,
    query: str = "",
    raw: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST ``path``, streamed from disk, to /batch as multipart (default) or as a raw body."""
    headers = dict(headers or {})
    file = await asyncio.to_thread(path.open, "rb")
    try:
        if raw:
            body: Any = file
            headers.setdefault("Content-Type", "video/mp4")
        else:
            body = aiohttp.FormData()
            body.add_field("file", file, filename=path.name, content_type="video/mp4")
        async with client.post(f"/batch{query}", data=body, headers=headers) as resp:
            return resp.status, await resp.json()
    finally:
        file.close()


async def job_until(client: FramehubClient, job: str, statuses: set[str]) -> dict[str, Any]:
    """``GET /batch/{job}`` until its status is one of ``statuses``."""
    state: dict[str, Any] = {}
    async with asyncio.timeout(TIMEOUT):
        while state.get("status") not in statuses:
            async with client.get(f"/batch/{job}") as resp:
                assert resp.status == 200, await resp.text()
                state = await resp.json()
            await asyncio.sleep(0.02)
    return state


async def raw_request(
    client: TestClient[Any, Any], head: list[str], body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a socket to framehub and send a request head (and ``body``) as they are."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(("\r\n".join([*head, "", ""])).encode() + body)
    await writer.drain()
    return reader, writer


async def status_line(reader: asyncio.StreamReader) -> str:
    async with asyncio.timeout(TIMEOUT):
        return (await reader.readline()).decode().strip()


async def test_multipart_upload_goes_to_every_processor(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos
) -> None:
    video = videos.moving("sample.mp4")
    client = await batch_app()
    status, answer = await post_video(client, video)
    assert status == 200, answer
    assert answer["video"] == {
        "duration": 2.0,
        "frames": SECONDS * FPS,
        "width": SIZE[0],
        "height": SIZE[1],
        "codec": "h264",
        "bytes": video.stat().st_size,
    }
    assert set(answer["result"]) == {"a", "b"}
    for name, api in apis.items():
        result = answer["result"][name]
        assert result["api"] == name
        assert result["frames"] == SECONDS * FPS
        assert result["filename"] == "sample.mp4"
        (clip,) = api.clips
        assert (clip.field, clip.content_type) == ("file", "video/mp4")
        assert sha256(clip.data) == sha256(video.read_bytes())
    assert uploads(client) == []


async def test_raw_body_is_streamed_whole(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos
) -> None:
    video = videos.noisy()
    assert video.stat().st_size > 3 << 20  # many chunks of both the upload and the fan-out
    client = await batch_app()
    status, answer = await post_video(client, video, raw=True)
    assert status == 200, answer
    assert answer["video"]["codec"] == "mjpeg"
    for name, api in apis.items():
        assert received(api) == [sha256(video.read_bytes())]
        assert answer["result"][name]["frames"] == 75
        assert answer["result"][name]["filename"] == "video.mp4"
    assert uploads(client) == []


async def test_processes_chooses_the_processors(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos
) -> None:
    client = await batch_app()
    status, answer = await post_video(client, videos.moving("sample.mp4"), "?processes=b")
    assert status == 200, answer
    assert list(answer["result"]) == ["b"]
    assert apis["a"].clips == []


async def test_unknown_processor_is_refused_before_the_body(
    batch_app: BatchFactory, apis: dict[str, ClipApi]
) -> None:
    client = await batch_app()
    # Only the head: an answer proves the body was never waited for.
    head = [
        "POST /batch?processes=a,nope HTTP/1.1",
        "Host: framehub",
        "Content-Type: video/mp4",
        "Content-Length: 1000000",
    ]
    reader, writer = await raw_request(client, head)
    assert await status_line(reader) == "HTTP/1.1 400 Bad Request"
    writer.close()
    status, answer = await post_video(client, Path(__file__), "?processes=nope", raw=True)
    assert status == 400
    assert answer["error"] == "unknown processor 'nope'; known processors: a, b"
    status, answer = await post_video(client, Path(__file__), "?processes=", raw=True)
    assert status == 400
    assert "at least one processor" in answer["error"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello, this is text and not a video\n" * 100, NOT_A_VIDEO),
        (b"", NOT_A_VIDEO),
    ],
)
async def test_not_a_video_is_rejected(
    batch_app: BatchFactory,
    apis: dict[str, ClipApi],
    tmp_path: Path,
    content: bytes,
    reason: str,
) -> None:
    path = tmp_path / "notes.mp4"
    path.write_bytes(content)
    client = await batch_app()
    status, answer = await post_video(client, path)
    assert (status, answer) == (422, {"error": reason})
    assert apis["a"].clips == []
    assert uploads(client) == []


async def test_image_is_not_a_video(
    batch_app: BatchFactory, apis: dict[str, ClipApi], tmp_path: Path
) -> None:
    path = tmp_path / "still.jpg"
    path.write_bytes(Images.encode(0, size=SIZE))
    client = await batch_app()
    status, answer = await post_video(client, path)
    assert (status, answer["error"]) == (422, NOT_A_VIDEO)


@pytest.mark.parametrize(
    ("faststart", "reason"),
    [
        (False, NOT_A_VIDEO),  # the index (moov) at the end is lost
        (True, "the file is truncated: its index lists 50 video frames but only"),
    ],
)
async def test_truncated_mp4_is_rejected(
    batch_app: BatchFactory,
    apis: dict[str, ClipApi],
    videos: Videos,
    faststart: bool,
    reason: str,
) -> None:
    client = await batch_app()
    status, answer = await post_video(client, videos.truncated(faststart))
    assert status == 422
    assert answer["error"].startswith(reason)
    assert apis["a"].clips == []
    assert uploads(client) == []


async def test_limits_of_duration_and_pixels(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos
) -> None:
    video = videos.moving("sample.mp4")
    client = await batch_app(batch={"max_duration": 1.5})
    status, answer = await post_video(client, video)
    assert (status, answer["error"]) == (
        422,
        "the video lasts 2.0 s, over [batch] max_duration (1.5 s)",
    )
    client = await batch_app(batch={"max_pixels": 100 * 100})
    status, answer = await post_video(client, video)
    assert (status, answer["error"]) == (
        422,
        "frames of 160x120 pixels are over [batch] max_pixels (10000 pixels)",
    )
    assert apis["a"].clips == []


async def test_probe_that_takes_too_long_is_stopped(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos
) -> None:
    client = await batch_app(batch={"probe_timeout": 0.001})
    status, answer = await post_video(client, videos.moving("sample.mp4"))
    assert status == 422
    assert answer["error"] == "checking the video took longer than [batch] probe_timeout (0.001 s)"
    assert uploads(client) == []


async def test_declared_length_over_max_bytes_is_refused_before_the_body(
    batch_app: BatchFactory,
) -> None:
    client = await batch_app(batch={"max_bytes": SMALL_LIMIT})
    for content_type in ("video/mp4", "multipart/form-data; boundary=x"):
        head = [
            "POST /batch HTTP/1.1",
            "Host: framehub",
            f"Content-Type: {content_type}",
            f"Content-Length: {SMALL_LIMIT * 4}",
        ]
        reader, writer = await raw_request(client, head)
        assert await status_line(reader) == "HTTP/1.1 413 Request Entity Too Large"
        writer.close()
    assert uploads(client) == []


async def test_expect_continue_only_for_an_upload_that_is_taken(
    batch_app: BatchFactory, videos: Videos
) -> None:
    client = await batch_app(batch={"max_bytes": SMALL_LIMIT})
    too_large = [
        "POST /batch HTTP/1.1",
        "Host: framehub",
        "Content-Type: video/mp4",
        f"Content-Length: {SMALL_LIMIT + 1}",
        "Expect: 100-continue",
    ]
    reader, writer = await raw_request(client, too_large)
    assert await status_line(reader) == "HTTP/1.1 413 Request Entity Too Large"
    writer.close()
    data = videos.moving("sample.mp4").read_bytes()
    taken = [*too_large[:3], f"Content-Length: {len(data)}", "Expect: 100-continue"]
    reader, writer = await raw_request(
        client, [taken[0].replace("/batch", "/batch?wait=false"), *taken[1:]]
    )
    assert await status_line(reader) == "HTTP/1.1 100 Continue"
    await reader.readline()
    writer.write(data)
    assert await status_line(reader) == "HTTP/1.1 202 Accepted"
    writer.close()


async def test_chunked_body_over_max_bytes_is_cut_off(
    batch_app: BatchFactory, apis: dict[str, ClipApi]
) -> None:
    client = await batch_app(batch={"max_bytes": SMALL_LIMIT})
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(4 * SMALL_LIMIT // (16 << 10)):
            sent += 16 << 10
            yield bytes(16 << 10)

    async with client.post("/batch", data=body(), headers={"Content-Type": "video/mp4"}) as resp:
        assert resp.status == 413
        assert await resp.json() == {
            "error": f"the upload is over the {SMALL_LIMIT}-byte limit ([batch] max_bytes)"
        }
    assert uploads(client) == []
    assert apis["a"].clips == []


async def test_client_gone_mid_upload_leaves_no_file(
    batch_app: BatchFactory, videos: Videos
) -> None:
    client = await batch_app()
    data = videos.noisy().read_bytes()
    head = [
        "POST /batch HTTP/1.1",
        "Host: framehub",
        "Content-Type: video/mp4",
        f"Content-Length: {len(data)}",
    ]
    _reader, writer = await raw_request(client, head, data[: len(data) // 2])
    await until(lambda: uploads(client), "receiving the upload", TIMEOUT)
    writer.close()
    await writer.wait_closed()
    await until(lambda: uploads(client) == [], "removing the partial upload", TIMEOUT)


async def test_stop_mid_upload_leaves_no_file(
    aiohttp_client: AiohttpClient, make_settings: SettingsFactory, videos: Videos
) -> None:
    # The stop gives the upload in flight what is left of [server] shutdown_timeout, then aiohttp
    # closes its connection.
    settings = make_settings(server={"shutdown_timeout": 0.5})
    server = TestServer(create_app(settings))
    await server.start_server(shutdown_timeout=0.2)
    client: TestClient[Any, Any] = await aiohttp_client(server)
    data = videos.noisy().read_bytes()
    head = [
        "POST /batch HTTP/1.1",
        "Host: framehub",
        "Content-Type: video/mp4",
        f"Content-Length: {len(data)}",
    ]
    folder = settings.server.state_dir / "uploads"
    _reader, writer = await raw_request(client, head, data[: len(data) // 2])
    await until(lambda: any(folder.iterdir()), "receiving the upload", TIMEOUT)
    await client.close()
    assert list(folder.iterdir()) == []
    writer.close()


async def test_an_api_down_does_not_hold_back_the_others(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos, refused_url: str
) -> None:
    processors = {
        "a": {"url": apis["a"].url, "retries": 0},
        "down": {"url": refused_url, "retries": 0},
    }
    client = await batch_app(processors=processors)
    video = videos.moving("sample.mp4")
    status, answer = await post_video(client, video)
    assert status == 200, answer
    assert answer["result"]["a"]["filename"] == "sample.mp4"
    assert received(apis["a"]) == [sha256(video.read_bytes())]
    down = answer["result"]["down"]
    assert down["status"] is None
    assert down["error"].startswith("cannot connect")
    assert uploads(client) == []


async def test_jobs_wait_in_order_beyond_concurrency(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos
) -> None:
    client = await batch_app(batch={"concurrency": 1}, processors={"a": {"url": apis["a"].url}})
    apis["a"].gate.clear()
    files = [videos.moving(f"job-{index}.mp4", seed=index) for index in range(3)]
    jobs = []
    for path in files:
        status, answer = await post_video(client, path, "?wait=false")
        assert status == 202, answer
        assert answer["status"] == "queued"
        jobs.append(answer["job"])
    first = await job_until(client, jobs[0], {"running"})
    assert "position" not in first
    for position, job in enumerate(jobs[1:], start=1):
        state = await job_until(client, job, {"queued"})
        assert state["position"] == position
        assert state["video"]["frames"] == SECONDS * FPS
    assert len(uploads(client)) == 3
    apis["a"].gate.set()
    finished = [await job_until(client, job, {"done", "failed"}) for job in jobs]
    assert [state["status"] for state in finished] == ["done"] * 3
    assert [state["result"]["a"]["filename"] for state in finished] == [p.name for p in files]
    # First in, first out.
    assert received(apis["a"]) == [sha256(path.read_bytes()) for path in files]
    starts = [state["started"] for state in finished]
    assert starts == sorted(starts)
    assert uploads(client) == []


async def test_full_queue_is_refused(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos
) -> None:
    client = await batch_app(
        batch={"concurrency": 1, "max_queued": 1}, processors={"a": {"url": apis["a"].url}}
    )
    apis["a"].gate.clear()
    video = videos.moving("sample.mp4")
    running, queued = [(await post_video(client, video, "?wait=false"))[1]["job"] for _ in "12"]
    await job_until(client, running, {"running"})
    status, answer = await post_video(client, video, "?wait=false")
    assert status == 503
    assert "([batch] max_queued)" in answer["error"]
    assert len(uploads(client)) == 2  # the refused upload is gone
    apis["a"].gate.set()
    await job_until(client, queued, {"done"})


async def test_wait_false_and_wait_true_give_the_same_result(
    batch_app: BatchFactory, videos: Videos
) -> None:
    client = await batch_app()
    video = videos.moving("sample.mp4")
    status, waited = await post_video(client, video)
    assert status == 200
    form = aiohttp.FormData()
    form.add_field("file", await asyncio.to_thread(video.read_bytes), filename="sample.mp4")
    async with client.post("/batch?wait=false&processes=a,b", data=form) as resp:
        assert resp.status == 202
        queued = await resp.json()
        assert resp.headers["Location"] == f"/batch/{queued['job']}"
    state = await job_until(client, queued["job"], {"done"})
    assert state["result"] == waited["result"]
    assert state["video"] == waited["video"]
    assert state["processes"] == ["a", "b"]
    async with client.get(f"/batch/{waited['job']}") as resp:
        assert (await resp.json())["status"] == "done"


async def test_metrics_count_uploads_and_jobs(batch_app: BatchFactory, videos: Videos) -> None:
    client = await batch_app()
    video, not_video = videos.moving("sample.mp4"), Path(__file__)
    status, answer = await post_video(client, video)
    assert status == 200, answer
    status, _ = await post_video(client, not_video, raw=True)
    assert status == 422
    async with client.get("/metrics") as resp:
        text = await resp.text()
    size = answer["video"]["bytes"] + len(await asyncio.to_thread(not_video.read_bytes))
    assert 'framehub_batch_uploads_total{outcome="accepted"} 1.0' in text
    assert 'framehub_batch_uploads_total{outcome="422"} 1.0' in text
    assert f"framehub_batch_upload_bytes_total {float(size)}" in text
    assert 'framehub_batch_jobs{status="done"} 1.0' in text
    assert 'framehub_batch_jobs{status="queued"} 0.0' in text


async def test_unknown_job_and_bad_requests(batch_app: BatchFactory) -> None:
    client = await batch_app()
    async with client.get("/batch/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"].startswith("no batch job 'nope'")
    async with client.post("/batch", data=b"x", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
        assert "multipart/form-data in the field 'file'" in (await resp.json())["error"]
    for content_type in ("multipart/form-data", "multipart/form-data; boundary=zz"):
        headers = {"Content-Type": content_type}
        async with client.post("/batch", data=b"no boundary here", headers=headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"].startswith("malformed multipart body")
    form = aiohttp.FormData()
    form.add_field("video", b"x", filename="x.mp4")
    async with client.post("/batch", data=form) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"].startswith("no field 'file' in the multipart body")
    async with client.post(
        "/batch?wait=maybe", data=b"x", headers={"Content-Type": "video/mp4"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "wait must be true or false, not 'maybe'"


async def test_api_token_is_required(batch_app: BatchFactory, videos: Videos) -> None:
    client = await batch_app(server={"api_token": "s3cret"})
    video = videos.moving("sample.mp4")
    status, answer = await post_video(client, video)
    assert status == 401
    assert "s3cret" not in answer["error"]
    async with client.get("/batch/anything") as resp:
        assert resp.status == 401
    auth = {"Authorization": "Bearer s3cret"}
    status, answer = await post_video(client, video, "?wait=false", headers=auth)
    assert status == 202
    async with client.get(f"/batch/{answer['job']}", headers=auth) as resp:
        assert resp.status == 200


async def test_restart_fails_the_jobs_left_unfinished(
    batch_app: BatchFactory, make_settings: SettingsFactory
) -> None:
    # The state a server killed mid-job leaves behind, written with the server's own Job class.
    state = make_settings().server.state_dir
    (state / "jobs").mkdir(parents=True)
    (state / "uploads").mkdir()
    left = {}
    for status in ("queued", "running"):
        upload = state / "uploads" / f"upload-{status}.part"
        upload.write_bytes(b"partial video")
        job = Job(
            id=f"job-{status}",
            status=status,
            submitted_at=time.time() - 5,
            processes=["a"],
            video={"frames": 1},
            filename="video.mp4",
            content_type="video/mp4",
            upload=str(upload),
            started_at=time.time() - 1 if status == "running" else None,
        )
        (state / "jobs" / f"{job.id}.json").write_text(json.dumps(job.to_json()))
        left[status] = job.id
    client = await batch_app()
    for job_id in left.values():
        async with client.get(f"/batch/{job_id}") as resp:
            answer = await resp.json()
        assert answer["status"] == "failed"
        assert answer["error"] == RESTARTED
        saved = json.loads((state / "jobs" / f"{job_id}.json").read_text())
        assert (saved["status"], saved["upload"]) == ("failed", None)
    assert uploads(client) == []


async def test_stop_mid_job_fails_it_and_a_new_app_says_so(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos
) -> None:
    client = await batch_app(
        server={"shutdown_timeout": 0.2},
        batch={"concurrency": 1},
        processors={"a": {"url": apis["a"].url}},
    )
    apis["a"].gate.clear()
    video = videos.moving("sample.mp4")
    running, queued = [(await post_video(client, video, "?wait=false"))[1]["job"] for _ in "12"]
    await job_until(client, running, {"running"})
    await client.close()
    assert uploads(client) == []
    again = await batch_app(server={"shutdown_timeout": 0.2})
    async with again.get(f"/batch/{running}") as resp:
        assert (await resp.json())["error"] == STOPPED
    async with again.get(f"/batch/{queued}") as resp:
        assert (await resp.json())["error"] == NOT_STARTED


async def test_finished_jobs_are_kept_for_keep_seconds(
    batch_app: BatchFactory, videos: Videos
) -> None:
    client = await batch_app(batch={"keep": 0.3})
    status, answer = await post_video(client, videos.moving("sample.mp4"))
    assert status == 200
    async with client.get(f"/batch/{answer['job']}") as resp:
        assert resp.status == 200
    await asyncio.sleep(0.4)
    async with client.get(f"/batch/{answer['job']}") as resp:
        assert resp.status == 404
    assert list((state_dir(client) / "jobs").iterdir()) == []


async def test_disk_full_is_insufficient_storage() -> None:
    chunks = [b"x" * 4096] * 3

    async def read(_size: int) -> bytes:
        return chunks.pop() if chunks else b""

    # /dev/full fails every write with ENOSPC, as a full disk does.
    with (
        open("/dev/full", "wb", buffering=0) as full,  # noqa: ASYNC230
        pytest.raises(InsufficientStorage, match="no disk space left"),
    ):
        await copy_to_file(read, full, 1 << 20, lambda: AssertionError("not over the limit"))


async def test_framehub_send_batch(
    batch_app: BatchFactory, apis: dict[str, ClipApi], videos: Videos
) -> None:
    client = await batch_app()
    video = videos.noisy()
    progress = io.StringIO()
    server = str(client.make_url("/"))
    status, answer = await send_batch(video, server, processes=["b"], progress_out=progress)
    assert status == 200, answer
    assert answer["result"]["b"]["frames"] == 75
    assert received(apis["b"]) == [sha256(video.read_bytes())]
    last = progress.getvalue().split("\r")[-1]
    assert last.startswith("[" + "#" * 30 + "] 100% ")
    assert last.endswith(" MB/s\n")
    status, answer = await send_batch(video, server, wait=False)
    assert (status, answer["status"]) == (202, "queued")
    status, answer = await send_batch(video, server, processes=["nope"])
    assert status == 400
