"""Node / NodeInventory / Pod objects -> NodeState (inventory first, GFD labels as fallback)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.k8s import cached, cpu_node, gpu_node, inventory, pod

from scheduler.core.assignment import GpuPrediction
from scheduler.core.node import Bandwidth, Tier
from scheduler.models.catalog import Catalog
from scheduler.state.objects import node_state, pod_record
from topology.model import LinkKind
from topology.presets import PRESETS

CATALOG = Catalog.builtin()
MIB = 2**20
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


def assigned(node: str, *indices: int, uuids: tuple[str, ...] = ()) -> dict[str, str]:
    return {"kvsched.io/predicted-gpus": GpuPrediction(node, indices, uuids).encode()}


def bound(name: str, node: str, gpus: int, *indices: int, phase: str = "Running") -> Any:
    annotations = assigned(node, *indices) if indices else {}
    return pod_record(pod(name, gpus=gpus, node=node, phase=phase, annotations=annotations))


# ---- inventory ----------------------------------------------------------------------------


def test_inventory_wins_over_labels_for_links_numa_memory_and_uuids() -> None:
    topo = PRESETS["l40s-pcie-8"]
    node = gpu_node("a", gpus=8)  # labelled as H100 SXM
    inv = inventory("a", topo, memory_bytes=48 * 2**30, product="NVIDIA L40S")
    state = node_state(node, inv, (), CATALOG)
    assert state.source == "inventory"
    assert state.topology is not None
    assert state.topology.codes() == topo.codes()
    assert [g.numa_node for g in state.topology.gpus] == [g.numa_node for g in topo.gpus]
    assert [g.uuid for g in state.topology.gpus] == [f"GPU-a-{i}" for i in range(8)]
    assert state.gpu_memory_bytes == 48 * 2**30
    assert state.gpu_product == "L40S-48GB"
    assert state.free_gpus == frozenset(range(8))
    assert state.allocatable_gpus == 8


def test_inventory_gpus_out_of_order_are_sorted_by_index() -> None:
    topo = PRESETS["l40s-pcie-4"]
    inv = inventory("a", topo, product="NVIDIA L40S")
    inv["status"]["gpus"].reverse()
    state = node_state(gpu_node("a", gpus=4), inv, (), CATALOG)
    assert state.source == "inventory"
    assert state.topology is not None
    assert [g.uuid for g in state.topology.gpus] == [f"GPU-a-{i}" for i in range(4)]


def test_smallest_gpu_memory_counts_when_they_differ() -> None:
    inv = inventory("a", PRESETS["hgx-h100-4"], memory_bytes=80 * 2**30)
    inv["status"]["gpus"][2]["memoryBytes"] = 40 * 2**30
    state = node_state(gpu_node("a", gpus=4), inv, (), CATALOG)
    assert state.gpu_memory_bytes == 40 * 2**30


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda s: s.update(links=[["X", "NV18"], ["NV18", "X"]]), id="wrong-size"),
        pytest.param(lambda s: s["links"][0].__setitem__(1, "BOGUS"), id="unknown-code"),
        pytest.param(lambda s: s["links"][0].__setitem__(1, "SYS"), id="asymmetric"),
        pytest.param(lambda s: s["links"][1].__setitem__(1, "NV18"), id="diagonal"),
        pytest.param(lambda s: s["gpus"][3].pop("index"), id="gpu-without-index"),
        pytest.param(lambda s: s["gpus"][3].__setitem__("index", 9), id="index-gap"),
        pytest.param(lambda s: s["gpus"][3].__setitem__("index", "three"), id="index-text"),
    ],
)
def test_malformed_inventory_topology_falls_back_to_labels(
    mangle: Any, caplog: pytest.LogCaptureFixture
) -> None:
    inv = inventory("gpu-z", PRESETS["hgx-h100-4"])
    mangle(inv["status"])
    with caplog.at_level(logging.WARNING, logger="scheduler.state.objects"):
        state = node_state(gpu_node("gpu-z", gpus=4), inv, (), CATALOG)
    assert state.source == "labels"
    assert state.topology == PRESETS["hgx-h100-4"]
    assert state.allocatable_gpus == 4
    assert state.free_gpus == frozenset(range(4))
    assert any("gpu-z" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_links_that_are_not_a_matrix_fall_back_to_labels() -> None:
    inv = inventory("gpu-z", PRESETS["hgx-h100-4"])
    inv["status"]["links"] = "X NV18 NV18 NV18"
    state = node_state(gpu_node("gpu-z", gpus=4), inv, (), CATALOG)
    assert state.source == "labels"
    assert state.topology == PRESETS["hgx-h100-4"]


def test_links_that_are_not_a_matrix_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    inv = inventory("gpu-z", PRESETS["hgx-h100-4"])
    inv["status"]["links"] = "X NV18 NV18 NV18"
    with caplog.at_level(logging.WARNING, logger="scheduler.state.objects"):
        node_state(gpu_node("gpu-z", gpus=4), inv, (), CATALOG)
    assert any("gpu-z" in r.getMessage() for r in caplog.records)


def test_inventory_allocated_entries_remove_those_indices() -> None:
    inv = inventory("a", PRESETS["hgx-h100-8"], allocated=[(0, "llm/x"), (5, "llm/y")])
    state = node_state(gpu_node("a"), inv, (), CATALOG)
    assert state.free_gpus == frozenset({1, 2, 3, 4, 6, 7})
    assert state.unindexed_busy == 0


# ---- truth (the kubelet, through the agent) against prediction (kvsched's annotation) --------


def held(state: Any) -> dict[int, tuple[str, str]]:
    return {i: (h.pod, h.source) for i, h in state.holders.items()}


def test_the_kubelets_gpus_replace_the_prediction_and_are_counted_once() -> None:
    # kvsched predicted 0-3; the device plugin gave 4-7: the pod holds 4-7, and 0-3 are free.
    inv = inventory("a", PRESETS["hgx-h100-8"], allocated=[(i, "llm/x") for i in (4, 5, 6, 7)])
    state = node_state(gpu_node("a"), inv, [bound("x", "a", 4, 0, 1, 2, 3)], CATALOG)
    assert state.free_gpus == frozenset({0, 1, 2, 3})
    assert state.unindexed_busy == 0
    assert held(state) == dict.fromkeys((4, 5, 6, 7), ("llm/x", "kubelet"))
    assert [(m.pod, m.predicted, m.actual) for m in state.mismatches] == [
        ("llm/x", (0, 1, 2, 3), (4, 5, 6, 7))
    ]


def test_a_prediction_counts_until_the_kubelet_reports_the_pod() -> None:
    # The agent's last report predates the new pod: its prediction holds its GPUs meanwhile.
    inv = inventory("a", PRESETS["hgx-h100-8"], allocated=[(0, "llm/old"), (1, "llm/old")])
    pods = [bound("old", "a", 2, 0, 1), bound("new", "a", 2, 2, 3)]
    state = node_state(gpu_node("a"), inv, pods, CATALOG)
    assert state.free_gpus == frozenset(range(4, 8))
    assert held(state) == {
        0: ("llm/old", "kubelet"),
        1: ("llm/old", "kubelet"),
        2: ("llm/new", "prediction"),
        3: ("llm/new", "prediction"),
    }
    assert state.mismatches == ()


def test_a_prediction_on_gpus_the_kubelet_gave_another_pod_still_counts_the_pod() -> None:
    # "new" was predicted on 4,5, which the kubelet gave "old": new holds two GPUs somewhere.
    inv = inventory("a", PRESETS["hgx-h100-8"], allocated=[(4, "llm/old"), (5, "llm/old")])
    pods = [bound("old", "a", 2, 0, 1), bound("new", "a", 2, 4, 5)]
    state = node_state(gpu_node("a"), inv, pods, CATALOG)
    assert state.free_gpus == frozenset({0, 1, 2, 3, 6, 7})
    assert state.unindexed_busy == 2
    assert len(state.usable_free_gpus) == 4  # 8 GPUs, 4 held: each pod counted once


def test_a_pod_gone_from_the_kubelets_report_frees_its_gpus() -> None:
    before = inventory("a", PRESETS["hgx-h100-8"], allocated=[(4, "llm/x"), (5, "llm/x")])
    after = inventory("a", PRESETS["hgx-h100-8"], allocated=[])
    assert node_state(gpu_node("a"), before, [], CATALOG).free_gpus == frozenset({0, 1, 2, 3, 6, 7})
    assert node_state(gpu_node("a"), after, [], CATALOG).free_gpus == frozenset(range(8))


def test_predictions_mirrored_by_the_controller_are_not_counted_again() -> None:
    mirror = inventory(
        "a",
        PRESETS["hgx-h100-8"],
        allocated=[(0, "llm/x"), (1, "llm/x")],
        allocated_source="prediction",
    )
    state = node_state(gpu_node("a"), mirror, [bound("x", "a", 2, 0, 1)], CATALOG)
    assert state.free_gpus == frozenset(range(2, 8))
    assert held(state) == {0: ("llm/x", "prediction"), 1: ("llm/x", "prediction")}
    # An allocated list nobody vouches for (no allocatedSource) is not the truth either.
    unsigned = inventory(
        "a", PRESETS["hgx-h100-8"], allocated=[(7, "llm/y")], allocated_source=None
    )
    assert node_state(gpu_node("a"), unsigned, [], CATALOG).free_gpus == frozenset(range(8))


def test_gpus_the_kubelet_does_not_offer_are_unavailable() -> None:
    inv = inventory("a", PRESETS["hgx-h100-8"])
    inv["status"]["allocatableGpus"] = [0, 1, 2, 3, 4, 5, 7]  # GPU 6 unhealthy
    state = node_state(gpu_node("a"), inv, [], CATALOG)
    assert state.free_gpus == frozenset({0, 1, 2, 3, 4, 5, 7})
    assert held(state) == {6: ("", "unavailable")}
    assert state.unindexed_busy == 0


@settings(max_examples=200, deadline=None)
@given(
    truth=st.dictionaries(st.integers(0, 7), st.sampled_from(["llm/p0", "llm/p1", "llm/p2"])),
    predictions=st.lists(
        st.tuples(st.integers(1, 4), st.lists(st.integers(0, 7), unique=True, max_size=4)),
        max_size=3,
    ),
)
def test_each_pod_is_counted_once_whatever_truth_and_predictions_say(
    truth: dict[int, str], predictions: list[tuple[int, list[int]]]
) -> None:
    inv = inventory("a", PRESETS["hgx-h100-8"], allocated=sorted(truth.items()))
    pods = [
        bound(f"p{n}", "a", gpus, *(indices if len(indices) == gpus else ()))
        for n, (gpus, indices) in enumerate(predictions)
    ]
    state = node_state(gpu_node("a"), inv, pods, CATALOG)
    reported = set(truth.values())
    expected_busy = len(truth) + sum(
        gpus for n, (gpus, _) in enumerate(predictions) if f"llm/p{n}" not in reported
    )
    assert 8 - len(state.free_gpus) + state.unindexed_busy == expected_busy


def test_inventory_allocated_out_of_range_or_junk_is_ignored() -> None:
    inv = inventory("a", PRESETS["hgx-h100-4"])
    inv["status"]["allocated"] = [
        {"index": 7, "pod": "llm/x"},
        {"index": "1", "pod": "llm/y"},
        "junk",
        {"pod": "llm/z"},
    ]
    state = node_state(gpu_node("a", gpus=4), inv, (), CATALOG)
    assert state.free_gpus == frozenset(range(4))


def test_inventory_and_annotation_of_the_same_pod_are_not_double_counted() -> None:
    inv = inventory("a", PRESETS["hgx-h100-8"], allocated=[(0, "llm/x"), (1, "llm/x")])
    with_annotation = bound("x", "a", 2, 0, 1)
    state = node_state(gpu_node("a"), inv, [with_annotation], CATALOG)
    assert state.free_gpus == frozenset(range(2, 8))
    assert state.unindexed_busy == 0
    # Without the annotation the inventory still names the pod: not counted a second time.
    without = bound("x", "a", 2)
    state = node_state(gpu_node("a"), inv, [without], CATALOG)
    assert state.free_gpus == frozenset(range(2, 8))
    assert state.unindexed_busy == 0
    assert len(state.usable_free_gpus) == 6


# ---- GFD labels ---------------------------------------------------------------------------


def test_labels_only_node_uses_the_product_preset() -> None:
    state = node_state(gpu_node("a", gpus=8), None, (), CATALOG)
    assert state.source == "labels"
    assert state.topology == PRESETS["hgx-h100-8"]
    assert state.topology is not None
    assert all(state.topology.link(0, j).kind is LinkKind.NVLINK for j in range(1, 8))
    assert state.gpu_product == "H100-SXM-80GB"
    assert state.gpu_memory_bytes == 81559 * MIB
    assert state.allocatable_gpus == 8
    assert state.free_gpus == frozenset(range(8))


def test_labels_only_pcie_node_gets_a_pcie_tree() -> None:
    state = node_state(
        gpu_node("a", gpus=4, product="NVIDIA-L40S", memory_mib=46068), None, (), CATALOG
    )
    assert state.topology == PRESETS["l40s-pcie-4"]
    assert state.gpu_product == "L40S-48GB"
    assert state.gpu_memory_bytes == 46068 * MIB


def test_label_count_follows_allocatable_not_gpu_count_label() -> None:
    node = gpu_node("a", gpus=8)
    node["status"]["allocatable"]["nvidia.com/gpu"] = "4"
    state = node_state(node, None, (), CATALOG)
    assert state.allocatable_gpus == 4
    assert state.topology is not None and state.topology.gpu_count == 4


def test_gpus_the_kubelet_does_not_offer_are_busy() -> None:
    # The inventory sees 8 GPUs but only 6 are allocatable (e.g. two unhealthy).
    node = gpu_node("a", gpus=8)
    node["status"]["allocatable"]["nvidia.com/gpu"] = "6"
    state = node_state(node, inventory("a", PRESETS["hgx-h100-8"]), (), CATALOG)
    assert state.allocatable_gpus == 6
    assert len(state.usable_free_gpus) == 6


def test_gfd_memory_label_wins_over_the_product_table() -> None:
    # GFD reports what the node's GPUs really have; the product table is a guess.
    state = node_state(gpu_node("a", gpus=8, memory_mib=81920), None, (), CATALOG)
    assert state.gpu_memory_bytes == 81920 * MIB


def test_memory_from_the_product_when_the_memory_label_is_missing() -> None:
    state = node_state(gpu_node("a", gpus=8, memory_mib=None), None, (), CATALOG)
    assert state.gpu_memory_bytes == 81559 * MIB


def test_unknown_product_assumes_sys_links_and_still_counts_gpus() -> None:
    state = node_state(
        gpu_node("a", gpus=4, product="Acme-Accelerator-X1", memory_mib=65536), None, (), CATALOG
    )
    assert state.source == "assumed"
    assert state.topology is not None
    assert state.topology.gpu_count == 4
    assert all(
        state.topology.link(i, j).kind is LinkKind.SYS for i in range(4) for j in range(4) if i != j
    )
    assert state.allocatable_gpus == 4
    assert state.free_gpus == frozenset(range(4))
    assert state.gpu_memory_bytes == 65536 * MIB
    assert state.gpu_product == "Acme-Accelerator-X1"


def test_gpus_without_product_label_are_still_counted() -> None:
    state = node_state(gpu_node("a", gpus=2, product=None, memory_mib=None), None, (), CATALOG)
    assert state.topology is not None and state.topology.gpu_count == 2
    assert state.gpu_memory_bytes == 0


def test_cpu_node_has_no_topology() -> None:
    state = node_state(cpu_node("c"), None, (), CATALOG)
    assert state.topology is None
    assert state.allocatable_gpus == 0
    assert state.free_gpus == frozenset()


def test_bad_gpu_quantity_counts_as_no_gpus() -> None:
    node = gpu_node("a")
    node["status"]["allocatable"]["nvidia.com/gpu"] = "lots"
    state = node_state(node, None, (), CATALOG)
    assert state.allocatable_gpus == 0
    assert state.free_gpus == frozenset()


# ---- pods ---------------------------------------------------------------------------------


def test_assigned_gpus_annotation_removes_exactly_those_indices() -> None:
    pods = [bound("x", "a", 2, 3, 6), bound("y", "a", 1, 0)]
    state = node_state(gpu_node("a"), None, pods, CATALOG)
    assert state.free_gpus == frozenset({1, 2, 4, 5, 7})
    assert state.unindexed_busy == 0
    assert state.usable_free_gpus == state.free_gpus


def test_bound_pods_without_annotation_count_as_unindexed_busy() -> None:
    pods = [bound("x", "a", 2), bound("y", "a", 1)]
    state = node_state(gpu_node("a"), None, pods, CATALOG)
    assert state.free_gpus == frozenset(range(8))
    assert state.unindexed_busy == 3
    # Charged to the lowest free indices, as the device plugin would pick them.
    assert state.usable_free_gpus == frozenset(range(3, 8))


@pytest.mark.parametrize(
    "annotation",
    [
        pytest.param(GpuPrediction("other-node", (0, 1)).encode(), id="other-node"),
        pytest.param(GpuPrediction("a", (0,)).encode(), id="too-few-indices"),
        pytest.param(GpuPrediction("a", (7, 8)).encode(), id="index-out-of-range"),
        pytest.param("not json", id="not-json"),
        pytest.param(json.dumps({"node": "a", "indices": [1, 1]}), id="duplicate-indices"),
    ],
)
def test_unusable_annotation_still_counts_the_pods_gpus(annotation: str) -> None:
    record = pod_record(
        pod(
            "x",
            gpus=2,
            node="a",
            phase="Running",
            annotations={"kvsched.io/predicted-gpus": annotation},
        )
    )
    state = node_state(gpu_node("a"), None, [record], CATALOG)
    assert len(state.usable_free_gpus) == 6


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pods_hold_no_gpus(phase: str) -> None:
    pods = [bound("x", "a", 2, 0, 1, phase=phase), bound("y", "a", 4, phase=phase)]
    state = node_state(gpu_node("a"), None, pods, CATALOG)
    assert state.free_gpus == frozenset(range(8))
    assert state.unindexed_busy == 0


def test_pending_bound_pod_holds_gpus() -> None:
    state = node_state(gpu_node("a"), None, [bound("x", "a", 2, 4, 5, phase="Pending")], CATALOG)
    assert state.free_gpus == frozenset({0, 1, 2, 3, 6, 7})


def test_pods_of_other_nodes_and_unbound_pods_do_not_count() -> None:
    pods = [
        bound("x", "b", 2, 0, 1),
        pod_record(pod("pending", gpus=4)),
        pod_record(pod("cpu-only", gpus=0, node="a", phase="Running")),
    ]
    state = node_state(gpu_node("a"), None, pods, CATALOG)
    assert state.free_gpus == frozenset(range(8))
    assert state.unindexed_busy == 0


def test_pod_record_reads_the_assignment_and_defaults() -> None:
    obj = pod(
        "x",
        gpus=2,
        node="a",
        annotations={**assigned("a", 2, 3, uuids=("GPU-2", "GPU-3")), "kvsched.io/model": LLAMA_8B},
    )
    record = pod_record(obj)
    assert record.prediction == GpuPrediction("a", (2, 3), ("GPU-2", "GPU-3"))
    assert record.gpus == 2 and record.node == "a" and record.model == LLAMA_8B
    assert record.ref == "llm/x" and record.uid == "uid-llm-x"
    bare = pod_record({"metadata": {"name": "p"}, "spec": {"containers": []}})
    assert bare.namespace == "default" and bare.uid == "default/p"
    assert bare.phase == "Pending" and bare.node is None and not bare.holds_gpus


# ---- model cache and bandwidth ------------------------------------------------------------


def test_model_cache_entries_resolve_aliases_and_case_to_canonical_names() -> None:
    inv = inventory(
        "a",
        PRESETS["hgx-h100-8"],
        models=[
            cached("LLAMA-3.1-8B", "local-disk"),
            cached("meta-llama/llama-3.1-8b-instruct", "host-memory", revision="abc123"),
            cached("Some-Org/Private-Model", "gpu"),
            cached("bad-tier-model", "tape"),
        ],
    )
    state = node_state(gpu_node("a"), inv, (), CATALOG)
    canonical = "meta-llama/llama-3.1-8b-instruct"
    assert set(state.models) == {canonical, "some-org/private-model"}
    assert len(state.models[canonical]) == 2
    best = state.residency(canonical, None)
    assert best is not None and best.tier is Tier.HOST_MEMORY
    pinned = state.residency(canonical, "abc123")
    assert pinned is not None and pinned.revision == "abc123"
    assert state.residency(canonical, "other-rev") is None
    unknown = state.residency("some-org/private-model", None)
    assert unknown is not None and unknown.tier is Tier.GPU


def test_bandwidth_from_inventory_quantities_and_defaults() -> None:
    inv = inventory("a", PRESETS["hgx-h100-8"])
    # Quantities may be numbers or Kubernetes quantity strings.
    inv["status"]["bandwidth"] = {"network": 2e9, "localDisk": "10G", "hostMemory": 0}
    state = node_state(gpu_node("a"), inv, (), CATALOG)
    default = Bandwidth()
    assert state.bandwidth.network == 2e9
    assert state.bandwidth.local_disk == 10e9
    # Zero (or unparsable) means "unknown": the default stays.
    assert state.bandwidth.host_memory == default.host_memory


def test_no_inventory_means_default_bandwidth_and_no_models() -> None:
    state = node_state(gpu_node("a"), None, (), CATALOG)
    assert state.bandwidth == Bandwidth()
    assert dict(state.models) == {}


def test_labels_are_kept_for_topology_keys() -> None:
    node = gpu_node("a", labels={"nvidia.com/gpu.clique": "cluster-1.7"})
    state = node_state(node, None, (), CATALOG)
    assert state.labels["nvidia.com/gpu.clique"] == "cluster-1.7"
    assert state.name == "a"


@settings(max_examples=60, deadline=None)
@given(
    layout=st.lists(st.integers(min_value=0, max_value=4), min_size=8, max_size=8),
    unindexed=st.lists(st.integers(min_value=1, max_value=2), max_size=3),
    finished=st.booleans(),
)
def test_gpu_accounting_property(layout: list[int], unindexed: list[int], finished: bool) -> None:
    # layout[i] = which of four annotated pods holds GPU i (0 = free).
    holders: dict[int, list[int]] = {}
    for index, owner in enumerate(layout):
        if owner:
            holders.setdefault(owner, []).append(index)
    pods = [bound(f"p{owner}", "a", len(indices), *indices) for owner, indices in holders.items()]
    pods += [bound(f"u{i}", "a", gpus) for i, gpus in enumerate(unindexed)]
    if finished:
        pods.append(bound("done", "a", 8, *range(8), phase="Succeeded"))
    state = node_state(gpu_node("a"), None, pods, CATALOG)
    taken = {i for indices in holders.values() for i in indices}
    assert state.free_gpus == frozenset(range(8)) - taken
    assert state.unindexed_busy == sum(unindexed)
    expected = max(0, 8 - len(taken) - sum(unindexed))
    assert len(state.usable_free_gpus) == expected
    assert state.usable_free_gpus <= state.free_gpus
