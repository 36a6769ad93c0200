"""Model cache scanning on real folders: HF hub layout, plain folders, unfinished downloads."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import mmap
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from scheduler.agent.cache_scan import (
    MincoreProbe,
    ScanResult,
    no_residency,
    scan_model_caches,
)

NOW = dt.datetime(2026, 11, 28, 8, 0, tzinfo=dt.UTC)
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def make_repo(
    root: Path,
    name: str,
    snapshots: Mapping[str, Mapping[str, bytes | None]],
    refs: Mapping[str, str] | None = None,
    incomplete: tuple[str, ...] = (),
) -> Path:
    """A hub cache repo: blobs named by content hash, snapshot files linked to them.

    A file whose content is None is a dangling link (its blob is missing).
    """
    repo = root / ("models--" + name.replace("/", "--"))
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for commit, files in snapshots.items():
        for relative, content in files.items():
            digest = hashlib.sha256((content or relative.encode()) + b"?").hexdigest()
            if content is not None:
                (blobs / digest).write_bytes(content)
            link = repo / "snapshots" / commit / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            depth = relative.count("/")
            link.symlink_to(Path("../" * (depth + 2)) / "blobs" / digest)
    (repo / "refs").mkdir(exist_ok=True)
    for ref, commit in (refs or {}).items():
        (repo / "refs" / ref).write_text(commit)
    for blob in incomplete:
        (blobs / f"{blob}.incomplete").write_bytes(b"partial")
    return repo


def scan(*paths: Path, fraction: float | None = 0.0) -> ScanResult:
    return scan_model_caches(list(paths), residency=lambda path, size: fraction, now=NOW)


def by_key(result: ScanResult) -> dict[tuple[str, str | None], object]:
    return {(m.name, m.revision): m for m in result.models}


# -- hub layout ----------------------------------------------------------------------------------


def test_hub_repo_one_entry_per_snapshot_with_deduplicated_blob_sizes(tmp_path: Path) -> None:
    shared = b"w" * 1000
    make_repo(
        tmp_path,
        "meta-llama/Llama-3.1-8B-Instruct",
        {
            COMMIT_A: {"config.json": b"{}", "model.safetensors": shared},
            # Two names for one blob: counted once.
            COMMIT_B: {
                "config.json": b"{}",
                "model.safetensors": shared,
                "original/consolidated.pt": shared,
            },
        },
        refs={"main": COMMIT_B},
    )
    result = scan(tmp_path)
    assert result.problems == ()
    assert [(m.name, m.revision) for m in result.models] == [
        ("meta-llama/Llama-3.1-8B-Instruct", COMMIT_A),
        ("meta-llama/Llama-3.1-8B-Instruct", COMMIT_B),
    ]
    sizes = {m.revision: m.size_bytes for m in result.models}
    assert sizes == {COMMIT_A: 1002, COMMIT_B: 1002}
    assert all(m.tier == "local-disk" for m in result.models)


def test_last_used_is_newest_atime_or_mtime_capped_at_now(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path, "org/m", {COMMIT_A: {"config.json": b"{}", "model.safetensors": b"x" * 10}}
    )
    stamp = dt.datetime(2026, 10, 1, 12, 0, tzinfo=dt.UTC).timestamp()
    for blob in (repo / "blobs").iterdir():
        os.utime(blob, (stamp - 100, stamp))
    (entry,) = scan(tmp_path).models
    assert entry.last_used == dt.datetime(2026, 10, 1, 12, 0, tzinfo=dt.UTC)
    future = NOW.timestamp() + 86400
    for blob in (repo / "blobs").iterdir():
        os.utime(blob, (future, future))
    (entry,) = scan(tmp_path).models
    assert entry.last_used == NOW


@pytest.mark.parametrize(
    ("fraction", "tier"),
    [(1.0, "host-memory"), (0.9, "host-memory"), (0.89, "local-disk"), (None, "local-disk")],
)
def test_tier_follows_the_residency_probe(
    tmp_path: Path, fraction: float | None, tier: str
) -> None:
    make_repo(tmp_path, "org/m", {COMMIT_A: {"config.json": b"{}", "model.safetensors": b"x"}})
    (entry,) = scan(tmp_path, fraction=fraction).models
    assert entry.tier == tier


def test_residency_weighs_weight_files_by_size(tmp_path: Path) -> None:
    make_repo(
        tmp_path,
        "org/m",
        {
            COMMIT_A: {
                "config.json": b"{}",
                "a.safetensors": b"x" * 900,
                "b.safetensors": b"y" * 100,
            }
        },
    )
    probed: list[Path] = []

    def probe(path: Path, size: int) -> float:
        probed.append(path)
        return 1.0 if size == 900 else 0.0

    (entry,) = scan_model_caches([tmp_path], residency=probe, now=NOW).models
    assert entry.tier == "host-memory"  # 900 of 1000 weight bytes resident
    assert len(probed) == 2 and all(p.parent.name == "blobs" for p in probed)


def test_a_failing_probe_means_local_disk(tmp_path: Path) -> None:
    make_repo(tmp_path, "org/m", {COMMIT_A: {"config.json": b"{}", "model.gguf": b"x"}})

    def probe(path: Path, size: int) -> float:
        raise OSError("boom")

    (entry,) = scan_model_caches([tmp_path], residency=probe, now=NOW).models
    assert entry.tier == "local-disk"


def test_dangling_link_is_an_unfinished_download(tmp_path: Path) -> None:
    make_repo(
        tmp_path,
        "org/m",
        {
            COMMIT_A: {"config.json": b"{}", "model.safetensors": None},
            COMMIT_B: {"config.json": b"{}", "model.safetensors": b"ok"},
        },
    )
    result = scan(tmp_path)
    assert [m.revision for m in result.models] == [COMMIT_B]
    assert len(result.problems) == 1
    assert f"org/m@{COMMIT_A}" in result.problems[0]
    assert "dangling" in result.problems[0]


def test_link_to_an_incomplete_blob_is_unfinished(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "org/m", {COMMIT_A: {"config.json": b"{}"}})
    (repo / "blobs" / "abc.incomplete").write_bytes(b"half")
    (repo / "snapshots" / COMMIT_A / "model.safetensors").symlink_to(
        Path("../../blobs/abc.incomplete")
    )
    result = scan(tmp_path)
    assert result.models == ()
    assert "incomplete" in result.problems[0]


def test_incomplete_blobs_hide_a_revision_unless_an_index_shows_it_whole(tmp_path: Path) -> None:
    index = json.dumps(
        {
            "weight_map": {
                "a": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors",
            }
        }
    ).encode()
    make_repo(
        tmp_path,
        "org/whole",
        {
            COMMIT_A: {
                "config.json": b"{}",
                "model.safetensors.index.json": index,
                "model-00001-of-00002.safetensors": b"1",
                "model-00002-of-00002.safetensors": b"2",
            }
        },
        incomplete=("deadbeef",),
    )
    make_repo(
        tmp_path,
        "org/partial",
        {COMMIT_A: {"config.json": b"{}", "model-00001-of-00002.safetensors": b"1"}},
        incomplete=("cafe",),
    )
    result = scan(tmp_path)
    assert [m.name for m in result.models] == ["org/whole"]
    assert "org/partial" in result.problems[0] and "download in progress" in result.problems[0]


def test_index_naming_missing_shards_is_unfinished(tmp_path: Path) -> None:
    index = json.dumps(
        {
            "weight_map": {
                "a": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors",
            }
        }
    ).encode()
    make_repo(
        tmp_path,
        "org/m",
        {
            COMMIT_A: {
                "config.json": b"{}",
                "model.safetensors.index.json": index,
                "model-00001-of-00002.safetensors": b"1",
            }
        },
    )
    result = scan(tmp_path)
    assert result.models == ()
    assert "model-00002-of-00002.safetensors" in result.problems[0]


def test_snapshot_without_weights_is_unfinished(tmp_path: Path) -> None:
    make_repo(tmp_path, "org/m", {COMMIT_A: {"config.json": b"{}", "tokenizer.json": b"{}"}})
    result = scan(tmp_path)
    assert result.models == ()
    assert "no weight file" in result.problems[0]


def test_hf_home_root_reads_its_hub_folder_and_skips_datasets(tmp_path: Path) -> None:
    make_repo(
        tmp_path / "hub", "gpt2", {COMMIT_A: {"config.json": b"{}", "model.safetensors": b"x"}}
    )
    (tmp_path / "hub" / "datasets--org--data" / "snapshots" / COMMIT_A).mkdir(parents=True)
    result = scan(tmp_path)
    assert [(m.name, m.revision) for m in result.models] == [("gpt2", COMMIT_A)]
    assert result.problems == ()
    # Given the hub folder itself, and both: still one entry.
    assert len(scan(tmp_path / "hub", tmp_path).models) == 1


def test_download_with_no_snapshot_yet(tmp_path: Path) -> None:
    (tmp_path / "models--org--m" / "blobs").mkdir(parents=True)
    (tmp_path / "models--org--m" / "blobs" / "x.incomplete").write_bytes(b"1")
    result = scan(tmp_path)
    assert result.models == () and "no snapshot yet" in result.problems[0]


# -- plain folders -------------------------------------------------------------------------------


def write_model(folder: Path, name_or_path: object = None, weights: int = 100) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {"model_type": "llama"}
    if name_or_path is not None:
        config["_name_or_path"] = name_or_path
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"w" * weights)


def test_plain_folders_up_to_depth_three(tmp_path: Path) -> None:
    write_model(tmp_path / "llama", "meta-llama/Llama-3.1-8B-Instruct")
    (tmp_path / "llama" / "original").mkdir()
    (tmp_path / "llama" / "original" / "params.json").write_bytes(b"p" * 7)
    write_model(tmp_path / "a" / "b" / "qwen", "/tmp/tmpx8s/checkpoint")  # a path: not an id
    write_model(tmp_path / "a" / "b" / "c" / "too-deep", "org/too-deep")
    result = scan(tmp_path)
    entries = by_key(result)
    llama = entries[("meta-llama/Llama-3.1-8B-Instruct", None)]
    config_size = (tmp_path / "llama" / "config.json").stat().st_size
    assert getattr(llama, "size_bytes") == 100 + 7 + config_size  # noqa: B009
    assert ("a/b/qwen", None) in entries
    assert all(name != "org/too-deep" for name, _ in entries)
    assert result.problems == ()


def test_the_root_itself_can_be_a_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "Qwen2.5-7B-Instruct"
    write_model(folder)
    (entry,) = scan(folder).models
    assert entry.name == "Qwen2.5-7B-Instruct" and entry.revision is None


def test_plain_folder_unfinished_downloads(tmp_path: Path) -> None:
    write_model(tmp_path / "local-dir")
    partial = tmp_path / "local-dir" / ".cache" / "huggingface" / "download"
    partial.mkdir(parents=True)
    (partial / "model-00002.safetensors.incomplete").write_bytes(b"1")
    write_model(tmp_path / "inline")
    (tmp_path / "inline" / "model-2.safetensors.incomplete").write_bytes(b"1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    result = scan(tmp_path)
    assert result.models == ()
    assert len(result.problems) == 3
    assert any("no weight file" in p for p in result.problems)


def test_same_model_in_two_folders_is_reported_once(tmp_path: Path) -> None:
    write_model(tmp_path / "one", "org/same")
    write_model(tmp_path / "two", "org/same")
    assert len(scan(tmp_path).models) == 1


def test_unreadable_config_names_the_model_after_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mystery"
    write_model(folder)
    (folder / "config.json").write_text("{not json")
    result = scan(tmp_path)
    assert [m.name for m in result.models] == ["mystery"]
    assert "config.json" in result.problems[0]


# -- unreadable things ---------------------------------------------------------------------------


def test_missing_root_and_file_root_are_problems(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = scan(tmp_path / "nope", tmp_path / "file")
    assert result.models == ()
    assert len(result.problems) == 2


def test_link_loop_is_a_problem_and_the_scan_goes_on(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    write_model(tmp_path / "fine", "org/fine")
    repo = make_repo(tmp_path, "org/m", {COMMIT_A: {"config.json": b"{}", "model.bin": b"x"}})
    bad = repo / "snapshots" / COMMIT_A / "extra.safetensors"
    bad.symlink_to(bad)
    result = scan(tmp_path)
    assert [m.name for m in result.models] == ["org/fine"]
    assert any("org/m@" in p for p in result.problems)


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root reads through permissions"
)
def test_permission_denied_folder_is_a_problem(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    write_model(locked / "inside", "org/hidden")
    write_model(tmp_path / "open", "org/open")
    locked.chmod(0)
    try:
        result = scan(tmp_path)
    finally:
        locked.chmod(0o755)
    assert [m.name for m in result.models] == ["org/open"]
    assert any("locked" in p for p in result.problems)


def test_half_written_index_is_unfinished_and_a_folder_blob_is_walked(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        "org/m",
        {COMMIT_A: {"config.json": b"{}", "model.bin": b"x", "model.bin.index.json": b'{"weig'}},
    )
    result = scan(tmp_path)
    assert result.models == ()
    assert "shard index model.bin.index.json unreadable" in result.problems[0]
    # A link to a folder is walked like a folder, not counted as a file.
    (repo / "snapshots" / COMMIT_A / "model.bin.index.json").unlink()
    (repo / "blobs" / "dir-blob").mkdir()
    (repo / "blobs" / "dir-blob" / "extra.txt").write_bytes(b"12345")
    (repo / "snapshots" / COMMIT_A / "sub").symlink_to(Path("../../blobs/dir-blob"))
    (entry,) = scan(tmp_path).models
    assert entry.size_bytes == 2 + 1 + 5


# -- the real mincore probe ----------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore is Linux-only here")
def test_mincore_probe_on_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(3 * mmap.PAGESIZE + 17))
    probe = MincoreProbe()
    if not probe.available:
        pytest.skip("libc without mincore")
    fraction = probe(path, path.stat().st_size)
    assert fraction is not None and 0.0 <= fraction <= 1.0
    assert probe(tmp_path / "missing", 10) is None
    assert probe(path, 0) is None


def test_mincore_probe_samples_windows_of_large_files() -> None:
    page = mmap.PAGESIZE
    probe = MincoreProbe(sample_bytes=16 * page, windows=4)
    assert probe.ranges(10 * page) == [(0, 10 * page)]
    size = 1000 * page + 5
    ranges = probe.ranges(size)
    assert len(ranges) == 4
    assert sum(length for _, length in ranges) <= 16 * page
    assert ranges[0][0] == 0
    assert all(offset % page == 0 and offset + length <= size for offset, length in ranges)
    assert ranges[-1][0] > 990 * page  # reaches the end of the file


def test_no_residency_probe_reports_local_disk(tmp_path: Path) -> None:
    write_model(tmp_path / "m", "org/m")
    (entry,) = scan_model_caches([tmp_path], residency=no_residency, now=NOW).models
    assert entry.tier == "local-disk"


def test_default_probe_runs(tmp_path: Path) -> None:
    write_model(tmp_path / "m", "org/m", weights=2 * mmap.PAGESIZE)
    (entry,) = scan_model_caches([tmp_path]).models
    assert entry.tier in ("local-disk", "host-memory")
