"""The agent's fetcher (scheduler.agent.fetch) over real folders: hub-layout and plain sources,
checksums, resuming a killed copy, the bandwidth limit, LRU eviction within the budget."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest
from support.hub_cache import CONFIG, MIB, git_sha1, hub_model, plain_model, sha256, weights

from scheduler.agent.cache_scan import no_residency, scan_model_caches
from scheduler.agent.fetch import STAGING_DIR, Fetcher, FetchSettings, TokenBucket
from scheduler.agent.sources import (
    FilesystemSource,
    SourceError,
    SourceFile,
    SourceModel,
)
from scheduler.inventory.spec import WarmingRequest, WarmingSpec
from scheduler.inventory.status import InventoryStatus, ModelEntry, WarmingProgress


def spec(*requests: WarmingRequest) -> WarmingSpec:
    return WarmingSpec(models=requests)


def want(name: str, revision: str | None = None) -> WarmingRequest:
    return WarmingRequest(name=name, revision=revision)


def scanned(cache: Path) -> dict[str, ModelEntry]:
    return {m.name: m for m in scan_model_caches([cache], residency=no_residency).models}


def states(fetcher: Fetcher) -> dict[str, WarmingProgress]:
    return {p.name: p for p in fetcher.progress()}


def run(
    fetcher: Fetcher, wanted: WarmingSpec, status: InventoryStatus | None = None
) -> dict[str, WarmingProgress]:
    fetcher.update(wanted, status)
    assert fetcher.wait_idle(30), "copies did not finish"
    return states(fetcher)


def in_use(*names: str) -> InventoryStatus:
    """An inventory where the controller reports pods of ``names`` running (gpu tier)."""
    return InventoryStatus(source="agent", models=tuple(ModelEntry(n, "gpu") for n in names))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    folder.mkdir()
    return folder


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    folder.mkdir()
    return folder


def fetcher_for(source: Path, cache: Path, **settings: object) -> Fetcher:
    return Fetcher(FilesystemSource(source), FetchSettings(cache_dir=cache, **settings))  # type: ignore[arg-type]


# -- sources and layout ------------------------------------------------------------------------


def test_hub_source_is_copied_into_the_hub_layout_with_its_blobs_refs_and_commit(
    source: Path, cache: Path
) -> None:
    files = {
        "config.json": CONFIG,
        "model-00001-of-00002.safetensors": weights(MIB, 1),
        "model-00002-of-00002.safetensors": weights(MIB // 2, 2),
        "tokenizer/tokenizer.json": b'{"vocab": {}}',
    }
    hub_model(source, "org/Tiny-1B", files, commit="c" * 40)
    result = run(fetcher_for(source, cache), spec(want("org/Tiny-1B")))
    done = result["org/Tiny-1B"]
    total = sum(len(d) for d in files.values())
    assert (done.state, done.bytes_done, done.bytes_total) == ("done", total, total)
    repo = cache / "models--org--Tiny-1B"
    assert (repo / "refs" / "main").read_text() == "c" * 40
    snapshot = repo / "snapshots" / ("c" * 40)
    for path, data in files.items():
        link = snapshot / path
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.read_bytes() == data
        blob = sha256(data) if path.endswith(".safetensors") else git_sha1(data)
        assert link.resolve() == (repo / "blobs" / blob).resolve()
    entry = scanned(cache)["org/Tiny-1B"]
    assert entry.revision == "c" * 40 and entry.size_bytes == total
    assert not any((cache / STAGING_DIR).iterdir())  # staging cleaned after install


def test_hub_revision_by_ref_or_commit_and_an_unknown_one_is_a_clear_failure(
    source: Path, cache: Path
) -> None:
    hub_model(
        source,
        "org/m",
        {"config.json": CONFIG, "w.safetensors": weights(8192)},
        commit="1" * 40,
        ref="v2",
    )
    fetcher = fetcher_for(source, cache)
    fetcher.update(spec(want("org/m", "v2"), want("org/m", "nope")), None)
    assert fetcher.wait_idle(30)
    progress = {p.revision: p for p in fetcher.progress()}
    assert progress["v2"].state == "done"
    assert progress["nope"].state == "failed"
    assert "revision nope not in the source" in progress["nope"].message
    assert (cache / "models--org--m" / "refs" / "v2").read_text() == "1" * 40
    commit = FilesystemSource(source).resolve("org/m", "1" * 40)
    assert (commit.commit, commit.ref) == ("1" * 40, None)


def test_plain_folder_gets_a_stable_fingerprint_revision_and_refs_main(
    source: Path, cache: Path
) -> None:
    files = {"config.json": CONFIG, "model.safetensors": weights(MIB + 3, 3)}
    plain_model(source, "acme/plain-7b", files)
    first = FilesystemSource(source).resolve("acme/plain-7b", None)
    assert first == FilesystemSource(source).resolve("acme/plain-7b", None)
    assert len(first.commit) == 40 and first.ref == "main" and first.layout == "plain"
    result = run(fetcher_for(source, cache), spec(want("acme/plain-7b")))
    assert result["acme/plain-7b"].state == "done"
    repo = cache / "models--acme--plain-7b"
    assert (repo / "refs" / "main").read_text() == first.commit
    snapshot = repo / "snapshots" / first.commit
    assert (snapshot / "model.safetensors").read_bytes() == files["model.safetensors"]
    # Blobs of a plain source are named by the copy's sha256.
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == sorted(
        sha256(d) for d in files.values()
    )
    assert scanned(cache)["acme/plain-7b"].revision == first.commit
    # Touching a file of the source gives a new revision.
    os.utime(source / "acme" / "plain-7b" / "model.safetensors", ns=(1, 1))
    assert FilesystemSource(source).resolve("acme/plain-7b", None).commit != first.commit
    with pytest.raises(SourceError, match="without revisions"):
        FilesystemSource(source).resolve("acme/plain-7b", "v1")


@pytest.mark.parametrize(
    ("path", "kind"), [("model.safetensors", "sha256"), ("config.json", "git-sha1")]
)
def test_checksum_mismatch_fails_with_a_message_and_nothing_is_cached(
    source: Path, cache: Path, path: str, kind: str
) -> None:
    files = {"config.json": CONFIG, "model.safetensors": weights(64 * 1024)}
    wrong = ("0" * 64) if kind == "sha256" else ("0" * 40)
    hub_model(source, "org/bad", files, blob_names={path: wrong})
    assert FilesystemSource(source).resolve("org/bad", None).files[
        0 if path == "config.json" else 1
    ].digest == (kind, wrong)
    failed = run(fetcher_for(source, cache), spec(want("org/bad")))["org/bad"]
    assert failed.state == "failed"
    assert f"checksum mismatch for {path}" in failed.message and kind in failed.message
    assert scanned(cache) == {}
    assert not (cache / "models--org--bad" / "snapshots").exists()


def test_a_model_the_source_lacks_fails_with_a_message(source: Path, cache: Path) -> None:
    failed = run(fetcher_for(source, cache), spec(want("org/missing")))["org/missing"]
    assert failed.state == "failed" and "org/missing not in source" in failed.message


def test_unsafe_names_are_refused_by_the_source(source: Path) -> None:
    for name in ("../etc", "org/../x", "/abs", "a/b/c"):
        with pytest.raises(SourceError, match="not a hub id"):
            FilesystemSource(source).resolve(name, None)


def test_a_source_snapshot_still_downloading_is_refused(source: Path, cache: Path) -> None:
    repo = hub_model(source, "org/dl", {"config.json": CONFIG, "w.safetensors": weights(8192)})
    (repo / "blobs" / "f00.incomplete").write_bytes(b"x")
    (repo / "snapshots" / ("a" * 40) / "x.safetensors").symlink_to("../../blobs/f00.incomplete")
    failed = run(fetcher_for(source, cache), spec(want("org/dl")))["org/dl"]
    assert failed.state == "failed" and "unfinished" in failed.message


# -- atomic and resumable -----------------------------------------------------------------------


class CountingSource:
    """A FilesystemSource that counts the bytes read and can fail after ``fail_after`` bytes
    (the agent dying mid-copy, as far as the copy can tell)."""

    def __init__(self, root: Path, fail_after: int | None = None) -> None:
        self.inner = FilesystemSource(root)
        self.read = 0
        self.fail_after = fail_after
        self.offsets: list[int] = []

    def describe(self) -> str:
        return self.inner.describe()

    def resolve(self, name: str, revision: str | None) -> SourceModel:
        return self.inner.resolve(name, revision)

    def open(self, file: SourceFile, offset: int) -> BinaryIO:
        self.offsets.append(offset)
        handle = self.inner.open(file, offset)
        outer = self

        class Reader:
            def read(self, size: int = -1) -> bytes:
                data = handle.read(size)
                if outer.fail_after is not None:
                    allowed = outer.fail_after - outer.read
                    if allowed <= 0 and data:
                        raise OSError(5, "Input/output error (test)")
                    data = data[:allowed]
                outer.read += len(data)
                return data

            def __enter__(self) -> Reader:
                return self

            def __exit__(self, *exc: object) -> None:
                handle.close()

        return Reader()  # type: ignore[return-value]


def test_a_killed_copy_is_never_reported_and_resumes_without_recopying(
    source: Path, cache: Path
) -> None:
    files = {
        "config.json": CONFIG,
        "a.safetensors": weights(MIB, 4),
        "b.safetensors": weights(MIB, 5),
    }
    hub_model(source, "org/resume", files)
    total = sum(len(d) for d in files.values())
    # The first agent dies half way through b.safetensors (files are copied in listing order).
    dying = CountingSource(source, fail_after=MIB + MIB // 2)
    first = Fetcher(dying, FetchSettings(cache_dir=cache))
    assert run(first, spec(want("org/resume")))["org/resume"].state == "failed"
    staging = cache / STAGING_DIR
    staged = sorted(p.name for p in staging.rglob("*") if p.is_file())
    assert any(n.endswith(".part") for n in staged) and "manifest.json" in staged
    assert scanned(cache) == {}  # half a copy is not a cached model
    assert not (cache / "models--org--resume").exists()
    # A new agent (the restart) continues: whole files kept, the .part continued at its offset.
    again = CountingSource(source)
    second = Fetcher(again, FetchSettings(cache_dir=cache))
    done = run(second, spec(want("org/resume")))["org/resume"]
    assert (done.state, done.bytes_done) == ("done", total)
    assert again.read == total - dying.read
    assert again.offsets == [MIB // 2, 0]  # b.safetensors continued, config.json from 0
    assert scanned(cache)["org/resume"].size_bytes == total
    snapshot = cache / "models--org--resume" / "snapshots" / ("a" * 40)
    assert all((snapshot / p).read_bytes() == d for p, d in files.items())
    assert not any(staging.iterdir())


def test_staging_of_a_model_no_longer_wanted_is_removed(source: Path, cache: Path) -> None:
    hub_model(source, "org/gone", {"config.json": CONFIG, "w.safetensors": weights(MIB)})
    dying = CountingSource(source, fail_after=MIB // 2)
    fetcher = Fetcher(dying, FetchSettings(cache_dir=cache))
    run(fetcher, spec(want("org/gone")))
    assert any((cache / STAGING_DIR).iterdir())
    fetcher.update(spec(), None)
    assert not any((cache / STAGING_DIR).iterdir())
    assert fetcher.progress() == ()


def test_staging_from_another_source_revision_is_discarded(source: Path, cache: Path) -> None:
    repo = hub_model(source, "org/moved", {"config.json": CONFIG, "w.safetensors": weights(MIB)})
    run(
        Fetcher(CountingSource(source, fail_after=MIB // 2), FetchSettings(cache_dir=cache)),
        spec(want("org/moved")),
    )
    # The source's main moves to a new commit before the restart.
    hub_model(
        source,
        "org/moved",
        {"config.json": CONFIG, "w.safetensors": weights(MIB, 9)},
        commit="b" * 40,
    )
    assert (repo / "refs" / "main").read_text() == "b" * 40
    again = CountingSource(source)
    result = run(Fetcher(again, FetchSettings(cache_dir=cache)), spec(want("org/moved")))
    assert result["org/moved"].state == "done"
    assert again.read == len(CONFIG) + MIB  # nothing of the old staging was reused
    assert scanned(cache)["org/moved"].revision == "b" * 40


# -- bandwidth ------------------------------------------------------------------------------------


def test_token_bucket_holds_the_rate_after_its_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(1000.0, burst_s=0.5, clock=lambda: now[0])
    assert bucket.reserve(500) == 0.0  # the burst
    assert bucket.reserve(1000) == pytest.approx(1.0)
    assert bucket.reserve(1000) == pytest.approx(2.0)  # queued behind the first
    now[0] = 3.0
    assert bucket.reserve(100) == 0.0  # paid off, refilled up to the burst only
    now[0] = 100.0
    assert bucket.reserve(1500) == pytest.approx(1.0)


def test_copies_respect_the_bandwidth_limit(source: Path, cache: Path) -> None:
    size = 3 * MIB
    hub_model(source, "org/slow", {"config.json": CONFIG, "w.safetensors": weights(size)})
    rate = 2 * MIB
    fetcher = fetcher_for(source, cache, bandwidth=float(rate))
    started = time.monotonic()
    assert run(fetcher, spec(want("org/slow")))["org/slow"].state == "done"
    elapsed = time.monotonic() - started
    # (bytes - burst of a quarter second) / rate; slower on a busy machine, never faster.
    expected = (size + len(CONFIG) - rate * 0.25) / rate
    print(
        f"\n{size + len(CONFIG)} bytes at {rate} B/s took {elapsed:.2f}s (expected {expected:.2f}s)"
    )
    assert expected * 0.9 <= elapsed <= expected * 2.5


def test_the_limit_is_shared_by_concurrent_copies(source: Path, cache: Path) -> None:
    for name in ("org/one", "org/two"):
        hub_model(source, name, {"config.json": CONFIG, "w.safetensors": weights(MIB, len(name))})
    rate = MIB
    fetcher = fetcher_for(source, cache, bandwidth=float(rate), max_concurrent=2)
    started = time.monotonic()
    result = run(fetcher, spec(want("org/one"), want("org/two")))
    elapsed = time.monotonic() - started
    assert {p.state for p in result.values()} == {"done"}
    expected = (2 * (MIB + len(CONFIG)) - rate * 0.25) / rate
    assert expected * 0.9 <= elapsed <= expected * 2.5


# -- budget and eviction ---------------------------------------------------------------------------


def cached_model(cache: Path, name: str, size: int, age_days: float, seed: int) -> None:
    """A finished hub copy in the cache, last used ``age_days`` ago (file times)."""
    repo = hub_model(
        cache,
        name,
        {"config.json": CONFIG, "w.safetensors": weights(size, seed)},
        commit=f"{seed:x}" * 40,
    )
    when = time.time() - age_days * 86400
    for blob in (repo / "blobs").iterdir():
        os.utime(blob, (when, when))


def test_lru_eviction_makes_room_but_never_for_a_model_in_use(source: Path, cache: Path) -> None:
    for name, age, seed in (("org/oldest", 30, 1), ("org/older", 20, 2), ("org/recent", 1, 3)):
        cached_model(cache, name, MIB, age, seed)
    hub_model(source, "org/new", {"config.json": CONFIG, "w.safetensors": weights(MIB, 7)})
    one = MIB + len(CONFIG)
    fetcher = fetcher_for(source, cache, budget_bytes=3 * one + one // 2)
    result = run(fetcher, spec(want("org/new")), in_use("org/oldest"))
    assert result["org/new"].state == "done"
    assert set(scanned(cache)) == {"org/oldest", "org/recent", "org/new"}
    evicted = result["org/older"]
    assert evicted.state == "evicted" and "least recently used" in evicted.message
    assert "org/new" in evicted.message
    assert not (cache / "models--org--older").exists()  # refs, blobs, folder all gone


def test_a_pass_racing_the_install_does_not_count_the_new_copy_twice(
    source: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread's pass (the agent's cycle) lands the moment the snapshot is renamed into
    the cache: it must see the copy once (in the cache, its reservation gone), not twice, or
    it evicts one model too many (found by the e2e eviction test)."""
    for name, age, seed in (("org/oldest", 30, 1), ("org/older", 20, 2), ("org/recent", 1, 3)):
        cached_model(cache, name, MIB, age, seed)
    hub_model(source, "org/new", {"config.json": CONFIG, "w.safetensors": weights(MIB, 7)})
    one = MIB + len(CONFIG)
    fetcher = fetcher_for(source, cache, budget_bytes=3 * one + one // 2)
    wanted, status = spec(want("org/new")), in_use("org/oldest")
    rename = os.rename
    racers: list[threading.Thread] = []

    def racing_rename(src: str | Path, dst: str | Path) -> None:
        rename(src, dst)
        if Path(dst).parent.name == "snapshots" and not racers:
            racer = threading.Thread(target=fetcher.update, args=(wanted, status))
            racers.append(racer)
            racer.start()
            racer.join(0.3)  # blocked while the install still holds the fetcher's lock

    monkeypatch.setattr("scheduler.agent.fetch.os.rename", racing_rename)
    result = run(fetcher, wanted, status)
    assert racers, "the install never renamed a snapshot into the cache"
    racers[0].join(10)
    assert fetcher.wait_idle(30)
    assert result["org/new"].state == "done"
    assert set(scanned(cache)) == {"org/oldest", "org/recent", "org/new"}


def test_lastused_from_the_inventory_counts_when_newer_than_the_files(
    source: Path, cache: Path
) -> None:
    cached_model(cache, "org/a", MIB, 30, 1)
    cached_model(cache, "org/b", MIB, 20, 2)
    hub_model(source, "org/new", {"config.json": CONFIG, "w.safetensors": weights(MIB, 7)})
    one = MIB + len(CONFIG)
    status = InventoryStatus(
        source="agent",
        models=(ModelEntry("org/a", "host-memory", "1" * 40, one, dt.datetime.now(dt.UTC)),),
    )
    result = run(
        fetcher_for(source, cache, budget_bytes=2 * one + 10), spec(want("org/new")), status
    )
    assert result["org/b"].state == "evicted"
    assert set(scanned(cache)) == {"org/a", "org/new"}


def test_no_room_without_evicting_in_use_or_wanted_models_fails_with_a_message(
    source: Path, cache: Path
) -> None:
    cached_model(cache, "org/busy", MIB, 30, 1)
    cached_model(cache, "org/wanted", MIB, 20, 2)
    hub_model(
        source,
        "org/wanted",
        {"config.json": CONFIG, "w.safetensors": weights(MIB, 2)},
        commit="2" * 40,
    )
    hub_model(source, "org/new", {"config.json": CONFIG, "w.safetensors": weights(MIB, 7)})
    one = MIB + len(CONFIG)
    fetcher = fetcher_for(source, cache, budget_bytes=2 * one + one // 2)
    result = run(fetcher, spec(want("org/wanted"), want("org/new")), in_use("org/busy"))
    assert result["org/wanted"].state == "done"
    failed = result["org/new"]
    assert failed.state == "failed" and "too small" in failed.message
    assert f"{one} in use" in failed.message
    assert set(scanned(cache)) == {"org/busy", "org/wanted"}  # nothing evicted for nothing


def test_a_model_larger_than_the_budget_fails_with_a_message(source: Path, cache: Path) -> None:
    hub_model(source, "org/huge", {"config.json": CONFIG, "w.safetensors": weights(MIB)})
    failed = run(fetcher_for(source, cache, budget_bytes=MIB // 2), spec(want("org/huge")))
    assert failed["org/huge"].state == "failed"
    assert f"more than the budget {MIB // 2}" in failed["org/huge"].message
    assert scanned(cache) == {}


def test_over_budget_evicts_unwanted_first_then_wanted_never_in_use(
    source: Path, cache: Path
) -> None:
    cached_model(cache, "org/busy", MIB, 40, 1)
    cached_model(cache, "org/wanted", MIB, 30, 2)
    cached_model(cache, "org/unwanted", MIB, 1, 3)
    one = MIB + len(CONFIG)
    hub_model(
        source,
        "org/wanted",
        {"config.json": CONFIG, "w.safetensors": weights(MIB, 2)},
        commit="2" * 40,
    )
    # Budget for two: the unwanted one goes although it is the most recently used.
    fetcher = fetcher_for(source, cache, budget_bytes=2 * one)
    result = run(fetcher, spec(want("org/wanted")), in_use("org/busy"))
    assert set(scanned(cache)) == {"org/busy", "org/wanted"}
    assert result["org/unwanted"].state == "evicted"
    # Budget for one: the wanted, done model goes too (the budget forces it); never the busy one.
    forced = fetcher_for(source, cache, budget_bytes=one)
    forced.update(spec(want("org/wanted")), in_use("org/busy"))
    assert set(scanned(cache)) == {"org/busy"}
    forced.stop()


def test_withdrawing_a_model_cancels_its_copy(source: Path, cache: Path) -> None:
    hub_model(source, "org/long", {"config.json": CONFIG, "w.safetensors": weights(4 * MIB)})
    fetcher = fetcher_for(source, cache, bandwidth=float(MIB))
    fetcher.update(spec(want("org/long")), None)
    deadline = time.monotonic() + 10
    while (
        states(fetcher)["org/long"].state != "copying"
        or states(fetcher)["org/long"].bytes_done == 0
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    fetcher.update(spec(), None)
    assert fetcher.wait_idle(10)
    assert fetcher.progress() == ()
    assert not any((cache / STAGING_DIR).iterdir())
    assert scanned(cache) == {}


def test_stop_leaves_staging_for_the_next_agent(source: Path, cache: Path) -> None:
    hub_model(source, "org/stop", {"config.json": CONFIG, "w.safetensors": weights(4 * MIB)})
    fetcher = fetcher_for(source, cache, bandwidth=float(2 * MIB))
    fetcher.update(spec(want("org/stop")), None)
    time.sleep(0.5)
    fetcher.stop()
    assert any(p.name.endswith(".part") for p in (cache / STAGING_DIR).rglob("*"))
    assert scanned(cache) == {}


def test_progress_is_reported_while_copying(source: Path, cache: Path) -> None:
    hub_model(source, "org/p", {"config.json": CONFIG, "w.safetensors": weights(2 * MIB)})
    changes = threading.Event()
    fetcher = fetcher_for(source, cache, bandwidth=float(2 * MIB))
    fetcher.on_change = changes.set
    fetcher.update(spec(want("org/p")), None)
    assert changes.wait(5)
    time.sleep(0.6)
    mid = states(fetcher)["org/p"]
    assert mid.state == "copying" and 0 < mid.bytes_done < mid.bytes_total  # type: ignore[operator]
    assert mid.started_at is not None
    assert fetcher.wait_idle(30)
    assert states(fetcher)["org/p"].state == "done"


def test_a_cached_copy_stays_done_when_the_source_goes_away(source: Path, cache: Path) -> None:
    hub_model(source, "org/kept", {"config.json": CONFIG, "w.safetensors": weights(64 * 1024)})
    assert run(fetcher_for(source, cache), spec(want("org/kept")))["org/kept"].state == "done"
    # The share is unmounted; a restarted agent still has the copy.
    (source / "models--org--kept").rename(source / "elsewhere")
    kept = run(fetcher_for(source, cache), spec(want("org/kept")))["org/kept"]
    assert kept.state == "done" and "source unreadable" in kept.message
    assert "org/kept" in scanned(cache)


def test_a_wanted_model_evicted_by_a_lowered_budget_is_not_fetched_back_over_another(
    source: Path, cache: Path
) -> None:
    for name, seed in (("org/a", 1), ("org/b", 2)):
        hub_model(source, name, {"config.json": CONFIG, "w.safetensors": weights(MIB, seed)})
    one = MIB + len(CONFIG)
    both = run(fetcher_for(source, cache), spec(want("org/a"), want("org/b")))
    assert {p.state for p in both.values()} == {"done"}
    # The budget now holds one: one wanted model is evicted (forced), and fetching it again
    # does not evict the other wanted one: it fails, saying why.
    small = fetcher_for(source, cache, budget_bytes=one + one // 2)
    result = run(small, spec(want("org/a"), want("org/b")))
    assert set(scanned(cache)) == {"org/b"}
    assert (result["org/a"].state, result["org/b"].state) == ("evicted", "done")
    assert "over its budget" in result["org/a"].message
    assert len(small.progress()) == 2  # one entry per wanted model
    # The next cycle tries org/a again; it would have to evict org/b, which is wanted too.
    again = run(small, spec(want("org/a"), want("org/b")))
    assert again["org/a"].state == "failed"
    assert "too small" in again["org/a"].message and "asked for" in again["org/a"].message
    assert set(scanned(cache)) == {"org/b"}
