# syntax=docker/dockerfile:1.7
# ai-security-sidecar image: wheels resolved from the hash-checked lock in a builder stage,
# installed into a slim runtime stage that holds no compiler, no package cache and no pip.
# Build with `make image`.
#
#   docker build -t ai-security-sidecar:dev .
#   docker run --rm -p 9090:9090 -p 8080:8080 -e SIDECAR_LISTEN=0.0.0.0:8080 \
#       -e SIDECAR_STORE_URL=redis://redis.internal:6379/0 ai-security-sidecar:dev
#
# The image holds what production needs: requirements/base.lock, without the embedded
# memory:// store (fakeredis and the lupa Lua runtime). A sidecar's limits, keys and
# conversations are shared through Redis; a per-process memory store would give every pod its
# own limits, so the image refuses memory:// with a one-line error naming the fix. To try the
# image without Redis, build with --build-arg EXTRAS=memory.
#
# The base image is named by tag. To pin it by digest (reproducible rebuilds, base changes as
# reviewed commits), resolve the tag where a registry is reachable and commit the result:
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
#   ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<that digest>
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: wheels for the sidecar and every dependency ---------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Every dependency ships manylinux wheels for CPython 3.11 (amd64 and arm64), so no compiler is
# needed even here. On a platform without wheels, add
#   RUN apt-get update && apt-get install -y --no-install-recommends build-essential
# to this stage only; the runtime stage never sees it.
COPY requirements ./requirements
# The dependencies exactly as locked, each file checked against its hash; the build backend
# too, so the sidecar's own wheel is built by the locked hatchling, not whatever is newest.
RUN lock=requirements/base.lock; [ "$EXTRAS" = memory ] && lock=requirements/run.lock; \
    pip wheel --require-hashes --no-deps --wheel-dir /wheels -r "$lock" \
 && cp "$lock" /wheels/requirements.lock \
 && pip install --require-hashes --no-deps -r requirements/build.lock
COPY pyproject.toml README.md LICENSE ./
COPY sidecar ./sidecar
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

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
    pip install --no-index --find-links=/wheels --require-hashes --no-deps \
        -r /wheels/requirements.lock \
 && pip install --no-index --find-links=/wheels --no-deps ai-security-sidecar \
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
