"""Fuzz target: the cursor cookie decoder, :mod:`server.web.cursor_cookie`.

A client can send any cookie value; the storage must read it as cursors or as none (``open``
returns None), never fail. The first byte of an input picks what the rest is:

0. a cookie value (the header's bytes as aiohttp decodes them), given to
   :meth:`CursorCookieStorage.open`;
1. a plaintext as the current format seals it, given to :func:`unpack_cursors` (whose refusal is
   ValueError): what the AEAD protects, and what a mistake in ``seal`` would hand it;
2. a JSON document sealed as aiohttp-session's Fernet cookie (the format before), given to
   ``open``;
3. a whole ``Cookie`` header, picked apart by :meth:`CursorCookieStorage.load_cookie`, then opened.

What opens must be at most MAX_CURSORS cursors, names of at most 255 ASCII characters with
positions from 0 to MAX_POSITION, that seal and open again to the same cursors (a plaintext that
unpacks must pack back to the same cursors).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from aiohttp.test_utils import make_mocked_request
from cryptography.fernet import Fernet

from fuzz.engine import Broken, Target
from server.web.cursor_cookie import (
    MAX_CURSORS,
    MAX_POSITION,
    CursorCookieStorage,
    pack_cursors,
    unpack_cursors,
)

COOKIE_NAME = "framehub"
MAX_AGE = 30 * 86400
# Fixed keys (the first seals), so that an input opens the same way in every run.
KEYS = (
    b"ZnV6ei1zZWVkLWtleS0wMTIzNDU2Nzg5YWJjZGVmZ2g=",
    b"ZnV6ei1vbGQta2V5LTAxMjM0NTY3ODlhYmNkZWZnaGk=",
)
OPEN, UNPACK, FERNET, HEADER = range(4)
MODES = 4
MAX_NAME_BYTES = 255


class Cookies:
    """The storage framehub builds, under fixed keys."""

    def __init__(self) -> None:
        self.storage = CursorCookieStorage(
            list(KEYS), cookie_name=COOKIE_NAME, max_age=MAX_AGE, httponly=True, samesite="Lax"
        )
        self.fernet = Fernet(KEYS[-1])

    def check(self, data: bytes) -> None:
        """Decode ``data`` the way its first byte says (see the module docstring)."""
        if not data:
            return
        mode, rest = data[0] % MODES, data[1:]
        if mode == UNPACK:
            try:
                issued, cursors = unpack_cursors(rest)
            except ValueError:
                return
            _check_cursors(cursors)
            if unpack_cursors(pack_cursors(issued, cursors)) != (issued, cursors):
                raise Broken(f"{rest!r} unpacked to {cursors!r}, which does not pack back")
            return
        if mode == FERNET:
            value = self.fernet.encrypt_at_time(rest, int(time.time())).decode("ascii")
        elif mode == HEADER:
            # make_mocked_request encodes the header again, which a lone surrogate cannot be.
            header = rest.decode("utf-8", "replace")
            request = make_mocked_request("GET", "/demo/video.jpg", headers={"Cookie": header})
            found = self.storage.load_cookie(request)
            if found is None:
                return
            value = found
        else:
            value = rest.decode("utf-8", "surrogateescape")
        opened = self.storage.open(value)
        if opened is None:
            return
        issued, cursors = opened
        _check_cursors(cursors)
        again = self.storage.open(self.storage.seal(issued, cursors))
        if again != (issued, cursors):
            raise Broken(f"cursors {cursors!r} did not survive seal and open: {again!r}")

    def seeds(self) -> list[bytes]:
        """Cookies of both formats, plaintexts and headers, as a browser would send them."""
        now = int(time.time())
        one = {"demo": 3}
        many = {f"repo-{index}": index * 1000 for index in range(MAX_CURSORS)}
        sealed = [self.storage.seal(now, cursors) for cursors in ({}, one, many)]
        old_json = json.dumps({"created": now, "session": {"cursors": {"demo": 3, "lobby": 0}}})
        old = self.fernet.encrypt(old_json.encode()).decode()
        return [
            *(bytes((OPEN,)) + value.encode() for value in [*sealed, old, f'"{sealed[1]}"']),
            bytes((UNPACK,)) + pack_cursors(now, one),
            bytes((UNPACK,)) + pack_cursors(now, many),
            bytes((FERNET,)) + old_json.encode(),
            bytes((FERNET,)) + b'{"session": {"cursors": {"a": -1, "b": 4294967296, "c": 1.5}}}',
            bytes((HEADER,)) + f"theme=dark; {COOKIE_NAME}={sealed[1]}; other=1".encode(),
            bytes((HEADER,)) + f'{COOKIE_NAME}="{old}"'.encode(),
        ]


def _check_cursors(cursors: dict[str, int]) -> None:
    if len(cursors) > MAX_CURSORS:
        raise Broken(f"{len(cursors)} cursors came out, over MAX_CURSORS")
    for name, position in cursors.items():
        if not (name.isascii() and len(name) <= MAX_NAME_BYTES):
            raise Broken(f"a cursor named {name!r} came out")
        if type(position) is not int or not 0 <= position <= MAX_POSITION:
            raise Broken(f"a cursor at {position!r} came out")


def target(work: Path) -> Target:
    """The cookie decoder as a fuzz target."""
    del work  # no files needed
    cookies = Cookies()
    return Target(check=cookies.check, seeds=cookies.seeds, max_len=4096)
