"""Live sessions: ids handed out by ``GET /get_session_id``, and the sessions of connected clients.

:class:`SessionRegistry` owns the unused ids (bounded in number, expiring after ``[sessions]
ttl``; kept by a :class:`SessionIds` store, in this process or, in a cluster, in Redis so that any
process accepts an id any other issued) and the live sessions (:class:`server.live.pipeline.LiveSession`) keyed by Socket.IO
``sid``. An id is used once: connecting with it moves it from pending to in use. A client that
leaves ends its session (:meth:`SessionRegistry.end`): the id is invalid at once, the frames
already received go out as a last clip in the background (``[sessions] final_clip``), then
everything is freed.

Each session is a camera (:class:`server.live.cameras.CameraRegistry`): under the name the client
asked for, when it got its id (``GET /get_session_id?camera=NAME``) or when it connected, or under
a generated one. A session that takes over a name in use ends the session that had it.

A server stop goes through :meth:`SessionRegistry.finish`: no new sessions, every session stops
taking frames, and each last clip is analysed and its result emitted while its client is still
connected; only then does the caller disconnect the clients.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from typing import NamedTuple, Protocol

from server.errors import ServerStopping, SessionRefused, TooManyPendingSessions
from server.live.cameras import CameraRegistry, check_camera_name
from server.live.pipeline import ClipPipeline, Emit, LiveSession
from server.ops.tasks import wait_then_cancel
from server.settings import SessionSettings, Settings

SESSION_ID_BYTES = 24  # 192 random bits
STOPPING = "the server is stopping; connect again in a moment"


class PendingId(NamedTuple):
    """A handed-out id not yet used: when it expires, the camera asked for with it, who asked."""

    expires: float  # on the clock of the store that issued it
    camera: str | None
    address: str


class SessionIds(Protocol):
    """Where unused session ids are kept: :class:`LocalSessionIds` in this process alone, or
    ``server.cluster.ids.SharedSessionIds`` in Redis, for every process of a cluster."""

    async def issue(self, camera: str | None, address: str) -> str:
        """A new id, valid ``[sessions] ttl`` seconds; TooManyPendingSessions past the caps."""

    async def take(self, session_id: str) -> PendingId | None:
        """Remove the id and tell what it was issued with; None when unknown or expired. At most
        one caller ever gets it."""

    async def restore(self, session_id: str, pending: PendingId) -> None:
        """Put back an id taken by a connect that was then refused, until it would have expired."""

    async def count(self) -> int:
        """Ids handed out and not yet used, expired ones left out."""

    def clear(self) -> None:
        """The stop: forget the ids that only this process could accept."""


def too_many_pending(settings: SessionSettings, where: str, address: str | None = None) -> str:
    """The message of a refused id: ``where`` ("on this server", "in the cluster") is over
    ``max_pending``, or ``address`` is over ``max_pending_per_ip``."""
    then = f"connect with one you have or retry after they expire ({settings.ttl:g} s)"
    if address is None:
        return (
            f"too many unused session ids {where} ([sessions] max_pending = "
            f"{settings.max_pending}); {then}"
        )
    return (
        f"too many unused session ids for {address or 'this client'} {where} ([sessions] "
        f"max_pending_per_ip = {settings.max_pending_per_ip}); {then}"
    )


def new_session_id() -> str:
    """192 random bits, URL-safe."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)


class LocalSessionIds:
    """Unused ids in this process's memory, capped in total and per address."""

    def __init__(self, settings: SessionSettings) -> None:
        self._settings = settings
        self._pending: dict[str, PendingId] = {}
        self._per_address: Counter[str] = Counter()

    async def issue(self, camera: str | None, address: str) -> str:
        self._purge_expired()
        if len(self._pending) >= self._settings.max_pending:
            raise TooManyPendingSessions(too_many_pending(self._settings, "on this server"))
        if self._per_address[address] >= self._settings.max_pending_per_ip:
            raise TooManyPendingSessions(
                too_many_pending(self._settings, "on this server", address)
            )
        session_id = new_session_id()
        self._add(session_id, PendingId(time.monotonic() + self._settings.ttl, camera, address))
        return session_id

    async def take(self, session_id: str) -> PendingId | None:
        self._purge_expired()
        return self._remove(session_id)

    async def restore(self, session_id: str, pending: PendingId) -> None:
        if pending.expires > time.monotonic():
            self._add(session_id, pending)

    async def count(self) -> int:
        self._purge_expired()
        return len(self._pending)

    def clear(self) -> None:
        self._pending.clear()
        self._per_address.clear()

    def _add(self, session_id: str, pending: PendingId) -> None:
        self._pending[session_id] = pending
        self._per_address[pending.address] += 1

    def _remove(self, session_id: str) -> PendingId | None:
        pending = self._pending.pop(session_id, None)
        if pending is not None:
            self._per_address[pending.address] -= 1
            if self._per_address[pending.address] <= 0:
                del self._per_address[pending.address]
        return pending

    def _purge_expired(self) -> None:
        # Ids are issued in time order with one ttl, so the expired ones are at the front (a
        # restored id may sit behind a younger one for a moment; it expires on its own turn).
        now = time.monotonic()
        while self._pending:
            session_id, pending = next(iter(self._pending.items()))
            if pending.expires > now:
                break
            self._remove(session_id)


class SessionRegistry:
    """Unused session ids and live sessions; one per app, see ``server.app``."""

    def __init__(
        self,
        settings: Settings,
        pipeline: ClipPipeline,
        cameras: CameraRegistry,
        ids: SessionIds | None = None,
    ) -> None:
        self._settings = settings.sessions
        self.pipeline = pipeline
        self.cameras = cameras
        self._ids = ids if ids is not None else LocalSessionIds(settings.sessions)
        self._live: dict[str, LiveSession] = {}
        self._ids_in_use: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def pending_count(self) -> int:
        """Handed-out ids not yet used (expired ones purged)."""
        return await self._ids.count()

    @property
    def live_count(self) -> int:
        """Connected sessions."""
        return len(self._live)

    @property
    def closing_count(self) -> int:
        """Sessions ended whose last clip is still being made or analysed."""
        return len(self._closing)

    async def issue_id(self, camera: str | None = None, address: str = "") -> str:
        """A new session id for the client at ``address``, valid for ``ttl`` seconds until a
        client connects with it; the session will be camera ``camera`` unless the connect names
        another. Unused ids are capped in total and per address, so that one address asking for
        ids in a loop cannot lock everyone else out of live ingest."""
        if camera is not None:
            check_camera_name(camera)
        if self._stopping:
            raise ServerStopping(STOPPING)
        return await self._ids.issue(camera, address)

    async def open(
        self, sid: str, session_id: str | None, emit: Emit, camera: str | None = None
    ) -> tuple[LiveSession, str | None]:
        """Start the session of a connecting client as camera ``camera`` (else the name asked
        for with its id, else a new one); a None id makes a new one when allowed. Also the sid of
        the session whose camera was taken over, which the caller disconnects."""
        if self._stopping:
            raise SessionRefused(STOPPING)
        if camera is not None:
            check_camera_name(camera)
        name = self._settings.session_id_name
        if session_id is None:
            if not self._settings.generate_session_id_on_connect:
                raise SessionRefused(
                    f"no session id: get one from GET /get_session_id and connect with "
                    f"?{name}=ID or auth={{'{name}': ID}}"
                )
            session_id = new_session_id()
            pending = None
        else:
            if session_id in self._ids_in_use:
                raise SessionRefused("session id already in use by another connection")
            pending = await self._ids.take(session_id)
            if pending is None:
                raise SessionRefused("unknown or expired session id; get a new one")
            camera = camera or pending.camera
        self._ids_in_use.add(session_id)
        try:
            claimed, taken_from = await self.cameras.claim(
                camera or self.cameras.generate_name(), sid
            )
        except BaseException as exc:
            self._ids_in_use.discard(session_id)
            # A camera refused keeps the id, for a connect under another name (not a cancel).
            if pending is not None and isinstance(exc, Exception):
                await self._ids.restore(session_id, pending)
            raise
        if self._stopping:  # stopped while the camera was claimed: release it again
            self._ids_in_use.discard(session_id)
            await self.cameras.release(claimed, sid)
            raise SessionRefused(STOPPING)
        session = LiveSession(session_id, sid, self.pipeline, emit, claimed)
        self._live[sid] = session
        if taken_from is not None:
            self.end(taken_from)
        return session, taken_from

    def get(self, sid: str) -> LiveSession | None:
        """The live session of a Socket.IO connection."""
        return self._live.get(sid)

    def end(self, sid: str) -> None:
        """End a session: its id is invalid from now; its last clip goes out in the background."""
        session = self._live.pop(sid, None)
        if session is None:
            return
        self._ids_in_use.discard(session.session_id)
        if not session.closed:  # a stop may have closed it already, see finish
            self._close_in_background(session)

    def _close_in_background(self, session: LiveSession) -> None:
        task = asyncio.get_running_loop().create_task(
            self._close(session), name=f"close-{session.sid}"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, session: LiveSession) -> None:
        # Offline at once; the last clip still reaches the camera's watchers.
        await self.cameras.release(session.camera, session.sid)
        await session.close(flush=self._settings.final_clip)

    async def finish(self, deadline: float) -> None:
        """The stop: refuse new sessions and frames, and send every last clip's result to its
        still-connected client, by ``deadline`` (loop time); what is not done by then is cancelled.

        Sessions stay registered meanwhile, so their clients' frames get a ``stopping`` ack.
        """
        self._stopping = True
        self._ids.clear()
        for session in self._live.values():
            session.stop_taking_frames()
            self._close_in_background(session)
        await wait_then_cancel(set(self._closing), deadline)
