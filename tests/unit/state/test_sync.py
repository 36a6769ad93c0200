"""Cluster-mode plumbing with canned lists and watch streams (no API server): the informer
loop, relist on 410, bookmarks, backoff, readiness, and the API binder."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from support.fake_kube import FakeApi, run_until_exhausted, with_kind
from support.k8s import gpu_node, inventory, model_annotations, pod

from scheduler.core.assignment import GpuPrediction
from scheduler.core.demand import A_PREDICTED_GPUS
from scheduler.models.catalog import Catalog
from scheduler.state.binder import ApiBinder
from scheduler.state.kube import ConflictError, GoneError, KubeError, NotFoundError, ObjectList
from scheduler.state.store import BindError, ClusterStore
from scheduler.state.sync import ClusterSync
from topology.presets import PRESETS

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


def new_store() -> ClusterStore:
    return ClusterStore(Catalog.builtin())


def test_list_then_watch_applies_events_in_order() -> None:
    api = FakeApi()
    api.lists["Node"] = [ObjectList([with_kind(gpu_node("a"), "Node", "5")], "5")]
    api.watches["Node"] = [
        [
            {"type": "ADDED", "object": with_kind(gpu_node("b"), "Node", "6")},
            {"type": "BOOKMARK", "object": {"kind": "Node", "metadata": {"resourceVersion": "9"}}},
            {"type": "DELETED", "object": with_kind(gpu_node("a"), "Node", "10")},
        ],
        [],  # the server closed the watch at its timeout: watch again from the last version
    ]
    store = new_store()
    run_until_exhausted(api, store, "Node")
    assert store.node_names() == ["b"]
    watches = [c for c in api.calls if c[0] == "watch"]
    assert watches[:2] == [("watch", "Node", "5"), ("watch", "Node", "10")]


def test_gone_relists_and_resumes_from_the_new_version() -> None:
    api = FakeApi()
    api.lists["Node"] = [
        ObjectList([with_kind(gpu_node("a"), "Node")], "5"),
        ObjectList([with_kind(gpu_node("c"), "Node")], "50"),
    ]
    api.watches["Node"] = [
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}],
        [],
    ]
    store = new_store()
    run_until_exhausted(api, store, "Node")
    assert [c for c in api.calls if c[0] == "list"] == [("list", "Node")] * 2
    assert ("watch", "Node", "50") in api.calls
    assert store.node_names() == ["c"]


def test_gone_raised_by_the_client_relists_without_backoff() -> None:
    api = FakeApi()
    api.lists["Node"] = [ObjectList([], "5"), ObjectList([], "7")]
    api.watches["Node"] = [GoneError("expired", 410)]
    sync = run_until_exhausted(api, new_store(), "Node")
    assert ("watch", "Node", "7") in api.calls
    # Only the final scripted failure backed off: the 410 relisted at once.
    assert len(sync.sleeps) == 1  # type: ignore[attr-defined]


def test_errors_back_off_exponentially_and_recover() -> None:
    api = FakeApi()
    api.lists["Pod"] = [
        KubeError("down"),
        KubeError("down"),
        KubeError("down"),
        ObjectList([], "3"),
    ]
    store = new_store()
    sync = run_until_exhausted(api, store, "Pod")
    sleeps = sync.sleeps  # type: ignore[attr-defined]
    assert 0.4 <= sleeps[0] <= 0.6 and 0.8 <= sleeps[1] <= 1.2 and 1.6 <= sleeps[2] <= 2.4
    # After the successful list the failure count started over.
    assert sleeps[3] <= 0.6


def test_ready_only_after_every_kind_listed_and_missing_crd_is_not_fatal() -> None:
    api = FakeApi()
    api.lists["Node"] = [ObjectList([with_kind(gpu_node("a"), "Node")], "1")]
    api.lists["NodeInventory"] = [NotFoundError("the server could not find the resource", 404)]
    store = new_store()
    sync = ClusterSync(api, store, sleep=lambda _: None)
    sync._list("Node")
    assert not store.synced
    sync._list("Pod")
    sync._list("PodGroup")
    assert not store.synced
    api.exhausted.set()
    stopper = ClusterSync(api, store, sleep=lambda _: stopper.stop())
    stopper._listed = sync._listed
    stopper.run_kind("NodeInventory")
    assert store.synced
    assert store.node("a") is not None


def test_inventory_and_pod_events_reach_node_state() -> None:
    api = FakeApi()
    api.lists["Node"] = [ObjectList([with_kind(gpu_node("a"), "Node")], "1")]
    store = new_store()
    sync = ClusterSync(api, store, sleep=lambda _: None)
    sync._list("Node")
    inv = inventory("a", PRESETS["hgx-h100-8"], models=[{"name": LLAMA_8B, "tier": "gpu"}])
    sync._apply("NodeInventory", {"type": "ADDED", "object": with_kind(inv, "NodeInventory")}, "1")
    state = store.node("a")
    assert state is not None and state.source == "inventory"
    assert state.residency(LLAMA_8B.lower(), None) is not None
    bound = pod("p", gpus=2, node="a", phase="Running")
    sync._apply("Pod", {"type": "ADDED", "object": with_kind(bound, "Pod")}, "2")
    state = store.node("a")
    assert state is not None and state.unindexed_busy == 2
    sync._apply("Pod", {"type": "DELETED", "object": with_kind(bound, "Pod")}, "3")
    state = store.node("a")
    assert state is not None and state.unindexed_busy == 0


def store_with_pending(api: FakeApi, gpus: int) -> tuple[ClusterStore, dict[str, Any]]:
    """A cluster-mode store over `api` with GPU node "a" and the pending LLM pod "p" (also in
    the API server's view), synced."""
    store = ClusterStore(Catalog.builtin(), binder=ApiBinder(api))
    store.replace_kind("Node", [gpu_node("a")])
    pending = pod("p", gpus=gpus, annotations=model_annotations(LLAMA_8B))
    api.pods[("llm", "p")] = copy.deepcopy(pending)
    store.upsert_pod(pending)
    store.synced = True
    return store, pending


def test_bind_survives_a_stale_watch_event_and_settles_on_the_real_one() -> None:
    api = FakeApi()
    store, pending = store_with_pending(api, gpus=8)
    store.filter(store.demand(pending), ["a"])
    result = store.bind("llm", "p", "uid-llm-p", "a")
    assert ("bind", "llm/p", "uid-llm-p", "a") in api.calls
    # The watch delivers the pod as it was before the bind: the GPUs must stay taken.
    store.upsert_pod(pending)
    other = pod("q", gpus=1, annotations=model_annotations(LLAMA_8B))
    assert store.filter(store.demand(other), ["a"]).passed == []
    # A relist that does not show the binding yet keeps the assumed bind too.
    store.replace_kind("Pod", [pending])
    assert store.filter(store.demand(other), ["a"]).passed == []
    # Then the real, bound pod arrives, annotated by the binder.
    store.upsert_pod(api.pods[("llm", "p")])
    state = store.node("a")
    assert state is not None and state.free_gpus == frozenset()
    assert (
        GpuPrediction.decode(
            api.pods[("llm", "p")]["metadata"]["annotations"]["kvsched.io/predicted-gpus"]
        )
        == result.prediction
    )
    # Once the API server has shown the binding, the pod's own record rules: deleted, freed.
    store.delete_pod("uid-llm-p")
    assert store.filter(store.demand(other), ["a"]).passed == ["a"]


def test_restart_rebuilds_allocations_from_annotated_pods() -> None:
    api = FakeApi()
    first = ClusterStore(Catalog.builtin(), binder=ApiBinder(api))
    first.replace_kind("Node", [gpu_node("a")])
    pending = pod("p", gpus=4, annotations=model_annotations(LLAMA_8B))
    api.pods[("llm", "p")] = copy.deepcopy(pending)
    first.upsert_pod(pending)
    first.filter(first.demand(pending), ["a"])
    prediction = first.bind("llm", "p", "uid-llm-p", "a").prediction
    bound = api.pods[("llm", "p")]
    # A new process: everything comes back from the API server's objects.
    second = ClusterStore(Catalog.builtin(), binder=ApiBinder(api))
    second.replace_kind("Pod", [bound], rebuild=False)
    second.replace_kind("Node", [gpu_node("a")])
    state = second.node("a")
    assert state is not None
    assert state.free_gpus == frozenset(range(8)) - set(prediction.indices)
    # kube-scheduler retries the bind after our restart: same answer, no second binding.
    again = second.bind("llm", "p", "uid-llm-p", "a")
    assert again.already_bound and again.prediction == prediction


def test_binder_treats_a_conflict_on_the_same_node_as_done() -> None:
    api = FakeApi()
    api.pods[("llm", "p")] = pod("p", node="a", uid="u1")
    api.bind_error = ConflictError("already assigned", 409)
    record_store = ClusterStore(Catalog.builtin(), binder=ApiBinder(api))
    record_store.replace_kind("Node", [gpu_node("a")])
    pending = pod("p", uid="u1")
    record_store.filter(record_store.demand(pending), ["a"])
    record_store.bind("llm", "p", "u1", "a")  # no error


def test_a_conflict_on_the_same_node_adopts_the_gpus_the_earlier_binding_recorded() -> None:
    """An earlier bind went through but its answer was lost, and the watch has not shown it
    yet: the retry's own GPU choice may differ from what the pod carries. The pod's GPUs win,
    or the ones it really holds would look free."""
    api = FakeApi()
    earlier = GpuPrediction("a", (4, 5))
    api.pods[("llm", "p")] = pod(
        "p", gpus=2, node="a", uid="u1", annotations={A_PREDICTED_GPUS: earlier.encode()}
    )
    api.bind_error = ConflictError("already assigned", 409)
    store = ClusterStore(Catalog.builtin(), binder=ApiBinder(api))
    store.replace_kind("Node", [gpu_node("a")])
    store.filter(store.demand(pod("p", gpus=2, uid="u1")), ["a"])
    result = store.bind("llm", "p", "u1", "a")
    assert result.already_bound and result.prediction.indices == (4, 5)
    state = store.node("a")
    assert state is not None and state.usable_free_gpus == frozenset({0, 1, 2, 3, 6, 7})


def test_binder_reports_a_conflict_on_another_node() -> None:
    api = FakeApi()
    api.pods[("llm", "p")] = pod("p", node="b", uid="u1")
    api.bind_error = ConflictError("already assigned", 409)
    store = ClusterStore(Catalog.builtin(), binder=ApiBinder(api))
    store.replace_kind("Node", [gpu_node("a")])
    store.filter(store.demand(pod("p", uid="u1")), ["a"])
    with pytest.raises(BindError, match="bound to b"):
        store.bind("llm", "p", "u1", "a")
    # Nothing recorded: the GPUs on a are still free.
    state = store.node("a")
    assert state is not None and len(state.free_gpus) == 8


@pytest.mark.parametrize(
    ("bind_error", "message"),
    [
        (NotFoundError("gone", 404), "no longer exists"),
        (KubeError("forbidden", 403), "failed"),
        (KubeError("timeout"), "failed"),
    ],
)
def test_binder_failures_become_bind_errors_and_record_nothing(
    bind_error: Exception, message: str
) -> None:
    api = FakeApi()
    api.bind_error = bind_error
    store = ClusterStore(Catalog.builtin(), binder=ApiBinder(api))
    store.replace_kind("Node", [gpu_node("a")])
    store.filter(store.demand(pod("p", uid="u1", gpus=2)), ["a"])
    with pytest.raises(BindError, match=message):
        store.bind("llm", "p", "u1", "a")
    state = store.node("a")
    assert state is not None and len(state.free_gpus) == 8


def test_a_binding_the_scheduler_made_gets_the_prediction_written_on_that_pod() -> None:
    """No bindVerb: the watch shows the binding, the store learns the GPUs, and its (inline)
    effect writes them on the pod, as the bind verb would have in the binding."""
    api = FakeApi()
    store, pending = store_with_pending(api, gpus=2)
    assert store.filter(store.demand(pending), ["a"]).passed == ["a"]
    bound = copy.deepcopy(pending)
    bound["spec"]["nodeName"] = "a"
    store.upsert_pod(bound)
    record = store.pod("uid-llm-p")
    assert record is not None and record.prediction is not None
    annotations = api.pods[("llm", "p")]["metadata"]["annotations"]
    assert GpuPrediction.decode(annotations[A_PREDICTED_GPUS]) == record.prediction
    assert annotations["kvsched.io/placement"].startswith("predicted-gpus=")
    # A restarted extender reads it back from the pod.
    second = ClusterStore(Catalog.builtin(), binder=ApiBinder(api))
    bound["metadata"]["annotations"] = dict(annotations)
    second.replace_kind("Pod", [bound], rebuild=False)
    second.replace_kind("Node", [gpu_node("a")])
    again = second.pod("uid-llm-p")
    assert again is not None and again.prediction == record.prediction


def test_a_placement_for_a_pod_replaced_under_the_same_name_is_not_written() -> None:
    api = FakeApi()
    api.pods[("llm", "p")] = pod("p", uid="new-uid")
    ApiBinder(api).record_placement("llm", "p", "old-uid", GpuPrediction("a", (0,)), "x")
    assert A_PREDICTED_GPUS not in api.pods[("llm", "p")]["metadata"]["annotations"]


@pytest.mark.parametrize(
    ("error", "raised"), [(NotFoundError("gone", 404), False), (KubeError("boom", 500), True)]
)
def test_placement_write_failures(error: KubeError, raised: bool) -> None:
    api = FakeApi()
    api.annotate_error = error
    write = ApiBinder(api).record_placement
    if raised:
        with pytest.raises(BindError, match="cannot record placement on pod llm/p"):
            write("llm", "p", "u1", GpuPrediction("a", (0,)), "x")
    else:
        write("llm", "p", "u1", GpuPrediction("a", (0,)), "x")  # a pod gone needs nothing
