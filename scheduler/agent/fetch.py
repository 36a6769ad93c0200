"""The node agent's fetcher: copies the models the controller asks for (``spec.warming``) from a
source (:mod:`scheduler.agent.sources`) into the node's model cache, and reports progress
(``status.warming``).

**Layout.** Copies land in ``--warm-cache-dir`` in the Hugging Face hub layout,
``models--org--name/{blobs/<blob>, snapshots/<commit>/<file> -> ../../blobs/<blob>,
refs/<ref>}``, so vLLM, SGLang and ``transformers`` find them with ``HF_HUB_OFFLINE=1`` (and
the cache scan reports them). Hub sources keep their blob names and commit; a plain folder
gets blobs named by their sha256 and its fingerprint as the commit (see the sources module),
with ``refs/main`` pointing at it.

**Atomic.** Every file is copied into ``<cache>/.kvsched-partial/<job>/`` (same filesystem;
the scan skips hidden folders), as ``<n>.part`` while it arrives and ``<n>-<sha256>`` once
whole and verified. When all files are there they move into ``blobs/``, the snapshot folder
of links is built in the staging folder and renamed into ``snapshots/`` in one ``rename(2)``:
until then the scan sees no snapshot, so a half-copied model is never reported. A killed agent
resumes on restart: whole files already staged are kept (checked by size against the job's
manifest), a ``.part`` file is re-hashed and continued where it stopped, and a staging folder
whose manifest no longer matches the source, or whose model is no longer asked for, is
deleted.

**Checksums.** A hub blob named by 64 hex digits is an LFS file whose name is its sha256; one
named by 40 hex digits is git's blob id, sha1 of ``b"blob <size>\\0" + content``. Both are
verified; a mismatch fails the model with a message and deletes the bad copy. Plain folders
have no checksums: sizes are checked.

**Bandwidth.** One token bucket (:class:`TokenBucket`, ``--warm-bandwidth`` bytes/s, a burst
of a quarter second) over the copy loops of all concurrent copies (``--warm-max-concurrent``).

**Budget and eviction.** ``--warm-budget-bytes`` bounds the models in the cache folder (as the
scan sizes them) plus the copies in progress (each reserves its bytes when it starts). A copy
that does not fit evicts models of the cache folder, least recently used first (``lastUsed``:
the newer of the scan's and the inventory's), and never:

* a model **in use**: one the NodeInventory lists at ``gpu`` tier. The controller puts a model
  there while a pod with ``kvsched.io/model`` (and ``model-revision``) runs on the node; the
  agent itself may not read pods (least privilege), so this is how it knows. Matched by name,
  any revision (a pod's revision may be a ref where the cache has a commit);
* a model **asked for** (in ``spec.warming``, by name): evicting one wanted model for another
  would swap them back and forth every cycle. When the room left after every allowed eviction
  is too small the copy fails (``budget ... too small``) and is retried later.

When the cache is over budget by itself (a lowered budget, models grown) and some model is
asked for, the agent evicts down to the budget: models not asked for first, then asked-for
ones that are done ("the budget forces it"), never one in use. Only hub-layout snapshots
directly in the cache folder are evicted (that is what the fetcher writes); plain folders count
but stay. A model is not deleted because it left the list; only to make room.

**Failures** (source errors, checksum mismatch, no room) are ``failed`` with the reason and
retried after ``retry_after_s``; the source being unreadable while a copy is already cached
leaves it ``done``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.agent.cache_scan import ScanResult, no_residency, scan_model_caches
from scheduler.agent.sources import (
    ModelSource,
    SourceError,
    SourceFile,
    SourceModel,
    hub_folder_name,
)
from scheduler.inventory.spec import WarmingRequest, WarmingSpec
from scheduler.inventory.status import (
    MAX_WARMING_MODELS,
    InventoryStatus,
    ModelEntry,
    WarmingProgress,
)
from scheduler.inventory.status import now as utc_now

__all__ = [
    "STAGING_DIR",
    "FetchSettings",
    "Fetcher",
    "TokenBucket",
    "in_use_models",
]

log = logging.getLogger(__name__)

STAGING_DIR = ".kvsched-partial"
MANIFEST = "manifest.json"
CHUNK_BYTES = 1024 * 1024
MIN_CHUNK_BYTES = 16 * 1024
_TRASH_PREFIX = "trash-"
_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)

Key = tuple[str, str | None]


@dataclass(frozen=True)
class FetchSettings:
    """``cache_dir``: where copies go. ``budget_bytes``: None = no budget (a copy then needs
    the free space on the cache's filesystem). ``bandwidth``: bytes/s, None = unlimited."""

    cache_dir: Path
    budget_bytes: int | None = None
    bandwidth: float | None = None
    max_concurrent: int = 1
    retry_after_s: float = 300.0
    evicted_keep_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.budget_bytes is not None and self.budget_bytes < 0:
            raise ValueError(f"--warm-budget-bytes must be >= 0, got {self.budget_bytes}")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ValueError(f"--warm-bandwidth must be positive, got {self.bandwidth}")
        if self.max_concurrent < 1:
            raise ValueError(f"--warm-max-concurrent must be >= 1, got {self.max_concurrent}")
        if self.retry_after_s < 0:
            raise ValueError(f"--warm-retry-seconds must be >= 0, got {self.retry_after_s}")


class TokenBucket:
    """A byte-rate limit shared by threads: ``rate`` bytes/s, bursts up to ``burst_s`` seconds.

    Tokens may go negative: a taker is told to wait until its bytes are paid for, so takers
    queue up in time and the aggregate rate holds whatever the chunk size.
    """

    def __init__(
        self,
        rate: float,
        burst_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.capacity = max(self.rate * burst_s, 1.0)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self, amount: int) -> float:
        """Take ``amount`` tokens; the seconds to wait before using them."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def take(self, amount: int, cancel: threading.Event | None = None) -> None:
        wait = self.reserve(amount)
        if wait > 0:
            if cancel is not None:
                cancel.wait(wait)
            else:
                time.sleep(wait)


def in_use_models(status: InventoryStatus | None) -> frozenset[str]:
    """Lower-cased names of the models in use on the node: the ``gpu``-tier entries (the
    controller's word that a pod of that model runs there)."""
    if status is None:
        return frozenset()
    return frozenset(m.name.lower() for m in status.models if m.tier == "gpu")


class FetchError(Exception):
    """A copy failed for a reason worth showing (checksum mismatch, source changed, no room)."""


class _CancelledError(Exception):
    pass


@dataclass
class _Progress:
    name: str
    revision: str | None
    state: str
    updated_at: dt.datetime
    bytes_done: int = 0
    bytes_total: int | None = None
    message: str = ""
    started_at: dt.datetime | None = None
    request: WarmingRequest | None = None
    snapshot: Path | None = None
    retry_at: dt.datetime | None = None

    def public(self) -> WarmingProgress:
        return WarmingProgress(
            name=self.name,
            state=self.state,
            updated_at=self.updated_at,
            revision=self.revision,
            bytes_done=max(0, self.bytes_done),
            bytes_total=self.bytes_total,
            message=self.message,
            started_at=self.started_at,
        )


@dataclass
class _Job:
    key: Key
    request: WarmingRequest
    cancel: threading.Event = field(default_factory=threading.Event)
    withdrawn: bool = False
    thread: threading.Thread | None = None


@dataclass(frozen=True)
class _Cached:
    entry: ModelEntry
    path: Path | None  # the snapshot folder, when the fetcher may evict it

    @property
    def size(self) -> int:
        return self.entry.size_bytes or 0


class Fetcher:
    """Runs the copies in threads; :meth:`update` (each agent cycle) says what is wanted,
    :meth:`progress` is what the agent publishes. ``on_change`` is called (from any thread)
    when a model changes state, so the agent can publish without waiting a whole interval."""

    def __init__(
        self,
        source: ModelSource,
        settings: FetchSettings,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        scan: Callable[[Sequence[Path]], ScanResult] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.on_change: Callable[[], None] = on_change or (lambda: None)
        self._clock = clock
        self._scan = scan or (lambda paths: scan_model_caches(paths, residency=no_residency))
        self._bucket = TokenBucket(settings.bandwidth) if settings.bandwidth else None
        self._chunk = CHUNK_BYTES
        if settings.bandwidth:
            # Small chunks under a low rate, so progress and cancellation stay responsive.
            self._chunk = int(max(MIN_CHUNK_BYTES, min(CHUNK_BYTES, settings.bandwidth / 10)))
        self._lock = threading.RLock()
        self._progress: dict[Key, _Progress] = {}
        self._jobs: dict[Key, _Job] = {}
        self._reserved: dict[Key, int] = {}
        self._desired: dict[Key, WarmingRequest] = {}
        self._in_use: frozenset[str] = frozenset()
        self._last_used: dict[Key, dt.datetime] = {}
        self._stopped = False

    @property
    def cache_dir(self) -> Path:
        return self.settings.cache_dir

    @property
    def staging(self) -> Path:
        return self.settings.cache_dir / STAGING_DIR

    # -- what the agent calls -------------------------------------------------------------

    def update(self, spec: WarmingSpec, status: InventoryStatus | None) -> None:
        """Take the node's current wishes (``spec``) and inventory (``status``: models in use,
        their lastUsed); cancel withdrawn copies, evict down to the budget, start copies."""
        for problem in spec.problems:
            log.warning("spec.warming: %s", problem)
        with self._lock:
            if self._stopped:
                return
            now = self._clock()
            self._in_use = in_use_models(status)
            self._last_used = {
                m.key: m.last_used for m in (status.models if status else ()) if m.last_used
            }
            self._desired = {r.key: r for r in spec.models}
            for key in list(self._progress):
                if key in self._desired:
                    continue
                job = self._jobs.get(key)
                if job is not None:
                    job.withdrawn = True
                    job.cancel.set()
                gone = self._progress[key]
                expired = (now - gone.updated_at).total_seconds() > self.settings.evicted_keep_s
                if gone.state != "evicted" or expired:
                    del self._progress[key]
            for key, request in self._desired.items():
                if key in self._jobs:
                    continue
                progress = self._progress.get(key)
                if progress is None or progress.request != request:
                    self._set(key, request, "queued", bytes_total=request.size_bytes)
                elif progress.state == "done":
                    if progress.snapshot is not None and not progress.snapshot.is_dir():
                        self._set(key, request, "queued", message="the cached copy is gone")
                elif progress.state == "failed":
                    if progress.retry_at is None or now >= progress.retry_at:
                        self._set(key, request, "queued", message=f"retry: {progress.message}")
                elif progress.state == "evicted":
                    self._set(key, request, "queued", message=progress.message)
            self._clean_staging()
            self._enforce_budget()
            self._start_jobs()

    def progress(self) -> tuple[WarmingProgress, ...]:
        """Progress to publish: wanted models first, then recent evictions (at most 64)."""
        with self._lock:
            wanted = [p for k, p in self._progress.items() if k in self._desired]
            others = sorted(
                (p for k, p in self._progress.items() if k not in self._desired),
                key=lambda p: p.updated_at,
                reverse=True,
            )
            chosen = (wanted + others)[:MAX_WARMING_MODELS]
            return tuple(p.public() for p in chosen)

    def busy(self) -> bool:
        """Whether a copy runs or waits for a slot."""
        with self._lock:
            return bool(self._jobs) or any(
                p.state == "queued" for k, p in self._progress.items() if k in self._desired
            )

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.busy():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel the copies (their staging stays, to be resumed by the next agent)."""
        with self._lock:
            self._stopped = True
            jobs = list(self._jobs.values())
            for job in jobs:
                job.cancel.set()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout_s)

    # -- bookkeeping ------------------------------------------------------------------------

    def _set(self, key: Key, request: WarmingRequest, state: str, **fields: Any) -> _Progress:
        now = self._clock()
        with self._lock:
            old = self._progress.get(key)
            progress = _Progress(
                name=request.name,
                revision=request.revision,
                state=state,
                updated_at=now,
                request=request,
                bytes_done=fields.pop("bytes_done", 0),
                bytes_total=fields.pop("bytes_total", old.bytes_total if old else None),
                message=fields.pop("message", ""),
                started_at=fields.pop("started_at", old.started_at if old else None),
                snapshot=fields.pop("snapshot", None),
                retry_at=fields.pop("retry_at", None),
            )
            assert not fields, fields
            changed = old is None or old.state != state
            self._progress[key] = progress
        if changed:
            log.info(
                "warming %s%s: %s %s", request.name, _at(request.revision), state, progress.message
            )
            self.on_change()
        return progress

    def _add_bytes(self, key: Key, amount: int) -> None:
        with self._lock:
            progress = self._progress.get(key)
            if progress is not None and progress.state == "copying":
                progress.bytes_done += amount
                progress.updated_at = self._clock()

    def _start_jobs(self) -> None:
        with self._lock:
            if self._stopped:
                return
            queued = [
                (key, request)
                for key, request in self._desired.items()
                if key not in self._jobs and self._progress[key].state == "queued"
            ]
            queued.sort(key=lambda item: (item[1].requested_at or _EPOCH, item[1].name.lower()))
            for key, request in queued:
                if len(self._jobs) >= self.settings.max_concurrent:
                    break
                job = _Job(key, request)
                job.thread = threading.Thread(
                    target=self._run, args=(job,), name=f"warm-{request.name}", daemon=True
                )
                self._jobs[key] = job
                job.thread.start()

    # -- one copy ---------------------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        request, key = job.request, job.key
        workdir = self.staging / _job_dir(key)
        try:
            self._fetch(job, workdir)
        except _CancelledError:
            if job.withdrawn:
                _remove(workdir)
                log.info("warming %s: withdrawn; its staging removed", request.name)
        except (SourceError, FetchError) as exc:
            self._fail(job, str(exc), workdir)
        except OSError as exc:
            self._fail(job, f"copy failed: {exc.strerror or exc} ({exc.filename or ''})", workdir)
        except Exception as exc:  # a bug must not kill the agent's fetcher for good
            log.exception("warming %s failed", request.name)
            self._fail(job, f"internal error: {exc}", workdir)
        finally:
            with self._lock:
                self._jobs.pop(key, None)
                self._reserved.pop(key, None)
                self._start_jobs()
            self.on_change()

    def _fail(self, job: _Job, message: str, workdir: Path) -> None:
        if job.withdrawn:
            _remove(workdir)
            return
        retry = self._clock() + dt.timedelta(seconds=self.settings.retry_after_s)
        with self._lock:
            progress = self._progress.get(job.key)
            done = progress.bytes_done if progress else 0
        self._set(job.key, job.request, "failed", message=message, retry_at=retry, bytes_done=done)

    def _fetch(self, job: _Job, workdir: Path) -> None:
        request = job.request
        try:
            model = self.source.resolve(request.name, request.revision)
        except SourceError as exc:
            cached = self._cached_snapshot(request)
            if cached is None:
                raise
            self._set(
                job.key,
                request,
                "done",
                snapshot=cached,
                message=f"source unreadable ({exc}); the cached copy stays",
            )
            return
        repo = self.cache_dir / hub_folder_name(request.name)
        snapshot = repo / "snapshots" / model.commit
        total = model.total_bytes
        if _complete(snapshot, model):
            self._write_ref(repo, model, workdir)
            _remove(workdir)
            self._set(
                job.key,
                request,
                "done",
                snapshot=snapshot,
                bytes_done=total,
                bytes_total=total,
                message=f"already cached (snapshot {model.commit})",
            )
            return
        needed = sum(f.size for f in model.files if not _blob_present(repo, f))
        self._set(
            job.key,
            request,
            "copying",
            bytes_total=total,
            started_at=self._clock(),
            message=f"from {self.source.describe()}",
        )
        self._reserve(job.key, request, needed)
        staged = self._stage(job, model, repo, workdir)
        if job.cancel.is_set():
            raise _CancelledError
        final = self._install(job.key, model, repo, staged, workdir)
        self._set(
            job.key,
            request,
            "done",
            snapshot=final,
            bytes_done=total,
            bytes_total=total,
            message=f"copied {total} bytes from {self.source.describe()} "
            f"({model.layout} layout, snapshot {model.commit})",
        )

    def _cached_snapshot(self, request: WarmingRequest) -> Path | None:
        repo = self.cache_dir / hub_folder_name(request.name)
        revision = request.revision or "main"
        try:
            commit = (repo / "refs" / revision).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            commit = revision
        snapshot = repo / "snapshots" / commit
        return snapshot if commit and "/" not in commit and snapshot.is_dir() else None

    def _stage(self, job: _Job, model: SourceModel, repo: Path, workdir: Path) -> list[Path | None]:
        """Copy every file not already in the cache into ``workdir``; per file its staged
        path (None: the blob is already in ``blobs/``)."""
        manifest = {
            "name": model.name,
            "revision": job.request.revision,
            "commit": model.commit,
            "ref": model.ref,
            "files": [
                [f.path, f.size, f.blob, list(f.digest) if f.digest else None] for f in model.files
            ],
        }
        data = workdir / "data"
        if workdir.is_dir():
            try:
                old = json.loads((workdir / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old != manifest:
                log.info("warming %s: staged files are for another revision; discarded", model.name)
                _remove(workdir)
        data.mkdir(parents=True, exist_ok=True)
        _write_atomic(workdir / MANIFEST, json.dumps(manifest).encode(), workdir)
        present = {entry.name: Path(entry.path) for entry in os.scandir(data)}
        staged: list[Path | None] = []
        for index, file in enumerate(model.files):
            if job.cancel.is_set():
                raise _CancelledError
            if _blob_present(repo, file):
                staged.append(None)
                self._add_bytes(job.key, file.size)
                continue
            whole = [p for n, p in present.items() if n.startswith(f"{index}-")]
            kept = next((p for p in whole if _size(p) == file.size), None)
            for other in whole:
                if other != kept:
                    other.unlink(missing_ok=True)
            if kept is not None:
                staged.append(kept)  # whole and verified before a restart
                self._add_bytes(job.key, file.size)
                continue
            part = data / f"{index}.part"
            digest = self._copy(job, file, part)
            final = data / f"{index}-{digest}"
            os.replace(part, final)
            staged.append(final)
        return staged

    def _copy(self, job: _Job, file: SourceFile, part: Path) -> str:
        """Copy ``file`` into ``part`` (continuing a partial one), verify it; its sha256."""
        sha256 = hashlib.sha256()
        git: Any = None
        if file.digest is not None and file.digest[0] == "git-sha1":
            git = hashlib.sha1(f"blob {file.size}\0".encode(), usedforsecurity=False)
        offset = _size(part) if part.exists() else 0
        if offset > file.size:
            part.unlink()
            offset = 0
        if offset:
            # Resume: the bytes already there count towards the hash (read back locally,
            # outside the bandwidth limit, which is for the source).
            with open(part, "rb") as done:
                while chunk := done.read(CHUNK_BYTES):
                    sha256.update(chunk)
                    if git is not None:
                        git.update(chunk)
            self._add_bytes(job.key, offset)
        remaining = file.size - offset
        with self.source.open(file, offset) as source, open(part, "ab") as target:
            while remaining > 0:
                if job.cancel.is_set():
                    raise _CancelledError
                amount = min(self._chunk, remaining)
                if self._bucket is not None:
                    self._bucket.take(amount, job.cancel)
                    if job.cancel.is_set():
                        raise _CancelledError
                chunk = source.read(amount)
                if not chunk:
                    raise FetchError(
                        f"{file.path}: the source file ended at {file.size - remaining} bytes, "
                        f"listed as {file.size}"
                    )
                sha256.update(chunk)
                if git is not None:
                    git.update(chunk)
                target.write(chunk)
                remaining -= len(chunk)
                self._add_bytes(job.key, len(chunk))
            if source.read(1):
                raise FetchError(f"{file.path}: the source file grew during the copy")
            target.flush()
            os.fsync(target.fileno())
        got = sha256.hexdigest()
        if file.digest is not None:
            algorithm, expected = file.digest
            actual = got if algorithm == "sha256" else git.hexdigest()
            if actual != expected:
                part.unlink(missing_ok=True)
                raise FetchError(
                    f"checksum mismatch for {file.path}: the source names it {algorithm} "
                    f"{expected}, the copy hashes to {actual}"
                )
        return got

    def _install(
        self,
        key: Key,
        model: SourceModel,
        repo: Path,
        staged: list[Path | None],
        workdir: Path,
    ) -> Path:
        blobs, snapshots = repo / "blobs", repo / "snapshots"
        blobs.mkdir(parents=True, exist_ok=True)
        snapshots.mkdir(parents=True, exist_ok=True)
        final = snapshots / model.commit
        building = workdir / "snapshot"
        _remove(building)
        building.mkdir()
        for file, path in zip(model.files, staged, strict=True):
            blob = file.blob
            if path is not None:
                blob = blob or path.name.split("-", 1)[1]
                target = blobs / blob
                if target.is_file() and _size(target) == file.size:
                    path.unlink()
                else:
                    os.replace(path, target)
            assert blob is not None  # a file skipped as present has a hub blob name
            link = building / file.path
            link.parent.mkdir(parents=True, exist_ok=True)
            # Relative to where the link will live (snapshots/<commit>/...), as the hub does.
            os.symlink(os.path.relpath(blobs / blob, (final / file.path).parent), link)
        if final.exists():
            # Replaced whole (an unfinished copy left by another downloader): moved aside first,
            # so the snapshot never lists a mix of the two.
            os.replace(final, workdir / "replaced")
        with self._lock:
            os.rename(building, final)
            # From here the scan counts the copy: its reservation ends in the same step, or a
            # budget check in between would count it twice and evict a model for nothing.
            self._reserved.pop(key, None)
        self._write_ref(repo, model, workdir)
        _remove(workdir)
        return final

    def _write_ref(self, repo: Path, model: SourceModel, workdir: Path) -> None:
        if model.ref is None:
            return
        refs = repo / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        _write_atomic(refs / model.ref, model.commit.encode(), workdir)

    # -- room -------------------------------------------------------------------------------

    def _cached(self) -> list[_Cached]:
        """The finished models of the cache folder, with the snapshot folder the fetcher may
        evict (hub layout, directly in the cache folder)."""
        scan = self._scan([self.cache_dir])
        out: list[_Cached] = []
        for entry in scan.models:
            path: Path | None = None
            if entry.revision is not None:
                candidate = (
                    self.cache_dir / hub_folder_name(entry.name) / "snapshots" / entry.revision
                )
                if candidate.is_dir():
                    path = candidate
            out.append(_Cached(entry, path))
        return out

    def _lru(self, cached: _Cached) -> dt.datetime:
        scanned = cached.entry.last_used or _EPOCH
        learned = self._last_used.get(cached.entry.key) or _EPOCH
        return max(scanned, learned)

    def _reserve(self, key: Key, request: WarmingRequest, needed: int) -> None:
        """Make room for ``needed`` bytes (evicting within the rules) and reserve them."""
        with self._lock:
            budget = self.settings.budget_bytes
            if budget is None:
                free = shutil.disk_usage(self.cache_dir).free
                if needed > free:
                    raise FetchError(f"needs {needed} bytes; {free} free on the cache's filesystem")
                self._reserved[key] = needed
                return
            if needed > budget:
                raise FetchError(f"model is {needed} bytes, more than the budget {budget}")
            cached = self._cached()
            others = sum(v for k, v in self._reserved.items() if k != key)
            used = sum(c.size for c in cached) + others
            desired = {k[0] for k in self._desired}
            evictable = sorted(
                (
                    c
                    for c in cached
                    if c.path is not None
                    and c.entry.name.lower() not in self._in_use
                    and c.entry.name.lower() not in desired
                ),
                key=self._lru,
            )
            room = budget - used + sum(c.size for c in evictable)
            if needed > room:
                in_use = sum(c.size for c in cached if c.entry.name.lower() in self._in_use)
                wanted = sum(
                    c.size
                    for c in cached
                    if c.entry.name.lower() in desired and c.entry.name.lower() not in self._in_use
                )
                raise FetchError(
                    f"budget {budget} bytes too small: needs {needed}, the cache holds "
                    f"{used} ({in_use} in use, {wanted} asked for, {others} being copied), "
                    f"{room if room > 0 else 0} could be freed or is free"
                )
            for victim in evictable:
                if used + needed <= budget:
                    break
                self._evict(victim, f"to make room for {request.name}")
                used -= victim.size
            self._reserved[key] = needed

    def _enforce_budget(self) -> None:
        budget = self.settings.budget_bytes
        # Only while warming is asked for: with nothing asked (no controller planning, or it
        # withdrew), nothing may be marked in use either, and the cache is left as it is.
        if budget is None or not self._desired:
            return
        cached = self._cached()
        used = sum(c.size for c in cached) + sum(self._reserved.values())
        if used <= budget:
            return
        desired = {k[0] for k in self._desired}
        allowed = [
            c for c in cached if c.path is not None and c.entry.name.lower() not in self._in_use
        ]
        # Models not asked for go first; asked-for ones only because the budget forces it.
        order = sorted(allowed, key=lambda c: (c.entry.name.lower() in desired, self._lru(c)))
        for victim in order:
            if used <= budget:
                break
            self._evict(victim, f"the cache was over its budget of {budget} bytes")
            used -= victim.size
        if used > budget:
            log.warning(
                "warming: the cache holds %d bytes, over the budget of %d, and nothing more "
                "may be evicted (models in use, plain folders)",
                used,
                budget,
            )

    def _evict(self, victim: _Cached, why: str) -> None:
        """Remove one snapshot: renamed out of the scan's sight first, then deleted with its
        refs and the blobs no other snapshot links to."""
        assert victim.path is not None
        snapshot = victim.path
        repo = snapshot.parent.parent
        commit = snapshot.name
        blobs = _linked_blobs(snapshot)
        self.staging.mkdir(parents=True, exist_ok=True)
        trash = self.staging / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
        os.replace(snapshot, trash)
        for ref in _files(repo / "refs"):
            try:
                if ref.read_text(encoding="utf-8").strip() == commit:
                    ref.unlink()
            except (OSError, UnicodeDecodeError):
                continue
        still = set().union(*(_linked_blobs(s) for s in _dirs(repo / "snapshots")))
        for blob in blobs - still:
            (repo / "blobs" / blob).unlink(missing_ok=True)
        _remove(trash)
        if not _dirs(repo / "snapshots") and not any(
            p.name.endswith(".incomplete") for p in _files(repo / "blobs")
        ):
            _remove(repo)
        entry = victim.entry
        used = entry.last_used.isoformat() if entry.last_used else "unknown"
        message = f"evicted (least recently used: {used}) {why}"
        log.info("warming: %s@%s %s", entry.name, commit, message)
        now = self._clock()
        with self._lock:
            matched = False
            for key, progress in self._progress.items():
                # The wanted entry this snapshot served (or may serve): shown as evicted, so
                # that the status names the model once.
                same = progress.snapshot == snapshot or (
                    progress.snapshot is None
                    and progress.name.lower() == entry.name.lower()
                    and progress.revision in (None, commit)
                    and progress.state != "copying"
                )
                if same and progress.request is not None:
                    self._progress[key] = _Progress(
                        progress.name,
                        progress.revision,
                        "evicted",
                        now,
                        message=message,
                        request=progress.request,
                        bytes_total=progress.bytes_total,
                    )
                    matched = True
            if not matched:
                self._progress[(entry.name.lower(), commit)] = _Progress(
                    entry.name,
                    commit,
                    "evicted",
                    now,
                    message=message,
                    bytes_total=entry.size_bytes,
                )
        self.on_change()

    def _clean_staging(self) -> None:
        """Remove staging folders of models no longer asked for (and leftover trash)."""
        if not self.staging.is_dir():
            return
        keep = {_job_dir(k) for k in self._desired} | {_job_dir(k) for k in self._jobs}
        for entry in os.scandir(self.staging):
            if entry.name not in keep:
                log.info("warming: removing stale staging %s", entry.path)
                _remove(Path(entry.path))


def _job_dir(key: Key) -> str:
    text = f"{key[0]}\0{key[1] or ''}".encode()
    return hashlib.sha1(text, usedforsecurity=False).hexdigest()[:24]


def _at(revision: str | None) -> str:
    return f"@{revision}" if revision else ""


def _complete(snapshot: Path, model: SourceModel) -> bool:
    """Whether ``snapshot`` already holds every file of ``model`` at its size."""
    if not snapshot.is_dir():
        return False
    for file in model.files:
        try:
            if (snapshot / file.path).stat().st_size != file.size:
                return False
        except OSError:
            return False
    return True


def _blob_present(repo: Path, file: SourceFile) -> bool:
    if file.blob is None:
        return False
    blob = repo / "blobs" / file.blob
    return blob.is_file() and _size(blob) == file.size


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _linked_blobs(snapshot: Path) -> set[str]:
    out: set[str] = set()
    for current, _subdirs, names in os.walk(snapshot):
        for name in names:  # links to blobs are files to os.walk
            path = os.path.join(current, name)
            if os.path.islink(path):
                out.add(os.path.basename(os.readlink(path)))
    return out


def _files(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _dirs(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _write_atomic(target: Path, data: bytes, scratch: Path) -> None:
    temp = scratch / f".{target.name}.{uuid.uuid4().hex}.tmp"
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, target)
