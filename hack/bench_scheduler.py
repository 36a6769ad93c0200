"""Real-scheduler benchmark: kube-scheduler's throughput and placements with kvsched, with the
extender mechanism's floor, and without any extender.

Per pool size (`--nodes 500,1000`), one fresh local control plane (etcd + kube-apiserver,
hack/controlplane), the same nodes and the same pods for every profile:

1. Setup. Only the NodeInventory CRD is applied (no other manifest: no RBAC, no Deployments).
   A seeded synthetic GPU pool (scheduler.demo.synthetic.synthetic_cluster: six node kinds,
   HGX H100/H200/B200, DGX A100, A100 PCIe with NVLink bridges, L40S; 8 GPUs each; ~80% with a
   NodeInventory that lists cached models; some GPUs held by running pods) is created through
   the API with a few worker threads on keep-alive connections. No node agent reports the
   kubelet's allocation (bench_scheduler.without_agent_reports): the inventories carry no
   `allocatedSource: kubelet` list, and the running pods' GPUs are named by their
   `kvsched.io/predicted-gpus` (where the pod's node has an inventory), so kvsched writes its
   prediction on every pod it places, except in the `kvsched-agents` phase.
2. P seeded LLM pods: TP (nvidia.com/gpu) 1/2/4/8 drawn 55/25/12/8 % (`--tp-mix`), the model
   drawn by a Zipf law (s=1.1) over a popularity order of catalog models; a TP at which the
   model cannot fit any GPU kind of the pool is raised to the next one of the mix that fits
   somewhere (models that fit at none are not drawn). KV budget annotations as vLLM pods
   carry them (max-model-len 8192, max-num-seqs 4).
3. Profiles, each its own phases: "default" (kube-scheduler with only the default profile, no
   extender); "floor" (manifests/scheduler/scheduler-config.yaml pointed at
   hack/floor_extender.py: filter passes every node, prioritize scores 0, and where the
   phase's configuration has a bindVerb, bind creates the binding through the same Python
   client kvsched uses: what any HTTP extender costs); "kvsched" (`kvsched extender` in cluster
   mode and the shipped configuration). `--other-bind` adds floor and kvsched with the bindVerb
   setting the shipped configuration does not have (GPU pods only): the shipped file has none
   (kube-scheduler binds), so these are the `+bind` phases, which measure
   manifests/scheduler/scheduler-config-bind.yaml (the extender binds). "kvsched-agents"
   (`--agents`, on by default; GPU pods, backlog; where the shipped configuration has no
   bindVerb): kvsched as deployed with node agents that read the kubelet's PodResources.
   Before the phase every NodeInventory gets what such an agent writes (`allocatedSource:
   kubelet`, `allocated` = the running pods' GPUs from their predictions, `allocatableGpus` =
   every GPU), so kvsched's view is the kvsched phase's; kvsched then writes no prediction on
   a pod bound to those nodes (only its placement event), and still writes it on a pod bound
   to a node without a NodeInventory: the phase waits for records and counts them on those
   pods only. Afterwards the inventories are put back as before. The agents' own writes are
   not in the benchmark (no kubelet runs, so nothing changes to report).
4. Phases per profile. GPU pods as a backlog: the P pods created while no scheduler serves
   them, then the scheduler started; throughput = (bound - 1) / (last bind - first bind).
   The realistic mix (`--mix-pods`, 10% LLM pods drawn as above, the rest CPU-only pods that
   kube-scheduler never sends to an extender: HTTPExtender.IsInterested) twice: as a backlog
   (its throughput) and paced (the scheduler running, pod i created at i / `--mix-rate` s;
   creation-to-bind latency, GPU pods and CPU pods apart). Every bind is timed from a pod
   watch; a phase ends when all pods are bound or no bind happened for `--settle` seconds;
   then its pods are deleted and the nodes are as before. Where kvsched runs without a
   bindVerb, its work for a pod does not end at the binding: it writes the pod's
   `kvsched.io/predicted-gpus` and `kvsched.io/placement` afterwards (its effect writer). The
   same watch times when each pod is first seen carrying the prediction; after the binds, the
   phase waits (same settle and timeout) until every bound GPU pod carries it, and kvsched's
   pods/s for such a phase is "bound and recorded": (bound - 1) / (the later of the last bind
   and the last record - first bind), the rate its ratios use; the bind drain rate is shown
   beside it, and paced GPU pods get a creation-to-recorded latency. The CPU time of every process
   (etcd, kube-apiserver, kube-scheduler, the extender, this client) is sampled from /proc,
   with each process's idle rate measured before the scheduler starts (net CPU per pod),
   up to the last bind or, where kvsched records after binding, the last record.
5. Targets (DESIGN.md), same run: GPU pods through kvsched >= 0.8x the floor; the mix through
   kvsched >= 0.9x the default profile; GPU pods kvsched / default reported (aim >= 0.5x).
6. Placement metrics from where each profile put the GPU pods, replayed in bind order
   through the placement core (scheduler.core.placement.evaluate) on node states built from
   the same Node/NodeInventory/running-pod objects the extender reads: for each bound pod,
   its demand is evaluated on its node with the benchmark pods bound before it holding their
   GPUs. This gives the estimated time to ready (engine init + weight bytes / bandwidth of
   the tier the weights are in on that node). No profile chooses GPUs: there is no kubelet
   here, so the replay plays the node's part. Under every profile a pod gets what the NVIDIA
   device plugin would hand out on the node the scheduler chose
   (scheduler.simulate.kubelet.kubelet_allocation: go-gpuallocator's best-effort policy,
   exactly ported, over that node's free GPUs in the kubelet's random order, drawn from a
   generator seeded with --seed and the pod's name); those GPUs are what later pods find
   taken. "TP pods on the best set" is graded two ways: by the device plugin's GPUs (every
   profile: what the pod would run on) and, for kvsched, by its `kvsched.io/predicted-gpus`
   annotation as the pod carries it once the phase is over (written with the binding by a
   bindVerb, or after it; a prediction nothing on a node reads). A pod bound under kvsched
   without that annotation is counted as not recorded. "Best" = as good as
   topology.select.best_gpu_set over the free GPUs at that moment: for the plugin's GPUs the
   node's real free GPUs; for the prediction the free GPUs as the extender saw them (its
   earlier predictions taken: no agent reports the kubelet's truth for the benchmark's pods,
   so its view drifts from the replayed node wherever a prediction missed). The prediction hit
   rate is how often the predicted set is the plugin's. In kvsched-agents only the pods on
   nodes without an agent's report carry a prediction: only those are graded by it (and
   counted as recorded or not); the others are graded by the plugin's GPUs alone.
   Residency is the inventories' state at setup: the benchmark pods' own loads are not added
   to the caches while replaying (no controller runs), for every profile alike.

Every KubeSchedulerConfiguration gets the same overrides, made here only for the benchmark:
clientConnection qps/burst (default 1000/1000; the shipped file sets none, and kube-scheduler's
50/100 would cap the default profile's binds at ~50/s), leaderElection off (only the CRD is
applied, so kvsched-system does not exist). Everything else in the extender profiles is as
shipped (verbs, httpTimeout, weight, nodeCacheCapable, managedResources).

    python hack/bench_scheduler.py --nodes 500,1000 --pods 1000,2000 --other-bind \
        --out-md /tmp/bench.md

2000 pods at the default TP mix ask ~4,500 of the ~5,900 GPUs the 1000-node pool has free;
3000 would ask ~6,700, more than the pool has, and the run would mostly measure pending pods.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import http.client
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.controlplane import ControlPlane, ControlPlaneUnavailable  # noqa: E402
from support.e2e import Extender, kubectl, scheduler_config  # noqa: E402

from scheduler.core.assignment import GpuPrediction, uuids_for  # noqa: E402
from scheduler.core.demand import A_PREDICTED_GPUS, PodDemand, parse_demand  # noqa: E402
from scheduler.core.node import NodeState  # noqa: E402
from scheduler.core.placement import evaluate  # noqa: E402
from scheduler.demo.cluster import KINDS, inventory_object, llm_pod, node_object  # noqa: E402
from scheduler.demo.run import free_port  # noqa: E402
from scheduler.demo.synthetic import synthetic_cluster  # noqa: E402
from scheduler.models.catalog import Catalog  # noqa: E402
from scheduler.simulate.kubelet import kubelet_allocation  # noqa: E402
from scheduler.state.objects import node_state, pod_record  # noqa: E402
from topology.model import NodeTopology  # noqa: E402
from topology.select import best_gpu_set, score_gpu_set  # noqa: E402

# DESIGN.md's targets, one run, same nodes and pods: GPU pods through kvsched against the same
# scheduler with the do-nothing extender (the mechanism's floor); the mix against the default
# profile; GPU pods against the default profile (reported, aimed at).
TARGET_FLOOR = 0.8
TARGET_MIX = 0.9
AIM_DEFAULT = 0.5
NAMESPACE = "bench"
# Seconds each backlog phase measures the processes' idle CPU (see run_phase).
IDLE_WINDOW_S = 2.0
# The profiles of one size, in the order they run; each phase runs on the same nodes.
PROFILES = ("default", "floor", "kvsched")
# kvsched's profile as deployed with node agents that read the kubelet's PodResources: every
# NodeInventory says `allocatedSource: kubelet` for this phase (set_agent_reports), so kvsched
# writes no prediction on the pods it places on those nodes (GPU pods, backlog).
AGENTS = "kvsched-agents"
MIX_PREFIX = "mix-"  # the mix as a backlog: throughput
PACED_PREFIX = "paced-"  # the mix arriving at --mix-rate: creation-to-bind latency
# Share of GPU pods in the realistic mix (the rest ask for CPU and memory only).
MIX_GPU_SHARE = 0.1
CPU_POD_REQUESTS = {"cpu": "500m", "memory": "512Mi"}
PHASE_LABEL = "kvsched-bench/phase"

CRD = ROOT / "manifests" / "crd" / "nodeinventories.kvsched.io.yaml"
INVENTORIES = "/apis/kvsched.io/v1alpha1/nodeinventories"
SHIPPED_CONFIG = ROOT / "manifests" / "scheduler" / "scheduler-config.yaml"

# Popularity order for the Zipf draw: small chat models first, then 70B-class, then the big
# MoE / 405B models that need whole H200/B200 nodes.
POPULARITY = (
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "meta-llama/Llama-3.1-70B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "Qwen/Qwen3-8B",
    "openai/gpt-oss-20b",
    "Qwen/Qwen2.5-32B-Instruct",
    "google/gemma-2-9b-it",
    "meta-llama/Llama-3.3-70B-Instruct",
    "openai/gpt-oss-120b",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "Qwen/Qwen2.5-72B-Instruct",
    "google/gemma-3-27b-it",
    "microsoft/phi-4",
    "Qwen/Qwen3-30B-A3B",
    "meta-llama/Llama-3.2-3B-Instruct",
    "Qwen/Qwen3-32B",
    "deepseek-ai/DeepSeek-V3",
    "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "meta-llama/Llama-3.1-405B-Instruct",
    "Qwen/Qwen3-235B-A22B",
)
ZIPF_S = 1.1
TP_WEIGHTS = {1: 0.55, 2: 0.25, 4: 0.12, 8: 0.08}
POD_ANNOTATIONS = {"kvsched.io/max-model-len": "8192", "kvsched.io/max-num-seqs": "4"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- a small keep-alive API client (one connection per thread) ---------------------------------


class Api:
    """Bearer-token JSON calls to the apiserver over one keep-alive connection per thread
    (urllib opens a new TLS connection per call, which would make setup the slow part)."""

    def __init__(self, plane: ControlPlane) -> None:
        url = urllib.parse.urlsplit(plane.server_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443
        self.token = plane.token
        self.context = ssl.create_default_context(cafile=str(plane.ca_file))
        self.local = threading.local()

    def connect(self, timeout: float | None = 60.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout
        )

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if content_type:
            out["Content-Type"] = content_type
        return out

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
        ok: Iterable[int] = (),
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(3):
            conn: http.client.HTTPSConnection | None = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = self.connect()
            try:
                conn.request(
                    method, path, body=data, headers=self.headers(content_type if data else None)
                )
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status >= 300 and resp.status not in ok:
                raise RuntimeError(f"{method} {path} -> HTTP {resp.status}: {raw[:500]!r}")
            return json.loads(raw) if raw else None
        return None  # pragma: no cover

    def parallel(self, workers: int, calls: Sequence[Callable[[], object]]) -> None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(c) for c in calls]:
                future.result()


# ---- the workload ------------------------------------------------------------------------------


def pool_objects(nodes: int, seed: int, inventory_share: float) -> dict[str, list[dict[str, Any]]]:
    """The seeded synthetic pool as the benchmark creates it: without node agents reporting
    the kubelet's allocation (`without_agent_reports`)."""
    out: dict[str, list[dict[str, Any]]] = {"Node": [], "NodeInventory": [], "Pod": []}
    for obj in synthetic_cluster(nodes, seed=seed, inventory_share=inventory_share):
        out[obj["kind"]].append(obj)
    return without_agent_reports(out)


def without_agent_reports(
    objects: Mapping[str, list[dict[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """The pool as kvsched finds it where no node agent reads the kubelet's PodResources.

    The synthetic pool says which GPUs its running pods hold through each NodeInventory's
    `allocated` list vouched for by the kubelet (`allocatedSource: kubelet`). Without such an
    agent that list is empty and unvouched (scheduler/agent/report.py, PodResources not read),
    and what names a running pod's GPUs is kvsched's own record on the pod,
    `kvsched.io/predicted-gpus`: so the list moves onto the pods it names, the same indices
    (and the inventory's UUIDs). kvsched's view of every node is unchanged by the move; only
    where the view comes from differs, which decides whether kvsched writes its prediction on
    a pod it places (on a node whose agent reports the kubelet's truth it does not). Running
    pods on a node without a NodeInventory name no GPUs, as before.
    The `kvsched-agents` phase puts the kubelet's list back (`agent_report`)."""
    held: dict[str, dict[str, list[int]]] = {}  # node -> pod ref -> indices
    uuids: dict[str, list[str | None]] = {}
    inventories = []
    for inventory in objects["NodeInventory"]:
        name = inventory["metadata"]["name"]
        status = inventory["status"]
        if status.get("allocatedSource") != "kubelet":
            raise ValueError(
                f"NodeInventory {name}: status.allocatedSource is "
                f"{status.get('allocatedSource')!r}, the synthetic pool's is 'kubelet'"
            )
        by_pod = held[name] = {}
        for entry in status.get("allocated") or []:
            by_pod.setdefault(str(entry["pod"]), []).append(int(entry["index"]))
        uuids[name] = [g.get("uuid") for g in sorted(status["gpus"], key=lambda g: g["index"])]
        bare = copy.deepcopy(inventory)
        bare["status"].pop("allocatedSource")
        bare["status"]["allocated"] = []
        inventories.append(bare)
    pods = []
    for pod in objects["Pod"]:
        pod = copy.deepcopy(pod)
        node = pod["spec"]["nodeName"]
        meta = pod["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        if node in held:
            indices = tuple(sorted(held[node].pop(ref, [])))
            if len(indices) != gpus_of(pod):
                raise ValueError(
                    f"running pod {ref} on {node}: its inventory lists GPUs {indices}, "
                    f"the pod asks for {gpus_of(pod)}"
                )
            prediction = GpuPrediction(node, indices, uuids_for(indices, uuids[node]))
            meta.setdefault("annotations", {})[A_PREDICTED_GPUS] = prediction.encode()
        pods.append(pod)
    stray = {node: sorted(by_pod) for node, by_pod in held.items() if by_pod}
    if stray:
        raise ValueError(f"inventories list GPUs of pods that do not exist: {stray}")
    return {**objects, "NodeInventory": inventories, "Pod": pods}


def agent_report(inventory: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The status fields a node agent that reads the kubelet's PodResources writes on the
    node's NodeInventory (scheduler/inventory/status.py, manifests/crd): `allocated` = the
    GPUs the node's running pods hold, each `{index, pod: namespace/name}`, vouched for by
    the kubelet, and `allocatableGpus` = every GPU (all healthy here). The running pods' GPUs
    are taken from their `kvsched.io/predicted-gpus` (`without_agent_reports`), so kvsched
    sees the same GPUs held as in the phases without agents."""
    name = inventory["metadata"]["name"]
    allocated = []
    for pod in pods:
        if pod["spec"].get("nodeName") != name:
            continue
        raw = (pod["metadata"].get("annotations") or {}).get(A_PREDICTED_GPUS)
        if raw is None:
            continue
        prediction = GpuPrediction.decode(raw)
        ref = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        allocated += [{"index": i, "pod": ref} for i in prediction.indices]
    return {
        "allocatedSource": "kubelet",
        "allocated": sorted(allocated, key=lambda a: a["index"]),
        "allocatableGpus": sorted(g["index"] for g in inventory["status"]["gpus"]),
    }


def feasible_tps(model: str, catalog: Catalog, tps: Iterable[int]) -> set[int]:
    """TP sizes at which `model` (with the benchmark's KV budget) fits at least one GPU kind."""
    states = [
        node_state(
            node_object(f"{k.prefix}-probe", k),
            inventory_object(f"{k.prefix}-probe", k),
            [],
            catalog,
        )
        for k in KINDS
    ]
    out = set()
    for tp in tps:
        demand = parse_demand(_pod(model, tp, "probe"), catalog)
        if any(evaluate(demand, s).fits for s in states):
            out.add(tp)
    return out


def _pod(model: str, tp: int, name: str) -> dict[str, Any]:
    pod = llm_pod(name, tp, {"kvsched.io/model": model, **POD_ANNOTATIONS}, namespace=NAMESPACE)
    pod["metadata"].pop("uid")
    pod.pop("status")
    return pod


def parse_mix(text: str) -> dict[int, float]:
    """`1=55,2=25,4=12,8=8` -> {1: 55.0, ...}"""
    mix = {}
    for part in text.split(","):
        tp, _, weight = part.partition("=")
        mix[int(tp)] = float(weight)
    if not mix or any(tp < 1 or w < 0 for tp, w in mix.items()) or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError(f"bad TP mix {text!r}")
    return mix


def workload(
    count: int, seed: int, catalog: Catalog, mix: Mapping[int, float] = TP_WEIGHTS
) -> list[dict[str, Any]]:
    """`count` pods, the same for the same seed; schedulerName is set per phase.

    A model that fits no GPU kind at any TP of the mix is not drawn."""
    rng = random.Random(seed * 7919 + 1)
    tps, tp_weights = sorted(mix), [mix[t] for t in sorted(mix)]
    fits = {m: feasible_tps(m, catalog, tps) for m in POPULARITY if catalog.get(m) is not None}
    models = [m for m in POPULARITY if fits.get(m)]
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(models))]
    pods = []
    for i in range(count):
        model = rng.choices(models, weights)[0]
        tp = rng.choices(tps, tp_weights)[0]
        tp = min((t for t in fits[model] if t >= tp), default=max(fits[model]))
        pods.append(_pod(model, tp, f"llm-{i:05d}"))
    return pods


def cpu_pod(name: str) -> dict[str, Any]:
    """A pod that asks for no GPU (a web service, a batch step): kube-scheduler never calls
    an extender whose managedResources it does not request (HTTPExtender.IsInterested)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "schedulerName": "kvsched",
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": dict(CPU_POD_REQUESTS)},
                }
            ],
        },
    }


def mix_workload(
    count: int, seed: int, catalog: Catalog, mix: Mapping[int, float] = TP_WEIGHTS
) -> list[dict[str, Any]]:
    """`count` pods of which round(count x MIX_GPU_SHARE) are LLM pods (the same draw as
    `workload`, so the same TP mix and models) at seeded positions, the rest CPU-only."""
    gpu_count = round(count * MIX_GPU_SHARE)
    llm = workload(gpu_count, seed, catalog, mix)
    rng = random.Random(seed * 104729 + 3)
    positions = set(rng.sample(range(count), gpu_count))
    pods, drawn = [], iter(llm)
    for i in range(count):
        pods.append(next(drawn) if i in positions else cpu_pod(f"cpu-{i:05d}"))
    return pods


def gpus_of(pod: Mapping[str, Any]) -> int:
    limits = pod["spec"]["containers"][0]["resources"].get("limits") or {}
    return int(limits.get("nvidia.com/gpu", 0))


# ---- setup -------------------------------------------------------------------------------------


def create_pool(api: Api, objects: Mapping[str, list[dict[str, Any]]], workers: int) -> None:
    def node(obj: dict[str, Any]) -> Callable[[], object]:
        return lambda: api.call("POST", "/api/v1/nodes", obj)

    def inventory(obj: dict[str, Any]) -> Callable[[], object]:
        body = {k: v for k, v in obj.items() if k != "status"}
        name = obj["metadata"]["name"]

        def run() -> None:
            api.call("POST", INVENTORIES, body)
            api.call(
                "PATCH",
                f"{INVENTORIES}/{name}/status",
                {"status": obj["status"]},
                content_type="application/merge-patch+json",
            )

        return run

    def running(obj: dict[str, Any]) -> Callable[[], object]:
        body = copy.deepcopy(obj)
        body["metadata"].pop("uid", None)
        body.pop("status", None)
        return lambda: api.call("POST", "/api/v1/namespaces/default/pods", body)

    api.parallel(workers, [node(o) for o in objects["Node"]])
    api.parallel(workers, [inventory(o) for o in objects["NodeInventory"]])
    api.parallel(workers, [running(o) for o in objects["Pod"]])


# ---- scheduler configs -------------------------------------------------------------------------


def overrides(config: dict[str, Any], plane: ControlPlane, qps: float, burst: int) -> None:
    config["clientConnection"] = {
        **(config.get("clientConnection") or {}),
        "kubeconfig": str(plane.kubeconfig),
        "qps": qps,
        "burst": burst,
    }
    config["leaderElection"] = {"leaderElect": False}


def default_config(plane: ControlPlane, folder: Path, qps: float, burst: int) -> Path:
    config: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "profiles": [{"schedulerName": "default-scheduler"}],
    }
    overrides(config, plane, qps, burst)
    path = folder / "scheduler-default.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def shipped_binds() -> bool:
    """Whether the shipped configuration names a bindVerb (the extender binds)."""
    return bool(yaml.safe_load(SHIPPED_CONFIG.read_text())["extenders"][0].get("bindVerb"))


def extender_config(
    plane: ControlPlane,
    extender_url: str,
    folder: Path,
    qps: float,
    burst: int,
    name: str,
    bind: bool,
) -> Path:
    """The shipped configuration (manifests/scheduler/scheduler-config.yaml) with its extender
    pointed at `extender_url` (kvsched, or the floor extender: the same verbs, weight, timeout
    and managedResources either way); with `bind` differing from the shipped setting, the
    bindVerb added or removed (--other-bind)."""
    sub = folder / f"{name}-config"
    sub.mkdir(exist_ok=True)
    path: Path = scheduler_config(plane, extender_url, sub)  # shipped file, URL + kubeconfig set
    config = yaml.safe_load(path.read_text())
    overrides(config, plane, qps, burst)
    for extender in config["extenders"]:
        if bind:
            extender["bindVerb"] = "bind"
        else:
            extender.pop("bindVerb", None)
    path.write_text(yaml.safe_dump(config))
    return path


class FloorExtender:
    """hack/floor_extender.py as a child process: filter passes every node sent, prioritize
    scores 0, bind (where the phase's configuration has a bindVerb: the `+bind` phases)
    creates the binding through the same client kvsched uses."""

    def __init__(self, kubeconfig: Path, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_dir / "floor-extender.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "hack" / "floor_extender.py"),
                    "--port",
                    str(self.port),
                    "--kubeconfig",
                    str(self.kubeconfig),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"floor extender exited: {self.log_path.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/readyz", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError("floor extender not ready after 60 s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


# ---- one phase ---------------------------------------------------------------------------------


def phase_label(phase: str) -> str:
    """The phase's name as a label value (`floor+bind` -> `floor.bind`: a label value allows
    only alphanumerics, `-`, `_` and `.`)."""
    return phase.replace("+", ".")


class BindWatch:
    """Times every pod's first appearance with spec.nodeName, and its first appearance
    carrying kvsched's `kvsched.io/predicted-gpus` annotation (written with the binding by a
    bindVerb, or by kvsched's effect writer after kube-scheduler bound the pod), from a pod
    watch. `agent_nodes`: nodes whose NodeInventory says the agent reports the kubelet's
    allocation, where kvsched writes no prediction on the pod (none is waited for there)."""

    def __init__(self, api: Api, phase: str, agent_nodes: AbstractSet[str] = frozenset()) -> None:
        self.api = api
        self.selector = urllib.parse.quote(f"{PHASE_LABEL}={phase_label(phase)}")
        self.agent_nodes = agent_nodes
        self.bound: dict[str, float] = {}
        self.nodes: dict[str, str] = {}
        self.order: list[str] = []
        self.recorded: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopped = False
        self.error: BaseException | None = None
        listed = api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?limit=1")
        self.rv = listed["metadata"]["resourceVersion"]
        self.conn = api.connect(timeout=None)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        path = (
            f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1&labelSelector={self.selector}"
            f"&resourceVersion={self.rv}&timeoutSeconds=3600"
        )
        try:
            self.conn.request("GET", path, headers=self.api.headers())
            resp = self.conn.getresponse()
            while not self.stopped:
                line = resp.readline()
                if not line:
                    break
                now = time.monotonic()
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") not in ("ADDED", "MODIFIED"):
                    continue
                metadata = obj.get("metadata") or {}
                name = metadata.get("name")
                if not isinstance(name, str):
                    continue
                node = (obj.get("spec") or {}).get("nodeName")
                recorded = A_PREDICTED_GPUS in (metadata.get("annotations") or {})
                with self.lock:
                    if node and name not in self.bound:
                        self.bound[name] = now
                        self.nodes[name] = str(node)
                        self.order.append(name)
                    if recorded and name not in self.recorded:
                        self.recorded[name] = now
        except Exception as exc:  # a closed socket while stopping raises all sorts
            if not self.stopped:
                self.error = exc

    def count(self) -> int:
        with self.lock:
            return len(self.bound)

    def progress(self, wanted: AbstractSet[str]) -> tuple[int, int, int]:
        """Pods bound, pods recorded, and pods of `wanted` bound, not on an agent's node, but
        not yet recorded."""
        with self.lock:
            unrecorded = sum(
                1
                for n in self.bound
                if n in wanted and n not in self.recorded and self.nodes[n] not in self.agent_nodes
            )
            return len(self.bound), len(self.recorded), unrecorded

    def stop(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError, AttributeError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
        self.thread.join(5)


CPU_COLUMNS = ("etcd", "kube-apiserver", "kube-scheduler", "extender", "benchmark client")


@dataclass
class PhaseResult:
    profile: str
    pods: int
    bound: int
    create_s: float
    sched_start_s: float  # scheduler process start -> healthy
    first_bind_s: float  # from the time origin (see `origin`)
    last_bind_s: float
    origin: str
    wall_s: float
    order: list[str]
    final: dict[str, dict[str, Any]]
    failed_events: int
    log_notes: dict[str, int]
    extender: dict[str, float] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)
    # CPU seconds per process from the scheduler's start to the last bind, or to the last
    # record where it is later (`records`) (CpuMeter.between).
    cpu: dict[str, float] = field(default_factory=dict)
    # CPU seconds per second each process used while idle, before the scheduler started
    # (backlog phases; empty for the others).
    idle: dict[str, float] = field(default_factory=dict)
    # Seconds from each pod's creation (its POST answered) to its bind seen by the watch.
    latency: dict[str, float] = field(default_factory=dict)
    # The profile, or MIX_PREFIX / PACED_PREFIX + the profile, or an --other-bind name.
    phase: str = ""
    # Every bind's time from the origin, in order.
    bind_times: list[float] = field(default_factory=list)
    # kvsched without a bindVerb: it writes its prediction and placement on each GPU pod
    # after kube-scheduler bound it, so its work for the pods ends at the last such write.
    records: bool = False
    # The time from the origin at which each pod was first seen carrying kvsched's
    # prediction, in order; the GPU pods bound by the end of the phase, and (`records`) how
    # many of them did not carry it.
    record_times: list[float] = field(default_factory=list)
    bound_gpu: int = 0
    unrecorded: int = 0
    # Seconds from each GPU pod's creation to its prediction seen on it (`records` phases).
    record_latency: dict[str, float] = field(default_factory=dict)
    # kvsched-agents: the nodes whose NodeInventory said the agent reports the kubelet's
    # allocation. kvsched writes no prediction on a pod bound there, so `unrecorded` and the
    # wait for records count only the other nodes' GPU pods; `agent_gpu` = the bound GPU pods
    # on these nodes, `agent_annotated` = how many of them carried a prediction anyway.
    agent_nodes: frozenset[str] = frozenset()
    agent_gpu: int = 0
    agent_annotated: int = 0

    def __post_init__(self) -> None:
        self.phase = self.phase or self.profile

    def latencies(self, gpu: bool) -> list[float]:
        """Creation-to-bind seconds of the GPU pods (or of the others)."""
        return [s for name, s in self.latency.items() if name.startswith("llm-") == gpu]

    @property
    def last_record_s(self) -> float:
        return self.record_times[-1] if self.record_times else float("nan")

    @property
    def expected_records(self) -> int:
        """Bound GPU pods on which kvsched is to write its prediction: those not on an
        agent-reported node (`agent_nodes`)."""
        return self.bound_gpu - self.agent_gpu

    @property
    def done_s(self) -> float:
        """When the phase's work was done: the last bind, or the last record if later (never,
        NaN, where GPU pods it is to record were bound and kvsched recorded none of them)."""
        if not self.records or (not self.record_times and self.expected_records == 0):
            return self.last_bind_s
        if not self.record_times:
            return float("nan")
        return max(self.last_bind_s, self.last_record_s)

    @property
    def recorded_rate(self) -> float:
        """Pods/s bound and recorded: (bound - 1) / (done - first bind); NaN where kvsched
        records nothing after binding."""
        span = self.done_s - self.first_bind_s
        if not self.records or self.bound < 2 or not span > 0:
            return float("nan")
        return (self.bound - 1) / span

    @property
    def rate(self) -> float:
        """The pods/s the ratios use: bound and recorded where kvsched records after
        binding (its work is not done before), else the drain rate."""
        return self.recorded_rate if self.records else self.drain_rate

    @property
    def pending(self) -> int:
        return self.pods - self.bound

    def cpu_ms_per_pod(self, net: bool = False) -> dict[str, float]:
        """Milliseconds of CPU per bound pod, per process (CPU_COLUMNS) and `all` of them;
        `net`: less each process's idle rate (measured before the scheduler started) over
        the window, i.e. only what scheduling these pods cost."""
        window = self.cpu.get("window s", 0.0)
        per_pod = {
            c: 1000
            * max(0.0, self.cpu[c] - (self.idle.get(c, 0.0) * window if net else 0.0))
            / max(self.bound, 1)
            for c in CPU_COLUMNS
            if c in self.cpu
        }
        per_pod["all"] = sum(per_pod.values())
        return per_pod

    @property
    def drain_rate(self) -> float:
        span = self.last_bind_s - self.first_bind_s
        return (self.bound - 1) / span if self.bound > 1 and span > 0 else float("nan")

    @property
    def rate_95(self) -> float:
        """Pods/s from the first bind to the bind of 95% of the bound pods: the drain rate
        without the last few pods that bound only after a retry's backoff (unschedulable
        pods retried after others left room), which stretch (last - first)."""
        times = self.bind_times
        n = math.ceil(0.95 * len(times))
        if n < 2 or times[n - 1] <= times[0]:
            return float("nan")
        return (n - 1) / (times[n - 1] - times[0])

    @property
    def rate_from_origin(self) -> float:
        return self.bound / self.last_bind_s if self.last_bind_s > 0 else float("nan")


LOG_PATTERNS = {
    "extender errors": re.compile(r"extender|Extender"),
    "timeouts": re.compile(r"Client\.Timeout|context deadline exceeded|timeout", re.I),
    "throttling": re.compile(r"client-side throttling|Throttling request", re.I),
    "bind failures": re.compile(r"[Ff]ailed to bind|binding rejected|Error binding"),
}


def scan_log(path: Path) -> dict[str, int]:
    notes = dict.fromkeys(LOG_PATTERNS, 0)
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith(("E", "W")):  # klog severity: only errors and warnings
                continue
            for key, pattern in LOG_PATTERNS.items():
                if pattern.search(line):
                    notes[key] += 1
    return notes


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle, over all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLOCK_TICKS


@dataclass
class CpuSample:
    at: float  # time.monotonic()
    by_process: dict[str, float]
    machine: float


class CpuMeter:
    """Samples the CPU time of each process taking part in a phase, so that the report can
    say where the CPU went per bound pod. The machine has few cores and every process shares
    them: the throughput ratio is close to the ratio of CPU spent per pod."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.samples: list[CpuSample] = []

    def sample(self) -> None:
        self.samples.append(
            CpuSample(
                time.monotonic(),
                {name: process_cpu_s(pid) for name, pid in self.pids.items()},
                machine_busy_s(),
            )
        )

    @staticmethod
    def rates(first: CpuSample, last: CpuSample) -> dict[str, float]:
        """CPU seconds per second of each process between two samples."""
        span = last.at - first.at
        return (
            {
                name: (last.by_process[name] - first.by_process.get(name, 0.0)) / span
                for name in last.by_process
            }
            if span > 0
            else {}
        )

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per process (and `machine`, `window s`) from the last sample at or
        before `start` to the first at or after `end`."""
        before = [s for s in self.samples if s.at <= start] or self.samples[:1]
        after = [s for s in self.samples if s.at >= end] or self.samples[-1:]
        first, last = before[-1], after[0]
        # A process started after the first sample (the phase's kube-scheduler) had used
        # nothing before it.
        used = {name: last.by_process[name] - first.by_process.get(name, 0.0) for name in self.pids}
        used["machine"] = last.machine - first.machine
        used["window s"] = last.at - first.at
        return used


ExtenderProcess: TypeAlias = Extender | FloorExtender


def extender_pid(extender: ExtenderProcess | None) -> dict[str, int]:
    if extender is None or extender.process is None:
        return {}
    return {"extender": extender.process.pid}


def plane_pids(plane: ControlPlane) -> dict[str, int]:
    pids = {"benchmark client": os.getpid()}
    for name in ("etcd", "kube-apiserver"):
        with contextlib.suppress(OSError, ValueError):
            pids[name] = int((plane.state_dir / f"{name}.pid").read_text().strip())
    return pids


def run_phase(
    plane: ControlPlane,
    api: Api,
    phase: str,
    profile: str,
    pods: Sequence[dict[str, Any]],
    config: Path,
    args: argparse.Namespace,
    extender: ExtenderProcess | None,
    arrival: str,
    records: bool = False,
    agent_nodes: AbstractSet[str] = frozenset(),
) -> PhaseResult:
    """One phase: `pods` created (backlog: before the scheduler starts; stream: while it
    runs), every bind timed, CPU metered; then the pods are deleted again. `records`: kvsched
    writes its prediction on each GPU pod after the binding, so the phase also waits for
    those writes (same settle and timeout) and times them; except on `agent_nodes`, whose
    NodeInventory says the node agent reports the kubelet's allocation: kvsched writes
    nothing on a pod bound there, and none is waited for."""
    wall0 = time.monotonic()
    scheduler_name = "default-scheduler" if profile == "default" else "kvsched"
    bodies = []
    for pod in pods:
        body = copy.deepcopy(pod)
        body["spec"]["schedulerName"] = scheduler_name
        body["metadata"]["labels"][PHASE_LABEL] = phase_label(phase)
        bodies.append(body)
    gpu_names = {b["metadata"]["name"] for b in bodies if gpus_of(b) > 0}
    watch = BindWatch(api, phase, agent_nodes)
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    created: dict[str, float] = {}

    def create(body: dict[str, Any]) -> None:
        api.call("POST", path, body)
        created[body["metadata"]["name"]] = time.monotonic()

    if arrival == "paced":
        # Pod i is created at origin + i / rate (a steady arrival below every profile's
        # capacity: the latency a pod sees when the scheduler is not saturated).
        start: list[float] = []

        def paced(i: int, body: dict[str, Any]) -> None:
            delay = start[0] + i / args.mix_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            create(body)

        calls = [functools.partial(paced, i, b) for i, b in enumerate(bodies)]
    else:
        calls = [functools.partial(create, b) for b in bodies]
    scheduler = None
    idle: dict[str, float] = {}
    try:
        meter = CpuMeter({**plane_pids(plane), **extender_pid(extender)})
        if arrival in ("stream", "paced"):
            t_sched = time.monotonic()
            scheduler = plane.start_scheduler(config)
            sched_start = time.monotonic() - t_sched
            meter.pids["kube-scheduler"] = scheduler.pid
            meter.sample()
            origin = time.monotonic()
            if arrival == "paced":
                start.append(origin)
            api.parallel(args.workers, calls)
            create_s = time.monotonic() - origin
        else:
            t_create = time.monotonic()
            api.parallel(args.workers, calls)
            create_s = time.monotonic() - t_create
            time.sleep(2.0)  # let the apiserver (and the extender's watches) settle
            # What each process spends doing nothing for the phase (leases, watch bookmarks,
            # compaction), over IDLE_WINDOW_S, so that a slower phase is not charged for its
            # longer window (CPU per pod "net").
            meter.sample()
            time.sleep(IDLE_WINDOW_S)
            meter.sample()
            idle = meter.rates(meter.samples[-2], meter.samples[-1])
            origin = time.monotonic()
            scheduler = plane.start_scheduler(config)
            meter.pids["kube-scheduler"] = scheduler.pid
            sched_start = time.monotonic() - origin
        log(f"{phase}: {len(bodies)} pods created in {create_s:.1f}s; scheduler up")
        deadline = origin + args.timeout
        # Ends when every pod is bound and (`records`) every bound GPU pod carries kvsched's
        # prediction, or after `settle` s without a bind or a record, or at the timeout.
        last_progress, last_change = (-1, -1), time.monotonic()
        while True:
            count, recorded, unrecorded = watch.progress(gpu_names if records else set())
            now = time.monotonic()
            if (count, recorded) != last_progress:
                last_progress, last_change = (count, recorded), now
            done = count >= len(bodies) and unrecorded == 0
            if done or now - last_change > args.settle or now > deadline:
                break
            if watch.error is not None:
                raise RuntimeError(f"pod watch failed: {watch.error}")
            time.sleep(0.1)
            meter.sample()
        # A phase that drains before the loop's first sample must still end on a sample taken
        # with every process of the phase (the scheduler) in it.
        meter.sample()
        extender_stats = extender_metrics(extender) if isinstance(extender, Extender) else {}
    finally:
        watch.stop()
        if scheduler is not None:
            sched_log = plane.scheduler_log(scheduler)
            plane.stop_scheduler(scheduler)
    times = sorted(watch.bound.values())
    record_times = sorted(watch.recorded.values())
    # Read after the wait for the records: the pods as kvsched left them.
    selector = urllib.parse.quote(f"{PHASE_LABEL}={phase_label(phase)}")
    listed = api.call("GET", f"{path}?labelSelector={selector}")
    final = {p["metadata"]["name"]: p for p in listed["items"]}
    events = api.call(
        "GET", f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=reason%3DFailedScheduling"
    )
    notes = scan_log(sched_log)
    shutil.copy(sched_log, Path(args.work) / f"kube-scheduler-{phase}.log")
    bound_final = sum(1 for p in final.values() if p["spec"].get("nodeName"))
    bound_gpu = {
        name: (p["spec"]["nodeName"], A_PREDICTED_GPUS in (p["metadata"].get("annotations") or {}))
        for name, p in final.items()
        if name in gpu_names and p["spec"].get("nodeName")
    }
    on_agents = [annotated for node, annotated in bound_gpu.values() if node in agent_nodes]
    unrecorded = sum(
        1
        for node, annotated in bound_gpu.values()
        if records and not annotated and node not in agent_nodes
    )
    # The CPU window ends with the phase's work: the last bind, or the last record if later.
    end: float | None = None
    if times:
        end = max(times[-1], record_times[-1]) if records and record_times else times[-1]
    result = PhaseResult(
        phase=phase,
        profile=profile,
        pods=len(bodies),
        bound=bound_final,
        create_s=create_s,
        sched_start_s=sched_start,
        first_bind_s=(times[0] - origin) if times else float("nan"),
        last_bind_s=(times[-1] - origin) if times else float("nan"),
        origin="scheduler start" if arrival == "backlog" else "first create",
        wall_s=0.0,
        order=list(watch.order),
        final=final,
        failed_events=sum(int(e.get("count") or 1) for e in events.get("items", [])),
        log_notes=notes,
        extender=extender_stats,
        cpu=meter.between(origin, end) if end is not None else {},
        idle=idle,
        bind_times=[t - origin for t in times],
        latency={name: at - created[name] for name, at in watch.bound.items() if name in created},
        records=records,
        record_times=[t - origin for t in record_times],
        bound_gpu=len(bound_gpu),
        unrecorded=unrecorded,
        agent_nodes=frozenset(agent_nodes),
        agent_gpu=len(on_agents),
        agent_annotated=sum(on_agents),
        record_latency={
            name: at - created[name]
            for name, at in watch.recorded.items()
            if records and name in created and name in gpu_names
        },
    )
    # Reset: delete this phase's pods and wait until they are gone.
    api.call("DELETE", f"{path}?labelSelector={selector}&gracePeriodSeconds=0")
    api.call("DELETE", f"/api/v1/namespaces/{NAMESPACE}/events")
    deadline = time.monotonic() + 120
    while api.call("GET", f"{path}?limit=1")["items"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{phase}: pods not gone after 120 s")
        time.sleep(0.5)
    result.wall_s = time.monotonic() - wall0
    return result


def extender_metrics(extender: Extender) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        for verb in ("filter", "prioritize", "bind"):
            total = extender.metric("kvsched_extender_request_duration_seconds_sum", verb=verb)
            calls = extender.metric("kvsched_extender_request_duration_seconds_count", verb=verb)
            out[f"{verb} calls"] = calls
            out[f"{verb} mean ms"] = 1000 * total / calls if calls else float("nan")
        out["errors"] = extender.metric("kvsched_extender_requests_total", outcome="error")
        # Its writes of predictions and placements after kube-scheduler's bindings.
        for outcome in ("written", "failed", "dropped"):
            out[f"placement {outcome}"] = extender.metric(
                "kvsched_effects_total", effect="placement", outcome=outcome
            )
    return out


# ---- placement replay --------------------------------------------------------------------------


def initial_states(
    objects: Mapping[str, list[dict[str, Any]]], catalog: Catalog
) -> dict[str, NodeState]:
    inventories = {o["metadata"]["name"]: o for o in objects["NodeInventory"]}
    records = [pod_record(p) for p in objects["Pod"]]
    by_node: dict[str, list[Any]] = {}
    for r in records:
        by_node.setdefault(r.node or "", []).append(r)
    states = {}
    for node in objects["Node"]:
        name = node["metadata"]["name"]
        state = node_state(node, inventories.get(name), by_node.get(name, []), catalog)
        # Running pods without indices took the lowest free GPUs: make that explicit.
        states[name] = replace(state, free_gpus=state.usable_free_gpus, unindexed_busy=0)
    return states


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def as_good_as_best(topology: NodeTopology, free: frozenset[int], gpus: Sequence[int]) -> bool:
    """Whether `gpus` is as good as topology.select.best_gpu_set of its size among `free`."""
    best = best_gpu_set(topology.layout, free, len(gpus))
    chosen = score_gpu_set(topology.layout, gpus)
    return best is None or chosen.quality >= best.quality - 1e-12


def share_text(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} % ({part}/{whole})" if whole else "-"


def replay(
    result: PhaseResult,
    pods: Mapping[str, dict[str, Any]],
    initial: Mapping[str, NodeState],
    catalog: Catalog,
    seed: int,
) -> dict[str, Any]:
    """Replay the phase's binds in bind order (module docstring, item 5).

    `states` is the nodes' truth: each pod takes the GPUs the device plugin would hand out
    (kubelet_allocation, its random order seeded with `seed` and the pod's name). For kvsched,
    `seen` is the extender's own view (its predictions taken, never corrected here), on which
    its prediction is graded.
    """
    states = dict(initial)
    seen = dict(initial)
    ready: list[float] = []
    load: list[float] = []
    per_pod: dict[str, tuple[float, float]] = {}
    tiers: Counter[str] = Counter()
    tp_total = tp_best = 0
    tp_predicted = tp_predicted_best = tp_hits = 0
    predicted_pods = hits = fallbacks = 0
    misfit = conflicts = 0
    recorded = not_recorded = 0
    on_agents = annotated_on_agents = 0
    # Bind order from the watch; pods bound but missed by it (none expected) go last.
    order = [n for n in result.order if n in result.final]
    done = set(order)
    order += sorted(
        n for n, p in result.final.items() if p["spec"].get("nodeName") and n not in done
    )
    for name in order:
        node = result.final[name]["spec"].get("nodeName")
        if not node or node not in states:
            continue
        state = states[node]
        demand: PodDemand = parse_demand(pods[name], catalog)
        verdict = evaluate(demand, state)
        if verdict.fits and verdict.cold_start is not None:
            ready.append(verdict.cold_start.ready_seconds)
            load.append(verdict.cold_start.load_seconds)
            per_pod[name] = (verdict.cold_start.ready_seconds, verdict.cold_start.load_seconds)
            tiers[verdict.cold_start.tier.label] += 1
        elif not verdict.fits:
            misfit += 1
        topology = state.topology
        if demand.gpus <= 0 or topology is None:
            continue
        predicted: tuple[int, ...] | None = None
        if result.profile == "kvsched" and node in result.agent_nodes:
            # The node's agent reports the kubelet's allocation (kvsched-agents): kvsched
            # writes no prediction on the pod, so there is none to grade; one found anyway
            # is counted apart (should be 0).
            on_agents += 1
            annotated_on_agents += A_PREDICTED_GPUS in (
                result.final[name]["metadata"].get("annotations") or {}
            )
        elif result.profile == "kvsched":
            raw = (result.final[name]["metadata"].get("annotations") or {}).get(A_PREDICTED_GPUS)
            prediction = GpuPrediction.decode(raw) if raw else None
            if prediction is not None and prediction.node == node:
                predicted = tuple(prediction.indices)
            view = seen[node]
            recorded += raw is not None
            if raw is None:
                # Bound under kvsched's profile, and by the end of the phase (the wait for
                # records included) kvsched had not written its prediction on the pod.
                not_recorded += 1
            elif predicted is None or len(predicted) != demand.gpus:
                conflicts += 1  # a prediction that does not fit the pod or its node
            elif not set(predicted) <= view.free_gpus:
                conflicts += 1  # its prediction holds a GPU it had predicted for another pod
            else:
                if demand.gpus > 1:
                    tp_predicted += 1
                    tp_predicted_best += as_good_as_best(topology, view.free_gpus, predicted)
                seen[node] = replace(view, free_gpus=view.free_gpus - set(predicted))
        if len(state.free_gpus) < demand.gpus:
            conflicts += 1  # bound where the node has too few GPUs left: should not happen
            continue
        got = kubelet_allocation(
            topology, state.free_gpus, demand.gpus, random.Random(f"{seed}:{name}")
        )
        fallbacks += got.fell_back
        if predicted is not None:
            predicted_pods += 1
            hit = tuple(sorted(predicted)) == got.gpus
            hits += hit
            if demand.gpus > 1:
                tp_hits += hit
        if demand.gpus > 1:
            tp_total += 1
            tp_best += as_good_as_best(topology, state.free_gpus, got.gpus)
        states[node] = replace(state, free_gpus=state.free_gpus - set(got.gpus))
    return {
        "ready mean": statistics.fmean(ready) if ready else float("nan"),
        "ready p95": percentile(ready, 95),
        "load mean": statistics.fmean(load) if load else float("nan"),
        "tiers": dict(tiers),
        "tp best": tp_best,
        "tp total": tp_total,
        "tp predicted": tp_predicted,
        "tp predicted best": tp_predicted_best,
        "tp hits": tp_hits,
        "predicted pods": predicted_pods,
        "hits": hits,
        "plugin fallbacks": fallbacks,
        "misfit": misfit,
        "conflicts": conflicts,
        "recorded": recorded,
        "not recorded": not_recorded,
        "on agent nodes": on_agents,
        "annotated on agent nodes": annotated_on_agents,
        "per pod": per_pod,
    }


# ---- report ------------------------------------------------------------------------------------


def machine_notes() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    mem = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    load = ""
    with contextlib.suppress(OSError):
        load = f", load average at start {Path('/proc/loadavg').read_text().split()[0]}"
    return (
        f"{model}, nproc {nproc or os.cpu_count()}{mem}{load}; Python {platform.python_version()}"
    )


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def ratio_of(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def verdict(value: float, target: float) -> str:
    if math.isnan(value):
        return "n/a"
    # Enough digits that the number shown is on the side of the target it is on.
    digits = 2 if abs(value - target) >= 0.005 else 3
    word = "met" if value >= target else "missed"
    return f"**{word}** ({value:.{digits}f}x, target >= {target}x)"


def shipped_cpu(per_phase: Mapping[str, Mapping[str, float]], other: str) -> float:
    """All processes' CPU per pod of the shipped profile an --other-bind phase varies."""
    profile = other.removesuffix("+bind").removesuffix("-nobind")
    return per_phase.get(profile, {}).get("all", float("nan"))


def cpu_table(results: Sequence[PhaseResult]) -> list[str]:
    """CPU milliseconds per bound pod, per process, from the scheduler's start to the last
    bind (or the last record, `PhaseResult.done_s`), and where kvsched's extra CPU goes
    against the floor and the default profile."""
    lines = [
        "CPU per bound pod, from the scheduler's start to the last bind (ms of CPU time per "
        "pod; /proc/PID/stat of each process; `extender` is the floor extender or kvsched). "
        "For kvsched without a bindVerb the window runs to the later of the last bind and the "
        "last prediction recorded on a pod, so its writes after the bindings are counted. "
        "Per process: net of the CPU the process spends idle (its rate over "
        f"{IDLE_WINDOW_S:g} s before the scheduler starts, times the window; backlog phases), "
        "so that a slower phase is not charged for a longer window; gross = all processes "
        "without that; busy = the whole machine's non-idle time over the window, in cores "
        "(other work on the machine included):",
        "",
        "| phase | "
        + " | ".join(CPU_COLUMNS)
        + " | all processes (net) | all processes (gross) | busy cores |",
        "|---|" + "---:|" * (len(CPU_COLUMNS) + 3),
    ]
    per_phase = {}
    for r in results:
        if not r.cpu:
            continue
        per_pod = per_phase[r.phase] = r.cpu_ms_per_pod(net=True)
        gross = r.cpu_ms_per_pod()["all"]
        cells = [fmt(per_pod[c], 1) if c in per_pod else "-" for c in CPU_COLUMNS]
        busy = r.cpu["machine"] / r.cpu["window s"] if r.cpu.get("window s") else float("nan")
        lines.append(
            f"| {r.phase} | " + " | ".join(cells) + f" | {fmt(per_pod['all'], 1)} "
            f"| {fmt(gross, 1)} | {fmt(busy, 2)} |"
        )
    kv, floor, default = (per_phase.get(p) for p in PROFILES[::-1])
    others = [name for name in per_phase if name.endswith(("+bind", "-nobind"))]
    if kv and floor and default:

        def extra(name: str, base: Mapping[str, float]) -> str:
            return fmt(kv.get(name, 0.0) - base.get(name, 0.0), 1)

        lines += [
            "",
            f"GPU pods, net CPU per pod: default {fmt(default['all'], 1)} ms, floor "
            f"{fmt(floor['all'], 1)} ms, kvsched {fmt(kv['all'], 1)} ms; default / kvsched "
            f"{fmt(ratio_of(default['all'], kv['all']), 2)}, floor / kvsched "
            f"{fmt(ratio_of(floor['all'], kv['all']), 2)} (every process shares "
            f"{os.cpu_count()} cores, so the throughput ratios track these). kvsched over the "
            f"floor: extender {extra('extender', floor)} ms, kube-scheduler "
            f"{extra('kube-scheduler', floor)} ms, API server {extra('kube-apiserver', floor)} "
            f"ms, etcd {extra('etcd', floor)} ms. The floor over the default profile (what any "
            f"HTTP extender costs): extender {fmt(floor.get('extender', 0.0), 1)} ms, "
            f"kube-scheduler {fmt(floor['kube-scheduler'] - default['kube-scheduler'], 1)} ms, "
            f"API server {fmt(floor['kube-apiserver'] - default['kube-apiserver'], 1)} ms.",
        ]
    agents = per_phase.get(AGENTS)
    if agents and kv and floor:

        def over(base: Mapping[str, float], name: str) -> str:
            return fmt(agents.get(name, 0.0) - base.get(name, 0.0), 1)

        lines += [
            "",
            f"With node agents ({AGENTS}: no prediction written on the pods of agent-reported "
            f"nodes), net CPU per pod {fmt(agents['all'], 1)} ms against kvsched's "
            f"{fmt(kv['all'], 1)} ms: extender {over(kv, 'extender')} ms, API server "
            f"{over(kv, 'kube-apiserver')} ms, etcd {over(kv, 'etcd')} ms, kube-scheduler "
            f"{over(kv, 'kube-scheduler')} ms; over the floor: extender "
            f"{over(floor, 'extender')} ms, API server {over(floor, 'kube-apiserver')} ms, "
            f"etcd {over(floor, 'etcd')} ms.",
        ]
    if others:
        lines += [
            "",
            "The other bind setting (--other-bind), CPU per pod, all processes: "
            + ", ".join(
                f"{name} {fmt(per_phase[name]['all'], 1)} ms (shipped "
                f"{fmt(shipped_cpu(per_phase, name), 1)} ms)"
                for name in others
            )
            + ".",
        ]
    return lines


@dataclass
class SizeRun:
    """One pool size: its setup and every phase's result (by phase name)."""

    nodes: int
    pods: int
    mix_pods: int
    setup: dict[str, Any]
    results: dict[str, PhaseResult]
    wall_s: float


def main_rates(run: SizeRun) -> dict[str, float]:
    """GPU pods/s per profile as the ratios use it (PhaseResult.rate)."""
    return {p: run.results[p].rate for p in PROFILES if p in run.results}


def mix_rates(run: SizeRun) -> dict[str, float]:
    return {p: run.results[MIX_PREFIX + p].rate for p in PROFILES if MIX_PREFIX + p in run.results}


def rate_text(r: PhaseResult | None) -> str:
    """The rate the ratios use; where kvsched records after binding, the plain bind drain
    rate beside it, and the bound GPU pods it had not recorded by the phase's end."""
    if r is None:
        return "n/a"
    if not r.records:
        return fmt(r.drain_rate)
    missing = f", {r.unrecorded} not recorded" if r.unrecorded else ""
    return f"{fmt(r.recorded_rate)} (bind drain {fmt(r.drain_rate)}{missing})"


def percentiles_text(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 50):.2f} / {percentile(values, 95):.2f}"


def latency_text(r: PhaseResult | None, gpu: bool = True) -> str:
    return percentiles_text(r.latencies(gpu) if r is not None else [])


def record_latency_text(r: PhaseResult | None) -> str:
    """Creation-to-recorded p50 / p95 of the GPU pods, where kvsched records after binding."""
    return percentiles_text(list(r.record_latency.values()) if r is not None else [])


def paced_text(r: PhaseResult | None) -> str:
    bind = latency_text(r)
    if r is None or not r.records:
        return bind
    return f"{bind} (to recorded {record_latency_text(r)})"


def recorded_text(r: PhaseResult | None) -> str:
    """Bound GPU pods carrying kvsched's prediction at the phase's end, of those bound."""
    if r is None or not r.records:
        return "-"
    return f"{r.bound_gpu - r.unrecorded} / {r.bound_gpu}"


def agents_text(r: PhaseResult) -> str:
    """kvsched-agents: the bound GPU pods on agent-reported nodes carrying a prediction (none
    is written there), beside the count over the other nodes."""
    if not r.agent_nodes:
        return ""
    p = r.placement
    return f" (+ {p['annotated on agent nodes']} / {p['on agent nodes']} on agent-reported nodes)"


def any_records(runs: Sequence[SizeRun]) -> bool:
    return any(r.records for run in runs for r in run.results.values())


def summary(runs: Sequence[SizeRun]) -> list[str]:
    other = [
        f"{run.nodes} nodes: "
        + ", ".join(
            f"{name} {rate_text(r)} pods/s "
            f"({fmt(ratio_of(r.rate, run.results['default'].rate), 2)}x default)"
            for name, r in run.results.items()
            if name.endswith(("+bind", "-nobind"))
        )
        for run in runs
        if any(name.endswith(("+bind", "-nobind")) for name in run.results)
    ]
    lines = [
        "| nodes | GPU pods | GPU pods/s default / floor / kvsched | kvsched / floor "
        f"(target >= {TARGET_FLOOR}x) | kvsched / default (aim >= {AIM_DEFAULT}x) | "
        f"with node agents: {AGENTS} GPU pods/s | {AGENTS} / floor (target >= {TARGET_FLOOR}x) "
        f"| {AGENTS} / default (aim >= {AIM_DEFAULT}x) | mix pods "
        "| mix pods/s default / floor / kvsched | mix kvsched / default "
        f"(target >= {TARGET_MIX}x) | paced mix: GPU pods' creation to bind p50 / p95 s "
        "(default; floor; kvsched) |",
        "|---:|---:|---|---|---|---|---|---|---:|---|---|---|",
    ]
    for run in runs:
        main, mix = main_rates(run), mix_rates(run)
        mix_kv, mix_default = (mix.get(p, float("nan")) for p in ("kvsched", "default"))
        agents = run.results.get(AGENTS)
        agents_rate = agents.rate if agents is not None else float("nan")
        lines.append(
            f"| {run.nodes} | {run.pods} | "
            + " / ".join(rate_text(run.results.get(p)) for p in PROFILES)
            + f" | {verdict(ratio_of(main['kvsched'], main['floor']), TARGET_FLOOR)} | "
            f"{verdict(ratio_of(main['kvsched'], main['default']), AIM_DEFAULT)} | "
            f"{rate_text(agents)} | "
            f"{verdict(ratio_of(agents_rate, main['floor']), TARGET_FLOOR)} | "
            f"{verdict(ratio_of(agents_rate, main['default']), AIM_DEFAULT)} | "
            f"{run.mix_pods} | "
            + " / ".join(rate_text(run.results.get(MIX_PREFIX + p)) for p in PROFILES)
            + f" | {verdict(ratio_of(mix_kv, mix_default), TARGET_MIX)} | "
            + "; ".join(paced_text(run.results.get(PACED_PREFIX + p)) for p in PROFILES)
            + " |"
        )
    if any(AGENTS in run.results for run in runs):
        lines += [
            "",
            f"With node agents ({AGENTS}; GPU pods, backlog, the same pods and nodes): every "
            "NodeInventory of the pool says `allocatedSource: kubelet` (the agent reads the "
            "kubelet's PodResources), so kvsched writes no prediction on a pod it places on "
            "those nodes, and only its placement event is offered; the pods on nodes without "
            "a NodeInventory still get the write, and its pods/s is bound and recorded over "
            "those. The agents' own NodeInventory writes are not in this benchmark (no kubelet "
            "runs): they are paid with or without kvsched's bind.",
        ]
    if other:
        lines += ["", "The other bind setting (GPU pods, pods/s): " + "; ".join(other) + "."]
    return lines


def size_section(run: SizeRun, args: argparse.Namespace) -> list[str]:
    setup = run.setup
    main = [run.results[p] for p in (*PROFILES, AGENTS) if p in run.results]
    main += [r for name, r in run.results.items() if name.endswith(("+bind", "-nobind"))]
    mixed = [run.results[MIX_PREFIX + p] for p in PROFILES if MIX_PREFIX + p in run.results]
    lines = [
        f"### {run.nodes} nodes",
        "",
        f"Pool: {setup['nodes']} fake GPU nodes (8 GPUs each; {setup['inventories']} with a "
        f"NodeInventory, none reporting the kubelet's allocation except in {AGENTS}), "
        f"{setup['running']} running pods holding {setup['busy_gpus']} GPUs; "
        f"{setup['free_gpus']} GPUs free. Setup took {setup['setup_s']:.0f} s.  ",
        f"GPU pods: {run.pods} pods asking for {setup['pod_gpus']} GPUs (TP {setup['tp_mix']}), "
        f"{setup['models']} models by Zipf (s={ZIPF_S}); backlog: all created while no "
        "scheduler serves them, then the scheduler is started; pods/s (drain) = (bound - 1) "
        "/ (last bind - first bind); to 95% of binds: the same up to the bind that makes 95% "
        "of the bound pods (without the few that bound only after a retry's backoff); also "
        "from the scheduler's process start. Where kvsched runs without a bindVerb it writes "
        "each GPU pod's prediction and placement after kube-scheduler bound it: last record s "
        "= when the last pod was first seen carrying `kvsched.io/predicted-gpus`, pods/s "
        "(bound and recorded) = (bound - 1) / (the later of last bind and last record - first "
        "bind), the rate its ratios use. 'kvsched's prediction on the pod' counts the bound "
        "GPU pods that carry it once the phase is over (any kvsched phase; a bindVerb writes "
        "it with the binding). "
        f"{AGENTS} (with node agents): every NodeInventory says the agent reports the "
        "kubelet's allocation, so kvsched writes its prediction only on the pods bound to the "
        "nodes without a NodeInventory: its 'prediction on the pod' counts those (recorded / "
        "bound there), with '+ annotated / bound GPU pods on agent-reported nodes' (0 "
        "expected) beside; its last record and bound-and-recorded rate wait only for those; "
        "its prediction-graded columns count only the pods that carry a prediction (the "
        "device plugin's column grades every pod, as for every profile).  ",
        "",
        "| profile | bound / pods | pending | create s | first bind s | last bind s | "
        "pods/s (drain) | pods/s (to 95% of binds) | pods/s (from scheduler start) | "
        "last record s | pods/s (bound and recorded) | "
        "kvsched's prediction on the pod / bound GPU pods | mean ready s | p95 ready s | "
        "mean weight load s | weights from (gpu/host/disk/net) | "
        "TP>1 on best set (device plugin's GPUs) | TP>1 on best set (kvsched's prediction) | "
        "prediction = plugin's set (TP>1) | prediction = plugin's set (all) | "
        "placed where it does not fit | GPU conflicts | FailedScheduling events | phase wall s |",
        "|" + "---|" * 24,
    ]
    for r in main:
        p = r.placement
        t = p["tiers"]
        tiers = "/".join(str(t.get(k, 0)) for k in ("gpu", "host-memory", "local-disk", "network"))
        on_pod = p["recorded"] + p["not recorded"]
        lines.append(
            f"| {r.phase} | {r.bound} / {r.pods} | {r.pending} | {r.create_s:.1f} | "
            f"{fmt(r.first_bind_s)} | {fmt(r.last_bind_s)} | {fmt(r.drain_rate)} | "
            f"{fmt(r.rate_95)} | {fmt(r.rate_from_origin)} | "
            + (f"{fmt(r.last_record_s)} | {fmt(r.recorded_rate)} | " if r.records else "- | - | ")
            + (
                f"{p['recorded']} / {on_pod}{agents_text(r)} | "
                if r.profile == "kvsched"
                else "- | "
            )
            + f"{fmt(p['ready mean'])} | "
            f"{fmt(p['ready p95'])} | "
            f"{fmt(p['load mean'])} | {tiers} | {share_text(p['tp best'], p['tp total'])} | "
            f"{share_text(p['tp predicted best'], p['tp predicted'])} | "
            f"{share_text(p['tp hits'], p['tp predicted'])} | "
            f"{share_text(p['hits'], p['predicted pods'])} "
            f"| {p['misfit']} | {p['conflicts']} | {r.failed_events} | {r.wall_s:.0f} |"
        )
    default, kv = run.results.get("default"), run.results.get("kvsched")
    if default is not None and kv is not None:
        common = sorted(set(default.placement["per pod"]) & set(kv.placement["per pod"]))
        if common:
            d_ready = statistics.fmean(default.placement["per pod"][n][0] for n in common)
            k_ready = statistics.fmean(kv.placement["per pod"][n][0] for n in common)
            d_load = statistics.fmean(default.placement["per pod"][n][1] for n in common)
            k_load = statistics.fmean(kv.placement["per pod"][n][1] for n in common)
            lines += [
                "",
                f"Same pods under default and kvsched ({len(common)} pods placed where they "
                f"fit by both): mean ready {d_ready:.1f} s default vs {k_ready:.1f} s kvsched "
                f"({d_ready / k_ready:.2f}x); mean weight load {d_load:.1f} s vs {k_load:.1f} s "
                f"({d_load / k_load if k_load else float('inf'):.2f}x lower with kvsched).  ",
            ]
    paced = [run.results[PACED_PREFIX + p] for p in PROFILES if PACED_PREFIX + p in run.results]
    if mixed:
        lines += [
            "",
            f"Realistic mix: {run.mix_pods} pods, {round(run.mix_pods * MIX_GPU_SHARE)} of "
            "them LLM pods drawn as above, the rest CPU-only (requests "
            + ", ".join(f"{k} {v}" for k, v in CPU_POD_REQUESTS.items())
            + "), at seeded positions. Run twice per profile: as a backlog (like the GPU pods "
            "above; pods/s = the drain rate: the scheduler's capacity) and paced (the "
            f"scheduler running, pod i created at i / {args.mix_rate:g} s: a steady arrival, "
            "where creation-to-bind is the latency a pod sees). kube-scheduler calls an "
            "extender only for a pod that requests one of its managedResources "
            "(HTTPExtender.IsInterested, pkg/scheduler/extender.go of the k8s.io/kubernetes "
            "module built here; also before its bind): the CPU-only pods never reach the "
            "extender.",
            "",
            "| profile | backlog: bound / pods | backlog: pods/s (drain) | backlog: pods/s "
            "(bound and recorded) | paced: bound / pods "
            "| paced: last bind after last create s | paced: GPU pods' creation to bind p50 / "
            "p95 s | paced: GPU pods' creation to recorded p50 / p95 s "
            "| paced: CPU pods' creation to bind p50 / p95 s | GPU pods with kvsched's "
            "prediction recorded / bound (backlog; paced) | FailedScheduling events "
            "(backlog, paced) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in mixed:
            q = run.results.get(PACED_PREFIX + r.profile)
            lines.append(
                f"| {r.profile} | {r.bound} / {r.pods} | {fmt(r.drain_rate)} | "
                + (f"{fmt(r.recorded_rate)} | " if r.records else "- | ")
                + (
                    f"{q.bound} / {q.pods} | {fmt(q.last_bind_s - q.create_s, 2)} | "
                    f"{latency_text(q)} | {record_latency_text(q)} | "
                    f"{latency_text(q, gpu=False)} | {recorded_text(r)}; {recorded_text(q)} | "
                    f"{r.failed_events}, {q.failed_events} |"
                    if q is not None
                    else f"- | - | - | - | - | {recorded_text(r)} | {r.failed_events} |"
                )
            )
    lines += ["", *cpu_table([*main, *mixed, *paced])]
    for kv_phase in (kv, run.results.get(AGENTS)):
        if kv_phase is None or not kv_phase.extender:
            continue
        e = kv_phase.extender
        lines += [
            "",
            f"kvsched extender, {kv_phase.phase} (its /metrics, GPU pods): "
            + ", ".join(
                f"{verb} {e.get(f'{verb} calls', 0):.0f} calls, mean "
                f"{fmt(e.get(f'{verb} mean ms', float('nan')), 2)} ms"
                for verb in ("filter", "prioritize", "bind")
            )
            + f", {e.get('errors', 0):.0f} errors"
            + (
                "; predictions and placements written on pods after kube-scheduler bound them: "
                + ", ".join(
                    f"{e.get(f'placement {outcome}', 0):.0f} {outcome}"
                    for outcome in ("written", "failed", "dropped")
                )
                if kv_phase.records
                else ""
            )
            + ".  ",
        ]
    lines += [
        "",
        "Scheduler log (warnings/errors matching): "
        + "; ".join(
            f"{r.phase}: " + ", ".join(f"{k} {v}" for k, v in r.log_notes.items())
            for r in [*main, *mixed, *paced]
        )
        + f".  Wall time {run.wall_s:.0f} s.",
    ]
    return lines


def report(
    args: argparse.Namespace,
    runs: Sequence[SizeRun],
    machine: str,
    bin_dir: Path,
    total_wall: float,
) -> str:
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    ext = shipped["extenders"][0]
    timeout = ext.get("httpTimeout", "5s (default)")
    verbs = ", ".join(k for k in ("filterVerb", "prioritizeVerb", "bindVerb") if ext.get(k))
    binds = (
        "kvsched's extender binds (bindVerb); the floor's bind creates the binding through "
        "the same Python client"
        if ext.get("bindVerb")
        else "no bindVerb: kube-scheduler binds (its Go client) under both extenders; kvsched "
        "learns each binding from its pod watch and writes its GPU prediction and placement "
        "on the pod afterwards (a background writer)"
    )
    fallbacks = sum(
        r.placement.get("plugin fallbacks", 0) for run in runs for r in run.results.values()
    )
    command = "python hack/bench_scheduler.py " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in (
            ("nodes", ",".join(map(str, args.nodes))),
            ("pods", ",".join(map(str, args.pods))),
            ("mix-pods", ",".join(map(str, args.mix_pods))),
            ("mix-rate", f"{args.mix_rate:g}"),
            ("seed", args.seed),
            ("tp-mix", ",".join(f"{t}={w:g}" for t, w in sorted(args.tp_mix.items()))),
        )
    )
    if args.kvsched_extender_args:
        command += f" --kvsched-extender-args {shlex.quote(args.kvsched_extender_args)}"
    lines = [
        "## Real kube-scheduler throughput and placements: kvsched, the floor, the default profile",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Control plane: {bin_dir.parent.name} (etcd, kube-apiserver, kube-scheduler built from "
        "Go modules; no kubelet, no controller-manager)  ",
        "Profiles, each in its own phase on the same nodes and the same pods: **default** "
        "(kube-scheduler, no extender), **floor** (the shipped kvsched configuration pointed "
        "at hack/floor_extender.py: filter passes every node, prioritize scores 0; the "
        "mechanism's own cost), **kvsched** (the shipped configuration and `kvsched extender` "
        f"in cluster mode). Shipped extender settings: {verbs}; httpTimeout {timeout}, weight "
        f"{ext['weight']}, nodeCacheCapable, managedResources nvidia.com/gpu; {binds}.  ",
        f"Benchmark overrides, every profile: clientConnection qps {args.qps:g} / burst "
        f"{args.burst} and leaderElection off (the shipped config sets no qps/burst, so "
        "kube-scheduler's 50/100 would apply); percentageOfNodesToScore default.  ",
        "",
        *summary(runs),
        "",
        "Ratios are of pods/s in the same run: the drain rate, (bound - 1) / (last bind - "
        "first bind)"
        + (
            ", except where kvsched runs without a bindVerb: its work for a pod is done only "
            "when its prediction and placement are written on the pod after the binding, so "
            "its pods/s there is bound and recorded, (bound - 1) / (the later of the last bind "
            "and the last record - first bind), with the plain bind drain rate in brackets"
            if any_records(runs)
            else ""
        )
        + ". Where a target is missed, the CPU tables below say where the time goes.",
        "",
    ]
    for run in runs:
        lines += [*size_section(run, args), ""]
    lines += [
        f"Total wall time {total_wall:.0f} s.",
        "",
        "What kvsched's share of the cost is, and what was done about it (the CPU tables "
        "above: kvsched's row against the floor's is kvsched's own work; the floor's against "
        "the default profile's is what any HTTP extender costs kube-scheduler):",
        "",
        "- The bind verb. The shipped configuration has none: kube-scheduler binds each pod "
        "with its own Go client in its binding cycle, and kvsched learns each binding from its "
        "pod watch, predicting the pod's GPUs as it arrives (a gang member's from its plan; a "
        "pod bound onto GPUs a plan held releases that plan). For a pod kvsched filtered it "
        "then writes the GPU prediction and the placement on the pod (`kvsched.io/predicted-"
        "gpus`, `kvsched.io/placement`) from a background writer, off the scheduling path: "
        "durable across an extender restart, mirrored by the controller into NodeInventory, "
        "with its placement event kept (rate-limited, below). That write is part of kvsched's "
        "cost, so its rows count it: pods/s bound and recorded, and CPU up to the last record. "
        "The `+bind` rows (--other-bind) measure manifests/scheduler/scheduler-config-bind.yaml, "
        "where kvsched's bind verb writes both annotations in the binding itself: one more HTTP "
        "round trip and a Python API write inside every GPU pod's binding cycle. On a node "
        "whose NodeInventory says its agent reports the kubelet's allocation (`allocatedSource: "
        "kubelet`) kvsched skips the write (the agent's truth says which GPUs the pod got) and "
        f"offers only the placement event: the {AGENTS} row measures that deployment.",
        "- Events: a placement event per pod was one more API write per pod (the API server "
        "and etcd CPU per pod showed it). Placement events are now capped by a token bucket "
        "(5/s, burst 20), written by a background thread; the warnings an operator acts on "
        "(why a pod is pending, a pod kvsched cannot read) stay deduplicated and uncapped.",
        "- The pod watch: one watcher per kind; each event's line is split from the stream as "
        "bytes and decoded by orjson (the client library's line iterator decoded every line "
        "to str and copied its buffer once per line).",
        "- HTTP: kube-scheduler's three verbs are answered by an ASGI middleware straight from "
        "the raw body (orjson bytes out), past FastAPI's routing and per-request middleware.",
        "- Earlier: bind responses are read whole so their TLS connection is reused; the "
        "store keeps each node's parsed Node/NodeInventory facts and redoes only the GPU "
        "accounting per pod event.",
        "",
        "How the placement columns are computed: each profile's binds are replayed in bind "
        "order through the placement core (`scheduler.core.placement.evaluate`) on node states "
        "built from the same Node, NodeInventory and running-pod objects, with the pods bound "
        "before holding their GPUs. Ready = engine init 30 s + weight bytes / bandwidth of the "
        "best tier holding the weights on that node (network when none); residency as at setup "
        "(the benchmark pods' own loads are not added). No profile chooses GPUs, and "
        "no kubelet runs here, so the replay plays the node's part: under every profile each "
        "pod takes the GPUs the NVIDIA device plugin would hand out on the node the scheduler "
        "chose (go-gpuallocator's best-effort policy, exactly ported and checked against the "
        "Go module, over that node's free GPUs in the kubelet's random order, seeded; "
        "`scheduler/simulate/kubelet.py`), and later pods find those GPUs taken. 'TP>1 on "
        "best set' = pods with 2+ GPUs on a set as good as `topology.select.best_gpu_set` of "
        "the free GPUs at that moment (same quality counts), graded two ways: by the device "
        "plugin's GPUs (every profile; what the pod runs on) and, for kvsched, by its "
        "`kvsched.io/predicted-gpus` annotation, a prediction nothing on the node reads, "
        "graded on the free GPUs as the extender saw them (no agent reports the kubelet's "
        "truth for the benchmark's pods, so after a missed prediction the extender's view of "
        f"that node drifts from the replayed node; in {AGENTS} only the pods on nodes without "
        "a NodeInventory carry a prediction, and only those are graded by it). "
        "'prediction = plugin's set' = the predicted set is the one the plugin handed out "
        "(device plugin fallbacks: "
        f"{fallbacks}"
        ", where its answer was not a full set and the kubelet's own choice was taken). "
        "'Placed where it does not fit' = bound to a node whose GPUs cannot hold weights + KV "
        "budget (the engine would fail to load); those pods are left out of the ready times. "
        "'GPU conflicts' = a pod bound where the replayed node had too few free GPUs, or a "
        "kvsched prediction naming a GPU the extender had already predicted for another pod "
        "(should be 0).",
    ]
    return "\n".join(lines) + "\n"


# ---- main --------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be >= 1: {text!r}")
    return values


def per_size(values: list[int], sizes: int, flag: str) -> list[int]:
    if len(values) == 1:
        return values * sizes
    if len(values) != sizes:
        raise SystemExit(f"{flag}: give one value or one per --nodes size ({sizes})")
    return values


def other_bind_name(profile: str, bind: bool) -> str:
    return f"{profile}{'+bind' if bind else '-nobind'}"


def set_agent_reports(
    api: Api, objects: Mapping[str, list[dict[str, Any]]], workers: int, on: bool
) -> None:
    """Make every NodeInventory of the pool look written by a node agent that reads the
    kubelet's PodResources (`on`: `agent_report`), or put them back as the pool was created
    (`without_agent_reports`: no `allocatedSource`, `allocated` empty, no `allocatableGpus`;
    a merge patch's null removes a field); then check that every inventory reads so."""
    inventories = objects["NodeInventory"]

    def patch(inventory: Mapping[str, Any]) -> Callable[[], object]:
        status: dict[str, Any] = (
            agent_report(inventory, objects["Pod"])
            if on
            else {"allocatedSource": None, "allocated": [], "allocatableGpus": None}
        )
        return lambda: api.call(
            "PATCH",
            f"{INVENTORIES}/{inventory['metadata']['name']}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    api.parallel(workers, [patch(o) for o in inventories])
    listed = api.call("GET", INVENTORIES)["items"]
    reporting = sum(1 for o in listed if (o.get("status") or {}).get("allocatedSource"))
    want = len(inventories) if on else 0
    if len(listed) != len(inventories) or reporting != want:
        raise RuntimeError(
            f"NodeInventories: {reporting} of {len(listed)} report the kubelet's allocation "
            f"after the patch, expected {want} of {len(inventories)}"
        )
    log(f"{len(inventories)} NodeInventories {'agent-reported' if on else 'restored'}")


def start_extender(
    profile: str, plane: ControlPlane, work: Path, kvsched_args: Sequence[str] = ()
) -> ExtenderProcess:
    extender: ExtenderProcess = (
        FloorExtender(plane.kubeconfig, work)
        if profile == "floor"
        else Extender(plane.kubeconfig, work, extra_args=kvsched_args)
    )
    extender.start()
    return extender


def run_size(
    args: argparse.Namespace,
    nodes: int,
    pod_count: int,
    mix_count: int,
    catalog: Catalog,
    work: Path,
) -> tuple[SizeRun, Path]:
    """Every phase at one pool size, on a control plane of its own."""
    wall0 = time.monotonic()
    plane = ControlPlane.start(work / "controlplane")
    extender: ExtenderProcess | None = None
    try:
        t0 = time.monotonic()
        applied = kubectl(plane, "apply", "--server-side", "-f", str(CRD))
        if applied.returncode != 0:
            raise RuntimeError(applied.stderr)
        waited = kubectl(
            plane,
            "wait",
            "--for=condition=Established",
            "crd/nodeinventories.kvsched.io",
            "--timeout=60s",
        )
        if waited.returncode != 0:
            raise RuntimeError(waited.stderr)
        api = Api(plane)
        api.call(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        )
        objects = pool_objects(nodes, args.seed, args.inventory_share)
        create_pool(api, objects, args.workers)
        pods = workload(pod_count, args.seed, catalog, args.tp_mix)
        mixed = mix_workload(mix_count, args.seed, catalog, args.tp_mix) if mix_count else []
        initial = initial_states(objects, catalog)
        busy = sum(8 - len(s.free_gpus) for s in initial.values())
        tp_counts = Counter(gpus_of(p) for p in pods)
        setup = {
            "nodes": nodes,
            "inventories": len(objects["NodeInventory"]),
            "running": len(objects["Pod"]),
            "busy_gpus": busy,
            "free_gpus": sum(len(s.free_gpus) for s in initial.values()),
            "pod_gpus": sum(gpus_of(p) for p in pods),
            "tp_mix": " / ".join(f"{tp}: {tp_counts[tp]}" for tp in sorted(tp_counts)),
            "models": len({p["metadata"]["annotations"]["kvsched.io/model"] for p in pods}),
            "setup_s": time.monotonic() - t0,
        }
        log(f"{nodes} nodes: pool ready in {setup['setup_s']:.1f}s: {setup}")
        by_name = {p["metadata"]["name"]: p for p in pods}
        results: dict[str, PhaseResult] = {}
        default_path = default_config(plane, work, args.qps, args.burst)
        shipped = shipped_binds()
        # (phase name, profile, bind); kvsched-agents right after kvsched's own phases.
        runs: list[tuple[str, str, bool]] = [(p, p, shipped) for p in PROFILES]
        if args.agents and not shipped:
            runs.append((AGENTS, "kvsched", shipped))
        elif args.agents:
            log(f"{AGENTS} skipped: the shipped configuration has a bindVerb")
        if args.other_bind:
            runs += [
                (other_bind_name(p, not shipped), p, not shipped)
                for p in PROFILES
                if p != "default"
            ]
        agent_nodes = frozenset(o["metadata"]["name"] for o in objects["NodeInventory"])
        for name, profile, bind in runs:
            agents = name == AGENTS
            if agents:
                # Before the extender starts, so that it reads the agents' reports at its sync.
                set_agent_reports(api, objects, args.workers, on=True)
            try:
                config = default_path
                if profile != "default":
                    extender = start_extender(
                        profile, plane, work, shlex.split(args.kvsched_extender_args)
                    )
                    config = extender_config(
                        plane, extender.url, work, args.qps, args.burst, name, bind
                    )
                phases = [(name, pods, "backlog")]
                if mixed and name == profile:
                    phases.append((MIX_PREFIX + profile, mixed, "backlog"))
                    phases.append((PACED_PREFIX + profile, mixed, "paced"))
                # kvsched without a bindVerb writes its predictions after kube-scheduler binds
                # (with node agents: only on the pods of nodes without an agent's report).
                records = profile == "kvsched" and not bind
                for phase, phase_pods, arrival in phases:
                    result = run_phase(
                        plane,
                        api,
                        phase,
                        profile,
                        phase_pods,
                        config,
                        args,
                        extender,
                        arrival,
                        records,
                        agent_nodes if agents else frozenset(),
                    )
                    results[phase] = result
                    recorded = (
                        f", {len(result.record_times)} recorded ({result.unrecorded} bound GPU "
                        f"pods not; {result.agent_gpu} on agent-reported nodes, none expected, "
                        f"{result.agent_annotated} annotated), {fmt(result.recorded_rate)} "
                        "pods/s (bound and recorded)"
                        if records
                        else ""
                    )
                    log(
                        f"{nodes} nodes, {phase}: {result.bound}/{result.pods} bound, "
                        f"{fmt(result.drain_rate)} pods/s (drain), "
                        f"{fmt(result.rate_from_origin)} pods/s (from {result.origin}){recorded}"
                    )
            finally:
                if extender is not None:
                    extender.stop()
                    extender = None
                if agents:
                    # Later phases find the inventories as before.
                    set_agent_reports(api, objects, args.workers, on=False)
        for name, _, _ in runs:
            results[name].placement = replay(results[name], by_name, initial, catalog, args.seed)
    finally:
        if extender is not None:
            extender.stop()
        plane.stop()
    run = SizeRun(nodes, pod_count, mix_count, setup, results, time.monotonic() - wall0)
    return run, plane.bin_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nodes", type=int_list, default=[500, 1000], help="pool sizes, e.g. 500,1000"
    )
    parser.add_argument(
        "--pods",
        type=int_list,
        default=[1000, 2000],
        help="GPU pods per size (one value, or one per --nodes); at the default TP mix 2000 "
        "pods ask ~4,500 of the ~5,900 GPUs 1000 nodes have free",
    )
    parser.add_argument(
        "--mix-pods",
        type=int_list,
        help=f"pods of the realistic mix per size ({MIX_GPU_SHARE * 100:.0f}%% of them GPU pods; "
        "default: as --pods); 0 is not allowed, use --no-mix",
    )
    parser.add_argument(
        "--mix", action=argparse.BooleanOptionalAction, default=True, help="the mix phases"
    )
    parser.add_argument(
        "--mix-rate",
        type=float,
        default=100.0,
        help="pods/s at which the paced mix arrives (below every profile's capacity here)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--inventory-share", type=float, default=0.8)
    parser.add_argument(
        "--tp-mix",
        type=parse_mix,
        default=TP_WEIGHTS,
        help="TP sizes and their weights, e.g. 1=55,2=25,4=12,8=8 (the default)",
    )
    parser.add_argument("--workers", type=int, default=8, help="client threads creating objects")
    parser.add_argument("--qps", type=float, default=1000.0)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    parser.add_argument(
        "--settle", type=float, default=20.0, help="end a phase after this long without a bind"
    )
    parser.add_argument(
        "--other-bind",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run floor and kvsched (GPU pods) with the bindVerb the shipped configuration "
        "does not have (added, or removed): what the bind verb costs",
    )
    parser.add_argument(
        "--agents",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"the {AGENTS} phase (GPU pods): kvsched with every NodeInventory reported by a "
        "node agent that reads the kubelet's allocation (where the shipped configuration has "
        "no bindVerb)",
    )
    parser.add_argument(
        "--kvsched-extender-args",
        default="",
        help="extra `kvsched extender` flags for the kvsched phases, for experiments (e.g. "
        "'--no-events': what its events cost); the command line in the report shows them",
    )
    parser.add_argument("--out-md", type=Path, help="write the markdown section here too")
    parser.add_argument("--work", help="state folder (default: a new temp dir, removed after)")
    args = parser.parse_args(argv)
    sizes = len(args.nodes)
    args.pods = per_size(args.pods, sizes, "--pods")
    args.mix_pods = per_size(args.mix_pods or args.pods, sizes, "--mix-pods")
    mix_counts = args.mix_pods if args.mix else [0] * sizes

    wall0 = time.monotonic()
    machine = machine_notes()
    keep = args.work is not None
    work = Path(args.work or tempfile.mkdtemp(prefix="kvsched-bench-sched-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    catalog = Catalog.builtin()
    runs: list[SizeRun] = []
    bin_dir: Path | None = None
    try:
        for nodes, pod_count, mix_count in zip(args.nodes, args.pods, mix_counts, strict=True):
            size_work = work / f"nodes-{nodes}"
            size_work.mkdir(exist_ok=True)
            try:
                run, bin_dir = run_size(args, nodes, pod_count, mix_count, catalog, size_work)
            except ControlPlaneUnavailable as exc:
                print(f"bench-scheduler: control plane unavailable: {exc}", file=sys.stderr)
                return 2
            runs.append(run)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    assert bin_dir is not None
    text = report(args, runs, machine, bin_dir, time.monotonic() - wall0)
    print(text)
    if args.out_md:
        args.out_md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
