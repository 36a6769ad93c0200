"""Model folders on disk for the fetcher's tests: Hugging Face hub-layout repos as
huggingface_hub writes them, plain model folders, and weight bytes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from scheduler.agent.sources import hub_folder_name

MIB = 1024 * 1024
CONFIG = b'{"model_type": "llama", "hidden_size": 64}'


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def weights(size: int, seed: int = 1) -> bytes:
    """``size`` bytes of a pattern that differs per seed (same seed and size: same bytes)."""
    block = bytes((seed * 37 + i) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def hub_model(
    root: Path,
    name: str,
    files: Mapping[str, bytes],
    commit: str = "a" * 40,
    ref: str | None = "main",
    blob_names: Mapping[str, str] | None = None,
) -> Path:
    """A hub-layout repo as huggingface_hub writes it: LFS blobs named by sha256, small files by
    git's blob sha1, snapshot links relative into blobs/, refs/<ref> holding the commit."""
    repo = root / hub_folder_name(name)
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        blob = (blob_names or {}).get(path) or (
            sha256(data) if path.endswith(".safetensors") else git_sha1(data)
        )
        (repo / "blobs" / blob).write_bytes(data)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


def plain_model(root: Path, name: str, files: Mapping[str, bytes]) -> Path:
    folder = root.joinpath(*name.split("/"))
    folder.mkdir(parents=True)
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder
