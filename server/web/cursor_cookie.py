"""The cookie that carries each client's frame cursors: an aiohttp-session storage on AES-GCM.

Every ``video.jpg`` request without ``?client=`` reads the cookie and writes it back with the next
cursor, so the cookie is on the hot path of the virtual camera. :class:`CursorCookieStorage` is an
``aiohttp_session`` storage, but ``next_frame`` calls its :meth:`~CursorCookieStorage.read` and
:meth:`~CursorCookieStorage.write` directly, without a ``Session`` (whose making, reading and
writing cost about 4 us of a request of some 90, bench/camera.py), and no session middleware runs on the
other routes. Its value, URL-safe base64 without padding, is::

    version (1 byte, 1) | nonce (12 random bytes) | AES-256-GCM(issue time, cursors) + tag (16)

with the cookie name as associated data. The plaintext is the issue time (seconds, uint32) and the
number of cursors (uint8), then per cursor the repository name's length (uint8), the name (ASCII)
and the position (uint32): 59 characters for one repository named ``bench``, where
aiohttp-session's Fernet token of JSON took 164. A cookie older than ``max_age`` is refused on
read.

The AEAD key is derived with HKDF from a Fernet key (``[server] secret_key`` or the generated
``state/secret.key``), so operators keep one key format. Of the keys given, the first encrypts and
all decrypt: ``[server] old_secret_keys`` lets cookies written before a rotation be read, and
rewritten under the new key. A Fernet token of aiohttp-session's JSON (the format before) under any
of the keys is read too, once: the answer rewrites it in this format.

A cookie that cannot be read (forged, tampered, expired, under another key, garbage, not ASCII)
counts as none: the session is new, which ``next_frame`` answers with the frame playing now.

The cookie is picked out of the header, and ``Set-Cookie`` written, without :mod:`http.cookies`:
aiohttp's parsing of every cookie in the header and ``SimpleCookie``'s serialisation were a sixth
of the server's CPU per request (bench/camera.py).

A camera client sends back the value it was just given, so the storage remembers the cursors of
the :data:`RECENT_COOKIES` values it wrote last, and a request carrying one of them exactly is
read without base64, AES-GCM and unpacking (about 3 us of a ``video.jpg`` request, bench/camera.py);
any other value (older, from another process, altered) is decrypted as before. Only a value this
storage sealed can match, so the shortcut trusts nothing it did not write itself; ``max_age``
is checked all the same.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import hdrs, web
from aiohttp_session import AbstractStorage, Session
from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from server.names import is_valid_repository_name

# The session key holding {repository name: position}; the only one the cookie keeps.
CURSORS = "cursors"
# Cursors of the most recently used repositories only, so the cookie stays far below 4 KB.
MAX_CURSORS = 16
VERSION = 1
_VERSION_BYTE = bytes((VERSION,))
# The first byte of every Fernet token.
_FERNET_VERSION_BYTE = b"\x80"
# Random 96-bit nonces: a repeat stays below a chance of 2**-32 for 2**32 cookies under one key
# (NIST SP 800-38D); rotating the key starts the count again.
NONCE_BYTES = 12
TAG_BYTES = 16
_HKDF_INFO = b"framehub cursor cookie v1"
_HEADER = struct.Struct(">IB")  # issue time, number of cursors
_POSITION = struct.Struct(">I")
MAX_POSITION = 2**32 - 1
# Cookie values written lately whose cursors are kept, so their next request skips the decryption.
RECENT_COOKIES = 1024


def aead_key(fernet_key: bytes) -> bytes:
    """The AES-256-GCM key derived from a Fernet key (URL-safe base64 of 32 bytes)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(base64.urlsafe_b64decode(fernet_key))


def pack_cursors(issued: int, cursors: dict[str, int]) -> bytes:
    """The plaintext of a cookie issued at ``issued`` (Unix seconds) holding ``cursors``."""
    parts = [_HEADER.pack(issued, len(cursors))]
    for name, position in cursors.items():
        encoded = name.encode("ascii")
        parts += [bytes((len(encoded),)), encoded, _POSITION.pack(position)]
    return b"".join(parts)


def unpack_cursors(plain: bytes) -> tuple[int, dict[str, int]]:
    """The issue time and cursors of a plaintext; ValueError when it is not one."""
    try:
        issued, count = _HEADER.unpack_from(plain)
        offset = _HEADER.size
        cursors = {}
        for _ in range(count):
            end = offset + 1 + plain[offset]
            name = plain[offset + 1 : end].decode("ascii")
            (cursors[name],) = _POSITION.unpack_from(plain, end)
            offset = end + _POSITION.size
    except (struct.error, IndexError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError("not a cursor cookie") from exc
    if offset != len(plain) or count > MAX_CURSORS:
        raise ValueError("not a cursor cookie")
    return issued, cursors


class CursorCookieStorage(AbstractStorage):
    """aiohttp-session's storage for a session of :data:`CURSORS` only (see the module docstring)."""

    def __init__(self, keys: Sequence[bytes], **cookie_params: Any) -> None:
        """``keys``: Fernet keys, the first encrypting; ``cookie_params``: those of
        :class:`~aiohttp_session.AbstractStorage` (cookie_name, max_age, secure, ...)."""
        super().__init__(**cookie_params)
        if not keys:
            raise ValueError("CursorCookieStorage needs at least one key")
        self._aeads = [AESGCM(aead_key(key)) for key in keys]
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._aad = self.cookie_name.encode()
        self._prefix = self.cookie_name + "="
        # value -> (issue time, cursors) of the RECENT_COOKIES values written last, oldest first.
        self._recent: dict[str, tuple[int, dict[str, int]]] = {}
        params = self.cookie_params
        # Max-Age without Expires, which every browser since IE 8 reads; the attributes are the
        # same on every answer.
        attributes = [f"Path={params['path']}"]
        if params.get("domain"):
            attributes.append(f"Domain={params['domain']}")
        if self.max_age is not None:
            attributes.append(f"Max-Age={self.max_age}")
        if params.get("secure"):
            attributes.append("Secure")
        if params.get("httponly"):
            attributes.append("HttpOnly")
        if params.get("samesite"):
            attributes.append(f"SameSite={params['samesite']}")
        self._attributes = "; " + "; ".join(attributes)

    def read(self, request: web.Request) -> tuple[int, dict[str, int]] | None:
        """The issue time and cursors of the request's cookie; None without a readable one.
        The cursors are the caller's to change."""
        value = self.load_cookie(request)
        if value is None:
            return None
        recent = self._recent.pop(value, None)
        if recent is None:
            return self.open(value)
        if self.max_age is not None and time.time() - recent[0] > self.max_age:
            return None
        return recent

    def write(self, response: web.StreamResponse, issued: int, cursors: dict[str, int]) -> None:
        """Set the cookie of ``cursors``, issued at ``issued``, on ``response``."""
        value = self.seal(issued, cursors)
        recent = self._recent
        recent[value] = (issued, dict(cursors))
        if len(recent) > RECENT_COOKIES:
            del recent[next(iter(recent))]
        response.headers.add(hdrs.SET_COOKIE, f"{self.cookie_name}={value}{self._attributes}")

    async def load_session(self, request: web.Request) -> Session:
        """aiohttp-session's read: :meth:`read` as a session (new without a readable cookie)."""
        opened = self.read(request)
        if opened is None:
            return Session(None, data=None, new=True, max_age=self.max_age)
        issued, cursors = opened
        return Session(
            None,
            data={"created": issued, "session": {CURSORS: cursors}},
            new=False,
            max_age=self.max_age,
        )

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        """aiohttp-session's write: :meth:`write` (an empty session deletes the cookie)."""
        if session.empty:
            self.save_cookie(response, "", max_age=session.max_age)
            return
        self.write(response, session.created, session[CURSORS])

    def seal(self, issued: int, cursors: dict[str, int]) -> str:
        """The cookie value for ``cursors`` issued at ``issued``, under the first key."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[0].encrypt(nonce, pack_cursors(issued, cursors), self._aad)
        raw = _VERSION_BYTE + nonce + sealed
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def open(self, value: str) -> tuple[int, dict[str, int]] | None:
        """The issue time and cursors of a cookie value, or None when it cannot be read."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except ValueError:  # not ASCII, or binascii.Error
            return None
        if raw[:1] == _FERNET_VERSION_BYTE:
            return self._open_fernet(value)
        if raw[:1] != _VERSION_BYTE or len(raw) < 1 + NONCE_BYTES + TAG_BYTES:
            return None
        nonce, sealed = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
        for aead in self._aeads:
            try:
                plain = aead.decrypt(nonce, sealed, self._aad)
            except InvalidTag:
                continue
            try:
                issued, cursors = unpack_cursors(plain)
            except ValueError:
                return None
            if self.max_age is not None and time.time() - issued > self.max_age:
                return None
            return issued, cursors
        return None

    def _open_fernet(self, value: str) -> tuple[int, dict[str, int]] | None:
        """A cookie of aiohttp-session's ``EncryptedCookieStorage`` (the format before)."""
        try:
            data = json.loads(self._fernet.decrypt(value.encode("ascii"), ttl=self.max_age))
        except (InvalidToken, ValueError):
            return None
        session = data.get("session") if isinstance(data, dict) else None
        saved = session.get(CURSORS) if isinstance(session, dict) else None
        cursors = {
            name: position
            for name, position in (saved.items() if isinstance(saved, dict) else ())
            # Positions the new format cannot hold were never written by framehub.
            if is_valid_repository_name(name)
            and type(position) is int
            and 0 <= position <= MAX_POSITION
        }
        return int(time.time()), cursors

    def load_cookie(self, request: web.Request) -> str | None:
        """Our cookie's value, without parsing the other cookies of the header."""
        header = request.headers.get(hdrs.COOKIE)
        if not header:
            return None
        prefix = self._prefix
        for part in header.split(";"):
            part = part.strip()
            if part.startswith(prefix):
                value = part[len(prefix) :]
                # aiohttp-session's answers quoted the value (SimpleCookie quotes '='): accept both.
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
        return None
