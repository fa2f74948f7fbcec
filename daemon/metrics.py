"""Prometheus metrics, served on localhost when ``[metrics] port`` is set.

Counters and histograms are process-wide (prometheus_client's default
registry); label values never hold patient data. With receiver processes
(``[dicom] receivers``) every process counts into files that the endpoint
adds up (prometheus_client's multiprocess mode, switched on by the entry
point); gauges, which only the daemon's own process sets, then show its
latest value.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

from daemon.cli.process import MULTIPROCESS_METRICS_ENV

logger = logging.getLogger(__name__)

INSTANCES_RECEIVED = Counter("triage_instances_received", "C-STORE requests answered", ["outcome"])
INSTANCES_TRIAGED = Counter("triage_instances_triaged", "Images classified", ["modality"])
INSTANCES_QUARANTINED = Counter("triage_instances_quarantined", "Datasets quarantined")
INFERENCE_SECONDS = Histogram(
    "triage_inference_seconds",
    "Inference time per image: a batch's model call over its images",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
DECODE_SECONDS = Histogram(
    "triage_decode_seconds",
    "Decode and preparation time per image, in a decoder child process",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_IMAGES = Histogram(
    "triage_batch_images",
    "Images per model call (micro-batches across instances)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
STORE_STAGE_SECONDS = Histogram(
    "triage_store_stage_seconds",
    "Each stage of storing one received instance (daemon.store_timing): wall or thread CPU time",
    ["stage", "clock"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
INGEST_YIELD_SECONDS = Counter(
    "triage_ingest_yield_seconds",
    "Seconds a worker waited for the receivers to fall quiet (daemon.ingest_priority)",
    ["worker"],
)
OCCLUSION_MAPS = Counter("triage_occlusion_maps", "Occlusion maps made or failed", ["outcome"])
OCCLUSION_QUEUED = Gauge(
    "triage_occlusion_queued", "Occlusion maps waiting to be made", multiprocess_mode="mostrecent"
)
OCCLUSION_YIELDING = Gauge(
    "triage_occlusion_yielding",
    "1 while occlusion maps wait for triage to catch up",
    multiprocess_mode="mostrecent",
)
OBJECTS_SENT = Counter("triage_objects_sent", "Reports and maps delivered", ["kind"])
OBJECTS_FAILED = Counter("triage_objects_failed", "Delivery attempts that failed", ["kind"])
QUEUE_DEPTH = Gauge(
    "triage_queue_depth", "Instances waiting in the inference queue", multiprocess_mode="mostrecent"
)
OUTBOX_PENDING = Gauge(
    "triage_outbox_pending", "Deliveries waiting", multiprocess_mode="mostrecent"
)
DEAD_LETTERS = Gauge(
    "triage_dead_letters", "Deliveries that used up their retries", multiprocess_mode="mostrecent"
)
REPORTS = Counter(
    "triage_reports", "Study reports built (first, superseding) or parked (failed)", ["outcome"]
)
STUDIES_PARKED = Gauge(
    "triage_studies_report_failed", "Studies whose report is parked", multiprocess_mode="mostrecent"
)
INSTANCES_FAILED = Gauge(
    "triage_instances_failed", "Images that could not be triaged", multiprocess_mode="mostrecent"
)


def serving_registry() -> CollectorRegistry:
    """The registry to serve: this process's, or with receiver processes
    the sum of every process's files."""
    # Set by the entry point (``share_metrics_between_processes``).
    if not os.environ.get(MULTIPROCESS_METRICS_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


class MetricsEndpoint:
    """/metrics on 127.0.0.1, as a service the supervisor owns."""

    name = "metrics-endpoint"

    def __init__(self, port: int) -> None:
        self.server, self._thread = start_http_server(
            port, addr="127.0.0.1", registry=serving_registry()
        )
        self.port = int(self.server.server_address[1])
        logger.info("Prometheus metrics on http://127.0.0.1:%d/metrics", self.port)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, seconds: float) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=seconds)


def serve_metrics(port: int) -> MetricsEndpoint | None:
    """Expose /metrics on 127.0.0.1 only; None when ``port`` is 0 (disabled)."""
    return MetricsEndpoint(port) if port else None
