"""JSON schemas for the three Prometheus Operator CRDs we ship (kubernetes-validate has none).

A strict subset of the monitoring.coreos.com/v1 CRD schemas: only the fields deploy/k8s uses
are allowed (additionalProperties false), with the operator's types and required fields, so a
misspelt or misplaced field fails here as `kubectl apply` would with server-side validation.
"""

from __future__ import annotations

from typing import Any

_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                   "namespace": {"type": "string"}, "labels": _LABELS, "annotations": _LABELS},
    "additionalProperties": False,
}


def _crd(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                       "metadata": _METADATA, "spec": spec},
        "additionalProperties": False,
    }


SERVICE_MONITOR = _crd("ServiceMonitor", {
    "type": "object",
    "required": ["selector", "endpoints"],
    "properties": {
        "selector": {"type": "object", "properties": {"matchLabels": _LABELS},
                     "additionalProperties": False},
        "namespaceSelector": {"type": "object"},
        "jobLabel": {"type": "string"},
        "endpoints": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["port"],
            "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                           "scheme": {"enum": ["http", "https"]}, "interval": _DURATION,
                           "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"}},
            "additionalProperties": False}},
    },
    "additionalProperties": False,
})

POD_MONITOR = _crd("PodMonitor", {
    "type": "object",
    "required": ["selector", "podMetricsEndpoints"],
    "properties": {
        "selector": {"type": "object", "properties": {"matchLabels": _LABELS},
                     "additionalProperties": False},
        "namespaceSelector": {"type": "object"},
        "jobLabel": {"type": "string"},
        "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["port"],
            "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                           "scheme": {"enum": ["http", "https"]}, "interval": _DURATION,
                           "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"}},
            "additionalProperties": False}},
    },
    "additionalProperties": False,
})

_RULE = {
    "type": "object",
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"type": "string", "minLength": 1},
        "for": _DURATION,
        "labels": _LABELS,
        "annotations": _LABELS,
    },
    "additionalProperties": False,
}

RULE_GROUPS = {
    "type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["name", "rules"],
        "properties": {"name": {"type": "string", "minLength": 1}, "interval": _DURATION,
                       "rules": {"type": "array", "minItems": 1, "items": _RULE}},
        "additionalProperties": False}}

PROMETHEUS_RULE = _crd("PrometheusRule", {
    "type": "object", "required": ["groups"], "properties": {"groups": RULE_GROUPS},
    "additionalProperties": False,
})

SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
           ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
           ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE}
