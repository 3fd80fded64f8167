"""Paths and validators shared by the deploy tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

from tests.deploy.crd_schemas import SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
DASHBOARD = DEPLOY / "grafana" / "sidecar-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "sidecar-alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "sidecar-alerts.test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
DOCKERFILE = ROOT / "Dockerfile"

# Native sidecars (restartPolicy on an init container) are on by default from 1.29.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())


def validate(doc: dict[str, Any]) -> None:
    """Validate one resource offline: Kubernetes kinds against the bundled OpenAPI schemas
    (strict: unknown fields fail), our Prometheus Operator CRDs against tests/deploy/crd_schemas.py."""
    schema = SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.validate(doc, schema)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
