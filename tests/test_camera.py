"""The virtual camera over HTTP: per-client cursors in cookies, placeholders, frames, MJPEG.

Every client is a real aiohttp client with its own cookie jar, talking to the app from
``create_app`` on a loopback port.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet
from PIL import Image
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

from server.app import COOKIE_NAME, create_app
from server.keys import placeholder_key
from server.media.images import DEMO_SIZE
from server.web.mjpeg import MJPEG_BOUNDARY

if TYPE_CHECKING:
    from apps import Framehub, FramehubClient, SettingsFactory
    from common import Images
    from fakes import TarSource

FRAMES = ["frame-1.jpg", "frame-2.jpg", "frame-10.jpg"]  # natural order


async def camera(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    names: list[str] = FRAMES,
    **tables: dict[str, Any],
) -> FramehubClient:
    """A client of an app serving repository ``cam`` made of ``names`` (written in reverse)."""
    settings = make_settings(**tables)
    images.folder(settings.repositories_dir / "cam", reversed(names))
    return await framehub.client(settings)


def written(images: Images, name: str, names: list[str] = FRAMES) -> bytes:
    """The bytes ``camera()`` wrote for frame ``name``."""
    return images.for_name(name, len(names) - 1 - names.index(name))


async def next_frame(client: TestClient[Any, Any], repo: str = "cam") -> str:
    """Ask for the next frame of ``repo``; the name of the frame served."""
    async with client.get(f"/{repo}/video.jpg") as resp:
        assert resp.status == 200
        await resp.read()
        return resp.headers["X-Frame-Name"]


def decoded(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def assert_placeholder(resp: aiohttp.ClientResponse, body: bytes) -> None:
    assert resp.status == 200
    assert resp.content_type == "image/jpeg"
    assert resp.headers["X-Placeholder"] == "true"
    assert resp.headers["Cache-Control"] == "no-store"
    image = decoded(body)
    assert image.format == "JPEG"
    assert image.size == DEMO_SIZE


# ---- next frame and cursors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "camera_settings",
    [{}, {"cache_bytes": 0}, {"cache_max_frame_bytes": 10}],
    ids=["cached", "no-cache", "sendfile"],
)
async def test_next_frame_in_natural_order_wrapping(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    camera_settings: dict[str, Any],
) -> None:
    client = await camera(framehub, make_settings, images, camera=camera_settings)
    served = []
    for _ in range(7):
        async with client.get("/cam/video.jpg") as resp:
            assert resp.status == 200
            assert resp.content_type == "image/jpeg"
            assert resp.headers["Cache-Control"] == "no-store"
            assert "X-Placeholder" not in resp.headers
            name = resp.headers["X-Frame-Name"]
            assert await resp.read() == written(images, name)
            served.append(name)

    assert served == [*FRAMES, *FRAMES, FRAMES[0]]


async def test_cursor_cookie_is_http_only_and_lax(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)
    async with client.get("/cam/video.jpg") as resp:
        cookie = resp.cookies[COOKIE_NAME]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    assert not cookie["secure"]  # plain HTTP; tests/test_tls.py has the HTTPS cookie
    assert cookie["path"] == "/"
    assert int(cookie["max-age"]) == make_settings().camera.cursor_max_age
    assert "cursors" not in cookie.value  # encrypted, not readable


async def test_quoted_cookie_from_an_older_answer_still_moves_the_cursor(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)
    async with client.get("/cam/video.jpg") as resp:
        token = resp.cookies[COOKIE_NAME].value
        assert resp.headers["X-Frame-Name"] == FRAMES[0]
    client.session.cookie_jar.clear()
    headers = {"Cookie": f'other=1; {COOKIE_NAME}="{token}"; more=2'}
    async with client.get("/cam/video.jpg", headers=headers) as resp:
        assert resp.headers["X-Frame-Name"] == FRAMES[1]


async def test_clients_with_separate_jars_have_separate_cursors(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    aiohttp_client: AiohttpClient,
) -> None:
    alice = await camera(framehub, make_settings, images)
    bob: TestClient[web.Request, None] = await aiohttp_client(alice.server)  # a jar of its own

    assert [await next_frame(alice) for _ in range(2)] == FRAMES[:2]
    assert await next_frame(bob) == FRAMES[0]
    assert await next_frame(alice) == FRAMES[2]
    assert await next_frame(bob) == FRAMES[1]


async def test_each_repository_has_its_own_cursor(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    settings = make_settings()
    images.folder(settings.repositories_dir / "cam", FRAMES)
    images.folder(settings.repositories_dir / "door", ["a.jpg", "b.jpg"])
    client = await framehub.client(settings)

    served = [await next_frame(client, repo) for repo in ("cam", "door", "cam", "door", "door")]

    assert served == ["frame-1.jpg", "a.jpg", "frame-2.jpg", "b.jpg", "a.jpg"]


async def test_cookie_keeps_only_recent_repositories(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    settings = make_settings()
    repos = [f"repository-number-{i:02d}" for i in range(20)]
    for repo in repos:
        images.folder(settings.repositories_dir / repo, ["a.jpg", "b.jpg"])
    client = await framehub.client(settings)

    for repo in repos:
        assert await next_frame(client, repo) == "a.jpg"

    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE_NAME]
    assert len(cookie.value) < 2048
    assert await next_frame(client, repos[-1]) == "b.jpg"  # recent: kept
    assert await next_frame(client, repos[0]) == "a.jpg"  # oldest: dropped, starts over


async def test_cursor_survives_restart_with_the_same_state(
    aiohttp_server: AiohttpServer, make_settings: SettingsFactory, images: Images
) -> None:
    settings = make_settings()
    images.folder(settings.repositories_dir / "cam", FRAMES)
    jar = aiohttp.CookieJar(unsafe=True)  # a browser's jar, kept while the server restarts

    async def frame_from(server_url: URL, browser: aiohttp.ClientSession) -> str:
        async with browser.get(server_url / "cam" / "video.jpg") as resp:
            assert resp.status == 200
            return resp.headers["X-Frame-Name"]

    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        first = await aiohttp_server(create_app(settings))
        assert [await frame_from(first.make_url("/"), browser) for _ in range(2)] == FRAMES[:2]
        await first.close()

        second = await aiohttp_server(create_app(settings))
        assert await frame_from(second.make_url("/"), browser) == FRAMES[2]
        await second.close()

        # Another state dir means another cookie key: the cookie no longer opens, start over.
        elsewhere = make_settings(
            server={"state_dir": "other-state"},
            repositories={"dir": str(settings.repositories_dir)},
        )
        third = await aiohttp_server(create_app(elsewhere))
        assert await frame_from(third.make_url("/"), browser) == FRAMES[0]


def _token(key: str, cursors: dict[str, Any], at: float) -> str:
    data = json.dumps({"created": int(at), "session": {"cursors": cursors}}).encode()
    return Fernet(key).encrypt_at_time(data, int(at)).decode()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("valid", "frame-10.jpg"),  # control: a well-made cookie is honoured
        ("garbage", "frame-1.jpg"),
        ("other-key", "frame-1.jpg"),
        ("expired", "frame-1.jpg"),
        ("tampered", "frame-1.jpg"),
        ("non-ascii", "frame-1.jpg"),
        ("cursor-not-a-number", "frame-1.jpg"),
        ("cursor-huge", "frame-1.jpg"),  # beyond what framehub writes: dropped
    ],
)
async def test_forged_or_old_cookie_starts_at_frame_zero(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    kind: str,
    expected: str,
) -> None:
    key = Fernet.generate_key().decode()
    client = await camera(framehub, make_settings, images, server={"secret_key": key})
    now = time.time()
    valid = _token(key, {"cam": 2}, now)
    cookie = {
        "valid": valid,
        "garbage": "not-a-cookie",
        "other-key": _token(Fernet.generate_key().decode(), {"cam": 2}, now),
        "expired": _token(key, {"cam": 2}, now - 31 * 86400),
        "tampered": valid[:-6] + ("AAAAAA" if not valid.endswith("AAAAAA") else "BBBBBB"),
        "non-ascii": "caf\u00e9-\u2603",
        "cursor-not-a-number": _token(key, {"cam": "2"}, now),
        "cursor-huge": _token(key, {"cam": 3 * 10**30 + 1}, now),
    }[kind]
    client.session.cookie_jar.update_cookies({COOKIE_NAME: cookie}, client.make_url("/"))

    assert await next_frame(client) == expected
    assert await next_frame(client) != expected  # and the cursor moves on from there


# ---- placeholders and descriptions ----------------------------------------------------------


async def test_placeholder_for_a_missing_repository(
    framehub: Framehub, make_settings: SettingsFactory
) -> None:
    client = await framehub.client(make_settings())

    async with client.get("/nothing/video.jpg") as resp:
        assert_placeholder(resp, await resp.read())
    assert "X-Frame-Name" not in resp.headers
    async with client.get("/") as resp:
        assert await resp.json() == {}


async def test_placeholder_for_an_empty_repository(
    framehub: Framehub, make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    (settings.repositories_dir / "empty").mkdir(parents=True)
    client = await framehub.client(settings)

    async with client.get("/empty/video.jpg") as resp:
        assert_placeholder(resp, await resp.read())


async def test_placeholder_while_downloading(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))
    gate = tar_source.gate("cam.tar")
    client = await framehub.client(make_settings(repositories={"source_url": tar_source.url}))

    async with client.get("/cam/video.jpg") as resp:
        assert_placeholder(resp, await resp.read())
    gate.set()
    await framehub.settled(client, "cam")

    assert await next_frame(client) == FRAMES[0]


async def test_listing_and_description_shapes(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)

    async with client.get("/") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {"cam": {"count": 3, "progress": 1.0, "status": "available"}}
    async with client.get("/cam") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {
            "count": 3,
            "progress": 1.0,
            "status": "available",
            "images": FRAMES,
        }


async def test_unknown_repository_without_source_is_404(
    framehub: Framehub, make_settings: SettingsFactory
) -> None:
    client = await framehub.client(make_settings())

    for path in ("/nothing", "/nothing/frames/0", "/nothing/video.mjpg"):
        async with client.get(path) as resp:
            assert resp.status == 404
            assert resp.content_type == "application/json"
            assert "nothing" in (await resp.json())["error"]
    assert not (make_settings().repositories_dir / "nothing").exists()


async def test_other_mistakes_answer_json(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)

    async with client.post("/cam/video.jpg") as resp:
        assert resp.status == 405
        assert "error" in await resp.json()
    async with client.get("/cam/frames/0/more") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()


async def test_frames_keep_their_content_type(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    names = ["a.png", "b.webp", "c.JPEG"]
    client = await camera(framehub, make_settings, images, names=names)

    for expected_type, expected_format in (
        ("image/png", "PNG"),
        ("image/webp", "WEBP"),
        ("image/jpeg", "JPEG"),
    ):
        async with client.get("/cam/video.jpg") as resp:
            assert resp.content_type == expected_type
            assert decoded(await resp.read()).format == expected_format


# ---- frames by index ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "status"),
    [
        ("0", 200),
        ("2", 200),
        ("002", 200),
        ("3", 404),
        ("99999999999", 404),
        ("abc", 400),
        ("-1", 400),
        ("1.5", 400),
        ("%C2%B2", 400),  # superscript two
        ("%D9%A1", 400),  # Arabic-Indic one
        ("1" * 5000, 400),
    ],
)
async def test_frame_by_index(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, index: str, status: int
) -> None:
    client = await camera(framehub, make_settings, images)

    async with client.get(URL(f"/cam/frames/{index}", encoded=True)) as resp:
        assert resp.status == status
        body = await resp.read()
    if status == 200:
        name = FRAMES[int(index)]
        assert resp.headers["X-Frame-Name"] == name
        assert body == written(images, name)
    else:
        assert resp.content_type == "application/json"
        assert json.loads(body)["error"]


async def test_frame_by_index_does_not_move_the_cursor(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)
    async with client.get("/cam/frames/2") as resp:
        assert resp.status == 200
    assert await next_frame(client) == FRAMES[0]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "application/json"),
        ("/cam", "application/json"),
        ("/cam/video.jpg", "image/jpeg"),
        ("/cam/frames/1", "image/jpeg"),
        ("/nothing/video.jpg", "image/jpeg"),
        ("/cam/video.mjpg", "multipart/x-mixed-replace"),
    ],
)
async def test_head_works_where_get_does(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    path: str,
    content_type: str,
) -> None:
    client = await camera(framehub, make_settings, images)

    async with client.head(path) as resp:
        assert resp.status == 200
        assert resp.content_type == content_type
        assert await resp.read() == b""


async def test_head_of_video_jpg_takes_no_frame(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)
    assert await next_frame(client) == FRAMES[0]
    for _ in range(3):
        async with client.head("/cam/video.jpg") as resp:
            assert resp.status == 200
            assert resp.headers["X-Frame-Name"] == FRAMES[1]  # the frame a GET would get
    assert await next_frame(client) == FRAMES[1]
    async with client.get("/metrics") as resp:
        text = await resp.text()
    assert 'framehub_camera_frames_served_total{endpoint="video.jpg"} 2.0' in text


# ---- MJPEG ----------------------------------------------------------------------------------


async def read_part(stream: aiohttp.StreamReader) -> tuple[dict[str, str], bytes]:
    """One part of a ``multipart/x-mixed-replace`` stream: its headers and body."""
    async with asyncio.timeout(5):
        assert await stream.readline() == f"--{MJPEG_BOUNDARY}\r\n".encode()
        headers = {}
        while (line := await stream.readline()) != b"\r\n":
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        body = await stream.readexactly(int(headers["content-length"]))
        assert await stream.readexactly(2) == b"\r\n"
    return headers, body


async def test_mjpeg_stream_sends_frames_in_order(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)

    async with client.get("/cam/video.mjpg?fps=30") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == (
            f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}"
        )
        assert resp.headers["Cache-Control"] == "no-store"
        parts = [await read_part(resp.content) for _ in range(4)]

    for (headers, body), name in zip(parts, [*FRAMES, FRAMES[0]], strict=True):
        assert headers["content-type"] == "image/jpeg"
        assert body == written(images, name)
        assert decoded(body).size == images.size


async def test_mjpeg_stream_shows_placeholder_until_available(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, tar_source: TarSource
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(FRAMES))
    gate = tar_source.gate("cam.tar")
    client = await framehub.client(make_settings(repositories={"source_url": tar_source.url}))

    async with client.get("/cam/video.mjpg?fps=30") as resp:
        _, body = await read_part(resp.content)
        assert decoded(body).size == DEMO_SIZE
        gate.set()
        for _ in range(100):
            _, body = await read_part(resp.content)
            if body != client.app[placeholder_key]:
                break
    assert body == images.for_name(FRAMES[0], 0)


@pytest.mark.parametrize("fps", ["31", "1000", "0", "-1", "abc", "nan", "inf", ""])
async def test_mjpeg_fps_outside_limits_is_400(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, fps: str
) -> None:
    client = await camera(framehub, make_settings, images, camera={"mjpeg_max_fps": 30})

    async with client.get(f"/cam/video.mjpg?fps={fps}") as resp:
        assert resp.status == 400
        assert "fps" in (await resp.json())["error"]


async def test_server_stays_healthy_when_mjpeg_viewer_leaves(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="server.handlers.camera")
    settings = make_settings()
    images.folder(settings.repositories_dir / "cam", FRAMES)
    # A runner as web.run_app makes one (no handler cancellation), unlike the test server.
    runner = web.AppRunner(create_app(settings), shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = URL(f"http://127.0.0.1:{runner.addresses[0][1]}")
        async with aiohttp.ClientSession() as viewer:
            resp = await viewer.get(base / "cam" / "video.mjpg", params={"fps": "20"})
            await read_part(resp.content)
            await read_part(resp.content)
            resp.close()  # the viewer leaves mid-stream

            await framehub.until(lambda: "viewer of cam left" in caplog.text, "stream ended")
            async with viewer.get(base / "cam" / "video.jpg") as after:
                assert after.status == 200
                assert after.headers["X-Frame-Name"] == FRAMES[0]
    finally:
        await runner.cleanup()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---- the demo repository --------------------------------------------------------------------


async def test_demo_repository_is_created_once(
    framehub: Framehub, make_settings: SettingsFactory
) -> None:
    settings = make_settings(repositories={"create_demo": True, "demo_frames": 5})
    client = await framehub.client(settings)

    async with client.get("/") as resp:
        assert await resp.json() == {"demo": {"count": 5, "progress": 1.0, "status": "available"}}
    bodies = []
    for _ in range(5):
        async with client.get("/demo/video.jpg") as resp:
            assert resp.content_type == "image/jpeg"
            bodies.append(await resp.read())
    assert len(set(bodies)) == 5
    assert all(decoded(body).size == DEMO_SIZE for body in bodies)
    assert not any((settings.repositories_dir / ".incoming").glob("*"))

    first_frame = settings.repositories_dir / "demo" / "frame-0.jpg"
    made_at = first_frame.stat().st_mtime_ns
    await client.close()
    await framehub.client(settings)
    assert first_frame.stat().st_mtime_ns == made_at


async def test_the_placeholder_is_drawn_once_and_kept_in_the_state_dir(
    framehub: Framehub, make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    first = await framehub.client(settings)
    async with first.get("/nothing-here/video.jpg") as resp:
        drawn = await resp.read()
    stored = list(settings.server.state_dir.glob("placeholder-*.jpg"))
    assert len(stored) == 1 and stored[0].read_bytes() == drawn
    # A later start serves what is stored; a damaged file is drawn anew.
    stored[0].write_bytes(drawn[: len(drawn) // 2])
    second = await framehub.client(settings)
    async with second.get("/nothing-here/video.jpg") as resp:
        assert await resp.read() == drawn
    assert stored[0].read_bytes() == drawn
