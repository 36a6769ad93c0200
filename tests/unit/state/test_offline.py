"""Offline loader: the shapes `kubectl get -o yaml|json` and the API server print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.state.offline import ClusterFileError, ClusterObjects, load_cluster

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "cluster"


def names(objects: list[dict[str, object]]) -> list[str]:
    return [obj["metadata"]["name"] for obj in objects]  # type: ignore[index]


def test_single_object_as_kubectl_get_node_prints_it() -> None:
    objects = load_cluster(FIXTURES / "single-node.yaml")
    assert names(objects.nodes) == ["gpu-a"]
    assert objects.pods == [] and objects.inventories == []
    node = objects.nodes[0]
    # The object is kept whole, noise included (managedFields, taints, quantities as strings).
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["managedFields"][0]["manager"] == "kubelet"
    assert objects.skipped == {}


def test_kind_list_with_typed_items_and_an_unknown_kind() -> None:
    objects = load_cluster(FIXTURES / "kubectl-list.yaml")
    assert names(objects.nodes) == ["gpu-a", "cpu-1"]
    assert names(objects.pods) == ["vllm-0"]
    assert objects.pods[0]["spec"]["nodeName"] == "gpu-a"
    assert objects.skipped == {"Service": 1}


def test_multi_document_yaml_with_leading_and_trailing_separators() -> None:
    objects = load_cluster(FIXTURES / "multi-doc.yaml")
    assert names(objects.nodes) == ["gpu-b"]
    assert names(objects.inventories) == ["gpu-b"]
    assert names(objects.pods) == ["small-0"]
    assert objects.skipped == {"Service": 1}
    assert objects.inventories[0]["status"]["links"][0] == ["X", "PIX", "SYS", "SYS"]


def test_nodelist_json_whose_items_omit_kind() -> None:
    objects = load_cluster(FIXTURES / "nodelist-api.json")
    assert names(objects.nodes) == ["gpu-c", "gpu-d"]
    # Each item is tagged with the list's element kind.
    assert all(node["kind"] == "Node" for node in objects.nodes)
    assert objects.skipped == {}


def test_podlist_yaml_whose_items_omit_kind() -> None:
    objects = load_cluster(FIXTURES / "podlist-api.yaml")
    assert names(objects.pods) == ["vllm-a", "job-done"]
    assert [p["kind"] for p in objects.pods] == ["Pod", "Pod"]
    assert objects.nodes == []


def test_typed_list_item_with_its_own_kind_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    path.write_text(
        json.dumps(
            {
                "kind": "NodeList",
                "items": [
                    {"metadata": {"name": "n1"}},
                    {"kind": "Pod", "metadata": {"name": "p1"}},
                ],
            }
        )
    )
    objects = load_cluster(path)
    assert names(objects.nodes) == ["n1"]
    assert names(objects.pods) == ["p1"]


def test_plain_list_items_without_kind_are_skipped_not_guessed(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("kind: List\nitems:\n- metadata: {name: mystery}\n")
    objects = load_cluster(path)
    assert objects.nodes == [] and objects.pods == [] and objects.inventories == []
    assert sum(objects.skipped.values()) == 1


def test_inventory_and_configmap_lists(tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(
        "apiVersion: kvsched.io/v1alpha1\nkind: NodeInventoryList\nitems:\n"
        "- metadata: {name: gpu-1}\n  status: {gpus: []}\n"
        "---\nkind: ConfigMapList\nitems:\n- metadata: {name: catalog, namespace: kvsched}\n"
    )
    objects = load_cluster(path)
    assert names(objects.inventories) == ["gpu-1"]
    assert names(objects.configmaps) == ["catalog"]


def test_empty_list_and_empty_file_give_no_objects(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: List\nitems: []\n")
    (tmp_path / "b.yaml").write_text("")
    (tmp_path / "c.yaml").write_text("---\n# only a comment\n---\n")
    objects = load_cluster(tmp_path)
    assert objects == ClusterObjects()


def test_folder_of_mixed_files_recursive_in_name_order() -> None:
    objects = load_cluster(FIXTURES)
    # Sorted paths: kubectl-list.yaml, multi-doc.yaml, nodelist-api.json, podlist-api.yaml,
    # single-node.yaml, snapshot/inventories/gpu-1.json, snapshot/nodes.yaml, snapshot/pods.json
    assert names(objects.nodes) == [
        "gpu-a", "cpu-1",  # kubectl-list.yaml
        "gpu-b",  # multi-doc.yaml
        "gpu-c", "gpu-d",  # nodelist-api.json
        "gpu-a",  # single-node.yaml
        "gpu-1", "gpu-2", "cpu-1",  # snapshot/nodes.yaml
    ]  # fmt: skip
    assert names(objects.inventories) == ["gpu-b", "gpu-1"]
    assert names(objects.pods) == [
        "vllm-0", "small-0", "vllm-a", "job-done", "vllm-70b-0", "vllm-8b-pending",
    ]  # fmt: skip
    # README.txt is not read; Services and the Event are counted, not loaded.
    assert objects.skipped == {"Service": 2, "Event": 1}


def test_folder_order_is_by_name_not_creation(tmp_path: Path) -> None:
    sub = tmp_path / "b-sub"
    sub.mkdir()
    # Created in an order different from the name order.
    (tmp_path / "c.json").write_text(json.dumps({"kind": "Node", "metadata": {"name": "n-c"}}))
    (sub / "a.yml").write_text("kind: Node\nmetadata: {name: n-b-sub-a}\n")
    (tmp_path / "a.yaml").write_text("kind: Node\nmetadata: {name: n-a}\n")
    (tmp_path / "notes.md").write_text("kind: Node\nmetadata: {name: ignored}\n")
    objects = load_cluster(tmp_path)
    assert names(objects.nodes) == ["n-a", "n-b-sub-a", "n-c"]


def test_unknown_kinds_are_counted_per_kind(tmp_path: Path) -> None:
    path = tmp_path / "misc.yaml"
    path.write_text(
        "kind: List\nitems:\n"
        "- {kind: Deployment, metadata: {name: d}}\n"
        "- {kind: Deployment, metadata: {name: e}}\n"
        "- {kind: Namespace, metadata: {name: llm}}\n"
        "- {kind: Node, metadata: {name: n}}\n"
    )
    objects = load_cluster(path)
    assert objects.skipped == {"Deployment": 2, "Namespace": 1}
    assert names(objects.nodes) == ["n"]


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: Node\nmetadata: {name: [unclosed\n")
    with pytest.raises(ClusterFileError) as info:
        load_cluster(path)
    assert str(path) in str(info.value)


def test_invalid_file_inside_a_folder_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("kind: Node\nmetadata: {name: n}\n")
    bad = tmp_path / "nested" / "bad.json"
    bad.parent.mkdir()
    bad.write_text('{"kind": "Node", "metadata": {"name": "x"}')
    with pytest.raises(ClusterFileError) as info:
        load_cluster(tmp_path)
    assert str(bad) in str(info.value)
    assert "good.yaml" not in str(info.value)


@pytest.mark.parametrize("text", ["- kind: Node\n  metadata: {name: n}\n", "just a string\n", "42"])
def test_a_document_that_is_not_an_object_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(ClusterFileError) as info:
        load_cluster(path)
    assert str(path) in str(info.value)
    assert "not an object" in str(info.value)


def test_non_object_list_item_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("kind: NodeList\nitems:\n- gpu-1\n")
    with pytest.raises(ClusterFileError, match=r"list\.yaml"):
        load_cluster(path)


def test_list_items_that_is_not_a_list_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("kind: PodList\nitems: {metadata: {name: p}}\n")
    with pytest.raises(ClusterFileError, match=r"list\.yaml"):
        load_cluster(path)


@pytest.mark.parametrize(
    "text",
    [
        "kind: Node\nmetadata: {labels: {a: b}}\n",
        "kind: Pod\nspec: {}\n",
        "kind: NodeInventory\nmetadata: {name: ''}\n",
        "kind: NodeList\nitems:\n- metadata: {uid: abc}\n",
    ],
)
def test_object_without_a_name_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "nameless.yaml"
    path.write_text(text)
    with pytest.raises(ClusterFileError) as info:
        load_cluster(path)
    assert str(path) in str(info.value)
    assert "metadata.name" in str(info.value)


def test_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "cluster.yaml"
    with pytest.raises(ClusterFileError) as info:
        load_cluster(missing)
    assert str(missing) in str(info.value)


def test_cluster_file_error_is_a_value_error() -> None:
    # The CLI catches ValueError for every input problem.
    assert issubclass(ClusterFileError, ValueError)


def test_accepts_str_paths() -> None:
    objects = load_cluster(str(FIXTURES / "single-node.yaml"))
    assert names(objects.nodes) == ["gpu-a"]
