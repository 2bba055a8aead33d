"""The built-in processors, ``summary`` and ``motion``, called in-process.

A ``[processors.NAME]`` table with ``builtin = "summary"`` (or ``"motion"``) is served here rather
than over HTTP: :meth:`BuiltinAnalyses.analyse` runs :func:`server.media.analysis.analyse_clip` on
the analysis executor, a bounded pool of its own (``[clips] analysis_threads``) so that decoding
can never starve ingest's threads. When several built-ins get the same clip, it is decoded once.
``POST /analyze/{kind}`` serves outside callers through the same method, so both give the same
answers. Nothing here goes through the server's own port, so a stop that has closed the listener
still analyses every last clip.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from server.settings import Settings


class BuiltinAnalyses:
    """The analysis executor and the calls that use it; one per app, see ``server.app``."""

    def __init__(self, settings: Settings) -> None:
        self._max_pixels = settings.frames.max_pixels
        self._executor = ThreadPoolExecutor(
            settings.clips.analysis_threads, thread_name_prefix="analysis"
        )

    async def analyse(self, source: bytes | Path, kinds: Sequence[str]) -> dict[str, Any]:
        """``{kind: answer}`` for a clip (bytes) or a checked video file; ClipUnreadable if the
        source does not decode."""
        # Imported on first use: PyAV costs ~17 MB, which a server used only as a camera saves.
        from server.media.analysis import analyse_clip

        job = functools.partial(analyse_clip, source, list(kinds), self._max_pixels)
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def close(self) -> None:
        """Wait for the analyses still running, then stop the threads."""
        await asyncio.to_thread(self._executor.shutdown, True)
