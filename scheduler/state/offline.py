"""Offline mode input: Nodes, NodeInventories, Pods and PodGroups from files
`kubectl get -o yaml|json` wrote.

Accepts single objects, multi-document YAML, `kind: List` / `NodeList` / `PodList` wrappers,
JSON, and folders of such files (read in name order, recursively). Objects of other kinds are
skipped; a file that is not YAML/JSON raises `ClusterFileError` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

# libyaml's parser when PyYAML was built with it (the wheels are), else the pure-Python one.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SUFFIXES = (".yaml", ".yml", ".json")


class ClusterFileError(ValueError):
    """The cluster file or folder cannot be read as Kubernetes objects."""


@dataclass
class ClusterObjects:
    nodes: list[dict[str, Any]] = field(default_factory=list)
    inventories: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    pod_groups: list[dict[str, Any]] = field(default_factory=list)
    configmaps: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, obj: Mapping[str, Any], origin: str) -> None:
        kind = obj.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and "items" in obj:
            items = obj.get("items") or []
            if not isinstance(items, list):
                raise ClusterFileError(f"{origin}: {kind}.items is not a list")
            item_kind = kind.removesuffix("List") or None
            for item in items:
                if not isinstance(item, Mapping):
                    raise ClusterFileError(f"{origin}: {kind} item is not an object")
                # Typed lists (NodeList) may omit each item's kind, as the API server does.
                if item_kind and "kind" not in item:
                    item = {**item, "kind": item_kind}
                self.add(item, origin)
            return
        target = {
            "Node": self.nodes,
            "NodeInventory": self.inventories,
            "Pod": self.pods,
            "PodGroup": self.pod_groups,
            "ConfigMap": self.configmaps,
        }.get(str(kind))
        if target is None:
            self.skipped[str(kind)] = self.skipped.get(str(kind), 0) + 1
            return
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping) or not meta.get("name"):
            raise ClusterFileError(f"{origin}: a {kind} without metadata.name")
        target.append(dict(obj))


def load_cluster(path: str | Path) -> ClusterObjects:
    """Read every object under `path` (a file or a folder)."""
    root = Path(path)
    if not root.exists():
        raise ClusterFileError(f"{root}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES) if root.is_dir() else [root]
    objects = ClusterObjects()
    for file in files:
        for document in _documents(file):
            objects.add(document, str(file))
    return objects


def _documents(file: Path) -> Iterator[Mapping[str, Any]]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterFileError(f"{file}: cannot read: {exc}") from None
    documents: list[Any]
    if file.suffix == ".json":
        # JSON is YAML too, but the JSON parser is two orders of magnitude faster on the
        # thousands-of-nodes snapshots benchmarks and real clusters produce.
        try:
            documents = [orjson.loads(text)]
        except orjson.JSONDecodeError as exc:
            raise ClusterFileError(f"{file}: not JSON: {exc}") from None
    else:
        try:
            documents = list(yaml.load_all(text, Loader=_YAML_LOADER))
        except yaml.YAMLError as exc:
            raise ClusterFileError(f"{file}: not YAML or JSON: {exc}") from None
    for number, document in enumerate(documents, start=1):
        if document is None:
            continue
        if not isinstance(document, Mapping):
            raise ClusterFileError(f"{file}: document {number} is not an object")
        yield document
