# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install, train the digits demo (~5 min on 2 cores), write pictures
#   make test   - create .venv, install, run the test suite (slow quality runs skipped)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ddpmkit-installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: setup test test-all demo bench results lint clean fashion-mnist-data

setup: $(STAMP)

# Re-run the install only when the package metadata changes; a second `make` starts in seconds.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[extras,interop,dev,coding]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	DDPMKIT_SLOW=1 $(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m ddpmkit demo --out demo

bench: $(STAMP)
	$(PY) benchmarks/unet_speed.py
	$(PY) benchmarks/sampler_accuracy.py

# The README's results: FID table, rate-distortion, bits/dim (about an hour on 2 cores; see the script)
results: $(STAMP) fashion-mnist-data
	scripts/fashion_mnist_results.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts

# Debian ships Fashion-MNIST's IDX files; install them when we can (root), else say how.
fashion-mnist-data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
