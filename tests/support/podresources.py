"""The kubelet's own PodResources server code as a test server (hack/podresources).

:class:`KubeletServer` runs hack/podresources/main.go's binary (k8s.io/kubelet v0.37.2's
``PodResourcesListerServer`` registered with google.golang.org/grpc) on a unix socket,
answering from a JSON state file that :meth:`KubeletServer.set` rewrites atomically (the
server reads it on every call). Used by the agent's unit tests and the e2e tests.

The binary comes from ``hack/podresources/build.sh``: with ``KVSCHED_PODRES_NO_BUILD=1`` (the
cached one, or skip with how to build it) unless ``CI`` or ``KVSCHED_E2E=1`` is set; then it is
built if needed, and a failed build fails the tests loudly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "podresources" / "build.sh"
GPU = "nvidia.com/gpu"
# sun_path holds 108 bytes; leave room for the kernel's terminating NUL and some slack.
MAX_SOCKET_PATH = 100


def server_required() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("KVSCHED_E2E") == "1"


@functools.cache
def podresources_binary() -> Path:
    """The test server's binary: cached, or built when required (CI, KVSCHED_E2E=1); skip (or,
    when required, fail) with how to build it otherwise."""
    required = server_required()
    env = dict(os.environ)
    if not required:
        env["KVSCHED_PODRES_NO_BUILD"] = "1"
    try:
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        if required:
            pytest.fail(f"{BUILD_SCRIPT} could not run: {exc}")
        pytest.skip(f"{BUILD_SCRIPT} could not run: {exc}")
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines and Path(lines[-1]).is_file():
        return Path(lines[-1])
    message = (
        f"the PodResources test server is not available ({BUILD_SCRIPT} exited "
        f"{done.returncode}): {done.stderr.strip()[-2000:]}"
    )
    if required:
        pytest.fail(message + "\n(CI or KVSCHED_E2E=1 is set, so the server is required)")
    pytest.skip(
        "PodResources test server not built; build it once with `hack/podresources/build.sh` "
        "(needs Go >= 1.26; ~1.5 min cold) or run with KVSCHED_E2E=1 to build it on demand"
    )


def gpu_pod(namespace: str, name: str, *device_ids: str, container: str = "c") -> dict[str, Any]:
    """A pod of the state file with one container holding ``device_ids`` of nvidia.com/gpu."""
    devices = [{"resourceName": GPU, "deviceIds": list(device_ids)}] if device_ids else []
    return {
        "namespace": namespace,
        "name": name,
        "containers": [{"name": container, "devices": devices}],
    }


@dataclass
class KubeletServer:
    socket: Path
    state: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    writes: int = field(default=0)

    def set(
        self,
        pods: Sequence[dict[str, Any]] = (),
        allocatable: Sequence[str] | Sequence[dict[str, Any]] = (),
        *,
        delay_ms: int = 0,
        unimplemented: Sequence[str] = (),
    ) -> None:
        """Replace the state atomically; ``allocatable`` as GPU ids, or full device entries."""
        entries: list[dict[str, Any]] = []
        plain = [item for item in allocatable if isinstance(item, str)]
        if plain:
            entries.append({"resourceName": GPU, "deviceIds": plain})
        entries.extend(item for item in allocatable if isinstance(item, dict))
        state: dict[str, Any] = {"pods": list(pods), "allocatable": entries}
        if delay_ms:
            state["delayMs"] = delay_ms
        if unimplemented:
            state["unimplemented"] = list(unimplemented)
        self.writes += 1
        temporary = self.state.with_name(f".{self.state.name}.{self.writes}")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.state)

    def start(self, binary: Path, timeout_s: float = 15.0) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(binary), "--socket", str(self.socket), "--state", str(self.state)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"podresources-server exited {self.process.returncode}: "
                    f"{self.log.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"podresources-server did not listen on {self.socket}")
            time.sleep(0.02)

    @contextlib.contextmanager
    def serving(self, binary: Path) -> Iterator[KubeletServer]:
        """Started with an empty state (no pods, nothing allocatable); stopped on leaving."""
        self.set()
        self.start(binary)
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


def short_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, or a shorter folder when a socket path in tmp_path would be too long."""
    if len(str(tmp_path / "kubelet.sock")) <= MAX_SOCKET_PATH:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="kvs-podres-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
