"""Prometheus metrics of one member. Names mirror etcd's where the meaning is the same
(etcd_server_has_leader -> tinyraft_server_has_leader, ...); units are base units."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

import tinyraft

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_FSYNC = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.has_leader = Gauge("tinyraft_server_has_leader", "1 if a leader is known", registry=r)
        self.is_leader = Gauge("tinyraft_server_is_leader", "1 if this member leads", registry=r)
        self.is_learner = Gauge(
            "tinyraft_server_is_learner", "1 if this member is a learner", registry=r
        )
        self.term = Gauge("tinyraft_server_term", "current Raft term", registry=r)
        self.commit_index = Gauge(
            "tinyraft_server_commit_index", "highest committed index", registry=r
        )
        self.applied_index = Gauge(
            "tinyraft_server_applied_index", "highest index applied to the Module", registry=r
        )
        self.leader_changes = Counter(
            "tinyraft_server_leader_changes_seen", "leader changes seen", registry=r
        )
        self.proposals_committed = Counter(
            "tinyraft_server_proposals_committed", "commands committed", registry=r
        )
        self.proposals_applied = Counter(
            "tinyraft_server_proposals_applied", "commands applied to the Module", registry=r
        )
        self.proposals_pending = Gauge(
            "tinyraft_server_proposals_pending", "commands waiting to be applied", registry=r
        )
        self.proposals_failed = Counter(
            "tinyraft_server_proposals_failed", "commands refused or lost", ["reason"], registry=r
        )
        self.commit_duration = Histogram(
            "tinyraft_server_commit_duration_seconds",
            "from receiving a command to applying it (leader)",
            buckets=_LATENCY,
            registry=r,
        )
        self.apply_duration = Histogram(
            "tinyraft_server_apply_duration_seconds",
            "one Module Apply call",
            buckets=_LATENCY,
            registry=r,
        )
        self.fsync_duration = Histogram(
            "tinyraft_disk_wal_fsync_duration_seconds",
            "one log write with fsync",
            buckets=_FSYNC,
            registry=r,
        )
        self.bytes_written = Counter(
            "tinyraft_disk_wal_write_bytes", "bytes written to the log", registry=r
        )
        self.snapshots = Counter("tinyraft_snapshot_save", "snapshots taken", registry=r)
        self.snapshot_duration = Histogram(
            "tinyraft_snapshot_save_duration_seconds",
            "taking one snapshot",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
            registry=r,
        )
        self.snapshots_sent = Counter(
            "tinyraft_snapshot_sent", "snapshots streamed to followers", registry=r
        )
        self.snapshots_received = Counter(
            "tinyraft_snapshot_received", "snapshots installed from the leader", registry=r
        )
        self.peer_rtt = Histogram(
            "tinyraft_network_peer_round_trip_time_seconds",
            "append round trip to a peer, as the leader sees it",
            ["To"],
            buckets=_LATENCY,
            registry=r,
        )
        self.peer_lag = Gauge(
            "tinyraft_network_peer_lag_entries",
            "entries a peer is behind the leader's log",
            ["To"],
            registry=r,
        )
        self.members = Gauge(
            "tinyraft_cluster_members", "members by suffrage", ["suffrage"], registry=r
        )
        self.build_info = Gauge(
            "tinyraft_build_info", "the running version", ["version"], registry=r
        )
        self.build_info.labels(tinyraft.__version__).set(1)

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)
