"""Repository names: the one check every name passes before it comes near the filesystem."""

from __future__ import annotations

import re

REPOSITORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_valid_repository_name(name: str) -> bool:
    """True for names such as ``demo`` or ``cam-2.left``; never ``..``, ``.x``, slashes or NUL."""
    return REPOSITORY_NAME.fullmatch(name) is not None
