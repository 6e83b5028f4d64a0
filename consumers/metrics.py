"""Prometheus metrics of the replicator."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("georep_replicator_events_total", "Events finished, by region and status", ["region", "status"])
ATTEMPTS_FAILED = Counter(
    "georep_replicator_failed_attempts_total", "Failed attempts, by region and reason", ["region", "reason"]
)
BLOBS_COPIED = Counter("georep_replicator_blobs_copied_total", "Blobs written to the region", ["region"])
BYTES_COPIED = Counter("georep_replicator_bytes_copied_total", "Blob bytes written to the region", ["region"])
LAG = Histogram(
    "georep_replicator_lag_seconds",
    "From the push on the primary to the event being fully replicated",
    ["region"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
)
IN_FLIGHT = Gauge("georep_replicator_in_flight_events", "Events being replicated now", ["region"])
