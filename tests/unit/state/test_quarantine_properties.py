"""Property: hostile pods interleaved with good ones in a stream of watch events and relists,
fed through the store's own upsert / delete / replace_kind, never raise, never put one GPU
under two good pods, and leave the good pods' accounting exactly as it is without them."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.k8s import gpu_node, pod

from scheduler.core.assignment import GpuPrediction
from scheduler.models.catalog import Catalog
from scheduler.state.store import ClusterStore

NODES = ("a", "b")
CATALOG = Catalog.builtin()
# Good pods: disjoint GPU sets on the two 8-GPU nodes.
GOOD_SLOTS = [(node, indices) for node in NODES for indices in ((0, 1), (2,), (3, 4, 5), (6, 7))]
KVSCHED_KEYS = [
    "kvsched.io/reservation",
    "kvsched.io/predicted-gpus",
    "kvsched.io/assigned-gpus",
    "kvsched.io/gang",
    "kvsched.io/gang-size",
    "kvsched.io/model",
    "kvsched.io/role",
    "kvsched.io/weights-bytes",
    "kvsched.io/max-num-seqs",
]
JUNK_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            '{"gang":"evil/g","node":"a","indices":[0],"expires":"2026-11-28T10:00:00"}',
            '{"gang":"evil/g","node":"a","indices":[0],"expires":"not a time"}',
            '{"node":"a","indices":[0,0]}',
            '{"node":"a","indices":[-1]}',
            '{"node":"a","indices":"0"}',
            "[" * 2000 + "]" * 2000,
            "{not json",
            "1e999999",
            "-3",
            "null",
        ]
    ),
)
RESERVATIONS = [
    '{"gang":"evil/g","node":"a","indices":[0],"expires":"2026-11-28T10:00:00"}',
    '{"gang":"evil/g","node":"a","indices":[0],"expires":"9999-12-31T00:00:00Z"}',
    '{"gang":"evil/g","node":"a","indices":[0,1],"expires":"2000-01-01T00:00:00+01:00"}',
    '{"gang":"llm/g","node":"b","indices":[7],"expires":"9999-12-31T00:00:00"}',
]
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
JUNK_VALUE = st.one_of(
    JUNK_TEXT,
    JSON_LEAF,
    st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
)
GPU_QUANTITY = st.one_of(
    st.sampled_from(["1", "2", "0", "-1", "1.5", "1e3", "lots", "", "9" * 40]),
    JSON_LEAF,
    st.lists(st.integers(), max_size=2),
)


@st.composite
def hostile_pod(draw: st.DrawFn, number: int) -> Any:
    """Anything a user might create, or a cluster file hold: never bound onto GPUs with a
    prediction that parses (that would be a GPU the kubelet gave it)."""
    shape = draw(
        st.sampled_from(
            ["pod", "pod", "pod", "gang", "gang", "junk-meta", "junk-spec", "not-a-dict"]
        )
    )
    if shape == "not-a-dict":
        return draw(st.one_of(JSON_LEAF, st.lists(JSON_LEAF, max_size=2)))
    if shape == "gang":
        # A would-be member of a group holding a reservation it was never given.
        return pod(
            f"h{number}",
            gpus=draw(st.integers(0, 2)),
            namespace="evil",
            uid=f"h-{number}",
            annotations={
                "kvsched.io/gang": "g",
                "kvsched.io/gang-size": "1",
                "kvsched.io/reservation": draw(st.sampled_from(RESERVATIONS)),
            },
        )
    keys = draw(st.lists(st.sampled_from(KVSCHED_KEYS), max_size=4, unique=True))
    annotations: dict[str, Any] = {key: draw(JUNK_TEXT) for key in keys}
    if draw(st.booleans()):
        annotations[draw(st.sampled_from(KVSCHED_KEYS))] = draw(JUNK_VALUE)
    obj = pod(
        f"h{number}",
        gpus=0,
        namespace="evil",
        uid=f"h-{number}",
        annotations={},
        node=draw(st.sampled_from([None, None, "a", "b", "elsewhere"])),
        phase=draw(st.sampled_from(["Pending", "Running", "Succeeded", "Failed"])),
    )
    obj["metadata"]["annotations"] = draw(st.sampled_from([annotations, annotations, None, "x"]))
    if draw(st.booleans()):
        obj["metadata"]["deletionTimestamp"] = "2026-11-28T09:00:00Z"
    resources = {"limits": {"nvidia.com/gpu": draw(GPU_QUANTITY)}}
    if draw(st.booleans()):
        resources["requests"] = {"nvidia.com/gpu": draw(GPU_QUANTITY)}
    obj["spec"]["containers"][0]["resources"] = draw(st.sampled_from([resources, resources, []]))
    if shape == "junk-meta":
        obj["metadata"] = draw(st.one_of(JSON_LEAF, st.just({"name": 5, "uid": ["x"]})))
    elif shape == "junk-spec":
        obj["spec"] = draw(st.one_of(JSON_LEAF, st.just({"containers": "x", "nodeName": 3})))
    if draw(st.booleans()):
        obj["status"] = draw(JSON_LEAF)
    return obj


def good_pod(slot: int, version: int) -> dict[str, Any]:
    node, indices = GOOD_SLOTS[slot]
    obj = pod(
        f"good{slot}",
        gpus=len(indices),
        node=node,
        phase="Running",
        annotations={"kvsched.io/predicted-gpus": GpuPrediction(node, indices).encode()},
    )
    obj["metadata"]["resourceVersion"] = str(version)
    return obj


# One step: ("good", slot, upsert?) | ("hostile", number, upsert?) | ("relist",) | ("node", name)
STEP = st.one_of(
    st.tuples(st.just("good"), st.integers(0, len(GOOD_SLOTS) - 1), st.booleans()),
    st.tuples(st.just("hostile"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("relist")),
    st.tuples(st.just("node"), st.sampled_from(NODES)),
)


def accounting(store: ClusterStore, good: set[str]) -> dict[str, dict[int, str]]:
    """Per node, the GPUs good pods hold and which."""
    result: dict[str, dict[int, str]] = {}
    for name in NODES:
        state = store.node(name)
        assert state is not None
        result[name] = {i: h.pod for i, h in state.holders.items() if h.pod in good}
    return result


def fresh() -> ClusterStore:
    store = ClusterStore(CATALOG)
    store.replace_kind("Node", [gpu_node(n) for n in NODES])
    return store


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=st.lists(STEP, max_size=25), data=st.data())
def test_hostile_pods_never_change_the_good_pods_accounting(steps: Any, data: Any) -> None:
    mixed, clean = fresh(), fresh()
    live_good: dict[int, dict[str, Any]] = {}
    live_hostile: dict[int, Any] = {}
    for version, step in enumerate(steps, start=1):
        if step[0] == "good":
            _, slot, upsert = step
            obj = good_pod(slot, version)
            for store in (mixed, clean):
                if upsert:
                    store.upsert("Pod", copy.deepcopy(obj))
                elif slot in live_good:
                    store.delete("Pod", copy.deepcopy(live_good[slot]))
            if upsert:
                live_good[slot] = obj
            else:
                live_good.pop(slot, None)
        elif step[0] == "hostile":
            _, number, upsert = step
            if upsert:
                obj = data.draw(hostile_pod(number))
                mixed.upsert("Pod", obj)
                live_hostile[number] = obj
            elif number in live_hostile:
                mixed.delete("Pod", live_hostile.pop(number))
        elif step[0] == "relist":
            goods = [copy.deepcopy(o) for o in live_good.values()]
            hostiles = list(live_hostile.values())
            order = data.draw(st.permutations([*goods, *hostiles]))
            mixed.replace_kind("Pod", order)
            clean.replace_kind("Pod", [copy.deepcopy(o) for o in goods])
        else:
            node = gpu_node(step[1])
            for store in (mixed, clean):
                store.upsert("Node", copy.deepcopy(node))
        good = {f"llm/good{slot}" for slot in live_good}
        held = accounting(mixed, good)
        assert held == accounting(clean, good)
        # Every good pod holds exactly its own GPUs (so no GPU is under two good pods).
        for slot in live_good:
            node, indices = GOOD_SLOTS[slot]
            assert all(held[node].get(i) == f"llm/good{slot}" for i in indices)
