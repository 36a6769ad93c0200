"""The two shipped kube-scheduler configurations stay one apart: the no-bind variant is the
shipped one without its bindVerb (hack/bench_scheduler.py --other-bind measures exactly that)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "manifests" / "scheduler" / "scheduler-config.yaml"
NOBIND = ROOT / "manifests" / "scheduler" / "scheduler-config-nobind.yaml"


def test_the_nobind_configuration_is_the_shipped_one_without_bind() -> None:
    shipped = yaml.safe_load(SHIPPED.read_text())
    nobind = yaml.safe_load(NOBIND.read_text())
    assert shipped["extenders"][0]["bindVerb"] == "bind"
    assert "bindVerb" not in nobind["extenders"][0]
    del shipped["extenders"][0]["bindVerb"]
    assert nobind == shipped
