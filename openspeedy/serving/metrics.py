"""OpenSpeedy's Prometheus metrics on Triton's metrics endpoint (:8002/metrics), via python-backend
custom metrics. Families are attributes of a long-lived object: a family that goes out of scope is
deleted by the backend, and its metrics then fail (docs/platform.md)."""

from __future__ import annotations

import time
from contextlib import contextmanager

from openspeedy.serving.triton_io import pb_utils


class TritonCacheMetrics:
    """openspeedy.cache.CacheMetrics as Triton custom metrics, labelled by cache ("image", "prompt")."""

    def __init__(self):
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.families = {
            "hit": pb_utils.MetricFamily("openspeedy_cache_hits_total", "Encoding cache hits", counter),
            "miss": pb_utils.MetricFamily("openspeedy_cache_misses_total", "Encoding cache misses", counter),
            "evicted": pb_utils.MetricFamily(
                "openspeedy_cache_evictions_total", "Entries evicted to hold the byte budget", counter
            ),
            "bytes": pb_utils.MetricFamily("openspeedy_cache_bytes", "Bytes held by the local cache", gauge),
            "backend_error": pb_utils.MetricFamily(
                "openspeedy_cache_backend_errors_total", "Shared (Redis) cache failures, served locally", counter
            ),
        }
        self._metrics: dict[tuple[str, str], object] = {}

    def _metric(self, what: str, cache: str):
        key = (what, cache)
        if key not in self._metrics:
            self._metrics[key] = self.families[what].Metric(labels={"cache": cache})
        return self._metrics[key]

    def hit(self, cache: str) -> None:
        self._metric("hit", cache).increment(1)

    def miss(self, cache: str) -> None:
        self._metric("miss", cache).increment(1)

    def evicted(self, cache: str, count: int) -> None:
        self._metric("evicted", cache).increment(count)

    def bytes_held(self, cache: str, size: int) -> None:
        self._metric("bytes", cache).set(size)

    def backend_error(self, cache: str) -> None:
        self._metric("backend_error", cache).increment(1)


class LoadMetric:
    """When this model instance was loaded: a value that changes is a model loaded again (the watchdog's
    reload after a stub died, or an operator's), which the shipped alert rules watch."""

    def __init__(self, model: str, instance: str):
        self.family = pb_utils.MetricFamily(
            "openspeedy_model_load_timestamp_seconds", "Unix time this model instance was loaded",
            pb_utils.MetricFamily.GAUGE,
        )
        self.gauge = self.family.Metric(labels={"model": model, "instance_name": instance})
        self.gauge.set(time.time())


class ServingMetrics:
    """Requests in flight and waiting, denoising step latency and frames generated, labelled by entry model.
    ``waiting`` and ``wait_seconds``: the stream model's own line (openspeedy.serving.line), where its requests
    wait instead of Triton's queue (``nv_inference_pending_request_count``, ``nv_inference_queue_duration_us``
    stay at 0 for it); at 0 for the plain model, so that sums over both entry models always have both."""

    STEP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    WAIT_BUCKETS = [0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]

    def __init__(self, model: str):
        labels = {"model": model}
        self.in_flight_family = pb_utils.MetricFamily(
            "openspeedy_requests_in_flight", "Generation requests being worked on", pb_utils.MetricFamily.GAUGE
        )
        self.step_family = pb_utils.MetricFamily(
            "openspeedy_denoising_step_seconds", "Wall time of one denoising step (UNet call + scheduler step)",
            pb_utils.MetricFamily.HISTOGRAM,
        )
        self.waiting_family = pb_utils.MetricFamily(
            "openspeedy_requests_waiting", "Generation requests waiting in the model's own line",
            pb_utils.MetricFamily.GAUGE,
        )
        self.wait_family = pb_utils.MetricFamily(
            "openspeedy_queue_wait_seconds", "Time a request waited in the model's own line before it started",
            pb_utils.MetricFamily.HISTOGRAM,
        )
        self.frames_family = pb_utils.MetricFamily(
            "openspeedy_frames_generated_total", "Video frames returned to clients", pb_utils.MetricFamily.COUNTER
        )
        self.in_flight_gauge = self.in_flight_family.Metric(labels=labels)
        self.waiting = self.waiting_family.Metric(labels=labels)
        self.wait_seconds = self.wait_family.Metric(labels=labels, buckets=self.WAIT_BUCKETS)
        self.step_seconds = self.step_family.Metric(labels=labels, buckets=self.STEP_BUCKETS)
        self.frames = self.frames_family.Metric(labels=labels)

    @contextmanager
    def in_flight(self):
        self.in_flight_gauge.increment(1)
        try:
            yield
        finally:
            self.in_flight_gauge.increment(-1)
