"""A small, strict kustomize composer for the tests (there is no kustomize binary here).

It implements only what deploy/k8s uses - `resources` (files and directories), `namespace`,
`labels` (includeSelectors false, includeTemplates true or false), `images` and JSON 6902
`patches` with a `target` - and refuses any other field, so the rendering it checks is the
rendering kustomize would produce. Order follows kustomize: a directory's resources are built
first (recursively), then this level's patches, namespace, labels and images are applied.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume", "IngressClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class KustomizeError(Exception):
    """The kustomization uses something this composer does not implement, or is inconsistent."""


def load_docs(path: Path) -> list[Doc]:
    """Every non-empty YAML document of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def build(directory: Path) -> list[Doc]:
    """Render the kustomization in `directory` into a list of resources."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs.extend(build(path))
        elif path.is_file():
            docs.extend(load_docs(path))
        else:
            raise KustomizeError(f"{kfile}: resource {entry} does not exist")
    for patch in k.get("patches", []):
        _apply_patch(docs, patch, kfile)
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = k["namespace"]
    for spec in k.get("labels", []):
        _apply_labels(docs, spec, kfile)
    for image in k.get("images", []):
        _apply_image(docs, image)
    _check_unique(docs)
    return docs


def resource_id(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _check_unique(docs: list[Doc]) -> None:
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        rid = resource_id(doc)
        if rid in seen:
            raise KustomizeError(f"duplicate resource {rid}")
        seen.add(rid)


def _apply_labels(docs: list[Doc], spec: Doc, kfile: Path) -> None:
    if spec.get("includeSelectors", False):
        raise KustomizeError(f"{kfile}: labels with includeSelectors are not implemented")
    pairs: dict[str, str] = spec["pairs"]
    for doc in docs:
        doc.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if spec.get("includeTemplates", False) and doc["kind"] in WORKLOADS:
            template = doc["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(pairs)


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec of a workload, or None."""
    if doc["kind"] in WORKLOADS:
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    return None


def containers(doc: Doc) -> list[Doc]:
    """Init and main containers of a workload (empty for other kinds)."""
    spec = pod_spec(doc)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _apply_image(docs: list[Doc], image: Doc) -> None:
    for doc in docs:
        for container in containers(doc):
            name = container["image"].split("@")[0].rsplit(":", 1)[0] if ":" in container["image"] \
                else container["image"]
            if name == image["name"]:
                new = image.get("newName", name)
                if "digest" in image:
                    new += "@" + image["digest"]
                elif "newTag" in image:
                    new += ":" + str(image["newTag"])
                container["image"] = new


def _matches(doc: Doc, target: Doc) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
    return all(wanted[key] == value for key, value in target.items())


def _apply_patch(docs: list[Doc], patch: Doc, kfile: Path) -> None:
    if set(patch) != {"target", "patch"}:
        raise KustomizeError(f"{kfile}: only inline JSON 6902 patches with a target are implemented")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise KustomizeError(f"{kfile}: patch is not a JSON 6902 operation list")
    hits = [doc for doc in docs if _matches(doc, patch["target"])]
    if len(hits) != 1:
        raise KustomizeError(f"{kfile}: patch target {patch['target']} matches {len(hits)} resources")
    doc = hits[0]
    for op in operations:
        json_patch(doc, op)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"bad JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def json_patch(doc: Doc, op: Doc) -> None:
    """Apply one RFC 6902 add / replace / remove / test operation in place."""
    *parents, last = _pointer(op["path"])
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            node[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[index]
        elif kind == "test":
            if node[index] != op["value"]:
                raise KustomizeError(f"test failed at {op['path']}")
        else:
            raise KustomizeError(f"unsupported op {kind}")
        return
    if kind in ("replace", "remove", "test") and last not in node:
        raise KustomizeError(f"{kind}: {op['path']} does not exist")
    if kind in ("add", "replace"):
        node[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[last]
    elif kind == "test":
        if node[last] != op["value"]:
            raise KustomizeError(f"test failed at {op['path']}")
    else:
        raise KustomizeError(f"unsupported op {kind}")
