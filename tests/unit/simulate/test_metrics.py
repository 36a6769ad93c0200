from __future__ import annotations

import pytest
from unit.simulate.helpers import LLAMA_8B, arrive, depart, nodes, pod, trace

from scheduler.models.catalog import Catalog
from scheduler.models.kvplan import weights_bytes
from scheduler.simulate.engine import run_policy
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
            arrive(0, one),  # weights on local disk: 30 + size / 5e9
            arrive(10, two),  # "one" runs there: GPU-resident, 30 + size / 200e9
            arrive(20, big),  # 4 of 8 free: waits
            depart(100, one),  # 6 free: still waits
            depart(200, big),  # never placed
        ],
        {"h100-1": (CachedCopy(LLAMA_8B, None, size),)},
        duration=300,
    )
    result = run_policy(t, make_policy("spread"))
    m = compute(result)
    disk, gpu = 30 + size / 5e9, 30 + size / 200e9
    assert m.placed == 2 and m.pods == 3
    assert m.mean_ready_s == pytest.approx((disk + gpu) / 2)
    assert m.p95_ready_s == pytest.approx(disk)
    assert m.mean_load_s == pytest.approx((disk + gpu) / 2 - 30)
    assert m.tiers == {"local-disk": 1, "gpu": 1}
    assert m.waited == 1 and m.never_placed == 1
    assert m.pending_s_total == pytest.approx(180)
    assert m.pending_s_mean == pytest.approx(180)
    # GPUs in use: 2 over [0, 10), 4 over [10, 100), 2 over [100, 300).
    assert m.utilisation == pytest.approx((2 * 10 + 4 * 90 + 2 * 200) / 300 / 8)
    assert m.fragmentation == pytest.approx(1.0)  # every free GPU is on a partly used node
    assert m.tp_pods == 2 and m.tp_best_set == 2
    assert m.best_tier == 2


def test_targets_and_table() -> None:
    t = trace(nodes("h100-1", "h100-2"), [arrive(0, pod("a", 2)), arrive(1, pod("b", 4))])
    metrics = [compute(run_policy(t, make_policy(n))) for n in ("kvsched", "spread")]
    found = {x.name: x for x in targets(metrics)}
    assert found["zero partially placed gangs"].met
    best_set = next(x for name, x in found.items() if name.startswith("100% of TP pods"))
    assert "device plugin" in best_set.name
    assert best_set.met
    assert "by kvsched's prediction" in best_set.detail and "spread:" in best_set.detail
    assert any("3x" in name for name in found)
    table = format_table(metrics)
    assert table.splitlines()[0].startswith("POLICY")
    assert "kvsched" in table and "spread" in table
    assert "BEST SET (PLUGIN)" in table and "BEST SET (PREDICTED)" in table
    spread_row = next(line for line in table.splitlines() if line.startswith("spread"))
    assert " - " in spread_row  # no prediction to grade
