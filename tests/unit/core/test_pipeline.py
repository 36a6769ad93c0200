"""Pipeline stages: a group member holds its share of the model (weights and KV of its layers),
and the shipped LeaderWorkerSet example places on 2 x 8 H100 nodes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from support.k8s import pod

from scheduler.core.demand import parse_demand
from scheduler.core.gang import GangMember, GangPlan, plan_gang
from scheduler.core.node import NodeState
from scheduler.core.placement import evaluate
from scheduler.models.catalog import Catalog
from scheduler.models.kvplan import plan_memory
from topology.hardware import lookup_product
from topology.presets import PRESETS

CATALOG = Catalog.builtin()
EXAMPLE = Path(__file__).resolve().parents[3] / "manifests" / "examples" / "leaderworkerset.yaml"
LLAMA_405B = "meta-llama/Llama-3.1-405B-Instruct"
ZONE = "topology.kubernetes.io/zone"


def h100_node(name: str) -> NodeState:
    topology = PRESETS["hgx-h100-8"]
    gpu = lookup_product("H100-80")
    assert gpu is not None
    return NodeState(
        name=name,
        topology=topology,
        gpu_product=gpu.name,
        gpu_memory_bytes=gpu.memory_bytes,
        allocatable_gpus=topology.gpu_count,
        free_gpus=frozenset(range(topology.gpu_count)),
        labels={"kubernetes.io/hostname": name, ZONE: "a"},
        source="inventory",
    )


def lws_pods(lws: dict[str, Any], group: int = 0) -> list[dict[str, Any]]:
    """The pods the LWS controller makes for one group: the leader from leaderTemplate (worker
    index 0), workers from workerTemplate, each labelled and annotated as LWS does."""
    name = lws["metadata"]["name"]
    spec = lws["spec"]["leaderWorkerTemplate"]
    size = spec["size"]
    pods = []
    for index in range(size):
        template = spec["leaderTemplate"] if index == 0 else spec["workerTemplate"]
        template = copy.deepcopy(template)
        meta = template.setdefault("metadata", {})
        pod_name = f"{name}-{group}" if index == 0 else f"{name}-{group}-{index}"
        meta.update(
            name=pod_name,
            namespace=lws["metadata"]["namespace"],
            uid=f"uid-{pod_name}",
        )
        meta.setdefault("labels", {}).update(
            {
                "leaderworkerset.sigs.k8s.io/name": name,
                "leaderworkerset.sigs.k8s.io/group-index": str(group),
                "leaderworkerset.sigs.k8s.io/group-key": f"key-{group}",
                "leaderworkerset.sigs.k8s.io/worker-index": str(index),
            }
        )
        meta.setdefault("annotations", {})["leaderworkerset.sigs.k8s.io/size"] = str(size)
        pods.append({"metadata": meta, "spec": template["spec"], "status": {"phase": "Pending"}})
    return pods


def test_the_shipped_leaderworkerset_example_places_on_two_h100_nodes() -> None:
    lws = yaml.safe_load(EXAMPLE.read_text())
    members = []
    for p in lws_pods(lws):
        demand = parse_demand(p, CATALOG)
        assert demand.error is None, demand.error
        assert demand.gang is not None and demand.gang.size == 2
        assert demand.plan is not None and demand.plan.pp == 2
        members.append(GangMember(demand.uid, demand.name, demand))
    nodes = [h100_node("h1"), h100_node("h2")]
    for member in members:  # each stage fits one H100 node on its own
        result = evaluate(member.demand, nodes[0])
        assert result.fits, result.reason
    plan = plan_gang(members, nodes, topology_key=ZONE)
    assert isinstance(plan, GangPlan), plan
    assert {p.node for p in plan.placements} == {"h1", "h2"}
    assert all(p.gpus == tuple(range(8)) for p in plan.placements)


def test_each_stage_holds_half_of_the_405b_model() -> None:
    whole = plan_memory(CATALOG.get(LLAMA_405B), tp=8, kv_tokens=32768)  # type: ignore[arg-type]
    lws = yaml.safe_load(EXAMPLE.read_text())
    leader = parse_demand(lws_pods(lws)[0], CATALOG)
    assert leader.plan is not None
    stage = leader.plan
    assert stage.weights_bytes_total == whole.weights_bytes_total
    assert stage.weights_bytes_stage * 2 == whole.weights_bytes_total  # 126 layers, 63 each
    assert stage.weights_bytes_per_gpu * 2 <= whole.weights_bytes_per_gpu + 1
    assert stage.kv_bytes_per_gpu * 2 == whole.kv_bytes_per_gpu
    usable = int(80 * 1024**3 * 0.9)
    assert whole.required_bytes_per_gpu > usable > stage.required_bytes_per_gpu


def test_without_stages_the_example_does_not_fit_an_h100() -> None:
    """pipeline-parallel-size 1: each pod holds the whole model, as before stages were
    planned (about 99.5 GiB per GPU): no H100 node fits."""
    lws = yaml.safe_load(EXAMPLE.read_text())
    leader = lws_pods(lws)[0]
    leader["metadata"]["annotations"]["kvsched.io/pipeline-parallel-size"] = "1"
    demand = parse_demand(leader, CATALOG)
    assert demand.plan is not None and demand.plan.pp == 1
    result = evaluate(demand, h100_node("h1"))
    assert not result.fits


def test_pipeline_parallel_size_is_checked() -> None:
    gang = {"kvsched.io/model": LLAMA_405B, "kvsched.io/gang": "g", "kvsched.io/gang-size": "2"}
    too_many = parse_demand(
        pod("p", gpus=8, annotations={**gang, "kvsched.io/pipeline-parallel-size": "3"}), CATALOG
    )
    assert too_many.error is not None and "exceeds the group's size 2" in too_many.error
    alone = parse_demand(
        pod(
            "p",
            gpus=8,
            annotations={"kvsched.io/model": LLAMA_405B, "kvsched.io/pipeline-parallel-size": "2"},
        ),
        CATALOG,
    )
    assert alone.error is not None and "needs a group" in alone.error
    bad = parse_demand(
        pod("p", gpus=8, annotations={**gang, "kvsched.io/pipeline-parallel-size": "two"}),
        CATALOG,
    )
    assert bad.error is not None and "pipeline-parallel-size" in bad.error


def test_a_plain_gang_member_holds_its_share_by_default() -> None:
    annotations = {
        "kvsched.io/model": LLAMA_405B,
        "kvsched.io/max-model-len": "8192",
        "kvsched.io/gang": "g",
        "kvsched.io/gang-size": "4",
    }
    member = parse_demand(pod("p", gpus=8, annotations=annotations), CATALOG)
    replica = parse_demand(
        pod("p", gpus=8, annotations={**annotations, "kvsched.io/pipeline-parallel-size": "1"}),
        CATALOG,
    )
    assert member.plan is not None and replica.plan is not None
    assert member.plan.pp == 4 and replica.plan.pp == 1
    assert member.plan.required_bytes_per_gpu < replica.plan.required_bytes_per_gpu
    assert member.key != replica.key


def test_a_stage_loads_only_its_share_of_the_weights() -> None:
    model = {
        "kvsched.io/model": "meta-llama/Llama-3.1-70B-Instruct",
        "kvsched.io/max-model-len": "8192",
    }
    whole = pod("whole", gpus=8, annotations=model)
    staged = pod(
        "staged",
        gpus=8,
        annotations={**model, "kvsched.io/gang": "g", "kvsched.io/gang-size": "2"},
    )
    node = h100_node("n")
    loads = [evaluate(parse_demand(p, CATALOG), node).cold_start for p in (whole, staged)]
    assert loads[0] is not None and loads[1] is not None
    assert abs(2 * loads[1].weights_bytes - loads[0].weights_bytes) < 0.03 * loads[0].weights_bytes
    assert loads[1].load_seconds < loads[0].load_seconds
