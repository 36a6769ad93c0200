"""The event loop never waits: not on the API server, not on a big or cold evaluation.

Against a real uvicorn server (in-process, for the stalling binder; as its own process, for
the 5,000-node load), with real concurrency:

* An API server that stalls every write for 2 s (reservation annotations and pods/binding):
  a gang's members are planned and answered at once, the reservation writes happen later,
  off the verbs, in order; while a bind and those writes hang, an unrelated filter and
  /healthz answer fast.
* Eight schedulers filtering at 5,000 nodes, each pod of a new kind (a cold memo per
  request): /healthz stays answered.

Bounds are generous (the machines running tests are shared and noisy); the design targets
(healthz p99 < 100 ms) are measured by hack/bench_extender.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from support.extender import extender_command
from support.k8s import gpu_node, pod

from scheduler.core.assignment import GpuPrediction, GpuReservation
from scheduler.demo.run import free_port, running_server
from scheduler.demo.synthetic import bench_pod, synthetic_cluster
from scheduler.extender.app import AppSettings, create_app
from scheduler.extender.server import ServerSettings
from scheduler.models.catalog import Catalog
from scheduler.state.effects import EffectWriter
from scheduler.state.objects import PodRecord
from scheduler.state.store import ClusterStore

STALL_S = 2.0
# What "fast" means here: far below the stall, with room for a loaded test machine.
FAST_S = 0.5
# How long the eight schedulers keep filtering.
LOAD_S = 2.0
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class StallingBinder:
    """An API server whose every write takes STALL_S (then succeeds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reserves: list[tuple[str, bool, float]] = []
        self.binds: list[str] = []

    def bind(
        self, pod: PodRecord, prediction: GpuPrediction, placement: str
    ) -> GpuPrediction | None:
        time.sleep(STALL_S)
        with self.lock:
            self.binds.append(pod.name)
        return None

    def reserve(self, namespace: str, name: str, reservation: GpuReservation | None) -> None:
        time.sleep(STALL_S)
        with self.lock:
            self.reserves.append((name, reservation is not None, time.monotonic()))


@contextlib.contextmanager
def serving(store: ClusterStore) -> Iterator[str]:
    """The extender app over `store` on a real uvicorn server in a thread of this process."""
    port = free_port()
    config = uvicorn.Config(
        create_app(store, AppSettings()),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        **ServerSettings().uvicorn_options(),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def member(name: str) -> dict[str, Any]:
    return pod(
        name,
        gpus=8,
        annotations={
            "kvsched.io/model": LLAMA_70B,
            "kvsched.io/max-model-len": "8192",
            "kvsched.io/gang": "g",
            "kvsched.io/gang-size": "2",
        },
    )


def timed(client: httpx.Client, path: str, body: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    response = client.post(path, content=orjson.dumps(body))
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed, response.json()


class Prober:
    """GET /healthz every 10 ms on a connection of its own, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                client.get("/healthz").raise_for_status()
                self.latencies.append(time.perf_counter() - started)
                self._stop.wait(0.01)


def test_an_api_server_that_stalls_every_write_stalls_no_verb() -> None:
    binder = StallingBinder()
    store = ClusterStore(Catalog.builtin(), binder=binder, effects=EffectWriter(binder))
    nodes = [f"n{i}" for i in range(4)]
    store.replace_kind("Node", [gpu_node(n) for n in nodes])
    store.synced = True
    members = [member("m0"), member("m1")]
    with (
        serving(store) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        Prober(url) as prober,
    ):
        args = [{"Pod": m, "Nodes": None, "NodeNames": nodes} for m in members]
        # The scheduler shows the store both members; the second filter plans the group.
        elapsed = [timed(client, "/filter", a)[0] for a in args]
        planned = [timed(client, "/filter", a) for a in args]
        elapsed += [t for t, _ in planned]
        assert max(elapsed) < FAST_S, elapsed
        homes = [answer["NodeNames"] for _, answer in planned]
        assert all(len(h) == 1 for h in homes) and homes[0] != homes[1]
        # The reservation writes are under way (2 s each), and a bind now hangs as well.
        binding = {"PodName": "m0", "PodNamespace": "llm", "PodUID": "uid-llm-m0"}
        bind_answer: dict[str, Any] = {}

        def bind() -> None:
            with httpx.Client(base_url=url, timeout=30) as own:
                bind_answer.update(timed(own, "/bind", {**binding, "Node": homes[0][0]})[1])

        binder_thread = threading.Thread(target=bind)
        binder_thread.start()
        unrelated = {"Pod": pod("plain", gpus=4), "Nodes": None, "NodeNames": nodes}
        during: list[float] = []
        deadline = time.monotonic() + STALL_S
        while time.monotonic() < deadline:
            took, answer = timed(client, "/filter", unrelated)
            during.append(took)
            assert set(answer["NodeNames"]) == set(nodes) - {homes[0][0], homes[1][0]}
            during.append(timed(client, "/prioritize", unrelated)[0])
            time.sleep(0.05)
        binder_thread.join(30)
        assert bind_answer == {"Error": ""}
        assert max(during) < FAST_S, during
    # Written later, off the verbs, in the order they were decided.
    deadline = time.monotonic() + 4 * STALL_S + 5
    while len(binder.reserves) < 2:
        assert time.monotonic() < deadline, binder.reserves
        time.sleep(0.05)
    assert [(name, write) for name, write, _ in binder.reserves] == [("m0", True), ("m1", True)]
    assert binder.binds == ["m0"]
    assert len(prober.latencies) > 50
    assert percentile(prober.latencies, 99) < 0.1, sorted(prober.latencies)[-5:]


@pytest.fixture(scope="module")
def extender_5000(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    folder: Path = tmp_path_factory.mktemp("cluster-5000")
    objects = synthetic_cluster(5000)
    cluster = folder / "cluster.json"
    cluster.write_bytes(orjson.dumps({"kind": "List", "items": objects}))
    names = [o["metadata"]["name"] for o in objects if o["kind"] == "Node"]
    port = free_port()
    command = extender_command(cluster, port)
    with running_server(command, port, 120) as url:
        yield url, names


def test_healthz_answers_while_8_schedulers_filter_5000_nodes(
    extender_5000: tuple[str, list[str]],
) -> None:
    url, names = extender_5000
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def scheduler(k: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                start.wait()
                deadline = time.monotonic() + LOAD_S
                i = 0
                while time.monotonic() < deadline or i < 2:
                    i += 1
                    p = bench_pod()
                    p["metadata"].update(name=f"s{k}-{i}", uid=f"uid-s{k}-{i}")
                    # A new kind of pod every time: every filter evaluates on a cold memo.
                    length = 512 + 8 * (100 * k + i)
                    p["metadata"]["annotations"]["kvsched.io/max-model-len"] = str(length)
                    body = orjson.dumps({"Pod": p, "Nodes": None, "NodeNames": names})
                    client.post("/filter", content=body).raise_for_status()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    with Prober(url) as prober:
        threads = [threading.Thread(target=scheduler, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not errors, errors
    assert len(prober.latencies) > 20
    # Generous: the design target (p99 < 100 ms) is the benchmark's. A loop that evaluated on
    # itself answered after the filters queued before the probe: p50 80-110 ms, p99 ~190 ms
    # here (threads: p50 ~20 ms, p99 ~40 ms).
    latencies = prober.latencies
    assert percentile(latencies, 50) < 0.05, sorted(latencies)
    assert percentile(latencies, 99) < 0.2, sorted(latencies)[-5:]
