"""Settings: defaults, paths, one-line errors naming the key, the cookie key file, README coverage."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.fernet import Fernet

from server.settings import Settings, SettingsError, load_settings
from server.web.secret_key import SECRET_FILE, cookie_key

if TYPE_CHECKING:
    from apps import SettingsFactory

ROOT = Path(__file__).resolve().parents[1]


def write_settings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_settings(tmp_path, ""))
    assert settings.server.port == 7466
    assert settings.server.host == "0.0.0.0"
    assert settings.server.state_dir == tmp_path / "state"
    assert settings.repositories_dir == tmp_path / "state" / "repositories"
    assert settings.repositories.source_url == ""
    assert settings.repositories.initial == []
    assert settings.camera.mjpeg_fps <= settings.camera.mjpeg_max_fps


def test_shipped_settings_file_loads() -> None:
    settings = load_settings(ROOT / "settings.toml")
    assert settings.server.port == 7466
    assert settings.repositories.create_demo


def test_values_are_converted_and_paths_resolved(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    settings = load_settings(
        write_settings(
            tmp_path,
            f"""
            [server]
            port = 8000
            state_dir = "var/state"
            secret_key = "{key}"
            [repositories]
            dir = "/srv/images"
            source_url = "http://example.com/archives"
            initial = ["cam-1", "cam.2_b"]
            retry_backoff = 5
            [camera]
            mjpeg_fps = 2
            """,
        )
    )
    assert settings.server.port == 8000
    assert settings.server.state_dir == tmp_path / "var" / "state"
    assert settings.server.secret_key == key
    assert settings.repositories_dir == Path("/srv/images")
    assert settings.repositories.initial == ["cam-1", "cam.2_b"]
    assert settings.repositories.retry_backoff == 5.0
    assert isinstance(settings.repositories.retry_backoff, float)
    assert settings.camera.mjpeg_fps == 2.0


def test_settings_are_frozen(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        pytest.param("[nope]\nx = 1\n", "[nope]", id="unknown-table"),
        pytest.param("[server]\ncolour = 'red'\n", "server.colour", id="unknown-key"),
        pytest.param("server = 1\n", "[server]", id="table-not-a-table"),
        pytest.param("[server]\nport = '80'\n", "server.port", id="wrong-type"),
        pytest.param("[server]\nport = true\n", "server.port", id="bool-for-number"),
        pytest.param("[server]\nport = 1.5\n", "server.port", id="float-for-int"),
        pytest.param("[server]\nport = 70000\n", "server.port", id="port-out-of-range"),
        pytest.param("[server]\nsecret_key = 'abc'\n", "server.secret_key", id="bad-secret-key"),
        pytest.param("[server]\nstate_dir = 3\n", "server.state_dir", id="path-not-string"),
        pytest.param("[server]\nshutdown_timeout = 0\n", "server.shutdown_timeout", id="zero"),
        pytest.param(
            "[server]\ncors_allowed_origins = ['example.com']\n",
            "server.cors_allowed_origins",
            id="bad-origin",
        ),
        pytest.param(
            "[repositories]\nsource_url = 'http://x'\ninitial = 'demo'\n",
            "repositories.initial",
            id="initial-not-a-list",
        ),
        pytest.param(
            "[repositories]\nsource_url = 'http://x'\ninitial = ['../etc']\n",
            "repositories.initial",
            id="initial-bad-name",
        ),
        pytest.param(
            "[repositories]\nsource_url = 'http://x'\ninitial = [1]\n",
            "repositories.initial",
            id="initial-not-strings",
        ),
        pytest.param(
            "[repositories]\ninitial = ['cam']\n",
            "repositories.source_url",
            id="initial-without-source",
        ),
        pytest.param(
            "[repositories]\nsource_url = 'ftp://example.com'\n",
            "repositories.source_url",
            id="source-not-http",
        ),
        pytest.param(
            "[repositories]\nmax_members = -1\n", "repositories.max_members", id="negative"
        ),
        pytest.param(
            "[repositories]\ncreate_demo = 'yes'\n", "repositories.create_demo", id="not-bool"
        ),
        pytest.param(
            "[camera]\nmjpeg_fps = 60\nmjpeg_max_fps = 30\n",
            "camera.mjpeg_fps",
            id="fps-over-max",
        ),
        pytest.param(
            "[clips]\nanalysis_threads = 2\n",
            "clips.analysis_threads is now clips.analysis_workers",
            id="moved-key",
        ),
        pytest.param("[server\nport = 1\n", "not valid TOML", id="invalid-toml"),
    ],
)
def test_bad_settings_file_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    path = write_settings(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert names in message
    assert message.startswith("settings.toml: ")
    assert "\n" not in message


def test_missing_settings_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="settings file not found") as caught:
        load_settings(tmp_path / "absent.toml")
    assert "absent.toml" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unreadable_settings_file(tmp_path: Path) -> None:
    folder = tmp_path / "settings.toml"
    folder.mkdir()
    with pytest.raises(SettingsError, match="cannot read settings file") as caught:
        load_settings(folder)
    assert "\n" not in str(caught.value)


def test_generated_cookie_key_is_private_and_reused(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    key = cookie_key(settings)
    Fernet(key)
    path = settings.server.state_dir / SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert cookie_key(settings) == key


def test_configured_cookie_key_wins(make_settings: SettingsFactory) -> None:
    key = Fernet.generate_key().decode()
    settings = make_settings(server={"secret_key": key})
    assert cookie_key(settings) == key.encode()
    assert not (settings.server.state_dir / SECRET_FILE).exists()


def test_damaged_cookie_key_file_is_a_settings_error(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    settings.server.state_dir.mkdir(parents=True)
    (settings.server.state_dir / SECRET_FILE).write_text("not a key\n")
    with pytest.raises(SettingsError, match=re.escape(SECRET_FILE)):
        cookie_key(settings)


def settings_tables() -> dict[str, type]:
    """Every settings table by the name its README heading gives it: each field of
    :class:`Settings` is a table, or a mapping of tables such as ``[processors.NAME]``."""
    tables: dict[str, type] = {}
    for field, hint in typing.get_type_hints(Settings).items():
        name = field
        if typing.get_origin(hint) is dict:
            _key, hint = typing.get_args(hint)
            name = f"{field}.NAME"
        assert isinstance(hint, type) and dataclasses.is_dataclass(hint), (field, hint)
        tables[name] = hint
    return tables


def readme_settings(text: str) -> dict[str, list[str]]:
    """The keys of the settings table under each ``### `[table]` `` heading of a README, in
    order: the rows that start with ``| `key` |``, up to the next heading."""
    sections: dict[str, list[str]] = {}
    keys: list[str] | None = None
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif in_code:
            continue
        elif line.startswith("#"):
            heading = re.fullmatch(r"### `\[([\w.]+)\]`", line.strip())
            keys = sections.setdefault(heading[1], []) if heading else None
        elif keys is not None and (row := re.match(r"\| `(\w+)` \|", line)):
            keys.append(row[1])
    return sections


def test_readme_documents_every_setting() -> None:
    documented = readme_settings((ROOT / "README.md").read_text())
    tables = settings_tables()
    assert {"server", "repositories", "camera", "processors.NAME"} <= set(tables)
    missing = [
        f"[{table}] {field.name}"
        for table, cls in tables.items()
        for field in dataclasses.fields(cls)
        if field.name not in documented.get(table, [])
    ]
    assert not missing, f"settings without a row in their README table: {', '.join(missing)}"
    unknown = [
        f"[{table}] {key}"
        for table, keys in documented.items()
        for key in keys
        if table not in tables
        or key not in {field.name for field in dataclasses.fields(tables[table])}
    ]
    assert not unknown, f"README rows for settings that do not exist: {', '.join(unknown)}"
