"""The cursor cookie's format: AES-GCM under keys derived from Fernet keys, expiry, key rotation,
the Fernet-era cookie read once, its size, and that only ``video.jpg`` touches it.

The storage is tested on its own (seal and open) and through the app from ``create_app``, whose
clients are real aiohttp clients with their own cookie jar.
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.fernet import Fernet

from server.app import COOKIE_NAME, create_app
from server.web.cursor_cookie import (
    MAX_CURSORS,
    MAX_POSITION,
    VERSION,
    CursorCookieStorage,
    pack_cursors,
    unpack_cursors,
)

if TYPE_CHECKING:
    from apps import Framehub, FramehubClient, SettingsFactory
    from common import Images

FRAMES = [f"frame-{i}.jpg" for i in range(4)]
MAX_AGE = 3600
# Realistic repository names, as long as those of tests/test_camera.py.
REPOSITORIES = [f"repository-number-{i:02d}" for i in range(MAX_CURSORS)]


def storage(*keys: str) -> CursorCookieStorage:
    """A storage like the app's, with ``keys`` (the first encrypting)."""
    return CursorCookieStorage(
        [key.encode() for key in keys], cookie_name=COOKIE_NAME, max_age=MAX_AGE
    )


def fernet_era(key: str, cursors: dict[str, Any], at: float) -> str:
    """A cookie of aiohttp-session's EncryptedCookieStorage, as framehub wrote them before."""
    data = json.dumps({"created": int(at), "session": {"cursors": cursors}}).encode()
    return Fernet(key).encrypt_at_time(data, int(at)).decode()


def raw(value: str) -> bytes:
    """The bytes of a cookie value (unpadded URL-safe base64)."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def new_key() -> str:
    return Fernet.generate_key().decode()


async def camera(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, **server: Any
) -> FramehubClient:
    """A client of an app serving repository ``cam`` of :data:`FRAMES`, ``[server]`` as given."""
    settings = make_settings(server=server, camera={"cursor_max_age": MAX_AGE})
    images.folder(settings.repositories_dir / "cam", FRAMES)
    return await framehub.client(settings)


async def frame_with(client: FramehubClient, cookie: str | None = None) -> tuple[int, str]:
    """The frame number of one ``video.jpg`` answer (sending ``cookie`` when given, else the
    jar's) and the cursor cookie it set."""
    if cookie is not None:
        client.session.cookie_jar.update_cookies({COOKIE_NAME: cookie}, client.make_url("/"))
    async with client.get("/cam/video.jpg") as resp:
        assert resp.status == 200
        await resp.read()
        return int(resp.headers["X-Frame-Number"]), resp.cookies[COOKIE_NAME].value


# ---- the format -----------------------------------------------------------------------------


def test_round_trip_keeps_the_cursors_and_the_issue_time() -> None:
    cookies = storage(new_key())
    now = int(time.time())
    cursors = {"cam": 2, "door.left": 0, "x" * 64: MAX_POSITION}

    value = cookies.seal(now, cursors)

    assert cookies.open(value) == (now, cursors)
    assert raw(value)[0] == VERSION
    assert "cam" not in value and "=" not in value  # encrypted; unpadded URL-safe base64
    assert cookies.seal(now, cursors) != value  # a fresh nonce each time
    assert unpack_cursors(pack_cursors(now, cursors)) == (now, cursors)


def test_tampering_with_any_byte_is_refused() -> None:
    cookies = storage(new_key())
    sealed = raw(cookies.seal(int(time.time()), {"cam": 2}))
    for index in range(len(sealed)):
        for flip in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[index] ^= flip
            value = base64.urlsafe_b64encode(tampered).rstrip(b"=").decode()
            assert cookies.open(value) is None, (index, flip)
    assert cookies.open(base64.urlsafe_b64encode(sealed[:-1]).decode()) is None  # cut short
    assert cookies.open(base64.urlsafe_b64encode(sealed + b"\0").decode()) is None


def test_the_cookie_name_is_authenticated() -> None:
    key = new_key()
    value = storage(key).seal(int(time.time()), {"cam": 2})
    elsewhere = CursorCookieStorage([key.encode()], cookie_name="other", max_age=MAX_AGE)
    assert elsewhere.open(value) is None


@pytest.mark.parametrize(
    "value", ["", "not-a-cookie", "caf\u00e9-\u2603", "AQ", "gAAAAA", "%%%", "A" * 200], ids=repr
)
def test_garbage_is_refused(value: str) -> None:
    assert storage(new_key()).open(value) is None


def test_a_cookie_older_than_max_age_is_refused() -> None:
    cookies = storage(new_key())
    now = int(time.time())
    assert cookies.open(cookies.seal(now - MAX_AGE + 60, {"cam": 2})) is not None
    assert cookies.open(cookies.seal(now - MAX_AGE - 60, {"cam": 2})) is None


def test_an_old_key_decrypts_and_an_unlisted_one_does_not() -> None:
    old, current, unlisted = new_key(), new_key(), new_key()
    now = int(time.time())
    rotated = storage(current, old)

    assert rotated.open(storage(old).seal(now, {"cam": 2})) == (now, {"cam": 2})
    assert rotated.open(storage(unlisted).seal(now, {"cam": 2})) is None
    # Only the first key encrypts.
    value = rotated.seal(now, {"cam": 2})
    assert storage(current).open(value) is not None
    assert storage(old).open(value) is None


def test_a_fernet_era_cookie_is_read_under_any_listed_key() -> None:
    old, current = new_key(), new_key()
    now = time.time()
    rotated = storage(current, old)
    for key in (current, old):
        opened = rotated.open(fernet_era(key, {"cam": 2, "door": 5}, now))
        assert opened is not None and opened[1] == {"cam": 2, "door": 5}
    assert rotated.open(fernet_era(new_key(), {"cam": 2}, now)) is None
    assert rotated.open(fernet_era(current, {"cam": 2}, now - MAX_AGE - 60)) is None
    # What framehub never wrote is dropped: not a number, negative, too big, a bad name.
    odd = {"cam": "2", "a": -1, "b": MAX_POSITION + 1, "../x": 1, "c": True, "door": 1}
    opened = rotated.open(fernet_era(current, odd, now))
    assert opened is not None and opened[1] == {"door": 1}


def test_sixteen_repositories_stay_far_below_the_cookie_limit() -> None:
    cookies = storage(new_key())
    now = int(time.time())
    assert len(cookies.seal(now, {name: 123_456 for name in REPOSITORIES})) < 1024
    # The worst case: 16 names of the longest kind, the largest positions.
    longest = {f"{i:02d}" + "x" * 62: MAX_POSITION for i in range(MAX_CURSORS)}
    assert len(cookies.seal(now, longest)) < 2048


# ---- through the app ------------------------------------------------------------------------


async def test_the_app_writes_the_new_format_under_its_key(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    key = new_key()
    client = await camera(framehub, make_settings, images, secret_key=key)

    first, value = await frame_with(client)
    opened = storage(key).open(value)
    assert opened is not None
    issued, cursors = opened
    assert abs(issued - time.time()) < 5
    assert cursors == {"cam": first + 1}
    assert len(value) < 80
    second, value = await frame_with(client)
    assert second == first + 1
    assert storage(key).open(value) is not None


async def test_a_tampered_or_expired_cookie_gets_the_frame_playing_now(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    key = new_key()
    client = await camera(framehub, make_settings, images, secret_key=key)
    now = int(time.time())
    valid = storage(key).seal(now, {"cam": 2})
    assert (await frame_with(client, valid))[0] == 2  # control

    sealed = bytearray(raw(valid))
    sealed[-1] ^= 1
    tampered = base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()
    expired = storage(key).seal(now - MAX_AGE - 60, {"cam": 2})
    for cookie in (tampered, expired):
        # The test camera's clock stands still at frame 0 (fps 0.001).
        number, value = await frame_with(client, cookie)
        assert number == 0
        assert storage(key).open(value) is not None  # and a good cookie to go on with


async def test_rotation_reads_the_old_key_and_rewrites_under_the_new(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    old, current = new_key(), new_key()
    client = await camera(
        framehub, make_settings, images, secret_key=current, old_secret_keys=[old]
    )
    now = int(time.time())

    number, value = await frame_with(client, storage(old).seal(now, {"cam": 2}))
    assert number == 2
    assert storage(current).open(value) is not None
    assert storage(old).open(value) is None
    assert (await frame_with(client))[0] == 3

    # A key that is not listed: the cookie counts as none.
    assert (await frame_with(client, storage(new_key()).seal(now, {"cam": 2})))[0] == 0


@pytest.mark.parametrize("written_under", ["secret_key", "old_secret_keys"])
async def test_a_fernet_era_cookie_is_read_once_and_rewritten(
    framehub: Framehub, make_settings: SettingsFactory, images: Images, written_under: str
) -> None:
    old, current = new_key(), new_key()
    client = await camera(
        framehub, make_settings, images, secret_key=current, old_secret_keys=[old]
    )
    key = current if written_under == "secret_key" else old
    cookie = fernet_era(key, {"cam": 2, "door": 1}, time.time())

    number, value = await frame_with(client, cookie)

    assert number == 2
    assert raw(value)[0] == VERSION
    opened = storage(current).open(value)
    assert opened is not None and opened[1] == {"door": 1, "cam": 3}
    assert (await frame_with(client))[0] == 3


async def test_the_cursor_survives_a_restart_and_an_upgrade_of_the_key_list(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    """The same state dir keeps the generated key; moving it to old_secret_keys keeps cursors."""
    settings = make_settings(camera={"cursor_max_age": MAX_AGE})
    images.folder(settings.repositories_dir / "cam", FRAMES)
    first = await framehub.client(settings)
    _, value = await frame_with(first)
    generated = (settings.server.state_dir / "secret.key").read_text().strip()

    rotated = make_settings(
        server={"secret_key": new_key(), "old_secret_keys": [generated]},
        repositories={"dir": str(settings.repositories_dir)},
    )
    second = await framehub.client(rotated)
    assert (await frame_with(second, value))[0] == 1


# ---- only video.jpg -------------------------------------------------------------------------


def test_no_session_middleware_is_installed(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())
    assert [m for m in app.middlewares if m.__module__.startswith("aiohttp_session")] == []


async def test_other_routes_neither_read_nor_write_the_cookie(
    framehub: Framehub, make_settings: SettingsFactory, images: Images
) -> None:
    client = await camera(framehub, make_settings, images)
    await frame_with(client)  # the jar now holds a good cursor cookie
    requests = [
        ("GET", "/healthz"),
        ("GET", "/batch/no-such-job"),
        ("POST", "/batch"),
        ("GET", "/socket.io/?EIO=4&transport=polling"),
        ("GET", "/cam"),
        ("GET", "/cam/frames/0"),
    ]
    for method, path in requests:
        async with client.request(method, path) as resp:
            await resp.read()
            assert COOKIE_NAME not in resp.cookies, path

    client.session.cookie_jar.clear()  # only the garbage below is sent
    for garbage in ("not-a-cookie", "caf\u00e9-\u2603", '"'):
        headers = {"Cookie": f"{COOKIE_NAME}={garbage}"}
        async with client.get("/metrics", headers=headers) as resp:
            assert resp.status == 200
            assert "framehub_http_requests_total" in await resp.text()
            assert COOKIE_NAME not in resp.cookies
