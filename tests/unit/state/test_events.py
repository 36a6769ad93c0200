"""The pod event recorder: messages, dedupe, the bounded queue, failures, and its lifecycle,
against a fake events API (no threads are left waiting on a clock: the dedupe timer is
injected)."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter
from typing import Any

import pytest
from support.events import FakeEventApi

from scheduler.core.assignment import GpuPrediction
from scheduler.core.demand import PodDemand
from scheduler.state.events import (
    BAD_POD_SPEC,
    NOTE_LIMIT_BYTES,
    PLACED,
    REPORTING_CONTROLLER,
    UNSCHEDULABLE,
    EventRecorder,
    NoEvents,
    placement_note,
    rejection_note,
)
from scheduler.state.kube import KubeError, micro_time
from scheduler.state.store import BindResult, FilterResult

MEMORY = "NVIDIA-L40S: needs 80.1 GiB/GPU, 40.4 GiB usable; weights alone do not fit"
NO_GPUS = "node has no nvidia.com/gpu"
BAD = "annotation kvsched.io/max-num-seqs='lots' is not a whole number"


class Outcomes:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def event_recorded(self, reason: str, outcome: str) -> None:
        self.counts[(reason, outcome)] += 1


class Timer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def demand(name: str = "llama", error: str | None = None, uid: str = "uid-1") -> PodDemand:
    return PodDemand(namespace="llm", name=name, uid=uid, gpus=2, error=error)


def rejected_everywhere() -> FilterResult:
    return FilterResult(
        passed=[],
        failed={"l40s-1": MEMORY, "l40s-2": MEMORY},
        unresolvable={"cpu-1": NO_GPUS},
        rejections={"gpu-memory": 2, "no-gpus": 1},
    )


def bound(indices: tuple[int, ...] = (0, 1), node: str = "gpu-a") -> BindResult:
    placement = (
        f"predicted-gpus={','.join(map(str, indices))} weights=host-memory ready~46s "
        "set=nvlink-complete headroom=18.3 GiB/gpu"
    )
    return BindResult(GpuPrediction(node, indices), placement, already_bound=False)


def recorder(api: FakeEventApi, outcomes: Outcomes | None = None, **kwargs: Any) -> EventRecorder:
    return EventRecorder(api, outcomes, instance="kvsched-0", **kwargs)


def test_placement_event_names_node_gpus_and_what_decided() -> None:
    api = FakeEventApi()
    events = recorder(api)
    events.start()
    events.placed("llm", "llama", "uid-1", bound())
    events.stop()
    [(namespace, event)] = api.events
    assert namespace == "llm"
    assert event["apiVersion"] == "events.k8s.io/v1"
    assert (event["reason"], event["type"], event["action"]) == (PLACED, "Normal", "Binding")
    assert event["note"] == (
        "Placed on gpu-a, predicted GPUs 0,1: weights=host-memory ready~46s set=nvlink-complete "
        "headroom=18.3 GiB/gpu"
    )
    assert event["regarding"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "llm",
        "name": "llama",
        "uid": "uid-1",
    }
    assert event["related"] == {"apiVersion": "v1", "kind": "Node", "name": "gpu-a"}
    assert event["reportingController"] == REPORTING_CONTROLLER
    assert event["reportingInstance"] == "kvsched-0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["eventTime"])
    assert re.fullmatch(r"llama\.[0-9a-f]+", event["metadata"]["name"])
    assert event["metadata"]["namespace"] == "llm"


def test_placement_note_of_a_gang_member_and_of_a_pod_without_gpus() -> None:
    gang = BindResult(GpuPrediction("gpu-b", (4, 5)), "predicted-gpus=4,5 gang=llm/tp", False)
    assert placement_note("gpu-b", gang) == "Placed on gpu-b, predicted GPUs 4,5: gang=llm/tp"
    none = BindResult(GpuPrediction("cpu-1", ()), "predicted-gpus=", False)
    assert placement_note("cpu-1", none) == "Placed on cpu-1, no GPUs"


def test_rejection_note_counts_kinds_and_quotes_the_commonest_reasons() -> None:
    assert rejection_note(rejected_everywhere()) == (
        f"0/3 nodes fit (2 gpu-memory, 1 no-gpus): 2 nodes: {MEMORY} | 1 node: {NO_GPUS}"
    )
    many = FilterResult(
        [],
        {f"n{i}": f"{i} of 8 GPUs free, pod needs 8" for i in range(5)},
        {},
        {"free-gpus": 5},
    )
    note = rejection_note(many)
    assert note.startswith("0/5 nodes fit (5 free-gpus): 1 node: ")
    assert note.count(" | ") == 3 and note.endswith("| 2 more distinct reasons")


def test_rejection_events_only_when_every_node_is_rejected() -> None:
    api = FakeEventApi()
    events = recorder(api)
    events.start()
    events.rejected(demand(), FilterResult(["gpu-a"], {"l40s-1": MEMORY}, {}, {"gpu-memory": 1}))
    events.rejected(demand(), FilterResult([], {}, {}, {}))  # asked about no node
    events.rejected(demand(), rejected_everywhere())
    events.stop()
    assert api.reasons() == [UNSCHEDULABLE]
    event = api.events[0][1]
    assert (event["type"], event["action"]) == ("Warning", "Scheduling")
    assert "related" not in event
    assert event["note"].startswith("0/3 nodes fit (2 gpu-memory, 1 no-gpus)")


def test_a_broken_annotation_is_one_event_that_names_it() -> None:
    api = FakeEventApi()
    events = recorder(api)
    events.start()
    result = FilterResult([], {"gpu-a": BAD}, {"gpu-b": BAD}, {"pod-spec": 2})
    for _ in range(3):
        events.rejected(demand(error=BAD), result)
    events.stop()
    assert api.reasons() == [BAD_POD_SPEC]
    assert api.events[0][1]["note"] == BAD
    assert api.events[0][1]["type"] == "Warning"


def test_the_same_event_is_written_once_per_dedupe_window() -> None:
    api, outcomes, timer = FakeEventApi(), Outcomes(), Timer()
    events = recorder(api, outcomes, dedupe_ttl_s=300, timer=timer)
    events.start()
    for _ in range(5):
        events.rejected(demand(), rejected_everywhere())
    # Another pod, and the same pod with different rejection counts, are news.
    events.rejected(demand("other", uid="uid-2"), rejected_everywhere())
    fewer = FilterResult([], {"l40s-1": MEMORY}, {}, {"gpu-memory": 1})
    events.rejected(demand(), fewer)
    timer.now += 301
    events.rejected(demand(), rejected_everywhere())
    events.stop()
    assert api.reasons() == [UNSCHEDULABLE] * 4
    assert [e["regarding"]["name"] for _, e in api.events] == ["llama", "other", "llama", "llama"]
    assert outcomes.counts == {(UNSCHEDULABLE, "written"): 4, (UNSCHEDULABLE, "deduplicated"): 4}


def test_a_full_queue_drops_and_counts_and_the_dropped_event_can_come_again() -> None:
    api, outcomes = FakeEventApi(), Outcomes()
    events = recorder(api, outcomes, queue_size=1)
    events.placed("llm", "a", "uid-a", bound())  # not started: it stays queued
    events.placed("llm", "b", "uid-b", bound())
    assert outcomes.counts == {(PLACED, "dropped"): 1}
    events.start()
    events.stop()
    assert [e["regarding"]["name"] for _, e in api.events] == ["a"]

    again = recorder(api, outcomes, queue_size=1)
    again.start()
    again.placed("llm", "b", "uid-b", bound())
    again.stop()
    assert [e["regarding"]["name"] for _, e in api.events] == ["a", "b"]


def test_the_verb_never_waits_for_the_api_server() -> None:
    api, outcomes = FakeEventApi(), Outcomes()
    api.release.clear()  # every write hangs
    events = recorder(api, outcomes, queue_size=2)
    events.start()
    started = time.perf_counter()
    for index in range(10):
        events.placed("llm", f"p{index}", f"uid-{index}", bound())
    assert time.perf_counter() - started < 0.5
    assert api.entered.wait(5)
    # One in the writer's hands, two queued, the rest dropped.
    assert outcomes.counts[(PLACED, "dropped")] >= 7
    api.release.set()
    events.stop(timeout_s=5)
    assert len(api.events) + outcomes.counts[(PLACED, "dropped")] == 10


def test_failures_are_counted_not_raised_and_the_writer_goes_on() -> None:
    api, outcomes = FakeEventApi(), Outcomes()
    api.errors = [KubeError("create event: HTTP 403: forbidden", 403), RuntimeError("a bug")]
    events = recorder(api, outcomes)
    events.start()
    for index in range(3):
        events.placed("llm", f"p{index}", f"uid-{index}", bound())
    events.stop()
    assert [e["regarding"]["name"] for _, e in api.events] == ["p2"]
    assert outcomes.counts == {(PLACED, "failed"): 2, (PLACED, "written"): 1}


def test_stop_writes_what_was_queued_then_takes_no_more() -> None:
    api, outcomes = FakeEventApi(), Outcomes()
    events = recorder(api, outcomes)
    for index in range(3):
        events.placed("llm", f"p{index}", f"uid-{index}", bound())
    events.start()
    events.stop()
    assert not events.running
    assert len(api.events) == 3
    events.placed("llm", "late", "uid-late", bound())
    assert outcomes.counts[(PLACED, "dropped")] == 1
    assert len(api.events) == 3


def test_stop_gives_up_on_a_write_that_hangs() -> None:
    api = FakeEventApi()
    api.release.clear()
    events = recorder(api)
    events.start()
    events.placed("llm", "p", "uid", bound())
    assert api.entered.wait(5)
    started = time.perf_counter()
    events.stop(timeout_s=0.1)
    assert time.perf_counter() - started < 1.0
    api.release.set()


def test_stop_without_start_returns_at_once() -> None:
    events = recorder(FakeEventApi(), queue_size=1)
    events.placed("llm", "p", "uid", bound())
    events.stop(timeout_s=5)
    NoEvents().stop()


def test_names_and_notes_stay_within_the_api_limits() -> None:
    api = FakeEventApi()
    events = recorder(api)
    long_name = "p" * 250 + "-x"
    huge = FilterResult([], {"n": "é" * 2000}, {}, {"free-gpus": 1})
    events.start()
    events.rejected(demand(long_name), huge)
    events.stop()
    event = api.events[0][1]
    assert len(event["metadata"]["name"]) <= 253
    assert len(event["note"].encode()) <= NOTE_LIMIT_BYTES
    assert event["note"].endswith("...")


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5, 123456, dt.UTC), "2026-01-02T03:04:05.123456Z"),
        # A whole second would lose its fraction in the client's isoformat().
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05.000001Z"),
    ],
)
def test_micro_time_always_has_six_digits(moment: dt.datetime, text: str) -> None:
    assert micro_time(moment) == text


def test_placement_events_are_rate_limited_and_warnings_are_not() -> None:
    api, outcomes, timer = FakeEventApi(), Outcomes(), Timer()
    events = recorder(api, outcomes, placed_per_s=2.0, placed_burst=3, timer=timer)
    for index in range(5):
        events.placed("llm", f"p{index}", f"uid-{index}", bound())
    assert outcomes.counts[(PLACED, "rate_limited")] == 2
    # A rejected warning is never held back by the placement bucket.
    events.rejected(demand(), rejected_everywhere())
    timer.now += 1.0  # two more tokens
    for index in range(5, 8):
        events.placed("llm", f"p{index}", f"uid-{index}", bound())
    assert outcomes.counts[(PLACED, "rate_limited")] == 3
    # A placement that was rate-limited is not remembered as written: its retry may be.
    timer.now += 10.0
    events.placed("llm", "p3", "uid-3", bound())
    events.start()
    events.stop(timeout_s=5)
    written = [e["regarding"]["name"] for _, e in api.events if e["reason"] == PLACED]
    assert written == ["p0", "p1", "p2", "p5", "p6", "p3"]
    assert [e["reason"] for _, e in api.events].count(UNSCHEDULABLE) == 1


def test_a_token_bucket_needs_a_rate_and_a_burst() -> None:
    from scheduler.state.events import TokenBucket

    with pytest.raises(ValueError, match="positive rate and burst"):
        TokenBucket(0.0, 5, time.monotonic)
    with pytest.raises(ValueError, match="positive rate and burst"):
        TokenBucket(1.0, 0, time.monotonic)
