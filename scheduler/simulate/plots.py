"""PNG plots of a simulation (matplotlib with the Agg backend; in the `dev` extra).

* ``time_to_ready.png``: mean and p95 simulated time to ready per policy (bars);
* ``time_to_ready_cdf.png``: the CDF of time to ready over placed pods, one line per policy;
* ``fragmentation.png``: share of free GPUs stranded on nodes with fewer than 8 free, over
  time, one line per policy;
* ``best_gpu_set.png``: share of TP pods (2+ GPUs) on the best available GPU set per policy,
  by the GPUs the device plugin handed out and, where there is one (kvsched), by the
  prediction (bars).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scheduler.simulate.engine import RunResult
from scheduler.simulate.metrics import Metrics


def write_plots(
    results: Sequence[RunResult], metrics: Sequence[Metrics], folder: Path
) -> list[Path]:
    """Write the four PNGs into `folder` (created if needed); returns their paths."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is in the dev extra
        raise RuntimeError(
            "plots need matplotlib: pip install 'kvsched[dev]' (or matplotlib)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def finish(fig: Any, ax: Any, title: str, path: Path, **legend: Any) -> Path:
        ax.set_title(title)
        ax.legend(**legend)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    folder.mkdir(parents=True, exist_ok=True)
    names = [m.policy for m in metrics]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    positions = list(range(len(names)))
    width = 0.38
    ax.bar(
        [p - width / 2 for p in positions], [m.mean_ready_s for m in metrics], width, label="mean"
    )
    ax.bar([p + width / 2 for p in positions], [m.p95_ready_s for m in metrics], width, label="p95")
    ax.set_xticks(positions, names)
    ax.set_ylabel("simulated time to ready (s)")
    paths.append(finish(fig, ax, "Time to ready per policy", folder / "time_to_ready.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for result in results:
        ready = sorted(p.ready_s for p in result.pods if p.ready_s is not None)
        if ready:
            ax.step(
                ready,
                [(i + 1) / len(ready) for i in range(len(ready))],
                where="post",
                label=result.policy,
            )
    ax.set_xscale("log")
    ax.set_xlabel("simulated time to ready (s, log)")
    ax.set_ylabel("share of placed pods")
    paths.append(finish(fig, ax, "CDF of time to ready", folder / "time_to_ready_cdf.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for result in results:
        times = [s.time / 3600.0 for s in result.samples]
        shares = [s.stranded / s.free if s.free else 0.0 for s in result.samples]
        ax.step(times, shares, where="post", label=result.policy, linewidth=0.9)
    ax.set_xlabel("simulated time (h)")
    ax.set_ylabel("free GPUs unusable by an 8-GPU pod")
    ax.set_ylim(0, 1.05)
    paths.append(finish(fig, ax, "GPU fragmentation over time", folder / "fragmentation.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    plugin = [100 * m.best_set_share for m in metrics]
    ax.bar([p - width / 2 for p in positions], plugin, width, label="device plugin's GPUs")
    predicted = [(p, m.predicted_best_set_share) for p, m in zip(positions, metrics, strict=True)]
    shown = [(p, 100 * share) for p, share in predicted if share is not None]
    if shown:
        ax.bar(
            [p + width / 2 for p, _ in shown],
            [share for _, share in shown],
            width,
            label="kvsched's prediction",
        )
    ax.set_xticks(positions, names)
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("TP pods on the best GPU set (%)")
    title = "TP pods on the best available GPU set"
    path = folder / "best_gpu_set.png"
    paths.append(finish(fig, ax, title, path, loc="upper center", ncol=2))
    return paths
