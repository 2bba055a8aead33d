"""One live session's pipeline: frames in, clips encoded, analysed, results out in order.

Data flow for one session: a ``process`` payload arrives at :meth:`LiveSession.process`, is
checked (:func:`server.media.frames.inspect_frame`, header only, on the loop) and goes, in arrival
order, into the session's window of ``[clips] frames`` frames; once the window is full, the frames
after it wait in a bounded queue (``[frames] queue_size``; when it is full the oldest waiting frame
is dropped, or the new one refused). A full window, or one whose first frame is ``max_wait``
seconds old, wakes the session's encoder task (started on the first frame), which encodes the
window with :func:`server.media.clips.encode_clip` on the encoder executor, hands the clip to the
processors and passes ``{"clip": ..., "result": ...}`` to the session's ``emit`` callback; the
window then moves on by ``stride``. Analyses overlap with the next encode, but results leave in
order. Every session is a live camera (:class:`server.live.cameras.Camera`): each frame taken and
each result is handed to it too, for the dashboards that watch it.

Load is shed before work, so that past capacity the analyses keep their pace instead of the work
on frames that are dropped later slowing everything: a clip is encoded only once it is admitted,
under two bounds, at most :data:`MAX_ANALYSES_IN_FLIGHT` of its session's clips and at most
:attr:`ClipPipeline.max_clips_in_flight` clips of all sessions being encoded or analysed. A session
waiting for admission keeps its window; the frames after it wait in its queue, and when that is
full they are dropped there, having cost only their header check.

A session ends in one of two ways (:meth:`LiveSession.close`): with ``flush``, the frames already
received go out as a last clip and its result is emitted before ``close`` returns; without, all
work is cancelled. :meth:`LiveSession.stop_taking_frames` is the first step of a server stop: acks
say ``"stopping": true`` from then on while the last clip is still being made.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.errors import FrameRejected
from server.live.processors import Payload, ProcessorPool
from server.media.frames import FrameInfo, first_pixel, inspect_frame
from server.ops.metrics import Metrics
from server.ops.tasks import cancel_and_wait
from server.settings import Settings

if TYPE_CHECKING:
    from server.live.cameras import Camera
    from server.media.clips import EncodedClip

_LOGGER = logging.getLogger(__name__)

# Analyses of one session allowed to run while the next clip is encoded; more would only queue
# requests at slow APIs while frames pile up.
MAX_ANALYSES_IN_FLIGHT = 2
FRAME_SHAPE = (
    'a frame must be the image bytes (JPEG, PNG or WebP) or {"image": bytes, "ts": number}, '
    "ts in seconds (a Unix time)"
)

Emit = Callable[[dict[str, Any]], Awaitable[None]]
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(slots=True)
class IncomingFrame:
    """A checked frame waiting for its clip: its arrival time and the client's timestamp, if it
    sent one, both as Unix time in seconds."""

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


class Admission:
    """One clip's place in the pipeline (:meth:`ClipPipeline.admit`), given back once."""

    __slots__ = ("_semaphore",)

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore: asyncio.Semaphore | None = semaphore

    def release(self) -> None:
        """Give the place back; later calls do nothing."""
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None


class ClipPipeline:
    """Services shared by every session: settings, the encoder executor, the processors and the
    admission of clips to them."""

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
        # Enough clips to keep every request slot of the analysis APIs busy, and the built-in
        # analyses' workers (when there are built-ins) with a clip ready behind the one they
        # decode; more would only wait, holding their frames and bytes, while the newest frames
        # are dropped at ingest anyway.
        builtins = any(processor.builtin for processor in settings.processors.values())
        self.max_clips_in_flight = max(
            settings.clips.max_concurrent_requests,
            2 * settings.clips.analysis_workers if builtins else 0,
        )
        self._admission = asyncio.Semaphore(self.max_clips_in_flight)

    async def admit(self) -> Admission:
        """Wait until one more clip may be encoded and analysed."""
        await self._admission.acquire()
        return Admission(self._admission)

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
            timestamps=clip_times(frames) if clips.timing == "real" else None,
        )
        started = time.perf_counter()
        encoded = await asyncio.get_running_loop().run_in_executor(self.executor, job)
        self.metrics.clips_encoded.labels(encoded.codec).inc()
        self.metrics.clip_encode_seconds.labels(encoded.codec).observe(
            time.perf_counter() - started
        )
        return encoded


def clip_times(frames: list[IncomingFrame]) -> list[float]:
    """When the clip's frames were taken: the client's timestamps when every frame has one, else
    the arrival times (one clock per clip, so that the spacing means something)."""
    client = [frame.client_ts for frame in frames if frame.client_ts is not None]
    if len(client) == len(frames):
        return client
    return [frame.received_at for frame in frames]


def parse_payload(payload: Any) -> tuple[bytes, float | None]:
    """The image bytes and client timestamp of a ``process`` payload; FrameRejected if malformed."""
    ts: Any = None
    if isinstance(payload, dict):
        ts = payload.get("ts")
        payload = payload.get("image")
    if not isinstance(payload, bytes):
        raise FrameRejected(FRAME_SHAPE)
    if ts is None:
        return payload, None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise FrameRejected(f"ts must be a finite number of seconds, not {ts!r}: {FRAME_SHAPE}")
    return payload, float(ts)


class LiveSession:
    """One connected client: its window of frames, the queue behind it, encoder task, counters."""

    def __init__(
        self, session_id: str, sid: str, pipeline: ClipPipeline, emit: Emit, camera: Camera
    ) -> None:
        self.session_id = session_id
        self.sid = sid
        self.camera = camera
        self._pipeline = pipeline
        self._settings = pipeline.settings
        self._emit = emit
        # The frames of the next clip (after a clip, those it shares with the next when stride <
        # frames), then the frames waiting behind it.
        self._window: list[IncomingFrame] = []
        self._fresh = 0  # frames of the window not sent in any clip yet
        self._waiting: collections.deque[IncomingFrame] = collections.deque()
        # Set once per clip, not per frame: when the window is full, late or the session ends.
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._late = False
        self._ending = False
        self._encoder: asyncio.Task[None] | None = None
        self._analyses: collections.deque[asyncio.Task[None]] = collections.deque()
        self._next_number = 0
        self._next_clip = 0
        # Frames dropped in the gap before the window, and in the gap after it: frames are dropped
        # only from the queue, which fills only while the window is full, so always after it.
        self._dropped_before = 0
        self._dropped_after = 0
        self._stopping = False
        self.counters = SessionCounters()
        self.closed = False

    async def process(self, payload: Any) -> dict[str, Any]:
        """Take one ``process`` payload; the answer is its acknowledgement.

        The check reads only the image header (microseconds, less than a hand-off to a thread
        would cost), so it runs here, and frames keep their arrival order for free. Only the
        optional first pixel (``[frames] ack_first_pixel``) needs a decode, off the loop, after
        the frame is taken.
        """
        frames = self._settings.frames
        try:
            data, client_ts = parse_payload(payload)
            info = inspect_frame(data, frames.max_bytes, frames.max_pixels)
        except FrameRejected as exc:
            self.counters.rejected += 1
            self._pipeline.metrics.frames_rejected.labels("invalid").inc()
            return {"ok": False, "error": str(exc)}
        ack = self._take(data, info, client_ts)
        if ack["ok"] and frames.ack_first_pixel:
            loop = asyncio.get_running_loop()
            try:
                ack["first_pixel"] = await loop.run_in_executor(None, first_pixel, data, info)
            except FrameRejected as exc:  # a good header over broken pixels: the clip says so too
                ack["first_pixel"] = None
                ack["warning"] = str(exc)
        return ack

    def _take(self, data: bytes, info: FrameInfo, client_ts: float | None) -> dict[str, Any]:
        """Put a checked frame into the window, or the queue behind it; the ack."""
        if self._stopping or self.closed:
            stopping = {"stopping": True} if self._stopping else {}
            return {"ok": False, **stopping, "error": "the session is ending; frame not taken"}
        settings = self._settings
        window_full = len(self._window) >= settings.clips.frames
        if window_full and len(self._waiting) >= settings.frames.queue_size:
            if settings.frames.when_full == "reject":
                self.counters.rejected += 1
                self._pipeline.metrics.frames_rejected.labels("busy").inc()
                return {
                    "ok": False,
                    "busy": True,
                    "error": f"busy: {settings.frames.queue_size} frames are waiting; frame "
                    "not taken",
                }
            self._waiting.popleft()
            self.camera.frame_dropped()
            self.counters.dropped += 1
            self._pipeline.metrics.frames_dropped.inc()
            self._dropped_after += 1
        number = self._next_number
        self._next_number += 1
        self.counters.received += 1
        self._pipeline.metrics.frames_received.inc()
        received_at = time.time()
        frame = IncomingFrame(number, data, info, received_at, client_ts)
        if window_full:
            self._waiting.append(frame)
        else:
            self._add_to_window(frame)
        size = [info.width, info.height]
        self.camera.frame_taken(
            number,
            data,
            CONTENT_TYPES[info.format],
            size,
            received_at if client_ts is None else client_ts,
        )
        if self._encoder is None:
            self._encoder = asyncio.get_running_loop().create_task(
                self._encode_loop(), name=f"encoder-{self.sid}"
            )
        ack: dict[str, Any] = {"ok": True, "frame": number, "size": size}
        if number == 0:  # the first ack tells a client under which name it is watched
            ack["camera"] = self.camera.name
        return ack

    def _add_to_window(self, frame: IncomingFrame) -> None:
        self._window.append(frame)
        self._fresh += 1
        if len(self._window) >= self._settings.clips.frames:
            self._wake.set()
        elif self._fresh == 1:  # a partial window goes out max_wait after its first fresh frame
            self._timer = asyncio.get_running_loop().call_later(
                self._settings.clips.max_wait, self._time_up
            )

    def _time_up(self) -> None:
        self._timer = None
        self._late = True
        self._wake.set()

    def stop_taking_frames(self) -> None:
        """The server is stopping: refuse new frames (acks say ``stopping``), keep the rest."""
        self._stopping = True

    async def close(self, flush: bool) -> None:
        """Stop taking frames; with ``flush``, frames already received go out as a last clip and
        its result is emitted before this returns."""
        self.closed = True
        if self._encoder is None:
            return
        if flush:
            self._ending = True
            self._wake.set()
        else:
            self._encoder.cancel()
        try:
            await self._encoder
        except asyncio.CancelledError:
            # Either the encoder was cancelled above (flush=False), which ends it as wanted, or
            # this close itself is being cancelled, which must go on up to whoever cancelled it.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        finally:
            await cancel_and_wait(self._analyses)
            self._analyses.clear()
            if self._timer is not None:
                self._timer.cancel()
            self._window, self._waiting = [], collections.deque()

    async def _encode_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._fresh and (
                len(self._window) >= self._settings.clips.frames or self._late or self._ending
            ):
                admission = await self._admit()
                await self._clip_ready(*self._next_window(), admission)
            if self._ending:
                break
        await asyncio.gather(*self._analyses, return_exceptions=True)

    async def _admit(self) -> Admission:
        """Wait for this session's turn and a place in the pipeline (see the module docstring)."""
        while self._analyses and self._analyses[0].done():
            self._analyses.popleft()
        if len(self._analyses) >= MAX_ANALYSES_IN_FLIGHT:
            await asyncio.wait({self._analyses[0]})
            self._analyses.popleft()
        return await self._pipeline.admit()

    def _next_window(self) -> tuple[list[IncomingFrame], int]:
        """The frames of the clip to make now and the frames dropped just before them; the
        window moves on and fills from the queue."""
        clips = self._settings.clips
        window = self._window
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A full window moves on by the stride; a partial one (late, or the session ending) is
        # sent whole and the next window starts empty.
        self._window = window[clips.step :] if len(window) >= clips.frames else []
        self._fresh = 0
        self._late = False
        dropped, self._dropped_before, self._dropped_after = (
            self._dropped_before,
            self._dropped_after,
            0,
        )
        while self._waiting and len(self._window) < clips.frames:
            self._add_to_window(self._waiting.popleft())
        return window, dropped

    async def _clip_ready(
        self, window: list[IncomingFrame], dropped: int, admission: Admission
    ) -> None:
        """Encode the admitted ``window`` and start its analysis, which gives the place back."""
        clip_id = self._next_clip
        self._next_clip += 1
        try:
            try:
                encoded = await self._pipeline.encode(window)
            except Exception as exc:  # a frame whose header was fine but whose data is not
                _LOGGER.warning(
                    "session %s: clip %d could not be encoded: %s", self.sid, clip_id, exc
                )
                encoded = None
            times = clip_times(window)
            clip = {
                "id": clip_id,
                "session_id": self.session_id,
                "first_frame": window[0].number,
                "last_frame": window[-1].number,
                "first_ts": times[0],
                "last_ts": times[-1],
                "frames": len(window),
                "duration": encoded.duration if encoded else 0.0,
                "codec": encoded.codec if encoded else self._settings.clips.codec,
                "bytes": len(encoded.data) if encoded else 0,
                "dropped": dropped,
            }
            previous = self._analyses[-1] if self._analyses else None
            analysis = asyncio.get_running_loop().create_task(
                self._analyse(clip, encoded, previous, admission)
            )
        except BaseException:
            admission.release()
            raise
        # Also when the task is cancelled before it first runs, and so never reaches its finally.
        analysis.add_done_callback(lambda _task: admission.release())
        self._analyses.append(analysis)

    async def _analyse(
        self,
        clip: dict[str, Any],
        encoded: EncodedClip | None,
        previous: asyncio.Task[None] | None,
        admission: Admission,
    ) -> None:
        try:
            if encoded is None:
                message: dict[str, Any] = {
                    "clip": clip,
                    "result": {},
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
        finally:
            admission.release()  # the analysis is done; waiting for the previous result is not
        if previous is not None:
            await asyncio.wait({previous})  # results leave in clip order
        await self.camera.result_ready(message)
        if self._settings.sessions.emit_result:
            try:
                await self._emit(message)
            except Exception as exc:  # the client may be gone; its result is simply not delivered
                _LOGGER.debug("session %s: result not delivered: %s", self.sid, exc)
