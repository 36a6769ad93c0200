"""Prometheus metrics of the extender, on a registry of its own (one per app instance)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Extender calls are sub-millisecond to tens of milliseconds; kube-scheduler gives up at 5 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ExtenderMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_duration = Histogram(
            "kvsched_extender_request_duration_seconds",
            "Time to answer one extender call, by verb.",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "kvsched_extender_requests",
            "Extender calls by verb and outcome (ok, bad_request, error).",
            ["verb", "outcome"],
            registry=self.registry,
        )
        self.filter_nodes = Counter(
            "kvsched_filter_nodes",
            "Nodes judged by filter, by result (passed, failed, unresolvable).",
            ["result"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "kvsched_filter_rejections",
            "Nodes rejected by filter, by reason (pod-spec, no-gpus, gpu-count, gpu-memory, "
            "gpu-memory-unknown, free-gpus, unknown-node, gang).",
            ["reason"],
            registry=self.registry,
        )
        self.reservations = Gauge(
            "kvsched_gang_reservations",
            "Gang members holding reserved GPUs, waiting to bind.",
            registry=self.registry,
        )
        self.binds = Counter(
            "kvsched_binds",
            "Bind calls by result (bound, already_bound, rejected).",
            ["result"],
            registry=self.registry,
        )
        self.effects = Counter(
            "kvsched_effects",
            "API writes decided under the store's lock and carried out after it, off the "
            "verbs: gang reservation annotations (reservation, reservation-clear) and the GPU "
            "prediction written on a pod kube-scheduler bound (placement), by outcome "
            "(written, failed, dropped: queue full or stopping). A write lost is only not "
            "durable across a restart.",
            ["effect", "outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "kvsched_events",
            "Kubernetes Events on pods, by reason (KvschedPlaced, KvschedUnschedulable, "
            "KvschedBadPodSpec) and outcome (written, failed, dropped: queue full or stopping, "
            "deduplicated: the same event was already written within the dedupe window, "
            "rate_limited: placement events over their token bucket).",
            ["reason", "outcome"],
            registry=self.registry,
        )
        self.nodes = Gauge(
            "kvsched_nodes", "Nodes in the extender's cluster view.", registry=self.registry
        )
        self.watch_restarts = Counter(
            "kvsched_watch_restarts",
            "Informer restarts by kind and reason (gone: resourceVersion expired; error; "
            "not_found: resource not served).",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.listed_objects = Gauge(
            "kvsched_listed_objects",
            "Objects returned by the last list, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.prediction_mismatches = Counter(
            "kvsched_gpu_prediction_mismatches",
            "Bound pods whose GPUs, as the kubelet reported them through the node agent, differ "
            "from kvsched's prediction of the device plugin's choice (once per pod and GPU set).",
            registry=self.registry,
        )
        self.objects_rejected = Counter(
            "kvsched_objects_rejected",
            "Objects kvsched could not understand and quarantined, once per object version, by "
            "kind (Pod, Node, NodeInventory) and reason (bad-annotation, bad-spec, unreadable).",
            ["kind", "reason"],
            registry=self.registry,
        )
        self._rejected_exported: dict[tuple[str, str], int] = {}
        self.synced = Gauge(
            "kvsched_cluster_synced",
            "1 once the cluster view is loaded (offline) or listed (cluster mode).",
            registry=self.registry,
        )

    def export_rejections(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Bring kvsched_objects_rejected_total up to the store's counts (the store counts from
        its first object on, offline before the app exists; the scrape catches up)."""
        for (kind, reason), total in counts.items():
            delta = total - self._rejected_exported.get((kind, reason), 0)
            if delta > 0:
                self.objects_rejected.labels(kind, reason).inc(delta)
                self._rejected_exported[(kind, reason)] = total

    # SyncObserver: the informers report here.
    def watch_restarted(self, kind: str, reason: str) -> None:
        self.watch_restarts.labels(kind, reason).inc()

    def listed(self, kind: str, count: int) -> None:
        self.listed_objects.labels(kind).set(count)

    # StoreObserver: the store reports here as it rebuilds nodes.
    def prediction_mismatch(self, node: str, pod: str) -> None:
        self.prediction_mismatches.inc()

    # EffectObserver: the effect writer reports here.
    def effect_done(self, kind: str, outcome: str) -> None:
        self.effects.labels(kind, outcome).inc()

    # EventObserver: the event recorder reports here.
    def event_recorded(self, reason: str, outcome: str) -> None:
        self.events.labels(reason, outcome).inc()
