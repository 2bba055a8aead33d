"""Route groups under the API token: with ``[server] api_token`` set, exactly the groups listed in
``[server] public`` are open, walked over every route of the real router.

Each route is asked for with a concrete path (its variables filled in) through a real test client
of the app from ``create_app``; "needs the token" means a 401 without it and anything else with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from server.settings import SettingsError, settings_from_mapping

if TYPE_CHECKING:
    from apps import Framehub, FramehubClient, SettingsFactory
    from common import Images

TOKEN = "a-token-for-the-tests"
SOCKETIO = "/socket.io/"
# What each path variable is filled with.
VARIABLES = {
    "repo": "cam",
    "name": "gate",
    "index": "0",
    "job": "nojob",
    "kind": "summary",
    "path": "style.css",
}
# The open routes of the default [server] public, by route pattern.
CLOSED_BY_DEFAULT = {"/get_session_id", "/options", "/analyze/{kind}", "/batch", "/batch/{job}"}


def routes(client: FramehubClient) -> list[tuple[str, str, str]]:
    """``(pattern, method, path)`` of every route but Socket.IO's, its variables filled in."""
    found = []
    assert client.app is not None
    for resource in client.app.router.resources():
        pattern = resource.canonical
        if pattern == SOCKETIO:
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: VARIABLES[m.group(1)], pattern)
        for method in sorted({route.method for route in resource} - {"HEAD", "OPTIONS"}):
            found.append((pattern, method, path))
    return found


async def status_of(
    client: FramehubClient, method: str, path: str, token: str | None = None
) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # Streams (MJPEG, events) answer 200 and go on: the status is all that is read.
    async with client.request(method, path, headers=headers, allow_redirects=False) as resp:
        return resp.status


async def app_with(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, **server: Any
) -> FramehubClient:
    settings = make_settings(server={"api_token": TOKEN, **server})
    images.folder(settings.repositories_dir / "cam", ["a.jpg"])
    return await framehub.client(settings)


async def test_with_public_empty_every_route_but_healthz_needs_the_token(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await app_with(framehub, make_settings, images, public=[])
    walked = routes(client)
    assert len(walked) > 20  # the walk saw the whole router
    for pattern, method, path in walked:
        without = await status_of(client, method, path)
        if pattern == "/healthz":
            assert without == 200
            continue
        assert without == 401, (method, path)
        assert await status_of(client, method, path, TOKEN) != 401, (method, path)


async def test_the_default_public_groups_are_exactly_the_open_ones(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await app_with(framehub, make_settings, images)
    for pattern, method, path in routes(client):
        status = await status_of(client, method, path)
        if pattern in CLOSED_BY_DEFAULT:
            assert status == 401, (method, path)
            assert await status_of(client, method, path, TOKEN) != 401, (method, path)
        else:  # camera, live, ui, metrics, health
            assert status != 401, (method, path)


async def test_without_a_token_everything_is_open(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    settings = make_settings(server={"public": []})
    images.folder(settings.repositories_dir / "cam", ["a.jpg"])
    client = await framehub.client(settings)
    for _, method, path in routes(client):
        assert await status_of(client, method, path) != 401, (method, path)


async def test_a_group_made_public_opens_its_routes(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await app_with(framehub, make_settings, images, public=["ingest"])
    assert await status_of(client, "GET", "/get_session_id") == 200
    assert await status_of(client, "GET", "/cam/video.jpg") == 401
    assert await status_of(client, "GET", "/ui/") == 401


def test_an_unknown_group_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(SettingsError, match=r"server\.public must be a list of route groups among"):
        settings_from_mapping({"server": {"public": ["camera", "admin"]}}, base_dir=Path("."))


def test_the_former_live_public_key_says_where_it_went() -> None:
    with pytest.raises(SettingsError, match=r'live\.public is now the group "live" in \[server\]'):
        settings_from_mapping({"live": {"public": False}}, base_dir=Path("."))
