"""Cursors of the virtual camera for every kind of client: a cookie, a ``?client=`` id, neither.

Clients are real aiohttp clients talking to the app from ``create_app``; "cookieless" ones clear
their jar before every request, as an ``<img>`` on another site or ``curl`` without a jar do.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from apps import Framehub, FramehubClient, SettingsFactory
    from common import Images

FRAMES = [f"frame-{i}.jpg" for i in range(6)]


async def camera(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, **camera: Any
) -> FramehubClient:
    """A client of an app serving repository ``cam`` of :data:`FRAMES`."""
    settings = make_settings(camera=camera)
    images.folder(settings.repositories_dir / "cam", FRAMES)
    return await framehub.client(settings)


async def frame_number(
    client: FramehubClient, query: str = "", keep_cookie: bool = True, method: str = "GET"
) -> int:
    """The ``X-Frame-Number`` of one ``video.jpg`` answer (checked against ``X-Frame-Name``)."""
    if not keep_cookie:
        client.session.cookie_jar.clear()
    async with client.request(method, f"/cam/video.jpg{query}") as resp:
        assert resp.status == 200, await resp.text()
        number = int(resp.headers["X-Frame-Number"])
        assert resp.headers["X-Frame-Name"] == FRAMES[number]
        return number


async def test_a_client_id_walks_the_frames_in_order_from_zero(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images, fps=50)
    served = [await frame_number(client, "?client=lobby", keep_cookie=False) for _ in range(8)]
    assert served == [0, 1, 2, 3, 4, 5, 0, 1]
    # A new id starts at 0, and the first keeps its place.
    assert await frame_number(client, "?client=door.2", keep_cookie=False) == 0
    assert await frame_number(client, "?client=lobby", keep_cookie=False) == 2


async def test_a_client_id_wins_over_the_cookie(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)
    assert [await frame_number(client) for _ in range(3)] == [0, 1, 2]  # the cookie's cursor
    assert await frame_number(client, "?client=kiosk") == 0
    assert await frame_number(client, "?client=kiosk") == 1
    assert await frame_number(client) == 3  # the cookie's cursor did not move meanwhile


@pytest.mark.parametrize(
    "client_id", ["", "a" * 65, "two words", "caf\u00e9", "x/y", "%2e%2e"], ids=repr
)
async def test_a_bad_client_id_is_400_naming_the_rule(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, client_id: str
) -> None:
    client = await camera(framehub, make_settings, images)
    async with client.get("/cam/video.jpg", params={"client": client_id}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert "client must be 1 to 64 letters, digits, '.', '_' or '-'" in error
    assert await frame_number(client, "?client=fine") == 0  # and the server goes on


async def test_the_oldest_client_ids_are_forgotten_beyond_max_clients(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images, max_clients=2)
    for name in ("a", "b"):
        assert await frame_number(client, f"?client={name}") == 0
    assert await frame_number(client, "?client=a") == 1  # "a" is now the most recent
    assert await frame_number(client, "?client=c") == 0  # a third: "b" is forgotten
    assert await frame_number(client, "?client=a") == 2
    assert await frame_number(client, "?client=b") == 0  # starts over


async def test_cookieless_requests_see_the_camera_playing_at_fps(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    fps = 20.0
    client = await camera(framehub, make_settings, images, fps=fps)
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, int]] = []
    for _ in range(12):
        seen.append((loop.time(), await frame_number(client, keep_cookie=False)))
        await asyncio.sleep(1 / fps)
    numbers = [number for _, number in seen]
    assert len(set(numbers)) >= 4, numbers  # a moving camera, not frame 0 on every reload
    # Between two reloads the camera moved by the time elapsed x fps (give or take one frame).
    (start, first), (end, last) = seen[0], seen[-1]
    moved = (last - first) % len(FRAMES)
    expected = (end - start) * fps % len(FRAMES)
    assert min(abs(moved - expected), len(FRAMES) - abs(moved - expected)) <= 1.5, seen


async def test_cookieless_clients_at_one_moment_see_the_same_frame(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images, fps=0.001)
    assert {await frame_number(client, keep_cookie=False) for _ in range(5)} == {0}


async def test_a_client_keeping_the_cookie_goes_on_from_the_frame_playing_now(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images, fps=40)
    await asyncio.sleep(0.1)  # the camera has moved past frame 0
    first = await frame_number(client)
    served = [await frame_number(client) for _ in range(7)]
    assert served == [(first + step) % len(FRAMES) for step in range(1, 8)]


async def test_head_takes_no_frame_in_any_mode(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)
    assert await frame_number(client, "?client=k", method="HEAD") == 0
    assert await frame_number(client, "?client=k") == 0
    assert await frame_number(client, "?client=k", method="HEAD") == 1
    assert await frame_number(client) == 0
    assert await frame_number(client, method="HEAD") == 1
    assert await frame_number(client) == 1


async def test_a_cross_origin_fetch_may_read_the_frame_headers(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    settings = make_settings(server={"cors_allowed_origins": ["http://dash.example"]})
    images.folder(settings.repositories_dir / "cam", FRAMES)
    client = await framehub.client(settings)
    headers = {"Origin": "http://dash.example"}
    async with client.get("/cam/video.jpg?client=d", headers=headers) as resp:
        exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert resp.headers["Access-Control-Allow-Origin"] == "http://dash.example"
    assert {"X-Placeholder", "X-Frame-Name", "X-Frame-Number", "Location"} <= exposed
    async with client.get("/cam/video.jpg", headers={"Origin": "http://elsewhere"}) as resp:
        assert "Access-Control-Expose-Headers" not in resp.headers
