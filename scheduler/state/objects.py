"""Kubernetes objects (as the JSON dicts the API returns) -> the core's plain data.

Shared by offline mode (objects from a file) and cluster mode (objects from watches), so both
build NodeStates the same way. Nothing here talks to the API.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from scheduler.core.assignment import GpuPrediction, GpuReservation
from scheduler.core.demand import (
    A_LEGACY_ASSIGNED_GPUS,
    A_MODEL,
    A_PREDICTED_GPUS,
    A_RESERVATION,
    A_ROLE,
    PREFIX,
    gang_of,
    gpu_request,
)
from scheduler.core.node import (
    Bandwidth,
    CachedModel,
    GpuHolder,
    NodeState,
    PredictionMismatch,
    Tier,
)
from scheduler.core.quantity import parse_quantity, parse_whole_quantity
from scheduler.models.catalog import Catalog
from scheduler.state.quarantine import BAD_ANNOTATION, BAD_SPEC, UNREADABLE, Problem, clip
from topology.hardware import lookup_product
from topology.model import GpuInfo, Link, LinkKind, NodeTopology, TopologyError
from topology.presets import preset_for_product

log = logging.getLogger(__name__)

GFD_PRODUCT = "nvidia.com/gpu.product"
GFD_MEMORY_MIB = "nvidia.com/gpu.memory"
GFD_COUNT = "nvidia.com/gpu.count"
GPU_RESOURCE = "nvidia.com/gpu"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class PodRecord:
    """The facts about a pod that affect GPU accounting and residency."""

    uid: str
    namespace: str
    name: str
    node: str | None
    gpus: int
    prediction: GpuPrediction | None
    model: str | None
    phase: str
    gang: str | None = None  # "namespace/name" of its all-or-nothing group
    role: str | None = None  # kvsched.io/role: prefill or decode
    reservation: GpuReservation | None = None  # GPUs a gang plan holds for it (unbound)
    # The group's identity: its key, plus its pods' controller (a pod of another owner using
    # the same name is in a group of its own); see `gang_identity`.
    gang_id: str | None = None
    gang_size: int | None = None  # the member's own kvsched.io/gang-size (or LWS size)
    owner: str | None = None  # UID of its controller (ownerReferences[controller=true])
    terminating: bool = False  # metadata.deletionTimestamp is set
    quarantined: bool = False  # its kvsched annotations could not be read: GPUs only

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def holds_gpus(self) -> bool:
        """Bound, not finished, and asking for GPUs: it counts against its node."""
        return self.node is not None and self.gpus > 0 and self.phase not in TERMINAL_PHASES

    @property
    def gang_member(self) -> bool:
        """Counts toward its group: in one, neither finished nor Terminating (a Terminating
        member still holds its GPUs until it is gone, but its replacement is the member)."""
        return (
            self.gang_id is not None and not self.terminating and self.phase not in TERMINAL_PHASES
        )


def gang_identity(key: str, source: str, owner: str | None) -> str:
    """A group's identity: `namespace/name`, and for groups other than LeaderWorkerSet's (whose
    group-key label is already unique per group and whose leader and workers have different
    controllers) the UID of the members' controller, so that a pod of another owner (or of
    none) that uses the name forms a group of its own instead of joining or blocking this one,
    and a recreated owner starts a new incarnation."""
    if source == "leaderworkerset" or owner is None:
        return key
    return f"{key}@{owner}"


def gang_key(gang_id: str) -> str:
    """The `namespace/name` of a group identity."""
    return gang_id.split("@", 1)[0]


def controller_uid(meta: Mapping[str, Any]) -> str | None:
    """The UID of the object's controller (ownerReferences entry with controller: true)."""
    refs = meta.get("ownerReferences")
    if not isinstance(refs, list):
        return None
    for ref in refs:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            uid = ref.get("uid")
            return uid if isinstance(uid, str) and uid else None
    return None


def pod_key(pod: object) -> str | None:
    """The store's key of a pod (its UID, else namespace/name); None when unreadable. Never
    raises."""
    try:
        meta = pod.get("metadata") if isinstance(pod, Mapping) else None
        if not isinstance(meta, Mapping):
            return None
        uid, namespace, name = (meta.get(k) for k in ("uid", "namespace", "name"))
        if isinstance(uid, str) and uid:
            return uid
        if isinstance(name, str):
            return f"{namespace if isinstance(namespace, str) and namespace else 'default'}/{name}"
    except Exception:
        return None
    return None


class UnreadableObjectError(ValueError):
    """Not even where a pod runs and what it requests can be read: nothing of it is usable."""


def read_pod(pod: object) -> tuple[PodRecord, Problem | None]:
    """The pod's record, and what could not be understood in it (None when all was).

    What Kubernetes vouches for (identity, node, phase, GPU request, deletion) is read first;
    kvsched's own annotations after. When any annotation cannot be read, the record keeps only
    the former: the pod holds its GPUs where it runs (unindexed: its prediction is not
    trusted), and takes no part in other pods' decisions (no group, role, model, reservation).
    Raises UnreadableObjectError when not even that much is readable. Never logs: the caller
    quarantines (once per object version).
    """
    if not isinstance(pod, Mapping):
        raise UnreadableObjectError(f"a pod is a {type(pod).__name__}, not an object")
    meta, spec, status = (pod.get(k) for k in ("metadata", "spec", "status"))
    if not isinstance(meta, Mapping):
        raise UnreadableObjectError("metadata is not an object")
    if spec is not None and not isinstance(spec, Mapping):
        raise UnreadableObjectError("spec is not an object")
    spec = spec or {}
    namespace = _text(meta.get("namespace"), "metadata.namespace") or "default"
    name = _text(meta.get("name"), "metadata.name")
    uid = _text(meta.get("uid"), "metadata.uid") or f"{namespace}/{name}"
    node = _text(spec.get("nodeName"), "spec.nodeName") or None
    problem: Problem | None = None
    phase = "Pending"
    if isinstance(status, Mapping):
        phase = _text(status.get("phase"), "status.phase") or "Pending"
    elif status is not None:
        problem = Problem(UNREADABLE, "status is not an object")
    try:
        gpus = gpu_request(pod)
    except Exception as exc:  # DemandError, or a quantity no parser should meet
        gpus = 0
        problem = problem or Problem(BAD_SPEC, f"cannot count GPUs: {exc}")
    base = PodRecord(
        uid=uid,
        namespace=namespace,
        name=name,
        node=node,
        gpus=gpus,
        prediction=None,
        model=None,
        phase=phase,
        owner=controller_uid(meta),
        terminating=bool(meta.get("deletionTimestamp")),
    )
    if problem is None:
        try:
            record, problem = _with_annotations(base, pod, meta)
            if problem is None:
                return record, None
        except Exception as exc:  # a conversion bug must stop at this object
            problem = Problem(UNREADABLE, f"{type(exc).__name__}: {exc}")
    return dataclasses.replace(base, quarantined=True), problem


def _with_annotations(
    base: PodRecord, pod: Mapping[str, Any], meta: Mapping[str, Any]
) -> tuple[PodRecord, Problem | None]:
    raw = meta.get("annotations")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        return base, Problem(BAD_ANNOTATION, "metadata.annotations is not an object")
    annotations: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            return base, Problem(BAD_ANNOTATION, "an annotation key is not a string")
        if key.startswith(PREFIX):
            if not isinstance(value, str):
                return base, Problem(BAD_ANNOTATION, f"{key} is not a string")
            annotations[key] = value
    prediction = None
    key = A_PREDICTED_GPUS if A_PREDICTED_GPUS in annotations else A_LEGACY_ASSIGNED_GPUS
    if key in annotations:
        try:
            prediction = GpuPrediction.decode(annotations[key])
        except (ValueError, RecursionError) as exc:
            return base, Problem(BAD_ANNOTATION, f"{key}={clip(annotations[key], 64)!r}: {exc}")
    reservation = None
    if A_RESERVATION in annotations:
        text = annotations[A_RESERVATION]
        try:
            reservation = GpuReservation.decode(text)
        except (ValueError, RecursionError) as exc:
            return base, Problem(BAD_ANNOTATION, f"{A_RESERVATION}={clip(text, 64)!r}: {exc}")
        if reservation.expires.utcoffset() is None:
            return base, Problem(
                BAD_ANNOTATION,
                f"{A_RESERVATION}={clip(text, 64)!r}: 'expires' has no timezone (RFC 3339 "
                "needs one, e.g. Z)",
            )
    gang = gang_of(pod)
    return dataclasses.replace(
        base,
        prediction=prediction,
        model=annotations.get(A_MODEL),
        gang=gang.key if gang is not None else None,
        gang_id=gang_identity(gang.key, gang.source, base.owner) if gang is not None else None,
        gang_size=gang.size if gang is not None else None,
        reservation=reservation,
        role=annotations.get(A_ROLE),
    ), None


def pod_record(pod: Mapping[str, Any]) -> PodRecord:
    """The pod's record (see `read_pod`); what could not be read is left out (callers that
    feed on watches quarantine with `read_pod`, which logs once per object version)."""
    record, problem = read_pod(pod)
    if problem is not None:
        log.debug(
            "pod %s: %s (%s); using its GPU request only",
            record.ref,
            problem.detail,
            problem.reason,
        )
    return record


def _text(value: object, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return clip(value, 253)
    raise UnreadableObjectError(f"{where} is a {type(value).__name__}, not a string")


def object_name(obj: Mapping[str, Any]) -> str:
    return str(_mapping(obj.get("metadata")).get("name") or "")


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What a node's state takes from its Node and NodeInventory objects: everything but its
    pods. Parsing the inventory's topology is most of the cost of a node's state, and pods
    come and go far more often than these objects change, so the store keeps these per node
    and rebuilds only the GPU accounting when a pod changes."""

    name: str
    labels: dict[str, str]
    allocatable: int
    topology: NodeTopology | None
    source: str
    product: str | None
    memory: int
    # GPUs the kubelet reports held, and by which pod ("" unknown): the inventory's `allocated`
    # list when `allocatedSource` is `kubelet` (the agent read PodResources). A list the
    # controller mirrored from kvsched's predictions is not read: the pods' own
    # predicted-gpus annotations say the same, fresher.
    kubelet_owners: dict[int, str]
    # GPU indices the kubelet can hand out (`allocatableGpus`); None when not reported.
    kubelet_allocatable: frozenset[int] | None
    # Whether the node agent reports the kubelet's allocation (`allocatedSource: kubelet`):
    # the truth about every pod's GPUs will come from it, so a prediction needs no record.
    kubelet_reports: bool
    models: dict[str, tuple[CachedModel, ...]]
    bandwidth: Bandwidth


def node_facts(
    node: Mapping[str, Any], inventory: Mapping[str, Any] | None, catalog: Catalog
) -> NodeFacts:
    name = object_name(node)
    meta = _mapping(node.get("metadata"))
    labels = {str(k): str(v) for k, v in _mapping(meta.get("labels")).items()}
    inv_status = _mapping(_mapping(inventory).get("status")) if inventory else {}

    allocatable = _gpu_allocatable(node, labels, inv_status)
    product_label = labels.get(GFD_PRODUCT)
    topology, source = _topology(name, inv_status, product_label, allocatable)
    count = topology.gpu_count if topology is not None else 0
    owners: dict[int, str] = {}
    if inv_status.get("allocatedSource") == "kubelet":
        for entry in _list(inv_status.get("allocated")):
            index, owner = _mapping(entry).get("index"), _mapping(entry).get("pod")
            if _is_index(index, count):
                owners[index] = str(owner or "")
    raw_allocatable = inv_status.get("allocatableGpus")
    offered: frozenset[int] | None = None
    if isinstance(raw_allocatable, list):
        offered = frozenset(i for i in raw_allocatable if _is_index(i, count))
    return NodeFacts(
        name=name,
        labels=labels,
        allocatable=allocatable,
        topology=topology,
        source=source,
        product=_product_name(topology, product_label),
        memory=_gpu_memory(topology if source == "inventory" else None, labels, product_label),
        kubelet_owners=owners,
        kubelet_allocatable=offered,
        kubelet_reports=inv_status.get("allocatedSource") == "kubelet",
        models=_models(inv_status, catalog),
        bandwidth=_bandwidth(inv_status),
    )


def node_state(
    node: Mapping[str, Any],
    inventory: Mapping[str, Any] | None,
    pods: Iterable[PodRecord],
    catalog: Catalog,
) -> NodeState:
    """Build the core's view of one node from its Node, its NodeInventory and its pods."""
    return node_state_from(node_facts(node, inventory, catalog), pods)


def node_state_from(facts: NodeFacts, pods: Iterable[PodRecord]) -> NodeState:
    """The node's state: its facts plus the GPUs its pods hold, each pod counted once.

    A pod the kubelet reports (the agent's PodResources list) holds exactly the GPUs the
    kubelet gave it, whatever kvsched predicted; a pod it does not report yet (just bound, or
    no agent) holds its predicted GPUs; a pod with no usable prediction holds some GPUs
    nobody can name (``unindexed_busy``). A prediction that collides with a GPU the kubelet
    gave someone else was wrong: the pod's GPU is counted, but as unindexed. GPUs the
    kubelet does not offer (unhealthy, reserved) are busy.
    """
    name, topology = facts.name, facts.topology
    count = topology.gpu_count if topology is not None else 0
    holders: dict[int, GpuHolder] = {}
    truth: dict[str, set[int]] = {}
    for index, ref in facts.kubelet_owners.items():
        holders[index] = GpuHolder(ref, "kubelet")
        truth.setdefault(ref, set()).add(index)
    offered = facts.kubelet_allocatable
    if offered is not None:
        for index in range(count):
            if index not in offered and index not in holders:
                holders[index] = GpuHolder("", "unavailable")
    unindexed = 0
    mismatches: list[PredictionMismatch] = []
    for pod in pods:
        if not pod.holds_gpus or pod.node != name:
            continue
        prediction = pod.prediction
        predicted = (
            prediction.indices
            if prediction is not None
            and prediction.node == name
            and len(prediction.indices) == pod.gpus
            and all(0 <= i < count for i in prediction.indices)
            else None
        )
        actual = truth.get(pod.ref)
        if actual is not None:
            if predicted is not None and set(predicted) != actual:
                mismatches.append(
                    PredictionMismatch(pod.ref, tuple(sorted(predicted)), tuple(sorted(actual)))
                )
            continue  # counted above, from the kubelet's word
        if predicted is None:
            unindexed += pod.gpus
            continue
        for index in predicted:
            if index in holders:
                unindexed += 1  # the prediction is wrong here: the GPU went to someone else
            else:
                holders[index] = GpuHolder(pod.ref, "prediction")
    if offered is None:
        # GPUs the topology shows but the kubelet does not offer (unhealthy, reserved).
        unindexed += max(0, count - facts.allocatable)
    free = frozenset(range(count)).difference(holders)
    return NodeState(
        name=name,
        topology=topology,
        gpu_product=facts.product,
        gpu_memory_bytes=facts.memory,
        allocatable_gpus=min(facts.allocatable, count),
        free_gpus=free,
        unindexed_busy=unindexed,
        models=facts.models,
        bandwidth=facts.bandwidth,
        labels=facts.labels,
        source=facts.source,
        holders=holders,
        mismatches=tuple(mismatches),
    )


def _gpu_allocatable(
    node: Mapping[str, Any], labels: Mapping[str, str], inv_status: Mapping[str, Any]
) -> int:
    status = _mapping(node.get("status"))
    for field in ("allocatable", "capacity"):
        value = _mapping(status.get(field)).get(GPU_RESOURCE)
        if value is not None:
            try:
                return parse_whole_quantity(value)
            except ValueError:
                log.warning("node %s: bad %s %s=%r", object_name(node), field, GPU_RESOURCE, value)
                return 0
    gpus = _list(inv_status.get("gpus"))
    if gpus:
        return len(gpus)
    try:
        return parse_whole_quantity(labels.get(GFD_COUNT, "0"))
    except ValueError:
        return 0


def _topology(
    name: str, inv_status: Mapping[str, Any], product: str | None, allocatable: int
) -> tuple[NodeTopology | None, str]:
    gpus = inv_status.get("gpus")
    links = inv_status.get("links")
    if gpus is not None or links is not None:
        try:
            if not isinstance(gpus, list) or not gpus:
                raise ValueError(f"status.gpus is {type(gpus).__name__}, not a list of GPUs")
            if not isinstance(links, list) or not all(isinstance(row, list) for row in links):
                raise ValueError("status.links is not a square matrix of link codes")
            infos = [
                GpuInfo(
                    index=int(g["index"]),
                    numa_node=_opt_int(g.get("numaNode")),
                    uuid=_opt_str(g.get("uuid")),
                    product=_opt_str(g.get("product")),
                    memory_bytes=_opt_int(g.get("memoryBytes")),
                )
                for g in (_mapping(g) for g in gpus)
            ]
            infos.sort(key=lambda g: g.index)
            codes = [[str(code) for code in row] for row in links]
            return NodeTopology.from_codes(codes, gpus=infos), "inventory"
        except (KeyError, TypeError, ValueError, TopologyError) as exc:
            log.warning("node %s: unusable NodeInventory topology (%s); using labels", name, exc)
    if allocatable <= 0:
        return None, "labels"
    if product:
        preset = preset_for_product(product, allocatable)
        if preset is not None:
            return preset, "labels"
    # Unknown product: GPUs we cannot place well but can still count; assume the worst links.
    codes = [
        [
            Link(LinkKind.SELF).code if i == j else Link(LinkKind.SYS).code
            for j in range(allocatable)
        ]
        for i in range(allocatable)
    ]
    return NodeTopology.from_codes(codes), "assumed"


def _product_name(topology: NodeTopology | None, label: str | None) -> str | None:
    if topology is not None and topology.gpus and topology.gpus[0].product:
        found = lookup_product(topology.gpus[0].product)
        return found.name if found is not None else topology.gpus[0].product
    if label:
        found = lookup_product(label)
        return found.name if found is not None else label
    return None


def _gpu_memory(
    topology: NodeTopology | None, labels: Mapping[str, str], product: str | None
) -> int:
    """Per-GPU memory in bytes (the smallest GPU's when they differ); 0 when unknown.

    Measured sizes (an inventory's GPUs) beat the node's GFD label, which beats the product
    table: the label is the driver's figure for this very node.
    """
    if topology is not None:
        sizes = [g.memory_bytes for g in topology.gpus if g.memory_bytes]
        if sizes and len(sizes) == topology.gpu_count:
            return min(sizes)
    mib = labels.get(GFD_MEMORY_MIB)
    if mib:
        try:
            return parse_whole_quantity(mib) * 2**20
        except ValueError:
            pass
    if product:
        found = lookup_product(product)
        if found is not None:
            return found.memory_bytes
    return 0


def _models(inv_status: Mapping[str, Any], catalog: Catalog) -> dict[str, tuple[CachedModel, ...]]:
    cache = _mapping(inv_status.get("modelCache"))
    models: dict[str, list[CachedModel]] = {}
    for entry in _list(cache.get("models")):
        item = _mapping(entry)
        raw_name = item.get("name")
        if not isinstance(raw_name, str) or not raw_name:
            continue
        try:
            tier = Tier.parse(str(item.get("tier", "local-disk")))
        except ValueError as exc:
            log.warning("model cache entry %s: %s", raw_name, exc)
            continue
        spec = catalog.get(raw_name)
        canonical = (spec.name if spec is not None else raw_name).lower()
        models.setdefault(canonical, []).append(
            CachedModel(
                canonical, tier, _opt_str(item.get("revision")), _opt_int(item.get("sizeBytes"))
            )
        )
    return {name: tuple(copies) for name, copies in models.items()}


def _bandwidth(inv_status: Mapping[str, Any]) -> Bandwidth:
    values = _mapping(inv_status.get("bandwidth"))
    default = Bandwidth()
    result = {}
    for key, attr in (
        ("network", "network"),
        ("localDisk", "local_disk"),
        ("hostMemory", "host_memory"),
    ):
        raw = values.get(key)
        if raw is None:
            result[attr] = getattr(default, attr)
            continue
        try:
            value = float(parse_quantity(raw))
        except ValueError:
            value = 0.0
        result[attr] = value if value > 0 else getattr(default, attr)
    return Bandwidth(**result)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _opt_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _is_index(value: object, count: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < count


def _opt_str(value: object) -> str | None:
    return str(value) if isinstance(value, str) and value else None
