from __future__ import annotations

import pytest
from unit.simulate.helpers import LLAMA_8B, arrive, depart, nodes, pod, trace

from scheduler.models.catalog import Catalog
from scheduler.models.kvplan import weights_bytes
from scheduler.simulate.engine import (
    LOSS_ARRIVING,
    LOSS_BUSY_SAME,
    LOSS_DISK_ONLY,
    LOSS_FIRST_USE,
    LOSS_NONE,
    PodOutcome,
    SimCluster,
    run_policy,
)
from scheduler.simulate.metrics import compute, format_table, percentile, targets
from scheduler.simulate.policies import make_policy
from scheduler.simulate.trace import CachedCopy


def test_percentile_nearest_rank() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([5.0], 95) == 5.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0
    assert percentile([float(i) for i in range(1, 21)], 100) == 20.0


def test_hand_checked_tiny_trace() -> None:
    size = weights_bytes(Catalog.builtin()[LLAMA_8B])
    one, two, big = pod("one", 2), pod("two", 2), pod("big", 8)
    t = trace(
        nodes("h100-1"),
        [
            arrive(0, one),  # weights on local disk: size / 5e9 (3.2 s)
            arrive(10, two),  # "one" runs there; a new engine gets the page cache: size / 20e9
            arrive(20, big),  # 4 of 8 free: waits
            depart(100, one),  # 6 free: still waits
            depart(200, big),  # never placed
        ],
        {"h100-1": (CachedCopy(LLAMA_8B, None, size),)},
        duration=300,
    )
    result = run_policy(t, make_policy("stock-hinted"))
    m = compute(result)
    # The old model served "two" from GPU memory at 200 GB/s (0.08 s): an engine cannot
    # read another engine's GPU memory.
    disk, host = size / 5e9, size / 20e9
    assert m.placed == 2 and m.pods == 3 and m.loaded == 2 and m.failed_starts == 0
    assert m.mean_load_s == pytest.approx((disk + host) / 2)
    assert m.mean_ready_s == pytest.approx((disk + host) / 2 + 30)
    assert m.p95_ready_s == pytest.approx(disk + 30)
    assert m.tiers == {"local-disk": 1, "host-memory": 1}
    assert m.loss_pods == {LOSS_DISK_ONLY: 1, LOSS_NONE: 1}
    assert m.loss_s[LOSS_DISK_ONLY] == pytest.approx(disk - host)
    assert m.waited == 1 and m.never_placed == 1
    assert m.pending_s_total == pytest.approx(180)
    assert m.pending_s_mean == pytest.approx(180)
    # GPUs in use: 2 over [0, 10), 4 over [10, 100), 2 over [100, 300).
    assert m.utilisation == pytest.approx((2 * 10 + 4 * 90 + 2 * 200) / 300 / 8)
    assert m.fragmentation == pytest.approx(1.0)  # every free GPU is on a partly used node
    assert m.tp_pods == 2 and m.tp_best_set == 2


def test_a_co_placed_replica_waits_for_the_download_under_way() -> None:
    size = weights_bytes(Catalog.builtin()[LLAMA_8B])
    a, b = pod("a", 2), pod("b", 2)
    t = trace(nodes("h100-1"), [arrive(0, a), arrive(1, b)], duration=600)
    for name in ("stock-hinted", "kvsched"):
        by = {p.name: p for p in run_policy(t, make_policy(name)).pods}
        download = size / 1.5e9
        both_read = size / 10e9  # two engines share the 20 GB/s page-cache link
        assert by["a"].tier == "network" and by["a"].loss == LOSS_FIRST_USE
        assert by["b"].tier == "joined-fill" and by["b"].loss == LOSS_ARRIVING
        assert by["a"].load_s == pytest.approx(download + both_read)
        assert by["b"].load_s == pytest.approx(download + both_read - 1)


def test_holders_busy_with_the_same_model() -> None:
    a, c = pod("a", 8), pod("c", 8)
    t = trace(nodes("h100-1", "h100-2"), [arrive(0, a), arrive(100, c)], duration=600)
    by = {p.name: p for p in run_policy(t, make_policy("stock-hinted")).pods}
    assert by["c"].node != by["a"].node and by["c"].holders == 1
    assert by["c"].loss == LOSS_BUSY_SAME and by["c"].tier == "network"


def test_targets_and_table() -> None:
    t = trace(nodes("h100-1", "h100-2"), [arrive(0, pod("a", 2)), arrive(1, pod("b", 4))])
    metrics = [
        compute(run_policy(t, make_policy(n)))
        for n in ("kvsched", "stock-hinted", "stock-blind", "pinning")
    ]
    found = {x.name: x for x in targets(metrics)}
    assert found["zero partially placed gangs"].met
    best_set = next(x for name, x in found.items() if name.startswith("100% of TP pods"))
    assert "device plugin" in best_set.name
    assert best_set.met
    assert "by kvsched's prediction" in best_set.detail and "stock-hinted:" in best_set.detail
    assert any("2x lower than stock-hinted" in name for name in found)
    assert "no worse than pinning" in " ".join(found)
    assert found["failed starts avoided versus stock-blind"].met
    table = format_table(metrics)
    assert table.splitlines()[0].startswith("POLICY")
    assert "kvsched" in table and "stock-hinted" in table
    assert "BEST SET (PLUGIN)" in table and "BEST SET (PREDICTED)" in table
    assert "FAILED STARTS" in table
    stock_row = next(line for line in table.splitlines() if line.startswith("stock-hinted"))
    assert " - " in stock_row  # no prediction to grade


def test_the_view_learns_gpu_residency_at_readiness_not_at_the_start() -> None:
    """The controller's tracker counts a model GPU-resident once its pod is Ready (weights
    loaded + engine init), so kvsched's view never promises a copy still arriving."""
    size = weights_bytes(Catalog.builtin()[LLAMA_8B])
    a = pod("a", 2)
    t = trace(nodes("h100-1"), [arrive(0, a)], duration=600)
    sim = SimCluster(t, Catalog.builtin(), "kvsched")
    sim.outcomes["a"] = PodOutcome("a", a.replica, a.gpus, a.model, a.gang, 0.0)
    sim.arrive(a)
    make_policy("kvsched").place(sim, [a])
    ready_at = size / 1.5e9 + 30  # network download, then engine init
    sim.advance(ready_at - 1)
    assert sim.tracker.learned("h100-1", sim.clock(), 2 * 10**12)[0] == ()
    sim.advance(ready_at + 1)
    models = sim.tracker.learned("h100-1", sim.clock(), 2 * 10**12)[0]
    assert [(m.name, m.tier) for m in models] == [(LLAMA_8B.lower(), "gpu")]
