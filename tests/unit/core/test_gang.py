"""Gang planning: whole groups inside one topology domain, all or nothing."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.k8s import pod

from scheduler.core.demand import PodDemand, parse_demand
from scheduler.core.gang import (
    DEFAULT_TOPOLOGY_KEYS,
    NVLINK_DOMAIN_LABEL,
    GangFailure,
    GangMember,
    GangPlan,
    kv_peer_distance,
    kv_peer_term,
    plan_gang,
    topology_key_for,
)
from scheduler.core.node import CachedModel, NodeState, Tier
from scheduler.models.catalog import Catalog
from topology.hardware import lookup_product
from topology.presets import PRESETS

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
CATALOG = Catalog.builtin()
ZONE = "topology.kubernetes.io/zone"
RACK = "example.com/rack"
PRODUCTS = {
    "hgx-h100-8": "H100-80",
    "a100-pcie-8-nvbridge": "A100-PCIE-40GB",
    "l40s-pcie-8": "L40S",
}


def node(
    name: str,
    *,
    zone: str | None = "a",
    clique: str | None = None,
    preset: str = "hgx-h100-8",
    free: set[int] | frozenset[int] | None = None,
    models: dict[str, Tier] | None = None,
    labels: dict[str, str] | None = None,
    unindexed_busy: int = 0,
) -> NodeState:
    topology = PRESETS[preset]
    gpu = lookup_product(PRODUCTS[preset])
    assert gpu is not None
    node_labels = {"kubernetes.io/hostname": name}
    if zone is not None:
        node_labels[ZONE] = zone
    if clique is not None:
        node_labels[NVLINK_DOMAIN_LABEL] = clique
    node_labels.update(labels or {})
    cached = {m.lower(): (CachedModel(m.lower(), tier),) for m, tier in (models or {}).items()}
    return NodeState(
        name=name,
        topology=topology,
        gpu_product=gpu.name,
        gpu_memory_bytes=gpu.memory_bytes,
        allocatable_gpus=topology.gpu_count,
        free_gpus=frozenset(range(topology.gpu_count) if free is None else free),
        unindexed_busy=unindexed_busy,
        models=cached,
        labels=node_labels,
        source="inventory",
    )


def member(
    name: str,
    gpus: int = 8,
    model: str | None = LLAMA_70B,
    gang: str = "g",
    size: int = 4,
    **extra: str,
) -> GangMember:
    annotations = {"kvsched.io/gang": gang, "kvsched.io/gang-size": str(size)}
    if model is not None:
        annotations["kvsched.io/model"] = model
        annotations["kvsched.io/max-model-len"] = "8192"
    annotations.update({f"kvsched.io/{k.replace('_', '-')}": v for k, v in extra.items()})
    demand: PodDemand = parse_demand(pod(name, gpus=gpus, annotations=annotations), CATALOG)
    return GangMember(uid=demand.uid, name=name, demand=demand)


def plan_of(result: GangPlan | GangFailure) -> GangPlan:
    assert isinstance(result, GangPlan), result
    return result


def failure_of(result: GangPlan | GangFailure) -> GangFailure:
    assert isinstance(result, GangFailure), result
    return result


def nodes_by_name(nodes: list[NodeState]) -> dict[str, NodeState]:
    return {n.name: n for n in nodes}


# -- domains --------------------------------------------------------------------------------


def test_four_member_group_stays_in_one_zone_although_the_other_has_more_free_nodes() -> None:
    # Zone a: 4 idle nodes with the weights in host memory. Zone b: 6 idle nodes, cold.
    nodes = [node(f"a{i}", zone="a", models={LLAMA_70B: Tier.HOST_MEMORY}) for i in range(4)]
    nodes += [node(f"b{i}", zone="b") for i in range(6)]
    members = [member(f"w{i}") for i in range(4)]
    plan = plan_of(plan_gang(members, nodes, topology_key=ZONE))
    by_name = nodes_by_name(nodes)
    assert plan.domain == "a" and plan.topology_key == ZONE
    assert {by_name[p.node].labels[ZONE] for p in plan.placements} == {"a"}
    assert sorted(p.node for p in plan.placements) == ["a0", "a1", "a2", "a3"]
    assert plan.nodes_used == 4


def test_group_is_never_split_when_only_one_zone_has_room_for_whole_members() -> None:
    # Zone b has more nodes and more free GPUs in total, but only 3 nodes with 8 free.
    nodes = [node(f"a{i}", zone="a") for i in range(4)]
    nodes += [node(f"b{i}", zone="b") for i in range(3)]
    nodes += [node(f"b-half{i}", zone="b", free={4, 5, 6, 7}) for i in range(5)]
    plan = plan_of(plan_gang([member(f"w{i}") for i in range(4)], nodes, topology_key=ZONE))
    assert plan.domain == "a"
    assert all(p.node.startswith("a") for p in plan.placements)


def test_a_domain_that_cannot_hold_everything_fails_even_if_the_cluster_could() -> None:
    # Six idle nodes in the cluster, three per zone: a 4 x 8 group fits nowhere.
    nodes = [node(f"{z}{i}", zone=z) for z in "ab" for i in range(3)]
    nodes.append(node("a-busy", zone="a", free={0, 1, 2, 3}))
    members = [member(f"w{i}") for i in range(4)]
    failure = failure_of(plan_gang(members, nodes, topology_key=ZONE))
    reason = failure.reason
    assert reason.startswith("gang llm/g needs 4 members x 8 GPUs in one " + ZONE)
    assert "zone=a" in reason and "holds 3 of 4" in reason
    assert "member w3 (8 GPUs)" in reason
    assert "a-busy" in reason and "4 of 8 GPUs free, pod needs 8" in reason
    # Without a topology key the whole cluster is one domain and the group fits.
    plan = plan_of(plan_gang(members, nodes, topology_key=None))
    assert plan.domain is None and plan.topology_key is None and plan.nodes_used == 4


def test_nodes_without_the_label_are_in_no_domain() -> None:
    nodes = [node("a0", zone="a"), node("x0", zone=None), node("x1", zone=None)]
    failure = failure_of(
        plan_gang([member("w0"), member("w1")], nodes, topology_key=ZONE),
    )
    assert "holds 1 of 2" in failure.reason
    nobody = failure_of(plan_gang([member("w0")], nodes, topology_key="example.com/missing"))
    assert "no candidate node carries the label example.com/missing" in nobody.reason
    assert "3 nodes checked" in nobody.reason


def test_explicit_topology_key_groups_by_that_label() -> None:
    # One zone, two racks: rack r1 has two idle nodes, rack r2 one idle node and a warm one.
    nodes = [
        node("n1", labels={RACK: "r1"}),
        node("n2", labels={RACK: "r1"}),
        node("n3", labels={RACK: "r2"}),
        node("n4", labels={RACK: "r2"}, free={0, 1, 2, 3}),
    ]
    members = [member("w0", size=2), member("w1", size=2)]
    key = topology_key_for(RACK, nodes)
    assert key == RACK
    plan = plan_of(plan_gang(members, nodes, topology_key=key))
    assert plan.domain == "r1" and {p.node for p in plan.placements} == {"n1", "n2"}
    assert plan.describe().startswith("gang llm/g (2 members) in rack=r1: ")


def test_topology_key_defaults_to_the_first_label_any_node_carries() -> None:
    zoned = [node("n1", zone="a"), node("n2", zone="b")]
    assert topology_key_for(None, zoned) == ZONE
    mixed = [*zoned, node("n3", zone="a", clique="c1")]
    assert topology_key_for(None, mixed) == NVLINK_DOMAIN_LABEL
    accel = [*zoned, node("n4", labels={DEFAULT_TOPOLOGY_KEYS[1]: "x"})]
    assert topology_key_for(None, accel) == DEFAULT_TOPOLOGY_KEYS[1]
    assert topology_key_for(None, [node("n5", zone=None)]) is None
    assert topology_key_for(None, []) is None
    assert topology_key_for(RACK, zoned) == RACK


# -- tightness and time to ready ------------------------------------------------------------


def test_two_four_gpu_members_share_one_node() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    members = [member("w0", gpus=4, size=2), member("w1", gpus=4, size=2)]
    plan = plan_of(plan_gang(members, nodes, topology_key=ZONE))
    assert plan.nodes_used == 1
    first, second = plan.placements
    assert first.node == second.node == "n1"
    assert set(first.gpus).isdisjoint(second.gpus)
    # Each member still gets an NVLink set within one NUMA half, as a single pod would.
    topology = PRESETS["hgx-h100-8"]
    for placement in plan.placements:
        assert len({topology.numa_of(i) for i in placement.gpus}) == 1
    assert plan.describe() == (
        "gang llm/g (2 members) in zone=a: w0->n1[0-3], w1->n1[4-7]; 1 node, "
        f"ready~{plan.ready_seconds:.0f}s"
    )


def test_same_node_beats_a_warmer_node() -> None:
    # Tightness ranks before time to ready for members after the first: the 8B member would
    # be ready sooner on n2 (its weights are in GPU memory there) but joins the 70B on n1.
    nodes = [node("n1", models={LLAMA_70B: Tier.GPU}), node("n2", models={LLAMA_8B: Tier.GPU})]
    members = [member("a", gpus=4, size=2), member("b", gpus=4, model=LLAMA_8B, size=2)]
    plan = plan_of(plan_gang(members, nodes, topology_key=None))
    assert [p.node for p in plan.placements] == ["n1", "n1"]


def test_leader_of_one_gpu_with_workers_of_eight() -> None:
    # n1, n2 (clique c1) and n3 (clique c1) are idle; "m0" sorts first but is in clique c2.
    nodes = [
        node("n1", clique="c1"),
        node("n2", clique="c1"),
        node("n3", clique="c1"),
        node("m0", clique="c2", free={7}),
    ]
    members = [
        member("leader", gpus=1, model=None, size=3),
        member("worker-0", gpus=8, size=3),
        member("worker-1", gpus=8, size=3),
    ]
    plan = plan_of(plan_gang(members, nodes, topology_key=ZONE))
    assert [p.name for p in plan.placements] == ["leader", "worker-0", "worker-1"]
    leader, w0, w1 = plan.placements
    assert len(leader.gpus) == 1 and len(w0.gpus) == 8 and len(w1.gpus) == 8
    assert (w0.node, w1.node) == ("n1", "n2")
    # The workers fill n1 and n2; the leader goes to the same NVLink domain (n3), not to m0.
    assert leader.node == "n3"
    assert plan.placement_of(leader.uid) == leader
    assert plan.placement_of("nobody") is None


def test_the_slowest_member_counts() -> None:
    # Zone a: one node holds the weights in GPU memory, the other is cold (network).
    # Zone b: both nodes have them in the host page cache. b is ready sooner as a group.
    nodes = [
        node("a1", zone="a", models={LLAMA_70B: Tier.GPU}),
        node("a2", zone="a"),
        node("b1", zone="b", models={LLAMA_70B: Tier.HOST_MEMORY}),
        node("b2", zone="b", models={LLAMA_70B: Tier.HOST_MEMORY}),
    ]
    members = [member("w0", size=2), member("w1", size=2)]
    plan = plan_of(plan_gang(members, nodes, topology_key=ZONE))
    assert plan.domain == "b"
    times = [p.ready_seconds for p in plan.placements]
    assert all(t is not None for t in times)
    assert plan.ready_seconds == max(t for t in times if t is not None)
    assert "weights=host-memory" in plan.placements[0].summary


def test_fewer_nodes_win_when_ready_times_tie() -> None:
    # Zone a needs two nodes for two 4-GPU members (half-busy nodes); zone b needs one.
    nodes = [
        node("a1", zone="a", free={0, 1, 2, 3}),
        node("a2", zone="a", free={0, 1, 2, 3}),
        node("b1", zone="b"),
    ]
    members = [member("w0", gpus=4, size=2), member("w1", gpus=4, size=2)]
    plan = plan_of(plan_gang(members, nodes, topology_key=ZONE))
    assert plan.domain == "b" and plan.nodes_used == 1


def test_member_without_gpus_joins_a_node_the_group_uses() -> None:
    nodes = [node("n1"), node("n2")]
    members = [member("w0", gpus=8, size=2), member("launcher", gpus=0, model=None, size=2)]
    plan = plan_of(plan_gang(members, nodes, topology_key=ZONE))
    w0, launcher = plan.placements
    assert launcher.node == w0.node and launcher.gpus == ()
    assert "launcher->" + w0.node + ";" in plan.describe()


# -- failures -------------------------------------------------------------------------------


def test_member_with_a_bad_annotation_fails_the_group() -> None:
    members = [member("w0", size=2), member("w1", size=2, max_num_seqs="lots")]
    failure = failure_of(plan_gang(members, [node("n1"), node("n2")], topology_key=ZONE))
    assert "llm/g" in failure.reason and "member w1" in failure.reason
    assert "kvsched.io/max-num-seqs" in failure.reason and "lots" in failure.reason


def test_mixed_gpu_counts_in_the_reason() -> None:
    members = [member("leader", gpus=1, size=3), member("w0", size=3), member("w1", size=3)]
    failure = failure_of(plan_gang(members, [node("n1")], topology_key=None))
    assert failure.reason.startswith("gang llm/g needs 3 members (2x8 + 1x1 GPUs) in the cluster")
    # w0 fills n1; w1 and the leader find no room: the first to miss is reported.
    assert "holds 1 of 3" in failure.reason
    assert "member w1 (8 GPUs)" in failure.reason
    assert "8 GPUs given to earlier members" in failure.reason


def test_unresolvable_memory_reason_names_the_gpu() -> None:
    # 70B at TP=2 does not fit L40S GPUs whatever is free.
    members = [member("w0", gpus=2, size=1)]
    failure = failure_of(
        plan_gang(members, [node("l1", preset="l40s-pcie-8")], topology_key=ZONE),
    )
    assert "needs 1 member x 2 GPUs" in failure.reason
    assert "L40S" in failure.reason and "GiB" in failure.reason


def test_degenerate_inputs() -> None:
    assert failure_of(plan_gang([], [node("n1")], topology_key=None)).reason
    twice = [member("w0", size=2), member("w0", size=2)]
    assert "appears twice" in failure_of(plan_gang(twice, [node("n1")], topology_key=None)).reason
    empty = failure_of(plan_gang([member("w0", size=1)], [], topology_key=None))
    assert empty.reason == (
        "gang llm/g needs 1 member x 8 GPUs in the cluster: there are no candidate nodes"
    )


# -- determinism ----------------------------------------------------------------------------


def test_node_order_does_not_change_the_plan() -> None:
    nodes = [
        node(f"{z}{i}", zone=z, clique=f"{z}-c{i % 2}", free={0, 1, 2, 3, 4, 5} if i % 3 else None)
        for z in "ab"
        for i in range(5)
    ]
    members = [member("leader", gpus=2, size=5)] + [
        member(f"w{i}", gpus=4, size=5) for i in range(4)
    ]
    expected = plan_gang(members, nodes, topology_key=ZONE)
    shuffled = list(nodes)
    random.Random(7).shuffle(shuffled)
    assert plan_gang(members, shuffled, topology_key=ZONE) == expected
    assert plan_gang(members, list(reversed(nodes)), topology_key=ZONE) == expected


# -- KV-transfer locality -------------------------------------------------------------------


def test_kv_peer_distance() -> None:
    here = node("n1", zone="a", clique="c1")
    same_clique = node("n2", zone="a", clique="c1")
    same_zone = node("n3", zone="a", clique="c2")
    far = node("n4", zone="b", clique="c3")
    assert kv_peer_distance(here, [far, here], ZONE) == 0
    assert kv_peer_distance(here, [same_clique, far], ZONE) == 1
    assert kv_peer_distance(here, [same_zone], ZONE) == 2
    assert kv_peer_distance(here, [far], ZONE) == 3
    assert kv_peer_distance(here, [], ZONE) == 3
    # No key: the cluster is one domain, so any peer is at least "same domain".
    assert kv_peer_distance(here, [far], None) == 2
    assert kv_peer_distance(node("x", zone=None), [far], ZONE) == 3


def test_kv_peer_term_decreases_with_distance() -> None:
    terms = [kv_peer_term(d) for d in range(5)]
    assert terms[0] == 1.0 and terms[3] == 0.0 and terms[4] == 0.0
    assert all(0.0 <= t <= 1.0 for t in terms)
    assert terms[0] > terms[1] > terms[2] > terms[3]
    with pytest.raises(ValueError):
        kv_peer_term(-1)


# -- properties -----------------------------------------------------------------------------

PRESET_NAMES = sorted(PRODUCTS)


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeState]:
    count = draw(st.integers(min_value=0, max_value=7))
    nodes = []
    for i in range(count):
        preset = draw(st.sampled_from(PRESET_NAMES))
        free = draw(st.frozensets(st.integers(min_value=0, max_value=7)))
        zone = draw(st.sampled_from(["a", "b", "c", None]))
        clique = draw(st.sampled_from(["c1", "c2", None]))
        tier = draw(st.sampled_from([None, Tier.GPU, Tier.HOST_MEMORY, Tier.LOCAL_DISK]))
        busy = draw(st.integers(min_value=0, max_value=2))
        models = {LLAMA_8B: tier} if tier is not None else None
        nodes.append(
            node(
                f"n{i}",
                zone=zone,
                clique=clique,
                preset=preset,
                free=free,
                models=models,
                unindexed_busy=busy,
            )
        )
    return nodes


@st.composite
def gangs(draw: st.DrawFn) -> list[GangMember]:
    sizes = draw(st.lists(st.sampled_from([0, 1, 2, 4, 8]), min_size=1, max_size=5))
    with_model = draw(st.booleans())
    return [
        member(
            f"m{i}",
            gpus=gpus,
            model=LLAMA_8B if with_model and gpus > 0 else None,
            size=len(sizes),
        )
        for i, gpus in enumerate(sizes)
    ]


@settings(max_examples=150, deadline=None)
@given(
    clusters(),
    gangs(),
    st.sampled_from([ZONE, NVLINK_DOMAIN_LABEL, None]),
)
def test_plans_are_whole_consistent_and_deterministic(
    nodes: list[NodeState], members: list[GangMember], key: str | None
) -> None:
    result = plan_gang(members, nodes, topology_key=key)
    assert plan_gang(members, nodes, topology_key=key) == result
    assert plan_gang(members, list(reversed(nodes)), topology_key=key) == result
    if isinstance(result, GangFailure):
        assert result.reason.startswith("gang llm/g")
        return
    # Never partial: every member placed, in member order, with its own GPU count.
    assert [p.uid for p in result.placements] == [m.uid for m in members]
    by_name = nodes_by_name(nodes)
    taken: set[tuple[str, int]] = set()
    for m, placement in zip(members, result.placements, strict=True):
        assert len(placement.gpus) == m.demand.gpus
        original = by_name[placement.node]
        for gpu in placement.gpus:
            assert gpu in original.usable_free_gpus
            assert (placement.node, gpu) not in taken
            taken.add((placement.node, gpu))
        if key is not None:
            assert original.labels.get(key) == result.domain
    if key is None:
        assert result.domain is None
    assert result.nodes_used == len({p.node for p in result.placements})
    times = [p.ready_seconds for p in result.placements if p.ready_seconds is not None]
    assert result.ready_seconds == (max(times) if times else None)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=4))
def test_a_group_fits_iff_some_zone_has_enough_idle_nodes(members: int, idle_b: int) -> None:
    # Zone a has 2 idle nodes, zone b `idle_b`; 8-GPU members need one idle node each.
    nodes = [node(f"a{i}", zone="a") for i in range(2)]
    nodes += [node(f"b{i}", zone="b") for i in range(idle_b)]
    nodes += [node(f"busy{z}", zone=z, free={0, 1, 2}) for z in "ab"]
    group = [member(f"w{i}", size=members) for i in range(members)]
    result = plan_gang(group, nodes, topology_key=ZONE)
    assert isinstance(result, GangPlan) == (members <= max(2, idle_b))


# -- LWS exclusive subgroups ---------------------------------------------------------------


def sub(m: GangMember, index: int | None, key: str = ZONE) -> GangMember:
    demand = dataclasses.replace(m.demand, subgroup=index, subgroup_key=key, subgroup_size=2)
    return dataclasses.replace(m, demand=demand)


def group(size: int = 4, key: str = ZONE, per: int = 2) -> list[GangMember]:
    return [sub(member(f"w{i}", size=size), i // per, key) for i in range(size)]


def where(plan: GangPlan, label: str, nodes: dict[str, dict[str, str]]) -> dict[str, str]:
    return {p.name: nodes[p.node][label] for p in plan.placements}


def zones(layout: dict[str, int], **extra: str) -> list:
    return [
        node(f"{z}{i}", zone=z, labels=dict(extra))
        for z, count in layout.items()
        for i in range(count)
    ]


def test_subgroups_each_take_one_zone_and_different_zones() -> None:
    nodes = zones({"a": 2, "b": 2})
    plan = plan_of(plan_gang(group(), nodes, topology_key=ZONE, subgroup_key=ZONE))
    labels = {n.name: n.labels for n in nodes}
    placed = where(plan, ZONE, labels)
    assert placed["w0"] == placed["w1"]
    assert placed["w2"] == placed["w3"]
    assert placed["w0"] != placed["w2"]
    assert len({p.node for p in plan.placements}) == 4


def test_without_the_subgroup_key_the_group_keeps_to_one_zone() -> None:
    nodes = zones({"a": 2, "b": 2})
    failure = failure_of(plan_gang(group(), nodes, topology_key=ZONE))
    assert "one topology.kubernetes.io/zone" in failure.reason
    plan = plan_of(plan_gang(group(), zones({"a": 4}), topology_key=ZONE))
    assert len(plan.placements) == 4


def test_one_zone_cannot_hold_two_exclusive_subgroups() -> None:
    failure = failure_of(plan_gang(group(), zones({"a": 4}), topology_key=ZONE, subgroup_key=ZONE))
    assert "each subgroup in its own topology.kubernetes.io/zone" in failure.reason
    assert "no topology.kubernetes.io/zone is left for subgroup" in failure.reason


def test_values_held_by_another_groups_subgroups_are_avoided() -> None:
    nodes = zones({"a": 2, "b": 2, "c": 2})
    plan = plan_of(plan_gang(group(), nodes, topology_key=ZONE, subgroup_key=ZONE, blocked={"a"}))
    assert {n.labels[ZONE] for n in nodes if n.name in {p.node for p in plan.placements}} == {
        "b",
        "c",
    }
    failure_of(plan_gang(group(), nodes, topology_key=ZONE, subgroup_key=ZONE, blocked={"a", "b"}))


def test_a_pinned_subgroup_keeps_its_value() -> None:
    nodes = zones({"a": 2, "b": 2, "c": 2})
    plan = plan_of(plan_gang(group(), nodes, topology_key=ZONE, subgroup_key=ZONE, pinned={1: "c"}))
    labels = {n.name: n.labels for n in nodes}
    placed = where(plan, ZONE, labels)
    assert placed["w2"] == placed["w3"] == "c"
    assert placed["w0"] == placed["w1"] != "c"


def test_subgroups_on_racks_inside_one_zone() -> None:
    nodes = [
        node("a-r1", zone="a", labels={RACK: "r1"}),
        node("a-r2", zone="a", labels={RACK: "r2"}),
        node("b-r3", zone="b", labels={RACK: "r3"}),
        node("b-r3b", zone="b", labels={RACK: "r3"}),
    ]
    members = [sub(member(f"w{i}", size=2), i, RACK) for i in range(2)]
    plan = plan_of(plan_gang(members, nodes, topology_key=ZONE, subgroup_key=RACK))
    assert plan.domain == "a"  # zone b has one rack only
    assert {p.node for p in plan.placements} == {"a-r1", "a-r2"}


def test_a_member_without_a_subgroup_goes_anywhere_in_the_domain() -> None:
    nodes = zones({"a": 2, "b": 1})
    members = [sub(member("leader", size=3), None)] + [
        sub(member(f"w{i}", size=3), i - 1) for i in (1, 2)
    ]
    plan = plan_of(plan_gang(members, nodes, topology_key=ZONE, subgroup_key=ZONE))
    labels = {n.name: n.labels for n in nodes}
    placed = where(plan, ZONE, labels)
    assert placed["w1"] != placed["w2"]
    assert len({p.node for p in plan.placements}) == 3
