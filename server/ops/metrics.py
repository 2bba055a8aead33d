"""Prometheus metrics of one app, exposed at ``GET /metrics`` (prometheus_client's text format).

Each app owns its own ``CollectorRegistry`` (no process-global default registry), so tests can
build many apps side by side. The components count what they do through the :class:`Metrics`
object they are handed; gauges of current state (sessions, viewers, jobs) read their value when
scraped; HTTP requests are counted by ``server.web.accounting`` into :class:`HttpRequestCounts`,
plain numbers turned into metric families at each scrape. framehub's own names start
with ``framehub_``; beside them, prometheus_client's process collector exports the standard
``process_*`` metrics (memory, CPU time, open file descriptors), read from ``/proc`` at each scrape.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

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


class PlainCounter:
    """A labelled counter kept as plain numbers, scraped as prometheus_client's ``Counter`` is
    (``NAME_total`` and ``NAME_created`` per label set, label values written with ``str()``).

    The library's children take a lock on every ``inc()``: 0.5 us, where adding to an int costs
    0.05 us, on requests of some 90 us (bench/camera.py). Only the event loop's thread may count.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self._name, self._documentation, self._labelnames = name, documentation, labelnames
        self._children: dict[tuple[Any, ...], _PlainChild] = {}

    def labels(self, *values: Any) -> _PlainChild:
        """The count of one label set (``str(value)`` of each when scraped)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _PlainChild()
        return child

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in self._children.items():
            family.add_metric([str(v) for v in values], child.value, created=child.created)
        yield family


class _PlainChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()

    def inc(self) -> None:
        self.value += 1


class HttpRequestCounts:
    """``framehub_http_requests`` and ``framehub_http_request_seconds``, kept as plain numbers.

    The families, samples and labels are those of a labelled prometheus_client ``Counter`` and
    ``Histogram`` (``_total``, ``_bucket``, ``_count``, ``_sum``, ``_created``), built when
    scraped. Counting into the library's children took a lock per ``inc()`` and walked the
    buckets on every ``observe()``: 3.0 us of each ``video.jpg`` request, where this takes 0.6
    (bench/camera.py), with two dict look-ups and a bisect, all on the event loop's thread.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._bounds = buckets
        # As prometheus_client writes the bounds (untyped in 0.26).
        self._les = [*(floatToGoString(b) for b in buckets), "+Inf"]  # type: ignore[no-untyped-call]
        self._requests = PlainCounter(
            "framehub_http_requests",
            "HTTP requests answered, by route pattern (or unmatched), method and status",
            ["route", "method", "status"],
        )
        # route -> [count per bucket (+Inf last), sum, created]
        self._timings: dict[str, list[Any]] = {}

    def count(self, route: str, method: str, status: int, seconds: float | None) -> None:
        """Count one HTTP answer, and time it unless ``seconds`` is None."""
        self._requests.labels(route, method, status).inc()
        if seconds is None:
            return
        timing = self._timings.get(route)
        if timing is None:
            timing = self._timings[route] = [[0] * len(self._les), 0.0, time.time()]
        timing[0][bisect.bisect_left(self._bounds, seconds)] += 1
        timing[1] += seconds

    def describe(self) -> list[Metric]:
        return [*self._requests.describe(), self._seconds_family()]

    def collect(self) -> Iterator[Metric]:
        yield from self._requests.collect()
        seconds = self._seconds_family()
        for route, (per_bucket, total, created) in self._timings.items():
            cumulative, buckets = 0, []
            for le, count in zip(self._les, per_bucket, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            seconds.add_metric([route], buckets, total)
            seconds.samples.append(Sample(f"{seconds.name}_created", {"route": route}, created))
        yield seconds

    @staticmethod
    def _seconds_family() -> HistogramMetricFamily:
        return HistogramMetricFamily(
            "framehub_http_request_seconds",
            "Time to answer an HTTP request, by route pattern; streams and Socket.IO not included",
            labels=["route"],
        )


class Metrics:
    """Every metric framehub exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        Info("framehub_build", "The running framehub", registry=r).info(
            {"version": metadata.version("framehub")}
        )
        self.http_requests = HttpRequestCounts(_HTTP_BUCKETS)
        r.register(self.http_requests)
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
        self.camera_frames_served = PlainCounter(
            "framehub_camera_frames_served", "Frames handed out by the virtual camera", ["endpoint"]
        )
        r.register(self.camera_frames_served)
        # The count of the hottest route, taken once rather than looked up per request.
        self.video_jpg_served = self.camera_frames_served.labels("video.jpg")
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
