"""Locks with an expiry in Redis, for work only one process of a cluster may do at a time.

:meth:`SharedLocks.hold` takes ``lock:NAME`` with ``SET NX PX [cluster] lease``, renews it every
third of the lease while held, and releases it only if it is still its own (a lock whose holder
died expires by itself, and is then taken by the next waiter). The repository store holds one per
download, so that processes sharing ``[repositories] dir`` download each archive once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from server.cluster.link import RedisLink
from server.errors import ClusterUnavailable
from server.ops.tasks import cancel_and_wait

_LOGGER = logging.getLogger(__name__)

# How often a process waiting for a lock asks again.
POLL = 0.2

# KEYS: lock. ARGV: token, ms. Renew, or delete with ms = 0, only the holder's own lock.
_RENEW_OR_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


class SharedLocks:
    """Named locks shared by the processes of a cluster."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._lease_ms = max(1, round(link.lease * 1000))
        self._renew_or_release = link.script(_RENEW_OR_RELEASE)

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Wait for lock ``name`` and hold it for the block. While Redis does not answer, the block
        runs without it: the work goes on alone rather than not at all."""
        key = self._link.key("lock", name)
        token = secrets.token_hex(16)
        try:
            # Polled: the holder's release is not announced, and a dead holder's lock expires
            # without one.
            while not await self._link.run(  # noqa: ASYNC110
                lambda client: client.set(key, token, nx=True, px=self._lease_ms)
            ):
                await asyncio.sleep(POLL)
            held = True
        except ClusterUnavailable:
            _LOGGER.warning("lock %s: Redis is down; going ahead without it", name)
            held = False
        if not held:
            yield
            return
        renewal = asyncio.create_task(self._renew(key, token), name=f"lock-{name}")
        try:
            yield
        finally:
            await cancel_and_wait([renewal])
            with contextlib.suppress(ClusterUnavailable):  # it expires by itself then
                await self._update(key, token, 0)

    async def _update(self, key: str, token: str, ms: int) -> None:
        await self._link.run(
            lambda client: self._renew_or_release(keys=[key], args=[token, ms], client=client)
        )

    async def _renew(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._link.lease / 3)
            with contextlib.suppress(ClusterUnavailable):
                await self._update(key, token, self._lease_ms)
