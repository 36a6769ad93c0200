"""The logic of the kvsched image build (hack/image/build.sh) and its check (hack/image/check.sh).

build.sh does the system work (mmdebstrap, chroot, umoci); this module holds what can be tested
on plain data: the project's version, license and requirements read from pyproject.toml, the cache
keys of the slow steps, the wheel target of the image's own Python, the OCI labels, the
verification of the committed image config, and the check that runs commands in the unpacked
image as its configured (non-root) user. Standard library only: it runs on the host's python3
before any virtualenv exists.

    imagetool.py project PYPROJECT FIELD          version | license | source | name
    imagetool.py image-name                       the image name (no tag) the build produces
    imagetool.py requirements PYPROJECT EXTRA     runtime deps + EXTRA's deps + build-system deps
    imagetool.py base-key --suite S --arch A ...  cache key of the Debian root filesystem
    imagetool.py wheels-key PYPROJECT TARGET_JSON cache key of the downloaded wheels
    imagetool.py pip-target TARGET_JSON           `pip download` platform flags, one per line
    imagetool.py labels --version V ...           the OCI labels, KEY=VALUE per line
    imagetool.py verify LAYOUT TAG --version V    check the image config in an OCI layout
    imagetool.py run-checks BUNDLE --version V    run the image's smoke commands (root only)
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The unprivileged user the image runs as (distroless' "nonroot" uid: high enough to collide with
# no Debian system or login user, and what Pod securityContexts commonly pin).
# What `make image` builds and manifests/ and the chart name, with the project version as tag:
# a "localhost/" name is never pulled from a public registry (a runtime treats "localhost" as
# the registry host), so a cluster runs it only once it is loaded or pushed and renamed.
IMAGE_NAME = "localhost/kvsched"
IMAGE_UID = 65532
IMAGE_GID = 65532
VENV = "/opt/kvsched"
ENTRYPOINT = ["kvsched"]
REQUIRED_LABELS = (
    "org.opencontainers.image.version",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.revision",
)
# Bounds on what is read back from a layout: an OCI index or config is a few KiB.
MAX_JSON_BYTES = 4 * 1024 * 1024
SEMVER_ISH = re.compile(r"^[0-9]+(\.[0-9]+)*([.+-][0-9A-Za-z.+-]+)?$")
# An SPDX license expression without parentheses: ids joined by AND / OR / WITH.
SPDX_RE = re.compile(r"[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*")
# A docker/OCI tag: what the image's version becomes in name:tag.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class ImageError(Exception):
    """A bad input or a failed check; the message names the field and the value."""


@dataclass(frozen=True)
class Project:
    name: str
    version: str
    license: str
    source: str
    requires: tuple[str, ...]
    extras: Mapping[str, tuple[str, ...]]
    build_requires: tuple[str, ...]


def _str_list(value: object, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ImageError(
            f"pyproject.toml: {field} must be a list of non-empty strings, got {value!r}"
        )
    return tuple(value)


def read_project(text: str) -> Project:
    """The fields of pyproject.toml the image needs, each checked."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ImageError(f"pyproject.toml is not valid TOML: {exc}") from exc
    project = data.get("project")
    if not isinstance(project, dict):
        raise ImageError("pyproject.toml: no [project] table")
    name = project.get("name")
    if not isinstance(name, str) or not name:
        raise ImageError(f"pyproject.toml: project.name must be a non-empty string, got {name!r}")
    version = project.get("version")
    if not isinstance(version, str) or not SEMVER_ISH.match(version):
        raise ImageError(f"pyproject.toml: project.version {version!r} is not a release version")
    if not TAG_RE.match(version):
        raise ImageError(f"pyproject.toml: project.version {version!r} cannot be an image tag")
    lic = project.get("license")
    if isinstance(lic, dict):
        lic = lic.get("text")
    if not isinstance(lic, str) or not lic:
        raise ImageError(f"pyproject.toml: project.license needs a text (an SPDX id), got {lic!r}")
    urls = project.get("urls", {})
    if not isinstance(urls, dict):
        raise ImageError(f"pyproject.toml: project.urls must be a table, got {urls!r}")
    source = urls.get("Source", "")
    if not isinstance(source, str):
        raise ImageError(f"pyproject.toml: project.urls.Source must be a string, got {source!r}")
    optional = project.get("optional-dependencies", {})
    if not isinstance(optional, dict):
        raise ImageError(
            f"pyproject.toml: project.optional-dependencies must be a table, got {optional!r}"
        )
    extras = {
        key: _str_list(value, f"project.optional-dependencies.{key}")
        for key, value in optional.items()
    }
    build = data.get("build-system", {})
    if not isinstance(build, dict):
        raise ImageError(f"pyproject.toml: build-system must be a table, got {build!r}")
    return Project(
        name=name,
        version=version,
        license=lic,
        source=source,
        requires=_str_list(project.get("dependencies", []), "project.dependencies"),
        extras=extras,
        build_requires=_str_list(build.get("requires", []), "build-system.requires"),
    )


def requirements(project: Project, extra: str) -> list[str]:
    """What the image's wheelhouse must hold to install `project[extra]` with no index: the
    runtime and extra requirements, and the build backend (pip builds the project's own wheel
    offline from the same wheelhouse). Order kept, duplicates dropped."""
    if extra not in project.extras:
        raise ImageError(
            f"pyproject.toml: no optional-dependencies extra {extra!r} "
            f"(have {sorted(project.extras)})"
        )
    seen: dict[str, None] = {}
    for req in (*project.requires, *project.extras[extra], *project.build_requires):
        seen.setdefault(req, None)
    return list(seen)


def _digest(parts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        # Length-prefixed so that ("ab", "c") and ("a", "bc") differ.
        raw = part.encode()
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()[:16]


def base_key(
    *,
    suite: str,
    arch: str,
    variant: str,
    packages: Sequence[str],
    mirrors: Sequence[str],
    options: Sequence[str],
    period: str,
) -> str:
    """Cache key of the Debian root filesystem: readable suite/arch/period, then a hash of
    everything else mmdebstrap is given. The period (an ISO week) is part of it because a suite
    keeps moving (security and point-release updates): the base is remade at least weekly."""
    for field, value in (("suite", suite), ("arch", arch), ("variant", variant)):
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", value):
            raise ImageError(f"base-key: {field} {value!r} is not a Debian name")
    if not re.fullmatch(r"[0-9]{4}-W[0-9]{2}", period):
        raise ImageError(f"base-key: period {period!r} is not an ISO week like 2026-W49")
    if not packages:
        raise ImageError("base-key: no packages")
    if not mirrors:
        raise ImageError("base-key: no mirrors")
    digest = _digest(
        [suite, arch, variant, "\0".join(sorted(packages)), "\0".join(mirrors), "\0".join(options)]
    )
    return f"{suite}-{arch}-{period}-{digest}"


def iso_week(when: dt.datetime) -> str:
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class Target:
    """The image's Python as pip must see it to pick wheels: version, ABI, libc and machine."""

    major: int
    minor: int
    implementation: str
    glibc: tuple[int, int]
    machine: str


def read_target(text: str) -> Target:
    """Parse what the image's python3 printed about itself (see TARGET_PROBE)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImageError(f"target: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ImageError(f"target: expected an object, got {data!r}")
    version = data.get("version")
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(isinstance(v, int) and v >= 0 for v in version)
    ):
        raise ImageError(f"target: version must be [major, minor], got {version!r}")
    impl = data.get("implementation")
    if impl != "cpython":
        raise ImageError(f"target: implementation {impl!r} is not cpython")
    libc = data.get("libc")
    if not isinstance(libc, list) or len(libc) != 2 or libc[0] != "glibc":
        raise ImageError(f"target: libc must be ['glibc', 'X.Y'], got {libc!r}")
    match = re.fullmatch(r"([0-9]+)\.([0-9]+)", str(libc[1]))
    if not match:
        raise ImageError(f"target: glibc version {libc[1]!r} is not X.Y")
    machine = data.get("machine")
    if machine not in ("x86_64", "aarch64"):
        raise ImageError(f"target: machine {machine!r} is not x86_64 or aarch64")
    return Target(
        major=version[0],
        minor=version[1],
        implementation="cpython",
        glibc=(int(match.group(1)), int(match.group(2))),
        machine=machine,
    )


# Run by the image's own python3 (in the root filesystem) to describe itself for read_target.
TARGET_PROBE = (
    "import json, platform, sys; print(json.dumps({'version': list(sys.version_info[:2]), "
    "'implementation': sys.implementation.name, 'libc': list(platform.libc_ver()), "
    "'machine': platform.machine()}))"
)


# The oldest manylinux each machine has wheels for (PEP 600), and the PEP 513/571/599 names of
# the glibc versions that had one.
OLDEST_MANYLINUX = {"x86_64": 5, "aarch64": 17}
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def manylinux_platforms(target: Target) -> list[str]:
    """Every manylinux platform tag the image's glibc runs, newest first. `pip download
    --platform` takes each tag literally (it does not widen manylinux_2_36 to older glibc
    versions, unlike an install on the machine itself), so all of them are listed."""
    major, minor = target.glibc
    if major != 2:
        raise ImageError(f"target: glibc {major}.{minor} is not 2.x")
    oldest = OLDEST_MANYLINUX[target.machine]
    if minor < oldest:
        raise ImageError(
            f"target: glibc 2.{minor} is older than any manylinux for {target.machine}"
        )
    tags: list[str] = []
    for m in range(minor, oldest - 1, -1):
        tags.append(f"manylinux_2_{m}_{target.machine}")
        if m in LEGACY_MANYLINUX:
            tags.append(f"{LEGACY_MANYLINUX[m]}_{target.machine}")
    return tags


def pip_target_args(target: Target) -> list[str]:
    """Flags that make `pip download` choose wheels for the image's Python rather than the
    host's; cpXY also admits abi3 and pure wheels."""
    tag = f"cp{target.major}{target.minor}"
    return [
        *(f"--platform={p}" for p in manylinux_platforms(target)),
        f"--python-version={target.major}.{target.minor}",
        "--implementation=cp",
        f"--abi={tag}",
        "--only-binary=:all:",
    ]


def wheels_key(pyproject: bytes, target: Target, extra: str) -> str:
    """Cache key of the wheelhouse: the whole pyproject.toml (its requirements and build system)
    and the target Python; versions then stay as first resolved until pyproject.toml changes."""
    digest = _digest(
        [
            hashlib.sha256(pyproject).hexdigest(),
            extra,
            " ".join(pip_target_args(target)),
        ]
    )
    return f"cp{target.major}{target.minor}-{target.machine}-{digest}"


def labels(
    *, version: str, source: str, license: str, revision: str, created: str
) -> dict[str, str]:
    """The OCI annotation keys (image-spec annotations.md) the image carries as labels."""
    if not SEMVER_ISH.match(version):
        raise ImageError(f"labels: version {version!r} is not a release version")
    if not re.match(r"^(https|http|git|ssh)://[^\s]+$", source):
        raise ImageError(
            f"labels: source {source!r} is not a URL; set [project.urls] Source in pyproject.toml "
            "or KVSCHED_IMAGE_SOURCE"
        )
    if not SPDX_RE.fullmatch(license):
        raise ImageError(f"labels: license {license!r} is not an SPDX expression")
    if not re.fullmatch(r"[0-9a-f]{7,64}(-dirty)?", revision):
        raise ImageError(
            f"labels: revision {revision!r} is not a git commit id (optionally -dirty); "
            "set KVSCHED_IMAGE_REVISION when building outside a git checkout"
        )
    try:
        dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ImageError(f"labels: created {created!r} is not an RFC 3339 time") from exc
    return {
        "org.opencontainers.image.title": "kvsched",
        "org.opencontainers.image.description": (
            "kvsched: kube-scheduler extender, inventory controller and node agent"
        ),
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.licenses": license,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.created": created,
    }


def _read_json(path: Path) -> Any:
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ImageError(f"{path}: {size} bytes, more than an OCI index or config can be")
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise ImageError(f"{path}: not JSON: {exc}") from exc


def _blob(layout: Path, digest: object) -> Path:
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ImageError(f"{layout}: digest {digest!r} is not sha256:<64 hex>")
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    if not path.is_file():
        raise ImageError(f"{layout}: blob {digest} is missing")
    return path


def image_config(layout: Path, tag: str) -> dict[str, Any]:
    """The image config of `tag` in an OCI image layout (index -> manifest -> config)."""
    index = _read_json(layout / "index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise ImageError(f"{layout}/index.json: no manifests list")
    found = [
        m
        for m in manifests
        if isinstance(m, dict)
        and isinstance(m.get("annotations"), dict)
        and m["annotations"].get("org.opencontainers.image.ref.name") == tag
    ]
    if len(found) != 1:
        raise ImageError(f"{layout}/index.json: {len(found)} manifests tagged {tag!r}, expected 1")
    manifest = _read_json(_blob(layout, found[0].get("digest")))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ImageError(f"{layout}: manifest of {tag!r} has no config")
    config = _read_json(_blob(layout, manifest["config"].get("digest")))
    if not isinstance(config, dict):
        raise ImageError(f"{layout}: config of {tag!r} is not an object")
    return config


def verify_config(config: Mapping[str, Any], version: str) -> list[str]:
    """What is wrong with the committed image config (empty: nothing)."""
    problems: list[str] = []
    inner = config.get("config")
    if not isinstance(inner, dict):
        return ["config: no config object"]
    user = inner.get("User")
    if user != f"{IMAGE_UID}:{IMAGE_GID}":
        problems.append(f"config.User is {user!r}, expected '{IMAGE_UID}:{IMAGE_GID}'")
    if inner.get("Entrypoint") != ENTRYPOINT:
        problems.append(
            f"config.Entrypoint is {inner.get('Entrypoint')!r}, expected {ENTRYPOINT!r}"
        )
    env = inner.get("Env") or []
    path = next(
        (e.split("=", 1)[1] for e in env if isinstance(e, str) and e.startswith("PATH=")), ""
    )
    if f"{VENV}/bin" not in path.split(":"):
        problems.append(f"config.Env PATH {path!r} does not include {VENV}/bin")
    found = inner.get("Labels") or {}
    for key in REQUIRED_LABELS:
        if not found.get(key):
            problems.append(f"config.Labels has no {key}")
    if found.get("org.opencontainers.image.version") not in (None, version):
        problems.append(
            f"label org.opencontainers.image.version is "
            f"{found.get('org.opencontainers.image.version')!r}, expected {version!r}"
        )
    if config.get("os") != "linux":
        problems.append(f"os is {config.get('os')!r}, expected 'linux'")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or not rootfs.get("diff_ids"):
        problems.append("rootfs.diff_ids is empty: the image has no layers")
    return problems


@dataclass(frozen=True)
class Process:
    """The process an OCI runtime would start for the unpacked image (umoci's config.json)."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    uid: int
    gid: int
    cwd: str


def read_process(runtime_config: Mapping[str, Any]) -> Process:
    proc = runtime_config.get("process")
    if not isinstance(proc, dict):
        raise ImageError("config.json: no process")
    args = proc.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise ImageError(f"config.json: process.args {args!r} is not a non-empty list of strings")
    env = proc.get("env") or []
    if not all(isinstance(e, str) and "=" in e for e in env):
        raise ImageError(f"config.json: process.env {env!r} is not a list of KEY=VALUE")
    user = proc.get("user")
    if not isinstance(user, dict):
        raise ImageError("config.json: no process.user")
    uid, gid = user.get("uid"), user.get("gid")
    if not isinstance(uid, int) or not isinstance(gid, int) or uid < 0 or gid < 0:
        raise ImageError(f"config.json: process.user uid={uid!r} gid={gid!r} are not ids")
    cwd = proc.get("cwd", "/")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise ImageError(f"config.json: process.cwd {cwd!r} is not absolute")
    return Process(args=tuple(args), env=tuple(env), uid=uid, gid=gid, cwd=cwd)


def run_in_rootfs(
    rootfs: Path, process: Process, args: Sequence[str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run `args` (resolved with the image's PATH) chrooted into `rootfs`, with the image's
    environment, working directory and user: what a container runtime would execute, minus
    namespaces. Needs root (chroot, setuid)."""
    env = dict(e.split("=", 1) for e in process.env)

    def enter() -> None:
        os.chroot(rootfs)
        os.chdir(process.cwd)
        os.setgroups([])
        os.setgid(process.gid)
        os.setuid(process.uid)

    # subprocess resolves a bare args[0] against env["PATH"] and execs each candidate after
    # enter() has run, so the paths are looked up inside the chroot.
    return subprocess.run(
        list(args),
        env=env,
        preexec_fn=enter,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def smoke_commands(version: str) -> list[tuple[str, list[str], bool, str]]:
    """The image's smoke commands: (name, args, whether args follow the image's entrypoint or
    replace it, text its stdout must contain)."""
    probe = (
        "import os, sys, pynvml, grpc, google.protobuf, fastapi, kubernetes; "
        "import scheduler.agent.podresources_v1.api_pb2_grpc; "
        "print('uid', os.getuid(), 'gid', os.getgid(), 'python', sys.executable, "
        "'.'.join(map(str, sys.version_info[:3])))"
    )
    return [
        ("kvsched --version", ["--version"], True, f"kvsched {version}"),
        ("kvsched extender --help", ["extender", "--help"], True, "usage:"),
        ("kvsched controller --help", ["controller", "--help"], True, "usage:"),
        ("kvsched agent --help", ["agent", "--help"], True, "usage:"),
        (
            "agent dependencies import as the image user",
            [f"{VENV}/bin/python", "-c", probe],
            False,
            f"uid {IMAGE_UID} gid {IMAGE_GID} python {VENV}/bin/python",
        ),
    ]


def run_checks(bundle: Path, version: str) -> int:
    process = read_process(_read_json(bundle / "config.json"))
    if process.uid == 0:
        print(f"FAIL: the image runs as uid 0 (config.json process.user uid={process.uid})")
        return 1
    failures = 0
    for name, args, after_entrypoint, expect in smoke_commands(version):
        argv = [*process.args, *args] if after_entrypoint else args
        result = run_in_rootfs(bundle / "rootfs", process, argv)
        out = result.stdout.strip()
        ok = result.returncode == 0 and expect in out
        first = out.splitlines()[0] if out else "(no output)"
        print(f"{'ok  ' if ok else 'FAIL'} {name}: exit {result.returncode}: {first}")
        if not ok:
            failures += 1
            print(f"     expected exit 0 and {expect!r} in stdout; stderr:")
            for line in result.stderr.strip().splitlines()[-15:]:
                print(f"       {line}")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imagetool.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("project")
    p.add_argument("pyproject", type=Path)
    p.add_argument("field", choices=["name", "version", "license", "source"])
    sub.add_parser("image-name")
    p = sub.add_parser("requirements")
    p.add_argument("pyproject", type=Path)
    p.add_argument("extra")
    p = sub.add_parser("base-key")
    p.add_argument("--suite", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--package", action="append", default=[])
    p.add_argument("--mirror", action="append", default=[])
    p.add_argument("--option", action="append", default=[])
    p.add_argument("--period", default=None, help="ISO week; default: this week (UTC)")
    p = sub.add_parser("wheels-key")
    p.add_argument("pyproject", type=Path)
    p.add_argument("target", type=Path)
    p.add_argument("extra")
    p = sub.add_parser("pip-target")
    p.add_argument("target", type=Path)
    sub.add_parser("target-probe")
    p = sub.add_parser("labels")
    for name in ("version", "source", "license", "revision", "created"):
        p.add_argument(f"--{name}", required=True)
    p = sub.add_parser("verify")
    p.add_argument("layout", type=Path)
    p.add_argument("tag")
    p.add_argument("--version", required=True)
    p = sub.add_parser("run-checks")
    p.add_argument("bundle", type=Path)
    p.add_argument("--version", required=True)
    ns = parser.parse_args(argv)

    try:
        if ns.cmd == "project":
            project = read_project(ns.pyproject.read_text())
            print(getattr(project, ns.field))
        elif ns.cmd == "image-name":
            print(IMAGE_NAME)
        elif ns.cmd == "requirements":
            print("\n".join(requirements(read_project(ns.pyproject.read_text()), ns.extra)))
        elif ns.cmd == "base-key":
            period = ns.period or iso_week(dt.datetime.now(dt.UTC))
            print(
                base_key(
                    suite=ns.suite,
                    arch=ns.arch,
                    variant=ns.variant,
                    packages=ns.package,
                    mirrors=ns.mirror,
                    options=ns.option,
                    period=period,
                )
            )
        elif ns.cmd == "wheels-key":
            target = read_target(ns.target.read_text())
            print(wheels_key(ns.pyproject.read_bytes(), target, ns.extra))
        elif ns.cmd == "pip-target":
            print("\n".join(pip_target_args(read_target(ns.target.read_text()))))
        elif ns.cmd == "target-probe":
            print(TARGET_PROBE)
        elif ns.cmd == "labels":
            found = labels(
                version=ns.version,
                source=ns.source,
                license=ns.license,
                revision=ns.revision,
                created=ns.created,
            )
            print("\n".join(f"{k}={v}" for k, v in found.items()))
        elif ns.cmd == "verify":
            problems = verify_config(image_config(ns.layout, ns.tag), ns.version)
            for problem in problems:
                print(f"FAIL: {problem}")
            if problems:
                return 1
            print(f"ok   image config of {ns.tag}: user, entrypoint, PATH, labels")
        elif ns.cmd == "run-checks":
            return run_checks(ns.bundle, ns.version)
    except (ImageError, OSError) as exc:
        print(f"imagetool.py {ns.cmd}: ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
