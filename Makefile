# Two commands on a fresh machine: `make run` and `make test`. Every target uses .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: run test lint bench train image clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

## run: the sidecar on the embedded memory:// store, with the bundled mock provider when
##      SIDECAR_UPSTREAM_URL is not set
run: $(STAMP)
	$(VENV)/bin/sidecar serve

## test: the whole suite (starts its own redis-server processes on free ports)
test: $(STAMP)
	$(PY) -m pytest -q

## lint: ruff, mypy --strict and the import-direction contracts of DESIGN.md section 3
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
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train]'
	$(PY) tools/train_injection.py

## image: build the container image (needs docker with BuildKit)
IMAGE ?= ai-security-sidecar:dev
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
