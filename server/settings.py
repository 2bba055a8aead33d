"""Settings: one TOML file read once at start into frozen dataclasses.

``load_settings(path)`` reads the file with :mod:`tomllib`, walks every table against the dataclass
that describes it and returns a :class:`Settings`. Every mistake an operator can make (an unknown
table or key, a wrong type, a value out of range) raises :class:`SettingsError` with one line that
names the key and says what is allowed; ``main.py`` prints that line and exits with status 2. Missing
keys take the defaults declared here, which the README documents one by one.

Relative paths are taken relative to the folder of the settings file, so a service started from any
working directory finds the same state.
"""

from __future__ import annotations

import dataclasses
import re
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


def _setting(default: Any, check: Check | None = None) -> Any:
    """A dataclass field with a default and an optional (predicate, allowed-values) check."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


def _positive(value: float) -> bool:
    return value > 0


def _non_negative(value: float) -> bool:
    return value >= 0


def _port(value: int) -> bool:
    return 0 <= value <= 65535


def _http_url_or_empty(value: str) -> bool:
    if not value:
        return True
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _http_url(value: str) -> bool:
    return bool(value) and _http_url_or_empty(value)


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


def _origins(value: list[str]) -> bool:
    return all(origin == "*" or _http_url(origin) for origin in value)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: where to listen and where to keep state."""

    host: str = _setting("0.0.0.0", (bool, "a host name or address"))
    port: int = _setting(7466, (_port, "a port number from 0 to 65535"))
    state_dir: Path = _setting(Path("state"))
    secret_key: str = _setting(
        "", (_fernet_key_or_empty, "a Fernet key (32 url-safe base64-encoded bytes) or empty")
    )
    api_token: str = _setting("")
    cors_allowed_origins: list[str] = _setting(
        [], (_origins, 'a list of origins such as "https://example.com", or ["*"]')
    )
    shutdown_timeout: float = _setting(10.0, (_positive, "a number of seconds above 0"))
    log_level: str = _setting(
        "INFO",
        (
            lambda v: v in ("DEBUG", "INFO", "WARNING", "ERROR"),
            '"DEBUG", "INFO", "WARNING" or "ERROR"',
        ),
    )


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


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """``[sessions]``: live Socket.IO sessions."""

    ttl: float = _setting(300.0, (_positive, "a number of seconds above 0"))
    max_pending: int = _setting(1000, (_positive, "a whole number above 0"))
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
    analysis_threads: int = _setting(1, (_positive, "a whole number above 0"))
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
    headers: dict[str, str] = _setting({})
    max_response_bytes: int = _setting(1 << 20, (_positive, "a number of bytes above 0"))


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """``[live]``: live sessions as cameras that dashboards watch."""

    takeover: bool = _setting(True)
    keep: float = _setting(300.0, (_non_negative, "a number of seconds, 0 or more"))
    max_viewers: int = _setting(20, (_positive, "a whole number above 0"))
    public: bool = _setting(True)


def _camera_patterns(value: list[str]) -> bool:
    return all(name == "*" or is_valid_repository_name(name) for name in value)


def _repository_template(value: str) -> bool:
    try:
        name = value.format(camera="cam")
    except (KeyError, IndexError, ValueError):
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
    headers: dict[str, str] = _setting({})
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
    processors: dict[str, ProcessorSettings] = field(default_factory=dict)
    webhooks: dict[str, WebhookSettings] = field(default_factory=dict)

    @property
    def repositories_dir(self) -> Path:
        """The folder holding the repositories: ``[repositories] dir`` or ``state_dir/repositories``."""
        if str(self.repositories.dir) in ("", "."):
            return self.server.state_dir / "repositories"
        return self.repositories.dir


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


def _coerce(value: Any, expected: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotated type and convert it (ints to floats, strings to paths)."""
    wrong = SettingsError(f"{where}: {key} must be {_type_name(expected)}, not {value!r}")
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise wrong
        return [_coerce(item, item_type, key, where) for item in value]
    if origin is dict:
        _, item_type = typing.get_args(expected)
        if not isinstance(value, dict):
            raise wrong
        return {str(k): _coerce(v, item_type, f"{key}.{k}", where) for k, v in value.items()}
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


def build_table(cls: type, table: Any, name: str, where: str) -> Any:
    """Build dataclass ``cls`` from TOML ``table``, naming ``name.key`` in every error."""
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise SettingsError(
            f"{where}: unknown key {name}.{unknown[0]}; allowed keys are {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        expected = hints[key]
        if isinstance(expected, types.UnionType):
            expected = next(t for t in typing.get_args(expected) if t is not type(None))
        check: Check | None = known[key].metadata.get("check")
        try:
            converted = _coerce(value, expected, f"{name}.{key}", where)
        except SettingsError:
            if check is None or check[0] is bool:
                raise
            # The check's wording ("a list of repository names") says more than the type's.
            raise SettingsError(
                f"{where}: {name}.{key} must be {check[1]}, not {value!r}"
            ) from None
        if check is not None and not check[0](converted):
            raise SettingsError(f"{where}: {name}.{key} must be {check[1]}, not {value!r}")
        values[key] = converted
    return cls(**values)


def _resolve(path: Path, base: Path) -> Path:
    if str(path) in ("", "."):
        return path
    return path if path.is_absolute() else base / path


def settings_from_mapping(
    data: Mapping[str, Any], base_dir: Path, where: str = "settings"
) -> Settings:
    """Build and check :class:`Settings` from parsed TOML; paths are resolved against ``base_dir``."""
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
    built[_PROCESSORS_TABLE] = _build_processors(data.get(_PROCESSORS_TABLE, {}), where)
    built[_WEBHOOKS_TABLE] = _build_webhooks(data.get(_WEBHOOKS_TABLE, {}), where)
    server = built["server"]
    built["server"] = dataclasses.replace(server, state_dir=_resolve(server.state_dir, base_dir))
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


def _build_webhooks(tables: Any, where: str) -> dict[str, WebhookSettings]:
    webhooks = {}
    for name, table in _named_tables(tables, _WEBHOOKS_TABLE, where).items():
        webhook = build_table(WebhookSettings, table, f"webhooks.{name}", where)
        if not webhook.url:
            raise SettingsError(f"{where}: webhooks.{name}.url is required")
        webhooks[name] = webhook
    return webhooks


def _build_processors(tables: Any, where: str) -> dict[str, ProcessorSettings]:
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
        processors[name] = processor
    return processors


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


def load_settings(path: Path) -> Settings:
    """Read and check the settings file at ``path``."""
    where = path.name
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"{path}: settings file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{where}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings file: {exc.strerror}") from None
    return settings_from_mapping(data, path.resolve().parent, where)
