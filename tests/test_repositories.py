"""The repository store: folders, natural order, changes on disk, downloads and their failures.

Downloads come from a real archive server on a loopback port (``tar_source``); a failed download
must say why, leave nothing on disk and be retried only after the backoff.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from server.names import is_valid_repository_name, natural_key
from server.store.frame_cache import FrameCache, FrameKey

if TYPE_CHECKING:
    from apps import Framehub, FramehubClient, SettingsFactory
    from common import Images
    from fakes import TarSource

FRAMES = ["frame-1.jpg", "frame-2.jpg", "frame-10.jpg"]


async def get_json(client: FramehubClient, path: str) -> tuple[int, Any]:
    async with client.get(path) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


def tree(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


# ---- names, order, cache --------------------------------------------------------------------


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["frame-10.jpg", "frame-2.jpg", "Frame-1.jpg", "frame-2a.jpg", "a.jpg", "frame-02b.jpg"]
    assert sorted(names, key=natural_key) == [
        "a.jpg",
        "Frame-1.jpg",
        "frame-2.jpg",
        "frame-2a.jpg",
        "frame-02b.jpg",
        "frame-10.jpg",
    ]
    assert sorted(["img9", "img10", "img100", "img11"], key=natural_key) == [
        "img9",
        "img10",
        "img11",
        "img100",
    ]


@pytest.mark.parametrize("name", ["demo", "cam-2.left", "A", "x" * 64, "0_a"])
def test_valid_repository_names(name: str) -> None:
    assert is_valid_repository_name(name)


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".hidden", "-x", "a/b", "a\\b", "a\x00", "x" * 65, "caf\u00e9", "a b"]
)
def test_invalid_repository_names(name: str) -> None:
    assert not is_valid_repository_name(name)


def test_frame_cache_evicts_least_recently_used() -> None:
    cache = FrameCache(max_bytes=30, max_frame_bytes=20)
    keys = [FrameKey(f"/f{i}.jpg", 10, 1) for i in range(4)]
    for key in keys[:3]:
        cache.put(key, b"x" * 10)
    assert (len(cache), cache.size) == (3, 30)
    assert cache.get(keys[0]) == b"x" * 10  # now the most recently used

    cache.put(keys[3], b"y" * 10)

    assert cache.get(keys[1]) is None  # the least recently used went
    assert cache.get(keys[0]) is not None
    assert cache.get(keys[2]) is not None
    assert cache.get(keys[3]) == b"y" * 10
    assert (len(cache), cache.size) == (3, 30)


def test_frame_cache_keeps_only_small_frames() -> None:
    cache = FrameCache(max_bytes=100, max_frame_bytes=20)
    big = FrameKey("/big.jpg", 21, 1)
    assert not cache.accepts(big)
    assert not cache.accepts(FrameKey("/empty.jpg", 0, 1))
    cache.put(big, b"z" * 21)
    assert cache.get(big) is None
    assert (len(cache), cache.size) == (0, 0)


def test_frame_cache_tells_versions_apart() -> None:
    cache = FrameCache(max_bytes=100, max_frame_bytes=100)
    cache.put(FrameKey("/a.jpg", 3, 1), b"old")
    assert cache.get(FrameKey("/a.jpg", 3, 2)) is None
    assert cache.get(FrameKey("/a.jpg", 3, 1)) == b"old"


def test_frame_cache_budget_never_above_total() -> None:
    cache = FrameCache(max_bytes=10, max_frame_bytes=50)
    assert cache.max_frame_bytes == 10
    cache.put(FrameKey("/a.jpg", 11, 1), b"a" * 11)
    assert len(cache) == 0


# ---- folders --------------------------------------------------------------------------------


async def test_folder_lists_images_in_natural_order(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    settings = make_settings()
    folder = images.folder(
        settings.repositories_dir / "cam", ["frame-10.jpg", "frame-2.PNG", "frame-1.jpeg", "x.webp"]
    )
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(images.encode())
    images.folder(folder / "sub", ["frame-0.jpg"])
    (settings.repositories_dir / "not a name").mkdir()
    client = await framehub.client(settings)

    status, info = await get_json(client, "/cam")

    assert status == 200
    assert info["images"] == ["frame-1.jpeg", "frame-2.PNG", "frame-10.jpg", "x.webp"]
    status, listing = await get_json(client, "/")
    assert listing == {"cam": {"count": 4, "progress": 1.0, "status": "available"}}


async def test_images_added_and_removed_show_up_without_restart(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    settings = make_settings(repositories={"rescan_interval": 0})
    folder = images.folder(settings.repositories_dir / "cam", FRAMES)
    client = await framehub.client(settings)
    assert (await get_json(client, "/cam"))[1]["count"] == 3

    (folder / "frame-3.jpg").write_bytes(images.encode(3))
    _, info = await get_json(client, "/cam")
    assert info["images"] == ["frame-1.jpg", "frame-2.jpg", "frame-3.jpg", "frame-10.jpg"]

    (folder / "frame-1.jpg").unlink()
    (folder / "frame-2.jpg").unlink()
    _, info = await get_json(client, "/cam")
    assert info["images"] == ["frame-3.jpg", "frame-10.jpg"]
    async with client.get("/cam/video.jpg") as resp:
        assert resp.headers["X-Frame-Name"] == "frame-3.jpg"


async def test_new_and_removed_folders_show_up_without_restart(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    settings = make_settings(repositories={"rescan_interval": 0})
    images.folder(settings.repositories_dir / "cam", FRAMES)
    client = await framehub.client(settings)
    assert list((await get_json(client, "/"))[1]) == ["cam"]

    images.folder(settings.repositories_dir / "other", ["a.png"])
    assert list((await get_json(client, "/"))[1]) == ["cam", "other"]

    for path in (settings.repositories_dir / "cam").iterdir():
        path.unlink()
    (settings.repositories_dir / "cam").rmdir()
    assert list((await get_json(client, "/"))[1]) == ["other"]
    status, info = await get_json(client, "/cam")
    assert status == 404
    assert "cam" in info["error"]


async def test_folder_is_not_listed_per_request(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    settings = make_settings(repositories={"rescan_interval": 3600})
    folder = images.folder(settings.repositories_dir / "cam", FRAMES)
    client = await framehub.client(settings)
    assert (await get_json(client, "/cam"))[1]["count"] == 3

    (folder / "frame-3.jpg").write_bytes(images.encode(3))

    assert (await get_json(client, "/cam"))[1]["count"] == 3


async def test_leftover_work_folder_is_removed_at_start(
    framehub: Framehub, make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    leftover = settings.repositories_dir / ".incoming" / "cam-1-abc"
    leftover.mkdir(parents=True)
    (leftover / "archive").write_bytes(b"half an archive")

    client = await framehub.client(settings)

    assert not (settings.repositories_dir / ".incoming").exists()
    assert (await get_json(client, "/"))[1] == {}


# ---- names that must never reach the disk or the source -------------------------------------

TRAVERSALS = [
    "/..",
    "/%2e%2e",
    "/%2E%2E/video.jpg",
    "/../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/.hidden",
    "/.hidden/video.jpg",
    "/.incoming",
    "/%00",
    "/cam%00/video.jpg",
    "/cam%00.jpg/frames/0",
    "/a%2F..%2F..%2Fetc",
    "/%2e%2e%2fetc/video.mjpg",
    "/" + "x" * 65,
]


async def raw_get(client: FramehubClient, target: str) -> tuple[int, bytes]:
    """Send ``GET target`` exactly as written (no client-side clean-up of the path)."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("target", TRAVERSALS)
async def test_bad_names_never_reach_disk_or_source(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    tar_source: TarSource,
    tmp_path: Path,
    target: str,
) -> None:
    settings = make_settings(repositories={"source_url": tar_source.url})
    images.folder(settings.repositories_dir / "cam", FRAMES)
    images.folder(tmp_path / "etc", ["passwd.jpg"])
    client = await framehub.client(settings)
    before = tree(tmp_path)

    status, body = await raw_get(client, target)

    assert status in (400, 404)
    assert "error" in json.loads(body)
    assert tar_source.requests == []
    assert tree(tmp_path) == before


# ---- downloads ------------------------------------------------------------------------------


async def test_download_on_first_request(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))
    settings = make_settings(repositories={"source_url": tar_source.url})
    client = await framehub.client(settings)

    info = await framehub.settled(client, "cam")

    assert info == {"count": 3, "progress": 1.0, "status": "available", "images": FRAMES}
    assert tar_source.requests == ["cam.tar"]
    incoming = settings.repositories_dir / ".incoming"
    assert not incoming.exists() or not any(incoming.iterdir())
    async with client.get("/cam/video.jpg") as resp:
        assert resp.headers["X-Frame-Name"] == "frame-1.jpg"
        assert await resp.read() == images.for_name("frame-1.jpg", 0)


async def test_concurrent_requests_share_one_download(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))
    tar_source.delay = 0.2
    client = await framehub.client(make_settings(repositories={"source_url": tar_source.url}))

    async def fetch(path: str) -> int:
        async with client.get(path) as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(
        *(fetch("/cam" if i % 2 else "/cam/video.jpg") for i in range(20))
    )

    assert statuses == [200] * 20
    assert (await framehub.settled(client, "cam"))["status"] == "available"
    assert tar_source.requests == ["cam.tar"]


async def test_initial_repositories_download_at_start(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))
    settings = make_settings(repositories={"source_url": tar_source.url, "initial": ["cam"]})
    client = await framehub.client(settings)

    await framehub.until((settings.repositories_dir / "cam").exists, "cam downloaded")

    assert tar_source.requests == ["cam.tar"]
    assert (await framehub.settled(client, "cam"))["count"] == 3


@pytest.mark.parametrize("chunked", [False, True], ids=["with-length", "chunked"])
async def test_progress_while_downloading(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    tar_source: TarSource,
    chunked: bool,
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))
    tar_source.chunked = chunked
    gate = tar_source.gate("cam.tar")
    client = await framehub.client(make_settings(repositories={"source_url": tar_source.url}))

    async with asyncio.timeout(5):  # until half the archive has arrived
        while True:
            info = (await get_json(client, "/cam"))[1]
            if info["progress"] or (chunked and tar_source.requests):
                break
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    info = (await get_json(client, "/cam"))[1]

    assert info["status"] == "preparing"
    if chunked:
        assert info["progress"] is None
    else:
        assert 0 < info["progress"] < 1
    assert (await get_json(client, "/"))[1]["cam"]["status"] == "preparing"
    for path in ("/cam/video.jpg", "/cam/frames/0"):
        async with client.get(path) as resp:
            assert resp.status == 200
            assert resp.headers["X-Placeholder"] == "true"
    gate.set()
    assert (await framehub.settled(client, "cam"))["progress"] == 1.0


async def test_source_404(
    framehub: Framehub, make_settings: SettingsFactory, tar_source: TarSource
) -> None:
    settings = make_settings(repositories={"source_url": tar_source.url})
    client = await framehub.client(settings)

    info = await framehub.settled(client, "cam")

    assert info["status"] == "failed"
    assert "HTTP 404" in info["error"]
    assert "cam.tar" in info["error"]
    assert tar_source.requests == ["cam.tar", "cam.tar.gz"]
    framehub.assert_nothing_left(settings, "cam")
    async with client.get("/cam/video.jpg") as resp:
        assert resp.status == 200
        assert resp.headers["X-Placeholder"] == "true"


async def test_source_refuses_connections(
    framehub: Framehub, make_settings: SettingsFactory, refused_url: str
) -> None:
    settings = make_settings(repositories={"source_url": refused_url})
    client = await framehub.client(settings)

    await framehub.failed(client, settings, "cam", "cannot connect")


async def test_source_times_out(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))
    tar_source.delay = 3.0
    settings = make_settings(
        repositories={"source_url": tar_source.url, "read_timeout": 0.3, "connect_timeout": 1}
    )
    client = await framehub.client(settings)
    started = time.monotonic()

    await framehub.failed(client, settings, "cam", "timed out", seconds=2.5)
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("chunked", [False, True], ids=["with-length", "chunked"])
async def test_archive_over_download_limit(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    tar_source: TarSource,
    chunked: bool,
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))
    tar_source.chunked = chunked
    settings = make_settings(
        repositories={"source_url": tar_source.url, "max_download_bytes": 2000}
    )
    client = await framehub.client(settings)

    await framehub.failed(client, settings, "cam", "max_download_bytes")


async def test_failed_download_waits_for_the_backoff(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    settings = make_settings(repositories={"source_url": tar_source.url, "retry_backoff": 3600})
    client = await framehub.client(settings)
    assert (await framehub.settled(client, "cam"))["status"] == "failed"
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))

    for path in ("/cam", "/cam/video.jpg", "/cam", "/"):
        async with client.get(path) as resp:
            assert resp.status == 200
    await asyncio.sleep(0.1)

    assert tar_source.requests == ["cam.tar", "cam.tar.gz"]
    assert (await get_json(client, "/cam"))[1]["status"] == "failed"


async def test_failed_download_is_retried_after_the_backoff(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    settings = make_settings(repositories={"source_url": tar_source.url, "retry_backoff": 0.2})
    client = await framehub.client(settings)
    assert (await framehub.settled(client, "cam"))["status"] == "failed"
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))

    assert (await get_json(client, "/cam"))[1]["status"] == "failed"  # within the backoff
    assert tar_source.requests == ["cam.tar", "cam.tar.gz"]
    await asyncio.sleep(0.3)

    info = await framehub.settled(client, "cam")

    assert info["status"] == "available"
    assert info["images"] == FRAMES
    assert "error" not in info
    assert tar_source.requests == ["cam.tar", "cam.tar.gz", "cam.tar"]


async def test_failed_retries_each_clean_up(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    bad = images.tar([*images.members(FRAMES), ("../x.jpg", images.encode())])
    tar_source.archives["cam.tar"] = bad
    settings = make_settings(repositories={"source_url": tar_source.url, "retry_backoff": 0.05})
    client = await framehub.client(settings)

    for attempt in range(1, 4):
        if attempt > 1:
            await asyncio.sleep(0.05 * 2**attempt / 2)  # past the backoff, doubled each failure
        await framehub.failed(client, settings, "cam", "escapes")
        assert len(tar_source.requests) == attempt


async def test_shutdown_during_download_leaves_nothing(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))
    gate = tar_source.gate("cam.tar")
    settings = make_settings(repositories={"source_url": tar_source.url})
    client = await framehub.client(settings)
    assert (await get_json(client, "/cam"))[1]["status"] == "preparing"
    await framehub.until(lambda: tar_source.requests, "the source is asked")

    await client.close()
    gate.set()

    framehub.assert_nothing_left(settings, "cam")
    assert not (settings.repositories_dir / ".incoming").exists()
