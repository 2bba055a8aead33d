"""One session's pipeline: closing it (and cancelling a close), the first-pixel ack, the stop's
first steps as a client sees them, and load shed before work when analyses fall behind.

framehub comes from ``create_app`` on a loopback port with a real analysis API that can hold its
answers back (``gate``), fed by python-socketio clients.
"""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from server.app import stop

if TYPE_CHECKING:
    from conftest import LiveFrames, LiveServerFactory, LiveServerWithApiFactory


async def test_a_cancelled_close_is_cancelled(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(clips={"frames": 30, "max_wait": 60.0})
    api.gate.clear()  # the last clip's analysis hangs
    client = await server.connect()
    for index in range(3):
        assert (await client.process(live_frames.encode(index)))["ok"]
    session = server.registry.get(client.sio.get_sid())
    assert session is not None
    closing = asyncio.create_task(session.close(flush=True))
    await api.until_clips(1)
    closing.cancel()
    # The close was cancelled by its caller: that must reach the caller, not end as a success.
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert closing.cancelled()
    api.gate.set()


async def test_ack_carries_the_first_pixel_when_asked(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(frames={"ack_first_pixel": True})
    client = await server.connect()
    colour = live_frames.colour(3)
    ack = await client.process(live_frames.encode(3))
    assert ack["ok"]
    # A flat JPEG: lossy, so within a few levels.
    assert ack["first_pixel"] == pytest.approx(list(colour), abs=4)
    image = Image.new("RGB", (40, 30), (10, 20, 30))
    image.putpixel((0, 0), (200, 100, 50))
    png = io.BytesIO()
    image.save(png, format="PNG")
    ack = await client.process(png.getvalue())
    assert ack["first_pixel"] == [200, 100, 50]  # lossless and decoded whole: exact


async def test_ack_has_no_first_pixel_by_default(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server()
    client = await server.connect()
    ack = await client.process(live_frames.encode(0))
    assert set(ack) == {"ok", "frame", "size", "camera"}


async def test_stop_acks_stopping_and_sends_the_last_result_before_disconnecting(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(
        server={"shutdown_timeout": 10.0}, clips={"frames": 30, "max_wait": 60.0}
    )
    api.gate.clear()
    client = await server.connect()
    for index in range(3):
        assert (await client.process(live_frames.encode(index)))["ok"]
    # As server.cli stops: the ordered stop first, while connections are still read.
    stopping = asyncio.create_task(stop(server.app))
    await api.until_clips(1)  # the partial clip went out as the stop's last clip
    ack = await client.process(live_frames.encode(3))
    assert ack["ok"] is False
    assert ack["stopping"] is True
    assert "ending" in ack["error"]
    assert client.sio.connected  # not yet: its last result is still to come
    assert not stopping.done()
    api.gate.set()
    (result,) = await client.until_results(1)
    assert result["clip"]["frames"] == 3
    assert result["result"]["a"]["frames"] == 3
    await asyncio.wait_for(stopping, 10.0)
    await server.until(lambda: not client.sio.connected, "client disconnected by the stop")
    await server.test_server.close()


# Load shed before work -------------------------------------------------------------------------


async def test_frames_are_dropped_before_they_are_encoded_when_analyses_fall_behind(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(
        clips={"frames": 2, "max_wait": 5.0}, frames={"queue_size": 2}
    )
    api.gate.clear()
    client = await server.connect()
    for index in range(4):
        assert (await client.process(live_frames.encode(index)))["ok"]
    await api.until_clips(2)  # the session's two analyses in flight, held at the API
    for index in range(4, 24):
        assert (await client.process(live_frames.encode(index)))["ok"]
    # The window (frames 4 and 5) waits to be admitted, unencoded; the queue keeps the newest two
    # frames and the sixteen before them were dropped, having cost only their header check.
    assert server.clips_encoded == 2
    session = server.registry.get(client.sio.get_sid())
    assert session is not None
    assert session.counters.dropped == 16
    api.gate.set()
    results = await client.until_results(4)
    assert [r["clip"]["frames"] for r in results] == [2, 2, 2, 2]
    assert [r["clip"]["first_frame"] for r in results] == [0, 2, 4, 22]
    # A clip's dropped count is the gap just before it.
    assert [r["clip"]["dropped"] for r in results] == [0, 0, 0, 16]
    assert server.clips_encoded == 4
    # The session goes on as before.
    for index in range(24, 26):
        assert (await client.process(live_frames.encode(index)))["ok"]
    results = await client.until_results(5)
    assert (results[4]["clip"]["first_frame"], results[4]["clip"]["dropped"]) == (24, 0)


async def test_clips_of_all_sessions_in_flight_are_bounded(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(
        clips={"frames": 2, "max_wait": 5.0, "max_concurrent_requests": 2}
    )
    assert server.registry.pipeline.max_clips_in_flight == 2
    api.gate.clear()
    clients = [await server.connect() for _ in range(3)]
    for client in clients:
        for index in range(2):
            assert (await client.process(live_frames.encode(index)))["ok"]
    await api.until_clips(2)
    await asyncio.sleep(0.3)
    # The third session's clip waits for a place before it is encoded.
    assert (len(api.clips), server.clips_encoded) == (2, 2)
    api.gate.set()
    for client in clients:
        (result,) = await client.until_results(1)
        assert result["clip"]["frames"] == 2
    assert server.clips_encoded == 3
