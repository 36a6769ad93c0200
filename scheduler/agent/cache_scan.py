"""Find the models in a node's model cache folders, and whether their weights sit in page cache.

Two layouts are read under every configured root:

* **Hugging Face hub cache** (``huggingface_hub``'s layout, e.g. ``~/.cache/huggingface/hub``):
  ``<root>/models--<org>--<name>/{blobs,refs,snapshots/<commit>/...}``. Each snapshot folder is
  one revision; its files are symlinks into ``blobs/``. One entry per snapshot: name
  ``org/name``, revision = the commit (the snapshot folder's name, which is what
  ``refs/main`` and other refs contain), size = the blob files its links reach, each blob
  counted once. Given the HF_HOME root instead, its ``hub/`` folder is read too.
* **Plain folders** (``save_pretrained`` output, ``huggingface-cli download --local-dir``,
  copied checkpoints): any folder up to :data:`PLAIN_MAX_DEPTH` levels below the root that
  holds a ``config.json`` and a weight file is one entry: name = ``_name_or_path`` from its
  ``config.json`` when that is a hub id (``org/name``), else the folder's path relative to the
  root; revision unknown (None); size = all its files. Its subfolders belong to it.

Unfinished downloads are skipped with a ``problems`` line: a snapshot or folder with a
dangling link, a link to or a file named ``*.incomplete``, no weight file
(:data:`WEIGHT_SUFFIXES`), or a shard index (``*.index.json``) naming shards that are not
there. ``huggingface_hub`` writes a file as ``blobs/<hash>.incomplete`` and links it into the
snapshot only when it is complete, so a repo with ``*.incomplete`` blobs is mid-download into
*some* revision; a snapshot of such a repo counts as whole only when a shard index shows all
its shards present (else it may be the one still arriving).

``lastUsed`` is the newest access or modification time among the model's files (for the hub
layout, of the blobs). Most nodes mount with ``relatime``, where the access time moves at most
once a day, so this is a lower bound on the last load, good enough for eviction ordering.

Tier: ``host-memory`` when the residency probe finds at least :data:`HOST_MEMORY_FRACTION` of
the weight bytes in page cache, else ``local-disk``. :class:`MincoreProbe` asks the kernel with
``mmap`` + ``mincore(2)``: nothing is read, no page is faulted in; per file it looks at no more
than ``sample_bytes`` (default 64 MiB) spread over ``windows`` evenly spaced windows, so a
scan costs a few kilobytes of ``mincore`` vector per file whatever the model size.

Nothing raises for a bad file or folder: unreadable ones become ``problems`` lines (also
logged) and the scan goes on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import json
import logging
import mmap
import os
import re
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from scheduler.inventory.status import ModelEntry
from scheduler.inventory.status import now as utc_now

__all__ = [
    "HOST_MEMORY_FRACTION",
    "PLAIN_MAX_DEPTH",
    "WEIGHT_SUFFIXES",
    "MincoreProbe",
    "ResidencyProbe",
    "ScanResult",
    "no_residency",
    "scan_model_caches",
]

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
HOST_MEMORY_FRACTION = 0.9
PLAIN_MAX_DEPTH = 3
INCOMPLETE_SUFFIX = ".incomplete"
_HUB_PREFIX = "models--"
_OTHER_HUB_PREFIXES = ("datasets--", "spaces--")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_MIB = 1024 * 1024


class ResidencyProbe(Protocol):
    """Fraction (0..1) of a file's bytes in the page cache, or None when it cannot tell."""

    def __call__(self, path: Path, size: int) -> float | None: ...


def no_residency(path: Path, size: int) -> float | None:
    """A probe that never knows (every model is reported ``local-disk``)."""
    return None


@dataclass(frozen=True, slots=True)
class ScanResult:
    models: tuple[ModelEntry, ...]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _File:
    relative: str  # path inside the model (snapshot or folder), with "/"
    real: Path  # the file holding the bytes (a blob for the hub layout)
    size: int
    key: tuple[int, int]  # (st_dev, st_ino): the same bytes reached twice count once
    used: float  # max(atime, mtime)


@dataclass(slots=True)
class _Walk:
    files: list[_File] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)


def scan_model_caches(
    paths: Sequence[Path],
    *,
    residency: ResidencyProbe | None = None,
    now: dt.datetime | None = None,
) -> ScanResult:
    """Every finished model under ``paths`` (see the module doc), sorted by name and revision.

    ``residency`` defaults to a :class:`MincoreProbe`; pass :func:`no_residency` to skip it.
    ``now`` caps ``lastUsed`` (a file dated in the future, e.g. after a clock jump, reads as
    now).
    """
    scanner = _Scanner(
        residency if residency is not None else MincoreProbe(),
        now if now is not None else utc_now(),
    )
    for root in paths:
        scanner.scan_root(Path(root))
    models: dict[tuple[str, str | None], ModelEntry] = {}
    for entry in scanner.models:
        # The same model in two plain folders: report the better copy once.
        kept = models.get(entry.key)
        if kept is None or _better(entry, kept):
            models[entry.key] = entry
    ordered = sorted(models.values(), key=lambda m: (m.name.lower(), m.revision or ""))
    return ScanResult(tuple(ordered), tuple(scanner.problems))


def _better(new: ModelEntry, old: ModelEntry) -> bool:
    rank = {"gpu": 2, "host-memory": 1, "local-disk": 0}
    if rank[new.tier] != rank[old.tier]:
        return rank[new.tier] > rank[old.tier]
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return (new.last_used or epoch) > (old.last_used or epoch)


class _Scanner:
    def __init__(self, residency: ResidencyProbe, now: dt.datetime) -> None:
        self.residency = residency
        self.now = now
        self.models: list[ModelEntry] = []
        self.problems: list[str] = []
        self._seen_roots: set[tuple[int, int]] = set()

    def problem(self, text: str) -> None:
        log.warning("model cache: %s", text)
        self.problems.append(text)

    # -- roots -------------------------------------------------------------------------------

    def scan_root(self, root: Path) -> None:
        try:
            info = root.stat()
        except OSError as exc:
            self.problem(f"{root}: cannot read the model cache folder: {_reason(exc)}")
            return
        if not stat.S_ISDIR(info.st_mode):
            self.problem(f"{root}: not a folder")
            return
        key = (info.st_dev, info.st_ino)
        if key in self._seen_roots:
            return
        self._seen_roots.add(key)
        hub = root / "hub"
        if _is_dir(hub):
            self.scan_root(hub)
        self.scan_folder(root, root, depth=0)

    def scan_folder(self, root: Path, folder: Path, depth: int) -> None:
        entries = self._list(folder)
        if entries is None:
            return
        # A folder with a config.json is a model (unfinished if it has no weights yet);
        # whatever is below it belongs to it.
        if any(entry.name == "config.json" and _entry_is_file(entry) for entry in entries):
            self.plain_model(root, folder)
            return
        for entry in sorted(entries, key=lambda e: e.name):
            if not _entry_is_dir(entry):
                continue
            if entry.name.startswith(_HUB_PREFIX):
                self.hub_repo(Path(entry.path))
            elif entry.name.startswith(_OTHER_HUB_PREFIXES) or entry.name.startswith("."):
                continue
            elif depth == 0 and entry.name == "hub":
                continue  # read by scan_root
            elif depth < PLAIN_MAX_DEPTH:
                self.scan_folder(root, Path(entry.path), depth + 1)

    def _list(self, folder: Path) -> list[os.DirEntry[str]] | None:
        try:
            with os.scandir(folder) as iterator:
                return list(iterator)
        except OSError as exc:
            self.problem(f"{folder}: cannot list: {_reason(exc)}")
            return None

    # -- Hugging Face hub layout ---------------------------------------------------------------

    def hub_repo(self, repo: Path) -> None:
        name = "/".join(repo.name[len(_HUB_PREFIX) :].split("--"))
        if not name:
            return
        incomplete: list[str] = []
        blobs = repo / "blobs"
        if _is_dir(blobs):
            listed = self._list(blobs)
            incomplete = [e.name for e in listed or () if e.name.endswith(INCOMPLETE_SUFFIX)]
        snapshots_dir = repo / "snapshots"
        if not _is_dir(snapshots_dir):
            if incomplete:
                self.problem(f"{name}: download in progress, no snapshot yet; skipped")
            return
        snapshots = self._list(snapshots_dir)
        for snapshot in sorted(snapshots or (), key=lambda e: e.name):
            if not _entry_is_dir(snapshot):
                continue
            self.hub_snapshot(name, Path(snapshot.path), snapshot.name, incomplete)

    def hub_snapshot(
        self, name: str, snapshot: Path, revision: str, incomplete_blobs: list[str]
    ) -> None:
        where = f"{name}@{revision}"
        walk = self._walk(snapshot, where)
        reasons = list(walk.unfinished)
        reasons.extend(_content_problems(walk.files))
        if not reasons and incomplete_blobs and not _index_covers_weights(walk.files):
            reasons.append(
                f"{len(incomplete_blobs)} *.incomplete blob(s) in the repo (download in "
                "progress) and no shard index showing this revision whole"
            )
        if reasons:
            self.problem(f"{where}: unfinished download, skipped: {'; '.join(reasons)}")
            return
        self.add(name, revision, walk.files)

    # -- plain folders ---------------------------------------------------------------------

    def plain_model(self, root: Path, folder: Path) -> None:
        relative = folder.relative_to(root).as_posix()
        fallback = relative if relative != "." else folder.name
        name = self._plain_name(folder) or fallback
        where = f"{name} ({folder})"
        walk = self._walk(folder, where, skip_hidden=True)
        reasons = list(walk.unfinished)
        reasons.extend(_content_problems(walk.files))
        # `huggingface-cli download --local-dir` keeps partial files under .cache/huggingface.
        partial = folder / ".cache" / "huggingface" / "download"
        if _is_dir(partial):
            pending = self._incomplete_under(partial)
            if pending:
                reasons.append(f"{pending} *.incomplete file(s) under {partial}")
        if reasons:
            self.problem(f"{where}: unfinished download, skipped: {'; '.join(reasons)}")
            return
        self.add(name, None, walk.files)

    def _plain_name(self, folder: Path) -> str | None:
        config = folder / "config.json"
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.problem(f"{config}: cannot read ({_reason(exc)}); named after its folder")
            return None
        value = data.get("_name_or_path") if isinstance(data, dict) else None
        if isinstance(value, str) and _HUB_ID.match(value) and value not in (".", ".."):
            return value
        return None

    def _incomplete_under(self, folder: Path) -> int:
        count = 0
        for _current, _dirs, files in os.walk(folder, onerror=lambda _exc: None):
            count += sum(1 for name in files if name.endswith(INCOMPLETE_SUFFIX))
        return count

    # -- files -------------------------------------------------------------------------------

    def _walk(self, top: Path, where: str, skip_hidden: bool = False) -> _Walk:
        """All files under ``top`` (links followed), with what makes the copy unfinished."""
        result = _Walk()
        visited: set[tuple[int, int]] = set()
        pending: list[tuple[Path, str]] = [(top, "")]
        while pending:
            folder, prefix = pending.pop()
            try:
                folder_info = folder.stat()
            except OSError as exc:
                self.problem(f"{where}: cannot read {folder}: {_reason(exc)}")
                continue
            folder_key = (folder_info.st_dev, folder_info.st_ino)
            if folder_key in visited:
                continue
            visited.add(folder_key)
            entries = self._list(folder)
            if entries is None:
                result.unfinished.append(f"{folder} unreadable")
                continue
            for entry in entries:
                relative = prefix + entry.name
                if skip_hidden and entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                if entry.name.endswith(INCOMPLETE_SUFFIX):
                    result.unfinished.append(f"{relative} is incomplete")
                    continue
                try:
                    info = path.stat()  # follows links
                except FileNotFoundError:
                    result.unfinished.append(f"{relative} is a dangling link")
                    continue
                except OSError as exc:
                    self.problem(f"{where}: cannot read {relative}: {_reason(exc)}")
                    result.unfinished.append(f"{relative} unreadable")
                    continue
                if stat.S_ISDIR(info.st_mode):
                    pending.append((path, relative + "/"))
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                real = path
                if entry.is_symlink():
                    try:
                        real = path.resolve(strict=True)
                    except (OSError, RuntimeError) as exc:
                        result.unfinished.append(f"{relative}: {_reason(exc)}")
                        continue
                    if real.name.endswith(INCOMPLETE_SUFFIX):
                        result.unfinished.append(f"{relative} points to an incomplete blob")
                        continue
                result.files.append(
                    _File(
                        relative=relative,
                        real=real,
                        size=info.st_size,
                        key=(info.st_dev, info.st_ino),
                        used=max(info.st_atime, info.st_mtime),
                    )
                )
        return result

    def add(self, name: str, revision: str | None, files: list[_File]) -> None:
        unique: dict[tuple[int, int], _File] = {}
        for item in files:
            unique.setdefault(item.key, item)
        size = sum(item.size for item in unique.values())
        newest = max((item.used for item in unique.values()), default=None)
        last_used = None
        if newest is not None:
            last_used = min(
                dt.datetime.fromtimestamp(newest, dt.UTC).replace(microsecond=0), self.now
            )
        weights = [item for item in unique.values() if _is_weight(item.relative)]
        tier = "host-memory" if self._resident(weights) else "local-disk"
        self.models.append(
            ModelEntry(
                name=name, tier=tier, revision=revision, size_bytes=size, last_used=last_used
            )
        )

    def _resident(self, weights: Iterable[_File]) -> bool:
        total = 0
        resident = 0.0
        for item in weights:
            if item.size <= 0:
                continue
            total += item.size
            try:
                fraction = self.residency(item.real, item.size)
            except Exception as exc:  # a probe must never stop the scan
                log.warning("residency probe failed on %s: %s", item.real, exc)
                fraction = None
            if fraction is not None:
                resident += min(max(fraction, 0.0), 1.0) * item.size
        return total > 0 and resident >= HOST_MEMORY_FRACTION * total


def _content_problems(files: list[_File]) -> list[str]:
    reasons: list[str] = []
    present = {f.relative for f in files}
    if not any(_is_weight(f.relative) for f in files):
        reasons.append(f"no weight file ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    for index in (f for f in files if f.relative.endswith(".index.json")):
        shards = _index_shards(index.real)
        if shards is None:
            reasons.append(f"shard index {index.relative} unreadable")
            continue
        base = index.relative.rpartition("/")[0]
        missing = sorted(
            shard for shard in shards if (f"{base}/{shard}" if base else shard) not in present
        )
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            reasons.append(f"{len(missing)} shard(s) of {index.relative} missing: {shown}")
    return reasons


def _is_weight(name: str) -> bool:
    return name.lower().endswith(WEIGHT_SUFFIXES)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _entry_is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _entry_is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _index_shards(path: Path) -> set[str] | None:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        return None
    return {str(value) for value in weight_map.values()}


def _index_covers_weights(files: list[_File]) -> bool:
    """True when a shard index lists every weight file of the copy (all present)."""
    indexes = [f for f in files if f.relative.endswith(".index.json")]
    if not indexes:
        return False
    present = {f.relative for f in files}
    for index in indexes:
        shards = _index_shards(index.real)
        if not shards:
            return False
        base = index.relative.rpartition("/")[0]
        if any((f"{base}/{s}" if base else s) not in present for s in shards):
            return False
    return True


# -- page cache residency ------------------------------------------------------------------------


class MincoreProbe:
    """Page cache residency through ``mmap`` + ``mincore(2)`` (Linux; None elsewhere).

    A file no larger than ``sample_bytes`` is checked whole; a larger one in ``windows``
    evenly spaced windows that add up to ``sample_bytes``. Mapping a file reads nothing, and
    ``mincore`` only reports, so the probe does not change what is cached.
    """

    def __init__(self, sample_bytes: int = 64 * _MIB, windows: int = 16) -> None:
        self.sample_bytes = max(sample_bytes, mmap.PAGESIZE)
        self.windows = max(windows, 1)
        self._libc = _libc_with_mincore()

    @property
    def available(self) -> bool:
        return self._libc is not None

    def __call__(self, path: Path, size: int) -> float | None:
        libc = self._libc
        if libc is None or size <= 0:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            resident = pages = 0
            for offset, length in self.ranges(size):
                found, total = _mincore_range(libc, fd, offset, length)
                resident += found
                pages += total
        except OSError as exc:
            log.debug("mincore on %s: %s", path, exc)
            return None
        finally:
            os.close(fd)
        return resident / pages if pages else None

    def ranges(self, size: int) -> list[tuple[int, int]]:
        """(offset, length) windows to check: page-aligned offsets, lengths within the file."""
        page = mmap.PAGESIZE
        if size <= self.sample_bytes:
            return [(0, size)]
        window = max(page, (self.sample_bytes // self.windows) // page * page)
        count = max(1, min(self.windows, self.sample_bytes // window))
        if count == 1:
            return [(0, window)]
        last_start = size - window
        out: list[tuple[int, int]] = []
        for number in range(count):
            offset = (last_start * number // (count - 1)) // page * page
            out.append((offset, min(window, size - offset)))
        return out


def _libc_with_mincore() -> Any:
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        mincore = libc.mincore
        mmap_fn = libc.mmap
        munmap = libc.munmap
    except (OSError, AttributeError):
        return None
    mmap_fn.restype = ctypes.c_void_p
    mmap_fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int64,
    ]
    munmap.restype = ctypes.c_int
    munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    mincore.restype = ctypes.c_int
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


_MAP_FAILED = ctypes.c_void_p(-1).value


def _mincore_range(libc: Any, fd: int, offset: int, length: int) -> tuple[int, int]:
    """(resident pages, pages) of one page-aligned range of an open file."""
    page = mmap.PAGESIZE
    pages = (length + page - 1) // page
    address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
    if address is None or address == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    try:
        vector = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(address), length, vector) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        resident = sum(1 for flag in bytes(vector) if flag & 1)
    finally:
        libc.munmap(ctypes.c_void_p(address), length)
    return resident, pages
