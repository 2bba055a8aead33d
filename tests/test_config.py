"""Configuration the way services are run: ``FRAMEHUB_`` variables over the settings file,
paradrop-imserve's variables under it, secrets read from files and systemd credentials,
``framehub check-config``, ``framehub --version`` and ``framehub-send``'s ``$FRAMEHUB_TOKEN``.

The rules are driven through ``load_settings(path, environ)`` with real files in ``tmp_path``; what
the command line does runs in real child processes with their own environments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.fernet import Fernet

from fakes import free_port
from server.ops.logs import secrets_of
from server.settings import (
    IMSERVE_VARIABLES,
    ProcessorSettings,
    Settings,
    SettingsError,
    load_settings,
    settings_as_toml,
)

if TYPE_CHECKING:
    from apps import LiveServerFactory
    from common import Images

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "main.py"
PROCESS_TIMEOUT = 30.0
KEY = Fernet.generate_key().decode()
TOKEN = "t0ken-from-a-file"


def settings_file(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str = "", **environ: str) -> Settings:
    """The settings of a file holding ``text`` with ``environ`` as the whole environment."""
    return load_settings(settings_file(tmp_path, text), environ)


def refused(tmp_path: Path, text: str = "", **environ: str) -> str:
    """The one-line error the file and ``environ`` give."""
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, text, **environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


def clean_environment(**variables: str) -> dict[str, str]:
    """This process's environment without anything framehub reads, plus ``variables``."""
    ours = {"CREDENTIALS_DIRECTORY", *IMSERVE_VARIABLES}
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("FRAMEHUB_") and name not in ours
    }
    return kept | variables


def framehub(*args: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """``python main.py ARGS`` run to its end in ``cwd`` with ``variables`` in its environment."""
    return subprocess.run(
        [sys.executable, str(MAIN), *args],
        cwd=cwd,
        env=clean_environment(**variables),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )


# --- FRAMEHUB_ variables -------------------------------------------------------------------------


def test_variables_override_the_file_as_the_keys_types(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[server]\nport = 7000\nhost = "127.0.0.1"\n[repositories]\ncreate_demo = true\n',
        FRAMEHUB_SERVER_PORT="8080",
        FRAMEHUB_SERVER__SHUTDOWN_TIMEOUT="2.5",
        FRAMEHUB_SERVER_STATE_DIR="var/state",
        FRAMEHUB_REPOSITORIES_CREATE_DEMO="0",
        FRAMEHUB_REPOSITORIES_SOURCE_URL="http://archives.example/imserve",
        FRAMEHUB_REPOSITORIES_INITIAL='["a", "b"]',
        FRAMEHUB_SESSIONS_EMIT_RESULT="false",
        FRAMEHUB_FRAMES_ACK_FIRST_PIXEL="1",
        FRAMEHUB_CLIPS_CODEC="h264",
        FRAMEHUB_RECORDING_CAMERAS="['gate', 'yard']",
        FRAMEHUB_SERVER_CORS_ALLOWED_ORIGINS="[]",
    )
    assert (settings.server.port, settings.server.host) == (8080, "127.0.0.1")
    assert settings.server.shutdown_timeout == 2.5
    # Relative paths follow the settings file, wherever they were written.
    assert settings.server.state_dir == tmp_path / "var" / "state"
    assert settings.repositories.create_demo is False
    assert settings.repositories.source_url == "http://archives.example/imserve"
    assert settings.repositories.initial == ["a", "b"]
    assert settings.sessions.emit_result is False
    assert settings.frames.ack_first_pixel is True
    assert settings.clips.codec == "h264"
    assert settings.recording.cameras == ["gate", "yard"]


def test_numbers_are_read_as_toml_numbers(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        FRAMEHUB_CAMERA_CACHE_BYTES="64_000",
        FRAMEHUB_CAMERA_MJPEG_FPS="5",
        FRAMEHUB_REPOSITORIES_RETRY_BACKOFF="1e1",
    )
    assert settings.camera.cache_bytes == 64_000
    assert settings.camera.mjpeg_fps == 5.0
    assert isinstance(settings.camera.mjpeg_fps, float)
    assert settings.repositories.retry_backoff == 10.0


def test_named_tables_take_double_underscores(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[processors.goal_try]\nurl = "http://127.0.0.1:9000/goal"\nretries = 1\n',
        FRAMEHUB_PROCESSORS__goal_try__URL="http://10.0.0.5:9000/goal",
        FRAMEHUB_PROCESSORS__goal_try__HEADERS='{"X-Api-Key": "k3y-from-env"}',
        FRAMEHUB_PROCESSORS__Pass_Drive__BUILTIN="motion",
        FRAMEHUB_WEBHOOKS__ops_hook__URL="https://hooks.example/framehub",
        FRAMEHUB_WEBHOOKS__ops_hook__EVENTS='["camera"]',
        FRAMEHUB_WEBHOOKS__ops_hook__HEADERS='{ Authorization = "Bearer w3bhook" }',
    )
    goal_try = settings.processors["goal_try"]
    assert (goal_try.url, goal_try.retries) == ("http://10.0.0.5:9000/goal", 1)
    assert goal_try.headers == {"X-Api-Key": "k3y-from-env"}
    # Names keep their case; the table and key parts do not matter.
    assert settings.processors["Pass_Drive"] == ProcessorSettings(builtin="motion")
    hook = settings.webhooks["ops_hook"]
    assert (hook.url, hook.events) == ("https://hooks.example/framehub", ["camera"])
    assert hook.headers == {"Authorization": "Bearer w3bhook"}


def test_the_client_token_and_other_variables_are_not_settings(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        FRAMEHUB_TOKEN="for framehub-send",
        framehub_server_port="1",
        HOME="/root",
        CREDENTIALS_DIRECTORY=str(tmp_path),
    )
    assert settings == load_settings(tmp_path / "settings.toml")


def test_without_an_environment_only_the_file_counts(tmp_path: Path) -> None:
    settings_file(tmp_path, "[server]\nport = 7000\n")
    assert load_settings(tmp_path / "settings.toml").server.port == 7000


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"FRAMEHUB_SERVER_PORT": "abc"},
            "environment: FRAMEHUB_SERVER_PORT must be a port number from 0 to 65535, not 'abc'",
            id="not-a-number",
        ),
        pytest.param(
            {"FRAMEHUB_SERVER__PORT": "70000"},
            "environment: FRAMEHUB_SERVER__PORT must be a port number from 0 to 65535, not '70000'",
            id="out-of-range",
        ),
        pytest.param(
            {"FRAMEHUB_SERVER_PORT": ""},
            "environment: FRAMEHUB_SERVER_PORT must be a port number from 0 to 65535, not ''",
            id="empty",
        ),
        pytest.param(
            {"FRAMEHUB_REPOSITORIES_CREATE_DEMO": "yes"},
            "environment: FRAMEHUB_REPOSITORIES_CREATE_DEMO must be true or false, not 'yes'",
            id="not-a-bool",
        ),
        pytest.param(
            {"FRAMEHUB_REPOSITORIES_INITIAL": '["../etc"]'},
            "environment: FRAMEHUB_REPOSITORIES_INITIAL must be a list of repository names, "
            "not '[\"../etc\"]'",
            id="bad-list-item",
        ),
        pytest.param(
            {"FRAMEHUB_REPOSITORIES_INITIAL": "a b"},
            "environment: FRAMEHUB_REPOSITORIES_INITIAL must be a list of repository names, "
            "not 'a b'",
            id="list-not-written-as-a-list",
        ),
        pytest.param(
            {"FRAMEHUB_CLIPS_CODEC": "vp9"},
            'environment: FRAMEHUB_CLIPS_CODEC must be "h264" or "mjpeg", not \'vp9\'',
            id="not-an-allowed-value",
        ),
        pytest.param(
            {"FRAMEHUB_SERVR_PORT": "1"},
            "environment: unknown variable FRAMEHUB_SERVR_PORT: there is no table [servr]; "
            "allowed tables are [batch], [camera], [clips], [cluster], [frames], [live], [processors], "
            "[recording], [repositories], [server], [sessions], [webhooks]",
            id="unknown-table",
        ),
        pytest.param(
            {"FRAMEHUB_SERVER_PROT": "1"},
            "environment: unknown variable FRAMEHUB_SERVER_PROT: [server] has no key prot; "
            "allowed keys are api_token, api_token_file, body_idle_timeout, cors_allowed_origins, "
            "event_loop, header_timeout, host, log_level, max_connections, "
            "max_connections_per_ip, old_secret_keys, port, public, secret_key, secret_key_file, "
            "shutdown_timeout, state_dir, tls_cert, tls_key, trusted_proxies",
            id="unknown-key",
        ),
        pytest.param(
            {"FRAMEHUB_CLIPS_ANALYSIS_THREADS": "2"},
            "environment: FRAMEHUB_CLIPS_ANALYSIS_THREADS: clips.analysis_threads is now "
            "clips.analysis_workers (the built-in analyses run in worker processes): rename it",
            id="moved-key",
        ),
        pytest.param(
            {"FRAMEHUB_PROCESSORS_GOAL_TRY_URL": "http://x"},
            "environment: FRAMEHUB_PROCESSORS_GOAL_TRY_URL must be spelt "
            "FRAMEHUB_PROCESSORS__NAME__KEY, with double underscores",
            id="named-table-with-single-underscores",
        ),
        pytest.param(
            {"FRAMEHUB_WEBHOOKS__URL": "http://x"},
            "environment: FRAMEHUB_WEBHOOKS__URL must be spelt FRAMEHUB_WEBHOOKS__NAME__KEY",
            id="named-table-without-a-name",
        ),
        pytest.param(
            {"FRAMEHUB_SERVER__PORT__X": "1"},
            "environment: FRAMEHUB_SERVER__PORT__X must be spelt FRAMEHUB_SERVER_KEY or "
            "FRAMEHUB_SERVER__KEY",
            id="too-many-parts",
        ),
        pytest.param(
            {"FRAMEHUB_PROCESSORS__9lives__URL": "http://x"},
            "environment: FRAMEHUB_PROCESSORS__9lives__URL: '9lives' is not a valid name for "
            "[processors.NAME] (letters, digits, '_' or '-', starting with a letter or '_')",
            id="bad-name",
        ),
        pytest.param(
            {"FRAMEHUB_SERVER_PORT": "1", "FRAMEHUB_SERVER__PORT": "2"},
            "environment: FRAMEHUB_SERVER_PORT and FRAMEHUB_SERVER__PORT both set server.port",
            id="set-twice",
        ),
        pytest.param(
            {"FRAMEHUB_PROCESSORS__a__TIMEOUT": "5"},
            "settings.toml + environment: processors.a needs url (an http:// or https:// URL) "
            "or builtin ('summary' or 'motion'): it has neither",
            id="incomplete-named-table",
        ),
        pytest.param(
            {"FRAMEHUB_REPOSITORIES_INITIAL": "['cam']"},
            "settings.toml + environment: repositories.initial needs repositories.source_url "
            "to download from",
            id="across-tables",
        ),
        pytest.param(
            {"PORT": "http"},
            "environment: PORT must be a port number from 0 to 65535, not 'http'",
            id="imserve-port",
        ),
        pytest.param(
            {"REPOSITORY_URL": "ftp://example.com", "INITIAL_REPOSITORIES": "park"},
            "environment: REPOSITORY_URL must be an http:// or https:// URL, or empty, "
            "not 'ftp://example.com'",
            id="imserve-url",
        ),
        pytest.param(
            {"REPOSITORY_URL": "http://x", "INITIAL_REPOSITORIES": "park ../etc"},
            "environment: INITIAL_REPOSITORIES must be a list of repository names, "
            "not 'park ../etc'",
            id="imserve-initial",
        ),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    assert refused(tmp_path, **environ) == message


def test_a_bad_secret_is_not_shown(tmp_path: Path) -> None:
    message = refused(tmp_path, FRAMEHUB_SERVER_SECRET_KEY="n0t-a-fernet-key")
    assert message == (
        "environment: FRAMEHUB_SERVER_SECRET_KEY must be a Fernet key "
        "(32 url-safe base64-encoded bytes) or empty"
    )
    message = refused(tmp_path, FRAMEHUB_PROCESSORS__a__HEADERS='{"X-Key": 12345678}')
    assert "FRAMEHUB_PROCESSORS__a__HEADERS" in message
    assert "12345678" not in message


def test_file_errors_are_still_named_by_the_file(tmp_path: Path) -> None:
    assert refused(tmp_path, "[server]\ncolour = 1\n", FRAMEHUB_SERVER_PORT="1").startswith(
        "settings.toml + environment: unknown key server.colour"
    )
    assert refused(tmp_path, "[server]\nport = 'x'\n").startswith("settings.toml: server.port")


# --- paradrop-imserve's variables --------------------------------------------------------------


def test_imserve_variables_stand_in_for_unset_keys(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        PORT="8000",
        REPOSITORY_URL="http://pages.example/imserve",
        INITIAL_REPOSITORIES=" park  lobby ",
        SNAP_DATA="/var/snap/imserve/current",
    )
    assert settings.server.port == 8000
    assert settings.repositories.source_url == "http://pages.example/imserve"
    assert settings.repositories.initial == ["park", "lobby"]
    assert settings.repositories_dir == Path("/var/snap/imserve/current")


def test_the_file_and_framehub_variables_win_over_imserve_variables(tmp_path: Path) -> None:
    imserve = {
        "PORT": "8000",
        "REPOSITORY_URL": "http://imserve.example",
        "INITIAL_REPOSITORIES": "park",
        "SNAP_DATA": "/snap",
    }
    settings = load(
        tmp_path,
        '[server]\nport = 7000\n[repositories]\ndir = "images"\n',
        FRAMEHUB_REPOSITORIES_SOURCE_URL="http://framehub.example",
        FRAMEHUB_REPOSITORIES_INITIAL="[]",
        **imserve,
    )
    assert settings.server.port == 7000
    assert settings.repositories_dir == tmp_path / "images"
    assert settings.repositories.source_url == "http://framehub.example"
    assert settings.repositories.initial == []
    # Even a file's empty value counts as set.
    assert load(tmp_path, '[repositories]\ndir = ""\n', SNAP_DATA="/snap").repositories.dir == (
        Path("")
    )


# --- secrets from files ------------------------------------------------------------------------


def test_secrets_are_read_from_files(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "cookie.key").write_text(f"\n  {KEY}\n")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = load(
        tmp_path,
        '[server]\nsecret_key_file = "secrets/cookie.key"\n',
        FRAMEHUB_SERVER_API_TOKEN_FILE=str(token_file),
    )
    assert settings.server.secret_key == KEY
    assert settings.server.secret_key_file == tmp_path / "secrets" / "cookie.key"
    assert settings.server.api_token == TOKEN
    assert settings.server.api_token_file == token_file
    assert {KEY, TOKEN} <= set(secrets_of(settings))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            None, "settings.toml: server.api_token_file: {path}: no such file", id="missing"
        ),
        pytest.param("", "settings.toml: server.api_token_file: {path} is empty", id="empty"),
        pytest.param(
            " \n\t\n", "settings.toml: server.api_token_file: {path} is empty", id="blank"
        ),
        pytest.param(
            "one\ntwo\n",
            "settings.toml: server.api_token_file: {path} must hold one line, not several",
            id="two-lines",
        ),
        pytest.param(
            b"\xff\xfe",
            "settings.toml: server.api_token_file: {path} is not UTF-8 text",
            id="not-text",
        ),
    ],
)
def test_an_unusable_secret_file_is_one_line_naming_key_and_path(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "token"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    assert refused(tmp_path, '[server]\napi_token_file = "token"\n') == message.format(path=path)


def test_a_secret_file_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "token").mkdir()
    message = refused(tmp_path, '[server]\napi_token_file = "token"\n')
    assert message.startswith(f"settings.toml: server.api_token_file: cannot read {tmp_path}/token")


def test_a_secret_key_file_must_hold_a_fernet_key(tmp_path: Path) -> None:
    (tmp_path / "cookie.key").write_text("n0t-a-fernet-key\n")
    message = refused(tmp_path, '[server]\nsecret_key_file = "cookie.key"\n')
    assert message == (
        f"settings.toml: server.secret_key_file: {tmp_path / 'cookie.key'} must hold a Fernet key "
        "(32 url-safe base64-encoded bytes)"
    )


@pytest.mark.parametrize("key", ["secret_key", "api_token"])
def test_a_secret_and_its_file_are_one_too_many(tmp_path: Path, key: str) -> None:
    (tmp_path / "secret").write_text(KEY)
    text = f'[server]\n{key}_file = "secret"\n'
    message = refused(tmp_path, text, **{f"FRAMEHUB_SERVER_{key.upper()}": KEY})
    assert message == (
        f"settings.toml + environment: server.{key} and server.{key}_file are both set; keep one"
    )


PROCESSOR_WITH_CREDENTIAL = """
[processors.goal_try]
url = "http://127.0.0.1:9000/goal"
headers = { Authorization = "credential:goal_try_auth", X-Plain = "plain" }
[webhooks.ops]
url = "http://127.0.0.1:9001/hook"
headers = { X-Hook-Key = "credential:hook.key" }
"""


def test_header_values_come_from_systemd_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "goal_try_auth").write_text("Bearer g0al-secret\n")
    (credentials / "hook.key").write_text("h00k-secret")
    settings = load(tmp_path, PROCESSOR_WITH_CREDENTIAL, CREDENTIALS_DIRECTORY=str(credentials))
    assert settings.processors["goal_try"].headers == {
        "Authorization": "Bearer g0al-secret",
        "X-Plain": "plain",
    }
    assert settings.webhooks["ops"].headers == {"X-Hook-Key": "h00k-secret"}
    assert {"Bearer g0al-secret", "h00k-secret"} <= set(secrets_of(settings))


def test_credential_errors_name_the_key(tmp_path: Path) -> None:
    assert refused(tmp_path, PROCESSOR_WITH_CREDENTIAL) == (
        "settings.toml: processors.goal_try.headers.Authorization reads credential "
        "'goal_try_auth', but $CREDENTIALS_DIRECTORY is not set (systemd LoadCredential=)"
    )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    assert refused(tmp_path, PROCESSOR_WITH_CREDENTIAL, CREDENTIALS_DIRECTORY=str(credentials)) == (
        "settings.toml: processors.goal_try.headers.Authorization: "
        f"{credentials / 'goal_try_auth'}: no such file"
    )
    (credentials / "goal_try_auth").write_text("x")
    assert refused(
        tmp_path,
        '[webhooks.ops]\nurl = "http://h"\nheaders = { K = "credential:../token" }\n',
        CREDENTIALS_DIRECTORY=str(credentials),
    ) == (
        "settings.toml: webhooks.ops.headers.K must name a credential, a file name, not '../token'"
    )


# --- check-config and --version, run as an operator runs them ---------------------------------


def test_check_config_prints_every_key_with_secrets_masked(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "goal_try_auth").write_text("Bearer g0al-secret\n")
    (credentials / "hook.key").write_text("h00k-secret")
    (tmp_path / "token").write_text(TOKEN)
    settings_file(
        tmp_path,
        '[server]\napi_token_file = "token"\n'
        '[repositories]\nsource_url = "https://user:pa55word@archives.example/imserve"\n'
        + PROCESSOR_WITH_CREDENTIAL,
    )

    done = framehub(
        "check-config",
        "settings.toml",
        cwd=tmp_path,
        CREDENTIALS_DIRECTORY=str(credentials),
        FRAMEHUB_SERVER_SECRET_KEY=KEY,
        FRAMEHUB_SERVER_PORT="8081",
    )

    assert (done.returncode, done.stderr) == (0, "")
    for secret in (TOKEN, KEY, "g0al-secret", "h00k-secret", "pa55word"):
        assert secret not in done.stdout
    printed = tomllib.loads(done.stdout)
    server = printed["server"]
    assert (server["port"], server["api_token"], server["secret_key"]) == (8081, "***", "***")
    assert server["api_token_file"] == str(tmp_path / "token")
    assert printed["processors"]["goal_try"]["headers"] == {
        "Authorization": "***",
        "X-Plain": "***",
    }
    assert printed["webhooks"]["ops"]["headers"] == {"X-Hook-Key": "***"}
    assert printed["repositories"]["source_url"] == "https://***@archives.example/imserve"
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert_every_key(printed, load_settings(tmp_path / "settings.toml", environ))


def assert_every_key(printed: Mapping[str, Any], settings: Settings) -> None:
    """``printed`` has every table and key of ``settings``, and nothing else."""
    assert list(printed) == [table.name for table in dataclasses.fields(Settings)]
    for table in dataclasses.fields(Settings):
        value = getattr(settings, table.name)
        named = value if isinstance(value, dict) else {None: value}
        for name, values in named.items():
            keys = [f.name for f in dataclasses.fields(values)]
            shown = printed[table.name] if name is None else printed[table.name][name]
            assert list(shown) == keys, (table.name, name)


def test_check_config_output_loads_as_the_same_settings(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[repositories]\ndir = "images"\n[processors.summary]\nbuiltin = "summary"\n'
        '[recording]\ncameras = ["*"]\n',
        FRAMEHUB_CLIPS_MAX_WAIT="0.5",
    )
    (tmp_path / "again").mkdir()
    again = settings_file(tmp_path / "again", settings_as_toml(settings, "***"))
    assert load_settings(again) == settings


def test_precedence_command_line_then_environment_then_file_then_imserve(tmp_path: Path) -> None:
    settings_file(
        tmp_path,
        '[server]\nport = 7000\nhost = "10.0.0.1"\nlog_level = "WARNING"\n'
        '[repositories]\nsource_url = "http://from-the-file"\n',
    )

    done = framehub(
        "--port",
        "9000",
        "check-config",
        cwd=tmp_path,
        FRAMEHUB_SERVER_PORT="8000",
        FRAMEHUB_SERVER_HOST="127.0.0.1",
        PORT="6000",
        REPOSITORY_URL="http://from-imserve",
        SNAP_DATA=str(tmp_path / "snap"),
    )

    assert done.returncode == 0, done.stderr
    printed = tomllib.loads(done.stdout)
    assert printed["server"]["port"] == 9000  # --port over FRAMEHUB_SERVER_PORT over the file
    assert printed["server"]["host"] == "127.0.0.1"  # FRAMEHUB_SERVER_HOST over the file
    assert printed["server"]["log_level"] == "WARNING"  # the file over the default
    assert printed["repositories"]["source_url"] == "http://from-the-file"  # over REPOSITORY_URL
    assert printed["repositories"]["dir"] == str(tmp_path / "snap")  # SNAP_DATA over the default
    assert printed["server"]["shutdown_timeout"] == 10.0  # the default


def test_check_config_refuses_in_one_line_with_status_2(tmp_path: Path) -> None:
    settings_file(tmp_path)
    done = framehub("check-config", cwd=tmp_path, FRAMEHUB_SERVER_PROT="1")
    assert (done.returncode, done.stdout) == (2, "")
    (line,) = done.stderr.splitlines()
    assert line.startswith("framehub: environment: unknown variable FRAMEHUB_SERVER_PROT: ")
    done = framehub("check-config", "absent.toml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "framehub: absent.toml: settings file not found\n"


def test_version(tmp_path: Path) -> None:
    done = framehub("--version", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"framehub {importlib.metadata.version('framehub')}\n"


def test_serve_takes_its_settings_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    settings_file(tmp_path, '[server]\nhost = "127.0.0.1"\napi_token_file = "token"\n')
    port = free_port()
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(MAIN), "serve", "--config", "settings.toml"],
            cwd=tmp_path,
            env=clean_environment(
                FRAMEHUB_SERVER_PORT=str(port),
                FRAMEHUB_SERVER_SHUTDOWN_TIMEOUT="2",
                FRAMEHUB_REPOSITORIES_CREATE_DEMO="false",
                FRAMEHUB_TOKEN="the client's, not a setting",
            ),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            url = f"http://127.0.0.1:{port}/get_session_id"
            assert http_status(url, process) == 401
            assert http_status(url, process, TOKEN) == 200
        finally:
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=PROCESS_TIMEOUT)
    assert returncode == 0, log.read_text()
    assert not (tmp_path / "state" / "repositories" / "demo").exists()


def http_status(url: str, process: subprocess.Popen[bytes], token: str | None = None) -> int:
    """The status of ``GET url`` once the server answers (bounded)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    for _ in range(300):
        assert process.poll() is None, "the server exited while starting"
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                status: int = resp.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    pytest.fail(f"no answer from {url}")


# --- framehub-send's token ----------------------------------------------------------------------


async def run_client(
    folder: Path, server_url: str, *args: str, **variables: str
) -> tuple[int, str]:
    """``python -m server.client FOLDER`` to its end; the exit status and its stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.client",
        str(folder),
        "--server",
        server_url,
        "--fps",
        "0",
        "--settle",
        # The app's first clip waits for its analysis workers to start (up to about 1 s).
        "2",
        *args,
        cwd=ROOT,
        env=clean_environment(**variables),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(PROCESS_TIMEOUT):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_framehub_send_takes_its_token_from_the_environment(
    live_server: LiveServerFactory, images: Images, tmp_path: Path
) -> None:
    processors = {"summary": {"builtin": "summary", "timeout": 5.0}}
    server = await live_server(processors=processors, server={"api_token": TOKEN})
    folder = images.folder(tmp_path / "frames", [f"frame-{n}.jpg" for n in range(4)])

    from_variable, token_wins, wrong_token = await asyncio.gather(
        run_client(folder, server.url, FRAMEHUB_TOKEN=TOKEN),
        run_client(folder, server.url, "--token", TOKEN, FRAMEHUB_TOKEN="wrong"),
        run_client(folder, server.url, "--token", "wrong", FRAMEHUB_TOKEN=TOKEN),
    )

    for status, output in (from_variable, token_wins):
        assert status == 0, output
        lines = output.splitlines()
        assert json.loads(lines[0])["clip"]["frames"] == 4
        assert json.loads(lines[-1])["frames_accepted"] == 4
    status, output = wrong_token
    assert status != 0
    assert "missing or wrong API token" in output
