"""Fuzz target: multipart parsing of ``POST /batch``, through the real app.

Each input is a request: its first line the ``Content-Type`` header, the rest the body. framehub
is built by ``create_app`` with test-like settings (state under ``WORK/state``, no processors) and
served by aiohttp's test server on loopback; each input is posted to ``/batch`` by aiohttp's
client. The answer must be JSON with a 4xx status and an ``error``, or 200 with a ``result`` (a
valid video), never a 5xx; once it has come, no temp file may be left in ``state_dir/uploads``
and nothing may have been logged at ERROR (an exception a middleware turned into an answer, a task
that failed).

The one part not used as the server runs it is the probe: the app's
:func:`~server.media.probe.probe_video` starts a Python child per upload (about half a second on
the 2-core box), which would leave a few inputs a second. Here the same
:func:`~server.media.probe.inspect_video` runs in a worker thread instead. What it raises besides
its refusal is answered as the child's failure would be (a 422) and reported as a finding of its
own; the probe in its child process has a target of its own (``fuzz/probe.py``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

import server.handlers.batch
from fuzz.engine import Broken, Target, exception_signature
from fuzz.seeds import video
from server.app import create_app
from server.errors import VideoRejected
from server.media.probe import PROBE_MEMORY_BYTES, VideoInfo, inspect_video
from server.settings import BatchSettings, settings_from_mapping

BOUNDARY = "fuzzboundary7MA4YWxkTrZu0gW"
# What probe_video says when its child ends without a report.
PROBE_FAILED = "the video could not be checked safely: the probe ended with status 1 and no report"
# Seconds an answer may take; body_idle_timeout (2 s) ends any wait for a body well before.
ANSWER_SECONDS = 15.0
# Characters aiohttp's client refuses in a header value.
_UNSENDABLE = dict.fromkeys([*range(0x20), 0x7F])
_UNSENDABLE.pop(0x09)


class ErrorLog(logging.Handler):
    """Keeps what is logged at ERROR or above, anywhere."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class BatchUploads:
    """framehub on a loopback port, and a client posting each input to ``/batch``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.state = work / "state"
        shutil.rmtree(self.state, ignore_errors=True)  # a run starts with no jobs
        self.loop = asyncio.new_event_loop()
        self.log = ErrorLog()
        logging.getLogger().addHandler(self.log)
        logging.getLogger().setLevel(logging.WARNING)
        # What inspect_video raised besides its refusal: the child would have ended with it.
        self.probe_errors: list[Exception] = []
        # The handler's own name for it (imported into its module): the one seam this target
        # changes, see the module docstring.
        server.handlers.batch.probe_video = self.probe_in_process  # type: ignore[attr-defined]
        settings = settings_from_mapping(
            {
                "server": {"state_dir": str(self.state), "body_idle_timeout": 2.0},
                "repositories": {"create_demo": False},
                "batch": {"max_bytes": 1 << 20, "keep": 0.0},
            },
            base_dir=work,
        )
        self.server = TestServer(create_app(settings), host="127.0.0.1")
        self.loop.run_until_complete(self.server.start_server())
        self.client = self.loop.run_until_complete(self._client())
        self.uploads = self.state / "uploads"

    async def probe_in_process(self, path: Path, batch: BatchSettings) -> VideoInfo:
        """:func:`~server.media.probe.probe_video`'s check, in a thread of this process."""
        try:
            return await asyncio.to_thread(
                inspect_video, path, batch.max_pixels, batch.max_duration
            )
        except VideoRejected:
            raise
        except MemoryError:  # as the child says it
            raise VideoRejected(
                f"reading the video needs more than {PROBE_MEMORY_BYTES >> 20} MiB"
            ) from None
        except OSError as exc:
            raise VideoRejected(f"the upload could not be read: {exc.strerror or exc}") from None
        except Exception as exc:
            self.probe_errors.append(exc)
            raise VideoRejected(PROBE_FAILED) from None

    async def _client(self) -> ClientSession:
        return ClientSession(base_url=self.server.make_url("/"))

    def check(self, data: bytes) -> None:
        """Post ``data`` (see the module docstring) and check the answer."""
        header, _, body = data.partition(b"\n")
        content_type = header.decode("latin-1").translate(_UNSENDABLE)
        self.log.records.clear()
        self.probe_errors.clear()
        try:
            status, answer = self.loop.run_until_complete(self._post(content_type, body))
        except TimeoutError:
            raise Broken(f"no answer within {ANSWER_SECONDS:g} s") from None
        if not (200 <= status < 300 or 400 <= status < 500):
            raise Broken(
                f"POST /batch answered {status}{self._cause()}: {answer!r}{self._logged()}"
            )
        if not isinstance(answer, dict):
            raise Broken(f"POST /batch answered {status} without a JSON object: {answer!r}")
        if status >= 400 and not isinstance(answer.get("error"), str):
            raise Broken(f"POST /batch answered {status} without an error: {answer!r}")
        if status < 300 and "result" not in answer:
            raise Broken(f"POST /batch answered {status} without a result: {answer!r}")
        left = sorted(path.name for path in self.uploads.iterdir())
        if left:
            for name in left:
                (self.uploads / name).unlink()
            raise Broken(f"POST /batch answered {status} and left {left} in uploads")
        if self.log.records:
            record = self.log.records[0]
            raise Broken(
                f"logged at {record.levelname}{self._cause()}: {record.getMessage()}"
                + self._logged()
            )
        if self.probe_errors:
            # The answer was right (the child's failure is a refusal), but the probe's own code
            # failed: a finding of its own, with its traceback.
            raise self.probe_errors[0]

    def _cause(self) -> str:
        """Where the first exception logged during the last request came from, if one was."""
        for record in self.log.records:
            if record.exc_info and record.exc_info[1] is not None:
                return f" after {exception_signature(record.exc_info[1])}"
        return ""

    def _logged(self) -> str:
        """The tracebacks logged during the last request, for a finding's text."""
        formatter = logging.Formatter()
        return "".join(f"\n\n{formatter.format(record)}" for record in self.log.records)

    async def _post(self, content_type: str, body: bytes) -> tuple[int, object]:
        async with asyncio.timeout(ANSWER_SECONDS):
            headers = {"Content-Type": content_type}
            async with self.client.post("/batch", data=body, headers=headers) as resp:
                if resp.content_type != "application/json":
                    return resp.status, await resp.text()
                return resp.status, await resp.json()

    def seeds(self) -> list[bytes]:
        """A valid upload, the same with each thing a client may vary, and bodies refused."""
        clip = video(self.work, "seed.mp4", "libx264", options={"preset": "ultrafast"})
        form = f"multipart/form-data; boundary={BOUNDARY}"
        file_part = _part('form-data; name="file"; filename="clip.mp4"', clip, "video/mp4")
        note = _part('form-data; name="note"', b"a field before the file")
        return [
            _request(form, [file_part]),
            _request(form, [note, file_part]),
            _request(form, [_part('form-data; name="file"', clip)]),
            _request(
                form,
                [_part("form-data; name=file; filename*=UTF-8''%E2%82%AC%20c.mp4", clip)],
            ),
            _request(
                form,
                [_part('form-data; name="file"; filename="c.mp4"', clip, "video/mp4", "base64")],
            ),
            _request(f'multipart/form-data; boundary="{BOUNDARY} x"', [file_part], f"{BOUNDARY} x"),
            _request(form, [note]),
            _request(form, [file_part])[:-4],  # no closing boundary
            _request("multipart/form-data", [file_part]),
            _request(
                form,
                [
                    _part(
                        'form-data; name="file"',
                        _body([note], "inner"),
                        "multipart/mixed; boundary=inner",
                    )
                ],
            ),
            b"video/mp4\n" + clip,
            b"text/plain\nnot a video",
        ]


def _part(
    disposition: str,
    content: bytes,
    content_type: str | None = None,
    encoding: str | None = None,
) -> bytes:
    headers = [f"Content-Disposition: {disposition}"]
    if content_type is not None:
        headers.append(f"Content-Type: {content_type}")
    if encoding is not None:
        headers.append(f"Content-Transfer-Encoding: {encoding}")
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + content


def _body(parts: list[bytes], boundary: str = BOUNDARY) -> bytes:
    delimiter = f"--{boundary}\r\n".encode()
    return b"".join(delimiter + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()


def _request(content_type: str, parts: list[bytes], boundary: str = BOUNDARY) -> bytes:
    return content_type.encode() + b"\n" + _body(parts, boundary)


def target(work: Path) -> Target:
    """Multipart uploads to ``POST /batch`` as a fuzz target."""
    uploads = BatchUploads(work)
    return Target(
        check=uploads.check,
        seeds=uploads.seeds,
        max_len=8192,
        slow_seconds=3.0,
        hang_seconds=ANSWER_SECONDS + 5.0,
        dictionary=(b"\r\n", b"--", b"; boundary=", b'filename="', b"filename*=", b"name=file"),
    )
