"""OpenAPI documentation of the extender's wire format (kube-scheduler's extender/v1 types).

The handlers read raw bodies on purpose (embedded core/v1 objects must never be rejected by
validation), so FastAPI cannot derive these; they only document, and open schemas
(additionalProperties) keep unknown fields acceptable.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BINDING_ARGS",
    "ERROR",
    "EXPLAINED",
    "EXPLAIN_BODY",
    "EXTENDER_ARGS",
    "FILTER_RESULT",
    "HOST_PRIORITY_LIST",
    "json_content",
    "verb_openapi",
]

_OBJECT_WITH_NAME: dict[str, Any] = {
    "type": "object",
    "required": ["metadata"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
        }
    },
}
EXTENDER_ARGS: dict[str, Any] = {
    "title": "ExtenderArgs",
    "type": "object",
    "description": "k8s.io/kube-scheduler/extender/v1 ExtenderArgs: keys are Go field names, "
    "matched case-insensitively. NodeNames (cache mode) or Nodes (full-Nodes mode).",
    "required": ["Pod"],
    "properties": {
        "Pod": {**_OBJECT_WITH_NAME, "description": "a core/v1 Pod, accepted whole"},
        "Nodes": {
            "description": "a core/v1 NodeList (full-Nodes mode), or null",
            "anyOf": [
                {
                    "type": "object",
                    "required": ["items"],
                    "properties": {"items": {"type": "array", "items": _OBJECT_WITH_NAME}},
                },
                {"type": "null"},
            ],
        },
        "NodeNames": {
            "description": "candidate node names (cache mode), or null",
            "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
        },
    },
}
EXPLAIN_BODY: dict[str, Any] = {
    "description": "ExtenderArgs, or a bare core/v1 Pod; naming no nodes means every node",
    "anyOf": [EXTENDER_ARGS, {**_OBJECT_WITH_NAME, "title": "Pod"}],
}
BINDING_ARGS: dict[str, Any] = {
    "title": "ExtenderBindingArgs",
    "type": "object",
    "required": ["PodName", "PodNamespace", "PodUID", "Node"],
    "properties": {
        key: {"type": "string", "minLength": 1}
        for key in ("PodName", "PodNamespace", "PodUID", "Node")
    },
}
ERROR: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["Error"],
    "properties": {"Error": {"type": "string"}},
}
_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
FILTER_RESULT: dict[str, Any] = {
    "title": "ExtenderFilterResult",
    "type": "object",
    "required": ["Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"],
    "properties": {
        "Nodes": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        "NodeNames": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        "FailedNodes": _STRING_MAP,
        "FailedAndUnresolvableNodes": _STRING_MAP,
        "Error": {"type": "string"},
    },
}
HOST_PRIORITY_LIST: dict[str, Any] = {
    "title": "HostPriorityList",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["Host", "Score"],
        "properties": {"Host": {"type": "string"}, "Score": {"type": "integer"}},
    },
}
EXPLAINED: dict[str, Any] = {
    "title": "Explanation",
    "type": "object",
    "required": ["pod", "gpus", "model", "error", "plan", "nodes"],
}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def verb_openapi(body: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra of a POST verb: its JSON body and its answers."""
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": json_content(result, "the verb's answer (kube-scheduler counts only 200)"),
            "400": json_content(ERROR, "the body is not valid JSON or not a valid envelope"),
            "408": json_content(ERROR, "the body did not fully arrive within the time limit"),
            "413": json_content(ERROR, "the body exceeds the configured size limit"),
            "500": json_content(ERROR, "an internal error (a bug), with its message"),
        },
    }
