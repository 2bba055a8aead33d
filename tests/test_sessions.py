"""Live sessions: ids and their limits, frames grouped into clips, the bounded frame queue, the end
of a session.

Everything is a real part: framehub comes from ``create_app`` on a loopback port, clients are
python-socketio ``AsyncClient``s over a websocket, frames are Pillow images whose colour tells
their number, and the analysis APIs are aiohttp applications that decode each clip with PyAV (see
``fakes.py``), so the frames and their order are checked in the clips the APIs received.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

import pytest

from apps import LiveClient
from server.keys import socketio_key

if TYPE_CHECKING:
    from apps import LiveClient, LiveServer, LiveServerFactory, LiveServerWithApiFactory
    from common import LiveFrames
    from fakes import ClipApi

TIMEOUT = 10.0


def clip_bounds(results: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """``(first_frame, last_frame)`` of each result's clip."""
    return [(r["clip"]["first_frame"], r["clip"]["last_frame"]) for r in results]


async def nothing_more(count: int, seen: Any, seconds: float) -> None:
    """Wait ``seconds`` and check that ``seen()`` still has ``count`` items."""
    await asyncio.sleep(seconds)
    assert len(seen()) == count


# Session ids ------------------------------------------------------------------------------------


async def test_session_ids_are_random_and_not_cached(live_server: LiveServerFactory) -> None:
    server = await live_server()
    ids = set()
    for _ in range(3):
        async with server.http.get(f"{server.url}/get_session_id") as resp:
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == "no-store"
            session_id = (await resp.json())["session_id"]
        assert len(base64.urlsafe_b64decode(session_id + "==")) >= 16  # 128 random bits or more
        ids.add(session_id)
    assert len(ids) == 3
    assert await server.registry.pending_count() == 3


async def test_unknown_session_id_is_refused_with_a_reason(live_server: LiveServerFactory) -> None:
    server = await live_server()
    reason = await server.refusal("no-such-id")
    assert "unknown or expired session id" in reason["message"]
    assert server.registry.live_count == 0


async def test_expired_session_id_is_refused(live_server: LiveServerFactory) -> None:
    server = await live_server(sessions={"ttl": 0.2})
    session_id = await server.session_id()
    await asyncio.sleep(0.3)
    reason = await server.refusal(session_id)
    assert "unknown or expired session id" in reason["message"]
    assert await server.registry.pending_count() == 0


async def test_connecting_before_the_ttl_works(live_server: LiveServerFactory) -> None:
    server = await live_server(sessions={"ttl": 1.0})
    client = await server.connect()
    assert client.sio.connected
    assert server.registry.live_count == 1
    assert await server.registry.pending_count() == 0


async def test_pending_ids_are_capped(live_server: LiveServerFactory) -> None:
    server = await live_server(sessions={"max_pending": 3})
    ids = [await server.session_id() for _ in range(3)]
    async with server.http.get(f"{server.url}/get_session_id") as resp:
        assert resp.status == 503
        assert "too many unused session ids" in (await resp.json())["error"]
    # Using an id frees its place.
    await server.connect(ids[0])
    assert await server.session_id()


async def test_expired_ids_free_the_cap(live_server: LiveServerFactory) -> None:
    server = await live_server(sessions={"max_pending": 2, "ttl": 0.2})
    for _ in range(2):
        await server.session_id()
    async with server.http.get(f"{server.url}/get_session_id") as resp:
        assert resp.status == 503
    await asyncio.sleep(0.3)
    assert await server.session_id()
    assert await server.registry.pending_count() == 1


async def test_an_id_serves_one_connection_only(live_server: LiveServerFactory) -> None:
    server = await live_server()
    session_id = await server.session_id()
    client = await server.connect(session_id)
    reason = await server.refusal(session_id)
    assert "already in use" in reason["message"]
    await client.disconnect()
    await server.until(lambda: server.registry.live_count == 0, "session ended")
    # The end of the session invalidates its id.
    reason = await server.refusal(session_id)
    assert "unknown or expired session id" in reason["message"]


async def test_no_id_is_refused_unless_generated(live_server: LiveServerFactory) -> None:
    server = await live_server()
    reason = await server.refusal(fetch_id=False)
    assert "no session id" in reason["message"]
    assert "/get_session_id" in reason["message"]


async def test_generated_id_is_announced(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(sessions={"generate_session_id_on_connect": True})
    client = await server.connect(fetch_id=False)
    await server.until(lambda: client.events["session"], "session event")
    (announced,) = client.events["session"]
    session_id = announced["session_id"]
    assert len(base64.urlsafe_b64decode(session_id + "==")) >= 16
    for index in range(4):
        assert (await client.process(live_frames.encode(index)))["ok"]
    (result,) = await client.until_results(1)
    assert result["clip"]["session_id"] == session_id
    # A client that brings its id and its camera name gets no announcement.
    other = LiveClient()
    auth = {"session_id": await server.session_id(), "camera": "gate"}
    await other.sio.connect(server.url, auth=auth, transports=["websocket"])
    assert (await other.process(live_frames.encode()))["camera"] == "gate"
    await other.sio.call("test", "flush")  # events sent before this ack have arrived
    assert other.events["session"] == []
    await other.sio.disconnect()


@pytest.mark.parametrize("in_query", [True, False], ids=["query", "auth"])
async def test_session_id_name_is_configurable(
    live_server: LiveServerFactory, in_query: bool
) -> None:
    server = await live_server(sessions={"session_id_name": "SESSION_ID"})
    client = await server.connect(in_query=in_query)
    assert client.sio.connected
    assert server.registry.live_count == 1


# Frames to clips --------------------------------------------------------------------------------


async def test_clips_back_to_back(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(
        clips={"frames": 4, "stride": 4, "max_wait": 0.3, "timing": "fixed"}
    )
    client = await server.connect()
    acks = [await client.process(live_frames.encode(index)) for index in range(8)]
    assert [ack["frame"] for ack in acks] == list(range(8))
    results = await client.until_results(2)
    assert clip_bounds(results) == [(0, 3), (4, 7)]
    assert [r["clip"]["id"] for r in results] == [0, 1]
    for result in results:
        clip = result["clip"]
        assert clip["frames"] == 4
        assert clip["duration"] == pytest.approx(0.4)
        assert clip["codec"] == "mjpeg"
        assert clip["dropped"] == 0
        assert clip["bytes"] > 0
        assert result["result"]["a"]["frames"] == 4
    assert api.frame_numbers() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # Every frame went out in a full clip: nothing is left to flush.
    await nothing_more(2, lambda: client.results, 0.6)


async def test_clips_overlap_with_a_smaller_stride(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(clips={"frames": 4, "stride": 2, "max_wait": 0.3})
    client = await server.connect()
    for index in range(8):
        assert (await client.process(live_frames.encode(index)))["ok"]
    results = await client.until_results(3)
    assert clip_bounds(results[:3]) == [(0, 3), (2, 5), (4, 7)]
    await api.until_clips(3)
    assert api.frame_numbers()[:3] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]


async def test_overlap_left_after_a_full_clip_is_not_sent_again(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, _api = await live_server_with_api(clips={"frames": 4, "stride": 2, "max_wait": 0.3})
    client = await server.connect()
    for index in range(8):
        assert (await client.process(live_frames.encode(index)))["ok"]
    await client.until_results(3)
    # Frames 6 and 7 were in clip (4, 7); a clip (6, 7) would analyse them twice.
    await nothing_more(3, lambda: client.results, 0.8)


async def test_overlap_left_after_a_full_clip_is_not_the_final_clip(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(clips={"frames": 4, "stride": 2, "max_wait": 5.0})
    client = await server.connect()
    for index in range(4):
        assert (await client.process(live_frames.encode(index)))["ok"]
    await client.until_results(1)
    await client.disconnect()
    await server.until_sessions_freed()
    assert api.frame_numbers() == [[0, 1, 2, 3]]


async def test_partial_clip_is_flushed_after_max_wait(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(
        clips={"frames": 4, "max_wait": 0.3, "timing": "fixed"}
    )
    client = await server.connect()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index in range(2):
        assert (await client.process(live_frames.encode(index)))["ok"]
    (result,) = await client.until_results(1)
    assert loop.time() - started >= 0.3
    assert clip_bounds([result]) == [(0, 1)]
    assert result["clip"]["frames"] == 2
    assert result["clip"]["duration"] == pytest.approx(0.2)
    assert result["result"]["a"]["frames"] == 2
    assert api.clips[0].frames == 2
    # The next frames start a new clip.
    for index in range(2, 6):
        assert (await client.process(live_frames.encode(index)))["ok"]
    results = await client.until_results(2)
    assert clip_bounds(results) == [(0, 1), (2, 5)]


async def test_frames_keep_their_arrival_order(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    count = 24
    server, api = await live_server_with_api(clips={"frames": 8, "max_wait": 1.0})
    client = await server.connect()
    acks: dict[int, dict[str, Any]] = {}
    frames = [live_frames.encode(index) for index in range(count)]

    def acknowledged(index: int) -> Any:
        def callback(ack: dict[str, Any]) -> None:
            acks[index] = ack

        return callback

    # No waiting for acks: the server handles these events concurrently.
    for index, frame in enumerate(frames):
        await client.sio.emit("process", frame, callback=acknowledged(index))
    await server.until(lambda: len(acks) == count, f"{count} acks")
    assert [acks[index]["frame"] for index in range(count)] == list(range(count))
    results = await client.until_results(3)
    assert clip_bounds(results) == [(0, 7), (8, 15), (16, 23)]
    await api.until_clips(3)
    assert api.frame_numbers() == [list(range(start, start + 8)) for start in (0, 8, 16)]


# The bounded queue ------------------------------------------------------------------------------


async def flood(
    live_server_with_api: LiveServerWithApiFactory,
    live_frames: LiveFrames,
    when_full: str,
) -> tuple[LiveServer, ClipApi, LiveClient, list[dict[str, Any]]]:
    """Hold the API until the encoder backs up, then send frames past the queue; their acks."""
    server, api = await live_server_with_api(
        clips={"frames": 2, "max_wait": 5.0},
        frames={"queue_size": 2, "when_full": when_full},
    )
    api.gate.clear()
    client = await server.connect()
    acks = [await client.process(live_frames.encode(index)) for index in range(4)]
    # Two analyses are held at the API: the session allows no more in flight, so the encoder
    # stops at the next clip and frames wait in the queue.
    await api.until_clips(2)
    for index in range(4, 16):
        acks.append(await client.process(live_frames.encode(index)))
    return server, api, client, acks


async def test_flood_drops_the_oldest_frames(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api, client, acks = await flood(live_server_with_api, live_frames, "drop_oldest")
    assert all(ack["ok"] for ack in acks)
    session = server.registry.get(client.sio.get_sid())
    assert session is not None
    dropped = session.counters.dropped
    assert dropped > 0
    assert session.counters.received == 16
    api.release()
    # Clips 0 to 2 left before the queue filled up; the frames kept make one more clip.
    results = await client.until_results(4)
    await nothing_more(4, lambda: client.results, 0.3)
    assert [r["clip"]["dropped"] for r in results[:3]] == [0, 0, 0]
    assert results[3]["clip"]["dropped"] == dropped
    assert sum(r["clip"]["frames"] for r in results) + dropped == 16
    # The newest frames were kept.
    assert results[3]["clip"]["last_frame"] == 15


async def test_flood_rejects_frames_when_asked(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api, client, acks = await flood(live_server_with_api, live_frames, "reject")
    busy = [ack for ack in acks if not ack["ok"]]
    assert busy
    for ack in busy:
        assert ack["busy"] is True
        assert "busy" in ack["error"]
    taken = [ack["frame"] for ack in acks if ack["ok"]]
    assert taken == list(range(len(taken)))  # rejected frames get no number
    api.release()
    results = await client.until_results(4)
    assert all(r["clip"]["dropped"] == 0 for r in results)
    assert sum(r["clip"]["frames"] for r in results) == len(taken)
    session = server.registry.get(client.sio.get_sid())
    assert session is not None
    assert session.counters.rejected == len(busy)
    assert session.counters.dropped == 0


# The end of a session ---------------------------------------------------------------------------


async def test_disconnect_sends_the_last_partial_clip(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(clips={"frames": 8, "max_wait": 5.0})
    client = await server.connect()
    for index in range(11):
        assert (await client.process(live_frames.encode(index)))["ok"]
    await client.until_results(1)
    await nothing_more(1, lambda: api.clips, 0.2)  # frames 8 to 10 wait for their clip
    await client.disconnect()
    await api.until_clips(2)
    assert api.frame_numbers() == [list(range(8)), [8, 9, 10]]
    await server.until_sessions_freed()
    assert server.registry.live_count == 0
    assert client.results[0]["clip"]["last_frame"] == 7


async def test_disconnect_without_final_clip_drops_the_frames(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(
        clips={"frames": 8, "max_wait": 5.0},
        sessions={"final_clip": False},
    )
    client = await server.connect()
    for index in range(3):
        assert (await client.process(live_frames.encode(index)))["ok"]
    await client.disconnect()
    await server.until_sessions_freed()
    await nothing_more(0, lambda: api.clips, 0.2)


async def test_disconnect_while_the_api_is_busy_frees_everything(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(clips={"frames": 2})
    api.gate.clear()
    client = await server.connect()
    for index in range(5):
        assert (await client.process(live_frames.encode(index)))["ok"]
    await api.until_clips(2)
    await client.disconnect()
    await server.until(lambda: server.registry.live_count == 0, "session ended")
    assert server.registry.closing_count == 1  # its clips are still being analysed
    api.release()
    await api.until_clips(3)
    assert api.frame_numbers() == [[0, 1], [2, 3], [4]]
    await server.until_sessions_freed()


async def test_stopping_the_server_cancels_last_clips_after_the_grace_period(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(clips={"frames": 2}, server={"shutdown_timeout": 0.5})
    api.gate.clear()  # the API never answers while the server stops
    client = await server.connect()
    for index in range(3):
        assert (await client.process(live_frames.encode(index)))["ok"]
    await api.until_clips(1)
    await client.disconnect()
    await server.until(lambda: server.registry.live_count == 0, "session ended")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(server.test_server.close(), TIMEOUT)
    assert loop.time() - started < 0.5 + 1.0
    assert server.registry.closing_count == 0
    await server.until_sessions_freed(seconds=1.0)


async def test_results_can_be_turned_off(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(sessions={"emit_result": False})
    client = await server.connect()
    for index in range(4):
        assert (await client.process(live_frames.encode(index)))["ok"]
    await api.until_clips(1)
    await nothing_more(0, lambda: client.results, 0.3)


async def test_sessions_coming_and_going_leave_nothing_behind(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(processors={"summary": {"builtin": "summary"}})
    frame = live_frames.encode()

    visited: list[str] = []

    async def visit() -> None:
        session_id = await server.session_id()
        visited.append(session_id)
        client = await server.connect(session_id)
        assert (await client.process(frame))["ok"]
        await client.disconnect()

    for _ in range(5):
        await asyncio.wait_for(asyncio.gather(*(visit() for _ in range(10))), TIMEOUT)
    await server.until_sessions_freed()
    registry = server.registry
    pending = await registry.pending_count()
    assert (pending, registry.live_count, registry.closing_count) == (0, 0, 0)
    # An id still held in use would be refused as "already in use"; every one is simply unknown.
    reasons = await asyncio.gather(*(server.refusal(session_id) for session_id in visited))
    messages = [reason["message"] for reason in reasons]
    assert len(messages) == 50
    assert all("unknown or expired session id" in message for message in messages), messages
    assert server.clips_encoded == 50  # each visit's frame left as a final clip
    sio = server.app[socketio_key]
    await server.until(lambda: not sio.eio.sockets, "Engine.IO sockets closed")
    assert not list(sio.manager.get_participants("/", None))
