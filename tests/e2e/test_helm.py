"""`helm install` of charts/kvsched/ into a real kube-apiserver, then a pod scheduled through the
configuration the chart installed.

The chart's objects carry the same names as manifests/ (cluster-scoped CRD and ClusterRoles
included), which the session's shared control plane already has from `kubectl apply -k
manifests/` (the manifests_applied fixture). So this module starts a control plane of its own,
from the binaries the shared one was started with.

helm is helm.sh/helm/v4 built by hack/helm/build.sh (`make helm`; KVSCHED_HELM_BIN names another
binary). Like the other Go-built tools: built here when the e2e tests are required (CI,
KVSCHED_E2E=1), used when cached, else the module is skipped with how to build it. The installed
Deployments need the kvsched image, which nobody can pull here (and the control plane has no
kubelet): the extender and kube-scheduler run as local processes, kube-scheduler with the
KubeSchedulerConfiguration read back from the ConfigMap the chart installed (only its kubeconfig
and extender URL substituted, as for manifests/ in the other e2e tests).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.controlplane import REPO_ROOT, ApiError, ControlPlane, ControlPlaneUnavailable
from support.e2e import NAMESPACE, Cluster, Extender, SchedulerProcess, wait_until
from support.helm import find_helm as support_find_helm

from topology.presets import PRESETS

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "charts" / "kvsched"
RELEASE = "kvsched"
RELEASE_NS = "kvsched-system"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


def _mode() -> str:
    if os.environ.get("CI"):
        return "required"
    return {"1": "required", "0": "off"}.get(os.environ.get("KVSCHED_E2E", ""), "auto")


def find_helm() -> Path:
    mode = _mode()
    if mode == "off":
        pytest.skip("KVSCHED_E2E=0: e2e tests disabled")
    return support_find_helm(required=mode == "required")


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    return {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


@pytest.fixture(scope="module")
def plane(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """A control plane of this module's own (see the module docstring); `control_plane` is
    asked for so that the e2e switches and the binaries are the shared one's."""
    del control_plane
    try:
        own = ControlPlane.start(tmp_path_factory.mktemp("helm-cp"))
    except ControlPlaneUnavailable as exc:
        pytest.fail(f"second control plane for the helm test did not start: {exc}", pytrace=False)
    yield own
    own.stop()


@pytest.fixture(scope="module")
def installed(
    plane: ControlPlane, helm_home: dict[str, str]
) -> Iterator[subprocess.CompletedProcess[str]]:
    helm = find_helm()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm), "--kubeconfig", str(plane.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO_ROOT,
            env={**os.environ, **helm_home},
            timeout=300,
        )

    result = run("install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace")
    assert result.returncode == 0, result.stdout + result.stderr
    yield result
    listed = run("list", "--namespace", RELEASE_NS, "--short")
    assert listed.stdout.split() == [RELEASE], listed.stdout + listed.stderr
    uninstalled = run("uninstall", RELEASE, "--namespace", RELEASE_NS)
    assert uninstalled.returncode == 0, uninstalled.stderr


def exists(plane: ControlPlane, path: str) -> bool:
    try:
        plane.request("GET", path)
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_helm_install_creates_the_objects(
    plane: ControlPlane, installed: subprocess.CompletedProcess[str]
) -> None:
    assert "STATUS: deployed" in installed.stdout
    ns = f"/namespaces/{RELEASE_NS}"
    paths = [
        f"/api/v1{ns}",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/nodeinventories.kvsched.io",
        f"/api/v1{ns}/configmaps/kvsched-scheduler-config",
        f"/apis/apps/v1{ns}/deployments/kvsched-scheduler",
        f"/apis/apps/v1{ns}/deployments/kvsched-controller",
        f"/apis/apps/v1{ns}/daemonsets/kvsched-agent",
        *(f"/api/v1{ns}/serviceaccounts/kvsched-{c}" for c in ("scheduler", "controller", "agent")),
        *(
            f"/apis/rbac.authorization.k8s.io/v1/clusterroles/kvsched-{c}"
            for c in ("extender", "controller", "agent")
        ),
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kvsched-scheduler-as-kube-scheduler",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings/kvsched-scheduler-auth-reader",
        f"/apis/rbac.authorization.k8s.io/v1{ns}/roles/kvsched-scheduler-leader-election",
        f"/apis/rbac.authorization.k8s.io/v1{ns}/roles/kvsched-controller-leader-election",
        f"/api/v1{ns}/secrets/sh.helm.release.v1.{RELEASE}.v1",  # helm's release record
    ]
    missing = [p for p in paths if not exists(plane, p)]
    assert not missing, missing
    crd = plane.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/nodeinventories.kvsched.io"
    )
    assert any(
        c["type"] == "Established" and c["status"] == "True"
        for c in ((crd.get("status") or {}).get("conditions") or [])
    )
    deployment = plane.request("GET", f"/apis/apps/v1{ns}/deployments/kvsched-scheduler")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["kube-scheduler", "kvsched-extender"]


def test_pod_schedules_through_the_installed_configuration(
    plane: ControlPlane,
    installed: subprocess.CompletedProcess[str],
    tmp_path: Path,
) -> None:
    configmap = plane.request(
        "GET", f"/api/v1/namespaces/{RELEASE_NS}/configmaps/kvsched-scheduler-config"
    )
    config = yaml.safe_load(configmap["data"]["scheduler-config.yaml"])
    assert config["leaderElection"]["resourceNamespace"] == RELEASE_NS

    extender = Extender(plane.kubeconfig, tmp_path)
    extender.start()
    config["clientConnection"]["kubeconfig"] = str(plane.kubeconfig)
    (entry,) = config["extenders"]
    entry["urlPrefix"] = extender.url
    path = tmp_path / "scheduler-config.yaml"
    path.write_text(yaml.safe_dump(config))
    scheduler = SchedulerProcess(plane, path)
    plane.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    )
    cluster = Cluster(plane, "helm")
    try:
        node = cluster.node("gpu")
        cluster.inventory(node, PRESETS["hgx-h100-8"])
        wait_until(lambda: extender.knows(node), timeout=30, what=f"extender sees {node}")
        cluster.pod("llama", gpus=2, annotations={"kvsched.io/model": LLAMA_8B})
        pod = cluster.wait_placed("llama")
        assert pod["spec"]["nodeName"] == node
        # Bound by kube-scheduler; kvsched wrote the GPUs it predicted on the pod.
        assert "kvsched.io/predicted-gpus" in pod["metadata"]["annotations"]
    finally:
        cluster.cleanup()
        scheduler.stop()
        extender.stop()
