# syntax=docker/dockerfile:1.7
# ai-security-sidecar image: a wheel built in a builder stage, installed into a slim runtime
# stage that holds no compiler, no package cache and no pip. Build with `make image`.
#
#   docker build -t ai-security-sidecar:dev .
#   docker run --rm -p 9090:9090 -e SIDECAR_LISTEN=0.0.0.0:8080 -p 8080:8080 ai-security-sidecar:dev
#
# Pin PYTHON_IMAGE by digest in production (python:3.11-slim-bookworm@sha256:...) so a rebuild
# is reproducible and a base-image change is a reviewed commit.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: wheels for the sidecar and every dependency ---------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Every dependency ships manylinux wheels for CPython 3.11 (amd64 and arm64), so no compiler is
# needed even here. On a platform without wheels, add
#   RUN apt-get update && apt-get install -y --no-install-recommends build-essential
# to this stage only; the runtime stage never sees it.
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip wheel --prefer-binary --wheel-dir /wheels .

# ---- runtime: the wheels installed, a fixed non-root user, nothing else --------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG SIDECAR_UID=10001
LABEL org.opencontainers.image.title="ai-security-sidecar" \
      org.opencontainers.image.description="Security sidecar for OpenAI-compatible LLM traffic" \
      org.opencontainers.image.licenses="Apache-2.0"
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in Kubernetes; the bytecode is
# compiled at install time instead.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN groupadd --system --gid ${SIDECAR_UID} sidecar \
 && useradd --system --uid ${SIDECAR_UID} --gid ${SIDECAR_UID} --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin sidecar
# The wheels are bind-mounted, not copied: they never become a layer of the image. pip,
# setuptools and wheel are removed afterwards: nothing installs packages at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels ai-security-sidecar \
 && pip uninstall --yes pip setuptools wheel \
 && sidecar check-config > /dev/null
USER ${SIDECAR_UID}:${SIDECAR_UID}
# 8080: proxy (listens on 127.0.0.1 unless SIDECAR_LISTEN says otherwise);
# 9090: /metrics, /healthz, /readyz. The admin API (9091) stays on loopback and is not exposed.
EXPOSE 8080 9090
# curl is not in the image: python's urllib asks /healthz on the metrics listener's port.
# Kubernetes ignores HEALTHCHECK and uses the pod's probes instead (deploy/k8s).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SIDECAR_METRICS_LISTEN', '0.0.0.0:9090').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
# The sidecar handles SIGTERM itself (readiness 503, drain for shutdown_grace_s, exit 0) and
# reaps its own worker processes, so it runs as PID 1 without an init shim.
ENTRYPOINT ["sidecar", "serve"]
