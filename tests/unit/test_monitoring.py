"""The Grafana dashboard and the Prometheus alerting rules (manifests/monitoring/) use only
metrics that the running components export, in PromQL that parses; every exported metric is
on the dashboard; the controller's agent-report-age gauge behaves as the stale-inventory alert
assumes.

Which metrics exist is read from the components' own registries: the extender's
(ExtenderMetrics), the controller's (ControllerMetrics, as `kvsched controller` serves it) and
the agent's (AgentLoop.registry, as `kvsched agent` serves it). PromQL is checked here for
balanced brackets and known functions, and by the real `promtool check rules` where promtool
is on the PATH or KVSCHED_PROMTOOL names it. (It is not built here: promtool from the Go
module proxy pulls every service-discovery SDK, over 2 GB, and did not build within 7 minutes
on the 2-core development machine.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from scheduler.agent.run import AgentLoop, AgentSettings
from scheduler.controller.residency import ResidencySettings, ResidencyTracker
from scheduler.controller.run import (
    Controller,
    ControllerMetrics,
    ControllerSettings,
    ControllerState,
)
from scheduler.extender.metrics import ExtenderMetrics
from scheduler.inventory.merge import merge_agent_report
from scheduler.models.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard-kvsched.json"
RULES = MONITORING / "prometheus-rules.yaml"

# Exported but deliberately not on the dashboard, with the reason.
NOT_ON_DASHBOARD = {
    # Declared by ControllerMetrics but never set by the controller (always empty).
    "kvsched_controller_cached_models": "never set",
}

# PromQL functions and aggregation operators (Prometheus 3.x), what a query may call.
PROMQL_FUNCTIONS = {
    *("abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max"),
    *("clamp_min", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta"),
    *("deriv", "exp", "floor", "histogram_quantile", "histogram_count", "histogram_sum"),
    *("histogram_fraction", "holt_winters", "hour", "idelta", "increase", "irate"),
    *("label_join", "label_replace", "ln", "log2", "log10", "minute", "month"),
    *("predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc"),
    *("sqrt", "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time"),
    *("max_over_time", "sum_over_time", "count_over_time", "quantile_over_time"),
    *("stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time"),
    *("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"),
    *("bottomk", "topk", "quantile"),
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}
# Grafana's interval variables, replaced by a plain duration where PromQL is checked.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}


# ---- what the components export ------------------------------------------------------------


def exported_names(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Family name -> the series names it exports (counters `_total`, histograms
    `_bucket/_sum/_count`), whether or not a labelled family has children yet."""
    families: dict[str, set[str]] = {}
    for family in registry.collect():
        name, kind = family.name, family.type
        if kind == "counter":
            series = {f"{name}_total"}
        elif kind == "histogram":
            series = {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            series = {name, f"{name}_sum", f"{name}_count"}
        elif kind == "info":
            series = {f"{name}_info"}
        else:
            series = {name}
        families[name] = series
    return families


def component_registries() -> dict[str, CollectorRegistry]:
    agent = AgentLoop(
        AgentSettings(node="n1", pod_resources_socket=Path("/nonexistent/kubelet.sock")),
        merge_agent_report,
    )
    return {
        "extender": ExtenderMetrics().registry,
        "controller": ControllerMetrics().registry,
        "agent": agent.registry,
    }


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Component -> the series names it exports."""
    return {
        component: {s for series in exported_names(registry).values() for s in series}
        for component, registry in component_registries().items()
    }


# ---- what the dashboard and the rules use -------------------------------------------------


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel.get("title", "?"), target["expr"]
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def rules_spec() -> dict[str, Any]:
    (rule,) = [d for d in yaml.safe_load_all(RULES.read_text()) if d]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    spec: dict[str, Any] = rule["spec"]
    return spec


def alert_rules() -> list[dict[str, Any]]:
    return [r for group in rules_spec()["groups"] for r in group["rules"]]


def all_exprs() -> list[tuple[str, str]]:
    return [*dashboard_exprs(), *((r["alert"], r["expr"]) for r in alert_rules())]


def _strip(expr: str) -> str:
    """The expression without strings, label matchers, ranges and grouping label lists."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)


def metric_names(expr: str) -> set[str]:
    text = _strip(expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def functions(expr: str) -> set[str]:
    return set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", _strip(expr))) - KEYWORDS


def balanced(expr: str) -> bool:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def test_the_extractor_finds_metric_names_and_only_them() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (verb, le) (rate(a_bucket{verb=~"f|p"}[5m])))'
        " > 2.5 or absent(b) unless on (x) c_total offset 5m and d == bool 0"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c_total", "d"}
    assert functions(expr) == {"histogram_quantile", "sum", "rate", "absent"}
    assert balanced(expr) and not balanced("sum(rate(x[5m])") and not balanced("a{b=(}")


# ---- the checks ----------------------------------------------------------------------------


def test_every_metric_used_is_exported(exported: dict[str, set[str]]) -> None:
    everything = set().union(*exported.values())
    unknown = {
        f"{where}: {name}"
        for where, expr in all_exprs()
        for name in metric_names(expr)
        if name not in everything
    }
    assert not unknown, f"metrics no component exports: {sorted(unknown)}"


def test_promql_is_balanced_and_calls_known_functions() -> None:
    for where, expr in all_exprs():
        assert balanced(expr), f"{where}: unbalanced brackets in {expr!r}"
        unknown = functions(expr) - PROMQL_FUNCTIONS
        assert not unknown, f"{where}: unknown functions {unknown} in {expr!r}"
        assert metric_names(expr), f"{where}: no metric in {expr!r}"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    for component, registry in component_registries().items():
        for family, series in exported_names(registry).items():
            if family in NOT_ON_DASHBOARD:
                continue
            assert series & used, f"{component} metric {family} is not on the dashboard"


def test_the_alerts_cover_what_operators_page_on() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    needed = {
        "kvsched_extender_requests_total": "extender errors",
        "kvsched_extender_request_duration_seconds_bucket": "extender latency",
        "kvsched_objects_rejected_total": "objects quarantined",
        "kvsched_gpu_prediction_mismatches_total": "prediction mismatches",
        "kvsched_controller_agent_report_age_seconds": "stale inventories",
        "kvsched_watch_restarts_total": "extender watch restarts",
        "kvsched_controller_watch_restarts_total": "controller watch restarts",
        "kvsched_controller_leader": "no controller leader",
        "kvsched_agent_podresources_up": "agent PodResources down",
    }
    used = {name for rule in rules.values() for name in metric_names(rule["expr"])}
    assert not set(needed) - used, [needed[m] for m in set(needed) - used]
    for name, rule in rules.items():
        assert re.fullmatch(r"Kvsched[A-Za-z]+", name)
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
    # Near kube-scheduler's 5 s extender httpTimeout, and below it.
    timeout = rules["KvschedExtenderLatencyNearTimeout"]["expr"]
    assert float(re.findall(r">\s*([\d.]+)\s*$", timeout.strip())[0]) < 5


def test_the_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "kvsched"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables


def test_monitoring_stays_out_of_the_default_apply() -> None:
    default = yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())
    assert not any("monitoring" in str(r) for r in default.get("resources", []))
    own = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    for resource in own["resources"]:
        assert (MONITORING / resource).is_file()
    for generator in own["configMapGenerator"]:
        for file in generator["files"]:
            assert (MONITORING / file).is_file()


# ---- the controller's gauge behind the stale-inventory alert ------------------------------

NOW = dt.datetime(2026, 11, 28, 8, 0, 0, tzinfo=dt.UTC)


def _inventory(name: str, source: str, observed: dt.datetime | str) -> dict[str, Any]:
    text = observed if isinstance(observed, str) else observed.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"name": name}, "status": {"source": source, "observedAt": text}}


def test_agent_report_age_is_the_oldest_last_agent_report() -> None:
    state = ControllerState(ResidencyTracker(Catalog.builtin(), ResidencySettings()))
    controller = Controller(None, state, ControllerSettings())  # type: ignore[arg-type]
    assert controller.agent_report_age(NOW) == 0.0  # no agent: nothing is stale
    state.nodes = {n: {"metadata": {"name": n}} for n in ("a", "b", "c")}
    state.inventories = {
        "a": _inventory("a", "agent", NOW - dt.timedelta(seconds=30)),
        "b": _inventory("b", "agent", NOW - dt.timedelta(seconds=400)),
        "c": _inventory("c", "controller", NOW - dt.timedelta(seconds=9000)),
    }
    assert controller.agent_report_age(NOW) == 400.0
    # b's agent goes silent and the controller's own view takes over: still stale, and older.
    state.inventories["b"] = _inventory("b", "controller", NOW)
    later = NOW + dt.timedelta(seconds=300)
    assert controller.agent_report_age(later) == 700.0
    # b's agent reports again.
    state.inventories["b"] = _inventory("b", "agent", later)
    assert controller.agent_report_age(later) == 330.0
    # An unreadable observedAt is skipped; a deleted node is forgotten.
    state.inventories["a"] = _inventory("a", "agent", "yesterday")
    del state.nodes["a"]
    assert controller.agent_report_age(later) == 0.0


# ---- promtool, when built ------------------------------------------------------------------


def promtool() -> str | None:
    return os.environ.get("KVSCHED_PROMTOOL") or shutil.which("promtool")


def test_promtool_checks_the_rules_and_the_dashboard_queries(tmp_path: Path) -> None:
    binary = promtool()
    if binary is None:
        pytest.skip("promtool not on PATH (or KVSCHED_PROMTOOL): PromQL checked by this file only")
    rules = tmp_path / "kvsched-rules.yml"
    rules.write_text(yaml.safe_dump(rules_spec()))
    # Every dashboard query as a recording rule: promtool parses and type-checks it.
    recorded = []
    for index, (_, expr) in enumerate(dashboard_exprs()):
        for variable, duration in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, duration)
        recorded.append({"record": f"kvsched:dashboard_query_{index}", "expr": expr})
    queries = tmp_path / "dashboard-queries.yml"
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    result = subprocess.run(
        [binary, "check", "rules", str(rules), str(queries)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
