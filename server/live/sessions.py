"""Live sessions: ids handed out by ``GET /get_session_id``, and the sessions of connected clients.

:class:`SessionRegistry` owns the unused ids (bounded in number, expiring after ``[sessions]
ttl``) and the live sessions (:class:`server.live.pipeline.LiveSession`) keyed by Socket.IO
``sid``. An id is used once: connecting with it moves it from pending to in use. A client that
leaves ends its session (:meth:`SessionRegistry.end`): the id is invalid at once, the frames
already received go out as a last clip in the background (``[sessions] final_clip``), then
everything is freed.

A server stop goes through :meth:`SessionRegistry.finish`: no new sessions, every session stops
taking frames, and each last clip is analysed and its result emitted while its client is still
connected; only then does the caller disconnect the clients.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from server.errors import ServerStopping, SessionRefused, TooManyPendingSessions
from server.live.pipeline import ClipPipeline, Emit, LiveSession
from server.settings import Settings

SESSION_ID_BYTES = 24  # 192 random bits
STOPPING = "the server is stopping; connect again in a moment"


class SessionRegistry:
    """Unused session ids and live sessions; one per app, see ``server.app``."""

    def __init__(self, settings: Settings, pipeline: ClipPipeline) -> None:
        self._settings = settings.sessions
        self.pipeline = pipeline
        self._pending: dict[str, float] = {}
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

    def issue_id(self) -> str:
        """A new session id, valid for ``ttl`` seconds until a client connects with it."""
        if self._stopping:
            raise ServerStopping(STOPPING)
        self._purge_expired()
        if len(self._pending) >= self._settings.max_pending:
            raise TooManyPendingSessions(
                f"too many unused session ids ({self._settings.max_pending}); connect with one "
                f"you have or retry after they expire ({self._settings.ttl:g} s)"
            )
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        self._pending[session_id] = time.monotonic() + self._settings.ttl
        return session_id

    def _purge_expired(self) -> None:
        # Ids are issued in time order with one ttl, so the expired ones are at the front.
        now = time.monotonic()
        while self._pending:
            session_id, expires = next(iter(self._pending.items()))
            if expires > now:
                break
            del self._pending[session_id]

    def open(self, sid: str, session_id: str | None, emit: Emit) -> LiveSession:
        """Start the session of a connecting client; a None id makes a new one when allowed."""
        if self._stopping:
            raise SessionRefused(STOPPING)
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
            if self._pending.pop(session_id, None) is None:
                raise SessionRefused("unknown or expired session id; get a new one")
        session = LiveSession(session_id, sid, self.pipeline, emit)
        self._live[sid] = session
        self._ids_in_use.add(session_id)
        return session

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
            session.close(flush=self._settings.final_clip), name=f"close-{session.sid}"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def finish(self, deadline: float) -> None:
        """The stop: refuse new sessions and frames, and send every last clip's result to its
        still-connected client, by ``deadline`` (loop time); what is not done by then is cancelled.

        Sessions stay registered meanwhile, so their clients' frames get a ``stopping`` ack.
        """
        self._stopping = True
        self._pending.clear()
        for session in self._live.values():
            session.stop_taking_frames()
            self._close_in_background(session)
        if not self._closing:
            return
        timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
        _, late = await asyncio.wait(set(self._closing), timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
