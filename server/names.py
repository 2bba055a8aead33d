"""Names shared by the server and the reference client: repository names, image files, frame order.

The one check every repository name passes before it comes near the filesystem, which files count
as frames, and the order frames are served in. ``framehub-send`` imports this module and nothing
else of the server, so it stays free of the server's wiring.
"""

from __future__ import annotations

import os
import re
from typing import Any

REPOSITORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Image files a repository serves, by suffix (any case), with the Content-Type they are sent as.
IMAGE_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}
_DIGITS = re.compile(r"(\d+)")


def is_valid_repository_name(name: str) -> bool:
    """True for names such as ``demo`` or ``cam-2.left``; never ``..``, ``.x``, slashes or NUL."""
    return REPOSITORY_NAME.fullmatch(name) is not None


def is_image_name(name: str) -> bool:
    """True for names ending in .jpg, .jpeg, .png or .webp, in any case, and not hidden."""
    base = os.path.basename(name)
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_CONTENT_TYPES


def image_content_type(name: str) -> str:
    """The Content-Type of an image file name that :func:`is_image_name` accepts."""
    return IMAGE_CONTENT_TYPES[os.path.splitext(name)[1].lower()]


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key putting ``frame-2`` before ``frame-10``."""
    parts = _DIGITS.split(name.lower())
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts)
