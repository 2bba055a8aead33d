"""This process as a node of a cluster: every shared part, built from the settings in one place.

``server.app`` builds a :class:`ClusterNode` when ``[cluster] redis_url`` is set, hands its parts
to the components that share state (the session registry, the camera registry, the batch queue,
the repository store, the Socket.IO server), starts it first among the app's resources and closes
it last.
"""

from __future__ import annotations

import asyncio
import contextlib

from server.cluster.cameras import SharedCameras
from server.cluster.ids import SharedSessionIds
from server.cluster.jobs import SharedJobs
from server.cluster.link import QuietRedisManager, RedisLink
from server.cluster.locks import SharedLocks
from server.ops.metrics import Metrics
from server.ops.tasks import cancel_and_wait
from server.settings import Settings


class ClusterNode:
    """The shared parts of this process; see the module docstring."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.link = RedisLink(settings, metrics)
        self.node = self.link.node
        self.session_ids = SharedSessionIds(self.link, settings.sessions)
        self.cameras = SharedCameras(self.link, settings)
        self.jobs = SharedJobs(self.link, settings)
        self.locks = SharedLocks(self.link)
        self.socketio_manager = QuietRedisManager(
            self.link, settings.cluster.redis_url, channel=self.link.key("socketio")
        )
        metrics.label_node(self.node)

    async def start(self) -> None:
        """Join: ClusterUnavailable in one line when Redis does not answer."""
        await self.link.start()
        self.jobs.start()

    async def close(self) -> None:
        """Leave: write what waits, drop the heartbeat, close the connections (the Socket.IO
        manager's too: python-socketio starts its listener at the first connection and leaves
        it running)."""
        await self.jobs.close()
        await self.link.close()
        listener = getattr(self.socketio_manager, "thread", None)
        if isinstance(listener, asyncio.Task):
            await cancel_and_wait([listener])
        client = getattr(self.socketio_manager, "redis", None)
        if client is not None:
            with contextlib.suppress(Exception):  # closing a connection Redis already dropped
                await client.aclose()
