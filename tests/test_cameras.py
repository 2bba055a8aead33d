"""Live cameras: named sessions watched through ``/live``, MJPEG, Server-Sent Events and Socket.IO
rooms, taken over by a reconnecting camera, kept listed while offline.

framehub comes from ``create_app`` on a loopback port; cameras are real python-socketio clients
sending real JPEG frames, viewers real aiohttp clients reading the streams as a browser would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from common import write_video
from conftest import LIVE_TIMEOUT, Images, LiveClient
from server.keys import camera_registry_key
from server.web.mjpeg import MJPEG_BOUNDARY

if TYPE_CHECKING:
    from conftest import LiveFrames, LiveServer, LiveServerFactory, LiveServerWithApiFactory


async def connect_camera(
    server: LiveServer,
    camera: str | None = None,
    *,
    watch: bool = False,
    token: str | None = None,
) -> LiveClient:
    """A client connected as camera ``camera`` (its name in ``auth``), or a watch-only one."""
    client = LiveClient()
    server.clients.append(client)
    auth: dict[str, Any] = {"token": token} if token else {}
    if watch:
        auth["watch"] = True
    else:
        auth["session_id"] = await server.session_id(token)
    if camera is not None:
        auth["camera"] = camera
    await client.sio.connect(
        server.url, auth=auth, transports=["websocket"], wait_timeout=LIVE_TIMEOUT
    )
    return client


async def get_json(server: LiveServer, path: str, status: int = 200) -> Any:
    async with server.http.get(f"{server.url}{path}") as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


async def mjpeg_parts(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[dict[str, str], bytes]]:
    """The parts of an MJPEG stream as they arrive: their headers and bytes."""
    boundary = f"--{MJPEG_BOUNDARY}\r\n".encode()
    while True:
        line = await resp.content.readline()
        if not line:
            return
        assert line == boundary, line
        headers: dict[str, str] = {}
        while (line := await resp.content.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await resp.content.readexactly(int(headers["content-length"]))
        assert await resp.content.readexactly(2) == b"\r\n"
        yield headers, body


async def test_a_named_camera_is_listed_and_its_newest_frame_served(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server()
    async with server.http.get(f"{server.url}/get_session_id?camera=gate") as resp:
        reserved = await resp.json()
    assert reserved["camera"] == "gate"
    client = LiveClient()
    server.clients.append(client)
    await client.sio.connect(
        server.url, auth={"session_id": reserved["session_id"]}, transports=["websocket"]
    )
    frames = [live_frames.encode(index) for index in range(3)]
    acks = [
        await client.process({"image": frame, "ts": 1000.0 + i}) for i, frame in enumerate(frames)
    ]
    assert acks[0]["camera"] == "gate"  # the first ack names the camera
    assert "camera" not in acks[1]
    cameras = await get_json(server, "/live")
    gate = cameras["gate"]
    assert gate["online"] is True
    assert gate["frames"] == 3
    assert gate["size"] == [64, 48]
    assert gate["recording"] is None
    assert gate["fps"] > 0
    async with server.http.get(f"{server.url}/live/gate/latest.jpg") as resp:
        assert resp.status == 200
        assert resp.content_type == "image/jpeg"
        assert resp.headers["X-Frame-Number"] == "2"
        assert resp.headers["X-Frame-Timestamp"] == "1002.000"
        assert resp.headers["Cache-Control"] == "no-store"
        assert "X-Placeholder" not in resp.headers
        assert await resp.read() == frames[2]  # the bytes as received


async def test_a_camera_without_a_name_gets_one(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server()
    client = await server.connect()
    ack = await client.process(live_frames.encode(0))
    await server.until(lambda: client.events["session"], "session event")
    (announced,) = client.events["session"]
    assert announced["camera"] == ack["camera"]
    assert announced["camera"].startswith("cam-")
    assert announced["camera"] in await get_json(server, "/live")


@pytest.mark.parametrize("name", ["../x", ".hidden", "a b", "x" * 65])
async def test_bad_camera_names_are_refused_with_the_rule(
    live_server: LiveServerFactory, name: str
) -> None:
    server = await live_server()
    async with server.http.get(f"{server.url}/get_session_id", params={"camera": name}) as resp:
        assert resp.status == 400
        assert "repository name rule" in (await resp.json())["error"]
    client = LiveClient()
    session_id = await server.session_id()
    with pytest.raises(Exception, match=r"Connection refused|One or more namespaces failed"):
        await client.sio.connect(
            server.url, auth={"session_id": session_id, "camera": name}, transports=["websocket"]
        )
    assert "repository name rule" in str(client.connect_errors[-1])


async def test_unknown_cameras_answer_the_placeholder_or_404(
    live_server: LiveServerFactory,
) -> None:
    server = await live_server()
    async with server.http.get(f"{server.url}/live/nobody/latest.jpg") as resp:
        assert resp.status == 200
        assert resp.headers["X-Placeholder"] == "true"
    assert "no live camera" in (await get_json(server, "/live/nobody/result", 404))["error"]
    assert "no live camera" in (await get_json(server, "/live/nobody/events", 404))["error"]
    assert "invalid camera name" in (await get_json(server, "/live/.x/latest.jpg", 400))["error"]


async def test_a_reconnecting_camera_takes_its_name_over_losing_no_result(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(clips={"frames": 30, "max_wait": 60.0})
    watcher = await connect_camera(server, watch=True)
    assert (await watcher.sio.call("watch", {"camera": "gate"})) == {"ok": True, "camera": "gate"}
    api.gate.clear()  # the old session's last clip is still being analysed at the takeover
    old = await connect_camera(server, "gate")
    for index in range(2):
        assert (await old.process(live_frames.encode(index)))["ok"]
    new = await connect_camera(server, "gate")
    await server.until(lambda: not old.sio.connected, "old session ended by the takeover")
    assert (await new.process(live_frames.encode(5)))["ok"]
    gate = (await get_json(server, "/live"))["gate"]
    assert gate["online"] is True
    api.gate.set()
    (result,) = await watcher.until_results(1)
    assert result["camera"] == "gate"
    assert result["clip"]["frames"] == 2  # the old session's last clip
    assert result["result"]["a"]["frames"] == 2
    assert (await get_json(server, "/live/gate/result"))["clip"] == result["clip"]


async def test_takeover_off_refuses_a_second_session(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(live={"takeover": False})
    first = await connect_camera(server, "gate")
    client = LiveClient()
    session_id = await server.session_id()
    with pytest.raises(Exception, match=r"Connection refused|One or more namespaces failed"):
        await client.sio.connect(
            server.url, auth={"session_id": session_id, "camera": "gate"}, transports=["websocket"]
        )
    assert "already streaming" in str(client.connect_errors[-1])
    assert first.sio.connected
    assert (await first.process(live_frames.encode(0)))["ok"]


async def test_an_offline_camera_stays_listed_for_keep_seconds(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(live={"keep": 0.5})
    client = await connect_camera(server, "gate")
    assert (await client.process(live_frames.encode(0)))["ok"]
    await client.disconnect()
    await server.until_sessions_freed()
    gate = (await get_json(server, "/live"))["gate"]
    assert gate["online"] is False
    async with server.http.get(f"{server.url}/live/gate/latest.jpg") as resp:
        assert resp.headers["X-Placeholder"] == "true"
    await asyncio.sleep(0.6)
    assert "gate" not in await get_json(server, "/live")


async def test_mjpeg_viewers_get_frames_as_they_arrive_and_the_placeholder_offline(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(live={"max_viewers": 2})
    camera = await connect_camera(server, "gate")
    frames = [live_frames.encode(index) for index in range(3)]
    async with server.http.get(f"{server.url}/live/gate/video.mjpg") as viewer:
        assert viewer.status == 200
        assert viewer.content_type == "multipart/x-mixed-replace"
        parts = mjpeg_parts(viewer)
        headers, body = await anext(parts)  # nothing sent yet: the placeholder
        assert headers["content-type"] == "image/jpeg"
        for frame in frames:
            assert (await camera.process(frame))["ok"]
            _headers, body = await asyncio.wait_for(anext(parts), LIVE_TIMEOUT)
            assert body == frame
        async with server.http.get(f"{server.url}/live/gate/video.mjpg") as second:
            assert second.status == 200
            async with server.http.get(f"{server.url}/live/gate/video.mjpg") as third:
                assert third.status == 503
                assert "max_viewers" in (await third.json())["error"]
        await camera.disconnect()
        _headers, body = await asyncio.wait_for(anext(parts), LIVE_TIMEOUT)
        assert body not in frames  # the placeholder again
    # Viewers that left mid-stream leave nothing behind.
    cameras = server.app[camera_registry_key]
    await server.until(lambda: cameras.viewers("gate") == 0, "no viewer left")
    assert (await get_json(server, "/live"))["gate"]["viewers"] == 0


async def test_a_slow_viewer_gets_the_newest_frame_not_a_backlog(
    live_server: LiveServerFactory,
) -> None:
    server = await live_server()
    camera = await connect_camera(server, "gate")
    # Frames of noise, about 0.9 MB each: 48 of them are far more than the socket buffers hold.
    frames = [Images.save(Images.noise((800, 600)), quality=95) for _ in range(48)]
    async with server.http.get(f"{server.url}/live/gate/video.mjpg") as viewer:
        parts = mjpeg_parts(viewer)
        await anext(parts)  # placeholder
        for frame in frames:  # while the viewer reads nothing
            assert (await camera.process(frame))["ok"]
        bodies: list[bytes] = []
        async with asyncio.timeout(LIVE_TIMEOUT):
            while not bodies or bodies[-1] != frames[-1]:
                bodies.append((await anext(parts))[1])
    # What the buffers held when the viewer fell behind, then straight to the newest.
    assert len(bodies) < len(frames) // 2
    assert len(set(bodies)) == len(bodies)


async def test_events_stream_results_and_going_offline(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, _api = await live_server_with_api(clips={"frames": 2})
    camera = await connect_camera(server, "gate")
    assert (await get_json(server, "/live/gate/result", 404))["error"].endswith("no result yet")
    async with server.http.get(f"{server.url}/live/gate/events") as stream:
        assert stream.content_type == "text/event-stream"

        async def next_event() -> tuple[str, Any]:
            event, data = "", None
            while True:
                line = (await asyncio.wait_for(stream.content.readline(), LIVE_TIMEOUT)).decode()
                if line.startswith("event: "):
                    event = line.removeprefix("event: ").strip()
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                elif line == "\n" and event:
                    return event, data

        assert await next_event() == ("online", {"camera": "gate", "online": True})
        for index in range(2):
            assert (await camera.process(live_frames.encode(index)))["ok"]
        event, result = await next_event()
        assert event == "result"
        assert result["camera"] == "gate"
        assert result["result"]["a"]["frames"] == 2
        await camera.disconnect()
        assert await next_event() == ("offline", {"camera": "gate", "online": False})
    assert (await get_json(server, "/live/gate/result"))["clip"] == result["clip"]


async def test_unwatch_stops_the_results(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(clips={"frames": 1})
    watcher = await connect_camera(server, watch=True)
    assert (await watcher.sio.call("watch", {"camera": "gate"}))["ok"]
    bad = await watcher.sio.call("watch", {"camera": "../x"})
    assert bad["ok"] is False and "repository name rule" in bad["error"]
    camera = await connect_camera(server, "gate")
    assert (await camera.process(live_frames.encode(0)))["ok"]
    await watcher.until_results(1)
    assert (await watcher.sio.call("unwatch", {"camera": "gate"}))["ok"]
    assert (await camera.process(live_frames.encode(1)))["ok"]
    await camera.until_results(2)
    await asyncio.sleep(0.1)
    assert len(watcher.results) == 1
    refused = await watcher.process(live_frames.encode(0))
    assert refused["ok"] is False and "session id" in refused["error"]


async def test_private_live_routes_need_the_token(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    token = "s3cret-token"
    server = await live_server(server={"api_token": token, "public": ["camera", "ui", "metrics"]})
    for path in ("/live", "/live/gate/latest.jpg", "/live/gate/video.mjpg", "/live/gate/events"):
        async with server.http.get(f"{server.url}{path}") as resp:
            assert resp.status == 401, path
    headers = {"Authorization": f"Bearer {token}"}
    async with server.http.get(f"{server.url}/live", headers=headers) as resp:
        assert resp.status == 200
    with pytest.raises(Exception, match=r"Connection refused|One or more namespaces failed"):
        await connect_camera(server, watch=True)
    watcher = await connect_camera(server, watch=True, token=token)
    assert watcher.sio.connected


async def test_public_live_routes_are_open_with_a_token_set(live_server: LiveServerFactory) -> None:
    server = await live_server(server={"api_token": "s3cret-token"})
    async with server.http.get(f"{server.url}/live") as resp:
        assert resp.status == 200
    watcher = await connect_camera(server, watch=True)  # watching needs no token
    assert watcher.sio.connected


async def test_a_recorded_camera_becomes_a_repository(
    live_server: LiveServerFactory, tmp_path: Path
) -> None:
    repositories = tmp_path / "repos"
    server = await live_server(
        repositories={"dir": str(repositories), "rescan_interval": 0.0},
        recording={"cameras": ["gate"], "repository": "rec-{camera}"},
    )
    camera = await connect_camera(server, "gate")
    frames = [Images.encode(index, size=(80, 60)) for index in range(3)]
    for frame in frames:
        assert (await camera.process(frame))["ok"]
    assert (await get_json(server, "/live"))["gate"]["recording"] == "rec-gate"
    await server.until(
        lambda: len(list((repositories / "rec-gate").glob("frame-*"))) == 3, "3 files"
    )
    listing = await get_json(server, "/")
    assert listing["rec-gate"]["count"] == 3
    for index, frame in enumerate(frames):  # replayed in arrival order, bytes as received
        async with server.http.get(f"{server.url}/rec-gate/frames/{index}") as resp:
            assert await resp.read() == frame
    # A reconnect continues the numbering.
    await camera.disconnect()
    again = await connect_camera(server, "gate")
    assert (await again.process(Images.encode(9, size=(80, 60))))["ok"]
    await server.until(
        lambda: len(list((repositories / "rec-gate").glob("frame-*"))) == 4, "4 files"
    )
    assert sorted(path.name.split("-")[1] for path in (repositories / "rec-gate").iterdir()) == [
        "0",
        "1",
        "2",
        "3",
    ]


async def test_recording_into_an_unrelated_repository_is_refused_at_connect(
    live_server: LiveServerFactory, tmp_path: Path
) -> None:
    repositories = tmp_path / "repos"
    Images().folder(repositories / "gate", ["holiday-1.jpg", "holiday-2.jpg"])
    server = await live_server(
        repositories={"dir": str(repositories)}, recording={"cameras": ["*"]}
    )
    client = LiveClient()
    session_id = await server.session_id()
    with pytest.raises(Exception, match=r"Connection refused|One or more namespaces failed"):
        await client.sio.connect(
            server.url, auth={"session_id": session_id, "camera": "gate"}, transports=["websocket"]
        )
    reason = str(client.connect_errors[-1])
    assert "gate" in reason and "[recording] repository" in reason
    assert sorted(path.name for path in (repositories / "gate").iterdir()) == [
        "holiday-1.jpg",
        "holiday-2.jpg",
    ]
    assert "gate" not in await get_json(server, "/live")


async def test_results_and_camera_events_reach_the_webhooks(
    live_server: LiveServerFactory, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({})

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    hook_server = await aiohttp_server(receiver)
    server = await live_server(
        clips={"frames": 2},
        processors={"summary": {"builtin": "summary"}},
        webhooks={"all": {"url": str(hook_server.make_url("/hook")), "retries": 0}},
    )
    camera = await connect_camera(server, "gate")
    for index in range(2):
        assert (await camera.process(Images.encode(index)))["ok"]
    await camera.until_results(1)
    await camera.disconnect()
    await server.until(lambda: len(received) >= 3, "three webhook events")
    online, result, offline = received[:3]
    assert online == {"event": "camera", "camera": "gate", "online": True}
    assert result["event"] == "result" and result["camera"] == "gate"
    assert result["result"]["summary"]["frames"] == 2
    assert offline == {"event": "camera", "camera": "gate", "online": False}
    # A finished batch job goes out too.
    video = write_video(
        tmp_path / "clip.mp4", [Images.picture(i) for i in range(4)], size=(64, 48), fps=10
    )
    form = aiohttp.FormData()
    form.add_field("file", video.read_bytes(), filename="clip.mp4", content_type="video/mp4")
    async with server.http.post(f"{server.url}/batch", data=form) as resp:
        job = (await resp.json())["job"]
    await server.until(lambda: len(received) >= 4, "the batch webhook event")
    batch = received[3]
    assert (batch["event"], batch["job"], batch["status"]) == ("batch", job, "done")
    assert batch["result"]["summary"]["frames"] == 4


async def test_the_camera_name_may_come_in_the_connect_query(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server()
    client = LiveClient()
    server.clients.append(client)
    session_id = await server.session_id()
    await client.sio.connect(
        f"{server.url}?session_id={session_id}&camera=yard", transports=["websocket"]
    )
    assert (await client.process(live_frames.encode(0)))["camera"] == "yard"
    assert (await get_json(server, "/live"))["yard"]["online"] is True


async def test_mjpeg_fps_caps_the_rate_and_is_checked(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server()
    camera = await connect_camera(server, "gate")
    assert "fps must be" in (await get_json(server, "/live/gate/video.mjpg?fps=0", 400))["error"]
    assert (await camera.process(live_frames.encode(0)))["ok"]
    async with server.http.get(f"{server.url}/live/gate/video.mjpg?fps=2") as viewer:
        parts = mjpeg_parts(viewer)
        await anext(parts)  # frame 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index in range(1, 6):  # five frames at once: at 2 fps only the newest follows
            assert (await camera.process(live_frames.encode(index)))["ok"]
        _headers, body = await asyncio.wait_for(anext(parts), LIVE_TIMEOUT)
        assert loop.time() - started >= 0.45
        assert body == live_frames.encode(5)
