"""Session fixtures for e2e tests: a real etcd + kube-apiserver + kube-scheduler, the
manifests applied with kubectl, and the kvsched extender in cluster mode.

Whether e2e tests run:
- in CI (CI set): always; a control plane that cannot be built or started fails the run;
- KVSCHED_E2E=1: always, building the control plane if needed (~8 min once, then cached);
- KVSCHED_E2E=0: skipped;
- otherwise: run when the binaries are cached (`make controlplane`), else skipped with a
  message saying how to enable them.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import pytest
from support.controlplane import BUILD_SH, ControlPlane, ControlPlaneUnavailable
from support.e2e import (
    NAMESPACE,
    Cluster,
    Extender,
    SchedulerProcess,
    cluster_objects,
    kubectl,
    scheduler_config,
)

ENABLE_HINT = (
    "e2e tests need the control plane built from Go modules: run `make controlplane` once "
    "(~8 min, cached in ~/.cache/kvsched), or set KVSCHED_E2E=1 to build it during the tests"
)


def _mode() -> str:
    if os.environ.get("CI"):
        return "required"
    return {"1": "required", "0": "off"}.get(os.environ.get("KVSCHED_E2E", ""), "auto")


def _cached() -> bool:
    result = subprocess.run(
        ["bash", str(BUILD_SH)],
        env={**os.environ, "KVSCHED_CP_NO_BUILD": "1"},
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    mode = _mode()
    if mode == "off":
        pytest.skip("KVSCHED_E2E=0: e2e tests disabled")
    if mode == "auto" and not _cached():
        pytest.skip(ENABLE_HINT)
    try:
        plane = ControlPlane.start(tmp_path_factory.mktemp("controlplane"))
    except ControlPlaneUnavailable as exc:
        if mode == "required":
            pytest.fail(f"control plane unavailable (required here): {exc}", pytrace=False)
        pytest.skip(f"control plane unavailable: {exc}; {ENABLE_HINT}")
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def manifests_applied(control_plane: ControlPlane) -> subprocess.CompletedProcess[str]:
    """`kubectl apply -k manifests/ --server-side`, as the README tells users to do."""
    result = kubectl(control_plane, "apply", "--server-side", "-k", "manifests/")
    assert result.returncode == 0, result.stderr
    established = kubectl(
        control_plane,
        "wait",
        "--for=condition=Established",
        "crd/nodeinventories.kvsched.io",
        "--timeout=60s",
    )
    assert established.returncode == 0, established.stderr
    control_plane.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    )
    return result


@pytest.fixture(scope="session")
def extender(
    control_plane: ControlPlane, manifests_applied: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Extender]:
    process = Extender(control_plane.kubeconfig, tmp_path_factory.mktemp("extender"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def scheduler(
    control_plane: ControlPlane, extender: Extender, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SchedulerProcess]:
    config = scheduler_config(control_plane, extender.url, tmp_path_factory.mktemp("sched"))
    process = SchedulerProcess(control_plane, config)
    yield process
    process.stop()


@pytest.fixture
def cluster(
    control_plane: ControlPlane, scheduler: SchedulerProcess, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    test_id = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    with cluster_objects(control_plane, test_id) as objects:
        yield objects
