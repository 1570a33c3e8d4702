"""Prometheus metrics of the heartbeat service (registered on the service process's registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from soctalk_heartbeat.domain import REFUSAL_REASONS


class HeartbeatMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.refused = Counter("soctalk_heartbeat_refused", "Heartbeats refused, by reason (never the token)",
                               ["reason"], registry=registry)
        for reason in REFUSAL_REASONS:  # every reason is exported from the start, at 0
            self.refused.labels(reason)
        self.accepted = Counter("soctalk_heartbeat_accepted", "Valid heartbeats, by transport", ["transport"],
                                registry=registry)
        self.stale = Counter("soctalk_heartbeat_stale",
                             "Valid heartbeats ignored: older than the liveness window when read",
                             registry=registry)
        self.transitions = Counter("soctalk_heartbeat_transitions",
                                   "Decisions recorded (activated, degraded, recovered, component)", ["kind"],
                                   registry=registry)
        self.transactions = Counter("soctalk_heartbeat_transactions", "Per-tenant transactions on the "
                                    "state-changing path", registry=registry)
        self.flushed = Counter("soctalk_heartbeat_flushed_rows", "last_seen refreshes written in batches",
                               registry=registry)
        self.flushes = Counter("soctalk_heartbeat_flushes", "Batched last_seen flushes", registry=registry)
        self.dropped = Counter("soctalk_heartbeat_dropped", "Heartbeats dropped unread: the pending buffer "
                               "was full (slow consumer; core NATS is at-most-once, adapters resend)",
                               registry=registry)
        self.pending = Gauge("soctalk_heartbeat_pending", "Heartbeats received and not yet handled",
                             registry=registry)
        self.batch = Histogram("soctalk_heartbeat_batch_size", "Messages per pulled batch", registry=registry,
                               buckets=(1, 10, 50, 100, 250, 500, 1000, 2000))

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample: ``value("soctalk_heartbeat_accepted_total", transport="nats")``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def refused_count(self, reason: str) -> float:
        return self.value("soctalk_heartbeat_refused_total", reason=reason)
