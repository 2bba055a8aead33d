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
viewers waiting on :meth:`CameraRegistry.changed` and goes to the recorder. A result becomes
:attr:`Camera.latest_result` and goes to the Server-Sent Events subscribers, the Socket.IO room
``camera:NAME`` and the webhooks. Going online and offline is announced the same way.

In a cluster (``[cluster] redis_url``), the registry also works through
:class:`server.cluster.cameras.SharedCameras`: claims are made in Redis too (a takeover ends the
old session on whichever process it runs), every frame, event and result of a camera here is
written there, and the other processes' cameras are answered for: ``GET /live`` merges every
process's list, ``latest.jpg`` and ``result`` read Redis, and the viewers and subscribers of a
camera of another process get a :class:`RemoteCamera` fed by Redis pub/sub while they watch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from server.errors import (
    CameraNotFound,
    CameraTaken,
    ClusterUnavailable,
    FramehubError,
    InvalidCameraName,
)
from server.names import is_valid_repository_name
from server.ops.metrics import Metrics
from server.settings import Settings
from server.web.mjpeg import mjpeg_part

if TYPE_CHECKING:
    from server.cluster.cameras import SharedCameras
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


class CameraFeed:
    """What the viewers and subscribers of a camera get: its newest frame (woken by
    :meth:`CameraRegistry.changed`), its newest result and its events. A :class:`Camera` of this
    process, or in a cluster a :class:`RemoteCamera` mirroring a camera of another process."""

    def __init__(self, name: str, registry: CameraRegistry) -> None:
        self.name = name
        self._registry = registry
        self.latest: LatestFrame | None = None
        self.latest_result: dict[str, Any] | None = None
        self._subscribers: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()

    @property
    def online(self) -> bool:
        """Whether a session streams into the camera."""
        raise NotImplementedError

    def wake_viewers(self) -> None:
        """Wake every MJPEG viewer of the camera's name (a new frame, or online or offline)."""
        self._registry.signal(self.name)

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


class RemoteCamera(CameraFeed):
    """A camera of another process of the cluster, mirrored while this one has viewers or
    subscribers of it: its frames and events arrive through Redis (``server.cluster.cameras``)."""

    def __init__(self, name: str, registry: CameraRegistry) -> None:
        super().__init__(name, registry)
        self.node: str | None = None  # the node streaming it
        self.users = 0  # viewers and subscribers on this process

    @property
    def online(self) -> bool:
        return self.node is not None

    def frame_arrived(self, frame: LatestFrame, node: str) -> None:
        """A frame written by ``node`` (this process's own are ignored: it serves them itself)."""
        if node == self._registry.node:
            return
        self.node, self.latest = node, frame
        self.wake_viewers()

    def event_arrived(self, node: str, event: str, body: dict[str, Any]) -> None:
        """An event of the camera from ``node``; going offline counts only from its owner."""
        if event == "online":
            self.node = node
            self.wake_viewers()
        elif event == "offline":
            if node != self.node:
                return
            self.node, self.latest = None, None
            self.wake_viewers()
        elif event == "result":
            self.latest_result = body
        self.deliver(event, body)


class Camera(CameraFeed):
    """One named camera of this process: what it shows now, what it found last, and who
    watches."""

    def __init__(self, name: str, registry: CameraRegistry) -> None:
        super().__init__(name, registry)
        self.sid: str | None = None  # the Socket.IO sid of the session owning it, while online
        self.since = time.time()
        self.offline_at: float | None = None  # monotonic, for [live] keep
        self.frames = 0
        self.dropped = 0
        self.clips = 0
        self.size: list[int] | None = None
        self.last_frame_at: float | None = None
        self.last_result_at: float | None = None
        self.recording: str | None = None
        self._serial = 0
        self._arrivals: collections.deque[float] = collections.deque()

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
        if self._registry.shared is not None:
            self._registry.shared.frame(self.name, self.latest)
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


class CameraRegistry:
    """Every camera, online or recently offline; one per app, see ``server.app``. In a cluster
    (``shared``) it also answers for the cameras of the other processes."""

    def __init__(
        self,
        settings: Settings,
        recorder: Recorder,
        webhooks: Webhooks,
        metrics: Metrics,
        broadcast: Broadcast,
        shared: SharedCameras | None = None,
    ) -> None:
        self._settings = settings.live
        self.recorder = recorder
        self._webhooks = webhooks
        self._broadcast = broadcast
        self.shared = shared
        self.node = settings.node
        self._cameras: dict[str, Camera] = {}
        self._mirrors: dict[str, RemoteCamera] = {}
        self._viewers: collections.Counter[str] = collections.Counter()
        # One event per camera name with viewers waiting, set and dropped at each change: waking
        # every viewer of a frame costs one set(), whichever process streams the camera.
        self._signals: dict[str, asyncio.Event] = {}
        self.streams_ended = False
        metrics.cameras_online.set_function(
            lambda: sum(camera.online for camera in self._cameras.values())
        )

    def describe_local(self) -> dict[str, dict[str, Any]]:
        """The cameras of this process, by name, as ``GET /live`` tells them."""
        self._purge()
        return {name: camera.describe() for name, camera in sorted(self._cameras.items())}

    async def describe_all(self) -> dict[str, dict[str, Any]]:
        """``GET /live``: every camera by name; in a cluster, those of every process alive, each
        with its ``node`` (a camera online somewhere wins over its offline entries elsewhere)."""
        cameras = self.describe_local()
        if self.shared is None:
            return cameras
        try:
            others = await self.shared.describe_others()
        except ClusterUnavailable:
            others = {}  # this process's own, until Redis answers again
        merged: dict[str, dict[str, Any]] = {}
        # This process first: of two entries online, its own wins.
        for node, entries in {self.node: cameras, **others}.items():
            for name, entry in entries.items():
                known = merged.get(name)
                if known is None or (entry["online"] and not known["online"]):
                    merged[name] = {**entry, "node": node}
        return dict(sorted(merged.items()))

    def _not_found(self, name: str) -> CameraNotFound:
        return CameraNotFound(
            f"no live camera {name!r}: none is connected under that name, nor was in the "
            f"last {self._settings.keep:g} s ([live] keep)"
        )

    def get(self, name: str) -> Camera:
        """The camera of this process called ``name``; InvalidCameraName or CameraNotFound."""
        check_camera_name(name)
        self._purge()
        camera = self._cameras.get(name)
        if camera is None:
            raise self._not_found(name)
        return camera

    def find(self, name: str) -> Camera | None:
        """The camera of this process called ``name``, if it is known."""
        self._purge()
        return self._cameras.get(name)

    def feed(self, name: str) -> CameraFeed | None:
        """What a viewer of ``name`` shows: the camera online here, else its mirror online
        elsewhere, else whichever of them is known."""
        camera = self.find(name)
        if camera is not None and camera.online:
            return camera
        mirror = self._mirrors.get(name)
        if mirror is not None and mirror.online:
            return mirror
        return camera or mirror

    async def changed(self, name: str) -> None:
        """Until the camera ``name`` has a new frame, goes online or offline, or streams end."""
        signal = self._signals.get(name)
        if signal is None:
            signal = self._signals[name] = asyncio.Event()
        await signal.wait()

    def signal(self, name: str) -> None:
        """Wake whoever waits in :meth:`changed` for ``name``."""
        signal = self._signals.pop(name, None)
        if signal is not None:
            signal.set()

    async def newest_frame(self, name: str) -> LatestFrame | None:
        """The newest frame of camera ``name`` while it is online, on any process."""
        camera = self.find(name)
        if camera is not None and camera.online:
            return camera.latest
        if self.shared is None:
            return None
        try:
            return await self.shared.newest_frame(name)
        except ClusterUnavailable:
            return None  # shown as offline, as the placeholder says

    async def newest_result(self, name: str) -> dict[str, Any]:
        """The newest result of camera ``name``, on any process; CameraNotFound if none."""
        check_camera_name(name)
        camera = self.find(name)
        if camera is not None and camera.latest_result is not None:
            return camera.latest_result
        known = camera is not None
        if self.shared is not None:
            result = await self.shared.newest_result(name)
            if result is not None:
                return result
            known = known or await self.shared.owner_node(name) is not None
        if not known:
            raise self._not_found(name)
        raise CameraNotFound(f"camera {name!r} has no result yet")

    async def follow(self, name: str) -> CameraFeed:
        """The camera whose events a subscriber of ``name`` gets: this process's, else in a
        cluster the mirror of another's; CameraNotFound if no process knows it. Give it back
        with :meth:`unfollow`."""
        check_camera_name(name)
        camera = self.find(name)
        if camera is not None and (camera.online or self.shared is None):
            return camera
        if self.shared is not None and await self.shared.owner_node(name) is not None:
            return await self._mirror(name)
        if camera is None:
            raise self._not_found(name)
        return camera

    async def unfollow(self, feed: CameraFeed) -> None:
        """A subscriber of :meth:`follow` left."""
        if isinstance(feed, RemoteCamera):
            await self._unmirror(feed.name)

    def viewers(self, name: str) -> int:
        """MJPEG viewers of camera ``name`` on this process now (known to the registry or not)."""
        return self._viewers[name]

    async def add_viewer(self, name: str) -> None:
        """One more viewer of ``name``; in a cluster its frames from other processes flow here
        while it has viewers."""
        self._viewers[name] += 1
        if self.shared is not None:
            await self._mirror(name)

    async def remove_viewer(self, name: str) -> None:
        """One viewer of ``name`` fewer."""
        self._viewers[name] -= 1
        if self._viewers[name] <= 0:
            del self._viewers[name]
        if self.shared is not None:
            await self._unmirror(name)

    async def _mirror(self, name: str) -> RemoteCamera:
        assert self.shared is not None
        mirror = self._mirrors.get(name)
        if mirror is None:
            mirror = self._mirrors[name] = RemoteCamera(name, self)
            try:
                await self.shared.watch_frames(name, mirror.frame_arrived)
                node = await self.shared.owner_node(name)
                if node is not None and node != self.node:
                    mirror.node = node
                    mirror.latest = await self.shared.newest_frame(name)
            except ClusterUnavailable:
                pass  # mirrored from the next frame or event once Redis answers
        mirror.users += 1
        return mirror

    async def _unmirror(self, name: str) -> None:
        mirror = self._mirrors.get(name)
        if mirror is None:
            return
        mirror.users -= 1
        if mirror.users <= 0:
            del self._mirrors[name]
            assert self.shared is not None
            await self.shared.unwatch_frames(name)

    def remote_event(self, name: str, node: str, event: str, body: dict[str, Any]) -> None:
        """An event of a camera of another process (from ``server.cluster.cameras``)."""
        mirror = self._mirrors.get(name)
        if mirror is not None:
            mirror.event_arrived(node, event, body)

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
        """Camera ``name`` for the session ``sid``, and the sid of a session of this process it
        was taken from (which the caller ends); CameraTaken when the name is in use and takeover
        is off. In a cluster a session of another process loses it too, told through Redis."""
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
        if self.shared is not None:
            try:
                await self.shared.claim(name, sid)
            except ClusterUnavailable:
                _LOGGER.warning("camera %s: claimed on this process only (Redis is down)", name)
        if camera is None:
            camera = self._cameras.setdefault(name, Camera(name, self))
        camera.sid = sid
        camera.since = time.time()
        camera.offline_at = None
        camera.recording = recording
        if previous is not None:
            _LOGGER.info("camera %s taken over by %s from %s", name, sid, previous)
        camera.wake_viewers()  # viewers waiting for a camera not known yet
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
        if self.shared is not None:
            with contextlib.suppress(ClusterUnavailable):  # its owner key expires on its own
                await self.shared.release(camera.name, sid)
        await self.announce(camera, "offline", {"camera": camera.name, "online": False})

    async def announce(self, camera: Camera, event: str, body: dict[str, Any]) -> None:
        """Tell an event to the camera's subscribers, its Socket.IO room, the webhooks and, in a
        cluster, the other processes."""
        camera.deliver(event, body)
        kind = "result" if event == "result" else "camera"
        self._webhooks.publish(kind, {"event": kind, **body})
        if self.shared is not None:
            with contextlib.suppress(ClusterUnavailable):  # counted and logged by the link
                await self.shared.announce(camera.name, event, body)
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
        for name in list(self._signals):
            self.signal(name)
        for feed in [*self._cameras.values(), *self._mirrors.values()]:
            feed.deliver("end", {})

    def _purge(self) -> None:
        horizon = time.monotonic() - self._settings.keep
        for name, camera in list(self._cameras.items()):
            if camera.offline_at is not None and camera.offline_at <= horizon:
                del self._cameras[name]
