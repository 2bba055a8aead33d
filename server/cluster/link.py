"""The Redis connection of a cluster: one client, its health, the nodes alive and pub/sub.

Only this module imports redis (the extra ``framehub[cluster]``); the rest of ``server.cluster``
holds the data layout and talks to Redis through :class:`RedisLink`.

Data flow: :meth:`RedisLink.start` connects and pings once, so a Redis that is down at start stops
the server with one line. Every operation then goes through :meth:`RedisLink.run`: an error marks
the link down (logged once, counted in ``framehub_cluster_errors_total``, and
``framehub_cluster_redis_up`` drops to 0) and is raised as :class:`ClusterUnavailable`, a 503; while
the link is down, operations fail at once without waiting on the network. A background task
(:meth:`_beat`) writes this node's heartbeat every :attr:`beat` seconds (the sorted set of nodes
alive, scored with Redis's clock, so boxes with skewed clocks agree), runs the beat hooks the
other parts registered (the camera snapshot, for one) and, when the link is down, pings until Redis
answers again, then logs the recovery. One pub/sub connection (:meth:`_listen`) carries every
channel subscribed; it reconnects by itself, with a backoff, and re-subscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import socketio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from server.errors import ClusterUnavailable
from server.ops.metrics import Metrics
from server.ops.tasks import cancel_and_wait
from server.settings import Settings

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")
Handler = Callable[[bytes], None]
BeatHook = Callable[[], Awaitable[None]]

# Redis on the same box or LAN answers in well under a millisecond; a Redis that takes longer than
# this is treated as lost, so that a request never hangs on it.
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0
# The pub/sub connection's reconnect backoff: from the first to the longest wait, doubling.
RECONNECT_FIRST = 0.5
RECONNECT_LONGEST = 10.0
DOWN = "Redis ([cluster] redis_url) is unreachable: this feature needs the cluster; retry shortly"


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisLink:
    """The one Redis client of a node, and whether Redis answers."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._cluster = settings.cluster
        self.node = settings.node
        self.lease = self._cluster.lease
        # Three beats per lease: a node misses two before the others take it for dead.
        self.beat = self._cluster.lease / 3
        self._metrics = metrics
        self.client = aioredis.Redis.from_url(
            self._cluster.redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            # One quick retry for a connection the server closed meanwhile; no backoff, since a
            # request waits on it.
            retry=Retry(NoBackoff(), 1),
        )
        self.up = False
        self._handlers: dict[bytes, Handler] = {}
        self._pubsub: Any = None
        self._beat_hooks: list[BeatHook] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        metrics.cluster_redis_up.set_function(lambda: int(self.up))

    def key(self, *parts: str) -> str:
        """A Redis key or channel name under ``[cluster] prefix``."""
        return ":".join((self._cluster.prefix, *parts))

    async def start(self) -> None:
        """Connect and ping; ClusterUnavailable in one line when Redis does not answer."""
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            await self.client.aclose()
            raise ClusterUnavailable(
                f"cannot reach Redis at {redacted(self._cluster.redis_url)} "
                f"([cluster] redis_url): {exc}"
            ) from None
        self.up = True
        await self._heartbeat()
        self._tasks = [
            asyncio.create_task(self._beat(), name="cluster-beat"),
            asyncio.create_task(self._listen(), name="cluster-pubsub"),
        ]
        _LOGGER.info("cluster: node %s on Redis %s", self.node, redacted(self._cluster.redis_url))

    async def close(self) -> None:
        """Leave the cluster: stop the tasks, drop this node's heartbeat, close the client."""
        await cancel_and_wait(self._tasks)
        if self.up:
            with contextlib.suppress(RedisError, OSError):
                await self.client.zrem(self.key("nodes"), self.node)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        await self.client.aclose()

    async def run(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """``operation(client)``; ClusterUnavailable (503) while Redis does not answer."""
        if not self.up:
            raise ClusterUnavailable(DOWN)
        try:
            return await operation(self.client)
        except (RedisError, OSError) as exc:
            self.lost(exc)
            raise ClusterUnavailable(DOWN) from None

    def lost(self, exc: BaseException) -> None:
        """An operation failed: count it, and mark the link down (logged once until it is back)."""
        self._metrics.cluster_errors.inc()
        if self.up:
            self.up = False
            _LOGGER.warning(
                "cluster: Redis unreachable (%s); cluster features pause, this node goes on alone",
                exc,
            )

    def script(self, source: str) -> Any:
        """A Lua script, sent by hash after its first run (EVALSHA)."""
        return self.client.register_script(source)

    def on_beat(self, hook: BeatHook) -> None:
        """Run ``hook`` at every heartbeat while Redis answers, and at once when it is back."""
        self._beat_hooks.append(hook)

    async def alive_nodes(self) -> list[str]:
        """Every node whose heartbeat is younger than ``[cluster] lease``, this one included."""

        async def read(client: aioredis.Redis) -> list[bytes]:
            now = await self._redis_time(client)
            nodes = await client.zrangebyscore(self.key("nodes"), now - self.lease, "+inf")
            return cast(list[bytes], nodes)

        return [node.decode() for node in await self.run(read)]

    async def node_alive(self, node: str) -> bool:
        """Whether ``node`` gave a sign of life within the lease."""
        return node in await self.alive_nodes()

    async def publish(self, channel: str, message: bytes) -> None:
        """Publish on ``channel``; ClusterUnavailable while Redis does not answer."""
        await self.run(lambda client: client.publish(channel, message))

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(message)`` for every message on ``channel`` from now on (kept across
        reconnections); best effort while Redis is down, as the listener subscribes again."""
        self._handlers[channel.encode()] = handler
        if self._pubsub is not None and self.up:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        """No more messages of ``channel``."""
        self._handlers.pop(channel.encode(), None)
        if self._pubsub is not None and self.up:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    @staticmethod
    async def _redis_time(client: aioredis.Redis) -> float:
        seconds, micros = await client.time()
        return float(seconds) + micros / 1e6

    async def _heartbeat(self) -> None:
        async def beat(client: aioredis.Redis) -> None:
            now = await self._redis_time(client)
            async with client.pipeline(transaction=False) as pipe:
                pipe.zadd(self.key("nodes"), {self.node: now})
                # Nodes silent for ten leases are forgotten altogether.
                pipe.zremrangebyscore(self.key("nodes"), "-inf", now - 10 * self.lease)
                await pipe.execute()

        await self.run(beat)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.beat)
            if not self.up:
                try:
                    await self.client.ping()
                except (RedisError, OSError):
                    continue
                self.up = True
                _LOGGER.warning("cluster: Redis answers again; cluster features resume")
            with contextlib.suppress(ClusterUnavailable):
                await self._heartbeat()
                for hook in self._beat_hooks:
                    await hook()

    async def _listen(self) -> None:
        wait = RECONNECT_FIRST
        while True:
            try:
                self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                # A pub/sub connection needs a channel before it can be read: this node's own.
                await self._pubsub.subscribe(self.key("node", self.node), *self._handlers)
                wait = RECONNECT_FIRST
                while True:
                    message = await self._pubsub.get_message(timeout=None)
                    if message is None or message["type"] != "message":
                        continue
                    handler = self._handlers.get(message["channel"])
                    if handler is not None:
                        try:
                            handler(message["data"])
                        except Exception:  # one bad message must not stop the others
                            _LOGGER.exception("cluster: message on %s", message["channel"])
            except (RedisError, OSError) as exc:
                self.lost(exc)
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()
                self._pubsub = None
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT_LONGEST)


class NewestWriter(Generic[V]):
    """Writes the newest value of each key to Redis, all waiting keys in one pipeline per round
    trip: while Redis is busy or down, a key written again replaces its value in waiting instead
    of queueing behind it, so memory holds one value per key and the writes of one key stay in
    order. ``write(pipe, key, value)`` queues the commands of one value."""

    def __init__(self, link: RedisLink, write: Callable[[Any, str, V], None], name: str):
        self._link = link
        self._write = write
        self._name = name
        self._waiting: dict[str, V] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start writing (on the running loop)."""
        self._task = asyncio.create_task(self._run(), name=self._name)

    def put(self, key: str, value: V) -> None:
        """Write ``value`` soon; a later put of ``key`` before then replaces it."""
        self._waiting[key] = value
        self._wake.set()

    def drop(self, key: str) -> None:
        """Forget the value of ``key`` still waiting."""
        self._waiting.pop(key, None)

    async def close(self) -> None:
        """Stop; what still waits is written once if Redis answers."""
        if self._task is not None:
            await cancel_and_wait([self._task])
        with contextlib.suppress(ClusterUnavailable):
            await self._flush()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            with contextlib.suppress(ClusterUnavailable):  # logged and counted by the link
                await self._flush()

    async def _flush(self) -> None:
        if not self._waiting:
            return
        values, self._waiting = self._waiting, {}

        async def write(client: aioredis.Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for key, value in values.items():
                    self._write(pipe, key, value)
                await pipe.execute()

        await self._link.run(write)


class QuietRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager, its failures told through the link.

    While Redis is down it would log two errors per emit; the link logs once and counts instead,
    and a result for a client of this node still reaches it (the manager emits locally first).
    """

    def __init__(self, link: RedisLink, url: str, channel: str) -> None:
        super().__init__(
            url,
            channel=channel,
            logger=_ManagerLogger(link),
            redis_options={
                "socket_connect_timeout": CONNECT_TIMEOUT,
                "socket_timeout": COMMAND_TIMEOUT,
            },
        )


class _ManagerLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The manager's logger: its errors mark the link down (logged once there); the rest is
    debug."""

    def __init__(self, link: RedisLink) -> None:
        super().__init__(logging.getLogger("socketio.redis"), {})
        self._link = link
        self._last = 0.0

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        # Counted once a second at most: each failed emit logs twice.
        now = time.monotonic()
        if now - self._last >= 1.0:
            self._last = now
            self._link.lost(ConnectionError(str(kwargs.get("extra", {}).get("redis_exception"))))
        self.logger.debug(msg, *args, **kwargs)
