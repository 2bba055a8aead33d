"""Typed keys for everything the app shares between handlers; no module-level state anywhere."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from server.settings import Settings
from server.store.repositories import RepositoryStore

settings_key = web.AppKey("settings", Settings)
client_session_key = web.AppKey("client_session", aiohttp.ClientSession)
repository_store_key = web.AppKey("repository_store", RepositoryStore)
placeholder_key = web.AppKey("placeholder_jpeg", bytes)
