"""Where the node agent's fetcher copies models from: a small source interface, and its first
implementation, a shared filesystem (an NFS or PVC mount).

A source answers one question, :meth:`ModelSource.resolve`: for a model id and an optional
revision, which files make that revision, how big each is, how to read it, and which checksum
the source vouches for. The fetcher (:mod:`scheduler.agent.fetch`) does the copying, staging,
verification and bookkeeping, so a later source (S3-compatible, the Hugging Face hub) only
has to list and open files.

:class:`FilesystemSource` reads two layouts under its root:

* **Hugging Face hub cache**: ``<root>/models--<org>--<name>/{blobs,refs,snapshots/<commit>}``
  (also under ``<root>/hub/``). Revision: a ref (``refs/<ref>`` holds the commit) or a commit
  (a ``snapshots/<commit>`` folder); none asked for means ``refs/main``, else the only
  snapshot (several snapshots and no ``refs/main`` is an error naming them, not a guess).
  Checksums come from the blob names ``huggingface_hub`` gives: a 64-hex name is the sha256 of
  the file (LFS files: the weights), a 40-hex name is git's blob id, the sha1 of
  ``b"blob <size>\\0" + content`` (small files); both are verified after the copy.
* **Plain model folder**: ``<root>/<org>/<name>/`` (or ``<root>/<name>/`` for a model id
  without an org) holding ``config.json``. It has no revisions and no checksums, so its
  revision is a **fingerprint**: the sha1 (40 hex, like a commit) of its sorted file list
  with each file's size and modification time in nanoseconds. Every node reading the same share
  computes the same fingerprint, and changing any file gives a new one. Asked for a revision,
  a plain folder answers only to ``main`` or its fingerprint. Only sizes are verified; the
  copy's sha256 names its blob.

Files whose name ends in ``.incomplete`` (a download in progress) or links that lead nowhere
make the revision unfinished: an error, never a partial model. Hidden entries of a plain
folder (``.cache/``, ``.git``) are not part of the model. Listing is bounded
(:data:`MAX_FILES`, :data:`MAX_DEPTH`).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from scheduler.agent.cache_scan import WEIGHT_SUFFIXES

__all__ = [
    "MAX_DEPTH",
    "MAX_FILES",
    "FilesystemSource",
    "ModelSource",
    "SourceError",
    "SourceFile",
    "SourceModel",
    "hub_folder_name",
    "valid_model_name",
    "valid_revision",
]

MAX_FILES = 10_000
MAX_DEPTH = 8
INCOMPLETE_SUFFIX = ".incomplete"
_HUB_PREFIX = "models--"
_NAME_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
_MODEL_NAME = re.compile(rf"^{_NAME_PART}(/{_NAME_PART})?$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


class SourceError(Exception):
    """The source cannot give this model: the message says why (shown in status.warming)."""


def valid_model_name(name: str) -> bool:
    """A hub id ``org/name`` or ``name`` that is safe as a path (no ``..``, no slashes more)."""
    return bool(_MODEL_NAME.match(name)) and ".." not in name


def valid_revision(revision: str) -> bool:
    """A ref name or commit that is one safe path component."""
    return bool(_REVISION.match(revision)) and ".." not in revision


def hub_folder_name(name: str) -> str:
    """``org/name`` -> ``models--org--name`` (huggingface_hub's folder name for a model repo)."""
    return _HUB_PREFIX + name.replace("/", "--")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of a model revision.

    ``path``: inside the snapshot, with ``/``. ``blob``: the hub blob name to keep (None: the
    fetcher names the blob by the copy's sha256). ``digest``: ``("sha256", hex)`` or
    ``("git-sha1", hex)`` when the source vouches for the content, else None.
    """

    path: str
    size: int
    location: str
    blob: str | None = None
    digest: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class SourceModel:
    """A resolved model revision: ``commit`` names the snapshot folder in the cache, ``ref``
    the ref to point at it there (None for a revision asked for by commit)."""

    name: str
    commit: str
    ref: str | None
    files: tuple[SourceFile, ...]
    layout: str  # "hub" or "plain": for messages

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class ModelSource(Protocol):
    """What the fetcher needs from a source (filesystem today; S3, the hub later)."""

    def describe(self) -> str:
        """A short name for logs and messages (``filesystem /mnt/models``)."""
        ...

    def resolve(self, name: str, revision: str | None) -> SourceModel:
        """The files of ``name`` at ``revision``; raises :class:`SourceError` saying why not."""
        ...

    def open(self, file: SourceFile, offset: int) -> BinaryIO:
        """``file``'s bytes from ``offset`` on (the fetcher reads and closes it)."""
        ...


class FilesystemSource:
    """A shared filesystem path (NFS, PVC mount) holding hub caches and/or plain folders."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"filesystem {self.root}"

    def open(self, file: SourceFile, offset: int) -> BinaryIO:
        handle = open(file.location, "rb")  # noqa: SIM115 - the caller closes it
        if offset:
            handle.seek(offset)
        return handle

    def resolve(self, name: str, revision: str | None) -> SourceModel:
        if not valid_model_name(name):
            raise SourceError(f"model name {name[:80]!r} is not a hub id (org/name)")
        if revision is not None and not valid_revision(revision):
            raise SourceError(f"{name}: revision {revision[:80]!r} is not a ref or commit")
        for base in (self.root, self.root / "hub"):
            repo = base / hub_folder_name(name)
            if _is_dir(repo / "snapshots"):
                return self._hub(name, repo, revision)
        plain = self.root.joinpath(*name.split("/"))
        if (plain / "config.json").is_file():
            return self._plain(name, plain, revision)
        if not _is_dir(self.root):
            raise SourceError(f"source {self.root} is not a readable folder")
        raise SourceError(
            f"{name} not in source {self.root} (looked for {hub_folder_name(name)}/snapshots "
            f"and {'/'.join(name.split('/'))}/config.json)"
        )

    # -- hub layout ------------------------------------------------------------------------

    def _hub(self, name: str, repo: Path, revision: str | None) -> SourceModel:
        snapshots = repo / "snapshots"
        refs = repo / "refs"
        ref: str | None
        if revision is None:
            main = _read_ref(refs / "main")
            if main is not None:
                commit, ref = main, "main"
            else:
                found = sorted(p.name for p in _subdirs(snapshots))
                if len(found) != 1:
                    raise SourceError(
                        f"{name}: no refs/main in the source and {len(found)} snapshots "
                        f"({', '.join(found[:5]) or 'none'}); ask for a revision"
                    )
                commit, ref = found[0], None
        else:
            pointed = _read_ref(refs / revision)
            if pointed is not None:
                commit, ref = pointed, revision
            elif _is_dir(snapshots / revision):
                commit, ref = revision, None
            else:
                raise SourceError(
                    f"{name}: revision {revision} not in the source (no ref, no snapshot)"
                )
        if not valid_revision(commit):
            raise SourceError(f"{name}: the source's ref points at {commit[:80]!r}, not a commit")
        snapshot = snapshots / commit
        if not _is_dir(snapshot):
            raise SourceError(f"{name}: snapshot {commit} missing in the source")
        blobs = (repo / "blobs").resolve()
        files: list[SourceFile] = []
        for relative, path, info in _walk(snapshot, name, skip_hidden=False):
            real = path.resolve()
            blob: str | None = None
            digest: tuple[str, str] | None = None
            if real.parent == blobs:
                blob = real.name
                if _SHA256.match(blob):
                    digest = ("sha256", blob)
                elif _SHA1.match(blob):
                    digest = ("git-sha1", blob)
            files.append(SourceFile(relative, info.st_size, str(real), blob, digest))
        _check_weights(name, files)
        return SourceModel(name, commit, ref, tuple(files), "hub")

    # -- plain folders ---------------------------------------------------------------------

    def _plain(self, name: str, folder: Path, revision: str | None) -> SourceModel:
        listed = list(_walk(folder, name, skip_hidden=True))
        fingerprint = hashlib.sha1(b"kvsched plain folder v1\n", usedforsecurity=False)
        for relative, _path, info in sorted(listed, key=lambda item: item[0]):
            fingerprint.update(f"{relative}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
        commit = fingerprint.hexdigest()
        if revision not in (None, "main", commit):
            raise SourceError(
                f"{name}: the source is a plain folder ({folder}) without revisions; "
                f"revision {revision} is neither main nor its fingerprint {commit}"
            )
        files = [
            SourceFile(relative, info.st_size, str(path.resolve()))
            for relative, path, info in listed
        ]
        _check_weights(name, files)
        return SourceModel(
            name, commit, "main" if revision != commit else None, tuple(files), "plain"
        )


def _walk(top: Path, name: str, skip_hidden: bool) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative path, path, stat following links) of every file under ``top``, bounded."""
    count = 0
    pending: list[tuple[Path, str, int]] = [(top, "", 0)]
    while pending:
        folder, prefix, depth = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"{name}: cannot list {folder}: {exc.strerror or exc}") from None
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            relative = prefix + entry.name
            path = Path(entry.path)
            if entry.name.endswith(INCOMPLETE_SUFFIX):
                raise SourceError(f"{name}: {relative} is an unfinished download in the source")
            try:
                info = path.stat()
            except FileNotFoundError:
                raise SourceError(f"{name}: {relative} is a dangling link in the source") from None
            except OSError as exc:
                raise SourceError(
                    f"{name}: cannot read {relative}: {exc.strerror or exc}"
                ) from None
            if stat.S_ISDIR(info.st_mode):
                if depth + 1 > MAX_DEPTH:
                    raise SourceError(f"{name}: folders nested deeper than {MAX_DEPTH} levels")
                pending.append((path, relative + "/", depth + 1))
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if entry.is_symlink() and path.resolve().name.endswith(INCOMPLETE_SUFFIX):
                raise SourceError(f"{name}: {relative} points to an unfinished blob in the source")
            count += 1
            if count > MAX_FILES:
                raise SourceError(f"{name}: more than {MAX_FILES} files")
            yield relative, path, info


def _check_weights(name: str, files: list[SourceFile]) -> None:
    # The same rule as the cache scan (scheduler.agent.cache_scan): a copy without a weight
    # file would never be reported as cached, so it is refused up front.
    if not any(f.path.endswith(WEIGHT_SUFFIXES) for f in files):
        raise SourceError(f"{name}: no weight file ({', '.join(WEIGHT_SUFFIXES)}) in the source")


def _read_ref(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text[:200] or None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir()]
    except OSError:
        return []


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False
