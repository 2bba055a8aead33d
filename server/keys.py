"""Typed keys for everything the app shares between handlers; no module-level state anywhere."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import aiohttp
import socketio
from aiohttp import web

from server.batch.queue import JobQueue
from server.live.builtins import BuiltinAnalyses
from server.live.cameras import CameraRegistry
from server.live.processors import ProcessorPool
from server.live.recording import Recorder
from server.live.sessions import SessionRegistry
from server.live.webhooks import Webhooks
from server.ops.lifecycle import Lifecycle
from server.ops.metrics import Metrics
from server.settings import Settings
from server.store.cursors import ClientCursors
from server.store.repositories import RepositoryStore
from server.web.connections import ConnectionGuard
from server.web.cursor_cookie import CursorCookieStorage
from server.web.socketio import InFlight

if TYPE_CHECKING:  # server.cluster is imported only with [cluster] redis_url set
    from server.cluster.link import RedisLink
    from server.cluster.node import ClusterNode


class ReloadedSettings:
    """The settings last applied by a reload (SIGHUP); ``settings_key`` keeps those of the start."""

    def __init__(self, settings: Settings) -> None:
        self.current = settings


settings_key = web.AppKey("settings", Settings)
reloaded_settings_key = web.AppKey("reloaded_settings", ReloadedSettings)
client_session_key = web.AppKey("client_session", aiohttp.ClientSession)
repository_store_key = web.AppKey("repository_store", RepositoryStore)
placeholder_key = web.AppKey("placeholder_jpeg", bytes)
client_cursors_key = web.AppKey("client_cursors", ClientCursors)
cursor_storage_key = web.AppKey("cursor_storage", CursorCookieStorage)
socketio_key = web.AppKey("socketio", socketio.AsyncServer)
in_flight_key = web.AppKey("in_flight", InFlight)
connection_guard_key = web.AppKey("connection_guard", ConnectionGuard)
encoder_executor_key = web.AppKey("encoder_executor", ThreadPoolExecutor)
builtin_analyses_key = web.AppKey("builtin_analyses", BuiltinAnalyses)
processor_pool_key = web.AppKey("processor_pool", ProcessorPool)
session_registry_key = web.AppKey("session_registry", SessionRegistry)
camera_registry_key = web.AppKey("camera_registry", CameraRegistry)
recorder_key = web.AppKey("recorder", Recorder)
webhooks_key = web.AppKey("webhooks", Webhooks)
job_queue_key = web.AppKey("job_queue", JobQueue)
lifecycle_key = web.AppKey("lifecycle", Lifecycle)
metrics_key = web.AppKey("metrics", Metrics)
# Set only with [cluster] redis_url.
cluster_node_key: web.AppKey[ClusterNode] = web.AppKey("cluster_node")
redis_link_key: web.AppKey[RedisLink] = web.AppKey("redis_link")
