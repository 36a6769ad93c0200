"""Per-policy metrics of a simulation run, the terminal table and the JSON form.

* weight-load time: the simulated world's seconds from a pod's start on its node until its
  engine holds the weights (waiting for a fill under way, sharing links, reading the page
  cache after a download; scheduler.simulate.physics), over pods that loaded and started;
  mean and p95 (nearest rank); time to ready adds the engine init. Failed starts (weights +
  KV do not fit the GPUs) never get ready and are counted apart;
* weights from: where each placed pod's weights came from (page cache, local disk, a fill
  already under way, its own download);
* loss breakdown: per cause (engine.LOSSES), the load seconds beyond a lone page-cache read
  and the pods, so a missed target says what cost the time;
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

from scheduler.simulate.engine import LOSSES, RunResult, Sample
from scheduler.simulate.physics import SOURCES


@dataclass(frozen=True)
class Metrics:
    policy: str
    pods: int
    placed: int
    mean_ready_s: float
    p95_ready_s: float
    mean_load_s: float
    p95_load_s: float
    loaded: int  # pods whose engines got their weights and started (failed starts excluded)
    failed_starts: int  # placed where weights + KV do not fit: loaded, crashed, never ready
    tiers: dict[str, int]
    loss_s: dict[str, float]  # cause -> load seconds beyond a lone page-cache read
    loss_pods: dict[str, int]  # cause -> pods
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
    duration_s: float = 0.0
    warming: bool = False
    bytes_copied: float = 0.0
    copies: int = 0

    @property
    def copied_tb_per_day(self) -> float:
        """Bytes moved by warming copies, in TB per simulated day."""
        return self.bytes_copied / 1e12 * 86400.0 / self.duration_s if self.duration_s else 0.0

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
        out["copied_tb_per_day"] = self.copied_tb_per_day
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
    loss_s: dict[str, float] = {}
    loss_pods: dict[str, int] = {}
    for p in placed:
        if p.loss is not None and p.load_s is not None:
            loss_s[p.loss] = loss_s.get(p.loss, 0.0) + p.excess_load_s
            loss_pods[p.loss] = loss_pods.get(p.loss, 0) + 1
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
        loaded=len(load),
        failed_starts=sum(1 for p in placed if p.failed_start),
        tiers=tiers,
        loss_s=loss_s,
        loss_pods=loss_pods,
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
        duration_s=result.duration_s,
        warming=result.warming,
        bytes_copied=result.bytes_copied,
        copies=result.copies,
    )


HEADERS = (
    "POLICY",
    "PLACED",
    "FAILED STARTS",
    "READY MEAN",
    "READY P95",
    "LOAD MEAN",
    "LOAD P95",
    "BEST SET (PLUGIN)",
    "BEST SET (PREDICTED)",
    "PREDICTED = PLUGIN",
    "PARTIAL GANGS",
    "WAITED",
    "NEVER",
    "PENDING MEAN",
    "FRAG",
    "UTIL",
    "WEIGHTS FROM host/disk/joined/net",
)


def table_rows(metrics: Sequence[Metrics]) -> list[list[str]]:
    rows = []
    for m in metrics:
        tiers = "/".join(str(m.tiers.get(t, 0)) for t in SOURCES)
        rows.append(
            [
                m.policy,
                f"{m.placed}/{m.pods}",
                str(m.failed_starts),
                f"{m.mean_ready_s:.1f}s",
                f"{m.p95_ready_s:.0f}s",
                f"{m.mean_load_s:.1f}s",
                f"{m.p95_load_s:.0f}s",
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


LOAD_TARGET = 2.0  # mean weight-load time at least this many times lower than stock-hinted
LOAD_AIM = 3.0


def targets(
    metrics: Sequence[Metrics],
    stock: str = "stock-hinted",
    pinning: str = "pinning",
    blind: str = "stock-blind",
) -> list[Target]:
    """The DESIGN.md / issue targets for kvsched against the baselines present."""
    by_name = {m.policy: m for m in metrics}
    kv = by_name.get("kvsched")
    found: list[Target] = []
    if kv is None:
        return found
    base = by_name.get(stock)
    if base is not None:
        ratio = base.mean_load_s / kv.mean_load_s if kv.mean_load_s > 0 else math.inf
        short = "" if ratio >= LOAD_TARGET else f" ({LOAD_TARGET - ratio:.2f}x short)"
        aim = "; aim 3x met" if ratio >= LOAD_AIM else "; aim 3x not reached"
        found.append(
            Target(
                f"mean weight-load time >= {LOAD_TARGET:g}x lower than {stock}",
                ratio >= LOAD_TARGET,
                f"{base.mean_load_s:.1f}s vs {kv.mean_load_s:.1f}s: {ratio:.2f}x{short}{aim}",
            )
        )
    pin = by_name.get(pinning)
    if pin is not None:
        worse = kv.mean_load_s - pin.mean_load_s
        found.append(
            Target(
                f"mean weight-load time no worse than {pinning}",
                worse <= 0,
                f"{kv.mean_load_s:.1f}s vs {pin.mean_load_s:.1f}s"
                + (
                    f" ({worse:.1f}s, {100 * worse / pin.mean_load_s:.0f}% worse)"
                    if worse > 0
                    else ""
                ),
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
    no_fit = by_name.get(blind)
    if no_fit is not None:
        found.append(
            Target(
                f"failed starts avoided versus {blind}",
                kv.failed_starts == 0,
                f"{blind}: {no_fit.failed_starts} failed starts of {no_fit.placed} placed pods; "
                f"kvsched: {kv.failed_starts}",
            )
        )
    return found


def loss_rows(metrics: Sequence[Metrics]) -> list[list[str]]:
    """Per cause: for each policy, the share of its excess load seconds and the pods."""
    rows = []
    for cause in LOSSES:
        row = [cause]
        for m in metrics:
            total = sum(m.loss_s.values())
            seconds = m.loss_s.get(cause, 0.0)
            share = 100 * seconds / total if total > 0 else 0.0
            row.append(f"{seconds:.0f}s ({share:.0f}%), {m.loss_pods.get(cause, 0)} pods")
        rows.append(row)
    return rows


def loss_markdown(metrics: Sequence[Metrics]) -> str:
    lines = [
        "| cause | " + " | ".join(m.policy for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in loss_rows(metrics)]
    return "\n".join(lines)


@dataclass(frozen=True)
class SamePods:
    """Mean weight-load time of two runs over the pods both placed and loaded (the plain means
    are over each policy's own placed pods, and a policy that places more large pods that
    another leaves pending carries their long loads alone)."""

    pods: int
    mean_a_s: float
    mean_b_s: float

    @property
    def ratio(self) -> float:
        """a / b: how many times lower b's mean is."""
        return self.mean_a_s / self.mean_b_s if self.mean_b_s > 0 else math.inf


def same_pods(a: RunResult, b: RunResult) -> SamePods:
    loads_a = {p.name: p.load_s for p in a.pods if p.load_s is not None}
    both = [
        (loads_a[p.name], p.load_s) for p in b.pods if p.load_s is not None and p.name in loads_a
    ]
    if not both:
        return SamePods(0, 0.0, 0.0)
    return SamePods(
        len(both),
        statistics.fmean(x for x, _ in both),
        statistics.fmean(y for _, y in both),
    )
