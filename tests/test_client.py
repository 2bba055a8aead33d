"""The reference client (``framehub-send``): frames from a folder, a video file or a repository URL
streamed to a running framehub, results printed as JSON lines, a report at the end.

Everything is a real part: framehub comes from ``create_app`` on a loopback port with its
built-in analyses as processors (reached over HTTP), the images come from Pillow and the video is
written with PyAV; ``server.client.send.send`` runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from common import write_video
from server.client.send import SendReport, send

if TYPE_CHECKING:
    from apps import LiveServer, LiveServerFactory
    from common import Images, LiveFrames

PROCESSORS = {"summary": {"builtin": "summary", "timeout": 5.0}}
TOKEN = "client-t0ken"
# Long enough for the last partial clip (flushed after clips.max_wait, 0.3 s) to be analysed, and
# for a new app's first clip, which waits for its analysis workers to start (up to about 1 s).
SETTLE = 2.0
FRAME_NAMES = [f"frame-{number}.jpg" for number in range(1, 11)]


def printed(out: io.StringIO) -> list[dict[str, Any]]:
    """The JSON lines the client printed."""
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def run(server: LiveServer, source: str, **options: Any) -> tuple[SendReport, list[Any]]:
    """``send`` from ``source`` to ``server`` at full speed; the report and the printed results."""
    out = io.StringIO()
    # A timeout scope rather than wait_for: no new task, so the SystemExit that send() raises
    # for a refused session id reaches the test as it would reach the console script.
    async with asyncio.timeout(30):
        report = await send(source, server=server.url, fps=0, settle=SETTLE, out=out, **options)
    return report, printed(out)


def check_results(results: list[dict[str, Any]], sizes: list[int]) -> None:
    """Results of clips of ``sizes`` frames, in order, each summarised by the built-in API."""
    assert [r["clip"]["frames"] for r in results] == sizes
    assert [r["result"]["summary"]["frames"] for r in results] == sizes
    assert results[0]["clip"]["first_frame"] == 0
    assert results[-1]["clip"]["last_frame"] == sum(sizes) - 1


async def test_send_a_folder_of_images(
    live_server: LiveServerFactory, images: Images, tmp_path: Path
) -> None:
    server = await live_server(processors=PROCESSORS)
    # Natural order: frame-2 before frame-10.
    folder = images.folder(tmp_path / "frames", reversed(FRAME_NAMES))
    report, results = await run(server, str(folder))
    assert (report.frames_sent, report.frames_accepted, report.frames_rejected) == (10, 10, 0)
    assert (report.results, report.dropped) == (3, 0)
    assert report.seconds > 0
    check_results(results, [4, 4, 2])
    await server.until_sessions_freed()


async def test_send_as_a_named_camera(
    live_server: LiveServerFactory, images: Images, tmp_path: Path
) -> None:
    server = await live_server(processors=PROCESSORS, live={"keep": 60.0})
    folder = images.folder(tmp_path / "frames", FRAME_NAMES[:4])
    report, _results = await run(server, str(folder), camera="gate")
    assert report.frames_accepted == 4
    async with server.http.get(f"{server.url}/live") as resp:
        gate = (await resp.json())["gate"]
    assert (gate["frames"], gate["clips"]) == (4, 1)


async def test_send_counts_rejected_frames(
    live_server: LiveServerFactory, images: Images, tmp_path: Path
) -> None:
    server = await live_server(processors=PROCESSORS, frames={"max_pixels": 64 * 48})
    folder = images.folder(tmp_path / "frames", FRAME_NAMES[:4])
    (folder / "frame-3.png").write_bytes(images.encode(3, "PNG", (100, 100)))
    report, results = await run(server, str(folder), limit=4)
    assert (report.frames_sent, report.frames_accepted, report.frames_rejected) == (4, 3, 1)
    check_results(results, [3])


def match_video(path: Path, live_frames: LiveFrames, count: int) -> Path:
    """An H.264 MP4 of ``count`` frames of 64x48 written with PyAV."""
    pictures = (live_frames.picture(index) for index in range(count))
    return write_video(path, pictures, size=live_frames.size, fps=10)


async def test_send_a_video_file(
    live_server: LiveServerFactory, live_frames: LiveFrames, tmp_path: Path
) -> None:
    server = await live_server(processors=PROCESSORS)
    video = await asyncio.to_thread(match_video, tmp_path / "match.mp4", live_frames, 9)
    report, results = await run(server, str(video))
    assert (report.frames_sent, report.frames_accepted, report.frames_rejected) == (9, 9, 0)
    assert report.results == 3
    check_results(results, [4, 4, 1])
    assert all(r["result"]["summary"]["width"] == 64 for r in results)


async def test_send_a_video_file_with_a_frame_limit(
    live_server: LiveServerFactory, live_frames: LiveFrames, tmp_path: Path
) -> None:
    server = await live_server(processors=PROCESSORS)
    video = await asyncio.to_thread(match_video, tmp_path / "match.mp4", live_frames, 9)
    report, results = await run(server, str(video), limit=4)
    assert (report.frames_sent, report.results) == (4, 1)
    check_results(results, [4])


async def test_send_a_repository(
    live_server: LiveServerFactory, images: Images, tmp_path: Path
) -> None:
    images.folder(tmp_path / "state" / "repositories" / "cam", FRAME_NAMES[:6])
    server = await live_server(processors=PROCESSORS)
    report, results = await run(server, f"{server.url}/cam")
    assert (report.frames_sent, report.frames_accepted) == (6, 6)
    check_results(results, [4, 2])


async def test_send_with_an_api_token(
    live_server: LiveServerFactory, images: Images, tmp_path: Path
) -> None:
    server = await live_server(processors=PROCESSORS, server={"api_token": TOKEN})
    folder = images.folder(tmp_path / "frames", FRAME_NAMES[:4])
    report, results = await run(server, str(folder), token=TOKEN)
    assert (report.frames_sent, report.results) == (4, 1)
    check_results(results, [4])
    with pytest.raises(SystemExit, match="missing or wrong API token"):
        await run(server, str(folder))


def test_the_client_imports_nothing_of_the_server_but_names() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, server.client.send; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'server'))",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.replace("'", '"')) == [
        "server",
        "server.client",
        "server.client.send",
        "server.names",
    ]
