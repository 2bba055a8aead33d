"""Batch job records in Redis, so that ``GET /batch/{ID}`` answers on any process of a cluster.

The process that took the upload runs the job and writes its record, ``job:ID``, at every change
of status (through a :class:`server.cluster.link.NewestWriter`, so the writes of one job stay in
order); a finished job's record expires after ``[batch] keep``. A record also names the node
running it. Any process reading an unfinished record whose node has been silent for ``[cluster]
lease`` (it died, or lost Redis for good) marks it failed, so that no job stays "running" for ever.
"""

from __future__ import annotations

import json
from typing import Any

from server.batch.jobs import UNFINISHED, Job
from server.cluster.link import NewestWriter, RedisLink
from server.settings import Settings

# A record of an unfinished job outlives a cluster that lost every process by this much at most.
UNFINISHED_KEEP = 86400.0


def lost(node: str) -> str:
    """The error of a job whose process stopped giving signs of life."""
    return f"the process running this job ({node}) stopped before it finished"


class SharedJobs:
    """The cluster's batch job records."""

    def __init__(self, link: RedisLink, settings: Settings) -> None:
        self._link = link
        self._keep_ms = max(1, round(settings.batch.keep * 1000))
        self._writer = NewestWriter(link, self._write, "cluster-jobs")

    def _key(self, job_id: str) -> str:
        return self._link.key("job", job_id)

    def save(self, job: Job) -> None:
        """Write the job's record soon (this node runs it)."""
        record = {**job.to_json(), "upload": None, "node": self._link.node}
        self._writer.put(job.id, json.dumps(record).encode())

    def _write(self, pipe: Any, job_id: str, record: bytes) -> None:
        unfinished = json.loads(record)["status"] in UNFINISHED
        keep_ms = round(UNFINISHED_KEEP * 1000) if unfinished else self._keep_ms
        pipe.set(self._key(job_id), record, px=keep_ms)

    async def load(self, job_id: str) -> Job | None:
        """The job with this id as its node last wrote it, or None; failed if that node is gone."""
        record = await self._link.run(lambda client: client.get(self._key(job_id)))
        if record is None:
            return None
        fields = json.loads(record)
        node = fields.pop("node")
        job = Job.from_json(fields)
        if job.status in UNFINISHED and not await self._link.node_alive(node):
            job.end("failed", error=lost(node))
            await self._link.run(
                lambda client: client.set(
                    self._key(job_id),
                    json.dumps({**job.to_json(), "node": node}),
                    px=self._keep_ms,
                )
            )
        elif job.status not in UNFINISHED:
            job.finished.set()
        return job

    def start(self) -> None:
        """Start writing records."""
        self._writer.start()

    async def close(self) -> None:
        """Write what is still waiting, then stop."""
        await self._writer.close()
