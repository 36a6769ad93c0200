"""The bundled example cluster and LLM pods of `kvsched demo`, as kubectl-shaped objects.

Built in code rather than kept as a large YAML file so that the topology matrices come from the
same presets the scheduler uses; `kvsched demo --dump DIR` writes them out as YAML for anyone
who wants to read or edit them (and feed them to `kvsched extender --cluster-file`).

The pool: 28 GPU nodes of six kinds plus two CPU nodes. Some nodes report a NodeInventory
(exact topology, model cache in different tiers, GPUs in use), others only carry the NVIDIA GPU
Feature Discovery labels, and some GPUs are already held by running pods.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from topology.hardware import lookup_product
from topology.presets import PRESETS

GPUS_PER_NODE = 8
OBSERVED_AT = "2026-11-28T08:00:00Z"


@dataclass(frozen=True)
class NodeKind:
    prefix: str
    product_label: str  # nvidia.com/gpu.product as GFD writes it
    preset: str
    count: int  # nodes of this kind
    zone: str


KINDS = (
    NodeKind("h100", "NVIDIA-H100-80GB-HBM3", "hgx-h100-8", 6, "zone-a"),
    NodeKind("h200", "NVIDIA-H200", "hgx-h200-8", 4, "zone-a"),
    NodeKind("b200", "NVIDIA-B200", "hgx-b200-8", 2, "zone-b"),
    NodeKind("a100", "NVIDIA-A100-SXM4-80GB", "dgx-a100-8", 4, "zone-b"),
    NodeKind("a100p", "NVIDIA-A100-PCIE-40GB", "a100-pcie-8-nvbridge", 4, "zone-c"),
    NodeKind("l40s", "NVIDIA-L40S", "l40s-pcie-8", 8, "zone-c"),
)

# (node, model, tier, revision): what some nodes already hold.
CACHED = (
    ("h100-02", "meta-llama/Llama-3.1-70B-Instruct", "host-memory", None),
    ("h100-03", "meta-llama/Llama-3.1-70B-Instruct", "local-disk", None),
    ("h100-05", "openai/gpt-oss-120b", "local-disk", None),
    ("h200-02", "deepseek-ai/DeepSeek-V3", "local-disk", None),
    ("h200-03", "meta-llama/Llama-3.1-405B-Instruct", "host-memory", None),
    ("a100-01", "mistralai/Mixtral-8x7B-Instruct-v0.1", "local-disk", None),
    ("a100p-02", "Qwen/Qwen2.5-32B-Instruct", "local-disk", None),
    ("l40s-04", "meta-llama/Llama-3.1-8B-Instruct", "host-memory", None),
    ("l40s-06", "meta-llama/Llama-3.1-8B-Instruct", "local-disk", None),
    ("l40s-07", "Qwen/Qwen2.5-7B-Instruct", "local-disk", None),
)

# (node, GPU indices, pod name): GPUs already held by running pods.
BUSY = (
    ("h100-01", (0, 1, 2, 3), "existing-llama-70b-a"),
    ("h100-02", (4, 5, 6, 7), "existing-qwen-72b"),
    ("h200-01", (0, 1, 2, 3, 4, 5), "existing-train-job"),
    ("a100p-01", (1, 3, 5), "existing-small-models"),
    ("a100p-02", (0, 2), "existing-embedder"),
    ("l40s-01", (0, 1, 2, 3, 4, 5, 6), "existing-batch"),
)

# Nodes that report no NodeInventory: kvsched knows them by their GFD labels only.
LABELS_ONLY = frozenset({"h100-06", "a100-04", "l40s-08", "b200-02"})


def node_names() -> list[str]:
    return [f"{k.prefix}-{i:02d}" for k in KINDS for i in range(1, k.count + 1)]


def cluster_objects() -> list[dict[str, Any]]:
    """Nodes, NodeInventories and bound Pods of the example pool."""
    objects: list[dict[str, Any]] = []
    for kind in KINDS:
        for i in range(1, kind.count + 1):
            name = f"{kind.prefix}-{i:02d}"
            objects.append(node_object(name, kind))
            if name not in LABELS_ONLY:
                objects.append(inventory_object(name, kind))
    for cpu in ("cpu-01", "cpu-02"):
        objects.append(cpu_node_object(cpu))
    for node, gpus, pod in BUSY:
        objects.append(running_pod(pod, node, gpus))
    return objects


def node_object(name: str, kind: NodeKind) -> dict[str, Any]:
    product = lookup_product(kind.product_label)
    memory_mib = product.memory_bytes // 2**20 if product is not None else 0
    gpus = str(GPUS_PER_NODE)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": kind.zone,
                "nvidia.com/gpu.product": kind.product_label,
                "nvidia.com/gpu.memory": str(memory_mib),
                "nvidia.com/gpu.count": str(GPUS_PER_NODE),
            },
        },
        "status": {
            "capacity": {"cpu": "224", "memory": "2Ti", "pods": "110", "nvidia.com/gpu": gpus},
            "allocatable": {
                "cpu": "220",
                "memory": "1980Gi",
                "pods": "110",
                "nvidia.com/gpu": gpus,
            },
        },
    }


def cpu_node_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "allocatable": {"cpu": "62", "memory": "250Gi", "pods": "110"},
        },
    }


def inventory_object(name: str, kind: NodeKind) -> dict[str, Any]:
    topology = PRESETS[kind.preset]
    product = lookup_product(kind.product_label)
    memory = product.memory_bytes if product is not None else 0
    gpus = [
        {
            "index": gpu.index,
            "uuid": f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}.gpu{gpu.index}')}",
            "product": product.name if product is not None else kind.product_label,
            "memoryBytes": memory,
            "numaNode": gpu.numa_node,
        }
        for gpu in topology.gpus
    ]
    allocated = [
        {"index": index, "pod": f"default/{pod}"}
        for node, indices, pod in BUSY
        if node == name
        for index in indices
    ]
    models = [
        {
            "name": model,
            "revision": revision,
            "sizeBytes": None,
            "tier": tier,
            "lastUsed": OBSERVED_AT,
        }
        for node, model, tier, revision in CACHED
        if node == name
    ]
    return {
        "apiVersion": "kvsched.io/v1alpha1",
        "kind": "NodeInventory",
        "metadata": {"name": name},
        "status": {
            "gpus": gpus,
            "links": topology.codes(),
            "allocated": allocated,
            # The demo's busy GPUs stand for what the node agent read from the kubelet.
            "allocatedSource": "kubelet",
            "modelCache": {"capacityBytes": 4 * 2**40, "models": models},
            "bandwidth": {"localDisk": 6e9, "hostMemory": 22e9, "network": 1.2e9},
            "observedAt": OBSERVED_AT,
            "source": "agent",
        },
    }


def running_pod(name: str, node: str, gpus: tuple[int, ...]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "image": "vllm/vllm-openai:v0.11.0",
                    "resources": {"limits": {"nvidia.com/gpu": str(len(gpus))}},
                }
            ],
        },
        "status": {"phase": "Running"},
    }


def llm_pod(
    name: str,
    gpus: int,
    annotations: dict[str, str],
    namespace: str = "llm",
) -> dict[str, Any]:
    """A vLLM-style pod as kube-scheduler would send it (no nodeName yet)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "annotations": annotations,
            "labels": {"app": name},
        },
        "spec": {
            "schedulerName": "kvsched",
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.11.0",
                    "resources": {
                        "limits": {"nvidia.com/gpu": str(gpus)},
                        "requests": {"nvidia.com/gpu": str(gpus), "cpu": "8", "memory": "64Gi"},
                    },
                }
            ],
        },
        "status": {"phase": "Pending"},
    }


def demo_pods() -> list[dict[str, Any]]:
    """The example LLM pods, in the order the demo schedules them."""
    m = "kvsched.io/model"
    return [
        llm_pod(
            "llama-8b-chat",
            1,
            {
                m: "meta-llama/Llama-3.1-8B-Instruct",
                "kvsched.io/max-model-len": "8192",
                "kvsched.io/max-num-seqs": "16",
            },
        ),
        llm_pod(
            "llama-70b-tp4",
            4,
            {
                m: "meta-llama/Llama-3.1-70B-Instruct",
                "kvsched.io/max-model-len": "32768",
                "kvsched.io/max-num-seqs": "4",
            },
        ),
        llm_pod(
            "llama-70b-tp8",
            8,
            {
                m: "meta-llama/Llama-3.1-70B-Instruct",
                "kvsched.io/max-model-len": "131072",
                "kvsched.io/max-num-seqs": "8",
            },
        ),
        llm_pod(
            "qwen-32b-tp2",
            2,
            {
                m: "Qwen/Qwen2.5-32B-Instruct",
                "kvsched.io/max-model-len": "4096",
                "kvsched.io/max-num-seqs": "4",
            },
        ),
        llm_pod(
            "mixtral-tp2",
            2,
            {m: "mistralai/Mixtral-8x7B-Instruct-v0.1", "kvsched.io/max-model-len": "32768"},
        ),
        llm_pod(
            "deepseek-v3",
            8,
            {
                m: "deepseek-ai/DeepSeek-V3",
                "kvsched.io/max-model-len": "32768",
                "kvsched.io/max-num-seqs": "4",
            },
        ),
        llm_pod(
            "llama-405b-fp8",
            8,
            {
                m: "meta-llama/Llama-3.1-405B-Instruct",
                "kvsched.io/dtype": "fp8",
                "kvsched.io/max-model-len": "16384",
            },
        ),
        llm_pod("gpt-oss-120b", 1, {m: "openai/gpt-oss-120b", "kvsched.io/max-model-len": "32768"}),
        llm_pod("qwen-7b-a", 1, {m: "Qwen/Qwen2.5-7B-Instruct"}),
        llm_pod("embedder-no-model", 1, {}),
        llm_pod("llama-405b-tp4-too-big", 4, {m: "meta-llama/Llama-3.1-405B-Instruct"}),
        llm_pod(
            "typo-annotation",
            1,
            {m: "meta-llama/Llama-3.1-8B-Instruct", "kvsched.io/max-num-seqs": "lots"},
        ),
        llm_pod("unknown-model", 2, {m: "acme/secret-model-13b"}),
    ]
