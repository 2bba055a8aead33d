"""Prometheus metrics of one app, exposed at ``GET /metrics`` (prometheus_client's text format).

Each app owns its own ``CollectorRegistry`` (no process-global default registry), so tests can
build many apps side by side. The components count what they do through the :class:`Metrics`
object they are handed; gauges of current state (sessions, viewers, jobs) read their value when
scraped; HTTP requests are counted by ``server.web.http_metrics``. framehub's own names start
with ``framehub_``; beside them, prometheus_client's process collector exports the standard
``process_*`` metrics (memory, CPU time, open file descriptors), read from ``/proc`` at each scrape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

_LOGGER = logging.getLogger(__name__)

# How often the event loop is sampled for lag: a sleep of this length that overshoots measures it.
LAG_SAMPLE_PERIOD = 0.25
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A frame from the cache is answered in well under a millisecond; the first bucket is 1 ms.
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Labelled:
    """A registry's metrics with constant labels added to every sample."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        self._registry = registry
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={**self._labels, **sample.labels})
                for sample in family.samples
            ]
            yield labelled


class Metrics:
    """Every metric framehub exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        Info("framehub_build", "The running framehub", registry=r).info(
            {"version": metadata.version("framehub")}
        )
        self.http_requests = Counter(
            "framehub_http_requests",
            "HTTP requests answered, by route pattern (or unmatched), method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "framehub_http_request_seconds",
            "Time to answer an HTTP request, by route pattern; streams and Socket.IO not included",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        # labels() takes a lock and builds its key each call (~3 us): a request, ~100 us of work
        # at benchmark rates, keeps its labelled children here instead. Bounded as the labels are.
        self._http_counts: dict[tuple[str, str, int], Counter] = {}
        self._http_timings: dict[str, Histogram] = {}
        self.frames_received = Counter(
            "framehub_frames_received", "Live frames taken into a session queue", registry=r
        )
        self.frames_rejected = Counter(
            "framehub_frames_rejected",
            "Live frames refused (invalid: not an acceptable image; busy: queue full)",
            ["reason"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "framehub_frames_dropped", "Queued live frames dropped to make room", registry=r
        )
        self.clips_encoded = Counter(
            "framehub_clips_encoded", "Clips encoded", ["codec"], registry=r
        )
        self.clip_encode_seconds = Histogram(
            "framehub_clip_encode_seconds",
            "Time to encode one clip",
            ["codec"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.processor_requests = Counter(
            "framehub_processor_requests",
            "Requests to analysis APIs, by final outcome",
            ["processor", "outcome"],
            registry=r,
        )
        self.processor_seconds = Histogram(
            "framehub_processor_request_seconds",
            "Time for an analysis API to answer, retries included",
            ["processor"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.processor_errors = Counter(
            "framehub_processor_errors",
            "Failed attempts at analysis APIs, by kind",
            ["processor", "kind"],
            registry=r,
        )
        self.sessions_connected = Gauge(
            "framehub_sessions_connected", "Live Socket.IO sessions", registry=r
        )
        self.connections_open = Gauge(
            "framehub_connections_open", "Open HTTP connections (websockets included)", registry=r
        )
        self.connections_refused = Counter(
            "framehub_connections_refused",
            "Connections closed on accept or requests refused, by the limit that refused them",
            ["reason"],
            registry=r,
        )
        self.connections_timed_out = Counter(
            "framehub_connections_timed_out",
            "Connections closed for being too slow, by phase (headers, body)",
            ["phase"],
            registry=r,
        )
        self.repository_downloads = Counter(
            "framehub_repository_downloads",
            "Repository archive downloads, by outcome",
            ["outcome"],
            registry=r,
        )
        self.camera_frames_served = Counter(
            "framehub_camera_frames_served",
            "Frames handed out by the virtual camera",
            ["endpoint"],
            registry=r,
        )
        self.mjpeg_viewers = Gauge(
            "framehub_mjpeg_viewers", "Connected video.mjpg viewers", registry=r
        )
        self.batch_uploads = Counter(
            "framehub_batch_uploads", "Batch uploads, by outcome", ["outcome"], registry=r
        )
        self.batch_upload_bytes = Counter(
            "framehub_batch_upload_bytes", "Bytes received by POST /batch", registry=r
        )
        self.batch_jobs = Gauge(
            "framehub_batch_jobs", "Batch jobs known, by status", ["status"], registry=r
        )
        self.cameras_online = Gauge(
            "framehub_cameras_online", "Live cameras with a connected session", registry=r
        )
        self.live_viewers = Gauge(
            "framehub_live_viewers",
            "Viewers of live cameras (mjpeg: video.mjpg streams; events: Server-Sent Events)",
            ["kind"],
            registry=r,
        )
        self.recorded_frames = Counter(
            "framehub_recorded_frames", "Live frames written to a recording", ["camera"], registry=r
        )
        self.recording_dropped = Counter(
            "framehub_recording_dropped",
            "Live frames not recorded because the writer was behind or paused",
            ["camera"],
            registry=r,
        )
        self.recording_deleted = Counter(
            "framehub_recording_deleted",
            "Recorded frames deleted by retention",
            ["camera"],
            registry=r,
        )
        self.recording_errors = Counter(
            "framehub_recording_errors", "Failed recording writes", ["camera"], registry=r
        )
        self.recording_paused = Gauge(
            "framehub_recording_paused",
            "1 while a recording is paused after a write error",
            ["camera"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "framehub_webhook_deliveries",
            "Webhook events delivered or given up, by outcome",
            ["webhook", "outcome"],
            registry=r,
        )
        self.webhook_dropped = Counter(
            "framehub_webhook_dropped",
            "Webhook events dropped because the queue was full",
            ["webhook"],
            registry=r,
        )
        self.webhook_queued = Gauge(
            "framehub_webhook_queued", "Webhook events waiting", ["webhook"], registry=r
        )
        self.webhook_seconds = Histogram(
            "framehub_webhook_seconds",
            "Time to deliver one webhook event, retries included",
            ["webhook"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "framehub_event_loop_lag_seconds",
            "How late the event loop wakes a sleeping task",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.cluster_redis_up = Gauge(
            "framehub_cluster_redis_up",
            "1 while Redis ([cluster] redis_url) answers, 0 while it does not",
            registry=r,
        )
        self.cluster_errors = Counter(
            "framehub_cluster_errors",
            "Redis operations that failed (the cluster's features pause until Redis answers)",
            registry=r,
        )
        # In a cluster every sample carries the node's name (label_node).
        self._node_labels: dict[str, str] = {}

    def label_node(self, node: str) -> None:
        """Label every sample of :meth:`exposition` with ``node="NODE"``."""
        self._node_labels = {"node": node}

    def exposition(self) -> bytes:
        """Every metric in Prometheus text format, as ``GET /metrics`` answers."""
        if not self._node_labels:
            return generate_latest(self.registry)
        return generate_latest(_Labelled(self.registry, self._node_labels))

    def count_http_request(
        self, route: str, method: str, status: int, seconds: float | None
    ) -> None:
        """Count one HTTP answer, and time it unless ``seconds`` is None."""
        key = (route, method, status)
        count = self._http_counts.get(key)
        if count is None:
            count = self._http_counts[key] = self.http_requests.labels(route, method, status)
        count.inc()
        if seconds is None:
            return
        timing = self._http_timings.get(route)
        if timing is None:
            timing = self._http_timings[route] = self.http_request_seconds.labels(route)
        timing.observe(seconds)

    async def watch_event_loop(self) -> None:
        """Until cancelled, sample how late the loop wakes a task; log stalls over 100 ms."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_SAMPLE_PERIOD)
            lag = max(loop.time() - before - LAG_SAMPLE_PERIOD, 0.0)
            self.event_loop_lag.observe(lag)
            if lag > 0.1:
                _LOGGER.warning("event loop stalled for %.0f ms", lag * 1000)
