"""Helpers for e2e tests: fake GPU nodes, inventories and pods on a real API server, and the
kvsched extender run as its own process in cluster mode."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from scheduler.demo.run import free_port
from scheduler.inventory.status import format_time, now
from support import k8s
from support.controlplane import REPO_ROOT, ApiError, ControlPlane
from topology.model import NodeTopology

NAMESPACE = "e2e"
SCHEDULER_CONFIG = REPO_ROOT / "manifests" / "scheduler" / "scheduler-config.yaml"
PREDICTED_GPUS = "kvsched.io/predicted-gpus"
# The other setting: the extender binds (bindVerb).
BIND_SCHEDULER_CONFIG = REPO_ROOT / "manifests" / "scheduler" / "scheduler-config-bind.yaml"
INVENTORY_PATH = "/apis/kvsched.io/v1alpha1/nodeinventories"


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout}s: {what or condition}")
        time.sleep(interval)


class ChildProcess:
    """A kvsched process the tests start and stop."""

    process: subprocess.Popen[bytes] | None = None

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL: a crash), then wait; SIGKILL if it does not go."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


class Extender(ChildProcess):
    """`kvsched extender` in cluster mode as a child process; restartable."""

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        watch_timeout_s: int = 60,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.watch_timeout_s = watch_timeout_s
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"extender-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scheduler.cli",
                "extender",
                "--kubeconfig",
                str(self.kubeconfig),
                "--port",
                str(self.port),
                "--log-format",
                "text",
                "--watch-timeout-seconds",
                str(self.watch_timeout_s),
                *self.extra_args,
            ],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_until(self.ready, timeout=60, what=f"extender ready on {self.url}")

    def explain(self, node: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        """The extender's /explain rows for `node`, asked with an empty probe pod."""
        body = {
            "Pod": {"metadata": {"name": "probe", "namespace": namespace}, "spec": {}},
            "NodeNames": [node],
        }
        request = urllib.request.Request(
            self.url + "/explain",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            rows: list[dict[str, Any]] = json.loads(response.read())["nodes"]
        return rows

    def knows(self, node: str) -> bool:
        """Whether `node` is in the extender's view (its /explain stops calling it unknown)."""
        rows = self.explain(node)
        return bool(rows) and "unknown to kvsched" not in rows[0]["reason"]

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"extender exited with {self.process.returncode}: {self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def restart(self) -> None:
        self.stop(kill=True)
        self.start()

    def log(self) -> str:
        path = self.log_dir / f"extender-{self.starts}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample over the series matching `labels`."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            match = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
            if not match or match.group(1) != name:
                continue
            series = match.group(2) or ""
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(match.group(3))
        return total


class ControllerProcess(ChildProcess):
    """`kvsched controller` as a child process, with its own metrics port and identity."""

    def __init__(self, kubeconfig: Path, log_dir: Path, identity: str, **flags: str) -> None:
        self.kubeconfig = kubeconfig
        self.identity = identity
        self.metrics_port = free_port()
        self.log_path = log_dir / f"controller-{identity}.log"
        self.flags = flags
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "scheduler.cli",
            "controller",
            "--kubeconfig",
            str(self.kubeconfig),
            "--identity",
            self.identity,
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-host",
            "127.0.0.1",
            "--log-format",
            "text",
            "--lease-duration-seconds",
            "6",
            "--resync-seconds",
            "2",
        ]
        for key, value in self.flags.items():
            args += [f"--{key.replace('_', '-')}", value]
        self.process = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def leading(self) -> bool:
        return self.metric("kvsched_controller_leader") == 1.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


class SchedulerProcess:
    """kube-scheduler with a given config; `ensure_running` restarts it the way its Deployment
    would (it exits by design when it loses its leader lease, e.g. while the API server is
    down)."""

    def __init__(self, plane: ControlPlane, config: Path) -> None:
        self.plane = plane
        self.config = config
        self.process = plane.start_scheduler(config)
        self.restarts = 0

    def ensure_running(self) -> None:
        if self.process.poll() is not None:
            self.restarts += 1
            self.process = self.plane.start_scheduler(self.config)

    def stop(self) -> None:
        self.plane.stop_scheduler(self.process)


def kubectl(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """The kubectl built with the control plane, against it, from the repository root."""
    return subprocess.run(
        [str(plane.bin_dir / "kubectl"), "--kubeconfig", str(plane.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=120,
    )


def scheduler_config(
    control_plane: ControlPlane, extender_url: str, folder: Path, source: Path = SCHEDULER_CONFIG
) -> Path:
    """manifests/scheduler/scheduler-config.yaml (or `source`) with only the kubeconfig and URL
    substituted."""
    config = yaml.safe_load(source.read_text())
    config["clientConnection"]["kubeconfig"] = str(control_plane.kubeconfig)
    for extender in config["extenders"]:
        extender["urlPrefix"] = extender_url
    path = folder / "scheduler-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Cluster:
    """Object helpers over one control plane; every object a test makes is labelled with its
    test id so that tests scheduling at once never see each other's nodes."""

    def __init__(self, control_plane: ControlPlane, test_id: str) -> None:
        self.cp = control_plane
        self.test_id = test_id
        self.nodes: list[str] = []
        self.pods: list[str] = []

    # ---- nodes ---------------------------------------------------------------------------

    def node(
        self,
        name: str,
        *,
        gpus: int = 8,
        product: str = "NVIDIA-H100-80GB-HBM3",
        memory_mib: int = 81559,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        full = f"{self.test_id}-{name}"
        self.cp.request(
            "POST",
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": full,
                    "labels": {
                        "kubernetes.io/hostname": full,
                        "e2e-test": self.test_id,
                        "nvidia.com/gpu.product": product,
                        "nvidia.com/gpu.memory": str(memory_mib),
                        "nvidia.com/gpu.count": str(gpus),
                        **(labels or {}),
                    },
                },
                "status": {
                    "capacity": {
                        "cpu": "64",
                        "memory": "512Gi",
                        "pods": "110",
                        "nvidia.com/gpu": str(gpus),
                    },
                    "allocatable": {
                        "cpu": "64",
                        "memory": "512Gi",
                        "pods": "110",
                        "nvidia.com/gpu": str(gpus),
                    },
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "fake node",
                            "lastHeartbeatTime": None,
                        }
                    ],
                },
            },
        )
        self.nodes.append(full)
        return full

    def inventory(
        self,
        node: str,
        topology: NodeTopology,
        *,
        memory_bytes: int = 81559 * 2**20,
        product: str = "H100-SXM-80GB",
        models: Sequence[Mapping[str, Any]] = (),
        allocated: Sequence[tuple[int, str]] = (),
        allocated_source: str | None = None,
    ) -> None:
        """A NodeInventory as an agent writes it. `allocated_source`: "kubelet" when the
        `allocated` list stands for the kubelet's report (an agent reading PodResources; kvsched
        then writes no prediction on pods bound there); None (default) as an agent without the
        PodResources socket writes it, where kvsched's predictions are the record."""
        self.cp.request(
            "POST",
            INVENTORY_PATH,
            {
                "apiVersion": "kvsched.io/v1alpha1",
                "kind": "NodeInventory",
                "metadata": {"name": node},
            },
        )
        # Observed now: the controller trusts an agent report only while it is fresh.
        status = k8s.inventory(
            node,
            topology,
            memory_bytes=memory_bytes,
            product=product,
            models=models,
            allocated=allocated,
            allocated_source=allocated_source,
            cache_bytes=2**41,
            observed_at=format_time(now()),
        )["status"]
        self.cp.request(
            "PATCH",
            f"{INVENTORY_PATH}/{node}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    # ---- pods ----------------------------------------------------------------------------

    def pod(
        self,
        name: str,
        *,
        gpus: int = 1,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        scheduler: str = "kvsched",
        gated: bool = False,
    ) -> str:
        """A pending pod for `scheduler`; `gated` holds it back with a scheduling gate (see
        `ungate`), so that it exists (a gang member the planner counts) but is not scheduled."""
        container = _container(gpus)
        spec: dict[str, Any] = {
            "schedulerName": scheduler,
            "nodeSelector": {"e2e-test": self.test_id},
            "containers": [container],
        }
        if gated:
            spec["schedulingGates"] = [{"name": "kvsched.io/e2e-hold"}]
        self._create_pod(name, spec, annotations, labels)
        return name

    def ungate(self, name: str) -> None:
        self.cp.request(
            "PATCH",
            f"/api/v1/namespaces/{NAMESPACE}/pods/{name}",
            {"spec": {"schedulingGates": None}},
            content_type="application/merge-patch+json",
        )

    def bound_nodes(self, names: list[str]) -> dict[str, str | None]:
        return {n: self.get_pod(n)["spec"].get("nodeName") for n in names}

    def get_pod(self, name: str) -> dict[str, Any]:
        pod: dict[str, Any] = self.cp.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
        return pod

    def wait_bound(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        pod: dict[str, Any] = wait_until(
            lambda: (p := self.get_pod(name))["spec"].get("nodeName") and p,
            timeout=timeout,
            what=f"pod {name} bound",
        )
        return pod

    def wait_placed(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """The pod once bound and carrying kvsched's GPU prediction: with the shipped
        configuration kube-scheduler binds, and kvsched writes `kvsched.io/predicted-gpus` and
        `kvsched.io/placement` just after the binding."""
        pod: dict[str, Any] = wait_until(
            lambda: (
                (p := self.get_pod(name))["spec"].get("nodeName")
                and PREDICTED_GPUS in (p["metadata"].get("annotations") or {})
                and p
            ),
            timeout=timeout,
            what=f"pod {name} bound with kvsched's prediction on it",
        )
        return pod

    def events(self, name: str) -> list[str]:
        answer = self.cp.request(
            "GET",
            f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=involvedObject.name%3D{name}",
        )
        return [str(e.get("message", "")) for e in answer.get("items", [])]

    def wait_event(self, name: str, text: str, timeout: float = 60.0) -> str:
        message: str = wait_until(
            lambda: next((m for m in self.events(name) if text in m), None),
            timeout=timeout,
            what=f"event on {name} containing {text!r}",
        )
        return message

    def _create_pod(
        self,
        name: str,
        spec: Mapping[str, Any],
        annotations: Mapping[str, str] | None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.cp.request(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "annotations": dict(annotations or {}),
                    "labels": {"e2e-test": self.test_id, **(labels or {})},
                },
                "spec": dict(spec),
            },
        )
        self.pods.append(name)

    def run_pod(
        self, name: str, node: str, *, gpus: int = 1, annotations: Mapping[str, str] | None = None
    ) -> str:
        """A pod already on `node` (nodeName set at create, as a kubelet-era pod) and marked
        Running and Ready through the status subresource, as the kubelet reports an engine
        that has loaded its weights: what the controller learns residency from."""
        container = _container(gpus)
        self._create_pod(name, {"nodeName": node, "containers": [container]}, annotations)
        self.cp.request(
            "PATCH",
            f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status",
            {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
            content_type="application/merge-patch+json",
        )
        return name

    def get_inventory(self, node: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.cp.request("GET", f"{INVENTORY_PATH}/{node}")
        except ApiError:
            return None
        return found

    def wait_tier(self, node: str, model: str, tier: str, timeout: float = 30.0) -> None:
        """Until the node's inventory lists `model` in `tier`."""
        wait_until(
            lambda: self.cached_models(node).get(model) == tier,
            timeout=timeout,
            what=f"{model} in {tier} on {node}: {self.cached_models(node)}",
        )

    def cached_models(self, node: str) -> dict[str, str]:
        """model name -> tier, as the node's inventory says now."""
        inventory = self.get_inventory(node) or {}
        models = ((inventory.get("status") or {}).get("modelCache") or {}).get("models") or []
        return {m["name"].lower(): m["tier"] for m in models}

    def delete_pod(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.cp.request(
                "DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}?gracePeriodSeconds=0"
            )

    def cleanup(self) -> None:
        for pod in self.pods:
            self.delete_pod(pod)
        for node in self.nodes:
            with contextlib.suppress(ApiError):
                self.cp.request("DELETE", f"{INVENTORY_PATH}/{node}")
            with contextlib.suppress(ApiError):
                self.cp.request("DELETE", f"/api/v1/nodes/{node}")


def _container(gpus: int) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "vllm/vllm-openai:v0.11.0"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return container


@contextlib.contextmanager
def cluster_objects(control_plane: ControlPlane, test_id: str) -> Iterator[Cluster]:
    cluster = Cluster(control_plane, test_id)
    try:
        yield cluster
    finally:
        cluster.cleanup()


def run_agent_once(
    cluster: Cluster,
    node: str,
    model_cache: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`kvsched agent --once` for `node` against the cluster (as the DaemonSet runs it each
    cycle), reading `model_cache`, with `args` added; its output captured, its exit not checked."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "scheduler.cli",
            "agent",
            "--node-name",
            node,
            "--model-cache",
            str(model_cache),
            *args,
            "--once",
            "--kubeconfig",
            str(cluster.cp.kubeconfig),
            "--log-format",
            "text",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
