"""The cookie that carries each client's frame cursors: aiohttp-session's encrypted cookie storage,
read and written without :mod:`http.cookies`.

Every ``video.jpg`` request loads the cookie and writes it back with the next cursor. Under load,
aiohttp's parsing of every cookie in the header and ``SimpleCookie``'s serialisation were a sixth
of the server's CPU per request (bench/camera.py). The value is a Fernet token, URL-safe base64,
which needs no quoting, so we pick our one cookie out of the header and write ``Set-Cookie``
ourselves; encryption, expiry and the session semantics stay aiohttp-session's.
"""

from __future__ import annotations

import time

from aiohttp import hdrs, web
from aiohttp_session.cookie_storage import EncryptedCookieStorage


class CursorCookieStorage(EncryptedCookieStorage):
    """:class:`EncryptedCookieStorage` with a faster cookie header read and write."""

    def load_cookie(self, request: web.Request) -> str | None:
        header = request.headers.get(hdrs.COOKIE)
        if not header:
            return None
        prefix = self.cookie_name + "="
        for part in header.split(";"):
            part = part.strip()
            if part.startswith(prefix):
                value = part[len(prefix) :]
                # Older answers quoted the value (SimpleCookie quotes '='): accept both.
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
        return None

    def save_cookie(
        self, response: web.StreamResponse, cookie_data: str, *, max_age: int | None = None
    ) -> None:
        params = self.cookie_params
        if not cookie_data or params.get("domain"):
            # Deleting, or attributes we do not write ourselves: aiohttp-session's own way.
            super().save_cookie(response, cookie_data, max_age=max_age)
            return
        attributes = [f"{self.cookie_name}={cookie_data}", f"Path={params['path']}"]
        if max_age is not None:
            expires = time.strftime("%a, %d-%b-%Y %T GMT", time.gmtime(time.time() + max_age))
            attributes += [f"expires={expires}", f"Max-Age={max_age}"]
        if params.get("secure"):
            attributes.append("Secure")
        if params.get("httponly"):
            attributes.append("HttpOnly")
        if params.get("samesite"):
            attributes.append(f"SameSite={params['samesite']}")
        response.headers.add(hdrs.SET_COOKIE, "; ".join(attributes))
