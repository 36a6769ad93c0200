"""The image build's logic (hack/image/imagetool.py) and the names that must agree with it.

The build itself (mmdebstrap, chroot, umoci) needs root and minutes: `make image` runs it and
its check; CI runs it through hack/image/ci.sh. These tests cover what decides its result: what
pyproject.toml yields, the cache keys, the wheel platforms, the labels, the verification of the
committed config and the runtime process, and that manifests/ and the chart name the image the
build produces.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import scheduler

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("imagetool", ROOT / "hack/image/imagetool.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["imagetool"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


it = _load()

PYPROJECT = """
[build-system]
requires = ["setuptools>=68", "wheel"]
[project]
name = "kvsched"
version = "1.2.3"
license = { text = "Apache-2.0" }
dependencies = ["fastapi>=0.110", "wheel"]
[project.urls]
Source = "https://example.org/kvsched"
[project.optional-dependencies]
agent = ["grpcio>=1.85.1", "fastapi>=0.110"]
"""

TARGET = json.dumps(
    {
        "version": [3, 11],
        "implementation": "cpython",
        "libc": ["glibc", "2.36"],
        "machine": "x86_64",
    }
)


def test_read_project_and_requirements() -> None:
    project = it.read_project(PYPROJECT)
    assert (project.name, project.version, project.license) == ("kvsched", "1.2.3", "Apache-2.0")
    assert project.source == "https://example.org/kvsched"
    # Runtime deps, then the extra's, then the build backend; each once, order kept.
    assert it.requirements(project, "agent") == [
        "fastapi>=0.110",
        "wheel",
        "grpcio>=1.85.1",
        "setuptools>=68",
    ]
    with pytest.raises(it.ImageError, match="no optional-dependencies extra 'gpu'"):
        it.requirements(project, "gpu")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('version = "1.2.3"', 'version = "latest"'), "project.version 'latest'"),
        (('version = "1.2.3"', 'version = "1.2.3/x"'), "project.version '1.2.3/x'"),
        (('license = { text = "Apache-2.0" }', ""), "project.license needs a text"),
        (('dependencies = ["fastapi>=0.110", "wheel"]', "dependencies = [1]"), "dependencies"),
        (('name = "kvsched"', ""), "project.name must be a non-empty string"),
    ],
)
def test_read_project_rejects_bad_fields(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(it.ImageError, match=message):
        it.read_project(PYPROJECT.replace(*edit))


def test_the_real_pyproject_gives_the_image_what_it_needs() -> None:
    project = it.read_project((ROOT / "pyproject.toml").read_text())
    reqs = it.requirements(project, "agent")
    names = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in reqs}
    # The agent's NVML and PodResources clients, and the backend pip builds kvsched with offline.
    assert {"nvidia-ml-py", "grpcio", "protobuf", "setuptools"} <= names
    # `kvsched --version` (the image check) prints scheduler.__version__; the tag is pyproject's.
    assert scheduler.__version__ == project.version
    labels = it.labels(
        version=project.version,
        source=project.source,
        license=project.license,
        revision="0" * 40,
        created="2026-12-03T09:00:00Z",
    )
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_manifests_and_chart_name_the_image_the_build_makes() -> None:
    version = it.read_project((ROOT / "pyproject.toml").read_text()).version
    ref = f"{it.IMAGE_NAME}:{version}"
    seen: list[tuple[str, str]] = []

    def walk(node: object, where: str) -> None:
        # Every `image:` anywhere (Deployments, DaemonSets, examples), not only known paths.
        if isinstance(node, dict):
            image = node.get("image")
            if isinstance(image, str) and "kvsched" in image.split("/")[-1]:
                seen.append((where, image))
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for path in sorted((ROOT / "manifests").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            walk(doc, path.name)
    assert seen, "no kvsched container in manifests/"
    assert {image for _, image in seen} == {ref}, seen
    values = yaml.safe_load((ROOT / "charts/kvsched/values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "charts/kvsched/Chart.yaml").read_text())
    assert values["image"]["repository"] == it.IMAGE_NAME
    # An empty tag means the chart's appVersion, which must then be the project's version.
    assert values["image"]["tag"] in ("", version)
    assert chart["appVersion"] == version


def test_base_key_changes_with_every_input_and_the_week() -> None:
    args: dict[str, Any] = {
        "suite": "bookworm",
        "arch": "amd64",
        "variant": "essential",
        "packages": ["python3", "libstdc++6"],
        "mirrors": ["deb http://deb.debian.org/debian bookworm main"],
        "options": ["--dpkgopt=path-exclude=/usr/share/doc/*"],
        "period": "2026-W49",
    }
    key = it.base_key(**args)
    assert key.startswith("bookworm-amd64-2026-W49-")
    # Package order does not matter (apt resolves a set); everything else does.
    assert it.base_key(**{**args, "packages": ["libstdc++6", "python3"]}) == key
    for field, value in [
        ("suite", "trixie"),
        ("arch", "arm64"),
        ("variant", "minbase"),
        ("packages", ["python3"]),
        ("mirrors", ["deb http://mirror.example/debian bookworm main"]),
        ("options", []),
        ("period", "2026-W50"),
    ]:
        assert it.base_key(**{**args, field: value}) != key, field
    with pytest.raises(it.ImageError, match="period '2026-12-03'"):
        it.base_key(**{**args, "period": "2026-12-03"})
    with pytest.raises(it.ImageError, match="suite 'Bookworm; rm'"):
        it.base_key(**{**args, "suite": "Bookworm; rm"})
    assert it.iso_week(dt.datetime(2026, 12, 3, tzinfo=dt.UTC)) == "2026-W49"
    assert it.iso_week(dt.datetime(2027, 1, 1, tzinfo=dt.UTC)) == "2026-W53"


def test_wheels_key_follows_pyproject_and_target() -> None:
    target = it.read_target(TARGET)
    key = it.wheels_key(PYPROJECT.encode(), target, "agent")
    assert key.startswith("cp311-x86_64-")
    assert it.wheels_key(PYPROJECT.encode(), target, "agent") == key
    assert it.wheels_key((PYPROJECT + "\n# c\n").encode(), target, "agent") != key
    newer = it.read_target(TARGET.replace("2.36", "2.41"))
    assert it.wheels_key(PYPROJECT.encode(), newer, "agent") != key
    assert it.wheels_key(PYPROJECT.encode(), target, "dev") != key


def test_pip_target_lists_every_manylinux_the_glibc_runs() -> None:
    args = it.pip_target_args(it.read_target(TARGET))
    platforms = [a.split("=", 1)[1] for a in args if a.startswith("--platform=")]
    # pip takes --platform literally: a manylinux_2_17 (manylinux2014) wheel such as PyYAML's
    # must be listed, or the download finds none.
    assert platforms[0] == "manylinux_2_36_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(platforms)
    assert "manylinux_2_37_x86_64" not in platforms
    assert len(platforms) == len(set(platforms)) == (36 - 5 + 1) + 3
    assert {"--python-version=3.11", "--abi=cp311", "--only-binary=:all:"} <= set(args)
    arm = it.read_target(TARGET.replace("x86_64", "aarch64"))
    arm_platforms = [a for a in it.pip_target_args(arm) if a.startswith("--platform=")]
    assert arm_platforms[-1] == "--platform=manylinux2014_aarch64"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": [3], "implementation": "cpython"}, "version must be"),
        ({"version": [3, 11], "implementation": "pypy"}, "implementation 'pypy'"),
        (
            {"version": [3, 11], "implementation": "cpython", "libc": ["musl", "1.2"]},
            "libc must be",
        ),
        (
            {
                "version": [3, 11],
                "implementation": "cpython",
                "libc": ["glibc", "2.36"],
                "machine": "riscv64",
            },
            "machine 'riscv64'",
        ),
    ],
)
def test_read_target_rejects_what_pip_cannot_target(data: object, message: str) -> None:
    with pytest.raises(it.ImageError, match=message):
        it.read_target(json.dumps(data))


def test_labels_validate_each_value() -> None:
    good = {
        "version": "0.1.0",
        "source": "https://example.org/kvsched",
        "license": "Apache-2.0",
        "revision": "bd0606d95ab6547249e5bab67b7c112251b3f9b1-dirty",
        "created": "2026-12-03T09:00:00Z",
    }
    labels = it.labels(**good)
    assert set(it.REQUIRED_LABELS) <= set(labels)
    assert labels["org.opencontainers.image.revision"].endswith("-dirty")
    assert it.labels(**{**good, "license": "Apache-2.0 OR MIT"})
    for field, bad, message in [
        ("source", "", "source '' is not a URL"),
        ("license", "Apache 2", "license 'Apache 2'"),
        ("revision", "main", "revision 'main'"),
        ("created", "yesterday", "created 'yesterday'"),
        ("version", "v1", "version 'v1'"),
    ]:
        with pytest.raises(it.ImageError, match=message):
            it.labels(**{**good, field: bad})


def _config(**overrides: Any) -> dict[str, Any]:
    labels = it.labels(
        version="0.1.0",
        source="https://example.org/kvsched",
        license="Apache-2.0",
        revision="a" * 40,
        created="2026-12-03T09:00:00Z",
    )
    inner = {
        "User": "65532:65532",
        "Entrypoint": ["kvsched"],
        "Env": ["PATH=/opt/kvsched/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
        "Labels": labels,
    }
    inner.update(overrides)
    return {"os": "linux", "config": inner, "rootfs": {"type": "layers", "diff_ids": ["sha256:x"]}}


def _write_layout(root: Path, config: dict[str, Any], tag: str) -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(obj: object) -> str:
        raw = json.dumps(obj).encode()
        digest = hashlib.sha256(raw).hexdigest()
        (blobs / digest).write_bytes(raw)
        return f"sha256:{digest}"

    manifest = put({"schemaVersion": 2, "config": {"digest": put(config)}, "layers": []})
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"digest": manifest, "annotations": {"org.opencontainers.image.ref.name": tag}}
        ],
    }
    (root / "index.json").write_text(json.dumps(index))


def test_verify_reads_the_config_from_a_layout(tmp_path: Path) -> None:
    _write_layout(tmp_path, _config(), "0.1.0")
    config = it.image_config(tmp_path, "0.1.0")
    assert it.verify_config(config, "0.1.0") == []
    assert it.verify_config(config, "0.2.0") == [
        "label org.opencontainers.image.version is '0.1.0', expected '0.2.0'"
    ]
    with pytest.raises(it.ImageError, match="0 manifests tagged 'latest'"):
        it.image_config(tmp_path, "latest")


def test_verify_names_each_problem() -> None:
    labels = dict(_config()["config"]["Labels"])
    del labels["org.opencontainers.image.source"]
    problems = it.verify_config(
        _config(User="0", Entrypoint=["python"], Env=["PATH=/usr/bin"], Labels=labels), "0.1.0"
    )
    assert problems == [
        "config.User is '0', expected '65532:65532'",
        "config.Entrypoint is ['python'], expected ['kvsched']",
        "config.Env PATH '/usr/bin' does not include /opt/kvsched/bin",
        "config.Labels has no org.opencontainers.image.source",
    ]


def test_image_config_rejects_a_bad_digest(tmp_path: Path) -> None:
    index = {
        "manifests": [
            {
                "digest": "sha256:../../etc",
                "annotations": {"org.opencontainers.image.ref.name": "t"},
            }
        ]
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(it.ImageError, match="is not sha256:<64 hex>"):
        it.image_config(tmp_path, "t")


def test_read_process_takes_what_a_runtime_would() -> None:
    proc = it.read_process(
        {
            "process": {
                "args": ["kvsched"],
                "env": ["PATH=/opt/kvsched/bin:/usr/bin"],
                "user": {"uid": 65532, "gid": 65532},
                "cwd": "/",
            }
        }
    )
    assert (proc.args, proc.uid, proc.gid, proc.cwd) == (("kvsched",), 65532, 65532, "/")
    with pytest.raises(it.ImageError, match=re.escape("process.user uid='0'")):
        it.read_process({"process": {"args": ["x"], "user": {"uid": "0", "gid": 0}}})
    with pytest.raises(it.ImageError, match=r"process\.env"):
        it.read_process({"process": {"args": ["x"], "env": ["NOEQUALS"], "user": {}}})


def test_smoke_commands_cover_the_issue_and_the_agent_deps() -> None:
    commands = {
        name: (args, after, expect) for name, args, after, expect in it.smoke_commands("9.9")
    }
    assert commands["kvsched --version"] == (["--version"], True, "kvsched 9.9")
    assert commands["kvsched extender --help"][0] == ["extender", "--help"]
    probe_args, after, expect = commands["agent dependencies import as the image user"]
    assert not after and "pynvml" in probe_args[-1] and "grpc" in probe_args[-1]
    assert expect.startswith("uid 65532 gid 65532 python /opt/kvsched/bin/python")
