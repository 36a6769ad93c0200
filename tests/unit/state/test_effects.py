"""Gang reservation writes are effects: decided under the store's lock, written after it.

The gang coordinator returns what must be written instead of writing it; the store submits
the effects once its lock is released, and in cluster mode one writer thread carries them out
in order from a bounded queue. A write that fails or is dropped is counted, never raised, and
leaves the plan standing (only not durable).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from support.k8s import gpu_node, pod

from scheduler.core.assignment import GpuPrediction, GpuReservation
from scheduler.models.catalog import Catalog
from scheduler.state.contracts import BindError
from scheduler.state.effects import EffectWriter, InlineEffects, WriteReservation
from scheduler.state.objects import PodRecord
from scheduler.state.store import ClusterStore

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"


def member(name: str, size: int = 2, gpus: int = 8) -> dict[str, Any]:
    annotations = {
        "kvsched.io/model": LLAMA_70B,
        "kvsched.io/max-model-len": "8192",
        "kvsched.io/gang": "g",
        "kvsched.io/gang-size": str(size),
    }
    return pod(name, gpus=gpus, annotations=annotations)


class BlockingBinder:
    """reserve() blocks until released (an API server that stalls every write)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.writes: list[tuple[str, bool]] = []
        self.fail: set[str] = set()

    def bind(
        self, pod: PodRecord, prediction: GpuPrediction, placement: str
    ) -> GpuPrediction | None:
        return None

    def reserve(self, namespace: str, name: str, reservation: GpuReservation | None) -> None:
        self.entered.set()
        assert self.release.wait(10)
        self.writes.append((name, reservation is not None))
        if name in self.fail:
            raise BindError(f"cannot annotate {name}")


class Outcomes:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def effect_done(self, kind: str, outcome: str) -> None:
        self.counts[(kind, outcome)] += 1


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def cluster_store(binder: BlockingBinder, writer: EffectWriter) -> ClusterStore:
    store = ClusterStore(Catalog.builtin(), binder=binder, effects=writer)
    store.replace_kind("Node", [gpu_node(n) for n in ("a", "b", "c")])
    store.synced = True
    store.demand(member("m1"))  # the scheduler has shown the store both members
    return store


def test_gang_planning_returns_while_the_reservation_writes_stall() -> None:
    binder = BlockingBinder()
    outcomes = Outcomes()
    writer = EffectWriter(binder, outcomes)
    writer.start()
    store = cluster_store(binder, writer)
    names = store.node_names()
    try:
        started = time.perf_counter()
        first = store.filter(store.demand(member("m0")), names)
        assert len(first.passed) == 1
        # The writer thread is stuck in the first write; the planning filter did not wait.
        assert binder.entered.wait(5)
        assert time.perf_counter() - started < 2.0
        # Nor does any other verb: the lock is free while the API write hangs.
        second = store.filter(store.demand(member("m1")), names)
        assert len(second.passed) == 1 and second.passed != first.passed
        other = store.filter(store.demand(pod("plain", gpus=4)), names)
        assert set(other.passed) == set(names) - set(first.passed) - set(second.passed)
        assert store.reservation_count() == 2
        binder.release.set()
        wait_for(lambda: len(binder.writes) == 2)
        # One writer, in the order the plan decided them.
        assert binder.writes == [("m0", True), ("m1", True)]
        wait_for(lambda: outcomes.counts[("reservation", "written")] == 2)
    finally:
        binder.release.set()
        writer.stop(2.0)


def test_a_failed_write_is_counted_and_the_plan_stands() -> None:
    binder = BlockingBinder()
    binder.release.set()
    binder.fail.add("m0")
    outcomes = Outcomes()
    writer = EffectWriter(binder, outcomes)
    writer.start()
    store = cluster_store(binder, writer)
    try:
        passed = store.filter(store.demand(member("m0")), store.node_names()).passed
        wait_for(lambda: len(binder.writes) == 2)
        wait_for(lambda: sum(outcomes.counts.values()) == 2)
        assert outcomes.counts == {("reservation", "failed"): 1, ("reservation", "written"): 1}
        # Not durable, but planned: the member still passes on its planned node only.
        again = store.filter(store.demand(member("m0")), store.node_names())
        assert again.passed == passed
    finally:
        writer.stop(2.0)


def test_releasing_a_plan_clears_after_the_writes_in_order() -> None:
    binder = BlockingBinder()
    binder.release.set()
    writer = EffectWriter(binder)
    writer.start()
    store = cluster_store(binder, writer)
    try:
        store.filter(store.demand(member("m0")), store.node_names())
        store.delete_pod("uid-llm-m1")  # a member deleted: the plan is released
        wait_for(lambda: len(binder.writes) == 4)
        assert binder.writes[:2] == [("m0", True), ("m1", True)]
        assert sorted(binder.writes[2:]) == [("m0", False), ("m1", False)]
        assert store.reservation_count() == 0
    finally:
        writer.stop(2.0)


def test_a_full_queue_drops_and_counts() -> None:
    binder = BlockingBinder()
    outcomes = Outcomes()
    writer = EffectWriter(binder, outcomes, queue_size=1)
    writer.start()
    try:
        effects = [WriteReservation("llm", f"m{i}", "g", None) for i in range(4)]
        writer.submit(effects[:1])
        assert binder.entered.wait(5)  # the writer holds the first one
        writer.submit(effects[1:])  # one fits in the queue, two are dropped
        assert outcomes.counts[("reservation-clear", "dropped")] == 2
        binder.release.set()
        wait_for(lambda: len(binder.writes) == 2)
    finally:
        binder.release.set()
        writer.stop(2.0)
    writer.submit(effects[:1])  # stopped: dropped, never raised
    assert outcomes.counts[("reservation-clear", "dropped")] == 3


def test_stop_writes_what_was_queued() -> None:
    binder = BlockingBinder()
    binder.release.set()
    writer = EffectWriter(binder)
    writer.start()
    writer.submit([WriteReservation("llm", f"m{i}", "g", None) for i in range(5)])
    writer.stop(5.0)
    assert [name for name, _ in binder.writes] == [f"m{i}" for i in range(5)]


def test_inline_effects_run_in_the_caller_after_the_lock() -> None:
    store_box: list[ClusterStore] = []
    held: list[bool] = []

    class Probe(BlockingBinder):
        def reserve(self, namespace: str, name: str, reservation: GpuReservation | None) -> None:
            # Another thread can take the store's lock: the caller holds it not.
            lock = store_box[0].cache.lock
            acquired: list[bool] = []

            def take() -> None:
                acquired.append(lock.acquire(timeout=1))
                if acquired[0]:
                    lock.release()

            thread = threading.Thread(target=take)
            thread.start()
            thread.join()
            held.append(not acquired[0])

    binder = Probe()
    store = ClusterStore(Catalog.builtin(), binder=binder)
    assert isinstance(store.effects, InlineEffects)
    store_box.append(store)
    store.replace_kind("Node", [gpu_node(n) for n in ("a", "b")])
    store.demand(member("m1"))
    store.filter(store.demand(member("m0")), store.node_names())
    assert held == [False, False]
