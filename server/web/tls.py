"""HTTPS for the site: ``[server] tls_cert`` and ``tls_key`` made into an :class:`ssl.SSLContext`.

Browsers allow ``getUserMedia`` (the camera page) only in a secure context, which off localhost
means HTTPS. ``server.cli`` builds the context once at start, before the app, so a missing file, a
key that does not match the certificate or a file that is no PEM stops the start with one line; the
same check runs in ``framehub check-config``. Under HTTPS the cursor cookie becomes
``Secure; SameSite=None`` (see ``server.app``), so dashboards on other sites keep their cursors.
"""

from __future__ import annotations

import ssl

from server.settings import ServerSettings, SettingsError


def server_ssl_context(server: ServerSettings, where: str = "settings") -> ssl.SSLContext | None:
    """The site's TLS context, or None for plain HTTP; :class:`SettingsError` naming the key when
    the certificate or key cannot be used."""
    if not server.uses_tls:
        return None
    for key in ("tls_cert", "tls_key"):
        path = getattr(server, key)
        if not path.is_file():
            raise SettingsError(f"{where}: server.{key}: {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # An empty password rather than none: OpenSSL would prompt on the terminal for the
        # passphrase of an encrypted key; a service refuses such a key instead.
        context.load_cert_chain(server.tls_cert, server.tls_key, password=b"")
    except ssl.SSLError as exc:
        raise SettingsError(
            f"{where}: server.tls_cert and server.tls_key must be a PEM certificate and its "
            f"private key without a passphrase ({server.tls_cert}, {server.tls_key}): {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"{where}: server.tls_cert or server.tls_key cannot be read: {exc.strerror or exc}"
        ) from None
    return context
