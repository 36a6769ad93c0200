"""Session fixtures for e2e tests: a real etcd + kube-apiserver + kube-scheduler, the
manifests applied with kubectl, and the kvsched extender in cluster mode.

Whether e2e tests run:
- in CI (CI set): always; a control plane that cannot be built or started fails the run;
- KVSCHED_E2E=1: always, building the control plane if needed (~8 min once, then cached);
- KVSCHED_E2E=0: skipped;
- otherwise: run when the binaries are cached (`make controlplane`), else skipped with a
  message saying how to enable them.

The same rule holds for the real controllers some tests add (session-scoped, started on first
use): kube-controller-manager (built with the control plane), KWOK (`make kwok`) and the
LeaderWorkerSet controller (`make lws`); see support/controllers.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.controllers import (
    KWOK_BUILD_SH,
    LWS_BUILD_SH,
    Component,
    LwsController,
    build_tool,
    start_controller_manager,
    start_kwok,
    tool_cached,
)
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


# --- real controllers: kube-controller-manager, KWOK, LeaderWorkerSet ------------------------

REAL_CONTROLLER_FIXTURES = ("controller_manager", "kwok", "lws_controller")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the real controllers run after all others: once started (session-wide)
    they change the cluster for the rest of the run (the LWS CRDs and webhooks exist,
    Deployments reconcile), and some tests assert a bare control plane (e.g. that the
    LeaderWorkerSet kind is unknown)."""
    uses = [
        any(f in getattr(i, "fixturenames", ()) for f in REAL_CONTROLLER_FIXTURES) for i in items
    ]
    items[:] = [i for i, u in zip(items, uses, strict=True) if not u] + [
        i for i, u in zip(items, uses, strict=True) if u
    ]


def _unavailable(what: str, exc: Exception, hint: str) -> None:
    if _mode() == "required":
        pytest.fail(f"{what} unavailable (required here): {exc}", pytrace=False)
    pytest.skip(f"{what} unavailable: {exc}; {hint}")


def _tool(script: Path, explicit_env: str, what: str, target: str) -> Path:
    """The tool's binary: built when required (CI, KVSCHED_E2E=1), else only if cached."""
    hint = (
        f"{what} is built from Go modules: run `make {target}` once (cached in ~/.cache/kvsched), "
        "or set KVSCHED_E2E=1 to build it during the tests"
    )
    mode = _mode()
    if mode == "off":
        pytest.skip("KVSCHED_E2E=0: e2e tests disabled")
    if mode == "auto" and not tool_cached(script, explicit_env=explicit_env):
        pytest.skip(hint)
    try:
        return build_tool(script, explicit_env=explicit_env)
    except ControlPlaneUnavailable as exc:
        _unavailable(what, exc, hint)
        raise  # not reached: _unavailable fails or skips


@pytest.fixture(scope="session")
def controller_manager(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Component]:
    """kube-controller-manager (Deployment, ReplicaSet, StatefulSet, GC, PodGC, Namespace)."""
    try:
        component = start_controller_manager(control_plane, tmp_path_factory.mktemp("kcm"))
    except ControlPlaneUnavailable as exc:
        _unavailable("kube-controller-manager", exc, ENABLE_HINT)
        raise
    yield component
    component.stop()


@pytest.fixture(scope="session")
def kwok(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Component]:
    """KWOK as the kubelet of the nodes labelled support.controllers.KWOK_LABEL=true."""
    binary = _tool(KWOK_BUILD_SH, "KVSCHED_KWOK_BIN", "KWOK", "kwok")
    try:
        component = start_kwok(control_plane, binary, tmp_path_factory.mktemp("kwok"))
    except ControlPlaneUnavailable as exc:
        _unavailable("KWOK", exc, "see hack/kwok/build.sh")
        raise
    yield component
    component.stop()


@pytest.fixture(scope="session")
def lws_controller(
    control_plane: ControlPlane,
    controller_manager: Component,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LwsController]:
    """The LeaderWorkerSet controller with its CRDs and webhooks (it needs the StatefulSet
    controller, hence kube-controller-manager)."""
    binary = _tool(LWS_BUILD_SH, "KVSCHED_LWS_BIN", "the LeaderWorkerSet controller", "lws")
    try:
        controller = LwsController.start(control_plane, binary, tmp_path_factory.mktemp("lws"))
    except ControlPlaneUnavailable as exc:
        _unavailable("the LeaderWorkerSet controller", exc, "see hack/lws/build.sh")
        raise
    yield controller
    controller.stop()
