# Two commands on a fresh machine: `make run` and `make test`. Every target uses .venv.
# Both install from the hash-checked lock files in requirements/ (see requirements/README.md):
# `make run` only what serving needs, `make test` and `make lint` the dev toolchain too.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
RUN_STAMP := $(VENV)/.installed-run
STAMP     := $(VENV)/.installed-dev

.PHONY: run test lint bench soak train lock image clean

$(PY):
	python3 -m venv $(VENV)

# Runtime only (the sidecar, its dependencies and the embedded memory:// store), every file
# checked against its hash; then the sidecar itself, editable, built by the locked hatchling.
$(RUN_STAMP): pyproject.toml requirements/run.lock requirements/build.lock | $(PY)
	$(PIP) --require-hashes --no-deps -r requirements/run.lock -r requirements/build.lock
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml requirements/dev.lock | $(PY)
	$(PIP) --require-hashes --no-deps -r requirements/dev.lock
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

## run: the sidecar on the embedded memory:// store, with the bundled mock provider when
##      SIDECAR_UPSTREAM_URL is not set (installs runtime dependencies only)
run: $(RUN_STAMP)
	$(VENV)/bin/sidecar serve

## test: the whole suite (starts its own redis-server processes on free ports)
test: $(STAMP)
	$(PY) -m pytest -q

## lint: ruff, mypy --strict and the import-direction contracts
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

## bench: throughput and latency direct, through a minimal aiohttp pass-through, and through the sidecar
bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) bench/run_bench.py

## soak: a bounded mixed-traffic soak (default 3 minutes, loopback only): RSS, fds, errors over time
soak: $(STAMP)
	$(PY) bench/soak.py

## train: fit the injection classifier offline and export its weights into the package
train: $(STAMP)
	$(PIP) -e '.[train]'
	$(PY) tools/train_injection.py

## lock: re-resolve requirements/*.lock from pyproject.toml (newest versions, with hashes)
PIP_COMPILE = $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
              --no-emit-index-url --no-emit-find-links --upgrade
lock: $(STAMP)
	$(PIP) 'pip-tools==7.6.2'
	$(PIP_COMPILE) -o requirements/base.lock pyproject.toml
	$(PIP_COMPILE) -o requirements/build.lock requirements/build.in
	$(PIP_COMPILE) --extra memory -o requirements/run.lock pyproject.toml
	$(PIP_COMPILE) --extra dev -o requirements/dev.lock pyproject.toml requirements/build.in

## image: build the container image (needs docker with BuildKit)
IMAGE ?= ai-security-sidecar:dev
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
