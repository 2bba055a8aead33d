"""Where each virtual-camera client is in each repository, for clients that keep no cookie.

``GET /{repo}/video.jpg?client=ID`` names its client; :class:`ClientCursors` keeps that client's
next position per repository in memory, the most recently seen ``[camera] max_clients`` clients
only (a least-recently-used order), so a dashboard that cannot keep cookies still walks a
repository frame by frame, and a flood of made-up ids costs bounded memory. A client seen for the
first time, or forgotten, starts at frame 0.

Clients sending neither an id nor a cursor cookie get the frame *playing now* instead
(:meth:`server.store.repositories.Repository.playing_now`).
"""

from __future__ import annotations

import re
from collections import OrderedDict

from server.errors import InvalidParameter

CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
CLIENT_ID_RULE = "1 to 64 letters, digits, '.', '_' or '-'"
# Repositories remembered per client, as in the cookie: the most recently used ones.
MAX_REPOSITORIES_PER_CLIENT = 16


def check_client_id(client: str) -> str:
    """``client`` when it is a valid id; :class:`InvalidParameter` naming the rule otherwise."""
    if CLIENT_ID.fullmatch(client) is None:
        raise InvalidParameter(f"client must be {CLIENT_ID_RULE}, not {client[:80]!r}")
    return client


class ClientCursors:
    """The next position of each named client in each repository, for the newest clients."""

    def __init__(self, max_clients: int) -> None:
        self._max_clients = max_clients
        self._clients: OrderedDict[str, OrderedDict[str, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def position(self, client: str, repository: str) -> int:
        """Where ``client`` is in ``repository``: 0 when it was never seen there (or forgotten)."""
        cursors = self._clients.get(client)
        return 0 if cursors is None else cursors.get(repository, 0)

    def move(self, client: str, repository: str, position: int) -> None:
        """Remember ``position`` as ``client``'s next one in ``repository``."""
        cursors = self._clients.pop(client, None)
        if cursors is None:
            cursors = OrderedDict()
            while len(self._clients) >= self._max_clients:
                self._clients.popitem(last=False)
        self._clients[client] = cursors
        cursors.pop(repository, None)
        cursors[repository] = position
        while len(cursors) > MAX_REPOSITORIES_PER_CLIENT:
            cursors.popitem(last=False)
