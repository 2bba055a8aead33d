"""Live cameras across the processes of a cluster: who owns each, its newest frame and result, and
every node's list, in Redis.

Layout under ``[cluster] prefix``:

- ``camera:NAME:owner``: ``NODE SID`` of the session streaming it, expiring after ``[cluster]
  lease`` unless its node renews it at each heartbeat. Claimed by one Lua script, so a takeover
  across processes is atomic; the node that lost the camera is told on its own channel
  ``node:NODE`` and ends that session.
- ``camera:NAME:frame``: the newest frame (a JSON header line, then the bytes), expiring after the
  lease unless renewed with the claim, and the same published on channel ``camera:NAME:frames`` for the nodes that have viewers
  of it. Frames go through a :class:`server.cluster.link.NewestWriter`, which keeps only the
  newest frame of each camera while Redis is busy: a fast camera costs Redis at most one write
  per round trip, and the event loop a dict assignment per frame.
- ``camera:NAME:result``: the newest result, kept ``[live] keep`` seconds.
- channel ``events``: every camera's ``online``, ``offline`` and ``result`` events, with the node
  they come from, for the nodes with Server-Sent Events subscribers of it.
- ``cameras:NODE``: the node's ``GET /live`` entries, rewritten at each heartbeat and at once when
  a camera goes online or offline, expiring after the lease: a node that dies drops out by itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from server.cluster.link import NewestWriter, RedisLink
from server.errors import CameraTaken
from server.live.cameras import LatestFrame
from server.settings import Settings

if TYPE_CHECKING:
    from server.live.cameras import CameraRegistry

_LOGGER = logging.getLogger(__name__)

# KEYS: owner. ARGV: "NODE SID", lease ms, takeover (1/0), this node. The previous owner, or nil;
# with takeover off and a session of another node owning it, "taken:" and that owner, unchanged.
_CLAIM = """
local old = redis.call('GET', KEYS[1])
if old and ARGV[3] == '0' and string.sub(old, 1, #ARGV[4] + 1) ~= ARGV[4] .. ' ' then
    return 'taken:' .. old
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return old
"""

# KEYS: owner, frame. ARGV: "NODE SID", lease ms. Renew this session's claim and its newest frame
# (a camera that sends nothing for a while still shows its last frame everywhere), or make the
# claim again when the key is gone (Redis restarted empty, or was away past the lease); never undo
# another's takeover.
_RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: owner, frame. ARGV: "NODE SID". Delete both only while this session still owns it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1], KEYS[2])
    return 1
end
return 0
"""


def encode_frame(frame: LatestFrame, node: str) -> bytes:
    """A frame as kept in Redis: a JSON header line, then the bytes as the client sent them."""
    header = {
        "serial": frame.serial,
        "number": frame.number,
        "content_type": frame.content_type,
        "ts": frame.ts,
        "node": node,
    }
    return json.dumps(header).encode() + b"\n" + frame.data


def decode_frame(payload: bytes) -> tuple[LatestFrame, str]:
    """The frame of :func:`encode_frame`, and the node that wrote it."""
    line, data = payload.split(b"\n", 1)
    header = json.loads(line)
    frame = LatestFrame(
        header["serial"], header["number"], data, header["content_type"], header["ts"]
    )
    return frame, header["node"]


class SharedCameras:
    """The cluster side of :class:`server.live.cameras.CameraRegistry`."""

    def __init__(self, link: RedisLink, settings: Settings) -> None:
        self._link = link
        self.node = link.node
        self._takeover = settings.live.takeover
        self._keep = settings.live.keep
        self._lease_ms = max(1, round(link.lease * 1000))
        self._claim = link.script(_CLAIM)
        self._release = link.script(_RELEASE)
        self._renew = link.script(_RENEW)
        self._registry: CameraRegistry | None = None
        self._owned: dict[str, str] = {}  # camera name -> "NODE SID", renewed at each heartbeat
        self._frames: NewestWriter[LatestFrame] | None = None
        self.taken_over: Callable[[str], None] = lambda sid: None

    def _key(self, name: str, part: str) -> str:
        return self._link.key("camera", name, part)

    async def start(self, registry: CameraRegistry) -> None:
        """Listen for the events and this node's takeovers; write frames and snapshots."""
        self._registry = registry
        await self._link.subscribe(self._link.key("events"), self._on_event)
        await self._link.subscribe(self._link.key("node", self.node), self._on_control)
        self._link.on_beat(self._refresh)
        self._frames = NewestWriter(self._link, self._write_frame, "cluster-frames")
        self._frames.start()

    async def close(self) -> None:
        """Stop writing; the cameras of this node expire with their lease, or were released."""
        if self._frames is not None:
            await self._frames.close()

    def _write_frame(self, pipe: Any, name: str, frame: LatestFrame) -> None:
        payload = encode_frame(frame, self.node)
        pipe.set(self._key(name, "frame"), payload, px=self._lease_ms)
        pipe.publish(self._key(name, "frames"), payload)

    # ---- the owning node ------------------------------------------------------------------

    async def claim(self, name: str, sid: str) -> None:
        """Camera ``name`` for session ``sid`` of this node, across the cluster; CameraTaken when
        a session of another node owns it and takeover is off. That session is told to end."""
        owner = f"{self.node} {sid}"
        previous = await self._link.run(
            lambda client: self._claim(
                keys=[self._key(name, "owner")],
                args=[owner, self._lease_ms, int(self._takeover), self.node],
                client=client,
            )
        )
        if previous is not None and previous.startswith(b"taken:"):
            raise CameraTaken(
                f"camera {name!r} is already streaming on {previous[6:].split()[0].decode()}; "
                "connect under another name ([live] takeover = false)"
            )
        self._owned[name] = owner
        if previous is not None:
            old_node, old_sid = previous.decode().split(" ", 1)
            if old_node != self.node:
                message = json.dumps({"end": old_sid, "camera": name}).encode()
                await self._link.publish(self._link.key("node", old_node), message)
        await self._refresh()

    async def release(self, name: str, sid: str) -> None:
        """Session ``sid`` left camera ``name``: the cluster stops showing it, unless another
        session owns it by now."""
        owner = f"{self.node} {sid}"
        if self._owned.get(name) == owner:
            del self._owned[name]
        if self._frames is not None:
            self._frames.drop(name)
        await self._link.run(
            lambda client: self._release(
                keys=[self._key(name, "owner"), self._key(name, "frame")],
                args=[owner],
                client=client,
            )
        )
        await self._refresh()

    def frame(self, name: str, frame: LatestFrame) -> None:
        """A new frame of a camera of this node: written to Redis soon, only the newest kept."""
        if name in self._owned and self._frames is not None:
            self._frames.put(name, frame)

    async def announce(self, name: str, event: str, body: dict[str, Any]) -> None:
        """Tell the other nodes an event of a camera of this node; a result is also kept."""
        message = json.dumps({"node": self.node, "camera": name, "event": event, "body": body})

        async def send(client: Any) -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.publish(self._link.key("events"), message)
                if event == "result":
                    keep_ms = max(self._lease_ms, round(self._keep * 1000))
                    pipe.set(self._key(name, "result"), json.dumps(body), px=keep_ms)
                await pipe.execute()

        await self._link.run(send)

    async def _refresh(self) -> None:
        """The heartbeat of this node's cameras: renew what it owns, rewrite its list."""
        if self._registry is None:
            return
        snapshot = json.dumps(self._registry.describe_local())

        async def write(client: Any) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for name, owner in self._owned.items():
                    await self._renew(
                        keys=[self._key(name, "owner"), self._key(name, "frame")],
                        args=[owner, self._lease_ms],
                        client=pipe,
                    )
                pipe.set(self._link.key("cameras", self.node), snapshot, px=self._lease_ms)
                await pipe.execute()

        await self._link.run(write)

    def _on_control(self, message: bytes) -> None:
        order = json.loads(message)
        sid = order.get("end")
        if isinstance(sid, str):
            _LOGGER.info(
                "camera %s taken over on another node: ending %s", order.get("camera"), sid
            )
            self._owned.pop(str(order.get("camera")), None)
            self.taken_over(sid)

    # ---- any node ---------------------------------------------------------------------------

    async def describe_others(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The ``GET /live`` entries of every other node alive, by node."""
        nodes = [node for node in await self._link.alive_nodes() if node != self.node]
        if not nodes:
            return {}
        keys = [self._link.key("cameras", node) for node in nodes]
        snapshots = await self._link.run(lambda client: client.mget(keys))
        return {
            node: json.loads(snapshot or b"{}")
            for node, snapshot in zip(nodes, snapshots, strict=True)
        }

    async def owner_node(self, name: str) -> str | None:
        """The node whose session owns camera ``name`` now, if any."""
        owner = await self._link.run(lambda client: client.get(self._key(name, "owner")))
        return cast(bytes, owner).decode().split(" ", 1)[0] if owner is not None else None

    async def newest_frame(self, name: str) -> LatestFrame | None:
        """The newest frame of camera ``name`` on whichever node owns it, while it is online."""
        owner, payload = cast(
            list[bytes | None],
            await self._link.run(
                lambda client: client.mget([self._key(name, "owner"), self._key(name, "frame")])
            ),
        )
        if owner is None or payload is None:
            return None
        return decode_frame(payload)[0]

    async def newest_result(self, name: str) -> dict[str, Any] | None:
        """The newest result of camera ``name`` from any node, within ``[live] keep``."""
        body = await self._link.run(lambda client: client.get(self._key(name, "result")))
        return json.loads(body) if body is not None else None

    async def watch_frames(self, name: str, handler: Callable[[LatestFrame, str], None]) -> None:
        """``handler(frame, node)`` for every frame of camera ``name`` written from now on."""

        def on_message(payload: bytes) -> None:
            handler(*decode_frame(payload))

        await self._link.subscribe(self._key(name, "frames"), on_message)

    async def unwatch_frames(self, name: str) -> None:
        """No more frames of camera ``name``."""
        await self._link.unsubscribe(self._key(name, "frames"))

    def _on_event(self, message: bytes) -> None:
        event = json.loads(message)
        if event["node"] != self.node and self._registry is not None:
            self._registry.remote_event(
                event["camera"], event["node"], event["event"], event["body"]
            )
