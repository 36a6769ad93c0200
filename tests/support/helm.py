"""helm for the chart's tests: built from Go modules by hack/helm/build.sh (cached), or the
binary named by KVSCHED_HELM_BIN."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.controlplane import REPO_ROOT, ControlPlaneUnavailable, run_build_script

HELM_BUILD_SH = REPO_ROOT / "hack" / "helm" / "build.sh"
HINT = "helm is built from Go modules: run `make helm` once (cached in ~/.cache/kvsched)"


def find_helm(required: bool) -> Path:
    """The helm binary. Not `required`: only a cached one, else skip with how to build it;
    `required` (CI, KVSCHED_E2E=1): built if needed, and a failed build fails the test."""
    if explicit := os.environ.get("KVSCHED_HELM_BIN"):
        return Path(explicit)
    env = dict(os.environ)
    if not required:
        env["KVSCHED_HELM_NO_BUILD"] = "1"
    try:
        return run_build_script(HELM_BUILD_SH, env, timeout=3600)
    except ControlPlaneUnavailable as exc:
        if required:
            pytest.fail(f"helm unavailable (required here): {exc}", pytrace=False)
        pytest.skip(HINT)
