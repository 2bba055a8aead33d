"""Live ingest over Socket.IO: the API token, the ``test`` and ``process`` events, what a frame may
be, the clips each codec makes, ``GET /options`` and the event loop while clips encode.

Everything is a real part: framehub comes from ``create_app`` on a loopback port, clients are
python-socketio ``AsyncClient``s (over a websocket, and once over long polling), frames are JPEG,
PNG and WebP files made with Pillow, and the analysis APIs are aiohttp applications that decode
every clip with PyAV (see ``fakes.py``); where Debian's ffmpeg is installed, its CLI decodes a
received clip too.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from common import Images

if TYPE_CHECKING:
    from apps import LiveServerFactory, LiveServerWithApiFactory
    from common import LiveFrames

FFPROBE = shutil.which("ffprobe")
TOKEN = "t0ken-for-tests"
CLIP_KEYS = {
    "id",
    "session_id",
    "first_frame",
    "last_frame",
    "first_ts",
    "last_ts",
    "frames",
    "duration",
    "codec",
    "bytes",
    "dropped",
}
MAX_LAG = 0.05


# Connecting -------------------------------------------------------------------------------------


async def test_api_token_guards_session_ids_and_connects(live_server: LiveServerFactory) -> None:
    server = await live_server(server={"api_token": TOKEN})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        async with server.http.get(f"{server.url}/get_session_id", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            body = await resp.json()
            assert "API token" in body["error"]
            assert TOKEN not in body["error"]
    session_id = await server.session_id(token=TOKEN)
    reason = await server.refusal(session_id)
    assert "API token" in reason["message"]
    assert server.registry.live_count == 0
    client = await server.connect(session_id, token=TOKEN)
    assert client.sio.connected
    assert server.registry.live_count == 1


async def test_test_event_echoes(live_server: LiveServerFactory) -> None:
    server = await live_server()
    client = await server.connect()
    data = {"hello": "framehub", "n": [1, 2]}
    assert await client.sio.call("test", data, timeout=5) == data
    await server.until(lambda: client.events["test"], "test event")
    assert client.events["test"] == [data]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_frames_in_results_out(
    live_server_with_api: LiveServerWithApiFactory,
    live_frames: LiveFrames,
    transport: str,
) -> None:
    server, api = await live_server_with_api()
    client = await server.connect(transports=[transport])
    assert client.sio.transport() == transport
    acks = [await client.process(live_frames.encode(index)) for index in range(4)]
    assert acks[0].pop("camera").startswith("cam-")  # the first ack names the camera
    assert acks == [{"ok": True, "frame": index, "size": [64, 48]} for index in range(4)]
    (result,) = await client.until_results(1)
    assert set(result) == {"clip", "result"}
    assert set(result["clip"]) == CLIP_KEYS
    session = server.registry.get(client.sio.get_sid())
    assert session is not None
    assert result["clip"]["session_id"] == session.session_id
    assert result["result"] == {
        "a": {
            "api": "a",
            "frames": 4,
            "width": 64,
            "height": 48,
            "codec": "mjpeg",
            "filename": api.clips[0].filename,
        }
    }
    (received,) = api.clips
    assert received.field == "file"
    assert received.content_type == "video/mp4"
    assert received.clip_id == 0
    assert len(received.data) == result["clip"]["bytes"]
    await client.disconnect()
    await server.until_sessions_freed()


async def test_a_timestamp_that_is_not_a_number_is_refused(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(clips={"frames": 2})
    client = await server.connect()
    for ts in ("soon", True, None, [1]):
        payload = {"image": live_frames.encode(0), "ts": ts}
        ack = await client.process(payload)
        if ts is None:  # no timestamp at all: the arrival time is used
            assert ack["ok"]
            continue
        assert ack["ok"] is False
        assert f"ts must be a finite number of seconds, not {ts!r}" in ack["error"]


BAD_FRAMES: dict[str, tuple[Any, str]] = {
    "text-bytes": (b"certainly not an image", "not an image"),
    "string": ("a string, not bytes", "must be the image bytes"),
    "nothing": (None, "must be the image bytes"),
    "dict-without-image": ({"ts": 1.0}, "must be the image bytes"),
    "truncated-header": (b"\xff\xd8\xff\xe0\x00\x10JFIF", "not a valid JPEG image"),
    "over-max-bytes": (Images.save(Images.noise((64, 48)), "PNG"), "over max_bytes 4000"),
}


@pytest.mark.parametrize("name", [*BAD_FRAMES, "gif", "over-max-pixels"])
async def test_bad_frames_are_refused_and_the_session_goes_on(
    live_server: LiveServerFactory, live_frames: LiveFrames, name: str
) -> None:
    server = await live_server(
        frames={"max_bytes": 4000, "max_pixels": 64 * 48}, clips={"frames": 1}
    )
    client = await server.connect()
    if name == "gif":
        frame, message = live_frames.encode(0, "GIF"), "unsupported format GIF"
    elif name == "over-max-pixels":
        frame, message = live_frames.encode(0, size=(65, 48)), "65x48 = 3120 pixels"
    else:
        frame, message = BAD_FRAMES[name]
    ack = await client.process(frame)
    assert ack["ok"] is False
    assert message in ack["error"]
    assert client.sio.connected
    # A good frame afterwards is taken as the session's first, and makes a clip.
    ack = await client.process(live_frames.encode(1))
    assert {key: ack[key] for key in ("ok", "frame", "size")} == {
        "ok": True,
        "frame": 0,
        "size": [64, 48],
    }
    (result,) = await client.until_results(1)
    assert result["clip"]["frames"] == 1
    session = server.registry.get(client.sio.get_sid())
    assert session is not None
    assert session.counters.rejected == 1
    assert session.counters.received == 1


async def test_a_message_over_max_buffer_size_ends_the_connection(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(sessions={"max_buffer_size": 20_000})
    client = await server.connect()
    assert (await client.process(live_frames.encode()))["ok"]
    big = Images.save(Images.noise((100, 100)), "PNG")
    assert len(big) > 20_000
    await client.sio.emit("process", big)
    await server.until(lambda: not client.sio.connected, "connection closed by the server")
    await server.until_sessions_freed()
    assert server.clips_encoded == 1  # the frame taken left as the last clip


# Clips ------------------------------------------------------------------------------------------


async def ffprobe(clip: bytes, folder: Path) -> tuple[int, int, int]:
    """Frames, width and height of a clip as the ffprobe CLI decodes it."""
    assert FFPROBE is not None
    path = folder / "received.mp4"
    await asyncio.to_thread(path.write_bytes, clip)
    process = await asyncio.create_subprocess_exec(
        FFPROBE,
        *("-v", "error", "-count_frames", "-select_streams", "v:0"),
        *("-show_entries", "stream=nb_read_frames,width,height", "-of", "csv=p=0"),
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, err.decode()
    assert err == b""
    width, height, frames = (int(value) for value in out.decode().strip().split(","))
    return frames, width, height


@pytest.mark.parametrize(
    ("codec", "size", "clip_size"),
    [
        ("h264", (64, 48), (64, 48)),
        ("mjpeg", (64, 48), (64, 48)),
        ("h264", (63, 47), (62, 46)),  # yuv420p needs even sizes
        ("mjpeg", (63, 47), (63, 47)),
    ],
)
async def test_codecs_make_clips_that_decode(
    live_server_with_api: LiveServerWithApiFactory,
    live_frames: LiveFrames,
    tmp_path: Path,
    codec: str,
    size: tuple[int, int],
    clip_size: tuple[int, int],
) -> None:
    server, api = await live_server_with_api(
        clips={"frames": 5, "codec": codec, "fps": 25.0, "timing": "fixed"}
    )
    client = await server.connect()
    for index in range(5):
        assert (await client.process(live_frames.encode(index, size=size)))["ok"]
    (result,) = await client.until_results(1)
    assert result["clip"]["codec"] == codec
    assert result["clip"]["duration"] == pytest.approx(0.2)
    answer = result["result"]["a"]
    assert (answer["frames"], answer["width"], answer["height"]) == (5, *clip_size)
    assert answer["codec"] == codec
    (received,) = api.clips
    assert received.frame_numbers == [0, 1, 2, 3, 4]
    if FFPROBE is not None:
        assert await ffprobe(received.data, tmp_path) == (5, *clip_size)


@pytest.mark.parametrize("codec", ["h264", "mjpeg"])
async def test_frames_of_other_sizes_are_scaled_to_the_first(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames, codec: str
) -> None:
    server, api = await live_server_with_api(clips={"frames": 4, "codec": codec})
    client = await server.connect()
    frames = [
        live_frames.encode(0, "JPEG", (64, 48)),
        live_frames.encode(1, "JPEG", (32, 24)),
        live_frames.encode(2, "PNG", (128, 96)),
        live_frames.encode(3, "WEBP", (80, 40)),
    ]
    acks = [await client.process(frame) for frame in frames]
    assert [ack["size"] for ack in acks] == [[64, 48], [32, 24], [128, 96], [80, 40]]
    (result,) = await client.until_results(1)
    answer = result["result"]["a"]
    assert (answer["frames"], answer["width"], answer["height"]) == (4, 64, 48)
    (received,) = api.clips
    assert received.size == (64, 48)
    assert received.frame_numbers == [0, 1, 2, 3]


@pytest.mark.parametrize("codec", ["h264", "mjpeg"])
async def test_a_frame_with_corrupt_pixels_fails_its_clip_only(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames, codec: str
) -> None:
    server, api = await live_server_with_api(clips={"frames": 2, "codec": codec})
    client = await server.connect()
    png = live_frames.encode(1, "PNG")
    corrupt = png[: len(png) // 2]  # the header is whole, the pixel data cut short
    frames = [live_frames.encode(0), corrupt, live_frames.encode(2), live_frames.encode(3)]
    acks = [await client.process(frame) for frame in frames]
    assert all(ack["ok"] for ack in acks)  # only the header is read on arrival
    first, second = await client.until_results(2)
    assert "could not be encoded" in first["error"]
    assert first["result"] == {}
    assert first["clip"]["bytes"] == 0
    assert "error" not in second
    assert second["result"]["a"]["frames"] == 2
    (received,) = api.clips
    assert received.frame_numbers == [2, 3]


@pytest.mark.parametrize(
    ("codec", "image_format"),
    [
        ("mjpeg", "JPEG"),
        ("mjpeg", "PNG"),
        ("h264", "PNG"),
        ("h264", "JPEG"),
    ],
)
async def test_clips_keep_the_colours_of_the_frames(
    live_server_with_api: LiveServerWithApiFactory,
    live_frames: LiveFrames,
    codec: str,
    image_format: str,
) -> None:
    server, api = await live_server_with_api(clips={"frames": 3, "codec": codec})
    client = await server.connect()
    for index in range(3):
        assert (await client.process(live_frames.encode(index, image_format)))["ok"]
    (received,) = await api.until_clips(1)
    for index, decoded in enumerate(received.colours):
        sent = live_frames.colour(index)
        assert all(abs(got - want) <= 6 for got, want in zip(decoded, sent, strict=True)), (
            f"frame {index}: sent {sent}, decoded {decoded}"
        )


async def test_event_loop_stays_responsive_while_clips_encode(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(clips={"frames": 10, "codec": "h264", "h264_preset": "veryfast"})
    frames = await asyncio.to_thread(
        lambda: [live_frames.detailed(index, (640, 480)) for index in range(40)]
    )
    client = await server.connect()
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - started - 0.005)

    ticking = asyncio.create_task(ticker())
    try:
        for frame in frames:
            assert (await client.process(frame))["ok"]
        results = await client.until_results(4)
    finally:
        stop.set()
        await ticking
    assert [r["clip"]["codec"] for r in results] == ["h264"] * 4
    assert server.clips_encoded == 4
    assert len(lags) > 10
    assert max(lags) < MAX_LAG, f"event loop lag up to {max(lags) * 1000:.0f} ms"


# Options ----------------------------------------------------------------------------------------


async def test_options_list_processors_without_secrets(live_server: LiveServerFactory) -> None:
    server = await live_server(
        processors={
            "goal_try": {
                "url": "http://user:pa55-secret@127.0.0.1:9/analyse?key=query-secret",
                "headers": {"Authorization": "Bearer header-secret", "X-Team": "blue-secret"},
                "timeout": 3.0,
                "retries": 1,
            },
            "summary": {"builtin": "summary", "field": "video"},
        }
    )
    async with server.http.get(f"{server.url}/options") as resp:
        assert resp.status == 200
        text = await resp.text()
        options = await resp.json()
    assert "secret" not in text
    assert options["processes"] == ["goal_try", "summary"]
    goal_try, summary = options["processors"]
    assert goal_try == {
        "name": "goal_try",
        "builtin": None,
        "url": "http://127.0.0.1:9/analyse",
        "field": "file",
        "timeout": 3.0,
        "retries": 1,
        "headers": ["Authorization", "X-Team"],
        "max_response_bytes": 1 << 20,
    }
    assert summary["builtin"] == "summary"
    assert summary["url"] is None
    assert summary["headers"] == []


async def test_options_keep_ipv6_addresses_valid(live_server: LiveServerFactory) -> None:
    server = await live_server(processors={"v6": {"url": "http://[::1]:9/analyse"}})
    async with server.http.get(f"{server.url}/options") as resp:
        (v6,) = (await resp.json())["processors"]
    assert v6["url"] == "http://[::1]:9/analyse"
