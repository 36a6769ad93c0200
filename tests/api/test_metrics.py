"""Operational metrics: rejections by reason and gang reservations."""

from __future__ import annotations

from typing import Any

from support.extender import sample
from support.k8s import gpu_node, pod

from scheduler.models.catalog import Catalog
from scheduler.state.store import ClusterStore


def test_rejections_are_counted_by_reason(make_client: Any) -> None:
    store = ClusterStore(Catalog.builtin())
    store.replace_kind(
        "Node", [gpu_node("h100"), gpu_node("l40s", product="NVIDIA-L40S", memory_mib=46068)]
    )
    store.synced = True
    client = make_client(store)
    big = pod("big", gpus=1, annotations={"kvsched.io/model": "meta-llama/Llama-3.1-70B-Instruct"})
    bad = pod(
        "bad",
        annotations={
            "kvsched.io/model": "meta-llama/Llama-3.1-8B-Instruct",
            "kvsched.io/max-num-seqs": "lots",
        },
    )
    for p, names in ((big, ["h100", "l40s"]), (bad, ["h100", "l40s", "ghost"])):
        assert (
            client.post("/filter", json={"Pod": p, "Nodes": None, "NodeNames": names}).status_code
            == 200
        )
    text = client.get("/metrics").text
    assert sample(text, "kvsched_filter_rejections_total", reason="gpu-memory") == 2
    assert sample(text, "kvsched_filter_rejections_total", reason="pod-spec") == 3


def test_gang_reservations_gauge(make_client: Any) -> None:
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("a"), gpu_node("b")])
    members = [
        pod(f"m{i}", gpus=8, annotations={"kvsched.io/gang": "g", "kvsched.io/gang-size": "2"})
        for i in range(2)
    ]
    for m in members:
        store.upsert_pod(m)
    store.synced = True
    client = make_client(store)
    client.post("/filter", json={"Pod": members[0], "Nodes": None, "NodeNames": ["a", "b"]})
    assert sample(client.get("/metrics").text, "kvsched_gang_reservations") == 2
