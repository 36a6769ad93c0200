"""Builders for Kubernetes objects shaped the way the API server and kube-scheduler send them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from topology.model import NodeTopology


def gpu_node(
    name: str,
    *,
    gpus: int = 8,
    product: str | None = "NVIDIA-H100-80GB-HBM3",
    memory_mib: int | None = 81559,
    labels: Mapping[str, str] | None = None,
    realistic: bool = False,
) -> dict[str, Any]:
    """A GPU Node with GFD labels; `realistic` adds the noise real objects carry."""
    node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if product is not None:
        node_labels["nvidia.com/gpu.product"] = product
    if memory_mib is not None:
        node_labels["nvidia.com/gpu.memory"] = str(memory_mib)
    node_labels["nvidia.com/gpu.count"] = str(gpus)
    node_labels.update(labels or {})
    node: dict[str, Any] = {
        "metadata": {"name": name, "labels": node_labels},
        "spec": {},
        "status": {
            "capacity": {
                "cpu": "224",
                "memory": "2113459920Ki",
                "pods": "110",
                "nvidia.com/gpu": str(gpus),
            },
            "allocatable": {
                "cpu": "223500m",
                "memory": "2113357520Ki",
                "pods": "110",
                "nvidia.com/gpu": str(gpus),
            },
        },
    }
    if realistic:
        node["metadata"].update(
            {
                "uid": f"uid-node-{name}",
                "resourceVersion": "48213",
                "creationTimestamp": "2026-11-01T10:00:00Z",
                "annotations": {
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                },
                "managedFields": [
                    {
                        "manager": "kubelet",
                        "operation": "Update",
                        "apiVersion": "v1",
                        "time": "2026-11-01T10:00:00Z",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:status": {"f:capacity": {"f:nvidia.com/gpu": {}}}},
                    }
                ],
            }
        )
        node["spec"] = {
            "podCIDR": "10.244.3.0/24",
            "providerID": f"aws:///us-east-1a/{name}",
            "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
        }
        node["status"].update(
            {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "lastHeartbeatTime": "2026-11-28T08:00:00Z",
                        "reason": "KubeletReady",
                    }
                ],
                "addresses": [{"type": "InternalIP", "address": "10.0.3.7"}],
                "nodeInfo": {
                    "kubeletVersion": "v1.35.1",
                    "containerRuntimeVersion": "containerd://2.1",
                },
                "images": [{"names": ["vllm/vllm-openai:v0.11.0"], "sizeBytes": 9876543210}],
                "someFutureField": {"x": 1},
            }
        )
    return node


def cpu_node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "64", "pods": "110"},
            "allocatable": {"cpu": "64", "pods": "110"},
        },
    }


def inventory(
    name: str,
    topology: NodeTopology,
    *,
    memory_bytes: int = 80 * 2**30,
    product: str = "H100-SXM-80GB",
    models: Iterable[Mapping[str, Any]] = (),
    allocated: Iterable[tuple[int, str]] = (),
    bandwidth: Mapping[str, float] | None = None,
    cache_bytes: int = 2**42,
    observed_at: str = "2026-11-28T08:00:00Z",
    allocated_source: str | None = "kubelet",
) -> dict[str, Any]:
    """An agent-written NodeInventory; `allocated` is the kubelet's list unless
    `allocated_source` says otherwise (None: the field is left out)."""
    extra = {} if allocated_source is None else {"allocatedSource": allocated_source}
    return {
        "apiVersion": "kvsched.io/v1alpha1",
        "kind": "NodeInventory",
        "metadata": {"name": name},
        "status": {
            "gpus": [
                {
                    "index": g.index,
                    "uuid": f"GPU-{name}-{g.index}",
                    "product": product,
                    "memoryBytes": memory_bytes,
                    "numaNode": g.numa_node,
                }
                for g in topology.gpus
            ],
            "links": topology.codes(),
            "allocated": [{"index": i, "pod": pod} for i, pod in allocated],
            **extra,
            "modelCache": {"capacityBytes": cache_bytes, "models": list(models)},
            "bandwidth": dict(bandwidth or {}),
            "observedAt": observed_at,
            "source": "agent",
        },
    }


def pod(
    name: str,
    *,
    gpus: int = 1,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    namespace: str = "llm",
    node: str | None = None,
    phase: str = "Pending",
    uid: str | None = None,
    realistic: bool = False,
    ready: bool | None = None,
) -> dict[str, Any]:
    """A pod object as the API serves it. ``ready``: its Ready condition (default: True when
    Running, as the kubelet reports a pod whose engine passed its readiness probe)."""
    container: dict[str, Any] = {"name": "vllm", "image": "vllm/vllm-openai:v0.11.0"}
    if gpus:
        container["resources"] = {
            "limits": {"nvidia.com/gpu": str(gpus)},
            "requests": {"nvidia.com/gpu": str(gpus), "cpu": "8", "memory": "64Gi"},
        }
    obj: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{namespace}-{name}",
            "annotations": dict(annotations or {}),
            "labels": dict(labels or {}),
        },
        "spec": {"schedulerName": "kvsched", "containers": [container]},
        "status": {"phase": phase},
    }
    if node is not None:
        obj["spec"]["nodeName"] = node
    if ready is None:
        ready = phase == "Running"
    if phase != "Pending" or ready:
        obj["status"]["conditions"] = [
            {"type": "Ready", "status": "True" if ready else "False"},
        ]
    if realistic:
        obj["metadata"].update(
            {
                "resourceVersion": "99120",
                "creationTimestamp": "2026-11-28T08:01:00Z",
                "generateName": name[:-5],
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": "rs",
                        "uid": "rs-uid",
                        "controller": True,
                    }
                ],
                "managedFields": [
                    {
                        "manager": "kube-controller-manager",
                        "operation": "Update",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:spec": {}},
                    }
                ],
            }
        )
        obj["spec"].update(
            {
                "volumes": [{"name": "cache", "hostPath": {"path": "/models"}}],
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "priority": 0,
                "enableServiceLinks": True,
                "preemptionPolicy": "PreemptLowerPriority",
            }
        )
        obj["status"].update(
            {"qosClass": "Burstable", "conditions": [{"type": "PodScheduled", "status": "False"}]}
        )
    return obj


def model_annotations(model: str, **extra: str) -> dict[str, str]:
    result = {"kvsched.io/model": model}
    result.update({f"kvsched.io/{k.replace('_', '-')}": v for k, v in extra.items()})
    return result


def cached(name: str, tier: str, revision: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "revision": revision,
        "sizeBytes": None,
        "lastUsed": "2026-11-28T07:00:00Z",
    }


def as_list(objects: Sequence[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [{"kind": kind, **obj} for obj in objects]
