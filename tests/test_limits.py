"""Slow and greedy clients against a real server process: connection caps, the header timeout and
the body idle timeout leave the service up for everyone else.

Attackers connect from other loopback addresses (127.0.0.2, ...: Linux routes all of 127/8 to
the loopback device), so the well-behaved client on 127.0.0.1 is another address, as it would be.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import socketio

from apps import ServerProcess
from common import Images, write_video

if TYPE_CHECKING:
    from apps import Framehub, SettingsFactory

StartServer = Callable[..., ServerProcess]
FILE_LIMIT = 1024
SLOW_CLIENTS = 1100
HEADER_TIMEOUT = 2.0


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of ``name{labels}`` in a Prometheus text answer (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_slow(port: int, source: str) -> Connection | None:
    """A connection from ``source`` that sends the start of a request's headers, then stalls."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
    except OSError:
        return None
    return reader, writer


async def trickle(connections: list[Connection], every: float, until: float) -> None:
    """One more header line on every connection each ``every`` seconds, as a slow-loris does."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        await asyncio.sleep(every)
        for _, writer in connections:
            with contextlib.suppress(OSError):
                writer.write(b"X-Slow: 1\r\n")


async def still_open(connections: list[Connection]) -> int:
    """How many of ``connections`` the server has not closed (a closed one reads EOF at once)."""

    async def is_open(reader: asyncio.StreamReader) -> bool:
        try:
            return bool(await asyncio.wait_for(reader.read(1), 0.5))
        except TimeoutError:
            return True
        except OSError:
            return False

    answers = await asyncio.gather(*(is_open(reader) for reader, _ in connections))
    return sum(answers)


async def test_slow_header_clients_leave_the_server_up(
    start_server: StartServer, tmp_path: Path
) -> None:
    # The test opens more sockets than the server may: lift this process's own soft limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * SLOW_CLIENTS)), hard))
    server = start_server({"server": {"header_timeout": HEADER_TIMEOUT}})
    resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))
    server.wait_ready()
    loop = asyncio.get_running_loop()
    connections: list[Connection] = []
    async with aiohttp.ClientSession() as http:
        sio = socketio.AsyncClient(reconnection=False)
        async with http.get(f"{server.url}/get_session_id") as resp:
            session_id = (await resp.json())["session_id"]
        await sio.connect(f"{server.url}?session_id={session_id}", transports=["websocket"])
        try:
            opened = await asyncio.gather(
                *(open_slow(server.port, "127.0.0.2") for _ in range(SLOW_CLIENTS))
            )
            connections = [connection for connection in opened if connection is not None]
            attack_ends = loop.time() + 3 * HEADER_TIMEOUT
            trickling = asyncio.create_task(trickle(connections, 0.5, attack_ends))
            answered = 0
            while loop.time() < attack_ends:  # the well-behaved client, throughout
                async with http.get(f"{server.url}/healthz", timeout=aiohttp.ClientTimeout(2)) as r:
                    assert r.status == 200
                ack = await sio.call("test", {"n": answered}, timeout=2)
                assert ack == {"n": answered}
                answered += 1
                await asyncio.sleep(0.1)
            await trickling
            assert answered >= 10
            assert await still_open(connections) == 0  # each closed by the header timeout
            async with http.get(f"{server.url}/metrics") as resp:
                metrics = await resp.text()
        finally:
            await sio.disconnect()
            for _, writer in connections:
                writer.close()
    assert server.stop() == 0
    refused = metric(
        metrics, "framehub_connections_refused_total", 'reason="max_connections_per_ip"'
    )
    timed_out = metric(metrics, "framehub_connections_timed_out_total", 'phase="headers"')
    assert refused >= SLOW_CLIENTS - 256 - 50  # most were never let in
    assert timed_out >= 200  # the ones let in were closed for being slow
    log = server.stderr()
    assert f"at most {FILE_LIMIT - 128} connections" in log  # the file limit was in force
    assert len(log.splitlines()) < 30, log
    assert "out of system resource" not in log


async def test_connections_past_max_connections_are_closed_at_once(
    start_server: StartServer,
) -> None:
    server = start_server({"server": {"max_connections": 20, "header_timeout": 30}})
    server.wait_ready()
    sources = [f"127.0.0.{n}" for n in range(2, 7)]
    opened = await asyncio.gather(*(open_slow(server.port, s) for s in sources for _ in range(8)))
    connections = [connection for connection in opened if connection is not None]
    try:
        await asyncio.sleep(0.5)
        assert await still_open(connections) == 20
        # A new connection is refused while the twenty stay open...
        async with aiohttp.ClientSession() as http:
            try:
                async with http.get(f"{server.url}/healthz") as resp:
                    refused_client = resp.status != 200
            except aiohttp.ClientError:
                refused_client = True
            assert refused_client
            for _, writer in connections:
                writer.close()
            # ... and served once they are gone.
            deadline = time.monotonic() + 5
            while True:
                try:
                    async with http.get(f"{server.url}/metrics") as resp:
                        metrics = await resp.text()
                        break
                except aiohttp.ClientError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
    finally:
        for _, writer in connections:
            writer.close()
    assert metric(metrics, "framehub_connections_refused_total", 'reason="max_connections"') >= 21
    assert server.stop() == 0
    assert server.stderr().count("refused") <= 3


def small_video(path: Path) -> bytes:
    """The bytes of a one-second H.264 MP4 made with PyAV."""
    pictures = (Images.square(index * 4, (160, 120)) for index in range(15))
    return write_video(path, pictures, size=(160, 120), fps=15).read_bytes()


async def test_a_stalled_upload_is_cut_and_a_moving_one_is_not(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server({"server": {"body_idle_timeout": 1.0}})
    server.wait_ready()
    uploads = tmp_path / "state" / "uploads"
    data = small_video(tmp_path / "clip.mp4")

    # One byte of the body, then nothing: answered 408 at body_idle_timeout, no temp file left.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /batch?wait=false HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data[:1]
    )
    started = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    waited = time.monotonic() - started
    body = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert 0.9 <= waited < 5, waited
    assert b"body_idle_timeout" in body
    deadline = time.monotonic() + 5
    while any(uploads.iterdir()):
        assert time.monotonic() < deadline, list(uploads.iterdir())
        await asyncio.sleep(0.05)

    # The same video sent slowly but steadily, longer in all than the idle timeout: accepted.
    step = len(data) // 6 + 1

    async def steady() -> Any:
        for start in range(0, len(data), step):
            await asyncio.sleep(0.4)
            yield data[start : start + step]

    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.url}/batch?wait=false", data=steady(), headers={"Content-Type": "video/mp4"}
        ) as resp:
            assert resp.status == 202, await resp.text()
        async with http.get(f"{server.url}/metrics") as resp:
            metrics = await resp.text()
    assert metric(metrics, "framehub_connections_timed_out_total", 'phase="body"') == 1
    assert server.stop() == 0


async def test_one_address_cannot_take_every_session_id(
    framehub: Framehub, make_settings: SettingsFactory
) -> None:
    client = await framehub.client(make_settings(sessions={"max_pending_per_ip": 5}))
    url = client.make_url("/get_session_id")

    async def ask(source: str) -> tuple[int, dict[str, Any]]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as http, http.get(url) as resp:
            return resp.status, await resp.json()

    greedy = [await ask("127.0.0.2") for _ in range(8)]
    assert [status for status, _ in greedy] == [200] * 5 + [503] * 3
    error = greedy[-1][1]["error"]
    assert "127.0.0.2" in error and "max_pending_per_ip = 5" in error
    status, answer = await ask("127.0.0.3")  # another address is not locked out
    assert status == 200 and answer["session_id"]


def rss_of(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_handshakes_that_never_connect_are_closed_and_cost_nothing(
    start_server: StartServer,
) -> None:
    server = start_server({"sessions": {"handshake_timeout": 1.0, "max_pending_per_ip": 40}})
    server.wait_ready()
    handshake = f"{server.url}/socket.io/?EIO=4&transport=polling"
    # 100 connections at a time, under max_connections_per_ip.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=100)

    async def open_handshakes(attacker: aiohttp.ClientSession, count: int) -> list[Any]:
        """(status, the sid or the refusal) of ``count`` handshakes at once."""

        async def one() -> tuple[int, str]:
            async with attacker.get(handshake) as resp:
                text = await resp.text()
            if resp.status == 200:  # "0{...}": the open packet with its sid
                return 200, json.loads(text[1:])["sid"]
            return resp.status, json.loads(text)

        return await asyncio.gather(*(one() for _ in range(count)))

    async with (
        aiohttp.ClientSession(connector=connector) as attacker,
        aiohttp.ClientSession() as http,
    ):
        rounds = []
        for _ in range(5):
            answers = await open_handshakes(attacker, 300)
            sids = [sid for status, sid in answers if status == 200]
            refusals = [text for status, text in answers if status == 401]
            assert len(sids) == 40 and len(refusals) == 260  # the address's cap, then refusals
            assert "max_pending_per_ip = 40" in refusals[0]
            await asyncio.sleep(1.5)  # past handshake_timeout and the close's own wait
            rounds.append(rss_of(server.process.pid))
        async with attacker.get(f"{handshake}&sid={sids[0]}") as resp:
            assert resp.status == 400  # closed: engineio no longer knows it
        # Meanwhile another address connects, and stays connected past the timeout.
        async with http.get(f"{server.url}/get_session_id") as resp:
            session_id = (await resp.json())["session_id"]
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(f"{server.url}?session_id={session_id}", transports=["websocket"])
        await asyncio.sleep(1.5)
        assert sio.connected
        assert await sio.call("test", "still here", timeout=5) == "still here"
        await sio.disconnect()
    assert server.stop() == 0
    assert rounds[-1] - rounds[1] < 2 << 20, rounds  # flat after the first round
