"""Binds whose API call outcome is uncertain.

1. A bind retried while an earlier bind of the same pod still waits on the API server:
   kube-scheduler gives up on /bind after its httpTimeout (5 s) and binds again. The retry
   must not answer "bound" from the extender's unconfirmed record: if the earlier API call
   then fails, kube-scheduler would count the pod bound and never schedule it again (found by
   the e2e test tests/e2e/test_bind_kill.py). It waits for the earlier call's outcome, briefly.
2. A call that fails (read timeout) after the API server applied it: the watch has shown the
   pod bound meanwhile, and that view wins; rolling back would free GPUs a bound pod holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from support.k8s import gpu_node, pod

from scheduler.core.assignment import GpuPrediction
from scheduler.models.catalog import Catalog
from scheduler.state.objects import PodRecord
from scheduler.state.offline import ClusterObjects
from scheduler.state.store import BindError, BindResult, ClusterStore

UID = "uid-llm-p"


class SlowBinder:
    """The first bind blocks until released, then succeeds or fails as told; later binds
    return at once."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_first = False
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def bind(self, pod: PodRecord, prediction: GpuPrediction, placement: str) -> None:
        self.calls.append((prediction.node, prediction.indices))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
            if self.fail_first:
                raise BindError("read timed out")

    def reserve(self, namespace: str, name: str, reservation: object) -> None:
        pass


@pytest.fixture
def binder() -> Iterator[SlowBinder]:
    slow = SlowBinder()
    yield slow
    slow.release.set()


def make_store(binder: SlowBinder, wait_s: float) -> ClusterStore:
    store = ClusterStore(Catalog.builtin(), binder=binder, bind_retry_wait_s=wait_s)
    store.load(ClusterObjects(nodes=[gpu_node("a")], pods=[], inventories=[]))
    store.demand(pod("p", gpus=4))
    return store


def first_bind_in_flight(store: ClusterStore, binder: SlowBinder) -> dict[str, object]:
    """Start the first bind in a thread; return once it waits inside the binder."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = store.bind("llm", "p", UID, "a")
        except BindError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    outcome["thread"] = thread
    assert binder.entered.wait(10)
    return outcome


def retry_while_the_first_is_released(store: ClusterStore, binder: SlowBinder) -> BindResult:
    """kube-scheduler's retry, started while the first bind waits; the first is then let go."""
    retried: list[BindResult] = []
    retry = threading.Thread(target=lambda: retried.append(store.bind("llm", "p", UID, "a")))
    retry.start()
    binder.release.set()
    retry.join(10)
    assert retried, "the retry did not return"
    return retried[0]


def finish(outcome: dict[str, object]) -> None:
    thread = outcome["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(10)
    assert not thread.is_alive()


def test_a_retry_while_the_first_call_is_under_way_fails_instead_of_claiming_bound(
    binder: SlowBinder,
) -> None:
    store = make_store(binder, wait_s=0.05)
    first = first_bind_in_flight(store, binder)
    with pytest.raises(BindError, match="still waiting on the API server"):
        store.bind("llm", "p", UID, "a")
    assert len(binder.calls) == 1  # the retry made no API call of its own
    binder.release.set()
    finish(first)
    assert isinstance(first["result"], BindResult)


def test_a_retry_gets_the_first_calls_gpus_once_it_succeeded(binder: SlowBinder) -> None:
    store = make_store(binder, wait_s=10)
    first = first_bind_in_flight(store, binder)
    retried = retry_while_the_first_is_released(store, binder)
    finish(first)
    result = first["result"]
    assert isinstance(result, BindResult) and not result.already_bound
    assert retried.already_bound
    assert retried.prediction == result.prediction
    assert len(binder.calls) == 1


def test_a_retry_binds_afresh_when_the_first_call_failed(binder: SlowBinder) -> None:
    store = make_store(binder, wait_s=10)
    binder.fail_first = True
    first = first_bind_in_flight(store, binder)
    retried = retry_while_the_first_is_released(store, binder)
    finish(first)
    assert isinstance(first["error"], BindError)
    # The pod is bound by the retry's own API call, not reported bound from the failed one.
    assert len(binder.calls) == 2
    assert not retried.already_bound
    record = store.pod(UID)
    assert record is not None and record.prediction == retried.prediction
    assert len(retried.prediction.indices) == 4


def test_after_a_failed_first_call_alone_nothing_is_held(binder: SlowBinder) -> None:
    store = make_store(binder, wait_s=0.05)
    binder.fail_first = True
    first = first_bind_in_flight(store, binder)
    binder.release.set()
    finish(first)
    assert isinstance(first["error"], BindError)
    assert store.pod(UID) is None or store.pod(UID).node is None  # type: ignore[union-attr]
    # All eight GPUs are free again: a later bind of the pod succeeds with an API call.
    result = store.bind("llm", "p", UID, "a")
    assert not result.already_bound and len(binder.calls) == 2


class WatchThenTimeout:
    """The API server applies the binding, the watch shows the bound pod, and then the call
    times out on the client side: the outcome is unknown to the caller, not to the watch."""

    def __init__(self, store_ref: list[ClusterStore], bound_elsewhere: str | None = None) -> None:
        self.store_ref = store_ref
        self.bound_elsewhere = bound_elsewhere

    def bind(self, record: PodRecord, prediction: GpuPrediction, placement: str) -> None:
        if record.uid != UID:
            return  # other pods bind normally
        node = self.bound_elsewhere or prediction.node
        shown = GpuPrediction(node, prediction.indices)
        self.store_ref[0].upsert_pod(
            pod(
                "p",
                gpus=4,
                node=node,
                uid=UID,
                annotations={"kvsched.io/predicted-gpus": shown.encode()},
            )
        )
        raise BindError("binding pod llm/p: read timed out")

    def reserve(self, namespace: str, name: str, reservation: object) -> None:
        pass


def test_a_call_that_failed_after_the_watch_showed_the_pod_bound_counts_as_bound() -> None:
    ref: list[ClusterStore] = []
    store = ClusterStore(Catalog.builtin(), binder=WatchThenTimeout(ref))
    ref.append(store)
    store.load(ClusterObjects(nodes=[gpu_node("a")], pods=[], inventories=[]))
    store.demand(pod("p", gpus=4))
    result = store.bind("llm", "p", UID, "a")
    assert result.already_bound and result.prediction.node == "a"
    # The pod keeps its four GPUs: rolling back would have freed GPUs a bound pod holds.
    record = store.pod(UID)
    assert record is not None and record.node == "a"
    assert len(store.node("a").usable_free_gpus) == 4  # type: ignore[union-attr]
    store.demand(pod("q", gpus=4))
    other = store.bind("llm", "q", "uid-llm-q", "a")
    assert set(other.prediction.indices).isdisjoint(result.prediction.indices)


def test_a_failed_call_leaves_a_pod_the_watch_shows_bound_elsewhere_alone() -> None:
    ref: list[ClusterStore] = []
    store = ClusterStore(Catalog.builtin(), binder=WatchThenTimeout(ref, bound_elsewhere="b"))
    ref.append(store)
    store.load(ClusterObjects(nodes=[gpu_node("a"), gpu_node("b")], pods=[], inventories=[]))
    store.demand(pod("p", gpus=4))
    with pytest.raises(BindError):
        store.bind("llm", "p", UID, "a")
    record = store.pod(UID)
    assert record is not None and record.node == "b"  # the watch's record stands
    assert len(store.node("a").usable_free_gpus) == 8  # type: ignore[union-attr]
    assert len(store.node("b").usable_free_gpus) == 4  # type: ignore[union-attr]
