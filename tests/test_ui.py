"""The pages' routes (``server.handlers.ui``) over HTTP: the pages, their own modules and style
sheet, socket.io-client from ``node_modules``, each with its type and caching, and nothing else of
the folder or outside it. What the pages do is for ``test_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from apps import Framehub, FramehubClient, SettingsFactory
from server.handlers import ui

UI_DIR = Path(ui.__file__).resolve().parent.parent / "ui"
OWN_ASSETS = sorted(
    path.name for pattern in ("*.js", "*.css", "*.svg") for path in UI_DIR.glob(pattern)
)
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# What pages and modules load: <script src>, <link href>, and relative ES module imports.
_REFERENCE = re.compile(r'(?:src|href)="([\w./-]+\.(?:js|css|svg))"|from "\./([\w.-]+\.js)"')


async def get_raw(client: FramehubClient, target: str) -> int:
    """The status of ``GET target`` sent byte for byte as given (no client-side normalising)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status_line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.fixture
async def client(framehub: Framehub, make_settings: SettingsFactory) -> FramehubClient:
    return await framehub.client(make_settings())


@pytest.mark.parametrize(
    ("path", "title"), [("/ui/", "framehub dashboard"), ("/ui/camera", "framehub camera")]
)
async def test_pages_are_served_for_revalidation_with_their_policy(
    client: FramehubClient, path: str, title: str
) -> None:
    async with client.get(path) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert f"<title>{title}</title>" in await resp.text()
        etag = resp.headers["ETag"]
    async with client.get(path, headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    async with client.head(path) as resp:
        assert resp.status == 200


async def test_ui_without_a_slash_redirects_to_the_dashboard(client: FramehubClient) -> None:
    async with client.get("/ui", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/ui/"


@pytest.mark.parametrize("name", OWN_ASSETS)
async def test_every_module_style_sheet_and_icon_is_served_with_its_type(
    client: FramehubClient, name: str
) -> None:
    expected = TYPES[Path(name).suffix]
    async with client.get(f"/ui/{name}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == f"{expected}; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert await resp.read() == (UI_DIR / name).read_bytes()


async def test_everything_the_pages_load_is_served(client: FramehubClient) -> None:
    files = ["index.html", "camera.html", *OWN_ASSETS]
    referenced = {
        name
        for file in files
        for match in _REFERENCE.finditer((UI_DIR / file).read_text())
        for name in match.groups()
        if name
    }
    assert {"dashboard.js", "camera.js", "style.css", "favicon.svg", "socket.js"} <= referenced
    for name in sorted(referenced):
        async with client.get(f"/ui/{name}") as resp:
            assert resp.status == 200, name


async def test_socket_io_client_is_served_from_node_modules_and_cached(
    client: FramehubClient,
) -> None:
    pinned = json.loads((UI_DIR / "package.json").read_text())["dependencies"]["socket.io-client"]
    async with client.get("/ui/vendor/socket.io.esm.min.js") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert resp.headers["Cache-Control"] == "public, max-age=86400"
        body = await resp.text()
    assert f"Socket.IO v{pinned}" in body
    assert "export{" in body  # the ES module build, which the pages import
    async with client.get("/ui/vendor/socket.io.esm.min.js.map") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"


async def test_without_node_modules_the_client_is_503_saying_how_to_install_it(
    framehub: Framehub,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(ui, "VENDOR_DIR", tmp_path / "node_modules" / "socket.io-client" / "dist")
    client = await framehub.client(make_settings())
    async with client.get("/ui/vendor/socket.io.esm.min.js") as resp:
        assert resp.status == 503
        assert await resp.json() == {
            "error": "socket.io-client is not installed: run `make run` (needs npm)"
        }
    async with client.get("/ui/") as resp:  # the pages still load, and say it
        assert resp.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/ui/package.json",
        "/ui/package-lock.json",
        "/ui/index.html",
        "/ui/nothing.js",
        "/ui/node_modules/socket.io-client/package.json",
        "/ui/vendor/socket.io.js",
        "/ui/video.jpg",  # not the repository "ui": everything under /ui/ is the pages'
        "/ui/camera/",
    ],
)
async def test_nothing_else_under_ui_is_served(client: FramehubClient, path: str) -> None:
    async with client.get(path) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": f"no route for GET {path}"}


@pytest.mark.parametrize(
    "target",
    [
        "/ui/../setup.cfg",
        "/ui/%2e%2e/setup.cfg",
        "/ui/..%2fsetup.cfg",
        "/ui/vendor/..%2f..%2fpackage.json",
        "/ui/vendor/%2e%2e/%2e%2e/package.json",
        "/ui/%2e%2e%2fhandlers%2fui.py",
    ],
)
async def test_paths_out_of_the_folder_are_refused(client: FramehubClient, target: str) -> None:
    assert await get_raw(client, target) in (400, 404)
