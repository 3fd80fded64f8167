"""The Kubernetes manifests: schema-valid offline, composable, consistent and hardened."""

from __future__ import annotations

import copy
import dataclasses
import re
import secrets
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from sidecar.auth.keyformat import KEY_REGEX
from sidecar.serve import split_listen
from sidecar.settings import Settings, env_name_of, load_settings
from tests.deploy.common import BASE, DEPLOY, K8S, OVERLAY, ROOT, validate
from tests.deploy.kustomize import KustomizeError, build, containers, load_docs, pod_spec

Doc = dict[str, Any]

KUSTOMIZE_DIRS = {p.parent: yaml.safe_load(p.read_text()) for p in sorted(K8S.rglob("kustomization.yaml"))}
# Components render only inside a kustomization that names them (tests/deploy/test_component.py).
KUSTOMIZATIONS = [d for d, k in KUSTOMIZE_DIRS.items() if k.get("kind", "Kustomization") == "Kustomization"]
# Strategic merge patches are partial objects: they validate once applied, not on their own.
PATCH_FILES = {(d / p["path"]).resolve() for d, k in KUSTOMIZE_DIRS.items()
               for p in k.get("patches", []) if "path" in p}
MANIFEST_FILES = sorted(p for p in K8S.rglob("*.yaml")
                        if p.name != "kustomization.yaml" and p.resolve() not in PATCH_FILES)
SIDECAR = "ai-sidecar"


def _docs_of_files() -> list[tuple[str, int, Doc]]:
    return [(str(p.relative_to(ROOT)), i, doc) for p in MANIFEST_FILES
            for i, doc in enumerate(load_docs(p))]


@pytest.fixture(scope="module")
def overlay() -> list[Doc]:
    return build(OVERLAY)


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _app(docs: list[Doc]) -> Doc:
    return _one(docs, "Deployment", "example-app")


def _sidecar(deployment: Doc) -> Doc:
    spec = pod_spec(deployment)
    assert spec is not None
    return next(c for c in spec["initContainers"] if c["name"] == SIDECAR)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize(("path", "index", "doc"), _docs_of_files(),
                         ids=[f"{p}#{i}" for p, i, _ in _docs_of_files()])
def test_every_manifest_validates_offline(path: str, index: int, doc: Doc) -> None:
    """Each document under deploy/k8s passes strict schema validation (unknown fields fail)."""
    validate(doc)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_kustomization_renders_and_its_output_validates(directory: Path) -> None:
    """Each kustomization composes (all resources exist, patches apply) and every rendered
    resource validates."""
    docs = build(directory)
    assert docs
    for doc in docs:
        validate(doc)


def test_every_manifest_file_is_used_by_a_kustomization() -> None:
    """No YAML file under deploy/k8s is left out of every kustomization (a forgotten file)."""
    used: set[Path] = set()
    for directory, k in KUSTOMIZE_DIRS.items():
        used.update((directory / r).resolve() for r in k.get("resources", []))
    assert [p for p in MANIFEST_FILES if p.resolve() not in used] == []


def test_strict_validation_rejects_a_misspelt_field(overlay: list[Doc]) -> None:
    """The validators are not vacuous: a misspelt container field and a CRD typo both fail."""
    bad = copy.deepcopy(_app(overlay))
    _sidecar(bad)["restartpolicy"] = "Always"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    monitor = copy.deepcopy(_one(overlay, "ServiceMonitor", "ai-security-sidecar"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def test_composer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    """A kustomization field the test composer does not implement is an error, not ignored."""
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        build(tmp_path)


def test_overlay_sets_namespace_images_labels_and_patches(overlay: list[Doc]) -> None:
    """The example overlay puts everything in its namespace, pins both images, labels every
    resource and applies its replica patches."""
    for doc in overlay:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "llm-example", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["environment"] == "example"
    images = {c["name"]: c["image"] for d in overlay for c in containers(d)}
    assert images[SIDECAR] == "ghcr.io/your-org/ai-security-sidecar:0.1.0"
    assert images["app"] == "ghcr.io/your-org/example-llm-app:1.0.0"
    assert _app(overlay)["spec"]["replicas"] == 3
    assert _one(overlay, "HorizontalPodAutoscaler", "example-app")["spec"]["minReplicas"] == 3


def test_sidecar_is_a_native_sidecar_with_all_three_probes(overlay: list[Doc]) -> None:
    """The sidecar is an init container with restartPolicy Always, started-probed and
    live-probed on /healthz and ready-probed on /readyz, all on its metrics port."""
    sidecar = _sidecar(_app(overlay))
    assert sidecar["restartPolicy"] == "Always"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    probes = {name: sidecar[name]["httpGet"] for name in ("startupProbe", "livenessProbe",
                                                          "readinessProbe")}
    assert {n: p["path"] for n, p in probes.items()} == {
        "startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert {ports[p["port"]] for p in probes.values()} == {9090}


def _sidecar_settings(docs: list[Doc], tmp_path: Path) -> tuple[Settings, dict[str, str]]:
    """Load the sidecar's settings exactly as the pod would: the mounted TOML plus its env
    (ConfigMap values, literal values, and placeholders for secret references)."""
    deployment = _app(docs)
    sidecar = _sidecar(deployment)
    config = _one(docs, "ConfigMap", "sidecar-config")
    env: dict[str, str] = {}
    for source in sidecar.get("envFrom", []):
        env.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in sidecar["env"]:
        # A secret reference stands for an operator-made secret (the admin token must be strong).
        env[var["name"]] = var.get("value", "from-secret-" + secrets.token_urlsafe(32))
    mount = next(m for m in sidecar["volumeMounts"] if env["SIDECAR_CONFIG"].startswith(m["mountPath"]))
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])  # type: ignore[index]
    assert volume["configMap"]["name"] == "sidecar-config"
    file_name = env["SIDECAR_CONFIG"][len(mount["mountPath"]):].lstrip("/")
    (tmp_path / file_name).write_text(config["data"][file_name])
    env["SIDECAR_CONFIG"] = str(tmp_path / file_name)
    return load_settings(env=env), env


def test_sidecar_configuration_is_valid_and_matches_the_pod(overlay: list[Doc], tmp_path: Path) -> None:
    """The mounted sidecar.toml plus the pod's env load without error, the probes use the
    metrics listener's port, the proxy stays on loopback and the provider key variable comes
    from the Secret."""
    settings, _ = _sidecar_settings(overlay, tmp_path)
    sidecar = _sidecar(_app(overlay))
    assert split_listen(settings.metrics.listen)[1] == 9090 == sidecar["ports"][0]["containerPort"]
    assert split_listen(settings.listen)[0] == "127.0.0.1"
    assert split_listen(settings.admin.listen)[0] == "127.0.0.1"
    key_var = next(v for v in sidecar["env"] if v["name"] == settings.upstream.key_env)
    assert key_var["valueFrom"]["secretKeyRef"]["name"] == "ai-sidecar-secrets"
    app = next(c for c in pod_spec(_app(overlay))["containers"] if c["name"] == "app")  # type: ignore[index]
    assert settings.upstream.key_env not in {v["name"] for v in app.get("env", [])}
    base_url = next(v["value"] for v in app["env"] if v["name"] == "OPENAI_BASE_URL")
    assert urlsplit(base_url).port == split_listen(settings.listen)[1]


def test_termination_grace_exceeds_the_sidecar_shutdown_grace(overlay: list[Doc], tmp_path: Path) -> None:
    """terminationGracePeriodSeconds leaves the sidecar its whole shutdown_grace_s plus the
    app's preStop pause and a margin, so kubelet never SIGKILLs a draining sidecar."""
    settings, _ = _sidecar_settings(overlay, tmp_path)
    spec = pod_spec(_app(overlay))
    assert spec is not None
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    pause = int(pre_stop[-1]) if pre_stop[0] == "sleep" else 0
    assert spec["terminationGracePeriodSeconds"] >= settings.shutdown_grace_s + pause + 5


def _setting_env_names() -> set[str]:
    names = {"SIDECAR_CONFIG"}

    def walk(cls: type[Any], prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                names.add(env_name_of(prefix + f.name))

    walk(Settings, "")
    return names


def test_every_sidecar_variable_is_a_real_setting(overlay: list[Doc]) -> None:
    """Every SIDECAR_* variable set by the manifests names a real setting (the sidecar ignores
    unknown SIDECAR_* names, so a typo would be silently lost)."""
    known = _setting_env_names()
    names = [k for d in overlay if d["kind"] == "ConfigMap" for k in d.get("data", {})
             if k.startswith("SIDECAR_")]
    names += [v["name"] for d in overlay for c in containers(d) for v in c.get("env", [])
              if v["name"].startswith("SIDECAR_")]
    assert names and [n for n in names if n not in known] == []


def test_references_resolve(overlay: list[Doc]) -> None:
    """Every ConfigMap, Secret and key a pod uses exists (or is optional), and the HPA and PDB
    point at the Deployment's pods."""
    for doc in overlay:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for container in containers(doc):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef") or \
                    var.get("valueFrom", {}).get("configMapKeyRef")
                if ref and not ref.get("optional", False):
                    kind = "Secret" if "secretKeyRef" in var["valueFrom"] else "ConfigMap"
                    target = _one(overlay, kind, ref["name"])
                    assert ref["key"] in {**target.get("data", {}), **target.get("stringData", {})}
            for source in container.get("envFrom", []):
                _one(overlay, "ConfigMap", source["configMapRef"]["name"])
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                config = _one(overlay, "ConfigMap", volume["configMap"]["name"])
                assert {i["key"] for i in volume["configMap"].get("items", [])} <= set(config["data"])
    pods = _app(overlay)["spec"]["template"]["metadata"]["labels"]
    hpa = _one(overlay, "HorizontalPodAutoscaler", "example-app")["spec"]["scaleTargetRef"]
    _one(overlay, hpa["kind"], hpa["name"])
    pdb = _one(overlay, "PodDisruptionBudget", "example-app")["spec"]
    assert _selects(pdb["selector"]["matchLabels"], pods)
    assert _selects(_app(overlay)["spec"]["selector"]["matchLabels"], pods)


def test_metrics_are_scrapable_through_service_and_servicemonitor(overlay: list[Doc]) -> None:
    """The ServiceMonitor selects the app's Service, whose named metrics port targets the
    sidecar's container port."""
    monitor = _one(overlay, "ServiceMonitor", "ai-security-sidecar")["spec"]
    services = [d for d in overlay if d["kind"] == "Service"
                and _selects(monitor["selector"]["matchLabels"], d["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in services] == ["example-app"]
    service = services[0]["spec"]
    port = next(p for p in service["ports"] if p["name"] == monitor["endpoints"][0]["port"])
    pods = _app(overlay)["spec"]["template"]["metadata"]["labels"]
    assert _selects(service["selector"], pods)
    container_ports = {p["name"] for c in containers(_app(overlay)) for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["ports"]} <= container_ports
    assert port["targetPort"] == "sidecar-metrics"


def test_network_policies_allow_exactly_the_needed_paths(overlay: list[Doc]) -> None:
    """The app's policy admits the metrics port only from the monitoring namespace and lets the
    pod reach DNS, Redis and public 443 (never metadata or private ranges); Redis admits the
    sidecar pods and nothing else."""
    pods = _app(overlay)["spec"]["template"]["metadata"]["labels"]
    redis_pods = _one(overlay, "StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    app_policy = _one(overlay, "NetworkPolicy", "example-app")["spec"]
    assert _selects(app_policy["podSelector"]["matchLabels"], pods)
    assert set(app_policy["policyTypes"]) == {"Ingress", "Egress"}
    metrics_rule = next(r for r in app_policy["ingress"]
                        if any(p["port"] == "sidecar-metrics" for p in r["ports"]))
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]
    egress_ports = sorted((p["port"], p["protocol"]) for r in app_policy["egress"] for p in r["ports"])
    assert egress_ports == [(53, "TCP"), (53, "UDP"), (443, "TCP"), (6379, "TCP")]
    redis_rule = next(r for r in app_policy["egress"] if r["ports"][0]["port"] == 6379)
    assert _selects(redis_rule["to"][0]["podSelector"]["matchLabels"], redis_pods)
    public = next(r for r in app_policy["egress"] if r["ports"][0]["port"] == 443)["to"][0]["ipBlock"]
    assert public["cidr"] == "0.0.0.0/0"
    assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(public["except"])
    redis_policy = _one(overlay, "NetworkPolicy", "redis")["spec"]
    assert _selects(redis_policy["podSelector"]["matchLabels"], redis_pods)
    allowed = redis_policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert _selects(allowed, pods) and not _selects(allowed, redis_pods)
    assert redis_policy["egress"] == []


def test_store_url_names_the_redis_service(overlay: list[Doc]) -> None:
    """SIDECAR_STORE_URL points at the overlay's Redis Service and port."""
    url = urlsplit(_one(overlay, "ConfigMap", "sidecar-env")["data"]["SIDECAR_STORE_URL"])
    service = _one(overlay, "Service", str(url.hostname))
    assert url.port in {p["port"] for p in service["spec"]["ports"]}


def test_redis_persists_with_aof_and_never_evicts(overlay: list[Doc]) -> None:
    """The development Redis runs with appendonly, everysec fsync and the noeviction policy on
    a persistent volume mounted at its data directory."""
    redis = _one(overlay, "StatefulSet", "redis")
    container = containers(redis)[0]
    args = container["args"]
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    claim = redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {"name": claim, "mountPath": options["--dir"]} in container["volumeMounts"]


def test_every_pod_and_container_is_hardened(overlay: list[Doc]) -> None:
    """Every container runs as non-root with a read-only root, no privilege escalation, no
    capabilities and the RuntimeDefault seccomp profile, with requests and a memory limit."""
    workloads = [d for d in overlay if pod_spec(d) is not None]
    assert len(workloads) == 2
    for doc in workloads:
        spec = pod_spec(doc)
        assert spec is not None
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(doc):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]


def test_sidecar_user_matches_the_image(overlay: list[Doc]) -> None:
    """The pod runs the sidecar as the fixed UID the Dockerfile creates."""
    uid = re.search(r"ARG SIDECAR_UID=(\d+)", (ROOT / "Dockerfile").read_text())
    assert uid is not None
    assert _sidecar(_app(overlay))["securityContext"]["runAsUser"] == int(uid.group(1))


SECRET_SHAPES = [KEY_REGEX, r"sk-[A-Za-z0-9_-]{20,}", r"AKIA[0-9A-Z]{16}", "PRIVATE" + " KEY-----"]


def test_no_real_looking_secret_in_deploy_files() -> None:
    """No file under deploy/ holds a provider key, sidecar key, AWS key or private key, and the
    example Secret's values are marked placeholders."""
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for shape in SECRET_SHAPES:
                assert not re.search(shape, text), f"{path}: looks like a secret ({shape})"
    secret = load_docs(OVERLAY / "secret.example.yaml")[0]
    assert secret["stringData"] and all(v.startswith("REPLACE-ME") for v in secret["stringData"].values())
    assert "admin-token" not in secret["stringData"]


def test_base_needs_no_overlay_to_render() -> None:
    """The base renders on its own (for overlays that bring their own Redis and Secret)."""
    kinds = sorted(d["kind"] for d in build(BASE))
    assert "Deployment" in kinds and "Secret" not in kinds and "StatefulSet" not in kinds
