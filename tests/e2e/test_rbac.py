"""Least privilege: each kvsched service account (as manifests/ grants it) can do what its
component needs and nothing else; checked with real requests made through impersonation
(writes as server-side dry runs, which are authorised exactly like real ones)."""

from __future__ import annotations

import pytest
from support.controlplane import ApiError, ControlPlane

pytestmark = pytest.mark.e2e

NS = "kvsched-system"
INVENTORIES = "/apis/kvsched.io/v1alpha1/nodeinventories"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
EVENTS = "/apis/events.k8s.io/v1/namespaces/default/events"


def as_account(account: str) -> dict[str, str]:
    return {"Impersonate-User": f"system:serviceaccount:{NS}:{account}"}


def status(
    plane: ControlPlane,
    account: str,
    method: str,
    path: str,
    body: dict[str, object] | None = None,
    content_type: str = "application/json",
) -> int:
    try:
        plane.request(method, path, body, headers=as_account(account), content_type=content_type)
    except ApiError as exc:
        return exc.status
    return 200


def allowed(code: int) -> bool:
    # 404/409/422 mean the request got past authorisation.
    return code not in (401, 403)


PATCH = "application/merge-patch+json"
INVENTORY = {
    "apiVersion": "kvsched.io/v1alpha1",
    "kind": "NodeInventory",
    "metadata": {"name": "rbac-check"},
}
BINDING = {
    "apiVersion": "v1",
    "kind": "Binding",
    "metadata": {"name": "nobody"},
    "target": {"apiVersion": "v1", "kind": "Node", "name": "nowhere"},
}
LEASE = {
    "apiVersion": "coordination.k8s.io/v1",
    "kind": "Lease",
    "metadata": {"name": "kube-scheduler"},
    "spec": {},
}
EVENT = {
    "apiVersion": "events.k8s.io/v1",
    "kind": "Event",
    "metadata": {"name": "nobody.1"},
    "eventTime": "2026-01-02T03:04:05.000001Z",
    "reportingController": "kvsched.io/extender",
    "reportingInstance": "rbac-check",
    "action": "Binding",
    "reason": "KvschedPlaced",
    "type": "Normal",
    "note": "rbac check",
    "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": "default", "name": "nobody"},
}

CASES = {
    "kvsched-scheduler": {
        "allowed": [
            ("GET", "/api/v1/nodes", None, None),
            ("GET", "/api/v1/pods", None, None),
            ("GET", INVENTORIES, None, None),
            ("PATCH", "/api/v1/namespaces/default/pods/nobody?dryRun=All", {"metadata": {}}, PATCH),
            ("POST", "/api/v1/namespaces/default/pods/nobody/binding?dryRun=All", BINDING, None),
            # The extender's pod events (through system:kube-scheduler, as kube-scheduler's own).
            ("POST", f"{EVENTS}?dryRun=All", EVENT, None),
        ],
        # Deleting pods is kube-scheduler's (preemption, through system:kube-scheduler): the
        # extender shares the pod and so the account, and cannot be narrower than that.
        "forbidden": [
            ("POST", f"{INVENTORIES}?dryRun=All", INVENTORY, None),
            ("PATCH", f"{INVENTORIES}/rbac-check/status?dryRun=All", {"status": {}}, PATCH),
            ("GET", "/api/v1/secrets", None, None),
            ("PATCH", "/api/v1/nodes/nowhere?dryRun=All", {"metadata": {}}, PATCH),
        ],
    },
    "kvsched-controller": {
        "allowed": [
            ("GET", "/api/v1/nodes", None, None),
            ("GET", "/api/v1/pods", None, None),
            ("POST", f"{INVENTORIES}?dryRun=All", INVENTORY, None),
            ("DELETE", f"{INVENTORIES}/rbac-check?dryRun=All", None, None),
            ("PATCH", f"{INVENTORIES}/rbac-check/status?dryRun=All", {"status": {}}, PATCH),
            ("GET", f"{LEASES}/kvsched-controller", None, None),
        ],
        "forbidden": [
            ("PATCH", "/api/v1/namespaces/default/pods/nobody?dryRun=All", {"metadata": {}}, PATCH),
            ("POST", "/api/v1/namespaces/default/pods/nobody/binding?dryRun=All", BINDING, None),
            ("GET", "/api/v1/secrets", None, None),
            ("GET", f"{LEASES}/kube-scheduler", None, None),
            ("PATCH", f"{INVENTORIES}/rbac-check?dryRun=All", {"spec": {}}, PATCH),
            ("POST", f"{EVENTS}?dryRun=All", EVENT, None),
        ],
    },
    "kvsched-agent": {
        "allowed": [
            ("GET", f"{INVENTORIES}/rbac-check", None, None),
            ("POST", f"{INVENTORIES}?dryRun=All", INVENTORY, None),
            ("PATCH", f"{INVENTORIES}/rbac-check/status?dryRun=All", {"status": {}}, PATCH),
        ],
        "forbidden": [
            ("GET", INVENTORIES, None, None),
            ("DELETE", f"{INVENTORIES}/rbac-check?dryRun=All", None, None),
            ("GET", "/api/v1/pods", None, None),
            ("GET", "/api/v1/nodes", None, None),
            ("POST", f"{LEASES}?dryRun=All", LEASE, None),
            ("POST", f"{EVENTS}?dryRun=All", EVENT, None),
        ],
    },
}


@pytest.mark.parametrize("account", sorted(CASES))
def test_service_accounts_can_do_exactly_what_their_component_needs(
    control_plane: ControlPlane, manifests_applied: object, account: str
) -> None:
    results = {}
    for verdict in ("allowed", "forbidden"):
        for method, path, body, content_type in CASES[account][verdict]:
            code = status(
                control_plane, account, method, path, body, content_type or "application/json"
            )
            results[(verdict, method, path)] = code
    wrong = {k: v for k, v in results.items() if allowed(v) != (k[0] == "allowed")}
    assert not wrong, wrong
