"""Typed keys for everything the app shares between handlers; no module-level state anywhere."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import socketio
from aiohttp import web

from server.lifecycle import Lifecycle
from server.metrics import Metrics
from server.processors import ProcessorPool
from server.settings import Settings
from server.store.jobs import JobQueue
from server.store.repositories import RepositoryStore
from server.store.sessions import SessionRegistry

settings_key = web.AppKey("settings", Settings)
client_session_key = web.AppKey("client_session", aiohttp.ClientSession)
repository_store_key = web.AppKey("repository_store", RepositoryStore)
placeholder_key = web.AppKey("placeholder_jpeg", bytes)
socketio_key = web.AppKey("socketio", socketio.AsyncServer)
socketio_transports_key = web.AppKey("socketio_transports", set[asyncio.BaseTransport])
encoder_executor_key = web.AppKey("encoder_executor", ThreadPoolExecutor)
analysis_executor_key = web.AppKey("analysis_executor", ThreadPoolExecutor)
processor_pool_key = web.AppKey("processor_pool", ProcessorPool)
session_registry_key = web.AppKey("session_registry", SessionRegistry)
job_queue_key = web.AppKey("job_queue", JobQueue)
lifecycle_key = web.AppKey("lifecycle", Lifecycle)
metrics_key = web.AppKey("metrics", Metrics)
