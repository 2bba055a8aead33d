"""Ending background tasks: the one way every part of framehub stops the tasks it started."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def cancel_and_wait(tasks: Collection[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended; their own errors are theirs to report."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def wait_then_cancel(tasks: Collection[asyncio.Future[Any]], deadline: float) -> None:
    """Let ``tasks`` finish until ``deadline`` (event loop time), then cancel what is left."""
    if not tasks:
        return
    timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
    _, late = await asyncio.wait(tasks, timeout=timeout)
    await cancel_and_wait(late)
