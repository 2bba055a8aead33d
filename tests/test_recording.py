"""Recording live cameras into repositories (server.live.recording), on real folders.

Frames are real JPEG, PNG and WebP images made with Pillow whose colour tells their number; what
is written is decoded back with Pillow. Write errors are real ones: the recording folder is turned
into a regular file, so creating or writing into it fails as it would on a broken disk.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from common import Images, until
from conftest import SettingsFactory
from server.errors import RecordingRefused
from server.live.recording import Recorder
from server.names import natural_key
from server.ops.metrics import Metrics
from server.settings import Settings
from server.store.repositories import list_frames

CAMERA = "gate"
LOGGER = "server.live.recording"
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}

MakeRecorder = Callable[..., Recorder]


@pytest.fixture
def repos(tmp_path: Path) -> Path:
    """The repositories folder of every recorder of a test."""
    return tmp_path / "repos"


@pytest.fixture
async def make_recorder(make_settings: SettingsFactory, repos: Path) -> AsyncIterator[MakeRecorder]:
    """``make_recorder(max_frames=3, ...)``: a Recorder of camera "gate" with those [recording]
    keys over ``repos``; every one made is closed when the test ends."""
    made: list[Recorder] = []

    def make(metrics: Metrics | None = None, **recording: Any) -> Recorder:
        settings = make_settings(
            repositories={"dir": str(repos)}, recording={"cameras": [CAMERA], **recording}
        )
        recorder = Recorder(settings, metrics or Metrics())
        made.append(recorder)
        return recorder

    yield make
    loop = asyncio.get_running_loop()
    for recorder in made:
        await recorder.close(loop.time() + 5)


def frame(index: int, content_type: str = "image/jpeg") -> bytes:
    """Image ``index`` of the given type: one colour that tells its number."""
    return Images.encode(index, FORMATS[content_type])


def decoded_number(path: Path) -> int:
    """The number of the image at ``path``, told by its colour."""
    return number_of(path.read_bytes())


def recorded(folder: Path) -> list[str]:
    """The frames ``folder`` serves as a repository, in order."""
    return [listed.name for listed in list_frames(folder)]


def served(folder: Path) -> list[tuple[str, bytes, str]]:
    """Name, bytes and Content-Type of every frame ``folder`` serves as a repository, in order."""
    return [
        (listed.name, Path(listed.path).read_bytes(), listed.content_type)
        for listed in list_frames(folder)
    ]


def number_of(data: bytes) -> int:
    """The number of an image, told by its colour."""
    with Image.open(io.BytesIO(data)) as image:
        return Images.number(ImageStat.Stat(image.convert("RGB")).mean)


def sample(metrics: Metrics, name: str) -> float:
    """The value of metric ``name`` for camera "gate" (0 when it has none yet)."""
    return metrics.registry.get_sample_value(name, {"camera": CAMERA}) or 0.0


async def until_kept(recorder: Recorder, frames: int) -> None:
    """Wait until the recording holds ``frames`` frames and nothing is waiting to be written."""
    await until(lambda: (recorder.state(CAMERA) or {}).get("frames") == frames, f"{frames} kept")


def recording_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("recording-")]


async def test_frames_are_written_in_arrival_order_with_their_bytes(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    metrics = Metrics()
    recorder = make_recorder(metrics)
    assert recorder.repository_of(CAMERA) == CAMERA
    assert await recorder.open(CAMERA) == CAMERA
    started = time.time()
    types = ["image/jpeg", "image/png", "image/webp"] * 4
    sent = [frame(index, content_type) for index, content_type in enumerate(types)]
    for index, (data, content_type) in enumerate(zip(sent, types, strict=True)):
        recorder.offer(CAMERA, data, content_type, started + index * 0.01)
        if index % 5 == 4:
            await asyncio.sleep(0)  # several batches, not one
    await until_kept(recorder, len(sent))

    folder = repos / CAMERA
    suffixes = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}
    expected = [
        f"frame-{index}-{int((started + index * 0.01) * 1000)}{suffixes[content_type]}"
        for index, content_type in enumerate(types)
    ]
    # The repository listing serves them in arrival order, each the very bytes received, and
    # nothing else is left in the folder (no part file).
    assert sorted(os.listdir(folder), key=natural_key) == expected
    assert served(folder) == list(zip(expected, sent, types, strict=True))
    assert [number_of(data) for data in sent] == list(range(len(sent)))
    state = recorder.state(CAMERA)
    assert state == {
        "repository": CAMERA,
        "frames": len(sent),
        "bytes": sum(map(len, sent)),
        "dropped": 0,
        "paused": False,
        "error": None,
    }
    assert sample(metrics, "framehub_recorded_frames_total") == len(sent)


async def test_cameras_not_recorded_or_not_opened_are_ignored(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    recorder = make_recorder(repository="rec-{camera}")
    assert recorder.repository_of("yard") is None
    assert await recorder.open("yard") is None
    assert recorder.state("yard") is None
    recorder.offer("yard", frame(0), "image/jpeg", time.time())
    # Recorded, but its session has not connected yet: nothing is queued, nothing made.
    recorder.offer(CAMERA, frame(0), "image/jpeg", time.time())
    assert recorder.state(CAMERA) == {
        "repository": "rec-gate",
        "frames": 0,
        "bytes": 0,
        "dropped": 0,
        "paused": False,
        "error": None,
    }
    await asyncio.sleep(0.05)
    assert repos.name not in os.listdir(repos.parent)
    assert recording_tasks() == []


async def test_a_frame_of_a_type_not_recorded_is_dropped_and_counted(
    make_recorder: MakeRecorder,
) -> None:
    metrics = Metrics()
    recorder = make_recorder(metrics)
    await recorder.open(CAMERA)
    recorder.offer(CAMERA, Images.encode(0, "GIF"), "image/gif", time.time())
    assert (recorder.state(CAMERA) or {})["dropped"] == 1
    assert sample(metrics, "framehub_recording_dropped_total") == 1


async def test_numbering_continues_after_a_reconnect_and_a_restart(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    recorder = make_recorder()
    await recorder.open(CAMERA)
    for index in range(2):
        recorder.offer(CAMERA, frame(index), "image/jpeg", time.time())
    await until_kept(recorder, 2)
    # The session reconnects: same repository, numbering goes on.
    assert await recorder.open(CAMERA) == CAMERA
    recorder.offer(CAMERA, frame(2), "image/jpeg", time.time())
    await until_kept(recorder, 3)
    loop = asyncio.get_running_loop()
    await recorder.close(loop.time() + 5)

    # A new process on the same folder: the frames there are read back, numbering goes on.
    restarted = make_recorder()
    assert await restarted.open(CAMERA) == CAMERA
    before = recorded(repos / CAMERA)
    assert restarted.state(CAMERA) == {
        "repository": CAMERA,
        "frames": 3,
        "bytes": sum((repos / CAMERA / name).stat().st_size for name in before),
        "dropped": 0,
        "paused": False,
        "error": None,
    }
    restarted.offer(CAMERA, frame(3), "image/png", time.time())
    await until_kept(restarted, 4)
    names = recorded(repos / CAMERA)
    assert [name.split("-")[1] for name in names] == ["0", "1", "2", "3"]
    assert names[-1].endswith(".png")
    assert [decoded_number(repos / CAMERA / name) for name in names] == [0, 1, 2, 3]


async def test_a_crashed_write_leaves_nothing_a_reader_sees_and_is_cleaned_at_open(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    folder = repos / CAMERA
    folder.mkdir(parents=True)
    leftover = folder / ".frame-7-1700000000000.jpg.part"
    leftover.write_bytes(frame(0)[:100])
    assert list_frames(folder) == []
    recorder = make_recorder()
    await recorder.open(CAMERA)
    assert not leftover.exists()
    recorder.offer(CAMERA, frame(0), "image/jpeg", time.time())
    await until_kept(recorder, 1)
    assert recorded(folder)[0].startswith("frame-0-")


async def test_retention_by_frames_deletes_the_oldest(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    metrics = Metrics()
    recorder = make_recorder(metrics, max_frames=3)
    await recorder.open(CAMERA)
    for index in range(5):
        recorder.offer(CAMERA, frame(index), "image/jpeg", time.time())
        await asyncio.sleep(0.01)
    await until(lambda: sample(metrics, "framehub_recorded_frames_total") == 5, "5 written")
    await until_kept(recorder, 3)
    names = recorded(repos / CAMERA)
    assert [decoded_number(repos / CAMERA / name) for name in names] == [2, 3, 4]
    assert sample(metrics, "framehub_recording_deleted_total") == 2
    await recorder.close(asyncio.get_running_loop().time() + 5)

    # Started again with a smaller limit: the index read from the folder is trimmed at the
    # first write, oldest first.
    metrics = Metrics()
    restarted = make_recorder(metrics, max_frames=2)
    await restarted.open(CAMERA)
    restarted.offer(CAMERA, frame(5), "image/jpeg", time.time())
    await until(lambda: sample(metrics, "framehub_recording_deleted_total") == 2, "2 deleted")
    names = recorded(repos / CAMERA)
    assert [decoded_number(repos / CAMERA / name) for name in names] == [4, 5]
    assert (restarted.state(CAMERA) or {})["frames"] == 2


async def test_retention_by_bytes_keeps_at_least_the_newest_frame(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    data = frame(0)  # one picture for all: every frame the same size
    metrics = Metrics()
    recorder = make_recorder(metrics, max_bytes=int(len(data) * 2.5))
    await recorder.open(CAMERA)
    for _ in range(6):
        recorder.offer(CAMERA, data, "image/jpeg", time.time())
    await until(lambda: sample(metrics, "framehub_recorded_frames_total") == 6, "6 written")
    assert [name.split("-")[1] for name in recorded(repos / CAMERA)] == ["4", "5"]
    assert (recorder.state(CAMERA) or {})["bytes"] == 2 * len(data)
    assert sample(metrics, "framehub_recording_deleted_total") == 4
    await recorder.close(asyncio.get_running_loop().time() + 5)

    # A limit below one frame still leaves the latest frame to show.
    tiny = make_recorder(max_bytes=1)
    await tiny.open(CAMERA)
    tiny.offer(CAMERA, frame(9), "image/jpeg", time.time())
    await until(lambda: recorded(repos / CAMERA)[-1].startswith("frame-6-"), "frame 6 written")
    await until_kept(tiny, 1)
    (only,) = recorded(repos / CAMERA)
    assert decoded_number(repos / CAMERA / only) == 9


async def test_retention_by_age_deletes_frames_older_than_max_age(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    # A previous recording left two frames two minutes old: the folder is taken, and their age
    # (told by their names) counts.
    folder = repos / CAMERA
    old_ms = int((time.time() - 120) * 1000)
    Images.folder(folder, [f"frame-0-{old_ms}.jpg", f"frame-1-{old_ms + 40}.jpg"])
    metrics = Metrics()
    recorder = make_recorder(metrics, max_age=60.0, max_bytes=0)
    await recorder.open(CAMERA)
    assert (recorder.state(CAMERA) or {})["frames"] == 2
    recorder.offer(CAMERA, frame(2), "image/jpeg", time.time() - 90)
    recorder.offer(CAMERA, frame(3), "image/jpeg", time.time())
    await until(lambda: sample(metrics, "framehub_recording_deleted_total") == 3, "3 deleted")
    (kept,) = recorded(folder)
    assert kept.startswith("frame-3-")
    assert decoded_number(folder / kept) == 3
    assert (recorder.state(CAMERA) or {})["frames"] == 1


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(None, id="missing"),
        pytest.param([], id="empty"),
        pytest.param(["notes.txt"], id="no-images"),
        pytest.param(["frame-0-1700000000000.jpg", "frame-4-1700000000100.webp"], id="recording"),
    ],
)
async def test_a_missing_empty_or_recorded_folder_is_taken(
    make_recorder: MakeRecorder, repos: Path, names: list[str] | None
) -> None:
    folder = repos / CAMERA
    if names is not None:
        folder.mkdir(parents=True)
        for name in names:
            data = Images.for_name(name) if not name.endswith(".txt") else b"notes"
            (folder / name).write_bytes(data)
    recorder = make_recorder()
    assert await recorder.open(CAMERA) == CAMERA
    recorder.offer(CAMERA, frame(0), "image/jpeg", time.time())
    await until_kept(recorder, 1 + len([n for n in names or [] if n.startswith("frame-")]))
    # A previous recording's numbering goes on after its highest frame.
    first = 5 if names and names[-1].startswith("frame-4-") else 0
    assert recorded(folder)[-1].startswith(f"frame-{first}-")
    assert decoded_number(folder / recorded(folder)[-1]) == 0


async def test_a_folder_holding_another_repository_is_refused(
    make_recorder: MakeRecorder, repos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = Images.folder(repos / "rec-gate", ["photo-1.jpg", "frame-0-1700000000000.jpg"])
    recorder = make_recorder(repository="rec-{camera}")
    with pytest.raises(RecordingRefused) as refused:
        await recorder.open(CAMERA)
    message = str(refused.value)
    assert "'gate'" in message
    assert "'rec-gate'" in message
    assert "photo-1.jpg" in message
    assert "[recording] repository" in message
    assert str(repos) not in message  # the server's paths are for its log, not for clients
    assert str(folder) in caplog.text
    # Nothing was touched, and nothing is recorded.
    assert sorted(os.listdir(folder)) == ["frame-0-1700000000000.jpg", "photo-1.jpg"]
    recorder.offer(CAMERA, frame(0), "image/jpeg", time.time())
    assert recording_tasks() == []


async def test_a_file_in_place_of_the_folder_is_refused(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    Images.folder(repos, [])
    (repos / CAMERA).write_bytes(b"not a folder")
    with pytest.raises(RecordingRefused, match="not a folder"):
        await make_recorder().open(CAMERA)


async def test_two_cameras_cannot_record_into_one_repository(
    make_settings: SettingsFactory, repos: Path
) -> None:
    settings: Settings = make_settings(
        repositories={"dir": str(repos)}, recording={"cameras": ["*"], "repository": "rec"}
    )
    recorder = Recorder(settings, Metrics())
    try:
        assert await recorder.open("a") == "rec"
        with pytest.raises(RecordingRefused, match=r"camera 'a' records there.*\{camera\}"):
            await recorder.open("b")
        assert await recorder.open("a") == "rec"
    finally:
        await recorder.close(asyncio.get_running_loop().time() + 5)


async def test_a_camera_whose_repository_name_is_too_long_is_refused(
    make_settings: SettingsFactory, repos: Path
) -> None:
    settings = make_settings(
        repositories={"dir": str(repos)},
        recording={"cameras": ["*"], "repository": "recording-{camera}"},
    )
    recorder = Recorder(settings, Metrics())
    with pytest.raises(RecordingRefused, match="not a valid repository name"):
        await recorder.open("c" * 60)
    await recorder.close(asyncio.get_running_loop().time() + 5)


async def test_a_full_queue_drops_and_counts_without_waiting(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    metrics = Metrics()
    recorder = make_recorder(metrics, queue_size=2)
    await recorder.open(CAMERA)
    data = frame(0)
    # One loop turn: the writer cannot run in between, so all but queue_size are dropped.
    started = time.perf_counter()
    for _ in range(50):
        recorder.offer(CAMERA, data, "image/jpeg", time.time())
    assert time.perf_counter() - started < 0.5
    assert (recorder.state(CAMERA) or {})["dropped"] == 48
    assert sample(metrics, "framehub_recording_dropped_total") == 48
    await until_kept(recorder, 2)
    assert len(recorded(repos / CAMERA)) == 2


async def test_a_write_error_pauses_the_recording_then_it_resumes(
    make_recorder: MakeRecorder, repos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    metrics = Metrics()
    recorder = make_recorder(metrics, retry_backoff=0.05, max_retry_backoff=0.1)
    await recorder.open(CAMERA)
    recorder.offer(CAMERA, frame(0), "image/jpeg", time.time())
    await until_kept(recorder, 1)

    # The folder is replaced by a regular file: every write into it fails, as on a dead disk.
    folder = repos / CAMERA
    aside = repos / "aside"
    folder.rename(aside)
    folder.write_bytes(b"in the way")
    caplog.clear()

    def offer(index: int) -> None:
        # Colours tell numbers apart modulo 25 only.
        recorder.offer(CAMERA, frame(index % 25), "image/jpeg", time.time())

    offer(1)
    await until(lambda: sample(metrics, "framehub_recording_paused") == 1, "paused")
    state = recorder.state(CAMERA) or {}
    assert state["paused"] is True
    assert state["error"]
    assert state["frames"] == 1
    # Frames keep coming through several retries (backoffs of 0.05 s, 0.1 s, 0.1 s...).
    loop = asyncio.get_running_loop()
    end = loop.time() + 0.5
    index = 2
    while loop.time() < end:
        offer(index)
        index += 1
        await asyncio.sleep(0.01)
    assert sample(metrics, "framehub_recording_errors_total") >= 3
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "gate" in warnings[0].getMessage()
    assert "paused" in warnings[0].getMessage()
    dropped = (recorder.state(CAMERA) or {})["dropped"]
    assert dropped >= index - 4  # all of frames 1.., but a few queued for the next retry
    assert dropped == sample(metrics, "framehub_recording_dropped_total")

    # The disk comes back: the next frames are written, numbering right after frame 0.
    folder.unlink()
    aside.rename(folder)
    resumed_at = 7

    def resumed() -> bool:
        # A frame per poll: the first one offered after the backoff is the retry.
        offer(resumed_at)
        return not (recorder.state(CAMERA) or {})["paused"]

    await until(resumed, "resumed")
    assert sample(metrics, "framehub_recording_paused") == 0
    assert (recorder.state(CAMERA) or {})["error"] is None
    infos = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "resumed" in infos[0].getMessage()
    await until(lambda: len(recorded(folder)) >= 2, "a frame after the pause")
    names = recorded(folder)
    assert [name.split("-")[1] for name in names] == [str(n) for n in range(len(names))]
    assert decoded_number(folder / names[1]) == resumed_at
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_close_writes_what_is_queued_and_leaves_nothing_running(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    metrics = Metrics()
    recorder = make_recorder(metrics)
    await recorder.open(CAMERA)
    for index in range(40):
        recorder.offer(CAMERA, frame(index), "image/jpeg", time.time())
    assert recording_tasks()
    await recorder.close(asyncio.get_running_loop().time() + 5)
    assert recording_tasks() == []
    assert len(recorded(repos / CAMERA)) == 40
    assert sample(metrics, "framehub_recorded_frames_total") == 40
    # After the stop, frames are no longer taken.
    recorder.offer(CAMERA, frame(0), "image/jpeg", time.time())
    await asyncio.sleep(0.02)
    assert len(recorded(repos / CAMERA)) == 40


async def test_close_past_its_deadline_stops_a_paused_writer(
    make_recorder: MakeRecorder, repos: Path
) -> None:
    recorder = make_recorder(retry_backoff=30.0, max_retry_backoff=30.0)
    Images.folder(repos, [])
    await recorder.open(CAMERA)
    (repos / CAMERA).write_bytes(b"in the way")  # made after open, so the first write fails
    recorder.offer(CAMERA, frame(0), "image/jpeg", time.time())
    await until(lambda: (recorder.state(CAMERA) or {})["paused"], "paused")
    # The writer sleeps through a 30 s backoff; close with a deadline already passed.
    loop = asyncio.get_running_loop()
    started = loop.time()
    await recorder.close(loop.time())
    assert loop.time() - started < 1
    assert recording_tasks() == []
