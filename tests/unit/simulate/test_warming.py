"""The simulator's warming hook: a planner called every interval, its orders executed as
copies at the copy rate on the target's network link, bytes moved reported; and the
controller's real planner (scheduler.core.warming) behind it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from unit.simulate.helpers import LLAMA_8B, arrive, nodes, pod, trace

from scheduler.core.warming import WarmingSettings
from scheduler.models.catalog import Catalog
from scheduler.models.kvplan import weights_bytes
from scheduler.simulate.engine import CopyOrder, SimCluster, Warming, run_policy
from scheduler.simulate.metrics import compute
from scheduler.simulate.policies import make_policy
from scheduler.simulate.warming import PlannerWarming

SIZE = weights_bytes(Catalog.builtin()[LLAMA_8B])
QWEN = "Qwen/Qwen2.5-7B-Instruct"


class Once:
    """A trivial planner: the given orders on its first call, nothing after."""

    def __init__(self, *orders: CopyOrder) -> None:
        self.orders = list(orders)
        self.calls: list[float] = []

    def __call__(self, sim: SimCluster) -> Sequence[CopyOrder]:
        self.calls.append(sim.now)
        orders, self.orders = self.orders, []
        return orders


def test_a_warmed_copy_is_seen_by_kvsched_and_read_from_the_page_cache() -> None:
    planner = Once(CopyOrder("h100-2", LLAMA_8B, None, SIZE))
    p = pod("p", 2)
    t = trace(nodes("h100-1", "h100-2", "h100-3"), [arrive(100, p)], duration=3600)
    result = run_policy(t, make_policy("kvsched"), warming=Warming(planner, interval_s=60))
    assert planner.calls[:3] == [0.0, 60.0, 120.0]
    placed = next(o for o in result.pods if o.name == "p")
    # The copy landed at SIZE / 1.5 GB/s (~10.7 s); kvsched sees it (the agent reports it)
    # and the pod reads the page cache the copy filled.
    assert placed.node == "h100-2" and placed.tier == "host-memory"
    assert placed.load_s == pytest.approx(SIZE / 20e9)
    assert result.copies == 1 and result.bytes_copied == SIZE
    metrics = compute(result)
    assert metrics.copied_tb_per_day == pytest.approx(SIZE / 1e12 * 24)


def test_copies_queue_per_node_and_share_the_network_link() -> None:
    other = weights_bytes(Catalog.builtin()[QWEN])
    planner = Once(
        CopyOrder("h100-1", LLAMA_8B, None, SIZE), CopyOrder("h100-1", QWEN, None, other)
    )
    t = trace(nodes("h100-1"), [], duration=3600)
    sim = SimCluster(t, Catalog.builtin(), "kvsched", warming=Warming(planner, interval_s=1e9))
    first = SIZE / 1.5e9
    sim.advance(first - 0.01)
    assert sim.world.copying("h100-1") == 1 and len(sim.queued_copies("h100-1")) == 1
    sim.advance(first + 0.01)
    assert sim.world.on_disk("h100-1", (LLAMA_8B.lower(), None))
    assert sim.world.copying("h100-1") == 1  # the queued one started when the first landed
    sim.advance(first + other / 1.5e9 + 0.01)
    assert sim.world.on_disk("h100-1", (QWEN.lower(), None))
    names = set(sim.node_state("h100-1").models)
    assert {LLAMA_8B.lower(), QWEN.lower()} <= names


def test_an_unknown_node_in_an_order_is_an_error() -> None:
    planner = Once(CopyOrder("nowhere", LLAMA_8B, None, SIZE))
    t = trace(nodes("h100-1"), [], duration=100)
    with pytest.raises(ValueError, match="nowhere"):
        run_policy(t, make_policy("kvsched"), warming=Warming(planner))


def test_the_controllers_planner_warms_a_second_holder_for_a_model_in_demand() -> None:
    planner = PlannerWarming(WarmingSettings(holders=2))
    p = pod("p", 2)
    t = trace(nodes("h100-1", "h100-2", "h100-3"), [arrive(0, p)], duration=1200)
    result = run_policy(t, make_policy("kvsched"), warming=Warming(planner, interval_s=60))
    assert planner.rounds == 21  # at 0, 60, ..., 1200 s
    running = next(o for o in result.pods if o.name == "p").node
    # The model runs on one node; the planner asks for one more holder (2 wanted), copied
    # once (not re-ordered every round while it copies).
    assert result.copies == 1 and result.bytes_copied == SIZE
    warmed = [node for node, wanted in planner.desired.items() if wanted]
    assert len(warmed) == 1 and warmed[0] != running
    assert [t.key for t in planner.desired[warmed[0]]] == [(LLAMA_8B.lower(), None)]
