"""Shared fixtures of the extender API tests: a small cluster in a ClusterStore behind the app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.k8s import cpu_node, gpu_node, pod

from scheduler.core.assignment import GpuPrediction
from scheduler.extender.app import AppSettings, create_app
from scheduler.models.catalog import Catalog
from scheduler.state.offline import ClusterObjects
from scheduler.state.store import ClusterStore

CATALOG = Catalog.builtin()

# gpu-a, gpu-b: idle 8x H100; gpu-busy: 8x H100 with 6 GPUs held; l40s: 4x L40S; cpu-1: no GPU.
NODE_NAMES = ("gpu-a", "gpu-b", "gpu-busy", "l40s", "cpu-1")


def cluster_nodes(realistic: bool = False) -> dict[str, dict[str, Any]]:
    nodes = {
        "gpu-a": gpu_node("gpu-a", realistic=realistic),
        "gpu-b": gpu_node("gpu-b", realistic=realistic),
        "gpu-busy": gpu_node("gpu-busy", realistic=realistic),
        "l40s": gpu_node(
            "l40s", gpus=4, product="NVIDIA-L40S", memory_mib=46068, realistic=realistic
        ),
        "cpu-1": cpu_node("cpu-1"),
    }
    assert tuple(nodes) == NODE_NAMES
    return nodes


def cluster_objects() -> ClusterObjects:
    holder = pod(
        "holder",
        gpus=6,
        node="gpu-busy",
        phase="Running",
        annotations={
            "kvsched.io/predicted-gpus": GpuPrediction("gpu-busy", (0, 1, 2, 3, 4, 5)).encode()
        },
    )
    waiting = pod("waiting", gpus=2, namespace="llm")
    return ClusterObjects(nodes=list(cluster_nodes().values()), pods=[holder, waiting])


def loaded_store() -> ClusterStore:
    store = ClusterStore(CATALOG)
    store.load(cluster_objects())
    return store


@pytest.fixture
def store() -> ClusterStore:
    return loaded_store()


@pytest.fixture
def client(store: ClusterStore) -> Iterator[TestClient]:
    with TestClient(create_app(store, AppSettings())) as test_client:
        yield test_client


@pytest.fixture
def realistic_nodes() -> dict[str, dict[str, Any]]:
    """The store's nodes as kube-scheduler sends them in full-Nodes mode."""
    return cluster_nodes(realistic=True)


@pytest.fixture
def make_client() -> Iterator[Any]:
    """A factory for clients over other stores or settings; closes what it made."""
    made: list[TestClient] = []

    def factory(store: ClusterStore, settings: AppSettings | None = None) -> TestClient:
        test_client = TestClient(create_app(store, settings or AppSettings()))
        test_client.__enter__()
        made.append(test_client)
        return test_client

    yield factory
    for test_client in made:
        test_client.__exit__(None, None, None)
