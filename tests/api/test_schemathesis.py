"""Property-based API testing with schemathesis against the extender's own OpenAPI schema.

Every operation gets generated requests (valid bodies from the documented wire format, plus
whatever schemathesis derives from it); every answer must be an expected non-5xx status, a
rejection must say why in its "Error", and a 200 must be JSON (the Prometheus text of /metrics
aside). The number of cases that ran is written to the terminal at the end of the session.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from support.k8s import gpu_node, pod

from scheduler.extender.app import AppSettings, create_app
from scheduler.models.catalog import Catalog
from scheduler.state.offline import ClusterObjects
from scheduler.state.store import ClusterStore

MAX_EXAMPLES = 100
ALLOWED = {200, 400, 404, 405, 413, 422}
# Our own rejections carry kube-scheduler's "Error"; the framework's (no such route, method not
# allowed, a path parameter FastAPI refused) carry its "detail". Either must say something.
OURS = {400, 413}


def small_store() -> ClusterStore:
    store = ClusterStore(Catalog.builtin())
    store.load(
        ClusterObjects(
            nodes=[gpu_node("gpu-a"), gpu_node("gpu-b", gpus=4)],
            pods=[pod("waiting", gpus=2, namespace="llm")],
        )
    )
    return store


APP = create_app(small_store(), AppSettings(max_body_bytes=64 * 1024))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)

CASES: Counter[str] = Counter()  # cases per documented operation
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    total = sum(CASES.values())
    per_operation = ", ".join(f"{label} {count}" for label, count in sorted(CASES.items()))
    per_status = ", ".join(f"{status}: {count}" for status, count in sorted(STATUSES.items()))
    line = f"schemathesis: {total} cases ran; by status {per_status}; by operation {per_operation}"
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


def check_response(case: Any, status: int, content_type: str, text: str) -> None:
    where = f"{case.method} {case.formatted_path} body={case.body!r}"
    assert status < 500, f"{status} from {where}: {text}"
    assert status in ALLOWED, f"undocumented {status} from {where}: {text}"
    if status == 200:
        if not content_type.startswith("text/plain"):  # /metrics is Prometheus text
            json.loads(text)
        return
    payload = json.loads(text)
    assert isinstance(payload, dict), f"{status} from {where} is not an object: {text}"
    reason = payload.get("Error") if status in OURS else payload.get("Error", payload.get("detail"))
    assert reason, f"{status} from {where} does not say why: {text}"
    assert not isinstance(reason, str) or reason.strip(), f"{status} from {where}: blank reason"


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api(case: Any) -> None:
    response = case.call()
    documented = case.method.lower() in case.operation.schema.raw_schema["paths"][case.path]
    CASES[f"{case.method} {case.path}" if documented else "undocumented methods"] += 1
    STATUSES[response.status_code] += 1
    check_response(
        case, response.status_code, response.headers.get("content-type", [""])[0], response.text
    )
