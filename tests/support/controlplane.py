"""A real Kubernetes control plane (etcd + kube-apiserver, kube-scheduler on demand) for e2e tests.

The binaries are built from Go modules by ``hack/controlplane/build.sh`` into a version-keyed
cache outside the repository; ``hack/controlplane/up.sh`` starts etcd and the apiserver on
127.0.0.1 with free ports, a static admin token (system:masters) and a kubeconfig;
``hack/controlplane/down.sh`` stops them. There is no kubelet and no controller-manager: tests
create Node objects themselves and use bare Pods. (Tests that need real controllers add
kube-controller-manager, KWOK and the LWS controller through support/controllers.py.)

    with ControlPlane.start(tmp_path / "cp") as cp:
        cp.request("POST", "/api/v1/nodes", node)
        sched = cp.start_scheduler(config_path)

Anything that prevents a working control plane (no Go toolchain, a failed build, a component
that does not become ready) raises :class:`ControlPlaneUnavailable` with the reason, so a
fixture can turn it into a skip or a failure as it sees fit.

Environment: ``KVSCHED_CP_BIN_DIR`` (use these binaries, skip the build),
``KVSCHED_CP_NO_BUILD=1`` (use only cached binaries, never compile), plus everything
``build.sh`` and ``up.sh`` read (``KVSCHED_CACHE``, ``KVSCHED_K8S_VERSION`` ...).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack" / "controlplane"
BUILD_SH = HACK_DIR / "build.sh"
UP_SH = HACK_DIR / "up.sh"
DOWN_SH = HACK_DIR / "down.sh"

BUILD_TIMEOUT_S = 3 * 3600.0
"""A cold build downloads ~1 GB of modules and compiles for tens of minutes on 2 cores."""
START_TIMEOUT_S = 180.0
BINARIES = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubectl")
"""What build.sh builds; kube-controller-manager is started only by the tests that need real
workload controllers (support/controllers.py), never by :meth:`ControlPlane.start`."""


class ControlPlaneUnavailable(Exception):  # noqa: N818 - the name says what the caller gets
    """The control plane cannot be built or started; ``str(exc)`` says why."""


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


def tail_lines(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _file_tail(path: Path, lines: int = 40) -> str:
    try:
        return tail_lines(path.read_text(errors="replace"), lines)
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _parse_env(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("KVSCHED_CP_"):
            out[key] = value
    return out


def run_build_script(script: Path, env: Mapping[str, str], timeout: float) -> Path:
    """Run a hack/*/build.sh with `env` and return the path it prints last on stdout.

    Raises ControlPlaneUnavailable (with the tail of its stderr) when it cannot run, times out
    or fails; whether the path is usable is the caller's to check.
    """
    try:
        proc = subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise ControlPlaneUnavailable(f"{script} took longer than {timeout:.0f}s") from exc
    except OSError as exc:
        raise ControlPlaneUnavailable(f"cannot run {script}: {exc}") from exc
    if proc.returncode != 0:
        raise ControlPlaneUnavailable(
            f"{script} failed (exit {proc.returncode}):\n{tail_lines(proc.stderr)}"
        )
    lines = proc.stdout.strip().splitlines()
    return Path(lines[-1]) if lines else Path()


def build_binaries(*, timeout: float = BUILD_TIMEOUT_S) -> Path:
    """Run build.sh (seconds when cached) and return the directory holding the binaries.

    With ``KVSCHED_CP_NO_BUILD=1`` build.sh never compiles and fails when nothing is cached.
    """
    env = dict(os.environ)
    if explicit := env.get("KVSCHED_CP_BIN_DIR"):
        bin_dir = Path(explicit)
        missing = [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]
        if missing:
            raise ControlPlaneUnavailable(f"KVSCHED_CP_BIN_DIR={bin_dir} lacks {missing}")
        return bin_dir
    bin_dir = run_build_script(BUILD_SH, env, timeout)
    if not all(os.access(bin_dir / b, os.X_OK) for b in BINARIES):
        raise ControlPlaneUnavailable(f"{BUILD_SH} printed {bin_dir!s}, which lacks {BINARIES}")
    return bin_dir


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver; use :meth:`start` to get one."""

    state_dir: Path
    bin_dir: Path
    server_url: str
    token: str
    ca_file: Path
    kubeconfig: Path
    schedulers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _scheduler_ports: dict[int, int] = field(default_factory=dict, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # --- life cycle ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        state_dir: Path | str | None = None,
        *,
        build_timeout: float = BUILD_TIMEOUT_S,
        start_timeout: float = START_TIMEOUT_S,
        fresh: bool = True,
    ) -> Self:
        """Build (or reuse) the binaries and start etcd + kube-apiserver in ``state_dir``.

        ``state_dir`` defaults to ``$KVSCHED_CP_DIR`` or ``/tmp/kvsched-cp-<user>``; it holds the
        certificates, token file, kubeconfig, etcd data, pid files and logs. With ``fresh``
        (the default) whatever an earlier run left running there is stopped first, so the
        cluster starts empty; ``fresh=False`` reuses a ready control plane of that state dir.
        """
        bin_dir = build_binaries(timeout=build_timeout)
        env = dict(os.environ)
        if state_dir is not None:
            env["KVSCHED_CP_DIR"] = str(Path(state_dir).resolve())
        env["KVSCHED_CP_BIN_DIR"] = str(bin_dir)
        env["KVSCHED_CP_TIMEOUT"] = str(int(start_timeout))
        env.pop("KVSCHED_SCHEDULER_CONFIG", None)
        if fresh:
            cls._down(env)
        try:
            proc = subprocess.run(
                ["bash", str(UP_SH)],
                capture_output=True,
                text=True,
                timeout=start_timeout * 2 + 60,
                check=False,
                env=env,
            )
        except subprocess.TimeoutExpired as exc:
            cls._down(env)
            raise ControlPlaneUnavailable(f"{UP_SH} did not finish in time") from exc
        if proc.returncode != 0:
            cls._down(env)
            raise ControlPlaneUnavailable(
                f"{UP_SH} failed (exit {proc.returncode}):\n{tail_lines(proc.stderr)}"
            )
        values = _parse_env(proc.stdout)
        try:
            plane = cls(
                state_dir=Path(values["KVSCHED_CP_DIR"]),
                bin_dir=Path(values["KVSCHED_CP_BIN_DIR"]),
                server_url=values["KVSCHED_CP_SERVER"],
                token=values["KVSCHED_CP_TOKEN"],
                ca_file=Path(values["KVSCHED_CP_CA"]),
                kubeconfig=Path(values["KVSCHED_CP_KUBECONFIG"]),
            )
        except KeyError as exc:
            cls._down(env)
            raise ControlPlaneUnavailable(
                f"{UP_SH} did not print {exc.args[0]}; stdout was:\n{proc.stdout}"
            ) from exc
        atexit.register(plane.stop)
        return plane

    @staticmethod
    def _down(env: Mapping[str, str]) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["bash", str(DOWN_SH)],
                capture_output=True,
                timeout=120,
                check=False,
                env=dict(env),
            )

    def stop(self) -> None:
        """Stop the schedulers started here, then etcd and the apiserver. Idempotent."""
        if self._stopped:
            return
        for proc in list(self.schedulers):
            self.stop_scheduler(proc)
        # A later start() in the same state dir replaced this control plane: leave that one be.
        try:
            current = _parse_env((self.state_dir / "env").read_text()).get("KVSCHED_CP_SERVER")
        except OSError:
            current = None
        if current in (None, self.server_url):
            env = dict(os.environ)
            env["KVSCHED_CP_DIR"] = str(self.state_dir)
            self._down(env)
        self._stopped = True
        atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- kube-scheduler -----------------------------------------------------------------------

    def start_scheduler(
        self,
        config_path: Path | str,
        *,
        extra_args: Sequence[str] = (),
        verbosity: int = 2,
        timeout: float = 60.0,
    ) -> subprocess.Popen[bytes]:
        """Start kube-scheduler with a KubeSchedulerConfiguration and wait for its /healthz.

        The config must carry ``clientConnection.kubeconfig`` (e.g. ``self.kubeconfig``) and
        ``leaderElection.leaderElect: false`` (with ``--config`` the flags are ignored). The
        log goes to ``state_dir/kube-scheduler-<port>.log`` (see :meth:`scheduler_log`).
        """
        config = Path(config_path).resolve()
        if not config.is_file():
            raise ControlPlaneUnavailable(f"scheduler config {config} does not exist")
        port = _free_port()
        log_path = self.state_dir / f"kube-scheduler-{port}.log"
        cmd = [
            str(self.bin_dir / "kube-scheduler"),
            f"--config={config}",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            f"--cert-dir={self.state_dir / f'kube-scheduler-{port}-certs'}",
            f"--v={verbosity}",
            *extra_args,
        ]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.state_dir / f"kube-scheduler-{port}.pid").write_text(f"{proc.pid}\n")
        self.schedulers.append(proc)
        self._scheduler_ports[proc.pid] = port
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context()  # the scheduler serves a self-signed cert
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{port}/healthz"
        while True:
            if proc.poll() is not None:
                self.stop_scheduler(proc)
                raise ControlPlaneUnavailable(
                    f"kube-scheduler exited with {proc.returncode}:\n{_file_tail(log_path)}"
                )
            with (
                contextlib.suppress(OSError),  # URLError is an OSError
                urllib.request.urlopen(url, timeout=2, context=context) as resp,
            ):
                if resp.status == 200:
                    return proc
            if time.monotonic() > deadline:
                self.stop_scheduler(proc)
                raise ControlPlaneUnavailable(
                    f"kube-scheduler not healthy after {timeout:.0f}s:\n{_file_tail(log_path)}"
                )
            time.sleep(0.2)

    def scheduler_port(self, proc: subprocess.Popen[bytes]) -> int:
        """The /healthz and /metrics port of a scheduler started by :meth:`start_scheduler`."""
        return self._scheduler_ports[proc.pid]

    def scheduler_log(self, proc: subprocess.Popen[bytes]) -> Path:
        """Where a scheduler started by :meth:`start_scheduler` writes its log."""
        return self.state_dir / f"kube-scheduler-{self.scheduler_port(proc)}.log"

    def stop_scheduler(self, proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
        """Stop one scheduler started by :meth:`start_scheduler` (SIGTERM, then SIGKILL)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        port = self._scheduler_ports.pop(proc.pid, None)
        if port is not None:
            (self.state_dir / f"kube-scheduler-{port}.pid").unlink(missing_ok=True)
        if proc in self.schedulers:
            self.schedulers.remove(proc)

    # --- talking to the apiserver -------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """``os.environ`` plus KUBECONFIG pointing at this control plane (for kubectl etc.)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call with the admin token; returns the decoded JSON (or text) answer.

        Raises :class:`ApiError` on a non-2xx status.
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.server_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
                **({"Content-Type": content_type} if data is not None else {}),
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")) from exc
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    def restart_apiserver(self, down_for: float = 1.0, timeout: float = 60.0) -> float:
        """Stop kube-apiserver (SIGTERM), keep it down `down_for` seconds, start it again with
        the same command line (etcd keeps the data); returns seconds until /readyz was ok."""
        pid_file = self.state_dir / "kube-apiserver.pid"
        pid = int(pid_file.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if _is_zombie(pid):
                break
            time.sleep(0.1)
        time.sleep(down_for)
        started = time.monotonic()
        log = (self.state_dir / "kube-apiserver.log").open("ab")
        process = subprocess.Popen(
            [a.decode() for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pid_file.write_text(f"{process.pid}\n")
        while not self.ready():
            if time.monotonic() - started > timeout:
                raise ControlPlaneUnavailable("kube-apiserver did not come back")
            time.sleep(0.2)
        return time.monotonic() - started

    def ready(self) -> bool:
        try:
            answer: object = self.request("GET", "/readyz", timeout=5)
        except (ApiError, OSError):
            return False
        return answer == "ok"

    def wait_for(
        self,
        path: str,
        predicate: Callable[[Any], bool],
        *,
        timeout: float = 30.0,
        interval: float = 0.2,
    ) -> Any:
        """GET ``path`` until ``predicate(answer)`` is true; returns the answer."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            with contextlib.suppress(ApiError, OSError):
                last = self.request("GET", path)
                if predicate(last):
                    return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"GET {path}: condition not met in {timeout}s; last: {last!r}")
            time.sleep(interval)
