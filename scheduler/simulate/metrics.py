"""Per-policy metrics of a simulation run, the terminal table and the JSON form.

* time to ready: the core's cold-start estimate (engine init + weights / bandwidth of the tier
  the weights were in on the chosen node at placement) over placed pods: mean and p95
  (nearest rank); weight-load time is the same without engine init (DESIGN.md's target);
* best tier: share of placed pods whose weights came from the fastest tier that any node
  where the pod fitted at that moment held them in;
* best GPU set ("TP pods on the best set"): share of pods with 2+ GPUs whose set is as good
  (quality within eps) as :func:`topology.select.best_gpu_set` of that size among the node's
  free GPUs at that moment. Graded two ways: (a) by the GPUs the device plugin handed out,
  for every policy (the headline: it is what the pod runs on); (b) for kvsched also by its
  prediction (``kvsched.io/predicted-gpus``), which no component on the node reads;
* prediction hits (kvsched): placed pods whose predicted set is the set the device plugin
  handed out, over pods with 2+ GPUs and over all GPU pods; predictions naming a GPU the
  kubelet had already given to another pod; plugin fallbacks: placements where the plugin's
  answer was not a full set and the kubelet chose (scheduler.simulate.kubelet);
* partial gangs: gangs that at some moment had some but not all members holding GPUs, and the
  GPU-seconds such members held;
* pending: pods that were not placed on arrival, pods never placed (departed while pending or
  still pending at the end), and pending seconds (total over all pods; mean over those that
  waited);
* fragmentation: time-weighted mean share of free GPUs that sit on nodes with fewer than 8
  free (no 8-GPU pod can use them); utilisation: time-weighted mean share of GPUs in use.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scheduler.simulate.engine import RunResult, Sample


@dataclass(frozen=True)
class Metrics:
    policy: str
    pods: int
    placed: int
    mean_ready_s: float
    p95_ready_s: float
    mean_load_s: float
    p95_load_s: float
    tiers: dict[str, int]
    best_tier: int  # placed pods whose weights came from the fastest tier any fitting node had
    tp_pods: int
    tp_best_set: int  # by the GPUs the device plugin handed out
    tp_predicted: int  # TP pods with a prediction (kvsched's)
    tp_predicted_best_set: int  # ... whose prediction is as good as the best set
    tp_prediction_hits: int  # ... whose prediction is the plugin's set
    predicted_pods: int  # placed GPU pods with a prediction
    prediction_hits: int
    # ... whose prediction names a GPU the kubelet had already given to another pod (e.g. a
    # gang member bound on its reservation, planned before its siblings got their GPUs)
    predictions_on_taken_gpus: int
    plugin_fallbacks: int
    gangs: int
    partial_gangs: int
    partial_gang_gpu_s: float
    waited: int
    never_placed: int
    pending_s_total: float
    pending_s_mean: float
    fragmentation: float
    utilisation: float
    wall_s: float
    evictions: int

    @property
    def best_set_share(self) -> float:
        """TP pods on the best set, by the GPUs the device plugin handed out."""
        return self.tp_best_set / self.tp_pods if self.tp_pods else 1.0

    @property
    def predicted_best_set_share(self) -> float | None:
        """TP pods on the best set by kvsched's prediction; None without predictions."""
        if not self.tp_predicted:
            return None
        return self.tp_predicted_best_set / self.tp_predicted

    @property
    def tp_prediction_hit_rate(self) -> float | None:
        return self.tp_prediction_hits / self.tp_predicted if self.tp_predicted else None

    @property
    def prediction_hit_rate(self) -> float | None:
        return self.prediction_hits / self.predicted_pods if self.predicted_pods else None

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["best_set_share"] = self.best_set_share
        out["predicted_best_set_share"] = self.predicted_best_set_share
        out["tp_prediction_hit_rate"] = self.tp_prediction_hit_rate
        out["prediction_hit_rate"] = self.prediction_hit_rate
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in (0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def time_weighted(samples: Sequence[Sample], value: str, end: float) -> float:
    """Mean of a sample attribute over [first sample, end], each value held until the next."""
    total = 0.0
    span = 0.0
    for current, following in zip(samples, [*samples[1:], None], strict=True):
        until = following.time if following is not None else end
        width = max(0.0, until - current.time)
        total += float(getattr(current, value)) * width
        span += width
    return total / span if span > 0 else float(getattr(samples[-1], value)) if samples else 0.0


def stranded_share(samples: Sequence[Sample], end: float) -> float:
    """Time-weighted mean of stranded / free GPUs (0 when nothing is free)."""
    total = 0.0
    span = 0.0
    for current, following in zip(samples, [*samples[1:], None], strict=True):
        until = following.time if following is not None else end
        width = max(0.0, until - current.time)
        share = current.stranded / current.free if current.free else 0.0
        total += share * width
        span += width
    return total / span if span > 0 else 0.0


def compute(result: RunResult) -> Metrics:
    end = result.duration_s
    placed = [p for p in result.pods if p.placed is not None]
    ready = [p.ready_s for p in placed if p.ready_s is not None]
    load = [p.load_s for p in placed if p.load_s is not None]
    tiers: dict[str, int] = {}
    for p in placed:
        if p.tier is not None:
            tiers[p.tier] = tiers.get(p.tier, 0) + 1
    tp = [p for p in placed if p.best_set is not None]
    tp_predicted = [p for p in tp if p.predicted_ids is not None]
    predicted = [p for p in placed if p.predicted_ids is not None and p.gpu_ids]
    waits = [p.pending_s(end) for p in result.pods]
    waited = [w for w in waits if w > 0]
    return Metrics(
        policy=result.policy,
        pods=len(result.pods),
        placed=len(placed),
        mean_ready_s=statistics.fmean(ready) if ready else 0.0,
        p95_ready_s=percentile(ready, 95),
        mean_load_s=statistics.fmean(load) if load else 0.0,
        p95_load_s=percentile(load, 95),
        tiers=tiers,
        best_tier=sum(1 for p in placed if p.tier is not None and p.tier == p.best_tier),
        tp_pods=len(tp),
        tp_best_set=sum(1 for p in tp if p.best_set),
        tp_predicted=len(tp_predicted),
        tp_predicted_best_set=sum(1 for p in tp_predicted if p.predicted_best_set),
        tp_prediction_hits=sum(1 for p in tp_predicted if p.prediction_hit),
        predicted_pods=len(predicted),
        prediction_hits=sum(1 for p in predicted if p.prediction_hit),
        predictions_on_taken_gpus=sum(
            1 for p in predicted if not set(p.predicted_ids or ()) <= set(p.node_free)
        ),
        plugin_fallbacks=sum(1 for p in placed if p.plugin_fell_back),
        gangs=len(result.gangs),
        partial_gangs=sum(1 for s in result.gangs.values() if s.ever_partial),
        partial_gang_gpu_s=sum(s.partial_gpu_s for s in result.gangs.values()),
        waited=len(waited),
        never_placed=len(result.pods) - len(placed),
        pending_s_total=sum(waited),
        pending_s_mean=statistics.fmean(waited) if waited else 0.0,
        fragmentation=stranded_share(result.samples, end),
        utilisation=time_weighted(result.samples, "used", end) / result.total_gpus
        if result.total_gpus
        else 0.0,
        wall_s=result.wall_s,
        evictions=result.evictions,
    )


HEADERS = (
    "POLICY",
    "PLACED",
    "READY MEAN",
    "READY P95",
    "LOAD MEAN",
    "BEST TIER",
    "BEST SET (PLUGIN)",
    "BEST SET (PREDICTED)",
    "PREDICTED = PLUGIN",
    "PARTIAL GANGS",
    "WAITED",
    "NEVER",
    "PENDING MEAN",
    "FRAG",
    "UTIL",
    "WEIGHTS FROM gpu/host/disk/net",
)


def table_rows(metrics: Sequence[Metrics]) -> list[list[str]]:
    rows = []
    for m in metrics:
        tiers = "/".join(
            str(m.tiers.get(t, 0)) for t in ("gpu", "host-memory", "local-disk", "network")
        )
        rows.append(
            [
                m.policy,
                f"{m.placed}/{m.pods}",
                f"{m.mean_ready_s:.1f}s",
                f"{m.p95_ready_s:.0f}s",
                f"{m.mean_load_s:.1f}s",
                f"{100 * m.best_tier / m.placed if m.placed else 100:.0f}%",
                f"{100 * m.best_set_share:.1f}% ({m.tp_best_set}/{m.tp_pods})",
                _share(m.tp_predicted_best_set, m.tp_predicted),
                _share(m.tp_prediction_hits, m.tp_predicted),
                f"{m.partial_gangs}/{m.gangs}",
                str(m.waited),
                str(m.never_placed),
                f"{m.pending_s_mean:.0f}s",
                f"{100 * m.fragmentation:.0f}%",
                f"{100 * m.utilisation:.0f}%",
                tiers,
            ]
        )
    return rows


def _share(part: int, whole: int) -> str:
    """ "x% (part/whole)", or "-" when there is nothing to count (no predictions)."""
    return f"{100 * part / whole:.1f}% ({part}/{whole})" if whole else "-"


def format_table(metrics: Sequence[Metrics]) -> str:
    rows = [list(HEADERS), *table_rows(metrics)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def markdown_table(metrics: Sequence[Metrics]) -> str:
    lines = [
        "| " + " | ".join(h.lower() for h in HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(metrics)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    name: str
    met: bool
    detail: str


def targets(metrics: Sequence[Metrics], stock: str = "spread") -> list[Target]:
    """The DESIGN.md / issue targets for kvsched against the stock-like policy."""
    by_name = {m.policy: m for m in metrics}
    kv, base = by_name.get("kvsched"), by_name.get(stock)
    found: list[Target] = []
    if kv is None:
        return found
    if base is not None:
        for label, ours, theirs in (
            ("mean time to ready", kv.mean_ready_s, base.mean_ready_s),
            ("mean weight-load time", kv.mean_load_s, base.mean_load_s),
        ):
            ratio = theirs / ours if ours > 0 else math.inf
            found.append(
                Target(
                    f"{label} >= 3x lower than {stock}",
                    ratio >= 3.0,
                    f"{theirs:.1f}s vs {ours:.1f}s: {ratio:.2f}x"
                    + ("" if ratio >= 3.0 else f" ({3.0 - ratio:.2f}x short)"),
                )
            )
    predicted = (
        f"; by kvsched's prediction {_share(kv.tp_predicted_best_set, kv.tp_predicted)}, "
        f"prediction = plugin's set {_share(kv.tp_prediction_hits, kv.tp_predicted)}"
        if kv.tp_predicted
        else ""
    )
    stock_share = (
        f"; {stock}: {100 * base.best_set_share:.1f}% ({base.tp_best_set}/{base.tp_pods})"
        if base is not None
        else ""
    )
    found.append(
        Target(
            "100% of TP pods on the best available GPU set, by the GPUs the device plugin "
            "hands out",
            kv.tp_best_set == kv.tp_pods,
            f"{100 * kv.best_set_share:.1f}% ({kv.tp_best_set}/{kv.tp_pods}){predicted}"
            f"{stock_share}",
        )
    )
    found.append(
        Target(
            "zero partially placed gangs",
            kv.partial_gangs == 0,
            f"{kv.partial_gangs} of {kv.gangs} gangs",
        )
    )
    return found
