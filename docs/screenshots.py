"""Screenshots of framehub's pages for the README: ``docs/dashboard.png``, ``docs/camera.png`` and
``docs/dashboard-phone.png`` (the dashboard at a phone's width, 360 px).

Run from the checkout, after ``make test`` has installed the test extra (Playwright)::

    .venv/bin/python docs/screenshots.py

framehub (``main.py``) starts in a child process on a free loopback port with settings in a temp
folder: the demo repository, the shipped built-in processors and clips of 15 frames. Debian's
headless Chromium (``/usr/bin/chromium``, driven by Playwright, never downloaded) opens the camera
page, streams its fake camera as the camera ``phone``, and uploads a short video of the demo
pattern on the dashboard; once results have come back, both pages are captured. The server is
stopped with SIGTERM and the temp folder removed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import av
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

from server.media.images import demo_frame

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    # A Chromium on a closed network otherwise keeps trying Google's services.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
SETTINGS = """\
[server]
host = "127.0.0.1"
port = {port}
state_dir = "{state}"
[repositories]
demo_frames = 60
[clips]
frames = 15
stride = 15
max_wait = 1.0
fps = 10
[processors.summary]
builtin = "summary"
[processors.motion]
builtin = "motion"
"""
START_TIMEOUT = 30.0
WAIT_MS = 30_000
WIDE: ViewportSize = {"width": 1200, "height": 900}
PHONE: ViewportSize = {"width": 360, "height": 780}


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    """Until ``GET /readyz`` answers 200; fails if the server ended or took too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"framehub ended with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as answer:
                if json.load(answer)["ready"]:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"framehub was not ready within {START_TIMEOUT:g} s")


def demo_video(path: Path, frames: int = 30, fps: int = 10) -> Path:
    """An MP4 of the demo pattern, to upload as a batch job."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = 320, 240
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            picture = demo_frame(index, frames, (320, 240))
            # PyAV's stubs leave from_image without annotations.
            frame = av.VideoFrame.from_image(picture)  # type: ignore[no-untyped-call]
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


async def stream_camera(browser: Browser, url: str) -> Page:
    """The camera page streaming Chromium's fake camera as ``phone``, once results came."""
    page = await browser.new_page(viewport=WIDE)
    await page.goto(f"{url}/ui/camera")
    await page.get_by_label("Camera name").fill("phone")
    await page.get_by_label("Frames per second").fill("10")
    await page.get_by_role("button", name="Start").click()
    await expect(page.locator("dt:text-is('Results') + dd")).to_have_text("2", timeout=WAIT_MS)
    return page


async def show_dashboard(browser: Browser, url: str, video: Path) -> Page:
    """The dashboard with the live camera's results and a finished batch job."""
    page = await browser.new_page(viewport=WIDE)
    await page.goto(f"{url}/ui/")
    phone = page.get_by_role("list", name="Live cameras").get_by_role("listitem")
    await expect(phone.locator("pre")).to_contain_text("Clip of frames", timeout=WAIT_MS)
    await page.get_by_label("Video file").set_input_files(video)
    await page.get_by_role("button", name="Upload and analyse").click()
    await expect(page.get_by_label("Batch result")).to_contain_text('"motion"', timeout=WAIT_MS)
    await expect(page.get_by_role("img", name="first frame of demo")).to_be_visible()
    return page


async def capture(url: str, video: Path) -> None:
    """Write the screenshots."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            camera = await stream_camera(browser, url)
            dashboard = await show_dashboard(browser, url, video)
            await dashboard.screenshot(path=DOCS / "dashboard.png", full_page=True)
            await camera.screenshot(path=DOCS / "camera.png", full_page=True)
            await dashboard.set_viewport_size(PHONE)
            await dashboard.screenshot(path=DOCS / "dashboard-phone.png", full_page=True)
            await camera.get_by_role("button", name="Stop").click()
        finally:
            await browser.close()


def main() -> None:
    """Start framehub, take the screenshots, stop framehub."""
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt install chromium")
    with tempfile.TemporaryDirectory(prefix="framehub-docs-") as temp:
        folder = Path(temp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = folder / "settings.toml"
        config.write_text(SETTINGS.format(port=port, state=folder / "state"))
        log = folder / "framehub.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "main.py"), "--config", str(config)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                wait_ready(url, process)
                asyncio.run(capture(url, demo_video(folder / "demo.mp4")))
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(START_TIMEOUT)
        if process.returncode != 0:
            sys.stderr.write(log.read_text(errors="replace"))
            raise SystemExit(f"framehub stopped with status {process.returncode}")
    for name in ("dashboard.png", "camera.png", "dashboard-phone.png"):
        print(DOCS / name)


if __name__ == "__main__":
    main()
