"""Real controllers beside the e2e control plane: kube-controller-manager, KWOK and the
LeaderWorkerSet controller, each as its own process against the test API server.

- kube-controller-manager is built with the control plane (hack/controlplane/build.sh) and runs
  only the controllers that workloads need (:data:`KCM_CONTROLLERS`), with the admin kubeconfig.
- KWOK (hack/kwok/build.sh) is the fake kubelet of the nodes labelled :data:`KWOK_LABEL`; it
  plays the stages in hack/kwok/stages/ (taken from its module's kustomize/stage/) so that pods
  on those nodes go Running, report Ready and disappear at the end of their grace period.
- The LWS controller manager (hack/lws/build.sh) runs with its own cert management off; its
  webhooks are served on 127.0.0.1 with a CA made here (openssl), and the webhook
  configurations of the module (config/webhook, with its kustomize patches) are created
  pointing at that URL.

Anything that prevents a component from running raises
:class:`~support.controlplane.ControlPlaneUnavailable` with the reason, as the control plane
does, so that a fixture decides between a skip and a failure.

Environment: ``KVSCHED_KWOK_BIN`` / ``KVSCHED_LWS_BIN`` (use this binary, skip the build), plus
everything the build scripts read (``KVSCHED_KWOK_NO_BUILD``, ``KVSCHED_LWS_NO_BUILD``,
``KVSCHED_CACHE`` ...).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from scheduler.demo.run import free_port
from support.controlplane import (
    REPO_ROOT,
    ApiError,
    ControlPlane,
    ControlPlaneUnavailable,
    run_build_script,
    tail_lines,
)

if TYPE_CHECKING:
    from support.e2e import Cluster

KWOK_BUILD_SH = REPO_ROOT / "hack" / "kwok" / "build.sh"
LWS_BUILD_SH = REPO_ROOT / "hack" / "lws" / "build.sh"
KWOK_STAGES = REPO_ROOT / "hack" / "kwok" / "stages"
BUILD_TIMEOUT_S = 3600.0
"""A cold build of KWOK or the LWS manager takes minutes on 2 cores (see the scripts)."""

KWOK_LABEL = "kvsched.io/e2e-kwok"
"""Nodes with this label set to "true" are KWOK's (``--manage-nodes-with-label-selector``)."""

KCM_CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "garbage-collector-controller",
    "pod-garbage-collector-controller",
    "namespace-controller",
)
"""What Deployments and LeaderWorkerSets need (LWS makes StatefulSets). Deliberately absent:
node-lifecycle (the e2e tests' hand-made nodes have no kubelet and no lease: it would mark them
NotReady and taint them for every other test), the service-account token and CSR signing
controllers (no signing keys are passed; the apiserver runs without the ServiceAccount
admission plugin, so pods need no token), and endpoint controllers (no Service traffic)."""

LWS_POD_WEBHOOK_PATHS = ("/mutate--v1-pod", "/validate--v1-pod")


# --- building -------------------------------------------------------------------------------


def build_tool(
    script: Path, *, explicit_env: str, no_build: bool = False, timeout: float = BUILD_TIMEOUT_S
) -> Path:
    """Run a hack/<tool>/build.sh (seconds when cached) and return the binary it prints.

    ``explicit_env`` names a variable that, when set, is the binary to use instead;
    ``no_build`` sets the script's never-compile switch (it then fails unless cached).
    """
    env = dict(os.environ)
    if explicit := env.get(explicit_env):
        binary = Path(explicit)
        if not os.access(binary, os.X_OK):
            raise ControlPlaneUnavailable(f"{explicit_env}={binary} is not an executable")
        return binary
    if no_build:
        env[_no_build_var(script)] = "1"
    binary = run_build_script(script, env, timeout)
    if not os.access(binary, os.X_OK):
        raise ControlPlaneUnavailable(f"{script} printed {binary!s}, which is not executable")
    return binary


def _no_build_var(script: Path) -> str:
    return {KWOK_BUILD_SH: "KVSCHED_KWOK_NO_BUILD", LWS_BUILD_SH: "KVSCHED_LWS_NO_BUILD"}[script]


def tool_cached(script: Path, *, explicit_env: str) -> bool:
    """Whether the tool is usable without compiling anything."""
    try:
        build_tool(script, explicit_env=explicit_env, no_build=True, timeout=120)
    except ControlPlaneUnavailable:
        return False
    return True


# --- processes ------------------------------------------------------------------------------


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Component:
    """One controller process started here; its output goes to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: tuple[str, ...]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return tail_lines(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to its process group, then SIGKILL. Idempotent."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def wait_healthy(self, url: str, *, timeout: float, context: ssl.SSLContext | None) -> None:
        """Poll ``url`` until it answers 200; fail with the log if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise ControlPlaneUnavailable(
                    f"{self.name} exited with {self.process.returncode}; "
                    f"command: {' '.join(self.argv)}\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=2, context=context) as resp,
            ):
                if resp.status == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise ControlPlaneUnavailable(
                    f"{self.name} not healthy at {url} after {timeout:.0f}s\n{self.log_tail()}"
                )
            time.sleep(0.25)


def _start(
    name: str, argv: Sequence[str], state_dir: Path, env: Mapping[str, str] | None = None
) -> Component:
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"{name}.log"
    with log_path.open("ab") as log:
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        except OSError as exc:
            raise ControlPlaneUnavailable(f"cannot start {name}: {exc}") from exc
    (state_dir / f"{name}.pid").write_text(f"{process.pid}\n")
    return Component(name, process, log_path, tuple(argv))


# --- kube-controller-manager ----------------------------------------------------------------


def controller_manager_argv(
    plane: ControlPlane, port: int, cert_dir: Path, controllers: Sequence[str] = KCM_CONTROLLERS
) -> list[str]:
    kubeconfig = str(plane.kubeconfig)
    return [
        str(plane.bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        # The admin kubeconfig for everything: no per-controller service-account tokens
        # (there is no token controller and no signing key here).
        "--use-service-account-credentials=false",
        "--leader-elect=false",
        f"--controllers={','.join(controllers)}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        # Tests create objects in bursts; the defaults (20/30) throttle the controllers.
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--v=2",
    ]


def start_controller_manager(
    plane: ControlPlane, state_dir: Path, *, timeout: float = 90.0
) -> Component:
    """kube-controller-manager with :data:`KCM_CONTROLLERS`; returns once /healthz is ok."""
    binary = plane.bin_dir / "kube-controller-manager"
    if not os.access(binary, os.X_OK):
        raise ControlPlaneUnavailable(
            f"{binary} is missing: run hack/controlplane/build.sh (make controlplane), which "
            "builds just what the cache lacks"
        )
    port = free_port()
    argv = controller_manager_argv(plane, port, state_dir / "kcm-certs")
    component = _start("kube-controller-manager", argv, state_dir)
    component.wait_healthy(
        f"https://127.0.0.1:{port}/healthz", timeout=timeout, context=_insecure_context()
    )
    return component


# --- KWOK -----------------------------------------------------------------------------------


def kwok_stage_files() -> list[Path]:
    files = sorted(KWOK_STAGES.glob("*.yaml"))
    if not files:
        raise ControlPlaneUnavailable(f"no KWOK stages in {KWOK_STAGES}")
    return files


def start_kwok(
    plane: ControlPlane, binary: Path, state_dir: Path, *, timeout: float = 60.0
) -> Component:
    """KWOK managing the nodes labelled ``KWOK_LABEL=true``; returns once /healthz is ok."""
    port = free_port()
    argv = [
        str(binary),
        f"--kubeconfig={plane.kubeconfig}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-label-selector={KWOK_LABEL}=true",
        f"--server-address=127.0.0.1:{port}",
        "--node-lease-duration-seconds=40",
        "--cidr=10.240.0.0/16",
        *(f"--config={path}" for path in kwok_stage_files()),
    ]
    # kwok reads ~/.kwok/ by default: keep it off whatever a developer has there.
    component = _start("kwok", argv, state_dir, env={"KWOK_WORKDIR": str(state_dir / "kwok-home")})
    component.wait_healthy(f"http://127.0.0.1:{port}/healthz", timeout=timeout, context=None)
    return component


def kwok_node(
    cluster: Cluster,
    name: str,
    *,
    gpus: int = 8,
    labels: Mapping[str, str] | None = None,
    **node_args: Any,
) -> str:
    """A GPU node as :meth:`Cluster.node` makes it, managed by KWOK: labelled for it, and with
    ``status.phase: Running`` so that KWOK's heartbeat stage keeps its conditions fresh (its
    capacity, allocatable and labels stay as created)."""
    full = cluster.node(name, gpus=gpus, labels={KWOK_LABEL: "true", **(labels or {})}, **node_args)
    cluster.cp.request(
        "PATCH",
        f"/api/v1/nodes/{full}/status",
        {"status": {"phase": "Running"}},
        content_type="application/merge-patch+json",
    )
    return full


# --- LeaderWorkerSet ------------------------------------------------------------------------


def make_serving_cert(folder: Path, *, common_name: str = "kvsched-e2e-webhook") -> Path:
    """A throwaway CA and a serving certificate for 127.0.0.1 signed by it (openssl):
    ``ca.crt``, ``tls.crt``, ``tls.key`` in ``folder`` (controller-runtime's file names)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.ext").write_text(
        "basicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1,DNS:localhost\n"
    )
    steps = [
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
            "-subj", f"/CN={common_name}-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        [
            "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={common_name}",
        ],
        [
            "openssl", "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", "server.ext",
            "-out", "tls.crt",
        ],
    ]  # fmt: skip
    for step in steps:
        try:
            result = subprocess.run(
                step, cwd=folder, capture_output=True, text=True, check=False, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ControlPlaneUnavailable(f"openssl failed: {exc}") from exc
        if result.returncode != 0:
            raise ControlPlaneUnavailable(f"{' '.join(step)} failed:\n{tail_lines(result.stderr)}")
    return folder


def _json_pointer_replace(document: dict[str, Any], path: str, value: Any) -> None:
    """The one JSON-patch operation LWS's kustomize patches use: replace at /a/0/b."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    target: Any = document
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def lws_webhook_configurations(
    manifest_dir: Path, url: str, ca_bundle: bytes
) -> list[dict[str, Any]]:
    """The module's config/webhook manifests with its kustomize patches applied (the pod
    webhooks get their ``leaderworkerset.sigs.k8s.io/name`` objectSelector), each webhook's
    service reference replaced by ``url`` + path and the test CA; names prefixed ``lws-``
    as the module's kustomization does."""
    documents = [d for d in yaml.safe_load_all((manifest_dir / "manifests.yaml").read_text()) if d]
    patches = {
        "MutatingWebhookConfiguration": manifest_dir / "mutating-patch.yaml",
        "ValidatingWebhookConfiguration": manifest_dir / "validating-patch.yaml",
    }
    encoded = base64.b64encode(ca_bundle).decode()
    for document in documents:
        patch_file = patches.get(document["kind"])
        if patch_file is not None and patch_file.exists():
            for operation in yaml.safe_load(patch_file.read_text()) or []:
                if operation.get("op") != "replace":
                    raise ControlPlaneUnavailable(f"unsupported patch op in {patch_file}")
                _json_pointer_replace(document, operation["path"], operation["value"])
        document["metadata"] = {"name": "lws-" + document["metadata"]["name"]}
        for webhook in document["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": url + path, "caBundle": encoded}
    return documents


def _apply(plane: ControlPlane, collection: str, document: Mapping[str, Any]) -> None:
    """Create, or replace what an earlier start left (same name)."""
    name = document["metadata"]["name"]
    try:
        plane.request("POST", collection, document)
    except ApiError as exc:
        if exc.status != 409:
            raise
        current = plane.request("GET", f"{collection}/{name}")
        replacement = {
            **document,
            "metadata": {
                **document["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
        }
        plane.request("PUT", f"{collection}/{name}", replacement)


CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
MUTATING_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
VALIDATING_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


def apply_crds(plane: ControlPlane, files: Sequence[Path], *, timeout: float = 60.0) -> list[str]:
    """Create the CRDs in ``files`` and wait until each is Established; returns their names."""
    names = []
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                _apply(plane, CRD_PATH, document)
                names.append(document["metadata"]["name"])
    for name in names:
        plane.wait_for(
            f"{CRD_PATH}/{name}",
            lambda crd: any(
                c.get("type") == "Established" and c.get("status") == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            ),
            timeout=timeout,
        )
    return names


@dataclass
class LwsController:
    """The LWS controller manager and what makes it work: CRDs, webhook configurations."""

    component: Component
    webhook_port: int
    ca_file: Path
    crds: list[str]
    webhook_configurations: list[tuple[str, str]]  # (collection path, name)
    plane: ControlPlane

    @classmethod
    def start(
        cls, plane: ControlPlane, binary: Path, state_dir: Path, *, timeout: float = 90.0
    ) -> LwsController:
        """CRDs first (the manager's watches need them), then the manager, then the webhook
        configurations once its webhook server answers TLS with the test CA."""
        dist = binary.parent
        crd_files = sorted((dist / "crd").glob("*.yaml"))
        if not crd_files or not (dist / "webhook" / "manifests.yaml").exists():
            raise ControlPlaneUnavailable(
                f"{dist} lacks crd/*.yaml or webhook/manifests.yaml: rerun hack/lws/build.sh"
            )
        crds = apply_crds(plane, crd_files)
        certs = make_serving_cert(state_dir / "lws-certs")
        webhook_port, probe_port = free_port(), free_port()
        config = {
            "apiVersion": "config.lws.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(certs)},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
        }
        config_path = state_dir / "lws-config.yaml"
        state_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config))
        argv = [
            str(binary),
            f"--config={config_path}",
            f"--kubeconfig={plane.kubeconfig}",
            "--zap-log-level=info",
            "--zap-devel=false",
        ]
        component = _start(
            "lws-manager", argv, state_dir, env={"KUBECONFIG": str(plane.kubeconfig)}
        )
        component.wait_healthy(
            f"http://127.0.0.1:{probe_port}/readyz", timeout=timeout, context=None
        )
        ca_file = certs / "ca.crt"
        _wait_tls(component, webhook_port, ca_file, timeout=timeout)
        configurations = []
        url = f"https://127.0.0.1:{webhook_port}"
        for document in lws_webhook_configurations(dist / "webhook", url, ca_file.read_bytes()):
            collection = (
                MUTATING_PATH
                if document["kind"] == "MutatingWebhookConfiguration"
                else VALIDATING_PATH
            )
            _apply(plane, collection, document)
            configurations.append((collection, document["metadata"]["name"]))
        return cls(component, webhook_port, ca_file, crds, configurations, plane)

    def stop(self) -> None:
        """Remove the webhook configurations first (they would fail every LWS pod's creation
        once nothing answers), then stop the manager."""
        for collection, name in self.webhook_configurations:
            with contextlib.suppress(ApiError, OSError):
                self.plane.request("DELETE", f"{collection}/{name}")
        self.component.stop()


def _wait_tls(component: Component, port: int, ca_file: Path, *, timeout: float) -> None:
    """Until the webhook server on 127.0.0.1:port completes a TLS handshake verified by the
    test CA for the IP 127.0.0.1 (what the apiserver will check)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if not component.alive():
            raise ControlPlaneUnavailable(
                f"{component.name} exited with {component.process.returncode}\n"
                f"{component.log_tail()}"
            )
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except OSError as exc:
            last = exc
        if time.monotonic() > deadline:
            component.stop()
            raise ControlPlaneUnavailable(
                f"LWS webhook server on 127.0.0.1:{port} not serving TLS after {timeout:.0f}s "
                f"({last})\n{component.log_tail()}"
            )
        time.sleep(0.25)


def describe(plane: ControlPlane, namespace: str, label_selector: str) -> str:
    """Pods matching a selector with phase, node, conditions and events: for failure messages."""
    selector = urllib.parse.quote(label_selector, safe="")
    pods = plane.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")
    lines = []
    for pod in pods.get("items", []):
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        conditions = {c["type"]: c["status"] for c in (status.get("conditions") or [])}
        lines.append(
            f"{name}: phase={status.get('phase')} node={pod['spec'].get('nodeName')} "
            f"conditions={json.dumps(conditions)} "
            f"labels={json.dumps(pod['metadata'].get('labels'))}"
        )
        events = plane.request(
            "GET",
            f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3D{name}",
        )
        lines.extend(f"    {e.get('reason')}: {e.get('message')}" for e in events.get("items", []))
    return "\n".join(lines) or f"no pods match {label_selector}"
