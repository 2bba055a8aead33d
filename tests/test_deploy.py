"""The systemd units in ``deploy/``: ``systemd-analyze`` finds no mistake and the sandbox holds.

``verify`` would also insist that every command a unit runs is installed, which only holds on the
target machine, so it runs on a throw-away root: the unit, an empty executable at each command
path, and a stub ``sysinit.target`` (the one unit that a service's default dependencies require).
What is checked is then the unit's own text: sections, keys, values and specifiers. A template
(``framehub@.service``) is verified as systemd loads it on a box, through an instance
(``framehub@7466.service``), so that its ``%i`` specifiers are expanded and checked too.

The ``Environment=`` lines a unit gives framehub are loaded, specifiers expanded, over the shipped
``settings.toml`` exactly as a start would, so a misspelt ``FRAMEHUB_`` variable (which stops the
start) fails here, and the template's instances get their own port, node name and state, and one
repositories folder.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from server.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
# The highest overall exposure `systemd-analyze security` may give a unit, from 0.0 (every sandbox
# setting it knows is used) to 10.0 (none).
MAX_EXPOSURE = 1.5
ANALYZE_TIMEOUT = 30.0
# The instance a template unit is verified as: a port, as framehub@.service's instances are.
TEMPLATE_INSTANCE = "7466"
# The shipped settings file, and the host name %H stands for in the environment tests.
SETTINGS_FILE = DEPLOY.parent / "settings.toml"
HOST = "camera-box"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze (Debian package systemd) is missing"
)

# The executable of each ExecStart=, ExecReload=, ... line, past the prefixes such as "-" and "+".
_COMMAND = re.compile(r"^Exec\w+=[-@:+!|]*(/\S+)", re.MULTILINE)
_ENVIRONMENT = re.compile(r"^Environment=(.+)$", re.MULTILINE)
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


def instance_name(unit: Path) -> str:
    """The name to load ``unit`` by: its own, or for a template ``NAME@.service`` an instance."""
    if unit.name.endswith("@.service"):
        return unit.name.replace("@.", f"@{TEMPLATE_INSTANCE}.")
    return unit.name


def test_the_template_unit_is_checked() -> None:
    assert "framehub@.service" in [unit.name for unit in UNITS]
    assert instance_name(DEPLOY / "framehub@.service") == "framehub@7466.service"


@needs_systemd_analyze
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

    done = analyze("verify", f"--root={tmp_path}", instance_name(unit))

    # A misspelt key or a bad specifier is only a warning: verify still exits 0.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_unit_exposure_is_at_most_the_maximum(unit: Path) -> None:
    done = analyze("security", "--offline=yes", str(unit))

    assert done.returncode == 0, done.stderr
    found = _EXPOSURE.search(done.stdout)
    assert found is not None, done.stdout + done.stderr
    exposed = [line for line in done.stdout.splitlines() if line.startswith("✗")]
    assert float(found[1]) <= MAX_EXPOSURE, "\n".join(exposed)


def unit_environment(unit: Path, instance: str, credentials: Path) -> dict[str, str]:
    """The variables of ``unit``'s ``Environment=`` lines, ``%i``, ``%H`` and ``%d`` expanded as
    systemd would for ``instance`` on host :data:`HOST` with credentials in ``credentials``."""
    specifiers = {"%i": instance, "%H": HOST, "%d": str(credentials), "%%": "%"}
    environ: dict[str, str] = {}
    for line in _ENVIRONMENT.findall(unit.read_text()):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            environ[name] = re.sub(r"%.", lambda found: specifiers[found[0]], value)
    return environ


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_unit_environment_is_accepted_by_the_settings(tmp_path: Path, unit: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api_token").write_text("token\n")
    (credentials / "secret_key").write_text(Fernet.generate_key().decode())

    settings = load_settings(SETTINGS_FILE, unit_environment(unit, "7467", credentials))

    assert settings.server.api_token == "token"


def test_template_instances_differ_in_port_node_and_state_only(tmp_path: Path) -> None:
    template = DEPLOY / "framehub@.service"
    (tmp_path / "api_token").write_text("token")
    (tmp_path / "secret_key").write_text(Fernet.generate_key().decode())

    first, second = (
        load_settings(SETTINGS_FILE, unit_environment(template, port, tmp_path))
        for port in ("7466", "7467")
    )

    assert (first.server.port, first.node) == (7466, f"{HOST}:7466")
    assert (second.server.port, second.node) == (7467, f"{HOST}:7467")
    assert first.server.state_dir != second.server.state_dir
    assert (
        first.repositories_dir == second.repositories_dir == Path("/var/lib/framehub/repositories")
    )
    # One cookie key for all, so a cursor cookie from one process is read by every other.
    assert first.server.secret_key == second.server.secret_key
