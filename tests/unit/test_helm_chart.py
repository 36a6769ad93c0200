"""The Helm chart (charts/kvsched/) renders what manifests/ is, checked with the real helm.

- values.schema.json accepts values.yaml and rejects mistakes; README.md documents every value
  (no helm needed);
- `helm lint --strict` passes;
- `helm template` with the default values gives, object by object, what `kubectl kustomize
  manifests/` gives (whole objects compared, after the normalisations listed in `normalise`),
  the Namespace aside (helm's --create-namespace makes it; createNamespace=true renders it);
- tls.enabled=true gives what manifests/overlays/tls gives; agent.enabled=false and
  controller.enabled=false drop exactly their objects; image and flag values land where they
  should; helm itself refuses values the schema rejects.

helm is helm.sh/helm/v4 built from its Go module by hack/helm/build.sh (`make helm`, cached in
~/.cache/kvsched) or the binary KVSCHED_HELM_BIN names; kubectl is the control plane's
(`make controlplane`). Both are required when CI is set (and built if missing), else the tests
that need them are skipped with how to build them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.controlplane import ControlPlaneUnavailable, build_binaries
from support.helm import find_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kvsched"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
README = CHART / "README.md"
NAMESPACE = "kvsched-system"
RELEASE = "kvsched"

Key = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name
Obj = dict[str, Any]


def _required() -> bool:
    return bool(os.environ.get("CI"))


# --- the tools ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    binary = find_helm(required=_required())
    home = tmp_path_factory.mktemp("helm-home")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            mp.setenv(key, str(home / key.lower()))
        yield binary


@pytest.fixture(scope="module")
def kubectl() -> Path:
    if explicit := os.environ.get("KVSCHED_KUBECTL"):
        return Path(explicit)
    with pytest.MonkeyPatch.context() as mp:
        if not _required():
            mp.setenv("KVSCHED_CP_NO_BUILD", "1")
        try:
            bin_dir = build_binaries()
        except ControlPlaneUnavailable as exc:
            if _required():
                pytest.fail(f"kubectl unavailable (required in CI): {exc}", pytrace=False)
            pytest.skip("kubectl comes with the control plane: run `make controlplane` once")
    return bin_dir / "kubectl"


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )


def template(helm: Path, *set_args: str) -> dict[Key, Obj]:
    args: list[str] = []
    for value in set_args:
        args += ["--set", value]
    proc = run(helm, "template", RELEASE, CHART, "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return index(proc.stdout)


def kustomize(kubectl: Path, path: str) -> dict[Key, Obj]:
    proc = run(kubectl, "kustomize", path)
    assert proc.returncode == 0, proc.stderr
    return index(proc.stdout)


def index(text: str) -> dict[Key, Obj]:
    objects: dict[Key, Obj] = {}
    for obj in yaml.safe_load_all(text):
        if not obj:
            continue
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in objects, f"{key} rendered twice"
        objects[key] = obj
    return objects


# --- comparing ------------------------------------------------------------------------------


def normalise(obj: Obj) -> Obj:
    """What may differ between the chart's object and the manifests' without changing what
    the API server does with it: Helm's extra labels and annotations (compared separately as
    supersets), imagePullPolicy (IfNotPresent is what the API server defaults a tagged image
    to), the order of volumes and volume mounts, and the scheduler config's formatting (it is
    compared parsed)."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("labels", None)
    obj["metadata"].pop("annotations", None)
    if obj["kind"] == "ConfigMap":
        obj["data"] = {k: yaml.safe_load(v) for k, v in obj.get("data", {}).items()}
    pod = obj.get("spec", {}).get("template")
    if pod:
        pod["metadata"].get("annotations", {}).pop("checksum/config", None)
        spec = pod["spec"]
        spec["volumes"] = sorted(spec.get("volumes", []), key=lambda v: v["name"])
        for container in spec["containers"]:
            assert container.pop("imagePullPolicy", "IfNotPresent") == "IfNotPresent"
            if "volumeMounts" in container:
                container["volumeMounts"].sort(key=lambda m: m["name"])
    return obj


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            where = f"{path}.{key}"
            if key not in a:
                out.append(f"{where}: only in the chart: {b[key]!r}")
            elif key not in b:
                out.append(f"{where}: missing from the chart (manifests: {a[key]!r})")
            else:
                out += differences(a[key], b[key], where)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: manifests {a!r} != chart {b!r}"]


def assert_same(manifests: dict[Key, Obj], chart: dict[Key, Obj]) -> None:
    assert sorted(chart) == sorted(manifests), "objects differ"
    problems: list[str] = []
    for key, want in manifests.items():
        got = chart[key]
        for field in ("labels", "annotations"):
            extra = {**want["metadata"].get(field, {})}
            missing = {k: v for k, v in extra.items() if got["metadata"].get(field, {}).get(k) != v}
            if missing:
                problems.append(f"{key} metadata.{field}: chart lacks {missing}")
        if "template" in want.get("spec", {}):
            pod_want = want["spec"]["template"]["metadata"]
            pod_got = got["spec"]["template"]["metadata"]
            assert pod_got["labels"] == pod_want["labels"], key  # selectors are immutable
            for k, v in pod_want.get("annotations", {}).items():
                if pod_got.get("annotations", {}).get(k) != v:
                    problems.append(f"{key} pod annotation {k}: {v!r} expected")
        problems += [f"{key} {d}" for d in differences(normalise(want), normalise(got))]
    assert not problems, "\n".join(problems)


def without_namespace(objects: dict[Key, Obj]) -> dict[Key, Obj]:
    return {k: v for k, v in objects.items() if k != ("Namespace", "", NAMESPACE)}


def kinds_named(objects: dict[Key, Obj], name: str) -> set[Key]:
    return {k for k in objects if k[2] == name}


def container(objects: dict[Key, Obj], kind: str, name: str, container_name: str) -> Obj:
    pod = objects[(kind, NAMESPACE, name)]["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == container_name)


def extender_config(objects: dict[Key, Obj]) -> Obj:
    data = objects[("ConfigMap", NAMESPACE, "kvsched-scheduler-config")]["data"]
    config: Obj = yaml.safe_load(data["scheduler-config.yaml"])
    (extender,) = config["extenders"]
    return extender


# --- without helm ---------------------------------------------------------------------------


def leaf_paths(values: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            path = f"{prefix}.{key}" if prefix else key
            # maps of free-form entries (resources, nodeSelector) are documented as a whole
            if key in ("resources", "nodeSelector") or not isinstance(value, dict):
                yield path
            else:
                yield from leaf_paths(value, path)
    else:
        yield prefix


def test_schema_declares_every_value_and_values_validate() -> None:
    schema = json.loads(SCHEMA.read_text())
    values = yaml.safe_load(VALUES.read_text())
    for path in leaf_paths(values):
        node = schema
        for part in path.split("."):
            node = node["properties"][part]  # KeyError: the schema lacks the value
    jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="no JSON Schema validator here")
    validator = jsonschema_rs.validator_for(schema)
    errors = [str(e) for e in validator.iter_errors(values)]
    assert not errors, errors
    bad: list[Obj] = [
        {**values, "unknown": 1},
        {**values, "tls": {"enabled": "yes"}},
        {**values, "image": {**values["image"], "pullPolicy": "Sometimes"}},
        {**values, "extender": {**values["extender"], "flags": "--log-level=debug"}},
        {**values, "extender": {**values["extender"], "port": 0}},
        {**values, "agent": {**values["agent"], "podResourcesHostPath": "relative/path"}},
    ]
    for case in bad:
        assert not validator.is_valid(case), case


def test_readme_documents_every_value() -> None:
    readme = README.read_text()
    values = yaml.safe_load(VALUES.read_text())
    undocumented = [p for p in leaf_paths(values) if f"`{p}`" not in readme]
    assert not undocumented, f"charts/kvsched/README.md lacks {undocumented}"


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == "0.1.0"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(chart["appVersion"])}"$', pyproject, re.M)


# --- with helm ------------------------------------------------------------------------------


def test_helm_lint(helm: Path) -> None:
    for extra in ([], ["--set", "tls.enabled=true,agent.enabled=false,controller.enabled=false"]):
        proc = run(helm, "lint", "--strict", CHART, "--namespace", NAMESPACE, *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_values_render_the_manifests(helm: Path, kubectl: Path) -> None:
    manifests = kustomize(kubectl, "manifests/")
    chart = template(helm)
    assert ("Namespace", "", NAMESPACE) not in chart  # helm install --create-namespace
    assert_same(without_namespace(manifests), chart)
    # The fields that matter most, spelled out (assert_same compared whole objects).
    extender = container(chart, "Deployment", "kvsched-scheduler", "kvsched-extender")
    assert extender["image"] == "localhost/kvsched:0.1.0"
    assert extender["args"] == [
        "extender",
        "--host=127.0.0.1",
        "--port=8888",
        "--metrics-port=9090",
    ]
    assert extender["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": "metrics"}}
    assert extender_config(chart)["urlPrefix"] == "http://127.0.0.1:8888"
    agent = chart[("DaemonSet", NAMESPACE, "kvsched-agent")]["spec"]["template"]["spec"]
    assert {
        "name": "pod-resources",
        "hostPath": {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"},
    } in agent["volumes"]
    crd = chart[("CustomResourceDefinition", "", "nodeinventories.kvsched.io")]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_create_namespace_renders_the_namespace(helm: Path, kubectl: Path) -> None:
    manifests = kustomize(kubectl, "manifests/")
    assert_same(manifests, template(helm, "createNamespace=true"))


def test_tls_renders_the_tls_overlay(helm: Path, kubectl: Path) -> None:
    overlay = kustomize(kubectl, "manifests/overlays/tls")
    chart = template(helm, "tls.enabled=true")
    # The overlay holds the scheduler's objects; the rest is as with the default values.
    assert_same(overlay, {k: chart[k] for k in overlay})
    extender = extender_config(chart)
    assert extender["urlPrefix"] == "https://127.0.0.1:8888"
    assert extender["enableHTTPS"] is True
    assert extender["tlsConfig"]["certFile"] == "/etc/kvsched-tls/client.crt"
    pod = chart[("Deployment", NAMESPACE, "kvsched-scheduler")]["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "kvsched-tls"}} in pod["volumes"]
    plain = template(helm)
    assert set(chart) == set(plain)
    for key in set(plain) - set(overlay):
        assert normalise(chart[key]) == normalise(plain[key]), key
    # The config changed, so the scheduler pods roll.
    annotation = "checksum/config"

    def checksum(objects: dict[Key, Obj]) -> str:
        deployment = objects[("Deployment", NAMESPACE, "kvsched-scheduler")]
        value: str = deployment["spec"]["template"]["metadata"]["annotations"][annotation]
        return value

    assert checksum(chart) != checksum(plain)
    secret = template(helm, "tls.enabled=true", "tls.secretName=my-certs")
    pod = secret[("Deployment", NAMESPACE, "kvsched-scheduler")]["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "my-certs"}} in pod["volumes"]


def test_warming_renders_the_warming_overlay(helm: Path, kubectl: Path) -> None:
    overlay = kustomize(kubectl, "manifests/overlays/warming")
    chart = template(helm, "warming.enabled=true")
    # The overlay holds the inventory objects (controller and agent) plus the warming RBAC.
    assert_same(overlay, {k: chart[k] for k in overlay})
    controller = container(chart, "Deployment", "kvsched-controller", "controller")
    assert "--warming-holders=2" in controller["args"]
    plain = template(helm)
    assert set(chart) - set(plain) == {
        ("ClusterRole", "", "kvsched-controller-warming"),
        ("ClusterRoleBinding", "", "kvsched-controller-warming"),
    }
    plain_controller = container(plain, "Deployment", "kvsched-controller", "controller")
    assert not any(a.startswith("--warming") for a in plain_controller["args"])
    holders = container(
        template(helm, "warming.enabled=true", "warming.holders=3"),
        "Deployment",
        "kvsched-controller",
        "controller",
    )
    assert "--warming-holders=3" in holders["args"]


@pytest.mark.parametrize(
    ("value", "component"),
    [("agent.enabled=false", "kvsched-agent"), ("controller.enabled=false", "kvsched-controller")],
)
def test_disabling_a_component_drops_exactly_its_objects(
    helm: Path, value: str, component: str
) -> None:
    plain = template(helm)
    chart = template(helm, value)
    dropped = set(plain) - set(chart)
    assert set(chart) <= set(plain)
    assert dropped == {k for k in plain if k[2].startswith(component)}
    assert {k[0] for k in dropped} >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    for key in chart:
        assert normalise(chart[key]) == normalise(plain[key]), key


def test_image_and_flag_values(helm: Path) -> None:
    chart = template(
        helm,
        "image.repository=registry.example/kvsched",
        "image.tag=dev",
        "image.pullPolicy=Always",
        "extender.flags={--log-level=debug}",
        "controller.flags={--agent-stale-after-seconds=300}",
        "agent.flags={--interval-seconds=30}",
        "imagePullSecrets[0].name=regcred",
        "scheduler.schedulerName=kvsched-llm",
        "crds.install=false",
    )
    for kind, name, cname in [
        ("Deployment", "kvsched-scheduler", "kvsched-extender"),
        ("Deployment", "kvsched-controller", "controller"),
        ("DaemonSet", "kvsched-agent", "agent"),
    ]:
        c = container(chart, kind, name, cname)
        assert c["image"] == "registry.example/kvsched:dev"
        assert c["imagePullPolicy"] == "Always"
        pod = chart[(kind, NAMESPACE, name)]["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert (
        container(chart, "Deployment", "kvsched-scheduler", "kvsched-extender")["args"][-1]
        == "--log-level=debug"
    )
    assert (
        container(chart, "Deployment", "kvsched-controller", "controller")["args"][-1]
        == "--agent-stale-after-seconds=300"
    )
    assert (
        container(chart, "DaemonSet", "kvsched-agent", "agent")["args"][-1]
        == "--interval-seconds=30"
    )
    config = chart[("ConfigMap", NAMESPACE, "kvsched-scheduler-config")]["data"]
    assert yaml.safe_load(config["scheduler-config.yaml"])["profiles"] == [
        {"schedulerName": "kvsched-llm"}
    ]
    assert not [k for k in chart if k[0] == "CustomResourceDefinition"]


def test_release_namespace_is_used_everywhere(helm: Path) -> None:
    proc = run(helm, "template", RELEASE, CHART, "--namespace", "gpu-platform")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert NAMESPACE not in text
    objects = index(text)
    config = yaml.safe_load(
        objects[("ConfigMap", "gpu-platform", "kvsched-scheduler-config")]["data"][
            "scheduler-config.yaml"
        ]
    )
    assert config["leaderElection"]["resourceNamespace"] == "gpu-platform"
    # kube-scheduler's delegated-auth reader binding lives in kube-system, whatever the release.
    assert ("RoleBinding", "kube-system", "kvsched-scheduler-auth-reader") in objects


@pytest.mark.parametrize(
    "value",
    [
        "tls.enabled=yes",
        "image.pullPolicy=Sometimes",
        "extender.port=0",
        "bogus=1",
        "extender.flags=--x",
    ],
)
def test_helm_enforces_the_schema(helm: Path, value: str) -> None:
    proc = run(helm, "template", RELEASE, CHART, "--namespace", NAMESPACE, "--set", value)
    assert proc.returncode != 0, f"{value} was accepted"
    assert "schema" in proc.stderr.lower(), proc.stderr


def test_no_probe_dials_the_nodes_loopback(helm: Path, kubectl: Path) -> None:
    """The kubelet runs probes from the node: ``host: 127.0.0.1`` there is the node's loopback,
    so outside hostNetwork such a probe fails forever and the container is restarted forever.
    Checked over everything the chart and the kustomize trees render."""
    renders = [
        kustomize(kubectl, "manifests/"),
        kustomize(kubectl, "manifests/overlays/tls"),
        kustomize(kubectl, "manifests/overlays/warming"),
        template(helm),
        template(helm, "tls.enabled=true"),
        template(helm, "warming.enabled=true"),
    ]
    checked = 0
    for objects in renders:
        for obj in objects.values():
            pod = obj.get("spec", {}).get("template", {}).get("spec")
            if not isinstance(pod, dict) or pod.get("hostNetwork"):
                continue
            for item in pod.get("containers", []):
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    handler = item.get(probe) or {}
                    for kind in ("httpGet", "tcpSocket"):
                        if kind in handler:
                            checked += 1
                            assert handler[kind].get("host") in (None, ""), (
                                obj["metadata"]["name"],
                                item["name"],
                                probe,
                            )
    assert checked >= 18  # scheduler, extender and controller probes in every render


def test_extender_bind_renders_the_bind_setting(helm: Path) -> None:
    """The chart's scheduler config is scheduler-config.yaml (no bindVerb) by default and
    scheduler-config-bind.yaml with `extender.bind=true`."""
    root = Path(__file__).resolve().parents[2] / "manifests" / "scheduler"
    for value, source in (
        ("false", "scheduler-config.yaml"),
        ("true", "scheduler-config-bind.yaml"),
    ):
        chart = template(helm, f"extender.bind={value}")
        expected = yaml.safe_load((root / source).read_text())["extenders"][0]
        assert extender_config(chart) == expected, value
