"""The paced cameras of ``bench/capacity.py``, in a process of their own so they do not share its
GIL, nor framehub's.

``python -m bench._capacity_cameras URL --frames DIR --cameras N --server-pid PID`` connects ``N``
cameras to framehub at ``URL``, each a Socket.IO connection over websocket with a session id from
``GET /get_session_id``, all on one event loop. Each camera sends the JPEG files of ``DIR`` in
turn at ``--fps`` frames per second, one ``process`` call at a time: a frame goes at its slot, or
at once when the ack of the one before came back after that slot (a late camera sends no burst to
catch up, as a real one would not). Cameras start at spread phases, so frames arrive evenly.

After ``--warm-up`` seconds the window of ``--seconds`` begins; sending stops when it ends, and
the cameras wait (at most ``--tail`` seconds) until a result has covered the last frame each had
acked. Then the process prints one JSON line (:meth:`Tally.report`): frames sent, acked, refused,
dropped (the ``dropped`` counts that results carry, see ``server.live.pipeline``), frames that
came back inside results whose every processor answered, frames inside results with an error,
frames never accounted for; over the window: frames sent and analysed, result latency (from the
send of a clip's last frame to its ``result``), and the CPU seconds of the server (also of its
main process alone), of this process and of the whole machine. Every wait has a deadline; a
failure prints ``{"error": ...}`` and exits with status 1. The leading underscore keeps
``python -m bench`` from running it as a benchmark.

The cameras share the machine's cores with the server, so they are as cheap as can be: each speaks
the few Socket.IO packets it needs itself (:class:`Connection`: connect, a ``process`` event with
one binary attachment and its ack, ``result`` events, Engine.IO's ping) over an aiohttp
websocket, on uvloop where it is installed. python-socketio's ``AsyncClient`` cost 0.2 ms of CPU a
frame, as much as the server's ingest of it; this costs half as much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.ingest import machine_cpu_seconds, tree_cpu_seconds
from server.settings import SessionSettings

CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0
CONNECTING_AT_ONCE = 8
SESSION_ID_NAME = SessionSettings().session_id_name
# Engine.IO 4 packet types (the first character of a text message) and Socket.IO 5 ones (the
# second, in a message packet); a binary websocket message is an attachment as it is.
EIO_OPEN, EIO_PING, EIO_PONG, EIO_MESSAGE = "0", "2", "3", "4"
SIO_CONNECT, SIO_DISCONNECT, SIO_EVENT, SIO_ACK, SIO_CONNECT_ERROR = "0", "1", "2", "3", "4"
SIO_BINARY_EVENT = "5"
# A process event whose one argument is the attachment that follows it.
PROCESS_WITH_ONE_ATTACHMENT = '["process",{"_placeholder":true,"num":0}]'

OnResult = Callable[[dict[str, Any]], None]


class Connection:
    """One Socket.IO client connection over a websocket: ``process`` calls and ``result`` events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, on_result: OnResult) -> None:
        self._ws = ws
        self._on_result = on_result
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, url: str, auth: dict[str, str], on_result: OnResult
    ) -> Connection:
        """Connect to the default namespace with ``auth``; RuntimeError if refused."""
        ws = await http.ws_connect(
            f"{url}/socket.io/?EIO=4&transport=websocket", timeout=aiohttp.ClientWSTimeout(10.0)
        )
        async with asyncio.timeout(CONNECT_TIMEOUT):
            if not (await ws.receive_str()).startswith(EIO_OPEN):
                raise RuntimeError("no Engine.IO open packet")
            await ws.send_str(EIO_MESSAGE + SIO_CONNECT + json.dumps(auth))
            while True:
                reply = await ws.receive_str()
                if reply == EIO_PING:
                    await ws.send_str(EIO_PONG)
                elif reply.startswith(EIO_MESSAGE + SIO_CONNECT_ERROR):
                    raise RuntimeError(f"connection refused: {reply[2:]}")
                elif reply.startswith(EIO_MESSAGE + SIO_CONNECT):
                    break
        connection = cls(ws, on_result)
        connection._reader = asyncio.get_running_loop().create_task(connection._read())
        return connection

    async def process(self, frame: bytes) -> Any:
        """Send one frame as a ``process`` event; its ack."""
        ack_id = self._next_id
        self._next_id += 1
        answer = self._acks[ack_id] = asyncio.get_running_loop().create_future()
        # The packet with its attachment count and ack id, then the attachment.
        await self._ws.send_str(
            f"{EIO_MESSAGE}{SIO_BINARY_EVENT}1-{ack_id}{PROCESS_WITH_ONE_ATTACHMENT}"
        )
        await self._ws.send_bytes(frame)
        async with asyncio.timeout(CALL_TIMEOUT):
            return await answer

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            text: str = message.data
            if text == EIO_PING:
                await self._ws.send_str(EIO_PONG)
            elif text.startswith(EIO_MESSAGE + SIO_ACK):
                body = text.index("[")
                answer = self._acks.pop(int(text[2:body]), None)
                if answer is not None and not answer.done():
                    answer.set_result(json.loads(text[body:])[0])
            elif text.startswith(EIO_MESSAGE + SIO_EVENT):
                name, *data = json.loads(text[2:])
                if name == "result":
                    self._on_result(data[0])
            elif text.startswith(EIO_MESSAGE + SIO_DISCONNECT):
                break
        for answer in self._acks.values():
            if not answer.done():
                answer.set_exception(RuntimeError("the server closed the connection"))

    async def close(self) -> None:
        """Leave the namespace and close the websocket."""
        if not self._ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._ws.send_str(EIO_MESSAGE + SIO_DISCONNECT)
            await self._ws.close()
        if self._reader is not None:
            await self._reader


@dataclass(slots=True)
class Camera:
    """One paced camera: what it sent and what came back to it."""

    window: tuple[float, float]
    connection: Connection | None = None
    sent: int = 0
    acked: int = 0
    refused: int = 0
    sent_in_window: int = 0
    last_acked: int = -1
    covered: int = -1  # the last frame number a result has covered
    dropped: int = 0
    frames_in_results: int = 0
    failed_frames: int = 0
    analysed_in_window: int = 0
    latencies: list[float] = field(default_factory=list)
    sent_at: dict[int, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def on_result(self, message: dict[str, Any]) -> None:
        """Count one ``result``: its frames, the drops it reports, its latency."""
        arrived = time.perf_counter()
        clip = message.get("clip", {})
        frames = int(clip.get("frames", 0))
        self.dropped += int(clip.get("dropped", 0))
        answers = message.get("result", {})
        failed = "error" in message or any(
            isinstance(answer, dict) and "error" in answer for answer in answers.values()
        )
        if failed:
            self.failed_frames += frames
        else:
            self.frames_in_results += frames
        last = int(clip.get("last_frame", -1))
        self.covered = max(self.covered, last)
        sent_at = self.sent_at.pop(last, None)
        start, end = self.window
        if start <= arrived < end:
            if not failed:
                self.analysed_in_window += frames
            if sent_at is not None:
                self.latencies.append(arrived - sent_at)
        if self.covered >= self.last_acked >= 0 and arrived >= end:
            self.done.set()

    async def run(self, frames: list[bytes], period: float, phase: float) -> None:
        """Send frames at ``1 / period`` fps from ``phase`` until the window ends."""
        start, end = self.window
        slot = time.perf_counter() + phase
        index = 0
        while True:
            now = time.perf_counter()
            if now < slot:
                await asyncio.sleep(slot - now)
            now = time.perf_counter()
            if now >= end:
                break
            frame = frames[index % len(frames)]
            index += 1
            self.sent += 1
            if now >= start:
                self.sent_in_window += 1
            # The server numbers the frames it takes 0, 1, 2...; noted before the call, as the
            # result of a clip may be read before this task sees the ack of its last frame.
            number = self.acked
            self.sent_at[number] = now
            assert self.connection is not None
            ack: dict[str, Any] = await self.connection.process(frame)
            if ack.get("ok"):
                if ack["frame"] != number:
                    raise RuntimeError(f"frame acked as number {ack['frame']}, not {number}")
                self.acked += 1
                self.last_acked = number
            else:
                del self.sent_at[number]
                self.refused += 1
            slot = max(slot + period, time.perf_counter())
        if self.covered >= self.last_acked:
            self.done.set()


async def connect(http: aiohttp.ClientSession, url: str, window: tuple[float, float]) -> Camera:
    """A camera connected with a fresh session id."""
    async with http.get(f"{url}/get_session_id") as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET /get_session_id answered {resp.status}: {await resp.text()}")
        session_id = (await resp.json())["session_id"]
    camera = Camera(window)
    auth = {SESSION_ID_NAME: session_id}
    camera.connection = await Connection.open(http, url, auth, camera.on_result)
    return camera


@dataclass(slots=True)
class Tally:
    """CPU seconds at the window's two ends, and the cameras."""

    cameras: list[Camera]
    cpu_start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    cpu_end: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def report(self, seconds: float) -> dict[str, Any]:
        """The JSON line this process prints."""
        cameras = self.cameras
        acked = sum(c.acked for c in cameras)
        dropped = sum(c.dropped for c in cameras)
        returned = sum(c.frames_in_results + c.failed_frames for c in cameras)
        server, main, own, machine = (
            end - start for start, end in zip(self.cpu_start, self.cpu_end, strict=True)
        )
        return {
            "cameras": len(cameras),
            "seconds": seconds,
            "sent": sum(c.sent for c in cameras),
            "acked": acked,
            "refused": sum(c.refused for c in cameras),
            "dropped": dropped,
            "frames_in_results": sum(c.frames_in_results for c in cameras),
            "failed_frames": sum(c.failed_frames for c in cameras),
            "missing": acked - dropped - returned,
            "sent_in_window": sum(c.sent_in_window for c in cameras),
            "analysed_in_window": sum(c.analysed_in_window for c in cameras),
            "latencies": sorted(latency for c in cameras for latency in c.latencies),
            "cpu": {"server": server, "main": main, "cameras": own, "machine": machine},
        }


def cpu_now(server_pid: int) -> tuple[float, float, float, float]:
    """CPU seconds of the server (with its analysis workers), of its main process alone, of this
    process and of the machine."""
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = Path(f"/proc/{server_pid}/stat").read_text().rpartition(")")[2].split()
    main = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return tree_cpu_seconds(server_pid), main, time.process_time(), machine_cpu_seconds()


async def run_cameras(args: argparse.Namespace, frames: list[bytes]) -> dict[str, Any]:
    """Connect, send through the warm-up and the window, wait for the tail, report."""
    limit = asyncio.Semaphore(CONNECTING_AT_ONCE)
    # The window is known only once everyone is connected; until then it lies in the future.
    window = [float("inf"), float("inf")]

    async def one(http: aiohttp.ClientSession) -> Camera:
        async with limit:
            return await connect(http, args.url, (window[0], window[1]))

    async with aiohttp.ClientSession() as http:
        cameras = await asyncio.gather(*(one(http) for _ in range(args.cameras)))
        try:
            start = time.perf_counter() + args.warm_up
            for camera in cameras:
                camera.window = (start, start + args.seconds)
            tally = Tally(cameras)
            period = 1.0 / args.fps
            senders = [
                asyncio.create_task(camera.run(frames, period, period * i / len(cameras)))
                for i, camera in enumerate(cameras)
            ]
            await asyncio.sleep(start - time.perf_counter())
            tally.cpu_start = cpu_now(args.server_pid)
            await asyncio.sleep(start + args.seconds - time.perf_counter())
            tally.cpu_end = cpu_now(args.server_pid)
            await asyncio.wait_for(asyncio.gather(*senders), CALL_TIMEOUT + 1.0)
            waits = [asyncio.create_task(camera.done.wait()) for camera in cameras]
            await asyncio.wait(waits, timeout=args.tail)
            for wait in waits:
                wait.cancel()
            return tally.report(args.seconds)
        finally:
            await asyncio.gather(
                *(camera.connection.close() for camera in cameras if camera.connection)
            )


def main() -> int:
    """Run the cameras as the module docstring says; 0, or 1 after printing the error."""
    parser = argparse.ArgumentParser(prog="python -m bench._capacity_cameras")
    parser.add_argument("url")
    parser.add_argument("--frames", type=Path, required=True, help="folder of .jpg files")
    parser.add_argument("--cameras", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--warm-up", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tail", type=float, default=10.0)
    args = parser.parse_args()
    frames = [path.read_bytes() for path in sorted(args.frames.glob("*.jpg"))]
    # On uvloop where installed, as framehub runs: the cameras share the machine's cores with the
    # server, and the loop's own work is most of what a camera costs.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        report = asyncio.run(run_cameras(args, frames))
    except Exception as exc:  # the parent shows it, with this process's log
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
