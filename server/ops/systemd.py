"""The sd_notify protocol, spoken directly: readiness, watchdog pings, status and stopping.

systemd passes ``$NOTIFY_SOCKET`` (a unix datagram socket path; a leading ``@`` means the abstract
namespace) to a ``Type=notify`` service and, with ``WatchdogSec=``, ``$WATCHDOG_USEC``. We send
``READY=1`` once the server listens and the store is loaded, ``WATCHDOG=1`` from a task on the
event loop every half watchdog interval (so a blocked loop misses its pings and systemd restarts
the service), ``STATUS=...`` with live counts, and ``STOPPING=1`` on shutdown. Without the
variable every call is a no-op. See sd_notify(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

_LOGGER = logging.getLogger(__name__)

# How often STATUS= is refreshed when systemd runs no watchdog.
STATUS_PERIOD = 10.0


class Notifier:
    """Sends sd_notify messages to the socket named in the environment, if any.

    The socket is opened by :meth:`open` and released by :meth:`close`, both called by the app's
    cleanup context for it; before and after, every call is a no-op.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._socket: socket.socket | None = None
        self.watchdog_interval = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given and is open."""
        return self._socket is not None

    def open(self) -> None:
        """Open the datagram socket, when the environment names one."""
        if self._address and self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    def notify(self, *fields: str) -> None:
        """Send ``KEY=value`` fields as one datagram; errors are logged, never raised."""
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            _LOGGER.warning("sd_notify failed: %s", exc.strerror or exc)

    def close(self) -> None:
        """Release the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def keep_alive(self, status: Callable[[], str]) -> None:
        """Until cancelled, send ``STATUS=`` and, with a watchdog, ``WATCHDOG=1`` every half interval.

        Running on the event loop is the point: when the loop is blocked the pings stop.
        """
        if self._socket is None:
            return
        period = self.watchdog_interval / 2 if self.watchdog_interval else STATUS_PERIOD
        while True:
            fields = [f"STATUS={status()}"]
            if self.watchdog_interval:
                fields.insert(0, "WATCHDOG=1")
            self.notify(*fields)
            await asyncio.sleep(period)


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds of ``WATCHDOG_USEC`` when it is meant for this process (``WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
