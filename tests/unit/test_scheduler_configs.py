"""The two kube-scheduler configurations stay one apart: the bind variant is the shipped one
plus a bindVerb (hack/bench_scheduler.py --other-bind measures exactly that), and the shipped
one lets kube-scheduler bind."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "manifests" / "scheduler" / "scheduler-config.yaml"
BIND = ROOT / "manifests" / "scheduler" / "scheduler-config-bind.yaml"
TLS = ROOT / "manifests" / "overlays" / "tls" / "scheduler-config.yaml"


def test_the_bind_configuration_is_the_shipped_one_with_a_bind_verb() -> None:
    shipped = yaml.safe_load(SHIPPED.read_text())
    bind = yaml.safe_load(BIND.read_text())
    assert "bindVerb" not in shipped["extenders"][0]
    assert bind["extenders"][0].pop("bindVerb") == "bind"
    assert bind == shipped


def test_the_tls_overlay_binds_as_the_shipped_configuration_does() -> None:
    tls = yaml.safe_load(TLS.read_text())
    assert "bindVerb" not in tls["extenders"][0]
