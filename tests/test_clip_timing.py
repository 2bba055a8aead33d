"""Clip timing: frames shown at the client's timestamps, at their arrival times, or at a fixed fps.

Clips come from a real framehub fed by a python-socketio client and reach a real analysis API on
loopback; their frame times are read back by decoding the MP4 with PyAV. ``encode_clip`` is also
driven directly, for timestamps a client clock could send (uneven, stepping back).
"""

from __future__ import annotations

import asyncio
import io
import itertools
from typing import TYPE_CHECKING

import av
import pytest

from server.media.clips import TIMESTAMP_TIME_BASE, Codec, encode_clip

if TYPE_CHECKING:
    from conftest import LiveFrames, LiveServerWithApiFactory


def frame_times(clip: bytes) -> list[float]:
    """The presentation time of each frame of an MP4 clip, in seconds from its first frame."""
    with av.open(io.BytesIO(clip), "r", format="mp4") as container:
        stream = container.streams.video[0]
        times = [frame.time for frame in container.decode(stream)]
    assert all(time is not None for time in times), "a decoded frame without a time"
    return [(time or 0.0) - (times[0] or 0.0) for time in times]


@pytest.mark.parametrize("codec", ["mjpeg", "h264"])
async def test_client_timestamps_time_the_clip(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames, codec: Codec
) -> None:
    server, api = await live_server_with_api(clips={"frames": 4, "codec": codec})
    client = await server.connect()
    sent = [1_700_000_000.0, 1_700_000_000.1, 1_700_000_000.35, 1_700_000_000.4]
    for index, ts in enumerate(sent):
        assert (await client.process({"image": live_frames.encode(index), "ts": ts}))["ok"]
    (result,) = await client.until_results(1)
    clip = result["clip"]
    assert (clip["first_ts"], clip["last_ts"]) == (sent[0], sent[-1])
    # The last frame lasts the mean interval, 0.4 / 3 s.
    assert clip["duration"] == pytest.approx(0.4 + 0.4 / 3, abs=1e-4)
    (received,) = api.clips
    assert frame_times(received.data) == pytest.approx([0.0, 0.1, 0.35, 0.4], abs=1e-4)
    assert received.frame_numbers == [0, 1, 2, 3]


async def test_without_timestamps_arrival_times_the_clip(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(clips={"frames": 3, "max_wait": 5.0})
    client = await server.connect()
    pauses = [0.3, 0.05, 0.0]
    for index, pause in enumerate(pauses):
        assert (await client.process(live_frames.encode(index)))["ok"]
        await asyncio.sleep(pause)
    (result,) = await client.until_results(1)
    (received,) = api.clips
    times = frame_times(received.data)
    # A frame cannot arrive before it is sent, so each gap is at least the pause before it.
    assert times[1] >= 0.29
    assert times[2] - times[1] >= 0.04
    assert times[2] - times[1] < times[1]
    assert result["clip"]["last_ts"] - result["clip"]["first_ts"] == pytest.approx(
        times[2], abs=2e-4
    )


async def test_fixed_timing_ignores_timestamps(
    live_server_with_api: LiveServerWithApiFactory, live_frames: LiveFrames
) -> None:
    server, api = await live_server_with_api(clips={"frames": 3, "fps": 10.0, "timing": "fixed"})
    client = await server.connect()
    for index, ts in enumerate([5.0, 9.0, 9.5]):
        assert (await client.process({"image": live_frames.encode(index), "ts": ts}))["ok"]
    (result,) = await client.until_results(1)
    assert result["clip"]["duration"] == pytest.approx(0.3)
    (received,) = api.clips
    assert frame_times(received.data) == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize("codec", ["mjpeg", "h264"])
def test_timestamps_that_step_back_still_make_a_playable_clip(
    live_frames: LiveFrames, codec: Codec
) -> None:
    frames = [live_frames.encode(index) for index in range(4)]
    clip = encode_clip(frames, 10.0, codec, timestamps=[10.0, 10.2, 10.1, 10.2])
    times = frame_times(clip.data)
    assert len(times) == 4
    tick = float(TIMESTAMP_TIME_BASE)
    assert times == pytest.approx([0.0, 0.2, 0.2 + tick, 0.2 + 2 * tick], abs=tick / 2)
    assert all(later > earlier for earlier, later in itertools.pairwise(times))


def test_one_frame_clip_lasts_one_frame_at_fps(live_frames: LiveFrames) -> None:
    clip = encode_clip([live_frames.encode(0)], 4.0, "mjpeg", timestamps=[123.0])
    assert clip.duration == pytest.approx(0.25)
