"""Where a simulated pod's weights really come from, and how long loading them takes.

The placement core *estimates* a cold start from the tier its view of the node shows
(``scheduler.core.placement``). This module is the simulated world those estimates are judged
against; no policy reads it. Its rules:

* **Residency appears when a load completes.** A node's disk holds a model's files once a
  download (or a warming copy) of them has finished; the page cache holds them from the end
  of the download or disk read that brought them in, while an engine of that model runs on
  the node, and for ``page_cache_ttl_s`` after the last one stopped (the controller's
  ``host_memory_ttl_s``); an evicted file leaves the page cache with it.
* **A new engine never reads another engine's GPU memory.** GPU-resident weights serve only
  the engine that holds them, so the best a second replica on the same node gets is the page
  cache.
* **Shared fills.** A pod placed where the same weights are still arriving (a download, a
  warming copy, or another pod's disk read) waits for that fill instead of starting its
  own; after a download or copy every waiting engine reads the files from the page cache
  (vLLM downloads the checkpoint, then loads it), after a disk read they are done with it
  (they mapped the same pages).
* **Shared bandwidth.** Every node has three links: network (downloads and warming copies),
  local disk and host memory (page cache to GPU). Concurrent transfers on one link share it
  fairly over the interval they overlap (processor sharing, max-min fair with per-transfer
  caps, e.g. a copy's rate limit), recomputed whenever a transfer starts, ends or is
  cancelled. :class:`Links` is that event-driven model.
* **Disk capacity.** Files live within the node's cache capacity; a download reserves its
  size when it starts and evicts the least recently used files that no pod is loading or
  running (never one in use; if nothing can go, the node runs over its budget rather than
  refusing the download, as a full cache would not stop vLLM from downloading).

Host memory size is not modelled: page-cache entries expire only by time or eviction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

ModelKey = tuple[str, str | None]
"""(canonical lower-case model name, revision or None): one set of weight files."""

NETWORK, DISK, HOST = "network", "disk", "host"
_FINISHED_BYTES = 1.0  # float error of rate x time on byte counts of gigabytes


@dataclass(frozen=True)
class LoadModel:
    """Per-node bandwidths (bytes/s) and the page-cache window of the simulated world.

    Defaults: the core's own ``Bandwidth`` defaults (the middle of the public ranges in
    docs/benchmarks.md: remote storage ~1.5 GB/s per node, a stock loader on local NVMe
    ~5 GB/s, page cache to GPU ~20 GB/s), so that kvsched's estimates and the world agree
    when nothing contends; the copy rate is the warming fetcher's cap.
    """

    network_bytes_per_s: float = 1.5e9
    disk_bytes_per_s: float = 5e9
    host_bytes_per_s: float = 20e9
    copy_bytes_per_s: float = 1.5e9
    page_cache_ttl_s: float = 1800.0

    def __post_init__(self) -> None:
        for name in ("network_bytes_per_s", "disk_bytes_per_s", "host_bytes_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LoadModel.{name} must be > 0, not {getattr(self, name)}")
        if not self.copy_bytes_per_s > 0 or self.page_cache_ttl_s < 0:
            raise ValueError("copy_bytes_per_s must be > 0 and page_cache_ttl_s >= 0")

    def scaled(self, factor: float) -> LoadModel:
        """Every link `factor` times as fast (the sensitivity table)."""
        return replace(
            self,
            network_bytes_per_s=self.network_bytes_per_s * factor,
            disk_bytes_per_s=self.disk_bytes_per_s * factor,
            host_bytes_per_s=self.host_bytes_per_s * factor,
            copy_bytes_per_s=self.copy_bytes_per_s * factor,
        )

    def capacity(self, resource: str) -> float:
        if resource == NETWORK:
            return self.network_bytes_per_s
        if resource == DISK:
            return self.disk_bytes_per_s
        return self.host_bytes_per_s

    def inventory_bandwidth(self) -> dict[str, float]:
        """The NodeInventory ``status.bandwidth`` a node agent would report for these links."""
        return {
            "network": self.network_bytes_per_s,
            "localDisk": self.disk_bytes_per_s,
            "hostMemory": self.host_bytes_per_s,
        }


@dataclass(eq=False)
class Flow:
    """One transfer on one node's link: `remaining` bytes at `rate` (set by :class:`Links`),
    at most `cap` bytes/s when capped; `done(now)` runs when the last byte arrived."""

    node: str
    resource: str
    remaining: float
    done: Callable[[float], None]
    cap: float | None = None
    rate: float = 0.0


class Links:
    """Every node's network, disk and host links, shared by the flows on them (module
    docstring). Time only moves through :meth:`advance`."""

    def __init__(self, model: LoadModel) -> None:
        self.model = model
        self.now = 0.0
        self._groups: dict[tuple[str, str], list[Flow]] = {}

    def active(self) -> list[Flow]:
        return [f for flows in self._groups.values() for f in flows]

    def start(self, flow: Flow) -> Flow:
        key = (flow.node, flow.resource)
        self._groups.setdefault(key, []).append(flow)
        self._rerate(key)
        return flow

    def cancel(self, flow: Flow) -> None:
        key = (flow.node, flow.resource)
        flows = self._groups.get(key, [])
        if flow in flows:
            flows.remove(flow)
            self._rerate(key)

    def _rerate(self, key: tuple[str, str]) -> None:
        """Max-min fair shares of the link: capped flows below the even share keep their cap,
        the rest split what is left evenly."""
        flows = self._groups.get(key, [])
        if not flows:
            self._groups.pop(key, None)
            return
        left = self.model.capacity(key[1])
        ordered = sorted(flows, key=lambda f: f.cap if f.cap is not None else float("inf"))
        for i, flow in enumerate(ordered):
            share = left / (len(ordered) - i)
            flow.rate = share if flow.cap is None else min(flow.cap, share)
            left -= flow.rate

    def next_completion(self) -> float:
        best = float("inf")
        for flows in self._groups.values():
            for flow in flows:
                if flow.rate > 0:
                    best = min(best, self.now + flow.remaining / flow.rate)
        return best

    def _progress(self, until: float) -> None:
        dt = until - self.now
        if dt > 0:
            for flows in self._groups.values():
                for flow in flows:
                    flow.remaining -= flow.rate * dt
        self.now = max(self.now, until)

    def advance(self, t: float) -> None:
        """Run every link up to `t`; flows that finish meanwhile are removed and their
        `done` called at their finishing time (in order), which may start or cancel flows."""
        while True:
            nxt = self.next_completion()
            if nxt > t:
                self._progress(t)
                return
            self._progress(nxt)
            finished = [
                f
                for flows in self._groups.values()
                for f in flows
                if f.remaining <= _FINISHED_BYTES
            ]
            if not finished:  # float error left a few bytes: finish the earliest flow
                finished = [
                    min(
                        self.active(),
                        key=lambda f: f.remaining / f.rate if f.rate > 0 else float("inf"),
                    )
                ]
            for flow in finished:
                self._groups[(flow.node, flow.resource)].remove(flow)
            for key in {(f.node, f.resource) for f in finished}:
                self._rerate(key)
            for flow in finished:
                flow.done(self.now)


@dataclass
class DiskFile:
    size: int
    complete: bool
    last_used: float


@dataclass(eq=False)
class Fill:
    """Weights arriving on a node: a download, a warming copy or a disk read into the page
    cache. `waiters`: the pods whose engines wait for it."""

    node: str
    key: ModelKey
    source: str  # "network", "copy" or "disk"
    size: int
    flow: Flow | None = None
    waiters: list[str] = field(default_factory=list)


# Where a pod's weights came from (PodOutcome.tier): the page cache, the node's disk, its own
# download, or a fill another pod or a warming copy had started (it waited for that one).
SOURCE_HOST = "host-memory"
SOURCE_DISK = "local-disk"
SOURCE_NETWORK = "network"
SOURCE_JOINED = "joined-fill"
SOURCES = (SOURCE_HOST, SOURCE_DISK, SOURCE_JOINED, SOURCE_NETWORK)

Loaded = Callable[[str, float], None]
"""Called with (pod, time) when a pod's engine has its weights."""


@dataclass
class _Load:
    node: str
    key: ModelKey
    size: int
    loaded: Loaded
    fill: Fill | None = None
    flow: Flow | None = None
    finished: bool = False


class World:
    """The simulated nodes' disks, page caches and transfers (module docstring)."""

    def __init__(self, model: LoadModel, capacities: dict[str, int]) -> None:
        self.model = model
        self.links = Links(model)
        self.capacity = dict(capacities)
        self.disk: dict[str, dict[ModelKey, DiskFile]] = {n: {} for n in capacities}
        self.fills: dict[tuple[str, ModelKey], Fill] = {}
        self._page_until: dict[tuple[str, ModelKey], float] = {}
        self._engines: dict[tuple[str, ModelKey], int] = {}
        self._in_use: dict[tuple[str, ModelKey], int] = {}
        self._loads: dict[str, _Load] = {}
        self.ever_held: set[ModelKey] = set()
        self.bytes_copied = 0.0
        self.copied: set[tuple[str, ModelKey]] = set()  # (node, key) a warming copy completed
        self._landed: list[str] = []  # nodes where a copy completed since take_landed()
        self.copies_done = 0
        self.evictions = 0
        self.over_budget = 0  # downloads that found nothing evictable and ran over the budget

    @property
    def now(self) -> float:
        return self.links.now

    def advance(self, t: float) -> None:
        self.links.advance(t)

    # ---- what a node holds (truth, not the scheduler's view) --------------------------

    def seed(self, node: str, key: ModelKey, size: int, last_used: float) -> None:
        """A complete copy on `node`'s disk from before the trace (page cache cold)."""
        self.disk[node][key] = DiskFile(size, True, last_used)
        self.ever_held.add(key)

    def on_disk(self, node: str, key: ModelKey) -> bool:
        entry = self.disk[node].get(key)
        return entry is not None and entry.complete

    def in_page_cache(self, node: str, key: ModelKey) -> bool:
        if not self.on_disk(node, key):
            return False
        pair = (node, key)
        return self._engines.get(pair, 0) > 0 or self._page_until.get(pair, -1.0) > self.now

    def arriving(self, node: str, key: ModelKey) -> Fill | None:
        return self.fills.get((node, key))

    def source_rank(self, node: str, key: ModelKey) -> int:
        """2: page cache, 1: disk only, 0: neither (a fill in progress counts as neither)."""
        if self.in_page_cache(node, key):
            return 2
        return 1 if self.on_disk(node, key) else 0

    def holders(self, key: ModelKey) -> list[str]:
        """Nodes with a complete copy of `key` on disk."""
        return [n for n, files in self.disk.items() if (f := files.get(key)) and f.complete]

    def complete_files(self, node: str) -> list[tuple[ModelKey, DiskFile]]:
        return [(k, f) for k, f in self.disk[node].items() if f.complete]

    # ---- pods ------------------------------------------------------------------------

    def start_load(self, pod: str, node: str, key: ModelKey, size: int, loaded: Loaded) -> str:
        """A pod's engine starts on `node` and loads `key`; returns where the weights come
        from (a SOURCE_*); `loaded(pod, t)` runs when they are in its GPUs."""
        load = _Load(node, key, size, loaded)
        self._loads[pod] = load
        pair = (node, key)
        self._in_use[pair] = self._in_use.get(pair, 0) + 1
        entry = self.disk[node].get(key)
        if entry is not None:
            entry.last_used = self.now
        fill = self.fills.get(pair)
        if fill is not None:
            fill.waiters.append(pod)
            load.fill = fill
            return SOURCE_JOINED
        if self.in_page_cache(node, key):
            self._read_page_cache(pod, load)
            return SOURCE_HOST
        if self.on_disk(node, key):
            load.fill = self._fill(node, key, size, "disk", [pod])
            return SOURCE_DISK
        load.fill = self._fill(node, key, size, "network", [pod])
        return SOURCE_NETWORK

    def take_landed(self) -> list[str]:
        """Nodes where a warming copy completed since the last call (their view changes)."""
        landed, self._landed = self._landed, []
        return landed

    def copying(self, node: str) -> int:
        """Warming copies under way on `node`."""
        return sum(1 for f in self.fills.values() if f.node == node and f.source == "copy")

    def copy(self, node: str, key: ModelKey, size: int) -> bool:
        """A warming copy of `key` onto `node` at the copy rate; False when the node already
        has it or it is arriving."""
        if self.on_disk(node, key) or (node, key) in self.fills:
            return False
        self._fill(node, key, size, "copy", [])
        return True

    def stop(self, pod: str, failed: bool = False) -> None:
        """The pod is gone (departed, loaded or not). `failed`: its engine never ran (a failed
        start), so it does not keep the page cache warm beyond the usual window."""
        load = self._loads.pop(pod, None)
        if load is None:
            return
        pair = (load.node, load.key)
        self._in_use[pair] = self._in_use.get(pair, 1) - 1
        entry = self.disk[load.node].get(load.key)
        if entry is not None:
            entry.last_used = self.now
        if load.finished:
            if not failed:
                left = self._engines.get(pair, 1) - 1
                self._engines[pair] = left
                if left <= 0:
                    self._page_until[pair] = self.now + self.model.page_cache_ttl_s
            return
        if load.flow is not None:
            self.links.cancel(load.flow)
        fill = load.fill
        if fill is not None and pod in fill.waiters:
            fill.waiters.remove(pod)
            if not fill.waiters and fill.source != "copy":
                self._abandon(fill)

    def mark_failed(self, pod: str) -> None:
        """The loaded engine crashed (weights + KV do not fit): it holds no engine."""
        load = self._loads.get(pod)
        if load is not None and load.finished:
            pair = (load.node, load.key)
            self._engines[pair] = self._engines.get(pair, 1) - 1
            self._page_until[pair] = self.now + self.model.page_cache_ttl_s

    # ---- internals -------------------------------------------------------------------

    def _read_page_cache(self, pod: str, load: _Load) -> None:
        def done(t: float) -> None:
            self._finish(pod, load, t)

        load.fill = None
        load.flow = self.links.start(Flow(load.node, HOST, float(load.size), done))

    def _finish(self, pod: str, load: _Load, t: float) -> None:
        load.flow = None
        load.finished = True
        pair = (load.node, load.key)
        self._engines[pair] = self._engines.get(pair, 0) + 1
        load.loaded(pod, t)

    def _fill(self, node: str, key: ModelKey, size: int, source: str, waiters: list[str]) -> Fill:
        fill = Fill(node, key, source, size, waiters=list(waiters))
        if source != "disk":
            self._reserve(node, key, size)
        resource = DISK if source == "disk" else NETWORK
        cap = self.model.copy_bytes_per_s if source == "copy" else None

        def done(t: float) -> None:
            self._filled(fill, t)

        fill.flow = self.links.start(Flow(node, resource, float(size), done, cap=cap))
        self.fills[(node, key)] = fill
        return fill

    def _filled(self, fill: Fill, t: float) -> None:
        pair = (fill.node, fill.key)
        self.fills.pop(pair, None)
        entry = self.disk[fill.node].get(fill.key)
        if entry is None:  # evicted meanwhile cannot happen (in use), but stay whole
            entry = self.disk[fill.node][fill.key] = DiskFile(fill.size, True, t)
        entry.complete = True
        entry.last_used = t
        self.ever_held.add(fill.key)
        self._page_until[pair] = t + self.model.page_cache_ttl_s
        if fill.source == "copy":
            self.bytes_copied += fill.size
            self.copied.add(pair)
            self._landed.append(fill.node)
            self.copies_done += 1
        for pod in fill.waiters:
            load = self._loads.get(pod)
            if load is None:
                continue
            if fill.source == "disk":
                self._finish(pod, load, t)
            else:
                self._read_page_cache(pod, load)

    def _abandon(self, fill: Fill) -> None:
        if fill.flow is not None:
            self.links.cancel(fill.flow)
        self.fills.pop((fill.node, fill.key), None)
        if fill.source != "disk":
            entry = self.disk[fill.node].get(fill.key)
            if entry is not None and not entry.complete:
                del self.disk[fill.node][fill.key]  # a partial download is discarded

    def _reserve(self, node: str, key: ModelKey, size: int) -> None:
        files = self.disk[node]
        used = sum(f.size for f in files.values())
        capacity = self.capacity.get(node, 0)
        if used + size > capacity:
            victims = sorted(
                (
                    (f.last_used, k)
                    for k, f in files.items()
                    if f.complete
                    and self._in_use.get((node, k), 0) <= 0
                    and (node, k) not in self.fills
                ),
            )
            for _, victim in victims:
                if used + size <= capacity:
                    break
                used -= files.pop(victim).size
                self._page_until.pop((node, victim), None)
                self.evictions += 1
            if used + size > capacity:
                self.over_budget += 1
        files[key] = DiskFile(size, False, self.now)
