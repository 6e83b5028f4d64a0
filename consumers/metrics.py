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
LANE_STALLED = Gauge(
    "georep_replicator_lane_stalled",
    "1 while a partition's event keeps failing with an unexpected error (the partition does not move)",
    ["region", "partition"],
)
BUDGET_HELD = Gauge("georep_replicator_budget_held_bytes", "Copy-buffer bytes held now", ["region"])
BUDGET_WAITING = Gauge("georep_replicator_budget_waiting", "Copies waiting for buffer room now", ["region"])
RECONCILE_PASSES = Counter("georep_reconcile_passes_total", "Reconciliation passes, by outcome", ["region", "outcome"])
RECONCILE_DRIFT = Counter(
    "georep_reconcile_drift_total", "Differences found with the primary, by kind", ["region", "kind"]
)
RECONCILE_REPAIRS = Counter("georep_reconcile_repairs_total", "Repair and delete events published", ["region"])
RECONCILE_REQUESTS = Counter(
    "georep_reconcile_requests_total", "Requests passes made, to the primary and to the region", ["region", "target"]
)
RECONCILE_REPOSITORIES = Counter(
    "georep_reconcile_repositories_total",
    "Repositories passes looked at: unchanged, compared, deferred",
    ["region", "result"],
)
RECONCILE_LAST_PASS = Gauge("georep_reconcile_last_pass_timestamp_seconds", "When the last pass ended", ["region"])
