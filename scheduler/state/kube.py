"""The one module that talks to the Kubernetes API.

Everything else sees plain dicts (the JSON the API server sends) and the exceptions defined
here, so the rest of kvsched can be tested with canned lists and watch streams instead of a
client library. Responses are read raw (`_preload_content=False`) and parsed with orjson: the
generated models are slow on large lists and would drop fields this version does not know.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as TransportHTTPError

log = logging.getLogger(__name__)

INVENTORY_GROUP = "kvsched.io"
INVENTORY_VERSION = "v1alpha1"
INVENTORY_PLURAL = "nodeinventories"
LIST_PAGE = 500


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class GoneError(KubeError):
    """410: the resourceVersion is too old; the caller must list again."""


class NotFoundError(KubeError):
    """404: the object (or, for a list, the resource type, e.g. a missing CRD) does not exist."""


class ConflictError(KubeError):
    """409: a conflicting write (already bound, changed since read)."""


@dataclass(frozen=True, slots=True)
class ObjectList:
    items: list[dict[str, Any]]
    resource_version: str


class ClusterApi(Protocol):
    """What the cluster-mode extender needs from the API server (fakes implement this)."""

    def list(self, kind: str) -> ObjectList: ...

    def watch(self, kind: str, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        """Events `{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": {...}}`; raises GoneError."""
        ...

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None: ...

    def bind_pod(self, namespace: str, name: str, uid: str, node: str) -> None: ...

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...


KINDS = ("Node", "Pod", "NodeInventory")


def _translate(exc: ApiException, what: str) -> KubeError:
    status = int(exc.status or 0)
    body = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or exc.reason)
    message = f"{what}: HTTP {status}: {body[:300]}"
    if status == 410:
        return GoneError(message, status)
    if status == 404:
        return NotFoundError(message, status)
    if status == 409:
        return ConflictError(message, status)
    return KubeError(message, status)


class KubeApi:
    """ClusterApi over the official client. One instance per process; thread-safe for calls."""

    def __init__(self, api_client: client.ApiClient, request_timeout_s: float = 30.0) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.timeout = request_timeout_s

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeApi:
        """In-cluster service account when running in a pod (and no kubeconfig is given),
        else the kubeconfig (`KUBECONFIG`, ~/.kube/config)."""
        if kubeconfig is None:
            try:
                config.load_incluster_config()
                return cls(client.ApiClient())
            except config.ConfigException:
                pass
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        return cls(client.ApiClient(configuration))

    def _list_call(self, kind: str, **kwargs: Any) -> Any:
        if kind == "Node":
            return self.core.list_node(**kwargs)
        if kind == "Pod":
            return self.core.list_pod_for_all_namespaces(**kwargs)
        if kind == "NodeInventory":
            return self.custom.list_cluster_custom_object(
                INVENTORY_GROUP, INVENTORY_VERSION, INVENTORY_PLURAL, **kwargs
            )
        raise ValueError(f"kvsched does not list {kind}")

    def _list_function(self, kind: str) -> Any:
        if kind == "Node":
            return self.core.list_node
        if kind == "Pod":
            return self.core.list_pod_for_all_namespaces
        if kind == "NodeInventory":
            return self.custom.list_cluster_custom_object
        raise ValueError(f"kvsched does not watch {kind}")

    def list(self, kind: str) -> ObjectList:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "limit": LIST_PAGE,
                "_preload_content": False,
                "_request_timeout": self.timeout,
            }
            if token:
                kwargs["_continue"] = token
            try:
                response = self._list_call(kind, **kwargs)
            except ApiException as exc:
                raise _translate(exc, f"list {kind}") from None
            except TransportHTTPError as exc:
                raise KubeError(f"list {kind}: {exc}") from None
            page = orjson.loads(response.data)
            for item in page.get("items") or []:
                item.setdefault("kind", kind)
                items.append(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return ObjectList(items, str(meta.get("resourceVersion") or ""))

    def watch(self, kind: str, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        function = self._list_function(kind)
        args: tuple[Any, ...] = ()
        if kind == "NodeInventory":
            args = (INVENTORY_GROUP, INVENTORY_VERSION, INVENTORY_PLURAL)
        watcher = watch.Watch()
        try:
            # timeout_seconds bounds the server side; the read timeout catches a stalled
            # connection the server never closes.
            for event in watcher.stream(
                function,
                *args,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_s,
                _request_timeout=(self.timeout, timeout_s + 30),
                deserialize=False,
            ):
                if isinstance(event, dict):
                    yield event
        except ApiException as exc:
            raise _translate(exc, f"watch {kind}") from None
        except TransportHTTPError as exc:
            raise KubeError(f"watch {kind}: {exc}") from None
        finally:
            watcher.stop()

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        try:
            self.core.patch_namespaced_pod(
                name, namespace, body, _preload_content=False, _request_timeout=self.timeout
            )
        except ApiException as exc:
            raise _translate(exc, f"annotate pod {namespace}/{name}") from None
        except TransportHTTPError as exc:
            raise KubeError(f"annotate pod {namespace}/{name}: {exc}") from None

    def bind_pod(self, namespace: str, name: str, uid: str, node: str) -> None:
        # The UID makes the binding a precondition on this very pod: a pod deleted and
        # recreated under the same name in between is not bound by mistake.
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, uid=uid),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        try:
            # Read raw: the client's deserialisation of this response is known to fail.
            self.core.create_namespaced_binding(
                namespace, body, _preload_content=False, _request_timeout=self.timeout
            )
        except ApiException as exc:
            raise _translate(exc, f"bind pod {namespace}/{name} to {node}") from None
        except TransportHTTPError as exc:
            raise KubeError(f"bind pod {namespace}/{name}: {exc}") from None

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            response = self.core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self.timeout
            )
        except ApiException as exc:
            raise _translate(exc, f"get pod {namespace}/{name}") from None
        except TransportHTTPError as exc:
            raise KubeError(f"get pod {namespace}/{name}: {exc}") from None
        pod: dict[str, Any] = orjson.loads(getattr(response, "data", b"{}"))
        return pod
