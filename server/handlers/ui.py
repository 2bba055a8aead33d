"""The browser pages under ``/ui/``: a dashboard and a camera page, served as plain files.

The pages are data, not code: ``server/ui/`` holds ``index.html`` (the dashboard), ``camera.html``
(the browser's camera as a live camera), their ES modules, one style sheet and an icon, with no
build step.
Their one third-party piece, socket.io-client, comes from npm with the lockfile beside them
(``npm ci --prefix server/ui``, which ``make run`` does) and is served from its ``node_modules``
at ``/ui/vendor/``.

Data flow: the browser loads a page, then its modules; from then on the pages are clients of the
public API like any other, from the same origin: ``GET /`` and ``GET /{repo}``, ``GET /live`` and
``/live/{name}/...``, ``POST /batch?wait=false`` then ``GET /batch/{ID}``, ``GET /get_session_id``
and Socket.IO at ``/socket.io/`` (``process`` to stream, ``watch`` for results), with the token the
person typed as ``Authorization: Bearer`` and ``auth.token``. Nothing here reads the API.

What is served is fixed when the app is built: the two pages, the folder's own ``*.js``, ``*.css``
and ``*.svg`` (the icon) and the two vendor files; any other path under ``/ui/`` is 404, so nothing else of the folder (``package.json``, ``node_modules``) and nothing outside it can be
reached. Pages and their modules are ``no-cache`` (revalidated on every load, so an upgrade shows at
once); the vendor file, pinned by the lockfile, is cached for a day. Without ``node_modules`` when
the app is built, the vendor routes answer 503 (:class:`~server.errors.UiAssetsMissing`) and the
pages say so in words.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from server.errors import UiAssetsMissing

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
VENDOR_DIR = UI_DIR / "node_modules" / "socket.io-client" / "dist"
VENDOR_FILES = ("socket.io.esm.min.js", "socket.io.esm.min.js.map")
PAGES = {"/ui/": "index.html", "/ui/camera": "camera.html"}
ASSET_PATTERNS = ("*.js", "*.css", "*.svg")
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".map": "application/json",
}
# Pages and their modules change with framehub and have no version in their names: revalidate.
OWN_CACHE = "no-cache"
VENDOR_CACHE = "public, max-age=86400"
# The pages load nothing but their own files and talk only to this server (fetch, XHR, the
# Socket.IO websocket); frames fetched with the token are shown through blob: URLs.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
NOT_INSTALLED = "socket.io-client is not installed: run `make run` (needs npm)"


def file_response(path: Path, cache_control: str) -> web.FileResponse:
    """``path`` with its content type, ``cache_control``, and the page policy for pages."""
    headers = {"Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"}
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = PAGE_POLICY
    response = web.FileResponse(path, headers=headers)
    response.content_type = CONTENT_TYPES[path.suffix]
    response.charset = "utf-8"
    return response


def _serve(path: Path, cache_control: str) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        return file_response(path, cache_control)

    return serve


def _assets() -> dict[str, tuple[Path, str] | None]:
    """What ``/ui/{path}`` serves: the folder's own modules, style sheet and icon, and the
    vendor files (None while ``node_modules`` is not installed)."""
    assets: dict[str, tuple[Path, str] | None] = {
        path.name: (path, OWN_CACHE)
        for pattern in ASSET_PATTERNS
        for path in sorted(UI_DIR.glob(pattern))
    }
    for name in VENDOR_FILES:
        path = VENDOR_DIR / name
        assets[f"vendor/{name}"] = (path, VENDOR_CACHE) if path.is_file() else None
    return assets


async def redirect_to_pages(request: web.Request) -> web.StreamResponse:
    """``GET /ui``: to the dashboard at ``/ui/``."""
    raise web.HTTPFound("/ui/")


def setup_routes(app: web.Application) -> None:
    """Register the page routes for the files :data:`UI_DIR` holds now (before ``/{repo}``)."""
    assets = _assets()

    async def asset(request: web.Request) -> web.StreamResponse:
        """``GET /ui/{path}``: one of :func:`_assets`; any other path under ``/ui/`` is 404, so
        that none of them reaches ``/{repo}/...``."""
        path = request.match_info["path"]
        if path not in assets:
            raise web.HTTPNotFound()
        found = assets[path]
        if found is None:
            raise UiAssetsMissing(NOT_INSTALLED)
        return file_response(*found)

    app.router.add_get("/ui", redirect_to_pages)
    for route, name in PAGES.items():
        app.router.add_get(route, _serve(UI_DIR / name, OWN_CACHE))
    app.router.add_get("/ui/{path:.*}", asset)
