"""The kustomize Component: it adds the same sidecar as deploy/k8s/base and `sidecar inject` to
the workloads that opt in, its PodMonitor scrapes exactly those pods, and the result validates."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.inject import InjectOptions, sidecar_container
from tests.deploy.common import BASE, K8S, validate
from tests.deploy.kustomize import KustomizeError, build, load_docs, pod_spec, strategic_merge

Doc = dict[str, Any]
COMPONENT = K8S / "components" / "sidecar"
EXAMPLE = K8S / "overlays" / "component-example"
INJECT_LABEL = "ai-security-sidecar/inject"


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    return build(EXAMPLE)


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if pod_spec(d) is not None]


def _template_labels(doc: Doc) -> dict[str, str]:
    template = doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" \
        else doc["spec"]["template"]
    labels: dict[str, str] = template.get("metadata", {}).get("labels", {})
    return labels


def _sidecars(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc)
    assert spec is not None
    return [c for c in spec.get("initContainers", []) if c["name"] == "ai-sidecar"]


def test_opted_in_workloads_get_the_shipped_sidecar_first(rendered: list[Doc]) -> None:
    """The Deployment and the CronJob labelled inject get one sidecar, first among their init
    containers, equal to `sidecar inject`'s (image set by the overlay); both validate."""
    opted = [d for d in _workloads(rendered) if d["metadata"].get("labels", {}).get(INJECT_LABEL) == "true"]
    assert sorted(d["kind"] for d in opted) == ["CronJob", "Deployment"]
    expected = sidecar_container(InjectOptions(image="ghcr.io/your-org/ai-security-sidecar:0.1.0"))
    for doc in opted:
        validate(doc)
        spec = pod_spec(doc)
        assert spec is not None
        assert spec["initContainers"][0] == expected
        assert len(_sidecars(doc)) == 1
        assert {"sidecar-config", "sidecar-tmp"} <= {v["name"] for v in spec["volumes"]}
    cron = next(d for d in opted if d["kind"] == "CronJob")
    assert [c["name"] for c in pod_spec(cron)["initContainers"]] == ["ai-sidecar", "fetch-dataset"]  # type: ignore[index]


def test_workloads_not_opted_in_are_untouched(rendered: list[Doc]) -> None:
    """The base's example-app (no inject label) keeps its own single sidecar and its labels."""
    app = next(d for d in rendered if d["metadata"]["name"] == "example-app" and d["kind"] == "Deployment")
    assert len(_sidecars(app)) == 1
    assert "ai-security-sidecar/pod-monitor" not in _template_labels(app)


def test_pod_monitor_scrapes_exactly_the_injected_pods(rendered: list[Doc]) -> None:
    """The PodMonitor selects the opted-in pods by a port they declare, and no pod that the
    ServiceMonitor already scrapes through its Service (so no series is scraped twice)."""
    monitor = next(d for d in rendered if d["kind"] == "PodMonitor")
    validate(monitor)
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [d for d in _workloads(rendered)
                if all(_template_labels(d).get(k) == v for k, v in selector.items())]
    assert sorted(d["metadata"]["name"] for d in selected) == ["nightly-eval", "summarizer"]
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    for doc in selected:
        assert port in {p["name"] for p in _sidecars(doc)[0]["ports"]}


def test_every_rendered_resource_validates(rendered: list[Doc]) -> None:
    """Strict schema validation of the whole rendering (Kubernetes 1.29 and latest, CRDs)."""
    for doc in rendered:
        validate(doc)


def test_applying_the_component_patch_twice_changes_nothing() -> None:
    """The patch merges by name: on a pod that has the sidecar (the base's example-app) it adds
    no second container and no second volume."""
    app = next(d for d in load_docs(BASE / "deployment.yaml") if d["kind"] == "Deployment")
    patch = yaml.safe_load((COMPONENT / "pod-template.yaml").read_text())
    patched = copy.deepcopy(app)
    strategic_merge(patched, {"spec": patch["spec"]})
    labels = patched["spec"]["template"]["metadata"]["labels"]
    assert labels.pop("ai-security-sidecar/pod-monitor") == "true"
    assert patched == app


def test_a_component_does_not_render_alone(tmp_path: Path) -> None:
    """The Component is only usable from a kustomization's `components:` (as kustomize insists)."""
    with pytest.raises(KustomizeError, match="expected a Kustomization"):
        build(COMPONENT)
