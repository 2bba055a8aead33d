"""Where the process is in its life: starting, ready, stopping; and what systemd is told of it.

:class:`Lifecycle` is created by ``create_app``. ``server.cli`` calls :meth:`Lifecycle.ready` once
the site listens (the cleanup contexts, the repository store among them, have run by then) and
:meth:`Lifecycle.stop` when SIGTERM or SIGINT arrives; the app's ordered stop calls it too, so a
test server stopping goes the same way. From :meth:`stop` on, :attr:`Lifecycle.deadline` is when
the whole stop must be over (``[server] shutdown_timeout`` later). Long-lived handlers (MJPEG
streams) wait on :attr:`Lifecycle.stopping` so they end at once instead of holding the stop up.
``/readyz`` reads :attr:`Lifecycle.is_ready`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from server.ops.systemd import Notifier

_LOGGER = logging.getLogger(__name__)


class Lifecycle:
    """Readiness and shutdown state of the app, mirrored to systemd via sd_notify."""

    def __init__(self, notifier: Notifier, shutdown_timeout: float) -> None:
        self.notifier = notifier
        self.listening = False
        self.stopping = asyncio.Event()
        self.deadline = float("inf")
        # Set by the app's ordered stop (server.app.stop), which runs once.
        self.stop_begun = False
        self._shutdown_timeout = shutdown_timeout
        self.status: Callable[[], str] = lambda: "starting"

    @property
    def is_ready(self) -> bool:
        """Listening and not shutting down."""
        return self.listening and not self.stopping.is_set()

    def ready(self) -> None:
        """The server listens and its state is loaded: tell systemd ``READY=1``."""
        self.listening = True
        self.notifier.notify("READY=1", f"STATUS={self.status()}")
        _LOGGER.info("ready: %s", self.status())

    def stop(self) -> None:
        """Shutdown begins: readiness drops, streams end, systemd hears ``STOPPING=1``."""
        if self.stopping.is_set():
            return
        self.deadline = asyncio.get_running_loop().time() + self._shutdown_timeout
        self.stopping.set()
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        _LOGGER.info("stopping")
