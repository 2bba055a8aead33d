"""The systemd units in ``deploy/``: ``systemd-analyze`` finds no mistake and the sandbox holds.

``verify`` would also insist that every command a unit runs is installed, which only holds on the
target machine, so it runs on a throw-away root: the unit, an empty executable at each command
path, and a stub ``sysinit.target`` (the one unit that a service's default dependencies require).
What is checked is then the unit's own text: sections, keys, values and specifiers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
# The highest overall exposure `systemd-analyze security` may give a unit, from 0.0 (every sandbox
# setting it knows is used) to 10.0 (none).
MAX_EXPOSURE = 1.5
ANALYZE_TIMEOUT = 30.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze (Debian package systemd) is missing"
)

# The executable of each ExecStart=, ExecReload=, ... line, past the prefixes such as "-" and "+".
_COMMAND = re.compile(r"^Exec\w+=[-@:+!|]*(/\S+)", re.MULTILINE)
_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d)")
_STUB_UNIT = "[Unit]\nDescription=stub for systemd-analyze verify\n"


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze ARGS``, its output captured."""
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "--no-pager", *args],
        capture_output=True,
        encoding="utf-8",
        timeout=ANALYZE_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_unit_verifies_without_a_warning(tmp_path: Path, unit: Path) -> None:
    units = tmp_path / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copy(unit, units)
    (units / "sysinit.target").write_text(_STUB_UNIT)
    for command in _COMMAND.findall(unit.read_text()):
        stub = tmp_path / command.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)

    done = analyze("verify", f"--root={tmp_path}", unit.name)

    # A misspelt key or a bad specifier is only a warning: verify still exits 0.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_unit_exposure_is_at_most_the_maximum(unit: Path) -> None:
    done = analyze("security", "--offline=yes", str(unit))

    assert done.returncode == 0, done.stderr
    found = _EXPOSURE.search(done.stdout)
    assert found is not None, done.stdout + done.stderr
    exposed = [line for line in done.stdout.splitlines() if line.startswith("✗")]
    assert float(found[1]) <= MAX_EXPOSURE, "\n".join(exposed)
