"""The controller's residency core: pods -> models per node, tiers over time, eviction, GPUs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.k8s import gpu_node, model_annotations, pod

from scheduler.controller.residency import (
    ResidencySettings,
    ResidencyTracker,
    cache_capacity_bytes,
    pod_use,
)
from scheduler.core.assignment import GpuPrediction
from scheduler.core.node import Tier
from scheduler.inventory.merge import merge_controller_view
from scheduler.inventory.status import Allocation, InventoryStatus, ModelEntry
from scheduler.models.catalog import Catalog
from scheduler.models.kvplan import weights_bytes
from scheduler.state.objects import node_state, pod_record

CATALOG = Catalog.builtin()
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_8B_KEY = LLAMA_8B.lower()
LLAMA_8B_BYTES = weights_bytes(CATALOG[LLAMA_8B])
GI = 2**30
T0 = dt.datetime(2026, 11, 28, 8, 0, tzinfo=dt.UTC)
TTL = 1800.0


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def model_pod(
    name: str,
    model: str = LLAMA_8B,
    *,
    node: str | None = "n1",
    phase: str = "Running",
    gpus: tuple[int, ...] = (0,),
    assigned_node: str | None = None,
    finished_at: str | None = None,
    **extra: str,
) -> dict[str, Any]:
    annotations = model_annotations(model, **extra)
    if gpus:
        annotations["kvsched.io/predicted-gpus"] = GpuPrediction(
            assigned_node or node or "n1", gpus
        ).encode()
    obj = pod(name, gpus=max(len(gpus), 1), node=node, phase=phase, annotations=annotations)
    if finished_at is not None:
        obj["status"]["containerStatuses"] = [
            {"name": "vllm", "state": {"terminated": {"exitCode": 0, "finishedAt": finished_at}}}
        ]
    return obj


def sized(name: str, gib: int, **kw: Any) -> dict[str, Any]:
    """A pod of an uncatalogued model `acme/<name>` with an explicit size."""
    return model_pod(f"p-{name}", f"acme/{name}", weights_bytes=f"{gib}Gi", **kw)


def tracker(**kw: Any) -> ResidencyTracker:
    return ResidencyTracker(CATALOG, ResidencySettings(host_memory_ttl_s=TTL, **kw))


def tiers(models: tuple[ModelEntry, ...]) -> dict[str, str]:
    return {m.name if m.revision is None else f"{m.name}@{m.revision}": m.tier for m in models}


BIG = 2**50


# ---- pod_use ---------------------------------------------------------------------------------


def test_pod_use_of_a_running_pod_names_the_canonical_model_its_size_and_gpus() -> None:
    use = pod_use(model_pod("a", "META-LLAMA/llama-3.1-8b-instruct", gpus=(2, 3)), CATALOG, T0)
    assert use is not None
    assert (use.pod, use.uid, use.node) == ("llm/a", "uid-llm-a", "n1")
    assert use.model == LLAMA_8B_KEY
    assert use.revision is None
    assert use.size_bytes == LLAMA_8B_BYTES
    assert use.running and not use.stopped
    assert use.last_seen == T0
    assert use.gpu_indices == (2, 3)


def test_pod_use_needs_a_model_and_a_node() -> None:
    assert pod_use(pod("plain", node="n1", phase="Running"), CATALOG, T0) is None
    assert pod_use(model_pod("unbound", node=None, gpus=()), CATALOG, T0) is None
    blank = pod("blank", node="n1", annotations={"kvsched.io/model": "  "})
    assert pod_use(blank, CATALOG, T0) is None


def test_pod_use_size_from_annotation_beats_catalog_and_bad_annotation_falls_back() -> None:
    override = pod_use(model_pod("a", weights_bytes="20Gi"), CATALOG, T0)
    assert override is not None and override.size_bytes == 20 * GI
    bad = pod_use(model_pod("b", weights_bytes="lots"), CATALOG, T0)
    assert bad is not None and bad.size_bytes == LLAMA_8B_BYTES
    unknown = pod_use(model_pod("c", "acme/Private-Model"), CATALOG, T0)
    assert unknown is not None
    assert unknown.model == "acme/private-model"
    assert unknown.size_bytes is None


def test_pod_use_pending_holds_gpus_but_does_not_run() -> None:
    use = pod_use(model_pod("a", phase="Pending", gpus=(1,)), CATALOG, T0)
    assert use is not None
    assert not use.running and not use.stopped
    assert use.gpu_indices == (1,)


def test_pod_use_of_a_finished_pod_uses_the_latest_finished_at_and_releases_gpus() -> None:
    use = pod_use(
        model_pod("a", phase="Succeeded", finished_at="2026-11-28T07:30:00Z"), CATALOG, T0
    )
    assert use is not None
    assert use.stopped and not use.running
    assert use.last_seen == at(-1800)
    assert use.gpu_indices == ()
    future = pod_use(
        model_pod("b", phase="Failed", finished_at="2030-01-01T00:00:00Z"), CATALOG, T0
    )
    assert future is not None and future.last_seen == T0  # never later than now
    unknown = pod_use(model_pod("c", phase="Failed"), CATALOG, T0)
    assert unknown is not None and unknown.last_seen == T0


def test_pod_use_ignores_an_assignment_for_another_node() -> None:
    use = pod_use(model_pod("a", gpus=(0, 1), assigned_node="elsewhere"), CATALOG, T0)
    assert use is not None and use.gpu_indices == ()


# ---- tiers and lastUsed over time ------------------------------------------------------------


def test_running_is_gpu_then_host_memory_until_the_ttl_then_local_disk() -> None:
    t = tracker()
    t.observe_pod(model_pod("a"), at(0))
    models, _ = t.learned("n1", at(10), BIG)
    assert tiers(models) == {LLAMA_8B_KEY: "gpu"}
    assert models[0].size_bytes == LLAMA_8B_BYTES

    t.observe_pod(model_pod("a", phase="Succeeded"), at(100))
    assert tiers(t.learned("n1", at(100), BIG)[0]) == {LLAMA_8B_KEY: "host-memory"}
    assert tiers(t.learned("n1", at(100 + TTL - 1), BIG)[0]) == {LLAMA_8B_KEY: "host-memory"}
    models, _ = t.learned("n1", at(100 + TTL), BIG)
    assert tiers(models) == {LLAMA_8B_KEY: "local-disk"}
    assert models[0].last_used == at(100)
    # Much later it is still on disk: only eviction forgets it.
    assert tiers(t.learned("n1", at(10**7), BIG)[0]) == {LLAMA_8B_KEY: "local-disk"}


def test_last_used_follows_the_latest_observation_and_the_stop_time() -> None:
    t = tracker()
    t.observe_pod(model_pod("a"), at(0))
    t.observe_pod(model_pod("a"), at(60))
    assert t.learned("n1", at(61), BIG)[0][0].last_used == at(60)
    t.observe_pod(
        model_pod("a", phase="Succeeded", finished_at=at(90).strftime("%Y-%m-%dT%H:%M:%SZ")),
        at(200),
    )
    assert t.learned("n1", at(200), BIG)[0][0].last_used == at(90)


def test_a_resync_of_a_finished_pod_does_not_make_its_model_newer() -> None:
    t = tracker()
    t.observe_pod(model_pod("a"), at(0))
    t.observe_pod(model_pod("a", phase="Succeeded"), at(50))
    for later in (500, 1000, 5000):
        t.observe_pod(model_pod("a", phase="Succeeded"), at(later))
    models, _ = t.learned("n1", at(5000), BIG)
    assert models[0].last_used == at(50)
    assert models[0].tier == "local-disk"


def test_a_pending_pod_puts_nothing_in_the_cache() -> None:
    t = tracker()
    t.observe_pod(model_pod("a", phase="Pending"), at(0))
    models, allocations = t.learned("n1", at(1), BIG)
    assert models == ()
    assert allocations == (Allocation(0, "llm/a"),)
    t.forget_pod("uid-llm-a", at(5))  # deleted before it ever ran
    assert t.learned("n1", at(6), BIG) == ((), ())


def test_a_running_pod_still_loading_puts_nothing_in_the_cache_until_ready() -> None:
    """Phase Running says the container started, not that the weights arrived: the next
    replica must not be sent to a node where they are still downloading."""
    t = tracker()
    loading = model_pod("a")
    loading["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    use = t.observe_pod(loading, at(0))
    assert use is not None and not use.running
    assert t.learned("n1", at(1), BIG)[0] == ()
    ready = model_pod("a")  # the engine passed its readiness probe: weights loaded
    assert t.observe_pod(ready, at(60)) is not None
    assert [(m.name, m.tier) for m in t.learned("n1", at(61), BIG)[0]] == [
        (LLAMA_8B.lower(), "gpu")
    ]
    # No condition at all (a status nobody wrote yet) is not Ready either.
    bare = model_pod("b", node="n2")
    bare["status"].pop("conditions")
    t.observe_pod(bare, at(62))
    assert t.learned("n2", at(63), BIG)[0] == ()


def test_a_finished_pod_first_seen_after_a_restart_still_counts() -> None:
    t = tracker()
    t.observe_pod(model_pod("a", phase="Succeeded", finished_at="2026-11-28T07:50:00Z"), T0)
    models, allocations = t.learned("n1", T0, BIG)
    assert tiers(models) == {LLAMA_8B_KEY: "host-memory"}
    assert models[0].last_used == at(-600)
    assert allocations == ()


def test_two_pods_of_one_model_make_one_entry_gpu_while_either_runs() -> None:
    t = tracker()
    t.observe_pod(model_pod("a", gpus=(0,)), at(0))
    t.observe_pod(model_pod("b", gpus=(1,)), at(0))
    t.observe_pod(model_pod("a", phase="Succeeded"), at(100))
    models, allocations = t.learned("n1", at(100), BIG)
    assert tiers(models) == {LLAMA_8B_KEY: "gpu"}
    assert allocations == (Allocation(1, "llm/b"),)
    t.forget_pod("uid-llm-b", at(300))
    models, _ = t.learned("n1", at(301), BIG)
    assert tiers(models) == {LLAMA_8B_KEY: "host-memory"}
    assert models[0].last_used == at(300)


def test_revisions_and_nodes_are_kept_apart() -> None:
    t = tracker()
    t.observe_pod(model_pod("a", model_revision="abc"), at(0))
    t.observe_pod(model_pod("b", model_revision="def", phase="Succeeded"), at(0))
    t.observe_pod(model_pod("c"), at(0))
    t.observe_pod(model_pod("d", node="n2"), at(0))
    models, _ = t.learned("n1", at(1), BIG)
    assert tiers(models) == {
        LLAMA_8B_KEY: "gpu",
        f"{LLAMA_8B_KEY}@abc": "gpu",
        f"{LLAMA_8B_KEY}@def": "host-memory",
    }
    assert [m.revision for m in models] == [None, "abc", "def"]  # sorted by name, revision
    assert tiers(t.learned("n2", at(1), BIG)[0]) == {LLAMA_8B_KEY: "gpu"}
    assert t.nodes() == {"n1", "n2"}


def test_changing_the_model_annotation_ends_the_old_use() -> None:
    t = tracker()
    t.observe_pod(model_pod("a"), at(0))
    t.observe_pod(model_pod("a", "acme/other", weights_bytes="1Gi"), at(40))
    assert tiers(t.learned("n1", at(41), BIG)[0]) == {
        LLAMA_8B_KEY: "host-memory",
        "acme/other": "gpu",
    }
    plain = pod("a", node="n1", phase="Running")
    t.observe_pod(plain, at(80))
    models, _ = t.learned("n1", at(81), BIG)
    assert tiers(models) == {LLAMA_8B_KEY: "host-memory", "acme/other": "host-memory"}
    assert {m.name: m.last_used for m in models}["acme/other"] == at(80)


# ---- eviction --------------------------------------------------------------------------------


def stopped_models(t: ResidencyTracker, sizes: dict[str, int]) -> None:
    """Models that ran and stopped one after another, in the dict's order (oldest first)."""
    for i, (name, gib) in enumerate(sizes.items()):
        t.observe_pod(sized(name, gib, phase="Succeeded"), at(i * 10))


def test_least_recently_used_models_are_evicted_first_and_forgotten() -> None:
    t = tracker()
    stopped_models(t, {"a": 10, "b": 10, "c": 10})
    models, _ = t.learned("n1", at(100), 25 * GI)
    assert [m.name for m in models] == ["acme/b", "acme/c"]
    assert t.evictions == 1
    # Forgotten: more room later does not bring it back.
    models, _ = t.learned("n1", at(200), BIG)
    assert [m.name for m in models] == ["acme/b", "acme/c"]
    assert t.evictions == 1


def test_eviction_keeps_the_most_recent_models_that_fit_together() -> None:
    t = tracker()
    stopped_models(t, {"old-small": 2, "mid-big": 9, "new-small": 1})
    models, _ = t.learned("n1", at(100), 10 * GI)
    assert [m.name for m in models] == ["acme/mid-big", "acme/new-small"]


def test_gpu_resident_models_are_never_evicted_and_take_room() -> None:
    t = tracker()
    stopped_models(t, {"a": 5, "b": 5})
    t.observe_pod(sized("big", 30), at(50))  # running, larger than the whole cache
    models, _ = t.learned("n1", at(60), 32 * GI)
    assert tiers(models) == {"acme/big": "gpu"}
    assert t.evictions == 2
    # Room beside a running model: 40 - 30 = 10 GiB holds the newer of two 5 GiB models + 1.
    t2 = tracker()
    stopped_models(t2, {"a": 5, "b": 5, "c": 4})
    t2.observe_pod(sized("big", 30), at(50))
    assert tiers(t2.learned("n1", at(60), 40 * GI)[0]) == {
        "acme/big": "gpu",
        "acme/b": "host-memory",
        "acme/c": "host-memory",
    }


def test_models_of_unknown_size_count_as_zero() -> None:
    t = tracker()
    t.observe_pod(model_pod("u", "acme/unknown", phase="Succeeded"), at(0))
    stopped_models(t, {"a": 10})
    models, _ = t.learned("n1", at(100), 10 * GI)
    assert {m.name for m in models} == {"acme/unknown", "acme/a"}
    assert t.learned("n1", at(100), 0)[0] == (
        ModelEntry("acme/unknown", "host-memory", None, None, at(0)),
    )


def test_a_model_larger_than_the_room_is_evicted_alone() -> None:
    t = tracker()
    stopped_models(t, {"small": 3, "huge": 50, "newest": 3})
    models, _ = t.learned("n1", at(100), 10 * GI)
    assert [m.name for m in models] == ["acme/newest", "acme/small"]
    assert t.evictions == 1


def test_history_is_bounded_per_node() -> None:
    t = tracker(max_models_per_node=3)
    t.observe_pod(sized("running", 1), at(0))
    stopped_models(t, {f"m{i}": 1 for i in range(10)})
    models, _ = t.learned("n1", at(200), BIG)
    assert tiers(models) == {
        "acme/running": "gpu",
        "acme/m8": "host-memory",
        "acme/m9": "host-memory",
    }
    assert t.evictions == 8


# ---- allocations and deletions ---------------------------------------------------------------


def test_allocations_come_from_assigned_gpus_of_bound_unfinished_pods() -> None:
    t = tracker()
    t.observe_pod(model_pod("a", gpus=(0, 1)), at(0))
    t.observe_pod(model_pod("p", phase="Pending", gpus=(4,)), at(0))
    plain = pod(
        "plain",
        gpus=2,
        node="n1",
        phase="Running",
        annotations={"kvsched.io/predicted-gpus": GpuPrediction("n1", (6, 5)).encode()},
    )
    t.observe_pod(plain, at(0))
    t.observe_pod(model_pod("done", phase="Succeeded", gpus=(2,)), at(0))
    t.observe_pod(model_pod("lost", gpus=(3,), assigned_node="n9"), at(0))
    t.observe_pod(pod("unassigned", gpus=1, node="n1", phase="Running"), at(0))
    _, allocations = t.learned("n1", at(1), BIG)
    assert allocations == (
        Allocation(0, "llm/a"),
        Allocation(1, "llm/a"),
        Allocation(4, "llm/p"),
        Allocation(5, "llm/plain"),
        Allocation(6, "llm/plain"),
    )
    t.observe_pod(model_pod("a", phase="Failed", gpus=(0, 1)), at(5))
    t.forget_pod("uid-llm-plain", at(5))
    assert t.learned("n1", at(6), BIG)[1] == (Allocation(4, "llm/p"),)


def test_a_deleted_running_pod_frees_its_gpus_and_leaves_its_model_in_memory() -> None:
    t = tracker()
    t.observe_pod(model_pod("a", gpus=(0, 1)), at(0))
    t.forget_pod("uid-llm-a", at(120))
    t.forget_pod("never-seen", at(120))
    models, allocations = t.learned("n1", at(130), BIG)
    assert allocations == ()
    assert models == (ModelEntry(LLAMA_8B_KEY, "host-memory", None, LLAMA_8B_BYTES, at(120)),)


def test_forget_node_drops_everything_about_it() -> None:
    t = tracker()
    t.observe_pod(model_pod("a"), at(0))
    t.observe_pod(model_pod("b", node="n2"), at(0))
    t.forget_node("n1")
    assert t.learned("n1", at(1), BIG) == ((), ())
    assert t.nodes() == {"n2"}
    # A late event for a pod on the deleted node does not resurrect stale GPU holdings.
    t.forget_pod("uid-llm-a", at(2))
    assert t.learned("n1", at(3), BIG)[1] == ()


# ---- capacity and settings -------------------------------------------------------------------


def test_cache_capacity_prefers_the_agent_then_the_label_then_the_default() -> None:
    s = ResidencySettings()
    labelled = gpu_node("n1", labels={"kvsched.io/model-cache-bytes": "3Ti"})
    agent = InventoryStatus(source="agent", cache_capacity_bytes=5 * GI)
    mine = InventoryStatus(source="controller", cache_capacity_bytes=7 * GI)
    assert cache_capacity_bytes(labelled, agent, s) == 5 * GI
    assert cache_capacity_bytes(labelled, mine, s) == 3 * 2**40
    assert cache_capacity_bytes(labelled, None, s) == 3 * 2**40
    assert cache_capacity_bytes(gpu_node("n1"), mine, s) == 2 * 2**40
    assert cache_capacity_bytes(None, None, s) == s.default_cache_capacity_bytes
    bad = gpu_node("n1", labels={"kvsched.io/model-cache-bytes": "plenty"})
    assert cache_capacity_bytes(bad, None, s) == s.default_cache_capacity_bytes


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host_memory_ttl_s": -1},
        {"host_memory_ttl_s": float("nan")},
        {"default_cache_capacity_bytes": -1},
        {"agent_stale_after_s": 0},
        {"max_models_per_node": 0},
    ],
)
def test_settings_reject_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ResidencySettings(**kwargs)


def test_what_the_controller_learns_is_what_the_extender_reads() -> None:
    t = tracker()
    t.observe_pod(model_pod("a", gpus=(0, 1)), at(0))
    t.observe_pod(sized("b", 3, phase="Succeeded"), at(0))
    models, allocations = t.learned("n1", at(10), BIG)
    status = merge_controller_view(None, models, allocations, BIG, at(10), t.settings)
    inventory = {"metadata": {"name": "n1"}, "status": status.to_status()}
    assert inventory["status"]["allocatedSource"] == "prediction"
    running = pod_record(model_pod("a", gpus=(0, 1)))
    state = node_state(gpu_node("n1"), inventory, [running], CATALOG)
    gpu_copy = state.residency(LLAMA_8B_KEY, None)
    assert gpu_copy is not None and gpu_copy.tier == Tier.GPU
    cached_copy = state.residency("acme/b", None)
    assert cached_copy is not None and cached_copy.tier == Tier.HOST_MEMORY
    assert state.free_gpus == frozenset(range(2, 8))
    assert {h.source for h in state.holders.values()} == {"prediction"}
    # The controller's list mirrors predictions: the extender counts the pods' own
    # annotations, not the mirror (which would count each pod twice, or a gone pod at all).
    assert node_state(gpu_node("n1"), inventory, [], CATALOG).free_gpus == frozenset(range(8))


# ---- properties ------------------------------------------------------------------------------

MODELS = [f"acme/m{i}" for i in range(6)]
event = st.tuples(
    st.sampled_from(["run", "stop", "delete", "pending"]),
    st.integers(0, 7),  # pod number
    st.sampled_from(MODELS),
    st.sampled_from([None, 1, 3, 8, 20]),  # GiB, None: unknown size
    st.sampled_from([None, "r1"]),
    st.integers(0, 4000),  # seconds since the previous event
)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(event, max_size=40),
    capacity_gib=st.integers(0, 40),
    limit=st.integers(1, 8),
)
def test_learned_pictures_respect_capacity_and_running_pods(
    events: list[tuple[str, int, str, int | None, str | None, int]],
    capacity_gib: int,
    limit: int,
) -> None:
    t = tracker(max_models_per_node=limit)
    clock = T0
    running: dict[str, tuple[str, str | None]] = {}
    holding: dict[str, int] = {}
    for kind, number, model, gib, revision, step in events:
        clock += dt.timedelta(seconds=step)
        name = f"p{number}"
        extra: dict[str, str] = {}
        if gib is not None:
            extra["weights_bytes"] = f"{gib}Gi"
        if revision is not None:
            extra["model_revision"] = revision
        if kind == "delete":
            t.forget_pod(f"uid-llm-{name}", clock)
            running.pop(name, None)
            holding.pop(name, None)
            continue
        phase = {"run": "Running", "stop": "Succeeded", "pending": "Pending"}[kind]
        t.observe_pod(model_pod(name, model, phase=phase, gpus=(number,), **extra), clock)
        if kind == "run":
            running[name] = (model, revision)
        else:
            running.pop(name, None)
        if kind == "stop":
            holding.pop(name, None)
        else:
            holding[name] = number
        capacity = capacity_gib * GI
        models, allocations = t.learned("n1", clock, capacity)

        keys = [m.key for m in models]
        assert len(keys) == len(set(keys))
        gpu = {m.key for m in models if m.tier == "gpu"}
        assert gpu == set(running.values())
        idle = [m for m in models if m.tier != "gpu"]
        assert sum(m.size_bytes or 0 for m in idle) <= capacity
        assert len(idle) <= limit
        for m in idle:
            assert m.last_used is not None and m.last_used <= clock
            expected = (
                "host-memory" if (clock - m.last_used).total_seconds() < TTL else "local-disk"
            )
            assert m.tier == expected
        assert allocations == tuple(
            Allocation(i, f"llm/{name}") for name, i in sorted(holding.items(), key=lambda h: h[1])
        )
