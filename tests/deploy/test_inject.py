"""`sidecar inject` over real-world manifest shapes: every output validates, every pod gets the
same sidecar as deploy/k8s, the app talks to it, and a second run changes nothing."""

from __future__ import annotations

import copy
import io
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.__main__ import main
from sidecar.inject import InjectError, InjectOptions, Report, inject_documents, pod_templates
from tests.deploy.common import BASE, validate
from tests.deploy.kustomize import load_docs

Doc = dict[str, Any]
MANIFESTS = Path(__file__).parent / "manifests"
SHAPES = sorted(MANIFESTS.glob("*.yaml"))
SIDECAR = "ai-sidecar"


def _run(argv: list[str], stdin: str = "", monkeypatch: pytest.MonkeyPatch | None = None
         ) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    mp = monkeypatch or pytest.MonkeyPatch()
    mp.setattr(sys, "stdin", io.StringIO(stdin))
    mp.setattr(sys, "stdout", out)
    mp.setattr(sys, "stderr", err)
    try:
        status = main(["inject", *argv])
    finally:
        if monkeypatch is None:
            mp.undo()
    return status, out.getvalue(), err.getvalue()


def _inject_file(path: Path) -> list[Doc]:
    status, out, err = _run([str(path)])
    assert status == 0, err
    return [d for d in yaml.safe_load_all(out) if d]


def _pods(docs: list[Doc]) -> list[tuple[str, Doc]]:
    return [pair for doc in docs for pair in pod_templates(doc)]


def _base_sidecar() -> Doc:
    deployment = next(d for d in load_docs(BASE / "deployment.yaml") if d["kind"] == "Deployment")
    return next(c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == SIDECAR)


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("path", SHAPES, ids=lambda p: p.name)
def test_every_shape_is_injected_and_validates(path: Path) -> None:
    """Each pod template of each shape gets the sidecar first among its init containers; every
    output document passes strict Kubernetes schema validation (1.29 and latest)."""
    before = load_docs(path)
    after = _inject_file(path)
    assert len(after) == len(before)
    pods = _pods(after)
    assert len(pods) == len(_pods(before)) >= 1
    for doc in after:
        validate(doc)
    for _, pod in pods:
        spec = pod["spec"]
        assert spec["initContainers"][0]["name"] == SIDECAR
        assert spec["initContainers"][0]["restartPolicy"] == "Always"
        assert {"sidecar-config", "sidecar-tmp"} <= {v["name"] for v in spec["volumes"]}
        assert pod["metadata"]["labels"]["ai-security-sidecar/redis-client"] == "true"
        assert spec.get("terminationGracePeriodSeconds", 30) >= 40


@pytest.mark.parametrize("path", SHAPES, ids=lambda p: p.name)
def test_the_injected_sidecar_is_the_one_deploy_k8s_ships(path: Path) -> None:
    """The container inject adds equals deploy/k8s/base's sidecar (probes, security context,
    config and secret references), apart from the image an overlay sets."""
    expected = _base_sidecar()
    for _, pod in _pods(_inject_file(path)):
        injected = copy.deepcopy(pod["spec"]["initContainers"][0])
        assert injected.pop("image") == InjectOptions().image
        assert injected == {k: v for k, v in expected.items() if k != "image"}


@pytest.mark.parametrize("path", SHAPES, ids=lambda p: p.name)
def test_every_app_container_calls_the_sidecar_with_its_sidecar_key(path: Path) -> None:
    """Every app container's provider base URL points at the sidecar on loopback, and its API
    key comes from the sidecar key in the Secret, never the provider key it had."""
    for _, pod in _pods(_inject_file(path)):
        for container in pod["spec"]["containers"]:
            env = _env(container)
            urls = [env[v]["value"] for v in ("OPENAI_BASE_URL", "OPENAI_API_BASE") if v in env]
            assert urls and all(u == "http://127.0.0.1:8080/v1" for u in urls)
            assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {
                "name": "ai-sidecar-secrets", "key": "app-api-key"}


def test_existing_fields_survive() -> None:
    """What the app had stays: other env, init containers after the sidecar and in order,
    volumes, a longer grace period, the untouched Service, volumeClaimTemplates."""
    web = _inject_file(MANIFESTS / "web-deployment.yaml")
    assert web[1] == load_docs(MANIFESTS / "web-deployment.yaml")[1]  # the Service
    container = web[0]["spec"]["template"]["spec"]["containers"][0]
    assert _env(container)["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "info"}
    assert [e["name"] for e in container["env"]] == ["OPENAI_BASE_URL", "OPENAI_API_KEY", "LOG_LEVEL"]
    agent = _inject_file(MANIFESTS / "with-init-containers.yaml")[0]["spec"]["template"]["spec"]
    assert [c["name"] for c in agent["initContainers"]] == [SIDECAR, "migrate", "warm-cache"]
    assert [v["name"] for v in agent["volumes"]] == ["cache", "sidecar-config", "sidecar-tmp"]
    rag = _inject_file(MANIFESTS / "rag-statefulset.yaml")[0]
    assert rag["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    assert rag["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


@pytest.mark.parametrize("path", [*SHAPES, BASE / "deployment.yaml"], ids=lambda p: p.name)
def test_injecting_twice_changes_nothing(path: Path, tmp_path: Path) -> None:
    """Output fed back in comes out identical, byte for byte; the shipped example Deployment,
    injected by hand, is left exactly as it is."""
    status, once, _ = _run([str(path)])
    assert status == 0
    again = tmp_path / "again.yaml"
    again.write_text(once)
    status, twice, err = _run([str(again)])
    assert status == 0 and twice == once
    assert "already has ai-sidecar, unchanged" in err
    if path.parent == BASE:
        assert once == "---\n" + path.read_text()  # comments and all


def test_untouched_documents_come_back_byte_for_byte(tmp_path: Path) -> None:
    """A stream with a header comment, a commented Service and a Deployment: everything but the
    Deployment is written back exactly as it was; the Deployment is injected."""
    service = ("# The public face of chat-web.\napiVersion: v1\nkind: Service\nmetadata:\n"
               "  name: chat-web  # keep this comment\nspec:\n  ports: [{port: 80}]\n")
    deployment = (MANIFESTS / "with-init-containers.yaml").read_text()
    path = tmp_path / "stream.yaml"
    path.write_text("# rendered by hand\n---\n" + service + "--- # the workload\n" + deployment)
    status, out, _ = _run([str(path)])
    assert status == 0
    assert out.startswith("---\n# rendered by hand\n---\n" + service + "---\n")
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs] == ["Service", "Deployment"]
    assert docs[1]["spec"]["template"]["spec"]["initContainers"][0]["name"] == SIDECAR


def test_streams_that_cannot_be_split_safely_are_still_injected(tmp_path: Path) -> None:
    """Document-end markers and directives: the documents are re-written from their values
    (nothing lost but comments), still injected and valid."""
    path = tmp_path / "directives.yaml"
    path.write_text("%YAML 1.2\n---\n" + (MANIFESTS / "batch-job.yaml").read_text() + "...\n")
    status, out, _ = _run([str(path)])
    assert status == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert len(docs) == 1 and docs[0]["spec"]["template"]["spec"]["initContainers"][0]["name"] == SIDECAR
    validate(docs[0])


def test_reads_stdin_and_several_files_as_one_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """No file (or '-') reads stdin; several files become one multi-document stream."""
    job = (MANIFESTS / "batch-job.yaml").read_text()
    status, out, err = _run([], stdin=job, monkeypatch=monkeypatch)
    assert status == 0
    assert "job/nightly-summaries: injected" in err
    status, out, _ = _run([str(MANIFESTS / "eval-cronjob.yaml"), "-"], stdin=job, monkeypatch=monkeypatch)
    assert status == 0
    assert [d["kind"] for d in yaml.safe_load_all(out) if d] == ["CronJob", "Job"]


def test_port_clash_is_refused_with_a_way_out(tmp_path: Path) -> None:
    """An app that declares port 8080 gets a clear error naming the pod, container and port;
    --proxy-port moves the sidecar and the app's base URL with it."""
    docs = load_docs(MANIFESTS / "web-deployment.yaml")
    docs[0]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 8080
    path = tmp_path / "clash.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    status, out, err = _run([str(path)])
    assert status == 2 and out == ""
    assert "deployment/chat-web: container 'web' uses port 8080" in err and "--proxy-port" in err
    status, out, err = _run(["--proxy-port", "18080", str(path)])
    assert status == 0, err
    pod = next(iter(_pods([d for d in yaml.safe_load_all(out) if d])))[1]
    assert _env(pod["spec"]["initContainers"][0])["SIDECAR_LISTEN"]["value"] == "127.0.0.1:18080"
    assert _env(pod["spec"]["containers"][0])["OPENAI_BASE_URL"]["value"] == "http://127.0.0.1:18080/v1"
    for doc in yaml.safe_load_all(out):
        validate(doc)


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    """Broken YAML, a missing file and a pod without containers each exit 2 with a message
    naming the place, and print no half-written output."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nspec: [unclosed\n")
    status, out, err = _run([str(bad)])
    assert (status, out) == (2, "") and f"{bad}: not valid YAML (line" in err
    status, out, err = _run([str(tmp_path / "missing.yaml")])
    assert (status, out) == (2, "") and "missing.yaml: cannot read" in err
    with pytest.raises(InjectError, match="pod/empty: the pod template has no containers"):
        inject_documents([{"kind": "Pod", "metadata": {"name": "empty"}, "spec": {"containers": []}}],
                         InjectOptions(), Report())


def test_documents_without_pods_pass_through_and_input_is_not_mutated() -> None:
    """ConfigMaps, Services and Lists of them come back equal; the caller's objects are untouched."""
    docs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}},
            {"apiVersion": "v1", "kind": "List", "items": load_docs(MANIFESTS / "batch-job.yaml")}]
    snapshot = copy.deepcopy(docs)
    out = inject_documents(docs, InjectOptions(), Report())
    assert docs == snapshot
    assert out[0] == docs[0]
    assert out[1]["items"][0]["spec"]["template"]["spec"]["initContainers"][0]["name"] == SIDECAR
