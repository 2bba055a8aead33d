"""A byte-bounded LRU of small frame files, so hot frames are answered without touching the disk.

Keys carry the file's size and modification time, so a frame replaced on disk is read again
instead of served stale. Frames larger than ``max_frame_bytes`` are never cached: the camera
handler sends those with sendfile.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple


class FrameKey(NamedTuple):
    """Identity of one version of a frame file."""

    path: str
    size: int
    mtime_ns: int


class FrameCache:
    """Least-recently-used frame bytes, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int, max_frame_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_frame_bytes = min(max_frame_bytes, max_bytes)
        self._entries: OrderedDict[FrameKey, bytes] = OrderedDict()
        self.size = 0

    def accepts(self, key: FrameKey) -> bool:
        """Whether a frame of this size is worth keeping."""
        return 0 < key.size <= self.max_frame_bytes

    def get(self, key: FrameKey) -> bytes | None:
        """The cached bytes, marking them recently used, or None."""
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
        return data

    def put(self, key: FrameKey, data: bytes) -> None:
        """Keep ``data``, evicting the least recently used frames beyond the budget."""
        if len(data) > self.max_frame_bytes or key in self._entries:
            return
        self._entries[key] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size -= len(evicted)

    def __len__(self) -> int:
        return len(self._entries)
