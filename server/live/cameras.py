"""Live cameras: every live session is a camera that dashboards watch, and that may be recorded.

A connecting session claims a camera name (:meth:`CameraRegistry.claim`): its own, or one made up
(``cam-`` and six letters). One session owns a name at a time; a new session with a name in use
takes it over (``[live] takeover``) and the caller ends the old one. A :class:`Camera` outlives its
sessions: when its session ends it goes offline and stays listed for ``[live] keep`` seconds, and a
session reconnecting under the name continues it.

Data flow: the session's pipeline calls :meth:`Camera.frame_taken` for every frame it queues (on
the event loop, before the ack, so ``latest.jpg`` serves a frame as soon as it is acked) and
:meth:`Camera.result_ready` for every result. A frame becomes :attr:`Camera.latest` (the bytes as
received, shared by every viewer: nothing is copied or re-encoded per viewer), wakes the MJPEG
viewers waiting on :meth:`Camera.changed` and goes to the recorder. A result becomes
:attr:`Camera.latest_result` and goes to the Server-Sent Events subscribers, the Socket.IO room
``camera:NAME`` and the webhooks. Going online and offline is announced the same way.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from server.errors import CameraNotFound, CameraTaken, FramehubError, InvalidCameraName
from server.names import is_valid_repository_name
from server.ops.metrics import Metrics
from server.settings import Settings
from server.web.mjpeg import mjpeg_part

if TYPE_CHECKING:
    from server.live.recording import Recorder
    from server.live.webhooks import Webhooks

_LOGGER = logging.getLogger(__name__)

# Seconds the fps of a camera is measured over: long enough to smooth jitter, short enough to
# follow a camera that slows down.
FPS_WINDOW = 5.0
GENERATED_NAME_LETTERS = 6
# Events a Server-Sent Events subscriber may have waiting; a slower one loses the oldest.
EVENTS_PER_SUBSCRIBER = 32
NAME_RULE = (
    "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(the repository name rule)"
)

Broadcast = Callable[[str, dict[str, Any]], Awaitable[None]]


def check_camera_name(name: Any) -> str:
    """``name`` if it is a valid camera name; InvalidCameraName naming the rule otherwise."""
    if not isinstance(name, str) or not is_valid_repository_name(name):
        raise InvalidCameraName(f"invalid camera name {name!r}: use {NAME_RULE}")
    return name


@dataclass(frozen=True)  # no slots: cached_property keeps the MJPEG part in __dict__
class LatestFrame:
    """The newest frame of a camera, as the client sent it."""

    serial: int  # counts every frame of the camera, across its sessions
    number: int  # the frame's number in its session, as acked
    data: bytes
    content_type: str
    ts: float  # the client's timestamp, else the arrival time (Unix time)

    @cached_property
    def mjpeg_part(self) -> bytes:
        """The frame as one part of an MJPEG stream, made once per frame for every viewer."""
        return mjpeg_part(self.data, self.content_type)


class Camera:
    """One named camera: what it shows now, what it found last, and who watches."""

    def __init__(self, name: str, registry: CameraRegistry) -> None:
        self.name = name
        self._registry = registry
        self.sid: str | None = None  # the Socket.IO sid of the session owning it, while online
        self.since = time.time()
        self.offline_at: float | None = None  # monotonic, for [live] keep
        self.frames = 0
        self.dropped = 0
        self.clips = 0
        self.size: list[int] | None = None
        self.last_frame_at: float | None = None
        self.last_result_at: float | None = None
        self.latest: LatestFrame | None = None
        self.latest_result: dict[str, Any] | None = None
        self.recording: str | None = None
        self._serial = 0
        self._arrivals: collections.deque[float] = collections.deque()
        self._changed = asyncio.Event()
        self._subscribers: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()

    @property
    def online(self) -> bool:
        """Whether a session owns the camera."""
        return self.sid is not None

    @property
    def fps(self) -> float:
        """Frames per second over the last :data:`FPS_WINDOW` seconds."""
        self._forget_arrivals(time.monotonic())
        if len(self._arrivals) < 2:
            return 0.0
        span = self._arrivals[-1] - self._arrivals[0]
        return round((len(self._arrivals) - 1) / span, 2) if span > 0 else 0.0

    def _forget_arrivals(self, now: float) -> None:
        while self._arrivals and self._arrivals[0] < now - FPS_WINDOW:
            self._arrivals.popleft()

    def describe(self) -> dict[str, Any]:
        """What ``GET /live`` tells of the camera."""
        return {
            "online": self.online,
            "since": self.since,
            "frames": self.frames,
            "fps": self.fps,
            "dropped": self.dropped,
            "size": self.size,
            "last_frame_at": self.last_frame_at,
            "clips": self.clips,
            "last_result_at": self.last_result_at,
            "recording": self.recording,
            "viewers": self._registry.viewers(self.name),
        }

    async def changed(self) -> None:
        """Until the next frame, or the camera going offline."""
        await self._changed.wait()

    def wake_viewers(self) -> None:
        # One event per change, shared by every viewer: waking them costs nothing per frame.
        self._changed.set()
        self._changed = asyncio.Event()

    def frame_taken(
        self, number: int, data: bytes, content_type: str, size: list[int], ts: float
    ) -> None:
        """A frame of this camera's session was queued (see the module docstring)."""
        now = time.monotonic()
        self._serial += 1
        self.frames += 1
        self.size = size
        self.last_frame_at = time.time()
        self._arrivals.append(now)
        self._forget_arrivals(now)
        self.latest = LatestFrame(self._serial, number, data, content_type, ts)
        self.wake_viewers()
        if self.recording is not None:
            self._registry.recorder.offer(self.name, data, content_type, self.last_frame_at)

    def frame_dropped(self) -> None:
        """A queued frame of this camera was dropped to make room."""
        self.dropped += 1

    async def result_ready(self, message: dict[str, Any]) -> None:
        """A clip of this camera was analysed: keep it, and tell every watcher."""
        self.clips += 1
        self.last_result_at = time.time()
        self.latest_result = {"camera": self.name, **message}
        await self._registry.announce(self, "result", self.latest_result)

    def subscribe(self) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        """A queue of this camera's events (``result``, ``online``, ``offline``) from now on."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(EVENTS_PER_SUBSCRIBER)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        """Stop filling ``queue``."""
        self._subscribers.discard(queue)

    def deliver(self, event: str, body: dict[str, Any]) -> None:
        """Hand an event to every subscriber; a full one loses its oldest event."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait((event, body))


class CameraRegistry:
    """Every camera, online or recently offline; one per app, see ``server.app``."""

    def __init__(
        self,
        settings: Settings,
        recorder: Recorder,
        webhooks: Webhooks,
        metrics: Metrics,
        broadcast: Broadcast,
    ) -> None:
        self._settings = settings.live
        self.recorder = recorder
        self._webhooks = webhooks
        self._broadcast = broadcast
        self._cameras: dict[str, Camera] = {}
        self._viewers: collections.Counter[str] = collections.Counter()
        self.streams_ended = False
        metrics.cameras_online.set_function(
            lambda: sum(camera.online for camera in self._cameras.values())
        )

    def describe_all(self) -> dict[str, dict[str, Any]]:
        """``GET /live``: every camera by name."""
        self._purge()
        return {name: camera.describe() for name, camera in sorted(self._cameras.items())}

    def get(self, name: str) -> Camera:
        """The camera called ``name``; InvalidCameraName or CameraNotFound."""
        check_camera_name(name)
        self._purge()
        camera = self._cameras.get(name)
        if camera is None:
            raise CameraNotFound(
                f"no live camera {name!r}: none is connected under that name, nor was in the "
                f"last {self._settings.keep:g} s ([live] keep)"
            )
        return camera

    def find(self, name: str) -> Camera | None:
        """The camera called ``name``, if it is known."""
        self._purge()
        return self._cameras.get(name)

    def viewers(self, name: str) -> int:
        """MJPEG viewers of camera ``name`` now (known to the registry or not yet)."""
        return self._viewers[name]

    def add_viewer(self, name: str) -> None:
        """One more viewer of ``name``."""
        self._viewers[name] += 1

    def remove_viewer(self, name: str) -> None:
        """One viewer of ``name`` fewer."""
        self._viewers[name] -= 1
        if self._viewers[name] <= 0:
            del self._viewers[name]

    def owner(self, name: str) -> str | None:
        """The sid of the session owning camera ``name`` now, if any."""
        camera = self._cameras.get(name)
        return camera.sid if camera is not None else None

    def generate_name(self) -> str:
        """A camera name no camera has."""
        letters = string.ascii_lowercase + string.digits
        while True:
            name = "cam-" + "".join(secrets.choice(letters) for _ in range(GENERATED_NAME_LETTERS))
            if name not in self._cameras:
                return name

    async def claim(self, name: str, sid: str) -> tuple[Camera, str | None]:
        """Camera ``name`` for the session ``sid``, and the sid of a session it was taken from
        (which the caller ends); CameraTaken when the name is in use and takeover is off."""
        check_camera_name(name)
        camera = self._cameras.get(name)
        previous = camera.sid if camera is not None else None
        if previous is not None and not self._settings.takeover:
            raise CameraTaken(
                f"camera {name!r} is already streaming; connect under another name "
                "([live] takeover = false)"
            )
        # Checked before the camera changes hands: a recording refused leaves all as it was.
        recording = await self.recorder.open(name)
        if camera is None:
            camera = self._cameras.setdefault(name, Camera(name, self))
        camera.sid = sid
        camera.since = time.time()
        camera.offline_at = None
        camera.recording = recording
        if previous is not None:
            _LOGGER.info("camera %s taken over by %s from %s", name, sid, previous)
        await self.announce(camera, "online", {"camera": name, "online": True})
        return camera, previous

    async def release(self, camera: Camera, sid: str) -> None:
        """Session ``sid`` ended: its camera goes offline unless another session took it."""
        if camera.sid != sid:
            return
        camera.sid = None
        camera.since = time.time()
        camera.offline_at = time.monotonic()
        camera.wake_viewers()  # viewers switch to the placeholder
        await self.announce(camera, "offline", {"camera": camera.name, "online": False})

    async def announce(self, camera: Camera, event: str, body: dict[str, Any]) -> None:
        """Tell an event to the camera's subscribers, its Socket.IO room and the webhooks."""
        camera.deliver(event, body)
        kind = "result" if event == "result" else "camera"
        self._webhooks.publish(kind, {"event": kind, **body})
        if event == "result":
            try:
                await self._broadcast(camera.name, body)
            except Exception as exc:  # a watcher gone mid-emit must not cost the others
                _LOGGER.debug("camera %s: result not broadcast: %s", camera.name, exc)

    async def reconfigure_recording(self) -> None:
        """After new ``[recording]`` settings: record, or stop recording, the cameras online."""
        for camera in list(self._cameras.values()):
            if not camera.online:
                continue
            try:
                camera.recording = await self.recorder.open(camera.name)
            except FramehubError as exc:  # its folder now holds another repository
                _LOGGER.warning("camera %s: not recorded after the reload: %s", camera.name, exc)
                camera.recording = None

    def end_streams(self) -> None:
        """The stop: every MJPEG and event stream ends at its next turn."""
        self.streams_ended = True
        for camera in self._cameras.values():
            camera.wake_viewers()
            camera.deliver("end", {})

    def _purge(self) -> None:
        horizon = time.monotonic() - self._settings.keep
        for name, camera in list(self._cameras.items()):
            if camera.offline_at is not None and camera.offline_at <= horizon:
                del self._cameras[name]
