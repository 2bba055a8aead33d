"""The application factory: the single place where framehub is assembled.

``create_app(settings)`` wires the middlewares (requests in flight, metrics, errors to JSON, CORS),
the cursor cookie storage, the routes, the Socket.IO server and one ``cleanup_ctx`` entry per
resource with a lifetime: the cluster node (with ``[cluster] redis_url``: the Redis link that the
session ids, cameras, batch records, download locks and Socket.IO share), the HTTP client session, the sd_notify socket, the placeholder image, the
repository store, the built-in analyses, the processor pool, the webhooks, the recorder, the live
pipeline (with its cameras), the batch queue and the background watchers. ``main.py`` and the tests
both build the app here.

:func:`stop` is the ordered stop, all within ``[server] shutdown_timeout``: readiness drops; no
new session is taken; every live session stops taking frames (its client's frames are still read,
and acked ``stopping``), its last clip is encoded and analysed and the result emitted to its
still-connected client, while running batch jobs finish (waiting ones fail); only then are
Socket.IO clients disconnected; last, requests still being answered are waited for. ``server.cli``
runs it once the listener is closed and before aiohttp's own shutdown, which stops reading from
every connection; it is also the app's first ``on_shutdown`` step, so an app stopped by other means
(a test server) stops the same way. The cleanup contexts then release what is left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from server.batch.queue import JobQueue
from server.handlers import analysis, batch, camera, cameras, live, service, ui
from server.keys import (
    ReloadedSettings,
    builtin_analyses_key,
    camera_registry_key,
    client_cursors_key,
    client_session_key,
    cluster_node_key,
    connection_guard_key,
    cursor_storage_key,
    encoder_executor_key,
    in_flight_key,
    job_queue_key,
    lifecycle_key,
    metrics_key,
    placeholder_key,
    processor_pool_key,
    recorder_key,
    redis_link_key,
    reloaded_settings_key,
    repository_store_key,
    session_registry_key,
    settings_key,
    socketio_key,
    webhooks_key,
)
from server.live.builtins import BuiltinAnalyses
from server.live.cameras import CameraRegistry
from server.live.pipeline import ClipPipeline
from server.live.processors import ProcessorPool
from server.live.recording import Recorder
from server.live.sessions import SessionRegistry
from server.live.webhooks import Webhooks
from server.media.images import stored_placeholder
from server.ops.lifecycle import Lifecycle
from server.ops.metrics import Metrics
from server.ops.systemd import Notifier
from server.ops.tasks import cancel_and_wait
from server.settings import Settings, SettingsError
from server.store.cursors import ClientCursors
from server.store.repositories import RepositoryStore
from server.web.accounting import Accounting
from server.web.auth import cors_middleware, token_middleware
from server.web.connections import ConnectionGuard, client_address
from server.web.cursor_cookie import CursorCookieStorage
from server.web.secret_key import cookie_keys
from server.web.socketio import InFlight, disconnect_clients, socketio_server

if TYPE_CHECKING:
    from server.cluster.node import ClusterNode

_LOGGER = logging.getLogger(__name__)

COOKIE_NAME = "framehub"
# Small bodies everywhere: routes taking large uploads read their bodies with their own limits.
CLIENT_MAX_SIZE = 1 << 20


async def _client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[client_session_key] = session
        yield


async def _cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app.get(cluster_node_key)
    if node is None:
        yield
        return
    await node.start()
    yield
    await node.close()


async def _notifier_ctx(app: web.Application) -> AsyncIterator[None]:
    notifier = app[lifecycle_key].notifier
    notifier.open()
    yield
    notifier.close()


async def _placeholder_ctx(app: web.Application) -> AsyncIterator[None]:
    state_dir = app[settings_key].server.state_dir
    app[placeholder_key] = await asyncio.to_thread(stored_placeholder, state_dir)
    yield


async def _repository_store_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app.get(cluster_node_key)
    store = RepositoryStore(
        app[settings_key],
        app[client_session_key],
        app[metrics_key],
        locks=node.locks if node is not None else None,
    )
    await store.start()
    app[repository_store_key] = store
    yield
    await store.close()


async def _builtin_analyses_ctx(app: web.Application) -> AsyncIterator[None]:
    builtins = BuiltinAnalyses(app[settings_key])
    app[builtin_analyses_key] = builtins
    yield
    await builtins.close()


async def _processor_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    app[processor_pool_key] = ProcessorPool(
        app[settings_key], app[client_session_key], app[builtin_analyses_key], app[metrics_key]
    )
    yield


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    webhooks = Webhooks(app[settings_key], app[client_session_key], app[metrics_key])
    await webhooks.start()
    app[webhooks_key] = webhooks
    yield  # stopped in the ordered stop, once the last results are published


async def _recorder_ctx(app: web.Application) -> AsyncIterator[None]:
    app[recorder_key] = Recorder(app[settings_key], app[metrics_key])
    yield  # stopped in the ordered stop, once the last frames are offered


async def _live_pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    executor = ThreadPoolExecutor(settings.clips.encode_threads, thread_name_prefix="encoder")
    metrics = app[metrics_key]
    sio = app[socketio_key]

    node = app.get(cluster_node_key)

    async def broadcast(camera: str, message: dict[str, Any]) -> None:
        await sio.emit("result", message, room=live.camera_room(camera))

    cameras = CameraRegistry(
        settings,
        app[recorder_key],
        app[webhooks_key],
        metrics,
        broadcast,
        shared=node.cameras if node is not None else None,
    )
    pipeline = ClipPipeline(settings, executor, app[processor_pool_key], metrics)
    registry = SessionRegistry(
        settings, pipeline, cameras, ids=node.session_ids if node is not None else None
    )
    if node is not None:

        def taken_over(sid: str) -> None:  # by a session of another process
            registry.end(sid)
            sio.start_background_task(sio.disconnect, sid)

        node.cameras.taken_over = taken_over
        await node.cameras.start(cameras)
    app[camera_registry_key] = cameras
    metrics.sessions_connected.set_function(lambda: registry.live_count)
    app[encoder_executor_key] = executor
    app[session_registry_key] = registry
    yield
    if node is not None:
        await node.cameras.close()
    # The sessions ended in the ordered stop; only the encoder threads are left to join.
    await asyncio.to_thread(executor.shutdown, True)


async def _job_queue_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app.get(cluster_node_key)
    queue = JobQueue(
        app[settings_key],
        app[processor_pool_key],
        app[webhooks_key],
        app[metrics_key],
        shared=node.jobs if node is not None else None,
    )
    await queue.start()
    app[job_queue_key] = queue
    yield  # stopped in the ordered stop, which needs it done before requests end


async def _watchers_ctx(app: web.Application) -> AsyncIterator[None]:
    """Background watchers: sd_notify keep-alive (watchdog, status) and event loop lag."""
    lifecycle = app[lifecycle_key]
    registry = app[session_registry_key]
    queue = app[job_queue_key]

    def status() -> str:
        return f"{registry.live_count} live sessions, {queue.count('running')} batch jobs running"

    lifecycle.status = status
    tasks = [
        asyncio.create_task(lifecycle.notifier.keep_alive(status), name="sd-notify"),
        asyncio.create_task(app[metrics_key].watch_event_loop(), name="loop-lag"),
    ]
    yield
    await cancel_and_wait(tasks)


async def stop(app: web.Application) -> None:
    """The ordered stop of the module docstring; later calls return at once."""
    lifecycle = app[lifecycle_key]
    if lifecycle.stop_begun:
        return
    lifecycle.stop()
    lifecycle.stop_begun = True
    await asyncio.gather(
        app[session_registry_key].finish(lifecycle.deadline),
        app[job_queue_key].close(lifecycle.deadline),
    )
    app[camera_registry_key].end_streams()
    await asyncio.gather(
        app[recorder_key].close(lifecycle.deadline), app[webhooks_key].close(lifecycle.deadline)
    )
    await disconnect_clients(app[socketio_key], app[in_flight_key])
    await app[in_flight_key].wait_idle(lifecycle.deadline)


# The tables a reload (SIGHUP) applies; the others need a restart.
RELOADED_TABLES = ("processors", "webhooks", "recording")
# How long webhooks removed by a reload may take to deliver what they hold.
RELOAD_DRAIN = 5.0


async def reload(app: web.Application, settings: Settings) -> list[str]:
    """Apply ``[processors]``, ``[webhooks]`` and ``[recording]`` of ``settings`` to the running
    app, dropping no session, download or job; the tables that changed but need a restart."""
    running = app[reloaded_settings_key].current
    app[processor_pool_key].reconfigure(settings)
    app[recorder_key].reconfigure(settings)
    await app[camera_registry_key].reconfigure_recording()
    deadline = asyncio.get_running_loop().time() + RELOAD_DRAIN
    await app[webhooks_key].reconfigure(settings, deadline)
    app[reloaded_settings_key].current = settings
    return [
        field.name
        for field in dataclasses.fields(Settings)
        if field.name not in RELOADED_TABLES
        and getattr(running, field.name) != getattr(settings, field.name)
    ]


def _cluster_node(settings: Settings, metrics: Metrics) -> ClusterNode | None:
    """This process's part of a cluster, with ``[cluster] redis_url`` set."""
    if not settings.cluster.redis_url:
        return None
    try:  # only here: a single process needs neither server.cluster nor the redis package
        from server.cluster.node import ClusterNode
    except ImportError as exc:
        raise SettingsError(
            f"[cluster] redis_url needs the redis package ({exc}): pip install 'framehub[cluster]'"
        ) from None
    return ClusterNode(settings, metrics)


def create_app(settings: Settings) -> web.Application:
    """Build the framehub application for ``settings``."""
    in_flight = InFlight()
    metrics = Metrics()
    guard = ConnectionGuard(settings.server, metrics)
    app = web.Application(
        middlewares=[
            # In-flight count, connection guard, errors to JSON and metrics, in one middleware.
            Accounting(in_flight, guard, metrics).middleware,
            # Without listed origins no answer gets CORS headers, and without a token every
            # route is open: no check to pay for on each request.
            *([cors_middleware] if settings.server.cors_allowed_origins else []),
            *([token_middleware] if settings.server.api_token else []),
        ],
        client_max_size=CLIENT_MAX_SIZE,
    )
    app[settings_key] = settings
    app[reloaded_settings_key] = ReloadedSettings(settings)
    app[in_flight_key] = in_flight
    app[metrics_key] = metrics
    app[connection_guard_key] = guard
    metrics.connections_open.set_function(lambda: guard.open_connections)
    app[client_cursors_key] = ClientCursors(settings.camera.max_clients)
    app[lifecycle_key] = Lifecycle(Notifier(), settings.server.shutdown_timeout)
    # No session middleware: only video.jpg reads and writes the cursor cookie, through this.
    app[cursor_storage_key] = CursorCookieStorage(
        cookie_keys(settings),
        cookie_name=COOKIE_NAME,
        max_age=settings.camera.cursor_max_age,
        httponly=True,
        # Browsers send a SameSite=None cookie on cross-site image loads (a dashboard on another
        # site), but only a Secure one, so only under HTTPS.
        secure=settings.server.uses_tls,
        samesite="None" if settings.server.uses_tls else "Lax",
    )

    def socketio_client(environ: dict[str, Any]) -> str:
        return client_address(environ["aiohttp.request"], guard.trusted)

    node = _cluster_node(settings, metrics)
    if node is not None:
        app[cluster_node_key] = node
        app[redis_link_key] = node.link
    sio = socketio_server(
        settings, socketio_client, node.socketio_manager if node is not None else None
    )
    sio.register_namespace(live.LiveNamespace(app))
    sio.attach(app)
    app[socketio_key] = sio
    app.on_shutdown.append(stop)
    app.cleanup_ctx.extend(
        [
            _cluster_ctx,
            _client_session_ctx,
            _notifier_ctx,
            _placeholder_ctx,
            _repository_store_ctx,
            _builtin_analyses_ctx,
            _processor_pool_ctx,
            _webhooks_ctx,
            _recorder_ctx,
            _live_pipeline_ctx,
            _job_queue_ctx,
            _watchers_ctx,
        ]
    )
    service.setup_routes(app)
    live.setup_routes(app)
    cameras.setup_routes(app)
    analysis.setup_routes(app)
    batch.setup_routes(app)
    ui.setup_routes(app)
    camera.setup_routes(app)  # last: `/{repo}` matches any single path segment
    return app
