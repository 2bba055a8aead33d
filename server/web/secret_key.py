"""The cookie keys: ``[server] secret_key`` (or the content of ``secret_key_file``, read with the
settings), else one generated on first start and kept on disk; then ``[server] old_secret_keys``.

Keeping the generated key in the state dir (mode 0600) lets visitors' cursors survive restarts.
All are Fernet keys; :mod:`server.web.cursor_cookie` derives its AES-GCM keys from them.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet

from server.settings import Settings, SettingsError

SECRET_FILE = "secret.key"


def cookie_key(settings: Settings) -> bytes:
    """The Fernet key for cursor cookies, creating and storing one when none is configured."""
    if settings.server.secret_key:
        return settings.server.secret_key.encode()
    path = settings.server.state_dir / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as out:
        out.write(key + b"\n")
    return key


def cookie_keys(settings: Settings) -> list[bytes]:
    """The key that writes cursor cookies, then the old ones that may still read them."""
    return [cookie_key(settings), *(key.encode() for key in settings.server.old_secret_keys)]


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    try:
        Fernet(key)
    except ValueError:
        raise SettingsError(
            f"{path}: not a Fernet key; delete it to have a new one made, or set "
            "server.secret_key or server.secret_key_file"
        ) from None
    return key
