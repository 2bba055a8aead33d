"""Fuzz target: the settings loader, :func:`server.settings.load_settings`.

Each input is a settings file, optionally followed by the line ``#@environment`` and
``NAME=VALUE`` lines, the environment laid over it (``$CREDENTIALS_DIRECTORY`` is set unless they
set it). The file is written to
``WORK/settings/settings.toml`` beside a secret key file, a token file and a credentials folder, so
that the ``*_file`` keys and ``credential:`` values have something to read. Loading either gives
:class:`~server.settings.Settings` or raises SettingsError; settings that load print (``framehub
check-config``) as a TOML document that parses.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from fuzz.engine import Broken, Target
from server.settings import SettingsError, load_settings, settings_as_toml, settings_from_mapping

ENVIRONMENT_MARK = b"\n#@environment\n"
# Fixed Fernet keys, so that an input loads the same way in every run.
KEY = "ZnV6ei1zZWVkLWtleS0wMTIzNDU2Nzg5YWJjZGVmZ2g="
OLD_KEY = "ZnV6ei1vbGQta2V5LTAxMjM0NTY3ODlhYmNkZWZnaGk="
MASK = "(secret)"


class SettingsFiles:
    """The folder a settings file is loaded from, with the files its keys may name."""

    def __init__(self, work: Path) -> None:
        self.base = work / "settings"
        self.credentials = self.base / "credentials"
        self.credentials.mkdir(parents=True, exist_ok=True)
        (self.base / "secret.key").write_text(KEY + "\n")
        (self.base / "token.txt").write_text("fuzz-token\n")
        (self.credentials / "api").write_text("Bearer fuzz\n")
        self.path = self.base / "settings.toml"

    def check(self, data: bytes) -> None:
        """Load ``data`` as a settings file with its environment; print what loads."""
        text, _, variables = data.partition(ENVIRONMENT_MARK)
        environ = {"CREDENTIALS_DIRECTORY": str(self.credentials)}
        for line in variables.decode("utf-8", "replace").splitlines():
            name, equals, value = line.partition("=")
            if equals:
                environ[name] = value
        self.path.write_bytes(text)
        settings = load_settings(self.path, environ)
        printed = settings_as_toml(settings, MASK)
        try:
            tomllib.loads(printed)
        except tomllib.TOMLDecodeError as exc:
            raise Broken(f"settings_as_toml printed what is not TOML: {exc}") from None

    def seeds(self) -> list[bytes]:
        """Every key at its default, a file using every kind of value, and an environment."""
        defaults = settings_as_toml(settings_from_mapping({}, self.base), MASK)
        every_kind = f"""
[server]
host = "127.0.0.1"
port = 7466
state_dir = "state"
secret_key_file = "secret.key"
old_secret_keys = ["{OLD_KEY}"]
api_token_file = "token.txt"
public = ["camera", "health"]
cors_allowed_origins = ["https://example.com", "*"]
trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1"]
shutdown_timeout = 2.5
event_loop = "asyncio"
log_level = "WARNING"

[repositories]
source_url = "http://example.com/repos/"
initial = ["demo", "cam-1.a_b"]
create_demo = false
max_members = 100

[camera]
fps = 2.5
mjpeg_fps = 5
mjpeg_max_fps = 30.0

[clips]
frames = 10
stride = 5
codec = "h264"
h264_preset = "ultrafast"

[recording]
cameras = ["*"]
repository = "rec-{{camera}}"

[processors.remote]
url = "https://analysis.example.com/v1"
headers = {{ Authorization = "credential:api", X-Extra = "1" }}
retries = 0

[processors.local]
builtin = "motion"

[webhooks.hook]
url = "http://hooks.example.com/in"
events = ["result", "camera"]
headers = {{ Authorization = "credential:api" }}
"""
        variables = [
            "FRAMEHUB_SERVER_PORT=8080",
            'FRAMEHUB_SERVER__PUBLIC=["camera", "ui"]',
            "FRAMEHUB_CAMERA__FPS=0.5",
            "FRAMEHUB_PROCESSORS__extra__URL=http://127.0.0.1:9/a",
            'FRAMEHUB_WEBHOOKS__hook__HEADERS={"X-Key": "credential:api"}',
            "FRAMEHUB_FRAMES_ACK_FIRST_PIXEL=1",
            "INITIAL_REPOSITORIES=one two",
            "REPOSITORY_URL=https://example.com/",
            "PORT=9000",
        ]
        with_environment = (
            every_kind.encode() + ENVIRONMENT_MARK + "\n".join(variables).encode() + b"\n"
        )
        return [defaults.encode(), every_kind.encode(), with_environment]


# TOML syntax and values the seeds do not show.
DICTIONARY = (
    b'"\\u0000"',
    b"\\u",
    b"\\U0010FFFF",
    b"'''",
    b'"""',
    b"[[",
    b"]]",
    b"{}",
    b"inf",
    b"-inf",
    b"nan",
    b"1e400",
    b"0x7fffffffffffffff",
    b"1979-05-27T07:32:00Z",
    b"{camera}",
    b"{camera.x}",
    b"{camera[0]}",
    b"{0}",
    b"credential:",
    b"http://",
    b"https://[",
    b"FRAMEHUB_",
    b"__",
)


def target(work: Path) -> Target:
    """The settings loader as a fuzz target."""
    files = SettingsFiles(work)
    return Target(
        check=files.check,
        seeds=files.seeds,
        refusals=(SettingsError,),
        max_len=8192,
        dictionary=DICTIONARY,
    )
