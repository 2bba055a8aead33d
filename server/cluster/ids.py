"""Unused session ids in Redis, so that an id issued by any process is accepted by any other.

Layout under ``[cluster] prefix``: ``ids`` is a sorted set of every unused id scored with its
expiry, ``ids:addr:ADDRESS`` the same for one client address (for ``max_pending_per_ip``), and
``id:ID`` the id's record (camera, address, expiry), expiring with it. Issuing and taking are each
one Lua script, so they are atomic: the caps hold across the cluster, and of two processes taking
one id at the same moment exactly one gets it. Times are Redis's clock (``TIME``), the one clock
every process shares.
"""

from __future__ import annotations

import json

from server.cluster.link import RedisLink
from server.errors import TooManyPendingSessions
from server.live.sessions import PendingId, new_session_id, too_many_pending
from server.settings import SessionSettings

# KEYS: ids, ids:addr:A, id:ID. ARGV: ttl, max_pending, max_per_address, id, camera, address.
# 0 when issued; 1 or 2 when the total or the address is over its cap.
_ISSUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 2 end
local expires = now + ttl
local ms = math.ceil(ttl * 1000)
redis.call('ZADD', KEYS[1], expires, ARGV[4])
redis.call('ZADD', KEYS[2], expires, ARGV[4])
redis.call('PEXPIRE', KEYS[2], ms)
redis.call('SET', KEYS[3],
    cjson.encode({camera = ARGV[5], address = ARGV[6], expires = expires}), 'PX', ms)
return 0
"""

# KEYS: ids, id:ID. ARGV: id, the prefix of the per-address keys. The record, or nil.
_TAKE = """
local record = redis.call('GET', KEYS[2])
if not record then return false end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', ARGV[2] .. cjson.decode(record).address, ARGV[1])
return record
"""

# KEYS: ids, ids:addr:A, id:ID. ARGV: id, record, expires. Put back until the original expiry.
_RESTORE = """
local t = redis.call('TIME')
local left = tonumber(ARGV[3]) - (tonumber(t[1]) + tonumber(t[2]) / 1e6)
if left <= 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2], 'PX', math.ceil(left * 1000))
return 1
"""

# KEYS: ids. The unused ids not yet expired.
_COUNT = """
local t = redis.call('TIME')
return redis.call('ZCOUNT', KEYS[1], '(' .. (tonumber(t[1]) + tonumber(t[2]) / 1e6), '+inf')
"""


class SharedSessionIds:
    """:class:`server.live.sessions.SessionIds` in Redis, for every process of a cluster."""

    def __init__(self, link: RedisLink, settings: SessionSettings) -> None:
        self._link = link
        self._settings = settings
        self._ids = link.key("ids")
        self._address_prefix = link.key("ids", "addr", "")
        self._issue = link.script(_ISSUE)
        self._take = link.script(_TAKE)
        self._restore = link.script(_RESTORE)
        self._count = link.script(_COUNT)

    def _keys(self, session_id: str, address: str) -> list[str]:
        return [self._ids, self._address_prefix + address, self._link.key("id", session_id)]

    async def issue(self, camera: str | None, address: str) -> str:
        session_id = new_session_id()
        settings = self._settings
        refused = await self._link.run(
            lambda client: self._issue(
                keys=self._keys(session_id, address),
                args=[
                    settings.ttl,
                    settings.max_pending,
                    settings.max_pending_per_ip,
                    session_id,
                    camera or "",
                    address,
                ],
                client=client,
            )
        )
        if refused:
            where = "in the cluster"
            raise TooManyPendingSessions(
                too_many_pending(settings, where, address if refused == 2 else None)
            )
        return session_id

    async def take(self, session_id: str) -> PendingId | None:
        record = await self._link.run(
            lambda client: self._take(
                keys=[self._ids, self._link.key("id", session_id)],
                args=[session_id, self._address_prefix],
                client=client,
            )
        )
        if record is None:
            return None
        fields = json.loads(record)
        return PendingId(float(fields["expires"]), fields["camera"] or None, fields["address"])

    async def restore(self, session_id: str, pending: PendingId) -> None:
        record = json.dumps(
            {"camera": pending.camera or "", "address": pending.address, "expires": pending.expires}
        )
        await self._link.run(
            lambda client: self._restore(
                keys=self._keys(session_id, pending.address),
                args=[session_id, record, pending.expires],
                client=client,
            )
        )

    async def count(self) -> int:
        return int(
            await self._link.run(lambda client: self._count(keys=[self._ids], client=client))
        )

    def clear(self) -> None:
        """Nothing to forget: the other processes still accept the ids this one issued."""
