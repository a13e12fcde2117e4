"""The operator's own Prometheus metrics (its own registry and endpoint)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

RECONCILES = Counter(
    "tinyraft_operator_reconciles_total",
    "Reconciles of a RaftCluster, by result: acted, waiting, converged, paused, halted, "
    "invalid, error",
    ["result"],
    registry=REGISTRY,
)
MEMBERSHIP_CHANGES = Counter(
    "tinyraft_operator_membership_changes_total",
    "Membership changes the operator made, by kind: bootstrap, add_learner, promote, "
    "remove, transfer_leadership",
    ["kind"],
    registry=REGISTRY,
)
CONVERGE_SECONDS = Histogram(
    "tinyraft_operator_converge_seconds",
    "Time from a cluster first needing a change to its next converged reconcile",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
CLUSTERS = Gauge(
    "tinyraft_operator_clusters",
    "RaftClusters this operator reconciles, by phase",
    ["phase"],
    registry=REGISTRY,
)


def serve(address: str) -> None:
    """Start the endpoint on HOST:PORT (empty: no endpoint)."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
