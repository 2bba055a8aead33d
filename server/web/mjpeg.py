"""MJPEG over HTTP: the ``multipart/x-mixed-replace`` stream that ``<img src=...>`` plays.

Each frame is one part: a boundary, its Content-Type and Content-Length, the image bytes. Both the
repositories' ``video.mjpg`` and the live cameras' stream build their parts here.
"""

from __future__ import annotations

MJPEG_BOUNDARY = "framehubframe"
MJPEG_CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}"


def mjpeg_part(data: bytes, content_type: str) -> bytes:
    """One frame as a part of the stream."""
    header = (
        f"--{MJPEG_BOUNDARY}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    return header + data + b"\r\n"
