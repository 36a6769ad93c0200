"""kube-scheduler extender wire format (k8s.io/kube-scheduler/extender/v1), decoded by hand.

The types upstream have no json tags, so keys are the Go field names (PascalCase) and nothing
is omitempty: absent values are `null`. Embedded Pod and Node objects are ordinary core/v1
JSON that we must accept whole, whatever fields a newer Kubernetes adds, so they are kept as
plain dicts instead of being validated into models. Only the envelope is checked; a broken
envelope raises `WireError` (HTTP 400 with the message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from scheduler.core.bounds import MAX_REASON_CHARS, clip, json_depth_exceeds

# How deep a request body may nest. Real Pods and Nodes (managedFields included) nest under
# 20 levels; deeper bodies are refused with 400 before any code walks them (Python code that
# recurses over a 1,000-deep value ends in RecursionError, orjson refuses to encode past 254).
MAX_BODY_DEPTH = 64


class WireError(ValueError):
    """The request body is not a valid extender request."""


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    """`ExtenderArgs`: the pod and either the candidate node names or the full Node objects."""

    pod: Mapping[str, Any]
    node_names: list[str]
    nodes: list[Mapping[str, Any]] | None  # full Node objects (nodeCacheCapable: false)


@dataclass(frozen=True, slots=True)
class BindingArgs:
    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str


def decode_json(body: bytes, max_depth: int = MAX_BODY_DEPTH) -> Any:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"malformed JSON: {exc}") from None
    if json_depth_exceeds(body, max_depth):
        raise WireError(f"request body nests deeper than {max_depth} levels")
    return data


def _get(body: Mapping[str, Any], key: str) -> Any:
    # kube-scheduler decodes case-insensitively; accept the same from callers.
    if key in body:
        return body[key]
    lowered = key.lower()
    for candidate, value in body.items():
        if isinstance(candidate, str) and candidate.lower() == lowered:
            return value
    return None


def parse_extender_args(data: Any, default_names: list[str] | None = None) -> ExtenderArgs:
    """Decode `ExtenderArgs`. With `default_names`, a request naming no nodes means those
    (explain's "every node"); without, it is an error, as it is for kube-scheduler."""
    if not isinstance(data, Mapping):
        raise WireError("request body must be a JSON object with Pod and NodeNames or Nodes")
    pod = _get(data, "Pod")
    if not isinstance(pod, Mapping):
        raise WireError("'Pod' must be a Pod object")
    metadata = pod.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        raise WireError("'Pod.metadata.name' is missing")
    names = _get(data, "NodeNames")
    nodes = _get(data, "Nodes")
    if names is not None:
        # The type set is built in C; a generator over thousands of names was a tenth of
        # the verb's time at 5,000 nodes.
        if not isinstance(names, list) or not set(map(type, names)) <= {str}:
            raise WireError("'NodeNames' must be a list of strings or null")
        return ExtenderArgs(pod, names, None)
    if nodes is not None:
        items = nodes.get("items") if isinstance(nodes, Mapping) else None
        if not isinstance(items, list):
            raise WireError("'Nodes' must be a NodeList object with an 'items' list")
        node_names: list[str] = []
        for item in items:
            if not isinstance(item, Mapping):
                raise WireError("every item of 'Nodes.items' must be a Node object")
            meta = item.get("metadata")
            name = meta.get("name") if isinstance(meta, Mapping) else None
            if not isinstance(name, str) or not name:
                raise WireError("every Node in 'Nodes.items' needs metadata.name")
            node_names.append(name)
        return ExtenderArgs(pod, node_names, items)
    if default_names is not None:
        return ExtenderArgs(pod, default_names, None)
    raise WireError("one of 'NodeNames' or 'Nodes' must be set")


def parse_binding_args(data: Any) -> BindingArgs:
    if not isinstance(data, Mapping):
        raise WireError("request body must be a JSON object (ExtenderBindingArgs)")
    values: dict[str, str] = {}
    for key in ("PodName", "PodNamespace", "PodUID", "Node"):
        value = _get(data, key)
        if not isinstance(value, str) or not value:
            raise WireError(f"'{key}' must be a non-empty string")
        values[key] = value
    return BindingArgs(values["PodName"], values["PodNamespace"], values["PodUID"], values["Node"])


def filter_result(
    args: ExtenderArgs,
    passed: Sequence[str],
    failed: Mapping[str, str],
    unresolvable: Mapping[str, str],
    error: str = "",
) -> dict[str, Any]:
    """`ExtenderFilterResult` in the mode the request used (names or full Node objects)."""
    if args.nodes is None:
        nodes_field = None
        names_field: list[str] | None = list(passed)
    else:
        keep = set(passed)
        nodes_field = {
            "items": [
                n for n, name in zip(args.nodes, args.node_names, strict=True) if name in keep
            ]
        }
        names_field = None
    return {
        "Nodes": nodes_field,
        "NodeNames": names_field,
        "FailedNodes": bounded_reasons(failed),
        "FailedAndUnresolvableNodes": bounded_reasons(unresolvable),
        "Error": error,
    }


def bounded_reasons(reasons: Mapping[str, str]) -> Mapping[str, str]:
    """The reasons, each at most MAX_REASON_CHARS (and an ellipsis): a response's size per node
    is bounded whatever a pod carries. Equal reasons stay equal strings, so kube-scheduler can
    aggregate them. (The parsers already quote user values short; this is the backstop.)"""
    if not reasons or max(map(len, reasons.values())) <= MAX_REASON_CHARS:
        return reasons
    return {node: clip(reason) for node, reason in reasons.items()}


def host_priorities(hosts: Sequence[str], scores: Sequence[int]) -> list[dict[str, Any]]:
    """`HostPriorityList`: Score must be an integer, or the whole answer is dropped."""
    return [{"Host": host, "Score": int(score)} for host, score in zip(hosts, scores, strict=True)]
