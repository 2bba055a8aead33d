"""Live sessions: ids handed out by ``GET /get_session_id``, and the sessions of connected clients.

:class:`SessionRegistry` owns the unused ids (bounded in number, expiring after ``[sessions]
ttl``) and the live sessions (:class:`server.live.pipeline.LiveSession`) keyed by Socket.IO
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

from server.errors import ServerStopping, SessionRefused, TooManyPendingSessions
from server.live.cameras import CameraRegistry, check_camera_name
from server.live.pipeline import ClipPipeline, Emit, LiveSession
from server.ops.tasks import wait_then_cancel
from server.settings import Settings

SESSION_ID_BYTES = 24  # 192 random bits
STOPPING = "the server is stopping; connect again in a moment"


class SessionRegistry:
    """Unused session ids and live sessions; one per app, see ``server.app``."""

    def __init__(self, settings: Settings, pipeline: ClipPipeline, cameras: CameraRegistry) -> None:
        self._settings = settings.sessions
        self.pipeline = pipeline
        self.cameras = cameras
        # Unused ids: when each expires, the camera name asked for with it, and who asked.
        self._pending: dict[str, tuple[float, str | None, str]] = {}
        self._pending_per_address: Counter[str] = Counter()
        self._live: dict[str, LiveSession] = {}
        self._ids_in_use: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def pending_count(self) -> int:
        """Handed-out ids not yet used (expired ones purged)."""
        self._purge_expired()
        return len(self._pending)

    @property
    def live_count(self) -> int:
        """Connected sessions."""
        return len(self._live)

    @property
    def closing_count(self) -> int:
        """Sessions ended whose last clip is still being made or analysed."""
        return len(self._closing)

    def issue_id(self, camera: str | None = None, address: str = "") -> str:
        """A new session id for the client at ``address``, valid for ``ttl`` seconds until a
        client connects with it; the session will be camera ``camera`` unless the connect names
        another. Unused ids are capped in total and per address, so that one address asking for
        ids in a loop cannot lock everyone else out of live ingest."""
        if camera is not None:
            check_camera_name(camera)
        if self._stopping:
            raise ServerStopping(STOPPING)
        self._purge_expired()
        if len(self._pending) >= self._settings.max_pending:
            raise TooManyPendingSessions(
                f"too many unused session ids on this server ([sessions] max_pending = "
                f"{self._settings.max_pending}); connect with one you have or retry after they "
                f"expire ({self._settings.ttl:g} s)"
            )
        if self._pending_per_address[address] >= self._settings.max_pending_per_ip:
            raise TooManyPendingSessions(
                f"too many unused session ids for {address or 'this client'} ([sessions] "
                f"max_pending_per_ip = {self._settings.max_pending_per_ip}); connect with one you "
                f"have or retry after they expire ({self._settings.ttl:g} s)"
            )
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        self._pending[session_id] = (time.monotonic() + self._settings.ttl, camera, address)
        self._pending_per_address[address] += 1
        return session_id

    def _forget_pending(self, session_id: str) -> None:
        entry = self._pending.pop(session_id, None)
        if entry is not None:
            address = entry[2]
            self._pending_per_address[address] -= 1
            if self._pending_per_address[address] <= 0:
                del self._pending_per_address[address]

    def _purge_expired(self) -> None:
        # Ids are issued in time order with one ttl, so the expired ones are at the front.
        now = time.monotonic()
        while self._pending:
            session_id, (expires, _camera, _address) = next(iter(self._pending.items()))
            if expires > now:
                break
            self._forget_pending(session_id)

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
            session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        else:
            self._purge_expired()
            if session_id in self._ids_in_use:
                raise SessionRefused("session id already in use by another connection")
            pending = self._pending.get(session_id)
            if pending is None:
                raise SessionRefused("unknown or expired session id; get a new one")
            camera = camera or pending[1]
        # The id is taken only now, after the checks that may refuse (a camera refused keeps it).
        self._ids_in_use.add(session_id)
        try:
            claimed, taken_from = await self.cameras.claim(
                camera or self.cameras.generate_name(), sid
            )
        except BaseException:
            self._ids_in_use.discard(session_id)
            raise
        self._forget_pending(session_id)
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
        self._pending.clear()
        self._pending_per_address.clear()
        for session in self._live.values():
            session.stop_taking_frames()
            self._close_in_background(session)
        await wait_then_cancel(set(self._closing), deadline)
