"""A pod's demand: what it needs from a node, parsed from its spec and `kvsched.io/` annotations.

Parsing never raises for bad user input: a malformed or contradicting annotation becomes
`PodDemand.error`, a sentence naming the annotation and the value, which the placement core
turns into the same failure reason on every node (the pod stays Pending with that message in
its events rather than being placed on a silent default).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from scheduler.core.bounds import ECHO_CHARS, clip, echo
from scheduler.core.quantity import QuantityRangeError, parse_quantity, parse_whole_quantity
from scheduler.models.catalog import Catalog
from scheduler.models.dtypes import normalize_dtype
from scheduler.models.kvplan import MemoryPlan, plan_memory, plan_weights_only
from scheduler.models.spec import ModelSpec

PREFIX = "kvsched.io/"
GPU_RESOURCE = "nvidia.com/gpu"

# Annotations users set (DESIGN.md, "The pod contract").
A_MODEL = PREFIX + "model"
A_REVISION = PREFIX + "model-revision"
A_WEIGHTS_BYTES = PREFIX + "weights-bytes"
A_MAX_MODEL_LEN = PREFIX + "max-model-len"
A_MAX_NUM_SEQS = PREFIX + "max-num-seqs"
A_KV_TOKENS = PREFIX + "kv-cache-tokens"
A_DTYPE = PREFIX + "dtype"
A_KV_DTYPE = PREFIX + "kv-cache-dtype"
A_GPU_UTIL = PREFIX + "gpu-memory-utilization"
A_GANG = PREFIX + "gang"
A_GANG_SIZE = PREFIX + "gang-size"
# How many pods (pipeline stages) one copy of the model is split across; default the group's
# size (each member holds its share of the layers), 1 when every member serves a whole model.
A_PIPELINE_PARALLEL = PREFIX + "pipeline-parallel-size"
A_TOPOLOGY_KEY = PREFIX + "topology-key"
A_ROLE = PREFIX + "role"
A_KV_PEER = PREFIX + "kv-peer"
# Annotations kvsched writes at bind. predicted-gpus is kvsched's *prediction* of the GPUs the
# device plugin will hand the pod (nothing on the node reads it; the kubelet's PodResources
# report, through the agent, replaces it as soon as it is known).
A_PREDICTED_GPUS = PREFIX + "predicted-gpus"
# The same annotation's name before kvsched said plainly that it predicts: read, never written.
A_LEGACY_ASSIGNED_GPUS = PREFIX + "assigned-gpus"
A_PLACEMENT = PREFIX + "placement"
A_RESERVATION = PREFIX + "reservation"

USER_ANNOTATIONS = frozenset(
    {
        A_MODEL,
        A_REVISION,
        A_WEIGHTS_BYTES,
        A_MAX_MODEL_LEN,
        A_MAX_NUM_SEQS,
        A_KV_TOKENS,
        A_DTYPE,
        A_KV_DTYPE,
        A_GPU_UTIL,
        A_GANG,
        A_GANG_SIZE,
        A_PIPELINE_PARALLEL,
        A_TOPOLOGY_KEY,
        A_ROLE,
        A_KV_PEER,
    }
)
KNOWN_ANNOTATIONS = USER_ANNOTATIONS | {
    A_PREDICTED_GPUS,
    A_LEGACY_ASSIGNED_GPUS,
    A_PLACEMENT,
    A_RESERVATION,
}

# Group identity from other projects' conventions (facts.md).
LWS_GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
LWS_SIZE = "leaderworkerset.sigs.k8s.io/size"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
# LWS copies this annotation onto its pods: the label key a whole group must share (LWS's pod
# webhook makes workers follow their leader's value and keeps other groups off it).
LWS_EXCLUSIVE_TOPOLOGY = "leaderworkerset.sigs.k8s.io/exclusive-topology"
# LWS subgroups (`subGroupPolicy.subGroupSize`): the webhook labels each pod with its subgroup's
# index (the leader is in subgroup 0 unless the policy is LeaderExcluded) and, when the LWS
# carries `subgroup-exclusive-topology: KEY`, gives it affinity to its own subgroup's KEY value
# and anti-affinity to every other subgroup's (of any group).
LWS_SUBGROUP_INDEX = "leaderworkerset.sigs.k8s.io/subgroup-index"
LWS_SUBGROUP_SIZE = "leaderworkerset.sigs.k8s.io/subgroup-size"
LWS_SUBGROUP_EXCLUSIVE = "leaderworkerset.sigs.k8s.io/subgroup-exclusive-topology"
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"

DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
ROLES = ("prefill", "decode")

# Bounds on what a pod may say (DESIGN.md, "Hostile input"). Whole numbers (max-model-len,
# max-num-seqs, kv-cache-tokens, gang sizes) have at most 18 digits: every product kvsched
# forms from them stays an exact, float-convertible number, and no real value comes close.
MAX_INT_DIGITS = 18
# Names (model, revision, gang, topology-key, kv-peer) are at most as long as the longest
# Kubernetes label key (a 253-character prefix, "/", a 63-character name): other messages
# quote them whole.
MAX_NAME_CHARS = 317
# Longer text is not a number kvsched reads (a fraction, or a whole number with its zeros).
_MAX_NUMBER_CHARS = 64


class DemandError(ValueError):
    """A pod annotation or spec value kvsched cannot accept."""


@dataclass(frozen=True, slots=True)
class GangRef:
    """The all-or-nothing group a pod belongs to (placement of groups is the gang planner's)."""

    namespace: str
    name: str
    size: int | None
    source: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodDemand:
    """Everything the placement core needs to know about one pod.

    `key` holds exactly the fields evaluation depends on, so two pods with equal keys get equal
    per-node evaluations (the store memoises on it).
    """

    namespace: str
    name: str
    uid: str
    gpus: int
    model: str | None = None
    model_spec: ModelSpec | None = None
    revision: str | None = None
    plan: MemoryPlan | None = None
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    gang: GangRef | None = None
    topology_key: str | None = None
    role: str | None = None
    kv_peer: str | None = None
    error: str | None = None
    # The member's index in its group when the controller numbers members (LWS worker-index;
    # the leader is 0): a member created after its group was planned takes that slot.
    gang_index: int | None = None
    # LWS subgroups with `subgroup-exclusive-topology`: the label key each subgroup must share
    # (and no two subgroups may), the member's subgroup index and the subgroup size.
    subgroup_key: str | None = None
    subgroup: int | None = None
    subgroup_size: int | None = None

    @property
    def key(self) -> tuple[object, ...]:
        plan_key = None
        if self.plan is not None:
            plan_key = (
                self.plan.weights_bytes_total,
                self.plan.weights_bytes_stage,
                self.plan.required_bytes_per_gpu,
                self.plan.kv_tokens,
            )
        return (
            self.gpus,
            self.model,
            self.revision,
            plan_key,
            self.gpu_memory_utilization,
            self.error,
        )

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def gpu_request(pod: Mapping[str, Any]) -> int:
    """GPUs the pod needs: the sum over containers, or the largest init container if bigger.

    Kubernetes forces requests == limits for extended resources, so whichever is present is the
    count; both present and different is a broken spec and raises.
    """
    spec = _mapping(pod.get("spec"), "spec")
    app = sum(_container_gpus(c) for c in _containers(spec, "containers"))
    init = max((_container_gpus(c) for c in _containers(spec, "initContainers")), default=0)
    return max(app, init)


def parse_demand(
    pod: Mapping[str, Any], catalog: Catalog, pod_groups: Mapping[str, int] | None = None
) -> PodDemand:
    """Parse a core/v1 Pod (as JSON) into a PodDemand; bad input goes into `.error`.
    `pod_groups` maps "namespace/name" of the PodGroup objects the caller knows to their
    `minMember`: the size of a `scheduling.x-k8s.io/pod-group` member without
    kvsched.io/gang-size."""
    raw_meta = pod.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    namespace = _text(meta.get("namespace")) or "default"
    name = _text(meta.get("name"))
    uid = _text(meta.get("uid"))
    try:
        return _parse(pod, meta, namespace, name, uid, catalog, pod_groups)
    except DemandError as exc:
        gpus = 0
        with contextlib.suppress(DemandError):
            gpus = gpu_request(pod)
        return PodDemand(namespace=namespace, name=name, uid=uid, gpus=gpus, error=str(exc))


def _parse(
    pod: Mapping[str, Any],
    meta: Mapping[str, Any],
    namespace: str,
    name: str,
    uid: str,
    catalog: Catalog,
    pod_groups: Mapping[str, int] | None = None,
) -> PodDemand:
    annotations = _string_map(meta.get("annotations"), "metadata.annotations")
    labels = _string_map(meta.get("labels"), "metadata.labels")
    for key in annotations:
        if key.startswith(PREFIX) and key not in KNOWN_ANNOTATIONS:
            raise DemandError(
                f"unknown annotation {clip(key, ECHO_CHARS)}: kvsched knows "
                + ", ".join(sorted(a.removeprefix(PREFIX) for a in USER_ANNOTATIONS))
            )
    gpus = gpu_request(pod)

    utilization = _optional(annotations, A_GPU_UTIL, _fraction)
    if utilization is None:
        utilization = DEFAULT_GPU_MEMORY_UTILIZATION
    role = annotations.get(A_ROLE)
    if role is not None and role not in ROLES:
        raise DemandError(f"annotation {A_ROLE}={echo(role)} must be one of {', '.join(ROLES)}")
    kv_peer = _name(annotations, A_KV_PEER)
    if kv_peer is not None and not kv_peer.strip():
        raise DemandError(f"annotation {A_KV_PEER}={echo(kv_peer)} must name a gang or model")
    topology_key = _name(annotations, A_TOPOLOGY_KEY)
    if topology_key is not None and not topology_key.strip():
        raise DemandError(f"annotation {A_TOPOLOGY_KEY}={echo(topology_key)} must be a label key")
    gang = _gang(namespace, annotations, labels, pod_groups)
    if topology_key is None and gang is not None:
        # LWS exclusive placement: the group must share this key's value (LWS's affinity).
        exclusive = _name(annotations, LWS_EXCLUSIVE_TOPOLOGY)
        topology_key = exclusive.strip() if exclusive is not None and exclusive.strip() else None
    stages = _optional(annotations, A_PIPELINE_PARALLEL, _positive_int)
    if stages is not None:
        if gang is None:
            raise DemandError(
                f"annotation {A_PIPELINE_PARALLEL}={stages} needs a group ({A_GANG} or a "
                "LeaderWorkerSet): it says how many members one copy of the model is split across"
            )
        if gang.size is not None and stages > gang.size:
            raise DemandError(
                f"annotation {A_PIPELINE_PARALLEL}={stages} exceeds the group's size {gang.size}"
            )

    model_name = _name(annotations, A_MODEL)
    base = PodDemand(
        namespace=namespace,
        name=name,
        uid=uid,
        gpus=gpus,
        gpu_memory_utilization=utilization,
        gang=gang,
        topology_key=topology_key,
        role=role,
        kv_peer=kv_peer,
        gang_index=_member_index(labels) if gang is not None else None,
        **_subgroup(annotations, labels, gang is not None),
    )
    model_only = (
        A_REVISION,
        A_WEIGHTS_BYTES,
        A_MAX_MODEL_LEN,
        A_MAX_NUM_SEQS,
        A_KV_TOKENS,
        A_DTYPE,
        A_KV_DTYPE,
    )
    if model_name is None:
        stray = [key for key in model_only if key in annotations]
        if stray:
            raise DemandError(
                f"annotation {stray[0]}={echo(annotations[stray[0]])} needs {A_MODEL} to be set"
            )
        return base
    model_name = model_name.strip()
    if not model_name:
        raise DemandError(f"annotation {A_MODEL}='' is empty: set a model id")
    if gpus == 0:
        raise DemandError(
            f"annotation {A_MODEL}={echo(model_name)} is set but the pod requests no {GPU_RESOURCE}"
        )
    if stages is None:
        stages = base.gang.size if base.gang is not None and base.gang.size is not None else 1
    return _with_model(base, model_name, annotations, catalog, stages)


def _member_index(labels: Mapping[str, str], key: str = LWS_WORKER_INDEX) -> int | None:
    """The LWS worker-index label as a number (None when absent or not a small number)."""
    text = labels.get(key)
    if text is None or not text.isdigit() or len(text) > 9:
        return None
    return int(text)


def _subgroup(
    annotations: Mapping[str, str], labels: Mapping[str, str], member: bool
) -> dict[str, Any]:
    """PodDemand's subgroup fields: set only for a group member whose LWS asks for exclusive
    subgroups (`subgroup-exclusive-topology`); without it LWS puts no constraint on them."""
    exclusive = annotations.get(LWS_SUBGROUP_EXCLUSIVE) if member else None
    if exclusive is None or not exclusive.strip() or len(exclusive) > MAX_NAME_CHARS:
        return {}
    size = _member_index(annotations, LWS_SUBGROUP_SIZE)
    return {
        "subgroup_key": exclusive.strip(),
        "subgroup": _member_index(labels, LWS_SUBGROUP_INDEX),
        "subgroup_size": size if size else None,
    }


def _with_model(
    base: PodDemand,
    model_name: str,
    annotations: Mapping[str, str],
    catalog: Catalog,
    stages: int = 1,
) -> PodDemand:
    """The demand with its model's memory plan; `stages` is how many members (pipeline stages)
    the model is split across, this pod holding one (kvplan's `pp`)."""
    revision = _name(annotations, A_REVISION)
    if revision is not None and not revision.strip():
        raise DemandError(f"annotation {A_REVISION}='' is empty")
    weights_override = _optional(annotations, A_WEIGHTS_BYTES, _byte_size)
    max_len = _optional(annotations, A_MAX_MODEL_LEN, _positive_int)
    max_seqs = _optional(annotations, A_MAX_NUM_SEQS, _positive_int)
    kv_tokens = _optional(annotations, A_KV_TOKENS, _positive_int)
    dtype = _optional(annotations, A_DTYPE, _dtype)
    kv_dtype = _optional(annotations, A_KV_DTYPE, _dtype)
    if kv_tokens is not None and max_seqs is not None:
        raise DemandError(
            f"annotations {A_KV_TOKENS}={kv_tokens} and {A_MAX_NUM_SEQS}={max_seqs} contradict: "
            f"set the KV budget either as tokens or as max-model-len x max-num-seqs"
        )
    if kv_tokens is not None and max_len is not None and kv_tokens < max_len:
        raise DemandError(
            f"annotation {A_KV_TOKENS}={kv_tokens} is smaller than {A_MAX_MODEL_LEN}={max_len}: "
            "the engine could not hold one sequence at full length"
        )

    spec = catalog.get(model_name)
    canonical = (spec.name if spec is not None else model_name).lower()
    if spec is None:
        if weights_override is None:
            raise DemandError(
                f"unknown model {echo(model_name)}: add it to the catalog or set {A_WEIGHTS_BYTES}"
            )
        # Without the architecture the KV size is unknowable; plan weights only and say so.
        plan = plan_weights_only(
            model_name,
            tp=base.gpus,
            weights_bytes=weights_override,
            max_num_seqs=max_seqs or 1,
            pp=stages,
        )
    else:
        if max_len is not None and max_len > spec.max_model_len:
            raise DemandError(
                f"annotation {A_MAX_MODEL_LEN}={max_len} exceeds {spec.name}'s context length "
                f"{spec.max_model_len}"
            )
        length = max_len if max_len is not None else spec.max_model_len
        budget = kv_tokens if kv_tokens is not None else length * (max_seqs or 1)
        try:
            plan = plan_memory(
                spec,
                tp=base.gpus,
                kv_tokens=budget,
                dtype=dtype,
                kv_dtype=kv_dtype,
                weights_bytes=weights_override,
                max_num_seqs=max_seqs or 1,
                pp=stages,
            )
        except ValueError as exc:
            hint = ""
            if stages > 1 and A_PIPELINE_PARALLEL not in annotations:
                hint = f" (the group's size; set {A_PIPELINE_PARALLEL} to the number of stages)"
            raise DemandError(f"model {spec.name}: {exc}{hint}") from None
    return PodDemand(
        namespace=base.namespace,
        name=base.name,
        uid=base.uid,
        gpus=base.gpus,
        model=canonical,
        model_spec=spec,
        revision=revision,
        plan=plan,
        gpu_memory_utilization=base.gpu_memory_utilization,
        gang=base.gang,
        topology_key=base.topology_key,
        role=base.role,
        kv_peer=base.kv_peer,
        gang_index=base.gang_index,
        subgroup_key=base.subgroup_key,
        subgroup=base.subgroup,
        subgroup_size=base.subgroup_size,
    )


def _gang(
    namespace: str,
    annotations: Mapping[str, str],
    labels: Mapping[str, str],
    pod_groups: Mapping[str, int] | None = None,
) -> GangRef | None:
    gang = _name(annotations, A_GANG)
    size_text = annotations.get(A_GANG_SIZE)
    if gang is not None:
        if not gang.strip():
            raise DemandError(f"annotation {A_GANG}='' is empty: name the group")
        size = _positive_int(A_GANG_SIZE, size_text) if size_text is not None else None
        group_key = _name(labels, LWS_GROUP_KEY, "label")
        if group_key:
            # A kvsched.io/gang on a LeaderWorkerSet template: every replica (LWS group) carries
            # it; each replica is a gang of its own, named after the gang and its group key.
            if size is None and annotations.get(LWS_SIZE) is not None:
                size = _positive_int(LWS_SIZE, annotations[LWS_SIZE])
            return GangRef(namespace, f"{gang.strip()}-lws-{group_key}", size, "leaderworkerset")
        return GangRef(namespace, gang.strip(), size, "annotation")
    if LWS_GROUP_KEY in labels and size_text is None:
        lws_size = annotations.get(LWS_SIZE)
        size = _positive_int(LWS_SIZE, lws_size) if lws_size is not None else None
        group_key = _name(labels, LWS_GROUP_KEY, "label") or ""
        return GangRef(namespace, "lws-" + group_key, size, "leaderworkerset")
    if POD_GROUP_LABEL in labels:
        # The size: kvsched.io/gang-size on the member, else the PodGroup object's minMember
        # (the caller's `pod_groups`, read from the API), else unknown.
        group = _name(labels, POD_GROUP_LABEL, "label") or ""
        size = _positive_int(A_GANG_SIZE, size_text) if size_text is not None else None
        if size is None and pod_groups:
            size = pod_groups.get(f"{namespace}/{group}")
        return GangRef(namespace, group, size, "pod-group")
    if size_text is not None:
        raise DemandError(f"annotation {A_GANG_SIZE}={echo(size_text)} needs {A_GANG} to be set")
    return None


def gang_of(pod: Mapping[str, Any], pod_groups: Mapping[str, int] | None = None) -> GangRef | None:
    """The group a pod belongs to, or None (also None when its group annotations are broken:
    parse_demand reports those). `pod_groups` as for `parse_demand`."""
    meta = pod.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    try:
        annotations = _string_map(meta.get("annotations"), "metadata.annotations")
        labels = _string_map(meta.get("labels"), "metadata.labels")
        return _gang(_text(meta.get("namespace")) or "default", annotations, labels, pod_groups)
    except DemandError:
        return None


T = TypeVar("T")


def _optional(annotations: Mapping[str, str], key: str, parse: Callable[[str, str], T]) -> T | None:
    text = annotations.get(key)
    if text is None:
        return None
    return parse(key, text)


def _positive_int(key: str, text: str) -> int:
    digits = text.strip().replace("_", "")
    if len(digits) > _MAX_NUMBER_CHARS:  # never handed to int(): bounded work, a clear reason
        if digits.lstrip("+-").isdigit():
            raise DemandError(
                f"annotation {key}={echo(text)} is out of range (at most {MAX_INT_DIGITS} digits)"
            )
        raise DemandError(f"annotation {key}={echo(text)} is not a whole number")
    try:
        value = int(digits)
    except ValueError:
        raise DemandError(f"annotation {key}={echo(text)} is not a whole number") from None
    if value <= 0:
        raise DemandError(f"annotation {key}={echo(text)} must be positive")
    if value >= 10**MAX_INT_DIGITS:
        raise DemandError(
            f"annotation {key}={echo(text)} is out of range (at most {MAX_INT_DIGITS} digits)"
        )
    return value


def _byte_size(key: str, text: str) -> int:
    try:
        value = parse_whole_quantity(text)
    except QuantityRangeError:
        raise DemandError(
            f"annotation {key}={echo(text)} is out of range: a byte size must fit int64 "
            "(at most 8Ei)"
        ) from None
    except ValueError:
        raise DemandError(
            f"annotation {key}={echo(text)} is not a byte size (e.g. 141000000000 or 132Gi)"
        ) from None
    if value <= 0:
        raise DemandError(f"annotation {key}={echo(text)} must be positive")
    return value


def _fraction(key: str, text: str) -> float:
    not_a_number = DemandError(f"annotation {key}={echo(text)} is not a number")
    if len(text) > _MAX_NUMBER_CHARS:
        raise not_a_number
    try:
        value = float(text)
    except ValueError:
        raise not_a_number from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise DemandError(f"annotation {key}={echo(text)} must be in (0, 1]")
    return value


def _dtype(key: str, text: str) -> str:
    if len(text) > ECHO_CHARS:  # normalize_dtype quotes the name whole
        raise DemandError(f"annotation {key}={echo(text)} is not a dtype")
    try:
        return normalize_dtype(text)
    except ValueError as exc:
        raise DemandError(f"annotation {key}={echo(text)}: {exc}") from None


def _name(values: Mapping[str, str], key: str, kind: str = "annotation") -> str | None:
    """A name-like annotation or label, bounded in length; None when absent."""
    text = values.get(key)
    if text is not None and len(text) > MAX_NAME_CHARS:
        raise DemandError(f"{kind} {key}={echo(text)} is longer than {MAX_NAME_CHARS} characters")
    return text


def _text(value: object) -> str:
    """A metadata field as text: itself when a string, else quoted short ("" when absent)."""
    if isinstance(value, str):
        return value
    return "" if value is None else echo(value)


def _containers(spec: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    items = spec.get(field)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(c, Mapping) for c in items):
        raise DemandError(f"spec.{field} is not a list of containers")
    return items


def _container_gpus(container: Mapping[str, Any]) -> int:
    name = echo(container.get("name"))
    resources = container.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise DemandError(f"container {name}: resources is not an object")
    counts: dict[str, int] = {}
    for kind in ("limits", "requests"):
        values = resources.get(kind) or {}
        if not isinstance(values, Mapping):
            raise DemandError(f"container {name}: resources.{kind} is not an object")
        if GPU_RESOURCE in values:
            raw = values[GPU_RESOURCE]
            field = f"container {name}: resources.{kind}.{GPU_RESOURCE}"
            try:
                counts[kind] = parse_whole_quantity(raw)
            except QuantityRangeError:
                raise DemandError(f"{field}={echo(raw)} is out of range (int64)") from None
            except ValueError:
                raise DemandError(f"{field} is {echo(raw)}, not a whole number of GPUs") from None
    if len(set(counts.values())) > 1:
        raise DemandError(
            f"container {name}: {GPU_RESOURCE} limit {counts['limits']} "
            f"differs from request {counts['requests']}"
        )
    return next(iter(counts.values()), 0)


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DemandError(f"{where} is not an object")
    return value


def _string_map(value: object, where: str) -> Mapping[str, str]:
    mapping = _mapping(value, where)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise DemandError(f"{where}[{echo(key)}] is {echo(item)}, not a string")
    return mapping


__all__ = [
    "A_LEGACY_ASSIGNED_GPUS",
    "A_PIPELINE_PARALLEL",
    "A_PLACEMENT",
    "A_PREDICTED_GPUS",
    "GPU_RESOURCE",
    "DemandError",
    "GangRef",
    "PodDemand",
    "gpu_request",
    "parse_demand",
    "parse_quantity",
]
