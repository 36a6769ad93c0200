"""A scripted Kubernetes API for ClusterSync tests (no API server): canned lists and watch streams
per kind, pod annotate/bind/get as the API server answers them; every call is recorded."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from scheduler.state.kube import KubeError, NotFoundError, ObjectList
from scheduler.state.store import ClusterStore
from scheduler.state.sync import ClusterSync, SyncSettings
from support.k8s import pod


def with_kind(obj: dict[str, Any], kind: str, rv: str = "1") -> dict[str, Any]:
    obj = {**obj, "kind": kind}
    obj["metadata"] = {**obj["metadata"], "resourceVersion": rv}
    return obj


class FakeApi:
    """Scripted lists and watch streams per kind; records every call."""

    def __init__(self) -> None:
        self.lists: dict[str, list[ObjectList | Exception]] = {}
        self.watches: dict[str, list[list[dict[str, Any]] | Exception]] = {}
        self.calls: list[tuple[str, ...]] = []
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.bind_error: Exception | None = None
        self.annotate_error: Exception | None = None
        self.exhausted = threading.Event()

    def list(self, kind: str) -> ObjectList:
        self.calls.append(("list", kind))
        scripted = self.lists.get(kind) or [ObjectList([], "1")]
        result = scripted.pop(0) if len(scripted) > 1 else scripted[0]
        if isinstance(result, Exception):
            raise result
        return result

    def watch(self, kind: str, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        self.calls.append(("watch", kind, resource_version))
        scripted = self.watches.get(kind) or []
        if not scripted:
            self.exhausted.set()
            raise KubeError("no more scripted watches")
        result = scripted.pop(0)
        if isinstance(result, Exception):
            raise result
        yield from result

    def annotate_pod(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        uid: str | None = None,
    ) -> None:
        self.calls.append(("annotate", f"{namespace}/{name}"))
        if self.annotate_error:
            raise self.annotate_error
        meta = self.pods.setdefault((namespace, name), pod(name, namespace=namespace))["metadata"]
        if uid is not None and meta.get("uid") != uid:
            # As the API server answers a patch that would change the UID.
            raise KubeError(f"pod {namespace}/{name}: metadata.uid: field is immutable", 422)
        current = meta.setdefault("annotations", {})
        for key, value in annotations.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value

    def bind_pod(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str]
    ) -> None:
        self.calls.append(("bind", f"{namespace}/{name}", uid, node))
        if self.bind_error:
            raise self.bind_error
        # As the API server does: bind, and copy the binding's annotations onto the pod.
        obj = self.pods.setdefault((namespace, name), pod(name, namespace=namespace))
        obj["spec"]["nodeName"] = node
        obj["metadata"]["annotations"].update(annotations)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(("get", f"{namespace}/{name}"))
        if (namespace, name) not in self.pods:
            raise NotFoundError("no such pod", 404)
        return self.pods[(namespace, name)]


def run_until_exhausted(api: FakeApi, store: ClusterStore, kind: str) -> ClusterSync:
    sleeps: list[float] = []
    sync = ClusterSync(api, store, SyncSettings(backoff_initial_s=0.5), sleep=sleeps.append)

    def sleep_and_stop(seconds: float) -> None:
        sleeps.append(seconds)
        if api.exhausted.is_set():
            sync.stop()

    sync._sleep = sleep_and_stop
    sync.run_kind(kind)
    sync.sleeps = sleeps  # type: ignore[attr-defined]
    return sync
