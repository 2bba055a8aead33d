"""A stop that loses nothing and waits for nobody who went away, tried on real processes.

``main.py`` runs as a child process with the shipped processors (the built-in analyses), so the
stop is the one systemd's SIGTERM starts. Clients are real: python-socketio over websocket, a raw
Engine.IO polling handshake made with aiohttp, and raw TCP sockets that start a websocket and then
never answer, as a client behind a dead network does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import time
import tomllib
from pathlib import Path
from typing import Any

import aiohttp

from apps import ROOT, LiveClient, ServerProcess
from common import LIVE_TIMEOUT, Images

SHIPPED = tomllib.loads((ROOT / "settings.toml").read_text())


def shipped_tables(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The shipped settings' [clips] and [processors.*], with ``overrides`` per table."""
    tables: dict[str, dict[str, Any]] = {"clips": dict(SHIPPED["clips"])}
    tables.update({f"processors.{name}": dict(p) for name, p in SHIPPED["processors"].items()})
    for name, values in overrides.items():
        tables.setdefault(name, {}).update(values)
    return tables


async def session_id(server: ServerProcess, http: aiohttp.ClientSession) -> str:
    async with http.get(f"{server.url}/get_session_id") as resp:
        assert resp.status == 200, await resp.text()
        answer: str = (await resp.json())["session_id"]
        return answer


async def test_sigterm_mid_clip_delivers_the_last_result_with_both_analyses(
    start_server: Any,
) -> None:
    assert set(SHIPPED["processors"]) == {"summary", "motion"}
    server = start_server(shipped_tables(server={"shutdown_timeout": 10.0}))
    await asyncio.to_thread(server.wait_ready)
    client = LiveClient()
    disconnected = asyncio.Event()
    client.sio.on("disconnect", lambda *args: disconnected.set())
    async with aiohttp.ClientSession() as http:
        auth = {"session_id": await session_id(server, http)}
    await client.sio.connect(server.url, auth=auth, transports=["websocket"])
    frames = [Images.encode(index, size=(160, 120)) for index in range(5)]
    for frame in frames:  # fewer than the shipped 30 frames of a clip, and within its max_wait
        assert (await client.process(frame))["ok"]
    server.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(disconnected.wait(), LIVE_TIMEOUT)
    # The result came before the disconnect, to the client that sent the frames.
    (result,) = client.results
    assert result["clip"]["frames"] == 5
    summary, motion = result["result"]["summary"], result["result"]["motion"]
    assert "error" not in summary and "error" not in motion
    assert summary["frames"] == 5
    assert motion["frames"] == 5
    assert await asyncio.to_thread(server.stop) == 0
    assert "error" not in server.stderr().lower()


def half_open_websocket(port: int, sid: str) -> socket.socket:
    """A websocket upgrade that is answered, after which the client never reads or writes again."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=LIVE_TIMEOUT)
    sock.sendall(
        (
            f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


async def polling_handshake(http: aiohttp.ClientSession, server: ServerProcess) -> str:
    """An Engine.IO polling handshake; its sid."""
    async with http.get(f"{server.url}/socket.io/?EIO=4&transport=polling") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert text.startswith("0")
    sid: str = json.loads(text[1:])["sid"]
    return sid


async def test_sigterm_does_not_wait_for_clients_that_went_away(start_server: Any) -> None:
    timeout = 3.0
    server = start_server(shipped_tables(server={"shutdown_timeout": timeout}))
    await asyncio.to_thread(server.wait_ready)
    leftovers: list[socket.socket] = []
    async with aiohttp.ClientSession() as http:
        # A polling handshake and nothing else: the 71 s stop.
        await polling_handshake(http, server)
        # A polling client connected to the namespace with a session, then gone.
        sid = await polling_handshake(http, server)
        connect = "40" + json.dumps({"session_id": await session_id(server, http)})
        async with http.post(
            f"{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}", data=connect
        ) as resp:
            assert resp.status == 200
        # Half-open websockets: upgraded, then silent.
        for _ in range(2):
            leftovers.append(
                half_open_websocket(server.port, await polling_handshake(http, server))
            )
        # And a well-behaved websocket client.
        client = LiveClient()
        auth = {"session_id": await session_id(server, http)}
        await client.sio.connect(server.url, auth=auth, transports=["websocket"])
        assert (await client.process(Images.encode(0)))["ok"]
        started = time.monotonic()
        status = await asyncio.to_thread(server.stop)
        took = time.monotonic() - started
    for sock in leftovers:
        sock.close()
    await client.sio.disconnect()
    assert status == 0
    assert took < timeout + 1.0, f"the stop took {took:.1f} s"


async def test_sigterm_with_nothing_connected_is_quick(start_server: Any, tmp_path: Path) -> None:
    server = start_server(shipped_tables())
    await asyncio.to_thread(server.wait_ready)
    started = time.monotonic()
    assert await asyncio.to_thread(server.stop) == 0
    assert time.monotonic() - started < 2.0
