"""SIGHUP reloads [processors], [webhooks], [recording] and log_level, dropping no session.

``main.py`` runs as a real child process; its settings file is rewritten and the process signalled
as an operator (or ``systemctl reload``) would. Analysis APIs are real aiohttp apps on loopback.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from apps import LiveClient, ServerProcess, write_settings
from common import LIVE_TIMEOUT, Images, until

if TYPE_CHECKING:
    from fakes import ClipApiFactory


def rewrite(server: ServerProcess, tmp_path: Path, tables: dict[str, dict[str, Any]]) -> None:
    """Replace the process's settings file, keeping where it listens and keeps its state."""
    where = {"host": "127.0.0.1", "port": server.port, "state_dir": str(tmp_path / "state")}
    tables = {"server": where | tables.pop("server", {}), **tables}
    tables.setdefault("repositories", {}).setdefault("create_demo", False)
    write_settings(tmp_path / "settings.toml", tables)


async def options(server: ServerProcess) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/options") as resp:
        names: list[str] = (await resp.json())["processes"]
        return names


async def test_sighup_swaps_the_processors_under_a_live_session(
    start_server: Any, clip_api: ClipApiFactory, tmp_path: Path
) -> None:
    first, second = await clip_api("first"), await clip_api("second")
    clips = {"frames": 2, "max_wait": 60.0}
    server = start_server({"clips": clips, "processors.first": {"url": first.url}})
    await asyncio.to_thread(server.wait_ready)
    client = LiveClient()
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/get_session_id") as resp:
        auth = {"session_id": (await resp.json())["session_id"]}
    await client.sio.connect(server.url, auth=auth, transports=["websocket"])
    for index in range(2):
        assert (await client.process(Images.encode(index)))["ok"]
    (result,) = await client.until_results(1)
    assert set(result["result"]) == {"first"}

    rewrite(server, tmp_path, {"clips": clips, "processors.second": {"url": second.url}})
    server.process.send_signal(signal.SIGHUP)
    await until(lambda: "reloaded" in server.stderr(), "the reload logged", LIVE_TIMEOUT)
    assert await options(server) == ["second"]
    assert client.sio.connected  # the session was not dropped
    for index in range(2, 4):
        assert (await client.process(Images.encode(index)))["ok"]
    results = await client.until_results(2)
    assert set(results[1]["result"]) == {"second"}
    assert second.frame_numbers() == [[2, 3]]
    await client.sio.disconnect()
    assert await asyncio.to_thread(server.stop) == 0


async def test_a_bad_reload_keeps_the_running_settings(
    start_server: Any, clip_api: ClipApiFactory, tmp_path: Path
) -> None:
    api = await clip_api("first")
    server = start_server({"processors.first": {"url": api.url}})
    await asyncio.to_thread(server.wait_ready)
    (tmp_path / "settings.toml").write_text("[processors.first]\nurl = 42\n")
    server.process.send_signal(signal.SIGHUP)
    await until(lambda: "reload refused" in server.stderr(), "the refusal logged", LIVE_TIMEOUT)
    assert "processors.first.url must be" in server.stderr()
    assert await options(server) == ["first"]
    assert await asyncio.to_thread(server.stop) == 0


async def test_sighup_applies_a_new_log_level_and_names_what_needs_a_restart(
    start_server: Any, tmp_path: Path
) -> None:
    server = start_server({"server": {"log_level": "INFO"}})
    await asyncio.to_thread(server.wait_ready)
    rewrite(server, tmp_path, {"server": {"log_level": "WARNING"}, "clips": {"frames": 7}})
    server.process.send_signal(signal.SIGHUP)
    await until(lambda: "only a restart applies" in server.stderr(), "the warning", LIVE_TIMEOUT)
    assert "[clips]" in server.stderr()
    assert await asyncio.to_thread(server.stop) == 0
    # At WARNING, the INFO lines of the stop are no longer written.
    assert 'level=INFO logger=server.ops.lifecycle msg="stopping"' not in server.stderr()
