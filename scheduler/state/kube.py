"""The one module that talks to the Kubernetes API.

Everything else sees plain dicts (the JSON the API server sends) and the exceptions defined
here, so the rest of kvsched can be tested with canned lists and watch streams instead of a
client library. Responses are read raw (`_preload_content=False`) and parsed with orjson: the
generated models are slow on large lists and would drop fields this version does not know.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as TransportHTTPError

log = logging.getLogger(__name__)

INVENTORY_GROUP = "kvsched.io"
INVENTORY_VERSION = "v1alpha1"
INVENTORY_PLURAL = "nodeinventories"
PODGROUP_GROUP = "scheduling.x-k8s.io"  # the coscheduling plugin's PodGroup (namespaced)
PODGROUP_VERSION = "v1alpha1"
PODGROUP_PLURAL = "podgroups"
LIST_PAGE = 500
# Connections kept open to the API server. At least as many as calls made at once (the
# extender's concurrent binds, see scheduler/extender/app.py): a call that finds the pool empty
# opens a new connection and pays a TLS handshake, and one returned to a full pool is closed.
API_CONNECTIONS = 32
# The event recorder's writer thread (scheduler/state/events.py) holds one more; without it a
# pool that binds have filled would close one connection per event written.
EVENT_CONNECTIONS = 1


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

    def annotate_pod(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        uid: str | None = None,
    ) -> None:
        """Merge `annotations` into the pod's; a None value removes that annotation. With
        `uid`, only into the pod with that UID: another pod under the same name is refused
        (HTTP 422: a UID cannot change), never annotated."""
        ...

    def bind_pod(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str]
    ) -> None:
        """Create the pod's binding; the API server copies `annotations` onto the pod in the
        same write."""
        ...

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...


class InventoryApi(Protocol):
    """NodeInventory reads and writes, for the controller and the node agent."""

    def get_inventory(self, name: str) -> dict[str, Any] | None: ...

    def create_inventory(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]: ...

    def replace_inventory_status(
        self, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        """Write `.status` only if the object is still at `resource_version` (else
        ConflictError): optimistic concurrency, so two writers never overwrite each other."""
        ...

    def delete_inventory(self, name: str) -> None: ...


class InventorySpecApi(Protocol):
    """NodeInventory spec writes: the warming controller's request to the node agent."""

    def patch_inventory_spec(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``spec`` into the object's spec (JSON merge patch: a list is replaced whole);
        the status is untouched (the status subresource keeps it out of main-resource writes).
        Unconditional: only the controller writes the spec, while the agent's frequent status
        writes would make a resourceVersion precondition fail for nothing."""
        ...


class EventApi(Protocol):
    """Kubernetes Events, for the extender's event recorder."""

    def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        """Create `event`, an events.k8s.io/v1 Event as JSON (see `micro_time` for its
        eventTime), in `namespace`."""
        ...


KINDS = ("Node", "Pod", "NodeInventory", "PodGroup")
# Kinds whose API may not be served (CRDs: NodeInventory, the coscheduling PodGroup): a 404
# is not fatal, the informer retries (see sync.ClusterSync.run_kind).
OPTIONAL_KINDS = frozenset({"NodeInventory", "PodGroup"})


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


def micro_time(value: dt.datetime) -> str:
    """An events.k8s.io MicroTime. The client re-serialises eventTime with isoformat(), which
    drops a fraction of zero, and the API server then rejects the event (its parser wants
    exactly six digits): a whole second is moved by one microsecond."""
    value = value.astimezone(dt.UTC)
    if value.microsecond == 0:
        value = value.replace(microsecond=1)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def watch_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank lines (one JSON event each) of a watch stream read in chunks, as bytes
    for orjson. The client library's iter_resp_lines decodes every line to str and copies the
    rest of its buffer once per line, for every pod event of the cluster; here a chunk is
    split once, and the pieces of a line that spans chunks are joined once."""
    pending: list[bytes] = []
    for chunk in chunks:
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        lines = chunk.split(b"\n")
        if pending:
            pending.append(lines[0])
            lines[0] = b"".join(pending)
            pending = []
        tail = lines.pop()
        if tail:
            pending.append(tail)
        for line in lines:
            if line.strip():
                yield line
    rest = b"".join(pending)
    if rest.strip():
        yield rest


def _body(response: Any) -> bytes:
    """The whole body of a raw (`_preload_content=False`) response, its connection handed back
    to the pool. A response left unread keeps its connection out of the pool for good, and the
    next call opens a new one (under load: one TLS handshake per bind)."""
    try:
        data: bytes = response.data or b""
        return data
    finally:
        response.release_conn()


class KubeApi:
    """ClusterApi over the official client. One instance per process; thread-safe for calls."""

    def __init__(self, api_client: client.ApiClient, request_timeout_s: float = 30.0) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.events = client.EventsV1Api(api_client)
        self.timeout = request_timeout_s

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeApi:
        """In-cluster service account when running in a pod (and no kubeconfig is given),
        else the kubeconfig (`KUBECONFIG`, ~/.kube/config)."""
        configuration = client.Configuration()
        configuration.connection_pool_maxsize = API_CONNECTIONS + EVENT_CONNECTIONS
        if kubeconfig is None:
            try:
                config.load_incluster_config(client_configuration=configuration)
                return cls(client.ApiClient(configuration))
            except config.ConfigException:
                pass
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
        if kind == "PodGroup":
            return self.custom.list_cluster_custom_object(
                PODGROUP_GROUP, PODGROUP_VERSION, PODGROUP_PLURAL, **kwargs
            )
        raise ValueError(f"kvsched does not list {kind}")

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
            page = orjson.loads(_body(response))
            for item in page.get("items") or []:
                item.setdefault("kind", kind)
                items.append(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return ObjectList(items, str(meta.get("resourceVersion") or ""))

    def watch(self, kind: str, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        # The raw stream, not kubernetes.watch.Watch: with deserialize=False that class fails on
        # ERROR events (it looks for a key only its own decoding adds), which is exactly where
        # a 410 arrives; the caller handles ERROR events itself.
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            # The server ends the watch after timeout_s; the read timeout catches a stalled
            # connection it never closes.
            "timeout_seconds": timeout_s,
            "_preload_content": False,
            "_request_timeout": (self.timeout, timeout_s + 30),
        }
        try:
            response = self._list_call(kind, **kwargs)
            try:
                for line in watch_lines(response.stream(amt=None, decode_content=False)):
                    event = orjson.loads(line)
                    if isinstance(event, dict):
                        yield event
            finally:
                response.release_conn()
        except ApiException as exc:
            raise _translate(exc, f"watch {kind}") from None
        except TransportHTTPError as exc:
            raise KubeError(f"watch {kind}: {exc}") from None
        except orjson.JSONDecodeError as exc:
            raise KubeError(f"watch {kind}: undecodable event: {exc}") from None

    def annotate_pod(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        uid: str | None = None,
    ) -> None:
        metadata: dict[str, Any] = {"annotations": dict(annotations)}
        if uid is not None:
            # Patching the UID to the value it has is a no-op; to any other value, an
            # immutable-field error: a precondition in the same write.
            metadata["uid"] = uid
        body = {"metadata": metadata}
        try:
            _body(
                self.core.patch_namespaced_pod(
                    name, namespace, body, _preload_content=False, _request_timeout=self.timeout
                )
            )
        except ApiException as exc:
            raise _translate(exc, f"annotate pod {namespace}/{name}") from None
        except TransportHTTPError as exc:
            raise KubeError(f"annotate pod {namespace}/{name}: {exc}") from None

    def bind_pod(
        self, namespace: str, name: str, uid: str, node: str, annotations: Mapping[str, str]
    ) -> None:
        # The UID makes the binding a precondition on this very pod: a pod deleted and
        # recreated under the same name in between is not bound by mistake. The binding's
        # annotations land on the pod in the same write (the API server's binding REST copies
        # them), so the GPU record and the binding cannot come apart. A plain dict body: the
        # generated model costs more CPU than the call itself.
        body: Any = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "annotations": dict(annotations),
            },
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            # Read raw: the client's deserialisation of this response is known to fail.
            _body(
                self.core.create_namespaced_binding(
                    namespace, body, _preload_content=False, _request_timeout=self.timeout
                )
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
        pod: dict[str, Any] = orjson.loads(_body(response) or b"{}")
        return pod

    def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        meta = event.get("metadata") or {}
        what = f"create event {namespace}/{meta.get('name', '')}"
        body: Any = dict(event)
        try:
            _body(
                self.events.create_namespaced_event(
                    namespace, body, _preload_content=False, _request_timeout=self.timeout
                )
            )
        except ApiException as exc:
            raise _translate(exc, what) from None
        except TransportHTTPError as exc:
            raise KubeError(f"{what}: {exc}") from None
        except ValueError as exc:  # the client validates the body against its Event model
            raise KubeError(f"{what}: {exc}") from None

    # ---- NodeInventory writes (controller, agent) --------------------------------------

    def _inventory_call(self, what: str, call: Any, *args: Any) -> dict[str, Any]:
        try:
            response = call(
                INVENTORY_GROUP,
                INVENTORY_VERSION,
                INVENTORY_PLURAL,
                *args,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            raise _translate(exc, what) from None
        except TransportHTTPError as exc:
            raise KubeError(f"{what}: {exc}") from None
        obj: dict[str, Any] = orjson.loads(_body(response) or b"{}")
        return obj

    def get_inventory(self, name: str) -> dict[str, Any] | None:
        try:
            return self._inventory_call(
                f"get NodeInventory {name}", self.custom.get_cluster_custom_object, name
            )
        except NotFoundError:
            return None

    def create_inventory(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{INVENTORY_GROUP}/{INVENTORY_VERSION}",
            "kind": "NodeInventory",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {},
        }
        return self._inventory_call(
            f"create NodeInventory {name}", self.custom.create_cluster_custom_object, body
        )

    def replace_inventory_status(
        self, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        body = {
            "apiVersion": f"{INVENTORY_GROUP}/{INVENTORY_VERSION}",
            "kind": "NodeInventory",
            "metadata": {"name": name, "resourceVersion": resource_version},
            "status": dict(status),
        }
        return self._inventory_call(
            f"write NodeInventory {name} status",
            self.custom.replace_cluster_custom_object_status,
            name,
            body,
        )

    def patch_inventory_spec(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return self._inventory_call(
            f"write NodeInventory {name} spec",
            self.custom.patch_cluster_custom_object,
            name,
            {"spec": dict(spec)},
        )

    def delete_inventory(self, name: str) -> None:
        self._inventory_call(
            f"delete NodeInventory {name}", self.custom.delete_cluster_custom_object, name
        )


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Leader election on a coordination.k8s.io Lease (the client library's implementation).

    A new leader takes over at most `lease_duration_s` after the old one stopped renewing;
    the leader gives up if it cannot renew within `renew_deadline_s`.
    """

    name: str = "kvsched-controller"
    namespace: str = "kvsched-system"
    lease_duration_s: int = 15
    renew_deadline_s: int = 10
    retry_period_s: int = 2


def run_leader_election(
    api: KubeApi,
    settings: LeaseSettings,
    identity: str,
    on_started: Callable[[], None],
    on_stopped: Callable[[], None],
) -> None:
    """Block: wait for the lease, call `on_started` (in a thread) while leading, and call
    `on_stopped` when the lease is lost. Run it in a daemon thread."""
    # Imported here: the leaderelection package logs at import and is only needed by the
    # controller.
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    lock = LeaseLock(settings.name, settings.namespace, identity)
    # The lock builds its API object from the global default client; use ours instead.
    lock.api_instance = client.CoordinationV1Api(api.api_client)
    config_ = electionconfig.Config(
        lock,
        lease_duration=settings.lease_duration_s,
        renew_deadline=settings.renew_deadline_s,
        retry_period=settings.retry_period_s,
        onstarted_leading=on_started,
        onstopped_leading=on_stopped,
    )
    leaderelection.LeaderElection(config_).run()
