"""The real kube-scheduler calling the extender over mutual TLS, configured with
manifests/overlays/tls/scheduler-config.yaml (paths, URL, profile and lease names
substituted so that it can run beside the session's plain scheduler)."""

from __future__ import annotations

import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.controlplane import REPO_ROOT, ControlPlane
from support.e2e import Cluster, free_port, wait_until

pytestmark = pytest.mark.e2e

TLS_CONFIG = REPO_ROOT / "manifests" / "overlays" / "tls" / "scheduler-config.yaml"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a serving certificate for 127.0.0.1 and a client certificate, like the Secret
    kvsched-tls holds."""
    files = {
        name: folder / name
        for name in ("ca.key", "ca.crt", "tls.key", "tls.crt", "client.key", "client.crt")
    }
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=kvsched-test-ca",
        "-keyout",
        str(files["ca.key"]),
        "-out",
        str(files["ca.crt"]),
    )
    for prefix, subject, extension in (
        ("tls", "/CN=kvsched-extender", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "/CN=kube-scheduler", "extendedKeyUsage=clientAuth"),
    ):
        csr = folder / f"{prefix}.csr"
        ext = folder / f"{prefix}.ext"
        ext.write_text(extension + "\n")
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            str(files[f"{prefix}.key"]),
            "-out",
            str(csr),
        )
        openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(files["ca.crt"]),
            "-CAkey",
            str(files["ca.key"]),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(ext),
            "-out",
            str(files[f"{prefix}.crt"]),
        )
    return files


@pytest.fixture
def tls_extender(
    control_plane: ControlPlane, manifests_applied: object, tmp_path: Path
) -> Iterator[tuple[str, dict[str, Path]]]:
    certs = make_certs(tmp_path)
    port = free_port()
    log = (tmp_path / "extender.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler.cli",
            "extender",
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "--port",
            str(port),
            "--log-format",
            "text",
            "--tls-cert-file",
            str(certs["tls.crt"]),
            "--tls-key-file",
            str(certs["tls.key"]),
            "--tls-client-ca-file",
            str(certs["ca.crt"]),
        ],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    context.load_cert_chain(str(certs["client.crt"]), str(certs["client.key"]))

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2, context=context) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(ready, timeout=60, what="TLS extender ready")
        yield url, certs
    finally:
        process.terminate()
        process.wait(15)


def test_scheduler_calls_the_extender_over_mutual_tls(
    cluster: Cluster, tls_extender: tuple[str, dict[str, Path]], tmp_path: Path
) -> None:
    url, certs = tls_extender
    config = yaml.safe_load(TLS_CONFIG.read_text())
    config["clientConnection"]["kubeconfig"] = str(cluster.cp.kubeconfig)
    config["leaderElection"]["resourceName"] = "kvsched-scheduler-tls"
    config["profiles"][0]["schedulerName"] = "kvsched-tls"
    extender = config["extenders"][0]
    assert extender["enableHTTPS"] is True
    extender["urlPrefix"] = url
    extender["tlsConfig"].update(
        caFile=str(certs["ca.crt"]),
        certFile=str(certs["client.crt"]),
        keyFile=str(certs["client.key"]),
    )
    path = tmp_path / "tls-scheduler.yaml"
    path.write_text(yaml.safe_dump(config))
    scheduler = cluster.cp.start_scheduler(path)
    try:
        cluster.node("a")
        cluster.pod(
            "over-tls",
            gpus=2,
            scheduler="kvsched-tls",
            annotations={"kvsched.io/model": "meta-llama/Llama-3.1-8B-Instruct"},
        )
        pod = cluster.wait_placed("over-tls")
        assert "kvsched.io/predicted-gpus" in pod["metadata"]["annotations"]
    finally:
        cluster.cp.stop_scheduler(scheduler)


def test_callers_without_a_client_certificate_are_refused(
    tls_extender: tuple[str, dict[str, Path]],
) -> None:
    url, certs = tls_extender
    anonymous = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    with pytest.raises((ssl.SSLError, OSError)):
        urllib.request.urlopen(url + "/healthz", timeout=5, context=anonymous).read()
