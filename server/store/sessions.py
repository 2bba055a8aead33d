"""Live sessions: ids handed out by ``GET /get_session_id``, and each connected client's pipeline.

Data flow for one session: ``process`` frames arrive at :meth:`LiveSession.accept`, are checked
(:func:`server.media.frames.inspect_frame`, header only) and put, in arrival order, on one
bounded ``asyncio.Queue``. One encoder task per session (started on the first frame) groups them
into windows of ``[clips] frames`` (advancing by ``stride``; a partial window is flushed after
``max_wait``), encodes each window with :func:`server.media.clips.encode_clip` on the encoder
executor, posts the clip to the processors and hands ``{"clip": ..., "result": ...}`` to the
session's ``emit`` callback. Analyses overlap with the next encode, but results leave in order.

:class:`SessionRegistry` owns the unused ids (bounded in number, expiring after ``ttl``) and the
live sessions keyed by Socket.IO ``sid``; ending a session invalidates its id at once, flushes the
frames already received as a last clip (``[sessions] final_clip``) and then frees everything.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.errors import FramehubError, FrameRejected
from server.media.frames import FrameInfo, inspect_frame
from server.metrics import Metrics
from server.processors import Payload, ProcessorPool
from server.settings import Settings

if TYPE_CHECKING:
    from server.media.clips import EncodedClip

_LOGGER = logging.getLogger(__name__)

# Analyses of one session allowed to run while the next clip is encoded; more would only queue
# requests at slow APIs while frames pile up.
MAX_ANALYSES_IN_FLIGHT = 2
SESSION_ID_BYTES = 24  # 192 random bits
_END = object()

Emit = Callable[[dict[str, Any]], Awaitable[None]]


class TooManyPendingSessions(FramehubError):
    """The cap on handed-out but unused session ids is reached."""

    status = 503


class SessionRefused(FramehubError):
    """A connection whose session id is unknown, expired or already in use."""

    status = 401


@dataclass(slots=True)
class IncomingFrame:
    """A checked frame waiting for its clip."""

    number: int
    data: bytes
    info: FrameInfo
    received_at: float
    client_ts: float | None


@dataclass(slots=True)
class SessionCounters:
    """What one session has seen so far."""

    received: int = 0
    rejected: int = 0
    dropped: int = 0
    clips: int = 0


class ClipPipeline:
    """Services shared by every session: settings, the encoder executor and the processors."""

    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        processors: ProcessorPool,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.executor = executor
        self.processors = processors
        self.metrics = metrics
        self.clips_encoded = 0

    async def encode(self, frames: list[IncomingFrame]) -> EncodedClip:
        """Encode one clip on the encoder executor (PyAV never runs on the event loop)."""
        # Imported on first use: PyAV costs ~17 MB, which a server used only as a camera saves.
        from server.media.clips import encode_clip

        clips = self.settings.clips
        job = functools.partial(
            encode_clip,
            [frame.data for frame in frames],
            clips.fps,
            "h264" if clips.codec == "h264" else "mjpeg",
            h264_preset=clips.h264_preset,
            h264_crf=clips.h264_crf,
            infos=[frame.info for frame in frames],
        )
        started = time.perf_counter()
        encoded = await asyncio.get_running_loop().run_in_executor(self.executor, job)
        self.clips_encoded += 1
        self.metrics.clips_encoded.labels(encoded.codec).inc()
        self.metrics.clip_encode_seconds.labels(encoded.codec).observe(
            time.perf_counter() - started
        )
        return encoded


class LiveSession:
    """One connected client: its frame queue, encoder task and counters."""

    def __init__(self, session_id: str, sid: str, pipeline: ClipPipeline, emit: Emit) -> None:
        self.session_id = session_id
        self.sid = sid
        self._pipeline = pipeline
        self._settings = pipeline.settings
        self._emit = emit
        # One slot more than the frame budget, kept for the end marker so closing never drops.
        self._queue: asyncio.Queue[Any] = asyncio.Queue(self._settings.frames.queue_size + 1)
        self._encoder: asyncio.Task[None] | None = None
        self._analyses: collections.deque[asyncio.Task[None]] = collections.deque()
        self._next_number = 0
        self._next_clip = 0
        self._dropped_unreported = 0
        self.counters = SessionCounters()
        self.closed = False

    def accept(self, data: Any, client_ts: float | None) -> dict[str, Any]:
        """Check and queue one frame; the answer is the ``process`` acknowledgement.

        The check reads only the image header (tens of microseconds, less than a hand-off to a
        thread would cost), so it runs here, and frames keep their arrival order for free.
        """
        try:
            if not isinstance(data, bytes):
                raise FrameRejected(
                    "a frame must be the image bytes (JPEG, PNG or WebP) or "
                    '{"image": bytes, "ts": number}'
                )
            frames = self._settings.frames
            info = inspect_frame(data, frames.max_bytes, frames.max_pixels)
        except FrameRejected as exc:
            self.counters.rejected += 1
            self._pipeline.metrics.frames_rejected.labels("invalid").inc()
            return {"ok": False, "error": str(exc)}
        return self._enqueue(data, info, client_ts)

    def _enqueue(self, data: bytes, info: FrameInfo, client_ts: float | None) -> dict[str, Any]:
        if self.closed:
            return {"ok": False, "error": "the session is ending; frame not taken"}
        frames = self._settings.frames
        if self._queue.qsize() >= frames.queue_size:
            if frames.when_full == "reject":
                self.counters.rejected += 1
                self._pipeline.metrics.frames_rejected.labels("busy").inc()
                return {
                    "ok": False,
                    "busy": True,
                    "error": f"busy: {frames.queue_size} frames are waiting; frame not taken",
                }
            self._queue.get_nowait()
            self.counters.dropped += 1
            self._pipeline.metrics.frames_dropped.inc()
            self._dropped_unreported += 1
        number = self._next_number
        self._next_number += 1
        self.counters.received += 1
        self._pipeline.metrics.frames_received.inc()
        self._queue.put_nowait(IncomingFrame(number, data, info, time.monotonic(), client_ts))
        if self._encoder is None:
            self._encoder = asyncio.get_running_loop().create_task(
                self._encode_loop(), name=f"encoder-{self.sid}"
            )
        return {"ok": True, "frame": number, "size": [info.width, info.height]}

    async def close(self, flush: bool) -> None:
        """Stop taking frames; with ``flush``, frames already received go out as a last clip."""
        self.closed = True
        if self._encoder is None:
            return
        if flush:
            self._queue.put_nowait(_END)
        else:
            self._encoder.cancel()
        try:
            await self._encoder
        except asyncio.CancelledError:
            if not self._encoder.cancelled():
                raise
        finally:
            for task in self._analyses:
                task.cancel()
            await asyncio.gather(*self._analyses, return_exceptions=True)
            self._analyses.clear()
            self._queue = asyncio.Queue()

    async def _encode_loop(self) -> None:
        clips = self._settings.clips
        loop = asyncio.get_running_loop()
        window: list[IncomingFrame] = []
        # Frames of the window not yet sent in any clip: with overlapping windows (stride <
        # frames) the frames kept after a clip were analysed already and alone make no new clip.
        fresh = 0
        deadline = 0.0
        while True:
            try:
                if fresh:
                    item = await asyncio.wait_for(self._queue.get(), deadline - loop.time())
                else:
                    item = await self._queue.get()
            except TimeoutError:
                await self._clip_ready(window)
                window, fresh = [], 0
                continue
            if item is _END:
                if fresh:
                    await self._clip_ready(window)
                break
            if not fresh:
                deadline = loop.time() + clips.max_wait
            window.append(item)
            fresh += 1
            if len(window) >= clips.frames:
                await self._clip_ready(window)
                window, fresh = window[clips.step :], 0
        await asyncio.gather(*self._analyses, return_exceptions=True)

    async def _clip_ready(self, window: list[IncomingFrame]) -> None:
        clip_id = self._next_clip
        self._next_clip += 1
        dropped, self._dropped_unreported = self._dropped_unreported, 0
        try:
            encoded = await self._pipeline.encode(window)
        except Exception as exc:  # a frame whose header was fine but whose data is not
            _LOGGER.warning("session %s: clip %d could not be encoded: %s", self.sid, clip_id, exc)
            encoded = None
        self.counters.clips += 1
        clip = {
            "id": clip_id,
            "session_id": self.session_id,
            "first_frame": window[0].number,
            "last_frame": window[-1].number,
            "frames": len(window),
            "duration": encoded.duration if encoded else 0.0,
            "codec": encoded.codec if encoded else self._settings.clips.codec,
            "bytes": len(encoded.data) if encoded else 0,
            "dropped": dropped,
        }
        while self._analyses and self._analyses[0].done():
            self._analyses.popleft()
        if len(self._analyses) >= MAX_ANALYSES_IN_FLIGHT:
            await asyncio.wait({self._analyses[0]})
            self._analyses.popleft()
        previous = self._analyses[-1] if self._analyses else None
        self._analyses.append(
            asyncio.get_running_loop().create_task(self._analyse(clip, encoded, previous))
        )

    async def _analyse(
        self, clip: dict[str, Any], encoded: EncodedClip | None, previous: asyncio.Task[None] | None
    ) -> None:
        if encoded is None:
            result: dict[str, Any] = {}
            message: dict[str, Any] = {
                "clip": clip,
                "result": result,
                "error": "the clip could not be encoded: a frame's image data is corrupt",
            }
        else:
            payload = Payload(
                filename=f"clip-{self.session_id[:8]}-{clip['id']}.mp4",
                content_type="video/mp4",
                data=encoded.data,
            )
            result = await self._pipeline.processors.analyse(payload)
            message = {"clip": clip, "result": result}
        if previous is not None:
            await asyncio.wait({previous})  # results leave in clip order
        if self._settings.sessions.emit_result:
            try:
                await self._emit(message)
            except Exception as exc:  # the client may be gone; its result is simply not delivered
                _LOGGER.debug("session %s: result not delivered: %s", self.sid, exc)


class SessionRegistry:
    """Unused session ids and live sessions; one per app, see ``server.app``."""

    def __init__(self, settings: Settings, pipeline: ClipPipeline) -> None:
        self._settings = settings.sessions
        self.pipeline = pipeline
        self._pending: dict[str, float] = {}
        self._live: dict[str, LiveSession] = {}
        self._ids_in_use: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def pending_count(self) -> int:
        """Handed-out ids not yet used (expired ones purged)."""
        self._purge_expired()
        return len(self._pending)

    @property
    def live_count(self) -> int:
        """Connected sessions."""
        return len(self._live)

    def issue_id(self) -> str:
        """A new session id, valid for ``ttl`` seconds until a client connects with it."""
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
        if session_id is None:
            if not self._settings.generate_session_id_on_connect:
                raise SessionRefused(
                    f"no session id: get one from GET /get_session_id and connect with "
                    f"?{self._settings.session_id_name}=ID or auth={{'{self._settings.session_id_name}': ID}}"
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
        task = asyncio.get_running_loop().create_task(
            session.close(flush=self._settings.final_clip), name=f"close-{sid}"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def closing_count(self) -> int:
        """Sessions ended whose last clip is still being made or analysed."""
        return len(self._closing)

    async def close(self, grace: float) -> None:
        """End every session and wait up to ``grace`` seconds for their last clips, then cancel."""
        for sid in list(self._live):
            self.end(sid)
        if not self._closing:
            return
        _, pending = await asyncio.wait(set(self._closing), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
