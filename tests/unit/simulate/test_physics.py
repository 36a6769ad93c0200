"""The simulated world (scheduler.simulate.physics): residency appears when a load completes,
fills are shared, GPU memory serves only its engine, links are shared fairly. Each test here
would fail on the old model, where residency appeared at placement in the GPU tier."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from scheduler.simulate.physics import (
    DISK,
    NETWORK,
    SOURCE_DISK,
    SOURCE_HOST,
    SOURCE_JOINED,
    SOURCE_NETWORK,
    Flow,
    Links,
    LoadModel,
    World,
)

GB = 10**9
MODEL = LoadModel()  # network 1.5 GB/s, disk 5 GB/s, host 20 GB/s, copies 1.5 GB/s
A = ("org/a", None)
B = ("org/b", None)


def _world(capacity: int = 1000 * GB) -> tuple[World, dict[str, float]]:
    return World(MODEL, {"n1": capacity, "n2": capacity}), {}


def _loaded(done: dict[str, float]) -> Callable[[str, float], None]:
    def record(pod: str, t: float) -> None:
        done[pod] = t

    return record


def test_two_concurrent_flows_on_one_link_each_take_twice_as_long() -> None:
    links = Links(MODEL)
    done: dict[str, float] = {}
    for name in ("x", "y"):
        links.start(Flow("n1", NETWORK, 15 * GB, lambda t, n=name: done.__setitem__(n, t)))
    links.start(Flow("n2", NETWORK, 15 * GB, lambda t: done.__setitem__("other node", t)))
    links.advance(100)
    assert done["x"] == pytest.approx(20.0) and done["y"] == pytest.approx(20.0)  # 10 s alone
    assert done["other node"] == pytest.approx(10.0)  # another node's link is its own


def test_shares_are_recomputed_when_a_flow_starts_and_ends() -> None:
    links = Links(MODEL)
    done: dict[str, float] = {}
    links.start(Flow("n1", DISK, 10 * GB, lambda t: done.__setitem__("first", t)))
    links.advance(1.0)  # 5 GB read alone
    links.start(Flow("n1", DISK, 2.5 * GB, lambda t: done.__setitem__("second", t)))
    links.advance(100)
    # Both at 2.5 GB/s: the second ends at 2.0 (first has 2.5 GB left), then alone at 5 GB/s.
    assert done["second"] == pytest.approx(2.0)
    assert done["first"] == pytest.approx(2.5)


def test_a_capped_flow_leaves_the_rest_to_the_others() -> None:
    links = Links(MODEL)
    capped = links.start(Flow("n1", NETWORK, 100 * GB, lambda t: None, cap=0.3 * GB))
    free = links.start(Flow("n1", NETWORK, 100 * GB, lambda t: None))
    assert capped.rate == pytest.approx(0.3 * GB) and free.rate == pytest.approx(1.2 * GB)


def test_a_replica_placed_while_the_weights_download_waits_and_reads_the_page_cache() -> None:
    world, done = _world()
    size = 15 * GB
    assert world.start_load("first", "n1", A, size, _loaded(done)) == SOURCE_NETWORK
    world.advance(4.0)
    assert not world.on_disk("n1", A)  # residency appears when the download completes
    assert world.start_load("second", "n1", A, size, _loaded(done)) == SOURCE_JOINED
    world.advance(1000)
    # The download ends at 10 s; then both engines read 15 GB from the page cache together
    # (10 GB/s each): 1.5 s. The old model loaded the second replica from "GPU" in 0.075 s.
    assert done["first"] == pytest.approx(11.5)
    assert done["second"] == pytest.approx(11.5)
    assert world.on_disk("n1", A) and world.in_page_cache("n1", A)


def test_gpu_resident_weights_do_not_serve_a_new_engine() -> None:
    world, done = _world()
    size = 16 * GB
    world.seed("n1", A, size, last_used=-1e9)
    assert world.start_load("first", "n1", A, size, _loaded(done)) == SOURCE_DISK
    world.advance(100)
    assert done["first"] == pytest.approx(16 / 5)
    # "first" runs and holds the weights in its GPUs; a second engine gets the page cache.
    world.advance(200)
    assert world.start_load("second", "n1", A, size, _loaded(done)) == SOURCE_HOST
    world.advance(1000)
    assert done["second"] - 200 == pytest.approx(16 / 20)


def test_two_downloads_of_different_models_on_one_node_share_its_network() -> None:
    world, done = _world()
    world.start_load("a", "n1", A, 15 * GB, _loaded(done))
    world.start_load("b", "n1", B, 15 * GB, _loaded(done))
    world.start_load("c", "n2", A, 15 * GB, _loaded(done))
    world.advance(1000)
    # Each download at 0.75 GB/s: 20 s (alone: 10 s); then 15 GB from the page cache, both
    # engines at once: 1.5 s.
    assert done["a"] == pytest.approx(21.5) and done["b"] == pytest.approx(21.5)
    assert done["c"] == pytest.approx(10.75)  # n2's own download and page-cache read


def test_the_page_cache_cools_after_the_last_engine_stops() -> None:
    world, done = _world()
    world.seed("n1", A, 10 * GB, last_used=-1e9)
    world.start_load("p", "n1", A, 10 * GB, _loaded(done))
    world.advance(50)
    world.stop("p")
    world.advance(50 + MODEL.page_cache_ttl_s - 1)
    assert world.in_page_cache("n1", A)
    world.advance(50 + MODEL.page_cache_ttl_s + 1)
    assert not world.in_page_cache("n1", A) and world.on_disk("n1", A)


def test_a_download_nobody_waits_for_is_cancelled_one_somebody_waits_for_goes_on() -> None:
    world, done = _world()
    world.start_load("a", "n1", A, 15 * GB, _loaded(done))
    world.advance(2)
    world.stop("a")
    assert world.arriving("n1", A) is None and not world.on_disk("n1", A)
    assert world.links.active() == []
    world.start_load("b", "n1", A, 15 * GB, _loaded(done))
    world.start_load("c", "n1", A, 15 * GB, _loaded(done))
    world.advance(5)
    world.stop("b")
    world.advance(1000)
    assert "b" not in done and world.on_disk("n1", A)
    assert done["c"] == pytest.approx(2 + 10 + 15 / 20)


def test_eviction_takes_the_least_recently_used_file_never_one_in_use() -> None:
    world = World(MODEL, {"n1": 30 * GB})
    done: dict[str, float] = {}
    world.seed("n1", A, 10 * GB, last_used=-100.0)  # older
    world.seed("n1", B, 10 * GB, last_used=-50.0)
    world.start_load("a", "n1", A, 10 * GB, _loaded(done))  # A in use now
    world.start_load("c", "n1", ("org/c", None), 15 * GB, _loaded(done))
    assert world.on_disk("n1", A) and not world.on_disk("n1", B)
    assert world.evictions == 1


def test_a_copy_lands_on_disk_and_in_the_page_cache_at_the_copy_rate() -> None:
    world, _ = _world()
    assert world.copy("n2", A, 15 * GB)
    assert not world.copy("n2", A, 15 * GB)  # already arriving
    world.advance(9.9)
    assert not world.on_disk("n2", A)
    world.advance(10.1)
    assert world.in_page_cache("n2", A) and world.bytes_copied == 15 * GB
    assert world.take_landed() == ["n2"] and world.take_landed() == []
