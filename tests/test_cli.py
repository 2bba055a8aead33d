"""``python main.py`` as an operator runs it: settings mistakes exit 2 with one line, SIGTERM exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fakes import free_port
from server.cli import event_loop_factory, main
from server.settings import SettingsError

if TYPE_CHECKING:
    from apps import ServerProcess
    from common import Images

MAIN = Path(__file__).resolve().parents[1] / "main.py"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ("[server\n", "not valid TOML"),
        (None, "settings file not found"),
    ],
    ids=["bad-value", "invalid-toml", "missing-file"],
)
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, text: str | None, names: str) -> None:
    if text is not None:
        (tmp_path / "bad.toml").write_text(text)

    done = subprocess.run(
        [sys.executable, str(MAIN), "--config", "bad.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("framehub: ")
    assert "bad.toml" in lines[0]
    assert names in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()


def test_damaged_cookie_key_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("[repositories]\ncreate_demo = false\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "secret.key").write_text("not a key\n")

    done = subprocess.run(
        [sys.executable, str(MAIN)], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "secret.key" in done.stderr


def wait_until_answering(url: str, process: subprocess.Popen[bytes]) -> bytes:
    """GET ``url`` until the server answers (bounded); its body."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert process.poll() is None, "the server exited while starting"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body: bytes = resp.read()
                return body
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from {url} within {START_TIMEOUT} s")
            time.sleep(0.05)


def test_serves_frames_and_stops_on_sigterm(tmp_path: Path, images: Images) -> None:
    config = tmp_path / "conf" / "settings.toml"
    config.parent.mkdir()
    config.write_text(
        '[server]\nhost = "0.0.0.0"\nport = 1\nstate_dir = "state"\nshutdown_timeout = 2\n'
        "[repositories]\ncreate_demo = false\n"
    )
    folder = images.folder(tmp_path / "conf" / "state" / "repositories" / "cam", ["a.jpg", "b.png"])
    port = free_port()
    log = tmp_path / "stderr.log"

    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                str(MAIN),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=tmp_path,  # relative paths follow the settings file, not the working directory
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            listing = wait_until_answering(f"http://127.0.0.1:{port}/", process)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/cam/frames/1", timeout=5) as resp:
                assert resp.headers["Content-Type"] == "image/png"
                frame = resp.read()
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                returncode = process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise

    assert b'"cam"' in listing
    assert frame == (folder / "b.png").read_bytes()
    assert returncode == 0
    output = log.read_text()
    assert "Traceback" not in output
    secret = (tmp_path / "conf" / "state" / "secret.key").read_text().strip()
    assert secret and secret not in output


def test_a_python_without_tarfile_filters_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No older Python is at hand, so the version the interpreter reports is what is replaced.
    monkeypatch.setattr(sys, "version_info", (3, 11, 3, "final", 0))
    assert main(["--config", "unused.toml"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "framehub: needs Python 3.11.4 or newer (for tarfile's extraction filters), not 3.11.3"
    )


def test_setup_cfg_asks_for_the_same_python() -> None:
    assert "python_requires = >=3.11.4" in (MAIN.parent / "setup.cfg").read_text()


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio", "auto"])
def test_runs_on_the_event_loop_asked_for(
    start_server: Callable[..., ServerProcess], event_loop: str
) -> None:
    server = start_server({"server": {"event_loop": event_loop}})
    server.wait_ready()
    body = wait_until_answering(f"{server.url}/healthz", server.process)
    assert server.stop() == 0
    assert b"alive" in body
    # "auto" takes uvloop, which is installed with framehub here.
    expected = "asyncio" if event_loop == "asyncio" else "uvloop"
    assert f"(event loop: {expected}," in server.stderr()


def test_uvloop_asked_for_but_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # A box without uvloop's wheel cannot be made here for real: hide the installed module.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert event_loop_factory("auto") is None  # auto falls back to asyncio's loop
    with pytest.raises(SettingsError, match=r'server\.event_loop is "uvloop", but uvloop is not'):
        event_loop_factory("uvloop")


def test_a_camera_only_server_loads_neither_pillow_nor_pyav(
    start_server: Callable[..., ServerProcess], images: Images, tmp_path: Path
) -> None:
    repositories = tmp_path / "repositories"
    images.folder(repositories / "cam", ["a.jpg", "b.jpg"])
    tables = {"repositories": {"dir": str(repositories)}}
    first = start_server(tables)  # the first start draws the placeholder, with Pillow
    first.wait_ready()
    assert first.stop() == 0
    server = start_server(tables)
    server.wait_ready()
    for path in ("/cam/video.jpg", "/cam/video.jpg", "/missing/video.jpg", "/cam/frames/1"):
        wait_until_answering(f"{server.url}{path}", server.process)
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert server.stop() == 0
    # Pillow's C core and libav's libraries show in the process's memory map once loaded.
    assert "PIL/_imaging" not in maps
    assert "libavcodec" not in maps and "/av/" not in maps
