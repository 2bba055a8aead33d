"""The pages in a real browser: Debian's Chromium, headless, driven by Playwright as a person would
(type, click, wait for text), against framehub running in its own process.

One Chromium serves the whole module (a module-scoped fixture on the module's event loop); each
test gets a fresh browser context, with its own cookies and sessionStorage, and keeps a
screenshot of each page it drove under its ``tmp_path``. Frames are plain colours that tell their
number (:class:`common.Images`), so a picture on the page is read back as a frame number from a
screenshot of it, which works across sites where a canvas would be tainted. The test's own camera
streams in with a real ``socketio.AsyncClient``; the camera page streams Chromium's fake camera.

"Elsewhere" is another site, a second aiohttp app on another loopback port: it holds the archives
framehub downloads repositories from (:class:`fakes.TarSource`) and a page that embeds framehub's
``video.jpg`` as another site's dashboard would, addressing framehub as ``localhost`` while itself
at ``127.0.0.1``, so that the browser treats the two as different sites.

No browser is ever downloaded: without /usr/bin/chromium the tests skip, and fail when ``CI`` is
set.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image, ImageStat
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from apps import LiveClient, ServerProcess, SettingsFactory
from common import COLOURS, LIVE_TIMEOUT, Images, write_video
from fakes import TarSource, free_port
from server.app import create_app
from server.handlers import ui

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = Path("/usr/bin/chromium")
# On a closed network a Chromium left to itself keeps trying Google's services; these stop that.
QUIET = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
# A name for loopback that is not "localhost": a page there is not a secure context.
INSECURE_HOST = "framehub.test"
WAIT_MS = 20_000
TOKEN = "browser-test-token"
CAMERA_SIZE = (160, 120)  # 4:3, as the pages' picture boxes, so a screenshot is all picture
FRAME_GAP = 0.05  # seconds between the test camera's frames
CLOCK_FPS = 10.0  # [camera] fps: the frame "playing now" for requests with no cursor
ARCHIVE_FRAMES = ["a.jpg", "b.jpg", "c.jpg"]

expect.set_options(timeout=WAIT_MS)


def require_chromium() -> None:
    """Skip without Debian's Chromium, or fail when ``CI`` is set (it must run there)."""
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: apt install chromium (these tests never download a browser)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, with a fake camera that is always allowed."""
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*QUIET, *FAKE_CAMERA, f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1"],
        )
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page in a fresh browser context; the test fails on any uncaught script error."""
    context = await browser.new_context(viewport={"width": 1024, "height": 800})
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    errors: list[Exception] = []

    def script_error(error: Exception) -> None:
        errors.append(error)

    page.on("pageerror", script_error)
    yield page
    await context.close()
    assert not errors, f"script errors on the page: {errors}"


class Elsewhere:
    """Another site on a loopback port: framehub's archive source, and a page embedding framehub.

    ``/embed[?client=ID]`` shows ``<img src="http://localhost:PORT/colours/video.jpg[?client=ID]">``
    and a button that fetches ``video.jpg?client=reader`` three times with CORS and lists the
    ``X-Frame-Number`` of each answer. ``framehub_port`` is set once framehub listens.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.archives = TarSource()
        self.framehub_port = 0

    def app(self) -> web.Application:
        """The site as an aiohttp application."""
        app = web.Application()
        app.router.add_get("/embed", self._embed)
        app.add_subapp("/archives/", self.archives.app())
        return app

    async def _embed(self, request: web.Request) -> web.Response:
        video = f"http://localhost:{self.framehub_port}/colours/video.jpg"
        client = request.query.get("client")
        source = f"{video}?client={client}" if client else video
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Another site</title></head>
<body>
<h1>Another site's wall of cameras</h1>
<img id="camera" src="{source}" alt="framehub's camera" width="160" height="120">
<button id="read">Read frame numbers</button>
<p id="numbers"></p>
<script type="module">
document.getElementById("read").addEventListener("click", async () => {{
  const numbers = [];
  try {{
    for (let i = 0; i < 3; i++) {{
      const answer = await fetch("{video}?client=reader", {{ mode: "cors" }});
      numbers.push(answer.headers.get("X-Frame-Number"));
    }}
    document.getElementById("numbers").textContent = numbers.join(", ");
  }} catch (error) {{
    document.getElementById("numbers").textContent = `failed: ${{error}}`;
  }}
}});
</script>
</body></html>"""
        return web.Response(text=page, content_type="text/html")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def elsewhere() -> AsyncIterator[Elsewhere]:
    """The other site, serving on its port for the whole module."""
    site = Elsewhere()
    site.archives.archives["fetched.tar"] = Images.tar(Images.members(ARCHIVE_FRAMES))
    runner = web.AppRunner(site.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", site.port).start()
    yield site
    site.archives.release()
    await runner.cleanup()


async def start_framehub(root: Path, **tables: dict[str, Any]) -> ServerProcess:
    """framehub in a child process with a repository ``colours`` of :data:`COLOURS` frames, the
    built-in ``summary`` processor, 4-frame clips, and ``tables`` on top."""
    repositories = Images.folder(
        root / "repositories" / "colours", [f"frame-{i}.jpg" for i in range(COLOURS)]
    ).parent
    settings: dict[str, dict[str, Any]] = {
        "server": {"shutdown_timeout": 2.0},
        "repositories": {"dir": str(repositories)},
        "camera": {"fps": CLOCK_FPS},
        "clips": {"frames": 4, "max_wait": 0.3, "fps": 10},
        "processors.summary": {"builtin": "summary"},
    }
    for name, values in tables.items():
        settings.setdefault(name, {}).update(values)
    server = ServerProcess(root, settings, {})
    try:
        await asyncio.to_thread(server.wait_ready)
    except BaseException:
        await asyncio.to_thread(server.stop)
        raise
    return server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    elsewhere: Elsewhere, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerProcess]:
    """framehub without a token, downloading from and open to the other site."""
    server = await start_framehub(
        tmp_path_factory.mktemp("framehub"),
        server={"cors_allowed_origins": [elsewhere.origin]},
        repositories={"source_url": f"{elsewhere.origin}/archives"},
    )
    elsewhere.framehub_port = server.port
    yield server
    await asyncio.to_thread(server.stop)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def private_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    """framehub with an API token that everything but the pages needs."""
    server = await start_framehub(
        tmp_path_factory.mktemp("private"), server={"api_token": TOKEN, "public": ["ui"]}
    )
    yield server
    await asyncio.to_thread(server.stop)


async def get_json(url: str, token: str | None = None) -> Any:
    """The JSON answer of ``GET url``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


@contextlib.asynccontextmanager
async def live_camera(
    server: ServerProcess, name: str, token: str | None = None
) -> AsyncIterator[None]:
    """A live camera ``name`` streaming numbered frames into ``server`` while the block runs."""
    answer = await get_json(f"{server.url}/get_session_id?camera={name}", token)
    session_id = answer["session_id"]
    client = LiveClient()
    auth = {"session_id": session_id} | ({"token": token} if token else {})
    await client.sio.connect(
        server.url, auth=auth, transports=["websocket"], wait_timeout=LIVE_TIMEOUT
    )

    async def stream() -> None:
        for number in itertools.count():
            ack = await client.process(Images.encode(number, size=CAMERA_SIZE))
            assert ack["ok"], ack
            await asyncio.sleep(FRAME_GAP)

    streaming = asyncio.create_task(stream())
    try:
        yield
    finally:
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await streaming
        await client.disconnect()


async def shown(picture: Locator) -> Locator:
    """``picture`` once it shows an image (MJPEG streams never end loading, so no ``complete``)."""
    await expect(picture).to_be_visible()
    await expect(picture).not_to_have_js_property("naturalWidth", 0)
    return picture


async def frame_number(picture: Locator) -> int:
    """The number of the frame a picture shows, told by the colour of its middle."""
    image = Image.open(io.BytesIO(await picture.screenshot())).convert("RGB")
    width, height = image.size
    middle = image.crop((width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return Images.number(ImageStat.Stat(middle).mean)


async def until_changed(read: Callable[[], Awaitable[int]], seconds: float = LIVE_TIMEOUT) -> None:
    """Until ``read()`` gives another value than its first."""
    first = await read()
    async with asyncio.timeout(seconds):
        # Polling: what a page shows comes with no event a test could wait on.
        while await read() == first:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def keep_screenshot(page: Page, path: Path) -> None:
    """A full-page screenshot at ``path``, checked not to be blank."""
    await page.screenshot(path=path, full_page=True)
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(1 << 16)
    assert colours is None or len(colours) > 16, f"{path} is nearly blank: {len(colours)} colours"


def card(page: Page, list_name: str, title: str) -> Locator:
    """The card titled ``title`` in the list named ``list_name``."""
    items = page.get_by_role("list", name=list_name).get_by_role("listitem")
    return items.filter(has=page.get_by_role("heading", name=title, exact=True))


def status(page: Page, text: str) -> Locator:
    """The status message (an aria-live region) holding ``text``."""
    return page.get_by_role("status").filter(has_text=text)


async def test_dashboard_shows_repositories_a_live_camera_and_its_results(
    page: Page, server: ServerProcess, elsewhere: Elsewhere, tmp_path: Path
) -> None:
    async with live_camera(server, "gate"):
        await page.goto(f"{server.url}/ui/")
        colours = card(page, "Repositories", "colours")
        await expect(colours).to_contain_text(f"available, {COLOURS} frames")
        thumbnail = await shown(colours.get_by_role("img", name="first frame of colours"))
        assert await frame_number(thumbnail) == 0

        gate = card(page, "Live cameras", "gate")
        await expect(gate).to_contain_text("Online")
        await expect(gate).to_contain_text("Live MJPEG stream.")
        following = page.locator("#results-status")
        await expect(following).to_have_text("Following results as they arrive.")
        picture = await shown(gate.get_by_role("img", name="gate camera, live"))
        await until_changed(lambda: frame_number(picture))
        result = gate.locator("pre")
        await expect(result).to_contain_text("4 frames")
        await expect(result).to_contain_text('"summary"')
        first = await result.inner_text()
        await expect(result).not_to_have_text(first)  # the next clip's result arrived
        await keep_screenshot(page, tmp_path / "dashboard.png")

    # A repository fetched by name, typed and sent with Enter, downloading while half is sent.
    gate_open = elsewhere.archives.gate("fetched.tar")
    name = page.get_by_label("Repository name")
    await name.fill("fetched")
    await name.press("Enter")
    await expect(status(page, "fetched: downloading")).to_be_visible()
    fetched = card(page, "Repositories", "fetched")
    await expect(fetched).to_contain_text("downloading")
    await expect(fetched.get_by_role("progressbar", name="download of fetched")).to_be_visible()
    gate_open.set()
    await expect(fetched).to_contain_text(f"available, {len(ARCHIVE_FRAMES)} frames")
    await expect(fetched.get_by_role("progressbar")).to_be_hidden()

    await name.fill("a/b")
    await page.get_by_role("button", name="Fetch").click()
    await expect(status(page, "a/b cannot be fetched")).to_contain_text("invalid repository name")


async def test_camera_page_streams_the_browser_camera_and_shows_results(
    page: Page, server: ServerProcess, tmp_path: Path
) -> None:
    await page.goto(f"{server.url}/ui/camera")
    await page.get_by_label("Frames per second").fill("10")
    await page.get_by_label("Frame width").select_option(label="320 pixels")
    name = page.get_by_label("Camera name")
    await name.fill("phone")
    await name.press("Enter")  # the keyboard starts it as the Start button does
    await expect(page.locator("#camera-status")).to_have_text("Streaming as camera phone.")
    await expect(page.locator("dt:text-is('Acknowledged') + dd")).not_to_have_text("0")
    await expect(page.locator("dt:text-is('Refused') + dd")).to_have_text("0")
    result = page.locator("pre")
    await expect(result).to_contain_text("Clip of frames")
    await expect(result).to_contain_text('"width": 320')
    await expect(page.locator("dt:text-is('Results') + dd")).not_to_have_text("0")
    cameras = await get_json(f"{server.url}/live")
    assert cameras["phone"]["online"], cameras
    assert cameras["phone"]["frames"] > 0
    assert cameras["phone"]["size"] == [320, 240]
    await keep_screenshot(page, tmp_path / "camera.png")

    await expect(page.get_by_role("button", name="Stop")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(status(page, "Stopped.")).to_contain_text("frames acknowledged")
    await expect(page.get_by_role("button", name="Start")).to_be_focused()
    async with asyncio.timeout(LIVE_TIMEOUT):
        # Polling GET /live, as a dashboard does.
        while (await get_json(f"{server.url}/live"))["phone"]["online"]:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_camera_page_off_a_secure_context_says_that_https_is_needed(
    page: Page, server: ServerProcess, tmp_path: Path
) -> None:
    await page.goto(f"http://{INSECURE_HOST}:{server.port}/ui/camera")
    await expect(status(page, "secure pages")).to_contain_text("HTTPS")
    await expect(page.get_by_role("button", name="Start")).to_be_disabled()
    await keep_screenshot(page, tmp_path / "camera-insecure.png")


async def test_batch_upload_shows_its_progress_then_the_result(
    page: Page, server: ServerProcess, tmp_path: Path
) -> None:
    video = write_video(
        tmp_path / "clip.mp4",
        [Images.noise(CAMERA_SIZE) for _ in range(12)],
        size=CAMERA_SIZE,
        fps=10,
    )
    await page.goto(f"{server.url}/ui/")
    # A slow uplink, so that the upload takes about a second and its progress shows.
    network = await page.context.new_cdp_session(page)
    await network.send("Network.enable")
    await network.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": video.stat().st_size,
        },
    )
    await page.get_by_label("Video file").set_input_files(video)
    await page.get_by_role("button", name="Upload and analyse").click()
    await expect(status(page, "Uploading clip.mp4:")).to_be_visible()
    await expect(status(page, "Job ")).to_contain_text("done")
    await expect(page.get_by_label("Upload progress")).to_have_js_property("value", 1)
    result = page.get_by_label("Batch result")
    await expect(result).to_contain_text('"summary"')
    await expect(result).to_contain_text('"frames": 12')
    await keep_screenshot(page, tmp_path / "batch.png")


async def test_a_page_on_another_site_gets_frames_from_video_jpg(
    page: Page, server: ServerProcess, elsewhere: Elsewhere, tmp_path: Path
) -> None:
    picture = page.get_by_role("img", name="framehub's camera")
    # With ?client=ID the server keeps the cursor: in order from frame 0, one frame per load.
    await page.goto(f"{elsewhere.origin}/embed?client=wall-1")
    numbers = []
    for _ in range(5):
        numbers.append(await frame_number(await shown(picture)))
        await page.reload()
    assert numbers == [0, 1, 2, 3, 4]
    await keep_screenshot(page, tmp_path / "elsewhere.png")

    # Without it (and no cookie crosses sites) each load gets the frame playing now.
    await page.goto(f"{elsewhere.origin}/embed")
    playing = set()
    for _ in range(5):
        playing.add(await frame_number(await shown(picture)))
        await asyncio.sleep(2 / CLOCK_FPS)
        await page.reload()
    assert len(playing) >= 3, playing

    # A script there reads each frame's number, exposed to the site by CORS.
    await page.get_by_role("button", name="Read frame numbers").click()
    await expect(page.locator("#numbers")).to_have_text("0, 1, 2")


async def test_with_an_api_token_the_dashboard_works_once_it_is_typed(
    page: Page, private_server: ServerProcess, tmp_path: Path
) -> None:
    video = write_video(
        tmp_path / "clip.mp4", [Images.picture(i) for i in range(6)], size=Images.size, fps=10
    )
    async with live_camera(private_server, "gate", token=TOKEN):
        await page.goto(f"{private_server.url}/ui/")
        await expect(status(page, "The live cameras cannot be listed")).to_contain_text(
            "missing or wrong API token"
        )
        await expect(status(page, "Results cannot be followed")).to_contain_text("API token")
        await expect(status(page, "The repositories cannot be listed")).to_contain_text(
            "missing or wrong API token"
        )

        await page.get_by_label("API token").fill(TOKEN)
        await page.get_by_role("button", name="Use token").click()
        await expect(status(page, "Token saved for this tab.")).to_be_visible()
        colours = card(page, "Repositories", "colours")
        await expect(colours).to_contain_text("available")
        thumbnail = await shown(colours.get_by_role("img", name="first frame of colours"))
        assert await frame_number(thumbnail) == 0
        gate = card(page, "Live cameras", "gate")
        await expect(gate).to_contain_text("Online")
        await expect(gate).to_contain_text("Frame ")  # fetched with the token, not streamed
        picture = await shown(gate.get_by_role("img", name="gate camera, live"))
        await until_changed(lambda: frame_number(picture))
        await expect(gate.locator("pre")).to_contain_text('"summary"')
        following = page.locator("#results-status")
        await expect(following).to_have_text("Following results as they arrive.")

        await page.get_by_label("Video file").set_input_files(video)
        await page.get_by_role("button", name="Upload and analyse").click()
        await expect(status(page, "Job ")).to_contain_text("done")
        await expect(page.get_by_label("Batch result")).to_contain_text('"frames": 6')
        await keep_screenshot(page, tmp_path / "dashboard-token.png")

        await page.reload()  # the token stays with the tab
        await expect(page.get_by_label("API token")).to_have_value(TOKEN)
        await expect(card(page, "Live cameras", "gate")).to_contain_text("Online")


@pytest.mark.parametrize("path", ["/ui/", "/ui/camera"])
async def test_pages_fit_a_phone(
    page: Page, server: ServerProcess, tmp_path: Path, path: str
) -> None:
    await page.set_viewport_size({"width": 360, "height": 740})
    await page.goto(f"{server.url}{path}")
    await expect(page.get_by_label("API token")).to_be_visible()
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{path} is {overflow} px wider than a phone"
    await keep_screenshot(page, tmp_path / "phone.png")


async def test_without_socket_io_client_the_pages_say_how_to_install_it(
    page: Page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process: the folder the pages' vendor routes read is only settable here.
    monkeypatch.setattr(ui, "VENDOR_DIR", tmp_path / "not-installed")
    port = free_port()
    settings = SettingsFactory(tmp_path)(server={"host": "127.0.0.1", "port": port})
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        for path in ("/ui/", "/ui/camera"):
            await page.goto(f"http://127.0.0.1:{port}{path}")
            message = page.get_by_text(ui.NOT_INSTALLED, exact=True)
            await expect(message).to_have_attribute("role", "status")
        await keep_screenshot(page, tmp_path / "not-installed.png")
    finally:
        await runner.cleanup()
