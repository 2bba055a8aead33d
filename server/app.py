"""The application factory: the single place where framehub is assembled.

``create_app(settings)`` wires middlewares, the cookie session, the routes and one ``cleanup_ctx``
entry per resource with a lifetime (HTTP client session, repository store). ``main.py`` and the
tests both build the app here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp_session import setup as setup_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from server.handlers import camera
from server.keys import client_session_key, placeholder_key, repository_store_key, settings_key
from server.media.images import placeholder_jpeg
from server.middleware import error_middleware
from server.secrets_file import cookie_key
from server.settings import Settings
from server.store.repositories import RepositoryStore

COOKIE_NAME = "framehub"
# Small bodies everywhere: large uploads get their own limits on their own routes.
CLIENT_MAX_SIZE = 1 << 20


async def _client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[client_session_key] = session
        yield


async def _placeholder_ctx(app: web.Application) -> AsyncIterator[None]:
    app[placeholder_key] = await asyncio.to_thread(placeholder_jpeg)
    yield


async def _repository_store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = RepositoryStore(app[settings_key], app[client_session_key])
    await store.start()
    app[repository_store_key] = store
    yield
    await store.close()


def create_app(settings: Settings) -> web.Application:
    """Build the framehub application for ``settings``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[settings_key] = settings
    setup_session(
        app,
        EncryptedCookieStorage(
            Fernet(cookie_key(settings)),
            cookie_name=COOKIE_NAME,
            max_age=settings.camera.cursor_max_age,
            httponly=True,
            samesite="Lax",
        ),
    )
    app.cleanup_ctx.extend([_client_session_ctx, _placeholder_ctx, _repository_store_ctx])
    camera.setup_routes(app)
    return app
