"""A small, strict kustomize composer for the tests (there is no kustomize binary here).

It implements only what deploy/k8s uses - `resources` (files and directories), `components`
(kind Component), `namespace`, `labels` (includeSelectors false, includeTemplates true or
false), `images` and `patches` with a `target` (kind and name as anchored regular expressions,
labelSelector as `k=v[,k=v]`), inline or from a `path`, either JSON 6902 operation lists or
strategic merge patches (maps merged, lists of named items merged by name with new items first,
as kustomize does for containers, volumes and env) - and refuses any other field, so the
rendering it checks is the rendering kustomize would produce. Order follows kustomize: a
directory's resources are built first (recursively), then its components, then this level's
patches, namespace, labels and images are applied.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "namespace", "labels", "images",
                    "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume", "IngressClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
KINDS = {"Kustomization": "kustomize.config.k8s.io/v1beta1", "Component": "kustomize.config.k8s.io/v1alpha1"}


class KustomizeError(Exception):
    """The kustomization uses something this composer does not implement, or is inconsistent."""


def load_docs(path: Path) -> list[Doc]:
    """Every non-empty YAML document of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def build(directory: Path, docs: list[Doc] | None = None, kind: str = "Kustomization") -> list[Doc]:
    """Render the kustomization in `directory` into a list of resources (a Component renders
    onto the `docs` of the kustomization that names it)."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)}")
    if (k.get("kind", "Kustomization"), k.get("apiVersion", KINDS["Kustomization"])) != (kind, KINDS[kind]):
        raise KustomizeError(f"{kfile}: expected a {kind} ({KINDS[kind]})")
    docs = [] if docs is None else docs
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs.extend(build(path))
        elif path.is_file():
            docs.extend(load_docs(path))
        else:
            raise KustomizeError(f"{kfile}: resource {entry} does not exist")
    for entry in k.get("components", []):
        build((directory / entry).resolve(), docs, kind="Component")
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
    if doc["kind"] == "CronJob":
        cron: Doc = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return cron
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
    for key, value in target.items():
        if key == "labelSelector":
            labels = doc["metadata"].get("labels", {})
            if not all(labels.get(k) == v for k, _, v in (p.partition("=") for p in value.split(","))):
                return False
        elif key not in wanted:
            raise KustomizeError(f"target field {key!r} is not implemented")
        elif not re.fullmatch(value, wanted[key]):
            return False
    return True


def _apply_patch(docs: list[Doc], patch: Doc, kfile: Path) -> None:
    if "target" not in patch or len(set(patch) & {"patch", "path"}) != 1 or len(patch) != 2:
        raise KustomizeError(f"{kfile}: only patches with a target and one of patch/path are implemented")
    text = patch["patch"] if "patch" in patch else (kfile.parent / patch["path"]).read_text()
    body = yaml.safe_load(text)
    hits = [doc for doc in docs if _matches(doc, patch["target"])]
    if not hits:
        raise KustomizeError(f"{kfile}: patch target {patch['target']} matches nothing")
    for doc in hits:
        if isinstance(body, list):
            for op in body:
                json_patch(doc, op)
        elif isinstance(body, dict):
            # With a target, kustomize ignores the patch's own kind and name.
            smp = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")}
            strategic_merge(doc, smp)
        else:
            raise KustomizeError(f"{kfile}: a patch is a JSON 6902 list or a strategic merge map")


def strategic_merge(dst: Doc, patch: Doc) -> None:
    """Merge `patch` into `dst` in place: maps recursively, lists of named maps by name (new
    items first, as kustomize orders them), anything else replaced."""
    for key, value in patch.items():
        old = dst.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            strategic_merge(old, value)
        elif isinstance(old, list) and isinstance(value, list) and _named(old) and _named(value):
            by_name = {item["name"]: item for item in old}
            new = []
            for item in value:
                if item["name"] in by_name:
                    strategic_merge(by_name[item["name"]], item)
                else:
                    new.append(copy.deepcopy(item))
            dst[key] = [*new, *old]
        else:
            dst[key] = copy.deepcopy(value)


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)


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
