"""Settings: one TOML file read once at start into frozen dataclasses.

``load_settings(path, environ)`` reads the file with :mod:`tomllib`, lays the environment over it,
walks every table against the dataclass that describes it and returns a :class:`Settings`. Every
mistake an operator can make (an unknown table, key or variable, a wrong type, a value out of
range, a secret file that cannot be read) raises :class:`SettingsError` with one line that names
the key, or the variable, and says what is allowed; ``main.py`` prints that line and exits with
status 2. Missing keys take the defaults declared here, which the README documents one by one.

From highest to lowest precedence a key comes from (``--host``/``--port`` of the command line
override both, in ``server.cli``):

1. a ``FRAMEHUB_<TABLE>_<KEY>`` or ``FRAMEHUB_<TABLE>__<KEY>`` variable, or
   ``FRAMEHUB_<TABLE>__<NAME>__<KEY>`` for ``[processors.NAME]`` and ``[webhooks.NAME]``, its text
   read as the key's type (:func:`_parse_variable`) and checked by the file's rules;
2. the settings file;
3. paradrop-imserve's own variables (:data:`IMSERVE_VARIABLES`);
4. the defaults.

Secrets can stay out of the file and the environment: ``[server] secret_key_file`` and
``api_token_file`` name files holding them, and a header value ``"credential:NAME"`` is the
systemd credential ``$CREDENTIALS_DIRECTORY/NAME`` (``LoadCredential=``). They are read here, so
the rest of the server (and the log redaction) only sees final values.

Relative paths are taken relative to the folder of the settings file, so a service started from any
working directory finds the same state.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import math
import re
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from server.names import is_valid_repository_name

Check = tuple[Callable[[Any], bool], str]


class SettingsError(Exception):
    """A settings file that cannot be used; the message is one line naming the key."""


def _setting(default: Any, check: Check | None = None, secret: bool = False) -> Any:
    """A dataclass field with a default and an optional (predicate, allowed-values) check; a
    ``secret`` value is never shown, in an error or by :func:`settings_as_toml`."""
    metadata = {"check": check, "secret": secret}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _positive(value: float) -> bool:
    # Infinity too is refused: an infinite probe_timeout loaded, then failed every upload.
    return 0 < value < math.inf


def _non_negative(value: float) -> bool:
    return 0 <= value < math.inf


def _port(value: int) -> bool:
    return 0 <= value <= 65535


def _http_url_or_empty(value: str) -> bool:
    if not value:
        return True
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://host]x": an unbalanced bracket (found by make fuzz)
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _http_url(value: str) -> bool:
    return bool(value) and _http_url_or_empty(value)


def _redis_url_or_empty(value: str) -> bool:
    if not value:
        return True
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.scheme == "unix":
        return bool(parts.path)
    return parts.scheme in ("redis", "rediss") and bool(parts.netloc)


_FERNET_KEY = "a Fernet key (32 url-safe base64-encoded bytes)"


def _fernet_key_or_empty(value: str) -> bool:
    if not value:
        return True
    try:
        Fernet(value.encode())
    except ValueError:
        return False
    return True


def _repository_names(value: list[str]) -> bool:
    return all(is_valid_repository_name(name) for name in value)


def _identifier(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value) is not None


def _node_name(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_.:-]{0,64}", value) is not None


BUILTIN_KINDS = ("summary", "motion")
_X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


def _networks(value: list[str]) -> bool:
    try:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


# Route groups of ``[server] public`` (see server.web.auth.route_group).
ROUTE_GROUPS = ("camera", "live", "ui", "metrics", "health", "ingest", "batch", "analyze")
PUBLIC_BY_DEFAULT = ["camera", "live", "ui", "metrics", "health"]


def _route_groups(value: list[str]) -> bool:
    return all(group in ROUTE_GROUPS for group in value)


def _origins(value: list[str]) -> bool:
    return all(origin == "*" or _http_url(origin) for origin in value)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: where to listen and where to keep state."""

    host: str = _setting("0.0.0.0", (bool, "a host name or address"))
    port: int = _setting(7466, (_port, "a port number from 0 to 65535"))
    state_dir: Path = _setting(Path("state"))
    secret_key: str = _setting("", (_fernet_key_or_empty, f"{_FERNET_KEY} or empty"), secret=True)
    secret_key_file: Path = _setting(Path(""))
    old_secret_keys: list[str] = _setting(
        [],
        (
            lambda keys: all(key and _fernet_key_or_empty(key) for key in keys),
            "a list of Fernet keys (32 url-safe base64-encoded bytes each)",
        ),
        secret=True,
    )
    api_token: str = _setting("", secret=True)
    api_token_file: Path = _setting(Path(""))
    public: list[str] = _setting(
        PUBLIC_BY_DEFAULT,
        (
            _route_groups,
            "a list of route groups among " + ", ".join(f'"{g}"' for g in ROUTE_GROUPS),
        ),
    )
    cors_allowed_origins: list[str] = _setting(
        [], (_origins, 'a list of origins such as "https://example.com", or ["*"]')
    )
    shutdown_timeout: float = _setting(10.0, (_positive, "a number of seconds above 0"))
    header_timeout: float = _setting(10.0, (_positive, "a number of seconds above 0"))
    body_idle_timeout: float = _setting(60.0, (_positive, "a number of seconds above 0"))
    max_connections: int = _setting(
        0, (_non_negative, "a whole number, 0 for as many as the open files limit allows")
    )
    max_connections_per_ip: int = _setting(256, (_positive, "a whole number above 0"))
    trusted_proxies: list[str] = _setting(
        [], (_networks, 'a list of addresses or networks, such as "127.0.0.1" or "10.0.0.0/8"')
    )
    tls_cert: Path = _setting(Path(""))
    tls_key: Path = _setting(Path(""))
    event_loop: str = _setting(
        "auto",
        (lambda v: v in ("auto", "uvloop", "asyncio"), '"auto", "uvloop" or "asyncio"'),
    )
    log_level: str = _setting(
        "INFO",
        (
            lambda v: v in ("DEBUG", "INFO", "WARNING", "ERROR"),
            '"DEBUG", "INFO", "WARNING" or "ERROR"',
        ),
    )

    @property
    def uses_tls(self) -> bool:
        """Whether the site serves HTTPS (both ``tls_cert`` and ``tls_key`` are set)."""
        return _is_set(self.tls_cert)


@dataclass(frozen=True, slots=True)
class RepositorySettings:
    """``[repositories]``: image folders served as cameras, and where to download more."""

    dir: Path = _setting(Path(""))
    source_url: str = _setting("", (_http_url_or_empty, "an http:// or https:// URL, or empty"))
    initial: list[str] = _setting([], (_repository_names, "a list of repository names"))
    create_demo: bool = _setting(True)
    demo_frames: int = _setting(300, (_positive, "a whole number above 0"))
    rescan_interval: float = _setting(1.0, (_non_negative, "a number of seconds, 0 or more"))
    connect_timeout: float = _setting(10.0, (_positive, "a number of seconds above 0"))
    read_timeout: float = _setting(30.0, (_positive, "a number of seconds above 0"))
    max_download_bytes: int = _setting(2 << 30, (_positive, "a number of bytes above 0"))
    max_members: int = _setting(100_000, (_positive, "a whole number above 0"))
    max_member_bytes: int = _setting(64 << 20, (_positive, "a number of bytes above 0"))
    max_total_bytes: int = _setting(4 << 30, (_positive, "a number of bytes above 0"))
    max_name_length: int = _setting(255, (_positive, "a whole number above 0"))
    retry_backoff: float = _setting(30.0, (_non_negative, "a number of seconds, 0 or more"))
    max_retry_backoff: float = _setting(900.0, (_non_negative, "a number of seconds, 0 or more"))


@dataclass(frozen=True, slots=True)
class CameraSettings:
    """``[camera]``: how frames are handed to clients."""

    cache_bytes: int = _setting(32 << 20, (_non_negative, "a number of bytes, 0 or more"))
    cache_max_frame_bytes: int = _setting(1 << 20, (_non_negative, "a number of bytes, 0 or more"))
    cursor_max_age: int = _setting(30 * 86400, (_positive, "a number of seconds above 0"))
    mjpeg_fps: float = _setting(10.0, (_positive, "frames per second above 0"))
    mjpeg_max_fps: float = _setting(30.0, (_positive, "frames per second above 0"))
    fps: float = _setting(10.0, (_positive, "frames per second above 0"))
    max_clients: int = _setting(10_000, (_positive, "a whole number above 0"))


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """``[sessions]``: live Socket.IO sessions."""

    ttl: float = _setting(300.0, (_positive, "a number of seconds above 0"))
    max_pending: int = _setting(1000, (_positive, "a whole number above 0"))
    max_pending_per_ip: int = _setting(50, (_positive, "a whole number above 0"))
    handshake_timeout: float = _setting(5.0, (_positive, "a number of seconds above 0"))
    session_id_name: str = _setting(
        "session_id", (_identifier, "a name of letters, digits, '_' or '-'")
    )
    generate_session_id_on_connect: bool = _setting(False)
    emit_result: bool = _setting(True)
    max_buffer_size: int = _setting(16 << 20, (_positive, "a number of bytes above 0"))
    final_clip: bool = _setting(True)


@dataclass(frozen=True, slots=True)
class FrameSettings:
    """``[frames]``: what a live frame may be and how many may wait."""

    max_bytes: int = _setting(8 << 20, (_positive, "a number of bytes above 0"))
    max_pixels: int = _setting(4096 * 4096, (_positive, "a whole number above 0"))
    queue_size: int = _setting(64, (_positive, "a whole number above 0"))
    when_full: str = _setting(
        "drop_oldest", (lambda v: v in ("drop_oldest", "reject"), '"drop_oldest" or "reject"')
    )
    ack_first_pixel: bool = _setting(False)


@dataclass(frozen=True, slots=True)
class ClipSettings:
    """``[clips]``: how frames are grouped and encoded."""

    frames: int = _setting(30, (_positive, "a whole number above 0"))
    stride: int = _setting(0, (_non_negative, "a whole number from 1 to clips.frames, or 0"))
    max_wait: float = _setting(2.0, (_positive, "a number of seconds above 0"))
    fps: float = _setting(15.0, (_positive, "frames per second above 0"))
    codec: str = _setting("mjpeg", (lambda v: v in ("h264", "mjpeg"), '"h264" or "mjpeg"'))
    h264_preset: str = _setting(
        "veryfast", (lambda v: v in _X264_PRESETS, "one of " + ", ".join(_X264_PRESETS))
    )
    h264_crf: int = _setting(23, (lambda v: 0 <= v <= 51, "a whole number from 0 to 51"))
    encode_threads: int = _setting(1, (_positive, "a whole number above 0"))
    analysis_workers: int = _setting(2, (_positive, "a whole number above 0"))
    max_concurrent_requests: int = _setting(16, (_positive, "a whole number above 0"))
    max_clip_bytes: int = _setting(64 << 20, (_positive, "a number of bytes above 0"))
    timing: str = _setting(
        "real", (lambda v: v in ("real", "fixed"), '"real" (frame timestamps) or "fixed" (fps)')
    )

    @property
    def step(self) -> int:
        """Frames between the starts of two clips (``stride``, or ``frames`` when 0)."""
        return self.stride or self.frames


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """``[batch]``: whole videos uploaded to ``POST /batch``."""

    max_bytes: int = _setting(500 << 20, (_positive, "a number of bytes above 0"))
    probe_timeout: float = _setting(30.0, (_positive, "a number of seconds above 0"))
    max_duration: float = _setting(3600.0, (_positive, "a number of seconds above 0"))
    max_pixels: int = _setting(4096 * 2304, (_positive, "a whole number above 0"))
    concurrency: int = _setting(2, (_positive, "a whole number above 0"))
    max_queued: int = _setting(100, (_positive, "a whole number above 0"))
    keep: float = _setting(3600.0, (_non_negative, "a number of seconds, 0 or more"))


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    """``[processors.NAME]``: one analysis API that receives every clip: ``url``, or a built-in."""

    url: str = _setting("", (_http_url_or_empty, "an http:// or https:// URL"))
    builtin: str = _setting(
        "", (lambda v: v in ("", *BUILTIN_KINDS), " or ".join(f'"{k}"' for k in BUILTIN_KINDS))
    )
    field: str = _setting("file", (bool, "a form field name"))
    timeout: float = _setting(30.0, (_positive, "a number of seconds above 0"))
    retries: int = _setting(2, (_non_negative, "a whole number, 0 or more"))
    headers: dict[str, str] = _setting({}, secret=True)
    max_response_bytes: int = _setting(1 << 20, (_positive, "a number of bytes above 0"))


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """``[live]``: live sessions as cameras that dashboards watch."""

    takeover: bool = _setting(True)
    keep: float = _setting(300.0, (_non_negative, "a number of seconds, 0 or more"))
    max_viewers: int = _setting(20, (_positive, "a whole number above 0"))


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """``[cluster]``: several framehub processes sharing one Redis; off while ``redis_url`` is
    empty."""

    redis_url: str = _setting(
        "", (_redis_url_or_empty, "a redis://, rediss:// or unix:// URL, or empty"), secret=True
    )
    node: str = _setting(
        "", (_node_name, "up to 64 letters, digits, '.', '_', ':' or '-', or empty")
    )
    prefix: str = _setting("framehub", (_identifier, "1-64 letters, digits, '_' or '-'"))
    lease: float = _setting(10.0, (_positive, "a number of seconds above 0"))


def _camera_patterns(value: list[str]) -> bool:
    return all(name == "*" or is_valid_repository_name(name) for name in value)


def _repository_template(value: str) -> bool:
    try:
        name = value.format(camera="cam")
    # "{camera.x}" and "{camera[x]}" ask the name for attributes and items (found by make fuzz).
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):
        return False
    return is_valid_repository_name(name)


@dataclass(frozen=True, slots=True)
class RecordingSettings:
    """``[recording]``: cameras whose frames are written into a repository."""

    cameras: list[str] = _setting(
        [], (_camera_patterns, 'a list of camera names, or ["*"] for every camera')
    )
    repository: str = _setting(
        "{camera}",
        (
            _repository_template,
            'a repository name that may hold "{camera}", such as "rec-{camera}"',
        ),
    )
    max_frames: int = _setting(0, (_non_negative, "a whole number, 0 for no limit"))
    max_bytes: int = _setting(1 << 30, (_non_negative, "a number of bytes, 0 for no limit"))
    max_age: float = _setting(0.0, (_non_negative, "a number of seconds, 0 for no limit"))
    queue_size: int = _setting(256, (_positive, "a whole number above 0"))
    retry_backoff: float = _setting(5.0, (_positive, "a number of seconds above 0"))
    max_retry_backoff: float = _setting(60.0, (_positive, "a number of seconds above 0"))

    def records(self, camera: str) -> bool:
        """Whether ``camera``'s frames are recorded."""
        return "*" in self.cameras or camera in self.cameras

    def repository_of(self, camera: str) -> str:
        """The repository ``camera`` records into."""
        return self.repository.format(camera=camera)


WEBHOOK_EVENTS = ("result", "batch", "camera")


def _webhook_events(value: list[str]) -> bool:
    return bool(value) and all(event in WEBHOOK_EVENTS for event in value)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """``[webhooks.NAME]``: a URL that gets results and events POSTed as JSON."""

    url: str = _setting("", (_http_url, "an http:// or https:// URL"))
    headers: dict[str, str] = _setting({}, secret=True)
    timeout: float = _setting(10.0, (_positive, "a number of seconds above 0"))
    retries: int = _setting(3, (_non_negative, "a whole number, 0 or more"))
    events: list[str] = _setting(
        list(WEBHOOK_EVENTS),
        (
            _webhook_events,
            "a list of one or more of " + ", ".join(f'"{e}"' for e in WEBHOOK_EVENTS),
        ),
    )
    max_queued: int = _setting(100, (_positive, "a whole number above 0"))


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole settings file."""

    server: ServerSettings = field(default_factory=ServerSettings)
    repositories: RepositorySettings = field(default_factory=RepositorySettings)
    camera: CameraSettings = field(default_factory=CameraSettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)
    frames: FrameSettings = field(default_factory=FrameSettings)
    clips: ClipSettings = field(default_factory=ClipSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    live: LiveSettings = field(default_factory=LiveSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    processors: dict[str, ProcessorSettings] = field(default_factory=dict)
    webhooks: dict[str, WebhookSettings] = field(default_factory=dict)

    @property
    def repositories_dir(self) -> Path:
        """The folder holding the repositories: ``[repositories] dir`` or ``state_dir/repositories``."""
        if not _is_set(self.repositories.dir):
            return self.server.state_dir / "repositories"
        return self.repositories.dir

    @property
    def node(self) -> str:
        """This process's name in a cluster: ``[cluster] node``, else host name and port."""
        return self.cluster.node or f"{socket.gethostname()}:{self.server.port}"


_TABLES: dict[str, type] = {
    "server": ServerSettings,
    "repositories": RepositorySettings,
    "camera": CameraSettings,
    "sessions": SessionSettings,
    "frames": FrameSettings,
    "clips": ClipSettings,
    "batch": BatchSettings,
    "live": LiveSettings,
    "recording": RecordingSettings,
    "cluster": ClusterSettings,
}
# ``[processors.NAME]`` tables, one per analysis API, each shaped like ProcessorSettings, and
# ``[webhooks.NAME]``, one per receiver, shaped like WebhookSettings.
_PROCESSORS_TABLE = "processors"
_WEBHOOKS_TABLE = "webhooks"
_NAMED_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def _type_name(expected: Any) -> str:
    names = {
        str: "a string",
        int: "a whole number",
        float: "a number",
        bool: "true or false",
        Path: "a path (string)",
    }
    if typing.get_origin(expected) is list:
        return "a list of " + _type_name(typing.get_args(expected)[0]).removeprefix("a ") + "s"
    if typing.get_origin(expected) is dict:
        return "a table"
    return names.get(expected, str(expected))


def _coerce(value: Any, expected: Any, key: str, where: str, shown: str) -> Any:
    """Check ``value`` against the annotated type and convert it (ints to floats, strings to paths);
    an error names ``key`` and ends with ``shown`` (``", not VALUE"``, or nothing for a secret)."""
    wrong = SettingsError(f"{where}: {key} must be {_type_name(expected)}{shown}")
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise wrong
        return [_coerce(item, item_type, key, where, shown) for item in value]
    if origin is dict:
        _, item_type = typing.get_args(expected)
        if not isinstance(value, dict):
            raise wrong
        return {str(k): _coerce(v, item_type, f"{key}.{k}", where, shown) for k, v in value.items()}
    if expected is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise wrong
        return value
    if expected is Path:
        if not isinstance(value, str):
            raise wrong
        return Path(value)
    raise TypeError(f"unsupported settings type {expected!r}")


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _field_type(cls: type, key: str) -> Any:
    expected = typing.get_type_hints(cls)[key]
    if isinstance(expected, types.UnionType):
        expected = next(t for t in typing.get_args(expected) if t is not type(None))
    return expected


def _checked(
    cls: type, key: str, value: Any, label: str, where: str, text: str | None = None
) -> Any:
    """``value`` of ``cls.key`` converted and checked; an error names ``label`` and shows ``text``
    (by default the value), never a secret."""
    known = _fields(cls)[key]
    expected = _field_type(cls, key)
    check: Check | None = known.metadata.get("check")
    shown = "" if known.metadata.get("secret") else f", not {text or repr(value)}"
    try:
        converted = _coerce(value, expected, label, where, shown)
    except SettingsError:
        if check is None or check[0] is bool:
            raise
        # The check's wording ("a list of repository names") says more than the type's.
        raise SettingsError(f"{where}: {label} must be {check[1]}{shown}") from None
    if check is not None and not check[0](converted):
        raise SettingsError(f"{where}: {label} must be {check[1]}{shown}")
    return converted


# Keys of earlier releases, and where their meaning went.
_MOVED_KEYS = {
    "live.public": 'is now the group "live" in [server] public: list it there to keep the live '
    "cameras open without the token, or leave it out to close them",
    "clips.analysis_threads": "is now clips.analysis_workers (the built-in analyses run in worker "
    "processes): rename it",
}


def _refuse_moved_key(where: str, place: str) -> None:
    """SettingsError saying where key ``place`` (``table.key``) of an earlier release went."""
    if place in _MOVED_KEYS:
        raise SettingsError(f"{where}: {place} {_MOVED_KEYS[place]}")


def build_table(cls: type, table: Any, name: str, where: str) -> Any:
    """Build dataclass ``cls`` from TOML ``table``, naming ``name.key`` in every error."""
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: [{name}] must be a table")
    known = _fields(cls)
    unknown = sorted(set(table) - set(known))
    for key in unknown:
        _refuse_moved_key(where, f"{name}.{key}")
    if unknown:
        raise SettingsError(
            f"{where}: unknown key {name}.{unknown[0]}; allowed keys are {', '.join(sorted(known))}"
        )
    return cls(
        **{key: _checked(cls, key, value, f"{name}.{key}", where) for key, value in table.items()}
    )


def _is_set(path: Path) -> bool:
    return str(path) not in ("", ".")


def _resolve(path: Path, base: Path) -> Path:
    if not _is_set(path):
        return path
    return path if path.is_absolute() else base / path


def settings_from_mapping(
    data: Mapping[str, Any],
    base_dir: Path,
    where: str = "settings",
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build and check :class:`Settings` from parsed TOML; paths are resolved against ``base_dir``,
    secret files read, and ``credential:`` header values looked up in ``environ``'s
    ``$CREDENTIALS_DIRECTORY``."""
    environ = {} if environ is None else environ
    allowed = [*_TABLES, _PROCESSORS_TABLE, _WEBHOOKS_TABLE]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SettingsError(
            f"{where}: unknown table [{unknown[0]}]; allowed tables are "
            + ", ".join(f"[{t}]" for t in sorted(allowed))
        )
    built: dict[str, Any] = {}
    for name, cls in _TABLES.items():
        built[name] = build_table(cls, data.get(name, {}), name, where)
    built[_PROCESSORS_TABLE] = _build_processors(data.get(_PROCESSORS_TABLE, {}), where, environ)
    built[_WEBHOOKS_TABLE] = _build_webhooks(data.get(_WEBHOOKS_TABLE, {}), where, environ)
    server = built["server"]
    server = dataclasses.replace(
        server,
        state_dir=_resolve(server.state_dir, base_dir),
        tls_cert=_resolve(server.tls_cert, base_dir),
        tls_key=_resolve(server.tls_key, base_dir),
    )
    if _is_set(server.tls_cert) != _is_set(server.tls_key):
        raise SettingsError(
            f"{where}: server.tls_cert and server.tls_key go together: set both for HTTPS, or neither"
        )
    built["server"] = _with_secret_files(server, base_dir, where)
    repositories = built["repositories"]
    built["repositories"] = dataclasses.replace(
        repositories, dir=_resolve(repositories.dir, base_dir)
    )
    settings = Settings(**built)
    _check_across_tables(settings, where)
    return settings


def _named_tables(tables: Any, kind: str, where: str) -> dict[str, Any]:
    """The ``[kind.NAME]`` tables, each name checked."""
    if not isinstance(tables, dict):
        raise SettingsError(f"{where}: [{kind}] must hold one table per name, [{kind}.NAME]")
    for name in tables:
        if _NAMED_TABLE.fullmatch(name) is None:
            raise SettingsError(
                f"{where}: {kind}.{name} is not a valid name "
                "(letters, digits, '_' or '-', starting with a letter or '_')"
            )
    return tables


def _build_webhooks(
    tables: Any, where: str, environ: Mapping[str, str]
) -> dict[str, WebhookSettings]:
    webhooks = {}
    for name, table in _named_tables(tables, _WEBHOOKS_TABLE, where).items():
        webhook = build_table(WebhookSettings, table, f"webhooks.{name}", where)
        if not webhook.url:
            raise SettingsError(f"{where}: webhooks.{name}.url is required")
        headers = _with_credentials(webhook.headers, f"webhooks.{name}.headers", where, environ)
        webhooks[name] = dataclasses.replace(webhook, headers=headers)
    return webhooks


def _build_processors(
    tables: Any, where: str, environ: Mapping[str, str]
) -> dict[str, ProcessorSettings]:
    processors = {}
    for name, table in _named_tables(tables, _PROCESSORS_TABLE, where).items():
        url = table.get("url") if isinstance(table, dict) else None
        if isinstance(url, str) and url.startswith("/"):
            # Older settings reached the built-ins over this server's own port.
            raise SettingsError(
                f"{where}: processors.{name}.url must be an http:// or https:// URL, not {url!r}; "
                f"for a built-in analysis write builtin = {url.rsplit('/', 1)[-1]!r}"
            )
        processor = build_table(ProcessorSettings, table, f"processors.{name}", where)
        if bool(processor.url) == bool(processor.builtin):
            raise SettingsError(
                f"{where}: processors.{name} needs url (an http:// or https:// URL) or builtin "
                f"({' or '.join(repr(k) for k in BUILTIN_KINDS)}): it has "
                + ("both" if processor.url else "neither")
            )
        headers = _with_credentials(processor.headers, f"processors.{name}.headers", where, environ)
        processors[name] = dataclasses.replace(processor, headers=headers)
    return processors


# [server] keys naming a file that holds another key's value, and what that value must be.
_SECRET_FILES = {
    "secret_key_file": ("secret_key", _FERNET_KEY),
    "api_token_file": ("api_token", "a token"),
}
# A header value "credential:NAME" is the systemd credential $CREDENTIALS_DIRECTORY/NAME.
CREDENTIAL_PREFIX = "credential:"
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"


def _read_secret(path: Path, label: str, where: str) -> str:
    """The one line held by the file at ``path``, stripped of surrounding whitespace."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SettingsError(f"{where}: {label}: {path}: no such file") from None
    except OSError as exc:
        raise SettingsError(f"{where}: {label}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{where}: {label}: {path} is not UTF-8 text") from None
    except ValueError:  # a NUL in the path (found by make fuzz)
        raise SettingsError(f"{where}: {label}: {str(path)!r} is not a file name") from None
    if not secret:
        raise SettingsError(f"{where}: {label}: {path} is empty")
    if "\n" in secret or "\r" in secret:
        raise SettingsError(f"{where}: {label}: {path} must hold one line, not several")
    return secret


def _with_secret_files(server: ServerSettings, base_dir: Path, where: str) -> ServerSettings:
    """``server`` with ``secret_key`` and ``api_token`` read from their ``*_file`` keys."""
    values: dict[str, Any] = {}
    for file_key, (key, allowed) in _SECRET_FILES.items():
        path = getattr(server, file_key)
        if not _is_set(path):
            continue
        if getattr(server, key):
            raise SettingsError(
                f"{where}: server.{key} and server.{file_key} are both set; keep one"
            )
        path = _resolve(path, base_dir)
        secret = _read_secret(path, f"server.{file_key}", where)
        check: Check | None = _fields(ServerSettings)[key].metadata["check"]
        if check is not None and not check[0](secret):
            raise SettingsError(f"{where}: server.{file_key}: {path} must hold {allowed}")
        values[file_key] = path
        values[key] = secret
    return dataclasses.replace(server, **values)


def _with_credentials(
    headers: dict[str, str], label: str, where: str, environ: Mapping[str, str]
) -> dict[str, str]:
    """``headers`` with each ``credential:NAME`` value read from ``$CREDENTIALS_DIRECTORY``."""
    resolved = {}
    for header, value in headers.items():
        if value.startswith(CREDENTIAL_PREFIX):
            name = value.removeprefix(CREDENTIAL_PREFIX)
            directory = environ.get(CREDENTIALS_DIRECTORY, "")
            if not directory:
                raise SettingsError(
                    f"{where}: {label}.{header} reads credential {name!r}, but "
                    f"${CREDENTIALS_DIRECTORY} is not set (systemd LoadCredential=)"
                )
            if name in ("", ".", "..") or "/" in name:
                raise SettingsError(
                    f"{where}: {label}.{header} must name a credential, a file name, not {name!r}"
                )
            value = _read_secret(Path(directory) / name, f"{label}.{header}", where)
        resolved[header] = value
    return resolved


def _check_across_tables(settings: Settings, where: str) -> None:
    camera = settings.camera
    if camera.mjpeg_fps > camera.mjpeg_max_fps:
        raise SettingsError(
            f"{where}: camera.mjpeg_fps must be at most camera.mjpeg_max_fps "
            f"({camera.mjpeg_max_fps:g}), not {camera.mjpeg_fps:g}"
        )
    clips = settings.clips
    if clips.stride > clips.frames:
        raise SettingsError(
            f"{where}: clips.stride must be from 1 to clips.frames ({clips.frames}), or 0, "
            f"not {clips.stride}"
        )
    if settings.repositories.initial and not settings.repositories.source_url:
        raise SettingsError(
            f"{where}: repositories.initial needs repositories.source_url to download from"
        )


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check the settings file at ``path``, with ``environ``'s variables laid over it
    (see the module docstring; none when ``environ`` is None)."""
    where = path.name
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"{path}: settings file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{where}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{where}: not valid TOML: the file is not UTF-8 text") from None
    except RecursionError:
        raise SettingsError(f"{where}: not valid TOML: nested too deeply") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings file: {exc.strerror}") from None
    environ = {} if environ is None else environ
    layered = _with_environment(data, environ)
    if layered != data:
        where = f"{where} + {ENVIRONMENT}"
    return settings_from_mapping(layered, path.resolve().parent, where, environ)


ENVIRONMENT = "environment"
ENV_PREFIX = "FRAMEHUB_"
# FRAMEHUB_ variables that are not settings: framehub-send's API token.
CLIENT_VARIABLES = ("FRAMEHUB_TOKEN",)
# paradrop-imserve's variables, for the keys neither the file nor a FRAMEHUB_ variable sets.
# Its repositories were the folders of $SNAP_DATA, and INITIAL_REPOSITORIES is space-separated.
IMSERVE_VARIABLES = {
    "PORT": ("server", "port"),
    "REPOSITORY_URL": ("repositories", "source_url"),
    "INITIAL_REPOSITORIES": ("repositories", "initial"),
    "SNAP_DATA": ("repositories", "dir"),
}


def _with_environment(data: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Parsed TOML ``data`` with the ``FRAMEHUB_`` variables of ``environ`` over it and
    paradrop-imserve's under it; each variable checked, its errors naming it."""
    layered = copy.deepcopy(dict(data))
    set_by: dict[tuple[str, ...], str] = {}
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in CLIENT_VARIABLES:
            continue
        place = _place_of(variable)
        if place in set_by:
            raise SettingsError(
                f"{ENVIRONMENT}: {set_by[place]} and {variable} both set {'.'.join(place)}"
            )
        set_by[place] = variable
        _put(layered, place, _variable_value(variable, environ[variable], place))
    for variable, place in IMSERVE_VARIABLES.items():
        table = layered.get(place[0], {})
        if variable in environ and isinstance(table, dict) and place[1] not in table:
            _put(layered, place, _variable_value(variable, environ[variable], place))
    return layered


def _table_class(table: str) -> type:
    named = {_PROCESSORS_TABLE: ProcessorSettings, _WEBHOOKS_TABLE: WebhookSettings}
    return _TABLES.get(table) or named[table]


def _place_of(variable: str) -> tuple[str, ...]:
    """The (table, key) or (table, NAME, key) that a ``FRAMEHUB_`` variable sets: parts are
    separated by ``__``, or by the first ``_`` after a table without names."""
    rest = variable.removeprefix(ENV_PREFIX)
    named = (_PROCESSORS_TABLE, _WEBHOOKS_TABLE)
    parts = rest.split("__") if "__" in rest else rest.split("_", 1)
    table = parts[0].lower()
    if table not in _TABLES and table not in named:
        raise SettingsError(
            f"{ENVIRONMENT}: unknown variable {variable}: there is no table [{table}]; allowed "
            f"tables are {', '.join(f'[{t}]' for t in sorted([*_TABLES, *named]))}"
        )
    form = f"{ENV_PREFIX}{table.upper()}__NAME__KEY" if table in named else None
    if form is not None and "__" not in rest:
        raise SettingsError(
            f"{ENVIRONMENT}: {variable} must be spelt {form}, with double underscores"
        )
    if len(parts) != (3 if form else 2) or not all(parts):
        form = form or f"{ENV_PREFIX}{table.upper()}_KEY or {ENV_PREFIX}{table.upper()}__KEY"
        raise SettingsError(f"{ENVIRONMENT}: {variable} must be spelt {form}")
    key = parts[-1].lower()
    known = _fields(_table_class(table))
    _refuse_moved_key(f"{ENVIRONMENT}: {variable}", f"{table}.{key}")
    if key not in known:
        raise SettingsError(
            f"{ENVIRONMENT}: unknown variable {variable}: [{table}] has no key {key}; "
            f"allowed keys are {', '.join(sorted(known))}"
        )
    if form is None:
        return (table, key)
    name = parts[1]
    if _NAMED_TABLE.fullmatch(name) is None:
        raise SettingsError(
            f"{ENVIRONMENT}: {variable}: {name!r} is not a valid name for [{table}.NAME] "
            "(letters, digits, '_' or '-', starting with a letter or '_')"
        )
    return (table, name, key)


def _parse_variable(text: str, expected: Any) -> Any:
    """The value a variable's text stands for: strings and paths as written, booleans as
    true/false/1/0, anything else as a TOML value (lists and tables also as JSON); when it is
    none of these, the text itself, which the key's check then refuses."""
    if expected in (str, Path):
        return text
    if expected is bool and text in ("1", "0"):
        return text == "1"
    try:
        document = tomllib.loads(f"value = {text}")
    except (tomllib.TOMLDecodeError, RecursionError):
        document = {}
    if list(document) == ["value"]:
        return document["value"]
    if typing.get_origin(expected) in (list, dict):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass
    return text


def _variable_value(variable: str, text: str, place: tuple[str, ...]) -> Any:
    """The TOML value ``variable`` gives the key at ``place``, checked by the file's rules."""
    cls, key = _table_class(place[0]), place[-1]
    if variable == "INITIAL_REPOSITORIES":
        value: Any = text.split()
    else:
        value = _parse_variable(text, _field_type(cls, key))
    _checked(cls, key, value, variable, ENVIRONMENT, repr(text))
    return value


def _put(data: dict[str, Any], place: tuple[str, ...], value: Any) -> None:
    """Set ``value`` at ``place`` in ``data``; a file whose table is not a table is refused later."""
    table: Any = data
    for part in place[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            return
    table[place[-1]] = value


def settings_as_toml(settings: Settings, mask: str) -> str:
    """Every table and key of ``settings`` as a TOML document, secrets shown as ``mask``."""
    lines: list[str] = []
    for table in dataclasses.fields(Settings):
        value = getattr(settings, table.name)
        named = value.items() if isinstance(value, dict) else [(None, value)]
        for name, values in named:
            heading = table.name if name is None else f"{table.name}.{_toml_key(name)}"
            lines.extend(["", f"[{heading}]"])
            for key, known in _fields(type(values)).items():
                item = getattr(values, key)
                if known.metadata.get("secret"):
                    item = (
                        {k: mask for k in item}
                        if isinstance(item, dict)
                        else mask
                        if item
                        else item
                    )
                lines.append(f"{_toml_key(key)} = {_toml_value(item)}")
    return "\n".join(lines[1:]) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf and nan are spelt the same in TOML
    if isinstance(value, Path):
        value = "" if str(value) == "." else str(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"unsupported settings type {type(value)!r}")
