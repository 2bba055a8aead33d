"""Analysis APIs: every clip fanned out to each processor, faults kept to the processor that has
them, and the built-in ``/analyze/summary`` and ``/analyze/motion`` over real HTTP.

Everything is a real part: framehub comes from ``create_app`` on a loopback port and is fed by a
python-socketio client; each analysis API is an aiohttp application on its own loopback port that
decodes the clip with PyAV (see ``fakes.py``) and can be told to fail: refuse connections,
answer late, answer 500 or 429 first, answer text or too much. In every fault test a healthy API
still reports in the same result.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from server.media.clips import Codec, encode_clip

if TYPE_CHECKING:
    from apps import LiveServer, LiveServerFactory
    from common import LiveFrames
    from fakes import ClipApi, ClipApiFactory

FAST = {"timeout": 2.0, "retries": 0}


async def one_result(
    live_server: LiveServerFactory,
    live_frames: LiveFrames,
    processors: dict[str, dict[str, Any]],
    **tables: dict[str, Any],
) -> tuple[LiveServer, dict[str, Any]]:
    """framehub with ``processors``: a client sends one clip of two frames; its result."""
    tables.setdefault("clips", {"frames": 2})
    server = await live_server(processors=processors, **tables)
    client = await server.connect()
    for index in range(2):
        assert (await client.process(live_frames.encode(index)))["ok"]
    (result,) = await client.until_results(1)
    return server, result


def healthy_answer(api: ClipApi) -> dict[str, Any]:
    """What a healthy API answers for the two-frame clips of these tests."""
    return {
        "api": api.name,
        "frames": 2,
        "width": 64,
        "height": 48,
        "codec": "mjpeg",
        "filename": api.clips[-1].filename,
    }


# Faults -----------------------------------------------------------------------------------------


async def test_an_api_refusing_connections(
    live_server: LiveServerFactory,
    clip_api: ClipApiFactory,
    live_frames: LiveFrames,
    refused_url: str,
) -> None:
    healthy = await clip_api("healthy")
    _server, result = await one_result(
        live_server,
        live_frames,
        {"healthy": {"url": healthy.url, **FAST}, "down": {"url": refused_url, "retries": 1}},
    )
    assert result["result"]["healthy"] == healthy_answer(healthy)
    down = result["result"]["down"]
    assert set(down) == {"error", "status"}
    assert "cannot connect" in down["error"]
    assert down["status"] is None


async def test_an_api_slower_than_its_timeout(
    live_server: LiveServerFactory, clip_api: ClipApiFactory, live_frames: LiveFrames
) -> None:
    healthy, slow = await clip_api("healthy"), await clip_api("slow")
    slow.delay = 5.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    _server, result = await one_result(
        live_server,
        live_frames,
        {
            "healthy": {"url": healthy.url, **FAST},
            "slow": {"url": slow.url, "timeout": 0.5, "retries": 2},
        },
    )
    assert loop.time() - started < 3.0  # the timeout, not the API, decided
    assert result["result"]["healthy"] == healthy_answer(healthy)
    assert result["result"]["slow"] == {
        "error": "no answer within the 0.5 s timeout",
        "status": None,
    }
    assert slow.requests == 1  # a timeout is not retried


@pytest.mark.parametrize(("status", "headers"), [(500, {}), (503, {}), (429, {"Retry-After": "0"})])
async def test_an_api_failing_once_is_retried(
    live_server: LiveServerFactory,
    clip_api: ClipApiFactory,
    live_frames: LiveFrames,
    status: int,
    headers: dict[str, str],
) -> None:
    healthy, flaky = await clip_api("healthy"), await clip_api("flaky")
    flaky.failures = [(status, headers)]
    _server, result = await one_result(
        live_server,
        live_frames,
        {
            "healthy": {"url": healthy.url, **FAST},
            "flaky": {"url": flaky.url, "timeout": 2.0, "retries": 2},
        },
    )
    assert result["result"]["healthy"] == healthy_answer(healthy)
    assert result["result"]["flaky"] == healthy_answer(flaky)
    assert flaky.requests == 2
    assert healthy.requests == 1
    # Both attempts carried the whole clip.
    assert flaky.clips[0].data == flaky.clips[1].data
    assert [clip.frames for clip in flaky.clips] == [2, 2]


async def test_an_api_failing_every_time_gives_up_after_its_retries(
    live_server: LiveServerFactory, clip_api: ClipApiFactory, live_frames: LiveFrames
) -> None:
    healthy, broken = await clip_api("healthy"), await clip_api("broken")
    broken.failures = [(500, {})] * 5
    _server, result = await one_result(
        live_server,
        live_frames,
        {
            "healthy": {"url": healthy.url, **FAST},
            "broken": {"url": broken.url, "timeout": 2.0, "retries": 1},
        },
    )
    assert result["result"]["healthy"] == healthy_answer(healthy)
    broken_answer = result["result"]["broken"]
    assert broken_answer["status"] == 500
    assert broken_answer["error"].startswith("HTTP 500")
    assert "scripted 500" in broken_answer["error"]
    assert broken.requests == 2


async def test_a_client_error_is_not_retried(
    live_server: LiveServerFactory, clip_api: ClipApiFactory, live_frames: LiveFrames
) -> None:
    healthy, picky = await clip_api("healthy"), await clip_api("picky")
    picky.failures = [(400, {})]
    _server, result = await one_result(
        live_server,
        live_frames,
        {
            "healthy": {"url": healthy.url, **FAST},
            "picky": {"url": picky.url, "timeout": 2.0, "retries": 2},
        },
    )
    assert result["result"]["healthy"] == healthy_answer(healthy)
    assert result["result"]["picky"]["status"] == 400
    assert picky.requests == 1


async def test_an_answer_that_is_not_json_is_passed_as_text(
    live_server: LiveServerFactory, clip_api: ClipApiFactory, live_frames: LiveFrames
) -> None:
    healthy, chatty = await clip_api("healthy"), await clip_api("chatty")
    chatty.body = b"goal! {not json"
    _server, result = await one_result(
        live_server,
        live_frames,
        {"healthy": {"url": healthy.url, **FAST}, "chatty": {"url": chatty.url, **FAST}},
    )
    assert result["result"]["healthy"] == healthy_answer(healthy)
    assert result["result"]["chatty"] == "goal! {not json"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_over_max_response_bytes_is_an_error(
    live_server: LiveServerFactory,
    clip_api: ClipApiFactory,
    live_frames: LiveFrames,
    chunked: bool,
) -> None:
    healthy, verbose = await clip_api("healthy"), await clip_api("verbose")
    verbose.body = b"x" * (300 << 10)
    verbose.chunked = chunked
    _server, result = await one_result(
        live_server,
        live_frames,
        {
            "healthy": {"url": healthy.url, **FAST},
            "verbose": {"url": verbose.url, "max_response_bytes": 100 << 10, **FAST},
        },
    )
    assert result["result"]["healthy"] == healthy_answer(healthy)
    answer = result["result"]["verbose"]
    assert f"over max_response_bytes ({100 << 10})" in answer["error"]
    assert answer["status"] == 200
    assert verbose.requests == 1


async def test_headers_and_field_reach_the_api(
    live_server: LiveServerFactory, clip_api: ClipApiFactory, live_frames: LiveFrames
) -> None:
    api = await clip_api("goal_try")
    _server, result = await one_result(
        live_server,
        live_frames,
        {
            "goal_try": {
                "url": api.url,
                "field": "video",
                "headers": {"Authorization": "Bearer api-key", "X-Team": "blue"},
                **FAST,
            }
        },
    )
    assert result["result"]["goal_try"]["frames"] == 2
    (received,) = api.clips
    assert received.field == "video"
    assert received.headers["Authorization"] == "Bearer api-key"
    assert received.headers["X-Team"] == "blue"


async def test_requests_are_limited_across_processors(
    live_server: LiveServerFactory, clip_api: ClipApiFactory, live_frames: LiveFrames
) -> None:
    first, second = await clip_api("first"), await clip_api("second")
    first.gate.clear()
    server = await live_server(
        processors={"first": {"url": first.url, **FAST}, "second": {"url": second.url, **FAST}},
        clips={"frames": 2, "max_concurrent_requests": 1},
    )
    client = await server.connect()
    for index in range(2):
        assert (await client.process(live_frames.encode(index)))["ok"]
    await first.until_clips(1)
    await asyncio.sleep(0.3)
    assert second.requests == 0  # waiting for the only request slot
    first.gate.set()
    (result,) = await client.until_results(1)
    assert result["result"]["first"] == healthy_answer(first)
    assert result["result"]["second"] == healthy_answer(second)


# The built-in analyses --------------------------------------------------------------------------


async def test_built_in_processors_run_in_process(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    _server, result = await one_result(
        live_server,
        live_frames,
        {"summary": {"builtin": "summary"}, "motion": {"builtin": "motion"}},
        clips={"frames": 2, "timing": "fixed"},
    )
    assert result["result"]["summary"] == {
        "frames": 2,
        "duration": pytest.approx(0.2),
        "width": 64,
        "height": 48,
        "codec": "mjpeg",
    }
    motion = result["result"]["motion"]
    assert motion["frames"] == 2
    assert motion["energy"][0] == 0.0
    assert motion["energy"][1] > motion["threshold"]  # two plain frames of different colours
    assert motion["ranges"] == [[1, 1]]


async def make_clip(live_frames: LiveFrames, codec: Codec, moving: bool) -> bytes:
    """A clip of 6 frames of 160x120 made by encode_clip: a moving square, or a still one."""
    frames = [live_frames.detailed(index if moving else 0, (160, 120)) for index in range(6)]
    clip = await asyncio.to_thread(encode_clip, frames, 15.0, codec)
    return clip.data


async def post_clip(server: LiveServer, path: str, clip: bytes, raw: bool = False) -> Any:
    """POST ``clip`` to ``path`` (multipart, or a raw video/mp4 body); status and JSON answer."""
    data: Any
    if raw:
        data, headers = clip, {"Content-Type": "video/mp4"}
    else:
        data, headers = aiohttp.FormData(), {}
        data.add_field("file", clip, filename="clip.mp4", content_type="video/mp4")
    async with server.http.post(f"{server.url}{path}", data=data, headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


@pytest.mark.parametrize("codec", ["h264", "mjpeg"])
@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "raw"])
async def test_summary_over_http(
    live_server: LiveServerFactory, live_frames: LiveFrames, codec: Codec, raw: bool
) -> None:
    server = await live_server()
    clip = await make_clip(live_frames, codec, moving=True)
    status, answer = await post_clip(server, "/analyze/summary", clip, raw)
    assert status == 200
    assert answer == {
        "frames": 6,
        "duration": pytest.approx(0.4),
        "width": 160,
        "height": 120,
        "codec": codec,
    }


@pytest.mark.parametrize("codec", ["h264", "mjpeg"])
async def test_motion_over_http(
    live_server: LiveServerFactory, live_frames: LiveFrames, codec: Codec
) -> None:
    server = await live_server()
    status, moving = await post_clip(
        server, "/analyze/motion", await make_clip(live_frames, codec, moving=True)
    )
    assert status == 200
    assert moving["frames"] == 6
    assert moving["ranges"] == [[1, 5]]
    status, still = await post_clip(
        server, "/analyze/motion", await make_clip(live_frames, codec, moving=False), raw=True
    )
    assert status == 200
    assert still["ranges"] == []
    assert max(still["energy"]) < still["threshold"]


@pytest.mark.parametrize("path", ["/analyze/summary", "/analyze/motion"])
@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "raw"])
async def test_built_in_analyses_refuse_what_is_not_a_video(
    live_server: LiveServerFactory, live_frames: LiveFrames, path: str, raw: bool
) -> None:
    server = await live_server()
    status, answer = await post_clip(server, path, live_frames.encode(), raw)
    assert status == 422
    assert "not a decodable MP4 video" in answer["error"]


async def test_built_in_analyses_need_a_file_and_cap_its_size(
    live_server: LiveServerFactory, live_frames: LiveFrames
) -> None:
    server = await live_server(clips={"max_clip_bytes": 2000})
    form = aiohttp.FormData({"note": "no file here"}, default_to_multipart=True)
    async with server.http.post(f"{server.url}/analyze/summary", data=form) as resp:
        assert resp.status == 400
        assert "no file" in (await resp.json())["error"]
    clip = await make_clip(live_frames, "mjpeg", moving=True)
    assert len(clip) > 2000
    for raw in (False, True):
        status, answer = await post_clip(server, "/analyze/summary", clip, raw)
        assert status == 413
        assert "max_clip_bytes" in answer["error"]
