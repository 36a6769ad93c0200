"""Agent report x controller picture -> one NodeInventory status; when a write is needed."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.controller.residency import ResidencySettings
from scheduler.inventory.merge import (
    agent_is_fresh,
    merge_agent_report,
    merge_controller_view,
    status_changed,
)
from scheduler.inventory.status import Allocation, GpuEntry, InventoryStatus, ModelEntry

T0 = dt.datetime(2026, 11, 28, 8, 0, tzinfo=dt.UTC)
S = ResidencySettings(host_memory_ttl_s=1800, agent_stale_after_s=600)
GI = 2**30


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def m(
    name: str,
    tier: str,
    used: float | None = 0,
    size: int | None = GI,
    revision: str | None = None,
) -> ModelEntry:
    return ModelEntry(name, tier, revision, size, None if used is None else at(used))


def agent(
    *models: ModelEntry,
    observed: float = 0,
    allocated: tuple[Allocation, ...] = (),
    allocated_source: str | None = "kubelet",
) -> InventoryStatus:
    """An agent report; by default its allocations are the kubelet's (PodResources read)."""
    return InventoryStatus(
        source="agent",
        allocated_source=allocated_source,
        gpus=(GpuEntry(0, "GPU-0", "H100", 80 * GI, 0), GpuEntry(1, "GPU-1", "H100", 80 * GI, 0)),
        links=(("X", "NV18"), ("NV18", "X")),
        allocated=allocated,
        cache_capacity_bytes=100 * GI,
        models=models,
        bandwidth={"localDisk": 2e9, "hostMemory": 2e10, "network": 1e9},
        observed_at=at(observed),
    )


def controller(*models: ModelEntry, allocated: tuple[Allocation, ...] = ()) -> InventoryStatus:
    return InventoryStatus(
        source="controller",
        allocated_source="prediction",
        allocated=allocated,
        cache_capacity_bytes=50 * GI,
        models=models,
        observed_at=at(0),
    )


ALLOC = (Allocation(0, "llm/a"),)


# ---- the agent writes ------------------------------------------------------------------------


def test_a_first_report_is_taken_as_it_is() -> None:
    report = agent(m("x", "local-disk"), allocated=ALLOC)
    assert merge_agent_report(None, report) == report


def test_the_report_replaces_hardware_and_cache_facts_but_keeps_allocations() -> None:
    current = controller(m("gone", "local-disk"), allocated=ALLOC)
    # No PodResources this cycle: the controller's predictions stay, marked as such.
    report = agent(m("x", "host-memory"), observed=30, allocated_source=None)
    merged = merge_agent_report(current, report)
    assert merged.source == "agent"
    assert (merged.gpus, merged.links, merged.bandwidth) == (
        report.gpus,
        report.links,
        report.bandwidth,
    )
    assert merged.cache_capacity_bytes == 100 * GI
    assert merged.observed_at == at(30)
    assert merged.allocated == ALLOC
    assert merged.allocated_source == "prediction"
    assert merged.models == (m("x", "host-memory"),)  # "gone" is not in the agent's cache


def test_the_kubelets_allocations_replace_the_predictions() -> None:
    current = controller(allocated=(Allocation(0, "llm/a"), Allocation(1, "llm/a")))
    truth = (Allocation(4, "llm/a"), Allocation(5, "llm/a"))
    merged = merge_agent_report(current, agent(allocated=truth, observed=30))
    assert (merged.allocated, merged.allocated_source) == (truth, "kubelet")


def test_a_kubelet_list_the_agent_can_no_longer_read_is_dropped_not_republished() -> None:
    current = agent(allocated=ALLOC, observed=0)
    merged = merge_agent_report(current, agent(observed=60, allocated_source=None))
    assert (merged.allocated, merged.allocated_source) == ((), None)


def test_the_controller_never_overwrites_the_kubelets_allocations() -> None:
    truth = (Allocation(4, "llm/a"), Allocation(5, "llm/a"))
    current = agent(allocated=truth, observed=0)
    predicted = (Allocation(0, "llm/a"), Allocation(1, "llm/a"))
    merged = merge_controller_view(current, (), predicted, 5 * GI, at(300), S)
    assert (merged.allocated, merged.allocated_source) == (truth, "kubelet")
    # A stale agent's list is no longer vouched for: the predictions take over, marked so.
    stale = merge_controller_view(current, (), predicted, 5 * GI, at(601), S)
    assert (stale.allocated, stale.allocated_source) == (predicted, "prediction")


def test_the_report_keeps_the_controllers_gpu_tier() -> None:
    current = controller(
        m("running", "gpu", used=100, size=None),
        m("also-running", "gpu", used=100),
        m("stale-memory", "host-memory", used=50),
    )
    report = agent(
        m("running", "local-disk", used=10, size=7 * GI),
        m("stale-memory", "local-disk", used=20),
    )
    merged = merge_agent_report(current, report)
    assert merged.models == (
        m("also-running", "gpu", used=100),  # not in the report: an engine's weights
        m("running", "gpu", used=100, size=7 * GI),  # better tier, newer lastUsed, known size
        m("stale-memory", "local-disk", used=50),  # the agent measured: not in memory
    )


def test_model_names_match_case_insensitively_and_revisions_apart() -> None:
    current = controller(m("org/model", "gpu", revision="r1"), m("org/model", "gpu"))
    report = agent(m("Org/Model", "local-disk", revision="r1"))
    merged = merge_agent_report(current, report)
    assert merged.models == (
        m("org/model", "gpu"),
        m("Org/Model", "gpu", revision="r1"),
    )


def test_duplicate_entries_collapse_to_the_best() -> None:
    report = agent(m("x", "local-disk", used=50, size=None), m("x", "host-memory", used=10))
    merged = merge_agent_report(None, report)
    assert merged.models == (m("x", "host-memory", used=50),)


# ---- the controller writes -------------------------------------------------------------------


def test_over_a_fresh_agent_the_controller_adds_only_what_it_alone_knows() -> None:
    current = agent(
        m("on-disk", "local-disk", used=0),
        m("now-running", "local-disk", used=0, size=None),
        m("warm", "host-memory", used=100),
        observed=0,
        allocated=(Allocation(1, "llm/old"),),
        allocated_source="prediction",
    )
    learned = (
        m("now-running", "gpu", used=290, size=3 * GI),
        m("new-running", "gpu", used=290),
        m("warm", "local-disk", used=20),
        m("only-mine", "host-memory", used=250),
    )
    merged = merge_controller_view(current, learned, ALLOC, 5 * GI, at(300), S)
    assert merged.source == "agent"
    assert merged.observed_at == at(0)
    assert (merged.gpus, merged.links, merged.bandwidth) == (
        current.gpus,
        current.links,
        current.bandwidth,
    )
    assert merged.cache_capacity_bytes == 100 * GI  # the agent's, not the controller's
    assert merged.allocated == ALLOC
    assert merged.models == (
        m("new-running", "gpu", used=290),
        m("now-running", "gpu", used=290, size=3 * GI),
        m("on-disk", "local-disk", used=0),
        m("warm", "host-memory", used=100),  # agent's tier, newer lastUsed kept
    )


def test_a_gpu_entry_the_controller_no_longer_confirms_is_demoted() -> None:
    current = agent(
        m("stopped", "gpu", used=200),
        m("forgotten-recent", "gpu", used=100),
        m("forgotten-old", "gpu", used=-5000),
        m("forgotten-undated", "gpu", used=None),
        observed=0,
    )
    learned = (m("stopped", "host-memory", used=250),)
    merged = merge_controller_view(current, learned, (), 0, at(300), S)
    assert merged.models == (
        m("forgotten-old", "local-disk", used=-5000),
        m("forgotten-recent", "host-memory", used=100),
        m("forgotten-undated", "local-disk", used=None),
        m("stopped", "host-memory", used=250),
    )
    # And the agent's next report no longer holds it at gpu.
    again = merge_agent_report(merged, agent(observed=400))
    assert again.models == ()


def test_demoting_a_gpu_entry_keeps_the_agents_own_entry_for_that_model() -> None:
    current = agent(m("x", "gpu", used=200), m("x", "host-memory", used=100), observed=0)
    merged = merge_controller_view(current, (m("x", "local-disk", used=50),), (), 0, at(300), S)
    assert merged.models == (m("x", "host-memory", used=200),)


def test_a_stale_agent_gives_way_but_its_hardware_facts_stay() -> None:
    current = agent(m("on-disk", "local-disk"), observed=0, allocated=(Allocation(1, "x/y"),))
    learned = (m("mine", "host-memory", used=650),)
    merged = merge_controller_view(current, learned, ALLOC, 5 * GI, at(601), S)
    assert merged == InventoryStatus(
        source="controller",
        gpus=current.gpus,
        links=current.links,
        allocated=ALLOC,
        cache_capacity_bytes=5 * GI,
        models=learned,
        bandwidth=current.bandwidth,
        observed_at=at(601),
        allocated_source="prediction",
    )
    assert merge_controller_view(current, learned, ALLOC, 5 * GI, at(600), S).source == "agent"


def test_without_any_inventory_the_controller_writes_its_own_picture() -> None:
    learned = (m("b", "gpu"), m("a", "local-disk"))
    merged = merge_controller_view(None, learned, (Allocation(3, "n/p"), *ALLOC), GI, at(9), S)
    assert merged.source == "controller"
    assert merged.gpus == () and merged.links == () and dict(merged.bandwidth) == {}
    assert [e.name for e in merged.models] == ["a", "b"]
    assert merged.allocated == (Allocation(0, "llm/a"), Allocation(3, "n/p"))
    assert merged.cache_capacity_bytes == GI
    assert merged.observed_at == at(9)


def test_freshness() -> None:
    assert agent_is_fresh(agent(observed=0), at(600), S)
    assert not agent_is_fresh(agent(observed=0), at(601), S)
    assert agent_is_fresh(agent(observed=900), at(0), S)  # clock skew: a report from "later"
    assert not agent_is_fresh(replace(agent(), observed_at=None), at(0), S)
    assert not agent_is_fresh(controller(), at(0), S)


def test_merged_statuses_survive_the_round_trip_through_the_api() -> None:
    current = agent(m("x", "local-disk"), observed=0)
    merged = merge_controller_view(current, (m("y", "gpu", used=5),), ALLOC, 0, at(10), S)
    again = InventoryStatus.from_status(merged.to_status())
    assert again == merged
    assert again is not None and again.problems == ()


# ---- when to write ---------------------------------------------------------------------------


def test_status_changed_ignores_what_moves_on_every_resync() -> None:
    base = controller(m("run", "gpu", used=10), m("disk", "local-disk", used=5), allocated=ALLOC)
    assert status_changed(None, base)
    assert not status_changed(base, base)
    assert not status_changed(base, replace(base, observed_at=at(9999)))
    bumped = replace(base, models=(m("run", "gpu", used=99), m("disk", "local-disk", used=5)))
    assert not status_changed(base, bumped)
    reordered = replace(base, models=tuple(reversed(base.models)))
    assert not status_changed(base, reordered)
    sub_second = replace(
        base,
        models=(
            m("run", "gpu", used=10),
            m("disk", "local-disk", used=5.25),
        ),
    )
    assert not status_changed(base, sub_second)


def test_status_changed_sees_real_changes() -> None:
    base = controller(m("run", "gpu", used=10), m("disk", "local-disk", used=5), allocated=ALLOC)
    stopped = replace(base, models=(m("run", "host-memory", used=10), base.models[1]))
    assert status_changed(base, stopped)
    assert status_changed(base, replace(base, models=(base.models[0],)))
    assert status_changed(base, replace(base, models=(*base.models, m("new", "local-disk"))))
    assert status_changed(base, replace(base, models=(base.models[0], m("disk", "local-disk", 6))))
    assert status_changed(base, replace(base, allocated=()))
    assert status_changed(base, replace(base, cache_capacity_bytes=1))
    assert status_changed(base, replace(base, source="agent"))
    fresh = agent(observed=0)
    assert status_changed(fresh, replace(fresh, observed_at=at(60)))
    assert not status_changed(fresh, replace(fresh, allocated=()))


# ---- properties ------------------------------------------------------------------------------

TIERS = ["gpu", "host-memory", "local-disk"]
entry = st.builds(
    ModelEntry,
    name=st.sampled_from(["a", "A", "b"]),
    tier=st.sampled_from(TIERS),
    revision=st.sampled_from([None, "r1"]),
    size_bytes=st.sampled_from([None, GI, 5 * GI]),
    last_used=st.one_of(st.none(), st.integers(-5000, 5000).map(at)),
)
entries = st.lists(entry, max_size=8).map(tuple)
allocations = st.lists(
    st.builds(Allocation, st.integers(0, 7), st.sampled_from(["a/x", "a/y"])), max_size=4
).map(tuple)
statuses = st.builds(
    InventoryStatus,
    source=st.sampled_from(["agent", "controller"]),
    gpus=st.sampled_from([(), (GpuEntry(0, "GPU-0"),)]),
    allocated=allocations,
    cache_capacity_bytes=st.sampled_from([None, GI]),
    models=entries,
    observed_at=st.one_of(st.none(), st.integers(-2000, 2000).map(at)),
)
TIER_RANK = {"gpu": 2, "host-memory": 1, "local-disk": 0}


@settings(max_examples=400, deadline=None)
@given(current=st.one_of(st.none(), statuses), report=statuses)
def test_merging_a_report_twice_is_merging_it_once(
    current: InventoryStatus | None, report: InventoryStatus
) -> None:
    once = merge_agent_report(current, report)
    twice = merge_agent_report(once, report)
    assert twice == once
    assert not status_changed(once, twice)
    keys = [e.key for e in once.models]
    assert len(keys) == len(set(keys))
    reported = {e.key for e in report.models}
    for e in once.models:
        assert e.key in reported or e.tier == "gpu"


@settings(max_examples=400, deadline=None)
@given(
    current=statuses,
    learned=entries,
    allocated=allocations,
    now=st.integers(-1000, 3000).map(at),
)
def test_fresh_agent_facts_always_win_and_the_controller_write_is_idempotent(
    current: InventoryStatus,
    learned: tuple[ModelEntry, ...],
    allocated: tuple[Allocation, ...],
    now: dt.datetime,
) -> None:
    once = merge_controller_view(current, learned, allocated, 3 * GI, now, S)
    twice = merge_controller_view(once, learned, allocated, 3 * GI, now, S)
    assert twice == once
    assert set(once.allocated) == set(allocated)
    mine_gpu = {e.key for e in learned if e.tier == "gpu"}
    assert {e.key for e in once.models if e.tier == "gpu"} == mine_gpu or not agent_is_fresh(
        current, now, S
    )
    if agent_is_fresh(current, now, S):
        assert once.source == "agent"
        assert (once.gpus, once.links, once.observed_at, once.cache_capacity_bytes) == (
            current.gpus,
            current.links,
            current.observed_at,
            current.cache_capacity_bytes,
        )
        assert once.bandwidth == current.bandwidth
        merged = {e.key: e for e in once.models}
        for fact in current.models:
            if fact.tier == "gpu":
                continue  # the gpu tier is the controller's to confirm
            kept = merged[fact.key]
            assert TIER_RANK[kept.tier] >= TIER_RANK[fact.tier]
            if fact.last_used is not None:
                assert kept.last_used is not None and kept.last_used >= fact.last_used
    else:
        assert once.source == "controller"
        assert once.observed_at == now
        assert once.cache_capacity_bytes == 3 * GI
        assert {e.key for e in once.models} == {e.key for e in learned}
