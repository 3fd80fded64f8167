"""`sidecar inject`: add the sidecar to every pod template of Kubernetes manifests.

Platform teams adopt a sidecar by running one command over the manifests they already have,
not by hand-merging a hundred lines of YAML. The container added here is the one in
deploy/k8s/base/deployment.yaml (tests hold the two equal): a native sidecar (an init
container with `restartPolicy: Always`, Kubernetes >= 1.29) with its three probes, a hardened
security context, the config and secret references; the app's containers get their provider
base URL pointed at the sidecar on loopback and their provider key replaced by their sidecar
key, so the app never holds the provider key. A pod that already has the sidecar is left
exactly as it is, so running inject twice changes nothing.

Pure functions over parsed documents; only `run_inject` reads files and writes stdout.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sidecar import __version__

Doc = dict[str, Any]

SIDECAR_NAME = "ai-sidecar"
REDIS_CLIENT_LABEL = "ai-security-sidecar/redis-client"
#: Enough for the app's own drain plus the sidecar's shutdown_grace_s (25 s in the shipped config).
MIN_TERMINATION_GRACE_S = 40
#: Kinds whose pod template lives at spec.template.
TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
                            "ReplicationController"})
#: Variables OpenAI-compatible SDKs read their base URL from; each one an app container already
#: sets is rewritten, and the first is added where none is set.
BASE_URL_VARIABLES = ("OPENAI_BASE_URL", "OPENAI_API_BASE")
#: Where the container's small in-memory emptyDir is mounted: a path inside the pod, not a
#: temporary file on the machine running inject.
TMP_MOUNT = "/tmp"  # noqa: S108  # nosec B108


class InjectError(Exception):
    """A manifest cannot be injected as asked (bad YAML, a port clash); the message says which."""


@dataclasses.dataclass(frozen=True, slots=True)
class InjectOptions:
    """What the injected sidecar looks like; the defaults match deploy/k8s."""

    image: str = f"ai-security-sidecar:{__version__}"
    config_map: str = "sidecar-config"
    env_config_map: str = "sidecar-env"
    secret_name: str = "ai-sidecar-secrets"  # noqa: S105 - a Secret object's name, not a secret
    proxy_port: int = 8080
    metrics_port: int = 9090
    app_key_variable: str = "OPENAI_API_KEY"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/v1"


@dataclasses.dataclass(slots=True)
class Report:
    """One line per pod template: what inject did to it (written to stderr by the CLI)."""

    lines: list[str] = dataclasses.field(default_factory=list)


def sidecar_container(options: InjectOptions) -> Doc:
    """The sidecar container, as in deploy/k8s/base/deployment.yaml."""
    env: list[Doc] = [{"name": "SIDECAR_CONFIG", "value": "/etc/sidecar/sidecar.toml"}]
    if options.proxy_port != 8080:
        env.append({"name": "SIDECAR_LISTEN", "value": f"127.0.0.1:{options.proxy_port}"})
    if options.metrics_port != 9090:
        env.append({"name": "SIDECAR_METRICS_LISTEN", "value": f"0.0.0.0:{options.metrics_port}"})
    env += [
        {"name": "PROVIDER_API_KEY",
         "valueFrom": {"secretKeyRef": {"name": options.secret_name, "key": "provider-api-key"}}},
        {"name": "SIDECAR_ADMIN_TOKEN",
         "valueFrom": {"secretKeyRef": {"name": options.secret_name, "key": "admin-token",
                                        "optional": True}}},
    ]
    probe_target = {"path": "/healthz", "port": "sidecar-metrics"}
    return {
        "name": SIDECAR_NAME,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "env": env,
        "envFrom": [{"configMapRef": {"name": options.env_config_map}}],
        "ports": [{"name": "sidecar-metrics", "containerPort": options.metrics_port, "protocol": "TCP"}],
        "startupProbe": {"httpGet": dict(probe_target), "periodSeconds": 1, "timeoutSeconds": 2,
                         "failureThreshold": 30},
        "livenessProbe": {"httpGet": dict(probe_target), "periodSeconds": 10, "timeoutSeconds": 2,
                          "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "sidecar-metrics"},
                           "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "privileged": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "sidecar-config", "mountPath": "/etc/sidecar", "readOnly": True},
                         {"name": "sidecar-tmp", "mountPath": TMP_MOUNT}],
    }


def sidecar_volumes(options: InjectOptions) -> list[Doc]:
    """The two volumes the sidecar mounts: its TOML config and a small in-memory /tmp."""
    return [
        {"name": "sidecar-config", "configMap": {"name": options.config_map, "items": [
            {"key": "sidecar.toml", "path": "sidecar.toml"}]}},
        {"name": "sidecar-tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]


def pod_templates(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """(where, pod template) for every pod a document describes; a Pod is its own template."""
    kind = doc.get("kind")
    spec = doc.get("spec")
    if kind == "List":
        for item in doc.get("items") or []:
            if isinstance(item, dict):
                yield from pod_templates(item)
        return
    if not isinstance(spec, dict):
        return
    name = f"{str(kind).lower()}/{(doc.get('metadata') or {}).get('name', '?')}"
    if kind == "Pod":
        yield name, doc
    elif kind in TEMPLATE_KINDS and isinstance(spec.get("template"), dict):
        yield name, spec["template"]
    elif kind == "CronJob":
        job = spec.get("jobTemplate")
        if isinstance(job, dict) and isinstance(job.get("spec"), dict) \
                and isinstance(job["spec"].get("template"), dict):
            yield name, job["spec"]["template"]


def _has_sidecar(pod: Doc) -> bool:
    spec = pod.get("spec") or {}
    return any(c.get("name") == SIDECAR_NAME
               for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])])


def _check_ports(where: str, pod: Doc, options: InjectOptions) -> None:
    spec = pod["spec"]
    ours = {options.proxy_port, options.metrics_port, 9091}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for port in container.get("ports") or []:
            if port.get("containerPort") in ours:
                raise InjectError(
                    f"{where}: container {container.get('name')!r} uses port {port['containerPort']}, "
                    f"which the sidecar needs (proxy {options.proxy_port}, metrics "
                    f"{options.metrics_port}, admin 9091); choose others with --proxy-port / "
                    "--metrics-port")


def _set_env(container: Doc, name: str, entry: Doc) -> None:
    env = container.setdefault("env", [])
    for i, existing in enumerate(env):
        if existing.get("name") == name:
            env[i] = entry
            return
    env.append(entry)


def _point_app_at_sidecar(container: Doc, options: InjectOptions) -> None:
    names = {e.get("name") for e in container.get("env") or []}
    wanted = [v for v in BASE_URL_VARIABLES if v in names] or [BASE_URL_VARIABLES[0]]
    for variable in wanted:
        _set_env(container, variable, {"name": variable, "value": options.base_url})
    _set_env(container, options.app_key_variable, {
        "name": options.app_key_variable,
        "valueFrom": {"secretKeyRef": {"name": options.secret_name, "key": "app-api-key"}}})


def inject_pod(where: str, pod: Doc, options: InjectOptions, report: Report) -> None:
    """Add the sidecar to one pod template in place; a pod that has it already is untouched."""
    if _has_sidecar(pod):
        report.lines.append(f"{where}: already has {SIDECAR_NAME}, unchanged")
        return
    spec = pod.get("spec")
    if not isinstance(spec, dict) or not spec.get("containers"):
        raise InjectError(f"{where}: the pod template has no containers")
    _check_ports(where, pod, options)
    labels = pod.setdefault("metadata", {}).setdefault("labels", {})
    labels[REDIS_CLIENT_LABEL] = "true"
    # First among the init containers: init containers after it may already call the model.
    spec["initContainers"] = [sidecar_container(options), *(spec.get("initContainers") or [])]
    volumes = spec.setdefault("volumes", [])
    taken = {v.get("name") for v in volumes}
    for volume in sidecar_volumes(options):
        if volume["name"] in taken:
            raise InjectError(f"{where}: a volume named {volume['name']!r} exists already")
        volumes.append(volume)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < MIN_TERMINATION_GRACE_S:
        spec["terminationGracePeriodSeconds"] = MIN_TERMINATION_GRACE_S
    for container in spec["containers"]:
        _point_app_at_sidecar(container, options)
    apps = ", ".join(str(c.get("name")) for c in spec["containers"])
    report.lines.append(f"{where}: injected; container(s) {apps} now call {options.base_url} with "
                        f"{options.app_key_variable} from secret {options.secret_name}/app-api-key")


def inject_documents(docs: list[Any], options: InjectOptions, report: Report) -> list[Any]:
    """Copies of `docs` with the sidecar in every pod template; other documents unchanged."""
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        if isinstance(doc, dict):
            for where, pod in pod_templates(doc):
                inject_pod(where, pod, options, report)
        out.append(doc)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """One document of a stream: its text as written (None when the stream could not be split
    safely) and its parsed value (None for a document of comments only)."""

    text: str | None
    value: Any


_MARKER = re.compile(r"^---[ \t]*(#.*)?$")


def load_stream(text: str, source: str) -> list[Document]:
    """The documents of a multi-document YAML stream, each with its own text, so documents
    inject leaves alone are written back exactly as they were, comments and all."""
    import yaml  # only `sidecar inject` needs it; `sidecar serve` does not pay the import

    try:
        values = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InjectError(f"{source}: not valid YAML{where}") from None
    chunks: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if _MARKER.match(line.rstrip("\r\n")):
            chunks.append([])
        else:
            chunks[-1].append(line)
    documents: list[Document] = []
    try:
        for lines in chunks:
            body = "".join(lines)
            parsed = [doc for doc in yaml.safe_load_all(body) if doc is not None]
            if len(parsed) > 1 or any(line.startswith(("...", "%")) for line in lines):
                raise ValueError("not a plain document")
            if parsed or body.strip():
                documents.append(Document(body if body.endswith("\n") else body + "\n",
                                          parsed[0] if parsed else None))
    except (yaml.YAMLError, ValueError):
        documents = []
    if [d.value for d in documents if d.value is not None] != values:
        # Directives, document-end markers or a marker inside a block scalar: keep the values.
        documents = [Document(None, value) for value in values]
    return documents


def dump_stream(documents: list[Document], injected: list[Any]) -> str:
    """The stream again: untouched documents as they were written, injected ones re-written
    (keys in their original order; their comments are lost)."""
    import yaml

    out = []
    for document, value in zip(documents, injected, strict=True):
        if document.text is not None and value == document.value:
            out.append("---\n" + document.text)
        else:
            out.append("---\n" + yaml.safe_dump(value, sort_keys=False, default_flow_style=False))
    return "".join(out)


def add_inject_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    defaults = InjectOptions()
    p = sub.add_parser("inject", help="add the sidecar to every pod template of Kubernetes manifests",
                       description="Read manifests (files, or stdin when none or '-') and write them "
                                   "to stdout with the sidecar added to every pod template. Pods "
                                   "that have it already, and every other document, are written "
                                   "back exactly as they were; injected documents lose their "
                                   "comments.")
    p.add_argument("files", nargs="*", help="manifest files; '-' or none reads stdin")
    p.add_argument("--image", default=defaults.image, help="sidecar image (default %(default)s)")
    p.add_argument("--config-map", default=defaults.config_map,
                   help="ConfigMap holding sidecar.toml (default %(default)s)")
    p.add_argument("--env-config-map", default=defaults.env_config_map,
                   help="ConfigMap of SIDECAR_* variables (default %(default)s)")
    p.add_argument("--secret", default=defaults.secret_name,
                   help="Secret with provider-api-key, app-api-key, admin-token (default %(default)s)")
    p.add_argument("--proxy-port", type=int, default=defaults.proxy_port,
                   help="loopback port of the proxy (default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=defaults.metrics_port,
                   help="port of /metrics and the probes (default %(default)s)")
    p.add_argument("--app-key-variable", default=defaults.app_key_variable,
                   help="variable the app reads its API key from (default %(default)s)")
    p.set_defaults(func=func)


def run_inject(args: argparse.Namespace) -> int:
    options = InjectOptions(image=args.image, config_map=args.config_map,
                            env_config_map=args.env_config_map, secret_name=args.secret,
                            proxy_port=args.proxy_port, metrics_port=args.metrics_port,
                            app_key_variable=args.app_key_variable)
    report = Report()
    try:
        documents: list[Document] = []
        for name in args.files or ["-"]:
            if name == "-":
                documents += load_stream(sys.stdin.read(), "<stdin>")
            else:
                try:
                    text = Path(name).read_text(encoding="utf-8")
                except OSError as exc:
                    raise InjectError(f"{name}: cannot read ({exc.strerror})") from None
                documents += load_stream(text, name)
        out = inject_documents([d.value for d in documents], options, report)
    except InjectError as exc:
        sys.stderr.write(f"sidecar inject: {exc}\n")
        return 2
    sys.stdout.write(dump_stream(documents, out))
    for line in report.lines:
        sys.stderr.write(f"sidecar inject: {line}\n")
    return 0
