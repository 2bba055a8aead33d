"""The batch job record on disk: written so that a power cut leaves the old state or the new one.

A power cut cannot be produced here, so these tests watch what reaches the kernel: ``os.fsync``
is wrapped to record which files it was called on (the calls still go through), and a failing
rename stands in for a crash between writing and renaming.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from server.batch.jobs import Job, load_jobs, save_job


def job(status: str = "queued") -> Job:
    return Job(
        id="job-1",
        status=status,
        submitted_at=1_700_000_000.0,
        processes=["summary"],
        video={"frames": 3},
        filename="clip.mp4",
        content_type="video/mp4",
        upload=None,
    )


def test_save_fsyncs_the_file_then_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((target, stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    save_job(tmp_path, job())
    # The new text is on disk under its temp name before the rename, and the rename after it.
    assert synced == [(str(tmp_path / "job-1.tmp"), False), (str(tmp_path), True)]
    assert json.loads((tmp_path / "job-1.json").read_text())["status"] == "queued"


def test_a_crash_before_the_rename_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_job(tmp_path, job("queued"))

    def crash(_source: object, _target: object) -> None:
        raise OSError("power lost")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power lost"):
        save_job(tmp_path, job("done"))
    monkeypatch.undo()
    (loaded,) = load_jobs(tmp_path)
    assert loaded.status == "queued"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job-1.json"]


def test_load_removes_leftovers_and_unreadable_files(tmp_path: Path) -> None:
    save_job(tmp_path, job())
    (tmp_path / "job-2.tmp").write_text("{half")
    (tmp_path / "job-3.json").write_text("")  # what a non-durable write could leave
    assert [loaded.id for loaded in load_jobs(tmp_path)] == ["job-1"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job-1.json"]
