"""ClusterStore: loading, filter/prioritize over the memo, bind bookkeeping, watch-style updates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.k8s import cached, cpu_node, gpu_node, inventory, model_annotations, pod

from scheduler.core.assignment import GpuPrediction
from scheduler.core.node import Tier
from scheduler.core.placement import evaluate
from scheduler.extender.explain import explain_rows
from scheduler.models.catalog import Catalog
from scheduler.state.offline import ClusterObjects, load_cluster
from scheduler.state.store import BindError, ClusterStore
from topology.presets import PRESETS

CATALOG = Catalog.builtin()
SNAPSHOT = Path(__file__).resolve().parents[2] / "fixtures" / "cluster" / "snapshot"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"


def make_store(
    nodes: list[dict[str, Any]] | None = None,
    pods: list[dict[str, Any]] | None = None,
    inventories: list[dict[str, Any]] | None = None,
) -> ClusterStore:
    store = ClusterStore(CATALOG)
    store.load(
        ClusterObjects(
            nodes=nodes if nodes is not None else [gpu_node("a"), gpu_node("b"), cpu_node("c")],
            pods=pods or [],
            inventories=inventories or [],
        )
    )
    return store


def assigned(node: str, *indices: int) -> dict[str, str]:
    return {"kvsched.io/predicted-gpus": GpuPrediction(node, indices).encode()}


def free(store: ClusterStore, name: str) -> frozenset[int]:
    state = store.node(name)
    assert state is not None
    return state.usable_free_gpus


# ---- load and queries ---------------------------------------------------------------------


def test_not_synced_until_loaded() -> None:
    store = ClusterStore(CATALOG)
    assert not store.synced
    assert store.node_names() == []
    store.load(ClusterObjects(nodes=[gpu_node("a")]))
    assert store.synced
    assert store.node_names() == ["a"]


def test_load_from_the_snapshot_fixture() -> None:
    store = ClusterStore(CATALOG)
    store.load(load_cluster(SNAPSHOT))
    assert store.node_names() == ["cpu-1", "gpu-1", "gpu-2"]
    gpu1 = store.node("gpu-1")
    assert gpu1 is not None and gpu1.source == "inventory"
    assert gpu1.residency(LLAMA_70B.lower(), None) is not None
    assert free(store, "gpu-2") == frozenset({4, 5, 6, 7})
    assert store.pod("uid-vllm-70b-0") is not None
    assert store.pod_object("llm", "vllm-8b-pending") is not None
    assert store.allocations() == {"llm/vllm-70b-0": GpuPrediction("gpu-2", (0, 1, 2, 3))}


def test_load_replaces_everything() -> None:
    store = make_store(pods=[pod("x", gpus=2, node="a", phase="Running")])
    assert len(free(store, "a")) == 6
    store.load(ClusterObjects(nodes=[gpu_node("a")]))
    assert store.node_names() == ["a"]
    assert len(free(store, "a")) == 8
    assert store.pod("uid-llm-x") is None
    assert store.pod_object("llm", "x") is None


def test_filter_sorts_nodes_into_passed_failed_and_unresolvable() -> None:
    busy = [
        pod(f"p{i}", gpus=1, node="b", phase="Running", annotations=assigned("b", i))
        for i in range(7)
    ]
    store = make_store(
        nodes=[gpu_node("a"), gpu_node("b"), cpu_node("c"), gpu_node("small", gpus=2)], pods=busy
    )
    demand = store.demand(pod("new", gpus=4))
    result = store.filter(demand, ["a", "b", "c", "small", "ghost"])
    assert result.passed == ["a"]
    # Busy GPUs can be freed by preemption: resolvable. Too few GPUs in total: unresolvable.
    assert set(result.failed) == {"b", "ghost"}
    assert "1 of 8 GPUs free" in result.failed["b"]
    assert "unknown" in result.failed["ghost"]
    assert set(result.unresolvable) == {"c", "small"}
    assert "2 GPUs in total" in result.unresolvable["small"]


def test_filter_answers_only_for_the_names_asked() -> None:
    store = make_store()
    result = store.filter(store.demand(pod("p", gpus=1)), ["b"])
    assert result.passed == ["b"]
    assert result.failed == {} and result.unresolvable == {}


def test_prioritize_scores_every_named_node_in_order() -> None:
    store = make_store()
    # b has one GPU taken: an 8-GPU pod fits only on a.
    store.upsert_pod(pod("x", gpus=1, node="b", phase="Running", annotations=assigned("b", 0)))
    scored = store.prioritize(store.demand(pod("p", gpus=8)), ["c", "a", "b", "ghost"])
    assert [s.node for s in scored] == ["c", "a", "b", "ghost"]
    by_node = {s.node: s.score for s in scored}
    assert by_node == {"c": 0, "a": 10, "b": 0, "ghost": 0}
    assert all(isinstance(s.score, int) for s in scored)


def test_prioritize_prefers_the_node_caching_the_model() -> None:
    inv = inventory("b", PRESETS["hgx-h100-8"], models=[cached(LLAMA_70B, "host-memory")])
    store = make_store(inventories=[inv])
    demand = store.demand(
        pod("p", gpus=4, annotations=model_annotations(LLAMA_70B, max_model_len="8192"))
    )
    scores = {s.node: s.score for s in store.prioritize(demand, ["a", "b"])}
    assert scores["b"] == 10
    assert 0 <= scores["a"] < 10


def test_extra_nodes_are_judged_when_the_store_lacks_them() -> None:
    from scheduler.state.objects import node_state

    store = make_store()
    extra = {"new": node_state(gpu_node("new", gpus=4), None, (), CATALOG)}
    result = store.filter(store.demand(pod("p", gpus=4)), ["new", "ghost"], extra)
    assert result.passed == ["new"]
    assert set(result.failed) == {"ghost"}


# ---- bind ---------------------------------------------------------------------------------


def test_bind_chooses_records_and_shrinks_the_free_set() -> None:
    inv = inventory("a", PRESETS["hgx-h100-8"])
    store = make_store(inventories=[inv])
    p = pod("p", gpus=4)
    store.demand(p)
    result = store.bind("llm", "p", "uid-llm-p", "a")
    assert not result.already_bound
    assert len(result.prediction.indices) == 4
    assert result.prediction.node == "a"
    assert result.prediction.uuids == tuple(f"GPU-a-{i}" for i in result.prediction.indices)
    assert "predicted-gpus=" in result.placement
    taken = set(result.prediction.indices)
    assert free(store, "a") == frozenset(range(8)) - taken
    record = store.pod("uid-llm-p")
    assert record is not None and record.node == "a" and record.prediction == result.prediction
    assert store.allocations()["llm/p"] == result.prediction


def test_bind_without_inventory_has_no_uuids() -> None:
    store = make_store()
    store.demand(pod("p", gpus=2))
    result = store.bind("llm", "p", "uid-llm-p", "a")
    assert result.prediction.uuids == ()
    assert len(result.prediction.indices) == 2


def test_a_second_pod_never_gets_the_same_gpus() -> None:
    store = make_store()
    chosen: list[set[int]] = []
    for i in range(4):
        store.demand(pod(f"p{i}", gpus=2))
        chosen.append(set(store.bind("llm", f"p{i}", f"uid-llm-p{i}", "a").prediction.indices))
    assert set().union(*chosen) == set(range(8))
    assert free(store, "a") == frozenset()
    store.demand(pod("late", gpus=1))
    with pytest.raises(BindError, match="no longer fits"):
        store.bind("llm", "late", "uid-llm-late", "a")


def test_bind_is_idempotent_for_the_same_pod_and_node() -> None:
    store = make_store()
    store.demand(pod("p", gpus=2))
    first = store.bind("llm", "p", "uid-llm-p", "a")
    again = store.bind("llm", "p", "uid-llm-p", "a")
    assert again.already_bound
    assert again.prediction == first.prediction
    assert free(store, "a") == frozenset(range(8)) - set(first.prediction.indices)


def test_bind_of_a_bound_pod_to_another_node_errors() -> None:
    store = make_store()
    store.demand(pod("p", gpus=2))
    first = store.bind("llm", "p", "uid-llm-p", "a")
    with pytest.raises(BindError, match="already bound to a"):
        store.bind("llm", "p", "uid-llm-p", "b")
    assert free(store, "b") == frozenset(range(8))
    assert free(store, "a") == frozenset(range(8)) - set(first.prediction.indices)


def test_bind_of_a_pod_bound_in_the_loaded_objects_is_idempotent() -> None:
    store = make_store(
        pods=[pod("x", gpus=2, node="a", phase="Running", annotations=assigned("a", 6, 7))]
    )
    result = store.bind("llm", "x", "uid-llm-x", "a")
    assert result.already_bound
    assert result.prediction.indices == (6, 7)
    with pytest.raises(BindError):
        store.bind("llm", "x", "uid-llm-x", "b")


def test_bind_of_an_unseen_uid_errors() -> None:
    store = make_store()
    store.demand(pod("p", gpus=2))
    with pytest.raises(BindError, match="not seen"):
        store.bind("llm", "p", "some-other-uid", "a")
    assert free(store, "a") == frozenset(range(8))


def test_bind_to_an_unknown_node_errors() -> None:
    store = make_store()
    store.demand(pod("p", gpus=2))
    with pytest.raises(BindError, match="ghost"):
        store.bind("llm", "p", "uid-llm-p", "ghost")


def test_bind_when_the_node_no_longer_fits_errors() -> None:
    store = make_store()
    store.demand(pod("p", gpus=8))
    store.demand(pod("q", gpus=8))
    assert store.filter(store.demand(pod("q", gpus=8)), ["a"]).passed == ["a"]
    store.bind("llm", "p", "uid-llm-p", "a")
    with pytest.raises(BindError, match="no longer fits a"):
        store.bind("llm", "q", "uid-llm-q", "a")
    assert store.pod("uid-llm-q") is None


def test_bind_to_a_node_that_cannot_fit_at_all_errors() -> None:
    store = make_store()
    store.demand(pod("p", gpus=2))
    with pytest.raises(BindError):
        store.bind("llm", "p", "uid-llm-p", "c")


def test_bind_of_a_pod_with_a_broken_annotation_errors() -> None:
    store = make_store()
    store.demand(pod("p", gpus=2, annotations={"kvsched.io/max-model-len": "8192"}))
    with pytest.raises(BindError, match="max-model-len"):
        store.bind("llm", "p", "uid-llm-p", "a")


# ---- memo ---------------------------------------------------------------------------------


def test_memo_is_not_stale_after_bind() -> None:
    store = make_store(nodes=[gpu_node("a"), gpu_node("twin")])
    shape = pod("p", gpus=8)
    assert store.filter(store.demand(shape), ["a", "twin"]).passed == ["a", "twin"]
    store.bind("llm", "p", "uid-llm-p", "a")
    # The same-shaped demand again (another pod): a is full now, twin still fits.
    again = store.filter(store.demand(pod("q", gpus=8)), ["a", "twin"])
    assert again.passed == ["twin"]
    assert "0 of 8 GPUs free" in again.failed["a"]


def test_memo_is_not_stale_after_partial_bind() -> None:
    store = make_store(nodes=[gpu_node("a")])
    first = explain_rows(store, store.demand(pod("probe", gpus=2)), ["a"])[0]["predictedGpus"]
    store.demand(pod("p", gpus=2))
    taken = store.bind("llm", "p", "uid-llm-p", "a").prediction.indices
    second = explain_rows(store, store.demand(pod("probe", gpus=2)), ["a"])[0]["predictedGpus"]
    assert not set(second) & set(taken)
    assert tuple(first) == taken  # the probe's best set was the one bind took


def test_memo_follows_node_upserts() -> None:
    store = make_store(nodes=[gpu_node("a")])
    demand = store.demand(pod("p", gpus=8))
    assert store.filter(demand, ["a"]).passed == ["a"]
    store.upsert_node(gpu_node("a", gpus=4))
    result = store.filter(store.demand(pod("p", gpus=8)), ["a"])
    assert result.passed == []
    assert "4 GPUs in total" in result.unresolvable["a"]
    store.upsert_node(gpu_node("a", gpus=8))
    assert store.filter(demand, ["a"]).passed == ["a"]


def test_memo_follows_model_cache_changes() -> None:
    store = make_store(nodes=[gpu_node("a")])
    demand = store.demand(
        pod("p", gpus=4, annotations=model_annotations(LLAMA_70B, max_model_len="8192"))
    )
    cold = explain_rows(store, demand, ["a"])[0]["coldStart"]
    assert cold["tier"] == "network"
    store.upsert_inventory(inventory("a", PRESETS["hgx-h100-8"], models=[cached(LLAMA_70B, "gpu")]))
    warm = explain_rows(store, demand, ["a"])[0]["coldStart"]
    assert warm["tier"] == "gpu"
    assert warm["readySeconds"] < cold["readySeconds"]


# ---- watch-style updates ------------------------------------------------------------------


def test_upsert_and_delete_pod_update_the_node() -> None:
    store = make_store()
    bound = pod("x", gpus=3, node="a", phase="Running", annotations=assigned("a", 1, 2, 3))
    store.upsert_pod(bound)
    assert free(store, "a") == frozenset({0, 4, 5, 6, 7})
    assert store.pod_object("llm", "x") is bound
    store.delete_pod("uid-llm-x")
    assert free(store, "a") == frozenset(range(8))
    assert store.pod("uid-llm-x") is None
    assert store.pod_object("llm", "x") is None


def test_pod_finishing_frees_its_gpus() -> None:
    store = make_store()
    store.upsert_pod(pod("x", gpus=2, node="a", phase="Running", annotations=assigned("a", 0, 1)))
    store.upsert_pod(pod("x", gpus=2, node="a", phase="Succeeded", annotations=assigned("a", 0, 1)))
    assert free(store, "a") == frozenset(range(8))


def test_pod_moving_nodes_rebuilds_both() -> None:
    store = make_store()
    store.upsert_pod(pod("x", gpus=2, node="a", phase="Running"))
    assert len(free(store, "a")) == 6
    store.upsert_pod(pod("x", gpus=2, node="b", phase="Running"))
    assert len(free(store, "a")) == 8
    assert len(free(store, "b")) == 6


def test_delete_unknown_pod_is_a_no_op() -> None:
    store = make_store()
    store.delete_pod("nope")
    assert len(free(store, "a")) == 8


def test_upsert_and_delete_node() -> None:
    store = make_store()
    store.upsert_node(gpu_node("d", gpus=4))
    assert "d" in store.node_names()
    assert store.filter(store.demand(pod("p", gpus=4)), ["d"]).passed == ["d"]
    store.delete_node("d")
    assert store.node("d") is None
    assert "d" not in store.node_names()
    result = store.filter(store.demand(pod("p", gpus=4)), ["d"])
    assert "d" in result.failed and "unknown" in result.failed["d"]


def test_pods_of_a_node_survive_its_delete_and_re_add() -> None:
    store = make_store()
    store.upsert_pod(pod("x", gpus=2, node="a", phase="Running", annotations=assigned("a", 0, 1)))
    store.delete_node("a")
    store.upsert_node(gpu_node("a"))
    assert free(store, "a") == frozenset(range(2, 8))


def test_upsert_and_delete_inventory() -> None:
    store = make_store()
    inv = inventory(
        "a",
        PRESETS["l40s-pcie-8"],
        memory_bytes=48 * 2**30,
        product="NVIDIA L40S",
        allocated=[(0, "llm/other")],
    )
    store.upsert_inventory(inv)
    state = store.node("a")
    assert state is not None and state.source == "inventory"
    assert state.gpu_memory_bytes == 48 * 2**30
    assert free(store, "a") == frozenset(range(1, 8))
    store.delete_inventory("a")
    state = store.node("a")
    assert state is not None and state.source == "labels"
    assert free(store, "a") == frozenset(range(8))


class MismatchLog:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def prediction_mismatch(self, node: str, pod: str) -> None:
        self.seen.append((node, pod))


def test_the_kubelets_report_corrects_a_wrong_prediction_within_one_event() -> None:
    # The pod was bound with a prediction of 0-3; the agent then reports the kubelet gave 4-7.
    x = pod("x", gpus=4, node="a", annotations=assigned("a", 0, 1, 2, 3))
    store = make_store(pods=[x])
    log = MismatchLog()
    store.observer = log
    assert free(store, "a") == frozenset(range(4, 8))
    truth = inventory("a", PRESETS["hgx-h100-8"], allocated=[(i, "llm/x") for i in range(4, 8)])
    store.upsert_inventory(truth)
    assert free(store, "a") == frozenset(range(4))
    assert log.seen == [("a", "llm/x")]
    assert store.prediction_mismatches == 1
    # Counted once, however often the node is rebuilt.
    store.upsert_inventory(dict(truth))
    store.upsert_pod(dict(x))
    assert store.prediction_mismatches == 1
    # The next 4-GPU pod is predicted on the GPUs that are really free.
    row = explain_rows(store, store.demand(pod("next", gpus=4)), ["a"])[0]
    assert row["predictedGpus"] == [0, 1, 2, 3]
    assert row["heldGpus"] == [
        {"index": i, "pod": "llm/x", "source": "kubelet"} for i in (4, 5, 6, 7)
    ]


def test_explain_says_which_gpus_are_held_on_a_prediction() -> None:
    store = make_store(pods=[pod("x", gpus=2, node="a", annotations=assigned("a", 6, 7))])
    row = explain_rows(store, store.demand(pod("next", gpus=2)), ["a"])[0]
    assert row["heldGpus"] == [
        {"index": 6, "pod": "llm/x", "source": "prediction"},
        {"index": 7, "pod": "llm/x", "source": "prediction"},
    ]


def test_inventory_for_a_node_not_yet_known_applies_when_the_node_arrives() -> None:
    store = make_store()
    store.upsert_inventory(
        inventory("late", PRESETS["hgx-h100-4"], models=[cached(LLAMA_70B, "local-disk")])
    )
    assert store.node("late") is None
    store.upsert_node(gpu_node("late", gpus=4))
    state = store.node("late")
    assert state is not None and state.source == "inventory"
    copy = state.residency(LLAMA_70B.lower(), None)
    assert copy is not None and copy.tier is Tier.LOCAL_DISK


def test_node_facts_are_reparsed_only_when_the_node_or_its_inventory_changes() -> None:
    store = make_store(inventories=[inventory("a", PRESETS["hgx-h100-8"])])
    before = store.node("a")
    assert before is not None and before.topology is not None
    # A pod binding changes the GPU accounting, not the parsed topology.
    store.upsert_pod(pod("p", gpus=2, node="a"))
    after_pod = store.node("a")
    assert after_pod is not None and after_pod.topology is before.topology
    assert len(free(store, "a")) == 6
    # A new inventory object (what a watch delivers) is parsed again: new residency shows.
    store.upsert_inventory(
        inventory("a", PRESETS["hgx-h100-8"], models=[cached(LLAMA_70B, "host-memory")])
    )
    after_inventory = store.node("a")
    assert after_inventory is not None and after_inventory.topology is not before.topology
    copy = after_inventory.residency(LLAMA_70B.lower(), None)
    assert copy is not None and copy.tier is Tier.HOST_MEMORY
    assert len(free(store, "a")) == 6  # the pod still holds its two
    # So is a changed Node: its labels show.
    store.upsert_node(gpu_node("a", labels={"zone": "z2"}))
    relabelled = store.node("a")
    assert relabelled is not None and relabelled.labels.get("zone") == "z2"


# ---- explain ------------------------------------------------------------------------------


def test_explain_rows_best_first_with_reasons() -> None:
    store = make_store()
    rows = explain_rows(store, store.demand(pod("p", gpus=4)))
    assert [r["node"] for r in rows][-1] == "c"
    assert {r["node"] for r in rows} == {"a", "b", "c"}
    fit = rows[0]
    assert fit["fits"] and fit["reason"] == "fits" and len(fit["predictedGpus"]) == 4
    assert fit["score"] == 10 and "gpuSet" in fit
    cpu = rows[-1]
    assert not cpu["fits"] and cpu["unresolvable"] and "nvidia.com/gpu" in cpu["reason"]


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(min_value=1, max_value=8), st.sampled_from(["a", "b", "l4"])),
        max_size=12,
    )
)
def test_memo_always_agrees_with_a_fresh_evaluation(steps: list[tuple[int, str]]) -> None:
    store = make_store(
        nodes=[gpu_node("a"), gpu_node("b"), gpu_node("l4", gpus=4, product="NVIDIA-L4")]
    )
    names = ["a", "b", "l4"]
    for number, (gpus, target) in enumerate(steps):
        the_pod = pod(f"p{number}", gpus=gpus)
        demand = store.demand(the_pod)
        result = store.filter(demand, names)
        for name in names:
            state = store.node(name)
            assert state is not None
            fresh = evaluate(demand, state)
            assert (name in result.passed) == fresh.fits
        if target in result.passed:
            taken = store.bind("llm", f"p{number}", f"uid-llm-p{number}", target)
            assert len(taken.prediction.indices) == gpus
        else:
            with pytest.raises(BindError):
                store.bind("llm", f"p{number}", f"uid-llm-p{number}", target)
    # Never more GPUs handed out than a node has, never one GPU twice.
    per_node: dict[str, list[int]] = {}
    for prediction in store.allocations().values():
        per_node.setdefault(prediction.node, []).extend(prediction.indices)
    for node, indices in per_node.items():
        assert len(indices) == len(set(indices))
        state = store.node(node)
        assert state is not None
        assert set(indices).isdisjoint(state.free_gpus)
