"""The application factory: the single place where framehub is assembled.

``create_app(settings)`` wires the middlewares (errors to JSON, CORS, cookie session), the routes,
the Socket.IO server and one ``cleanup_ctx`` entry per resource with a lifetime: the HTTP client
session, the placeholder image, the repository store, and the live pipeline (encoder executor,
processors, session registry). On shutdown Socket.IO clients are disconnected first, then every
session's last clip is finished within ``[server] shutdown_timeout``. ``main.py`` and the tests
both build the app here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import socketio
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_session import setup as setup_session
from cryptography.fernet import Fernet

from server.auth import SOCKETIO_PREFIX, cors_middleware
from server.cursor_cookie import CursorCookieStorage
from server.handlers import analysis, batch, camera, live, service
from server.keys import (
    analysis_executor_key,
    client_session_key,
    encoder_executor_key,
    job_queue_key,
    lifecycle_key,
    metrics_key,
    placeholder_key,
    processor_pool_key,
    repository_store_key,
    session_registry_key,
    settings_key,
    socketio_key,
    socketio_transports_key,
)
from server.lifecycle import Lifecycle
from server.media.images import placeholder_jpeg
from server.metrics import Metrics
from server.middleware import error_middleware
from server.processors import ProcessorPool
from server.secrets_file import cookie_key
from server.settings import Settings
from server.store.jobs import JobQueue
from server.store.repositories import RepositoryStore
from server.store.sessions import ClipPipeline, SessionRegistry
from server.systemd import Notifier

_LOGGER = logging.getLogger(__name__)

COOKIE_NAME = "framehub"
# Small bodies everywhere: routes taking large uploads read their bodies with their own limits.
CLIENT_MAX_SIZE = 1 << 20


async def _client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[client_session_key] = session
        yield


async def _placeholder_ctx(app: web.Application) -> AsyncIterator[None]:
    app[placeholder_key] = await asyncio.to_thread(placeholder_jpeg)
    yield


async def _repository_store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = RepositoryStore(app[settings_key], app[client_session_key], app[metrics_key])
    await store.start()
    app[repository_store_key] = store
    yield
    await store.close()


async def _live_pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    executor = ThreadPoolExecutor(settings.clips.encode_threads, thread_name_prefix="encoder")
    metrics = app[metrics_key]
    pool = ProcessorPool(settings, app[client_session_key], metrics)
    pipeline = ClipPipeline(settings, executor, pool, metrics)
    registry = SessionRegistry(settings, pipeline)
    metrics.sessions_connected.set_function(lambda: registry.live_count)
    app[encoder_executor_key] = executor
    app[processor_pool_key] = pool
    app[session_registry_key] = registry
    yield
    await registry.close(grace=settings.server.shutdown_timeout)
    await asyncio.to_thread(executor.shutdown, True)


async def _analysis_executor_ctx(app: web.Application) -> AsyncIterator[None]:
    threads = app[settings_key].clips.analysis_threads
    executor = ThreadPoolExecutor(threads, thread_name_prefix="analysis")
    app[analysis_executor_key] = executor
    yield
    await asyncio.to_thread(executor.shutdown, True)


async def _job_queue_ctx(app: web.Application) -> AsyncIterator[None]:
    queue = JobQueue(app[settings_key], app[processor_pool_key], app[metrics_key])
    await queue.start()
    app[job_queue_key] = queue
    yield
    await queue.close(grace=app[settings_key].server.shutdown_timeout)


async def _watchers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Background watchers: sd_notify keep-alive (watchdog, status) and event loop lag."""
    lifecycle = app[lifecycle_key]
    registry = app[session_registry_key]
    pipeline = registry.pipeline

    def status() -> str:
        return f"{registry.live_count} sessions, {pipeline.clips_encoded} clips encoded"

    lifecycle.status = status
    tasks = [
        asyncio.create_task(lifecycle.notifier.keep_alive(status), name="sd-notify"),
        asyncio.create_task(app[metrics_key].watch_event_loop(), name="loop-lag"),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _disconnect_socketio_clients(app: web.Application) -> None:
    """Close every Socket.IO connection cleanly before the web server stops."""
    sio = app[socketio_key]
    for namespace, sid in list(_connected_sids(sio)):
        await sio.disconnect(sid, namespace=namespace)
    # Socket.IO's disconnect leaves the Engine.IO transport open; closing it too lets the
    # websocket handlers end now instead of holding shutdown for the whole shutdown_timeout.
    if sio.eio.sockets:  # with none, python-engineio's asyncio.wait([]) raises ValueError
        await sio.eio.disconnect()
    await sio.shutdown()
    # A client may still hold its websocket open, waiting for the server to close it, while the
    # server waits for the client: close the transports so the handlers return right away.
    transports = app[socketio_transports_key]
    for transport in list(transports):
        transport.close()


async def _finish_batch_jobs(app: web.Application) -> None:
    """Fail queued jobs and give running ones ``shutdown_timeout``, before aiohttp waits for
    requests: a ``wait=true`` request then gets its answer instead of holding shutdown up."""
    await app[job_queue_key].close(grace=app[settings_key].server.shutdown_timeout)


@web.middleware
async def _track_socketio_transports(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Remember the transports of Socket.IO websockets, for :func:`_disconnect_socketio_clients`."""
    transport = request.transport
    if transport is None or not request.path.startswith(SOCKETIO_PREFIX):
        return await handler(request)
    transports = request.app[socketio_transports_key]
    transports.add(transport)
    try:
        return await handler(request)
    finally:
        transports.discard(transport)


def _connected_sids(sio: socketio.AsyncServer) -> list[tuple[str, str]]:
    return [
        (namespace, sid)
        for namespace in list(sio.manager.get_namespaces())
        for sid, _eio_sid in list(sio.manager.get_participants(namespace, None))
    ]


def _socketio_server(settings: Settings) -> socketio.AsyncServer:
    origins = settings.server.cors_allowed_origins
    return socketio.AsyncServer(
        async_mode="aiohttp",
        # None means same origin only (python-socketio's rule); "*" opens it to all.
        cors_allowed_origins=("*" if "*" in origins else (list(origins) or None)),
        max_http_buffer_size=settings.sessions.max_buffer_size,
        logger=False,
        engineio_logger=False,
    )


def create_app(settings: Settings) -> web.Application:
    """Build the framehub application for ``settings``."""
    app = web.Application(
        middlewares=[error_middleware, cors_middleware, _track_socketio_transports],
        client_max_size=CLIENT_MAX_SIZE,
    )
    app[settings_key] = settings
    app[socketio_transports_key] = set()
    app[metrics_key] = Metrics()
    app[lifecycle_key] = Lifecycle(Notifier())
    setup_session(
        app,
        CursorCookieStorage(
            Fernet(cookie_key(settings)),
            cookie_name=COOKIE_NAME,
            max_age=settings.camera.cursor_max_age,
            httponly=True,
            samesite="Lax",
        ),
    )
    sio = _socketio_server(settings)
    sio.register_namespace(live.LiveNamespace(app))
    sio.attach(app)
    app[socketio_key] = sio
    app.on_shutdown.extend([_disconnect_socketio_clients, _finish_batch_jobs])
    app.cleanup_ctx.extend(
        [
            _client_session_ctx,
            _placeholder_ctx,
            _repository_store_ctx,
            _live_pipeline_ctx,
            _analysis_executor_ctx,
            _job_queue_ctx,
            _watchers_ctx,
        ]
    )
    service.setup_routes(app)
    live.setup_routes(app)
    analysis.setup_routes(app)
    batch.setup_routes(app)
    camera.setup_routes(app)  # last: `/{repo}` matches any single path segment
    return app
