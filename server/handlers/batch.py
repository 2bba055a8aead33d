"""Batch analysis of whole video files: ``POST /batch`` and ``GET /batch/{ID}``.

``POST /batch`` takes the video as the multipart field ``file`` or as a raw ``video/*`` body. The
token, the ``processes`` asked for, the body's type and its declared length are checked before a
byte of the body is read (a client that sends ``Expect: 100-continue``, as curl does for large
files, is refused before it sends anything). The body then streams to a temp file
(:func:`server.batch.uploads.receive_upload`), is probed in a child process
(:func:`server.media.probe.probe_video`) and becomes a job of the app's
:class:`~server.batch.queue.JobQueue`. By default the answer waits for the job's result; with
``?wait=false`` it is ``202 {"job": ID, "status": "queued"}`` at once, to be followed with
``GET /batch/{ID}``.
"""

from __future__ import annotations

import mimetypes
import re

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http import HttpVersion11

from server.batch.jobs import Job
from server.batch.uploads import Upload, receive_upload, upload_too_large
from server.errors import (
    BatchUnavailable,
    FramehubError,
    InvalidParameter,
    MalformedBody,
    MissingUpload,
    UnsupportedUpload,
)
from server.keys import job_queue_key, metrics_key, processor_pool_key, settings_key
from server.media.probe import probe_video
from server.web.auth import require_token_for_route
from server.web.bodies import idle_limited, multipart_parts

FILE_FIELD = "file"
# Multipart framing around the file (boundaries, part headers) allowed on top of max_bytes.
MULTIPART_OVERHEAD = 64 << 10
DEFAULT_NAME = "video"
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_LENGTH = 100
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
HOW_TO_SEND = (
    f"send the video as multipart/form-data in the field {FILE_FIELD!r}, "
    "or as the raw body with a video/* Content-Type such as video/mp4"
)


async def submit_batch(request: web.Request) -> web.Response:
    """``POST /batch[?processes=a,b][&wait=false]``: analyse one uploaded video."""
    job, wait = await _accept(request)
    if not wait:
        return web.json_response(
            {"job": job.id, "status": job.status},
            status=202,
            headers={hdrs.LOCATION: f"/batch/{job.id}"},
        )
    await job.finished.wait()
    if job.status != "done":
        raise BatchUnavailable(f"batch job {job.id} failed: {job.error}")
    return web.json_response({"job": job.id, "result": job.result, "video": job.video})


async def _accept(request: web.Request) -> tuple[Job, bool]:
    """The job of the request's video, once received, checked and queued (counted by outcome),
    and whether to wait for it."""
    metrics = request.app[metrics_key]
    try:
        processes, wait = _check_request(request)
        request.app[processor_pool_key].warm_up()  # while the video comes in
        upload = await _receive(request)
        metrics.batch_upload_bytes.inc(upload.size)
        try:
            video = await probe_video(upload.path, request.app[settings_key].batch)
            job = await request.app[job_queue_key].submit(upload, video, processes)
        except BaseException:
            await upload.discard()
            raise
    except FramehubError as exc:
        metrics.batch_uploads.labels(str(exc.status)).inc()
        raise
    metrics.batch_uploads.labels("accepted").inc()
    return job, wait


async def describe_job(request: web.Request) -> web.Response:
    """``GET /batch/{ID}``: status, queue position, and the result once done."""
    queue = request.app[job_queue_key]
    job = await queue.get(request.match_info["job"])
    # The queue position is known only to the process running the job.
    position = queue.position(job) if queue.local(job.id) is job else None
    return web.json_response(job.describe(position), headers={"Cache-Control": "no-store"})


async def expect_continue(request: web.Request) -> None:
    """Say ``100 Continue`` only to an upload that passes the checks of :func:`_check_request`.

    Otherwise the handler raises the same error and the client, still waiting, never sends the body.
    """
    try:
        _check_request(request)
    except FramehubError:
        return None
    if request.version != HttpVersion11 or request.headers[hdrs.EXPECT].lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers[hdrs.EXPECT]}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's own handler: the answer's size starts after it


def _check_request(request: web.Request) -> tuple[list[str], bool]:
    """The processors asked for and whether to wait; raises for anything refused before the body."""
    # Also here, not only in the token middleware: aiohttp runs the Expect handler before it.
    require_token_for_route(request)
    processes = _processes(request)
    wait = _flag(request, "wait", default=True)
    max_bytes = request.app[settings_key].batch.max_bytes
    allowed = max_bytes
    content_type = request.content_type
    if content_type == "multipart/form-data":
        allowed += MULTIPART_OVERHEAD
    elif not content_type.startswith("video/"):
        raise UnsupportedUpload(f"a body of type {content_type} cannot be analysed: {HOW_TO_SEND}")
    if request.content_length is not None and request.content_length > allowed:
        raise upload_too_large(max_bytes)
    return processes, wait


def _processes(request: web.Request) -> list[str]:
    pool = request.app[processor_pool_key]
    asked = request.query.getall("processes", None)
    if asked is None:
        return pool.select(None)
    names = [name.strip() for value in asked for name in value.split(",") if name.strip()]
    if not names:
        known = ", ".join(sorted(pool.processors)) or "none configured"
        raise InvalidParameter(f"processes must name at least one processor; known: {known}")
    return pool.select(names)


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidParameter(f"{name} must be true or false, not {value!r}")


async def _receive(request: web.Request) -> Upload:
    """The video of the request body, streamed to a temp file under ``state_dir/uploads``."""
    folder = request.app[job_queue_key].uploads_dir
    settings = request.app[settings_key]
    limit = settings.batch.max_bytes
    idle = settings.server.body_idle_timeout
    if request.content_type != "multipart/form-data":
        name = DEFAULT_NAME + (mimetypes.guess_extension(request.content_type) or "")
        read = idle_limited(request.content.read, idle)
        return await receive_upload(read, folder, limit, name, request.content_type)
    try:
        async for part in multipart_parts(request, idle):
            if isinstance(part, BodyPartReader) and part.name == FILE_FIELD:
                name = _safe_name(part.filename)
                read = idle_limited(part.read_chunk, idle)
                return await receive_upload(read, folder, limit, name, _part_type(part, name))
    except ValueError as exc:  # no boundary where the Content-Type says
        raise MalformedBody(f"malformed multipart body: {exc}") from None
    raise MissingUpload(f"no field {FILE_FIELD!r} in the multipart body: {HOW_TO_SEND}")


def _safe_name(filename: str | None) -> str:
    """The upload's own name, reduced to what any API takes in a Content-Disposition."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME.sub("_", base).strip("._")[:MAX_NAME_LENGTH]
    return name or DEFAULT_NAME


def _part_type(part: BodyPartReader, name: str) -> str:
    declared = part.headers.get(hdrs.CONTENT_TYPE, "").split(";")[0].strip().lower()
    if declared.startswith("video/"):
        return declared
    guessed, _ = mimetypes.guess_type(name)
    return guessed if guessed and guessed.startswith("video/") else "application/octet-stream"


def setup_routes(app: web.Application) -> None:
    """Register the batch routes."""
    app.router.add_post("/batch", submit_batch, expect_handler=expect_continue)
    app.router.add_get("/batch/{job}", describe_job)
