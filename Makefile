# The two set-up commands: `make up` (the stack with demo traffic) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# victoria-metrics: the long-term store that `up --replicas` writes to (remote_write).
APT_PACKAGES := prometheus prometheus-alertmanager prometheus-node-exporter prometheus-pushgateway victoria-metrics
BINARIES := prometheus promtool prometheus-alertmanager amtool prometheus-node-exporter prometheus-pushgateway victoria-metrics
# The dashboard's browser test drives Debian's Chromium with Playwright (never a downloaded one).
CHROMIUM := /usr/bin/chromium
# The Compose tests validate the rendered file with Debian's docker-compose; without its
# recommended docker.io: no engine is needed, or started.
COMPOSE := docker-compose
UP_ARGS ?=
# MLServer, the third-party Open Inference Protocol server that the proxy is tested against,
# pins an older Starlette than inferwatch: it gets a venv of its own (about 35 s, 530 MB), and
# the tests run it as a subprocess.
MLSERVER_VENV := .venv-mlserver
MLSERVER_PACKAGES := mlserver==1.7.1 mlserver-sklearn==1.7.1
# TorchServe, installed as its users do: Java from Debian, TorchServe from PyPI in a venv of
# its own (about 80 s, 970 MB). torch==2.13.0 is the CPU build on these machines (unpinned,
# pip fetches the CUDA one: GBs); TorchServe's workers import PyYAML without declaring it.
JAVA := openjdk-17-jre-headless
TORCHSERVE_VENV := .venv-torchserve
TORCHSERVE_PACKAGES := torchserve==0.12.0 torch-model-archiver==0.12.0 torch==2.13.0 PyYAML
# `transformers serve`, Hugging Face's OpenAI-compatible server, serves a tiny random model the
# tests build (no download) behind the proxy: a venv of its own (about 65 s, 1.2 GB), torch
# pinned to the CPU build as above.
TRANSFORMERS_VENV := .venv-transformers
TRANSFORMERS_PACKAGES := 'transformers[serving]==5.25.0' torch==2.13.0

.PHONY: up test test-compat check-latest-client test-py313 deps lint clean assets

# Installs the Prometheus and VictoriaMetrics binaries, Chromium for the browser test and Java
# for TorchServe's, with apt when missing (needs root).
deps:
	@missing=""; for b in $(BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing. Run as root: apt-get install -y $(APT_PACKAGES)"; \
	    echo "or put the upstream prometheus/alertmanager/node_exporter/victoria-metrics binaries on PATH."; exit 1; \
	  fi; \
	fi
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: the dashboard browser test needs $(CHROMIUM): apt-get install -y chromium"; \
	  fi; \
	fi
	@if ! command -v $(COMPOSE) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing docker-compose with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; \
	  else \
	    echo "note: the Compose tests need $(COMPOSE): apt-get install -y docker-compose"; \
	  fi; \
	fi
	@if ! command -v java >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(JAVA) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(JAVA) >/dev/null; \
	  else \
	    echo "note: the TorchServe tests need java: apt-get install -y $(JAVA)"; \
	  fi; \
	fi

$(VENV)/.venv-ok:
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	touch $@

$(VENV)/.installed-run: $(VENV)/.venv-ok pyproject.toml
	$(BIN)/pip install -q -e '.[demo,fast]'
	touch $@

# torch==2.13.0 is the CPU build on these machines; the resnet18 tests need it. The gpu extra
# (nvidia-ml-py, pure Python) lets the tests run the real NVML binding's no-driver path.
$(VENV)/.installed-test: $(VENV)/.venv-ok pyproject.toml
	$(BIN)/pip install -q -e '.[demo,dev,torch,gpu]'
	touch $@ $(VENV)/.installed-run

$(MLSERVER_VENV)/.installed: $(VENV)/.venv-ok
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q $(MLSERVER_PACKAGES)
	touch $@

$(TORCHSERVE_VENV)/.installed: $(VENV)/.venv-ok
	$(PYTHON) -m venv $(TORCHSERVE_VENV)
	$(TORCHSERVE_VENV)/bin/pip install -q $(TORCHSERVE_PACKAGES)
	touch $@

$(TRANSFORMERS_VENV)/.installed: $(VENV)/.venv-ok
	$(PYTHON) -m venv $(TRANSFORMERS_VENV)
	$(TRANSFORMERS_VENV)/bin/pip install -q $(TRANSFORMERS_PACKAGES)
	touch $@

up: deps $(VENV)/.installed-run
	$(BIN)/inferwatch up $(UP_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

test: deps $(VENV)/.installed-test $(MLSERVER_VENV)/.installed $(TORCHSERVE_VENV)/.installed \
  $(TRANSFORMERS_VENV)/.installed lint
	$(BIN)/pytest -q -p no:cacheprovider

# What CI runs after `make test`: the newest prometheus-client, and Python 3.13.
test-compat: check-latest-client test-py313

# prometheus-client is capped in pyproject.toml because inferwatch.metrics uses its internals:
# run the unit tests against its newest release (a wheel on PYTHONPATH comes before the venv's
# copy). When they pass on a release above the cap, raise the cap.
LATEST_CLIENT := build/latest-client
check-latest-client: $(VENV)/.installed-test
	rm -rf $(LATEST_CLIENT)
	$(BIN)/pip download -q --no-deps --only-binary :all: -d $(LATEST_CLIENT) prometheus-client
	PYTHONPATH=$$(ls $(LATEST_CLIENT)/*.whl) $(BIN)/python -c \
	  "import prometheus_client, importlib.metadata as m; print('prometheus-client', m.version('prometheus-client'), 'from', prometheus_client.__file__)"
	PYTHONPATH=$$(ls $(LATEST_CLIENT)/*.whl) $(BIN)/pytest -q -p no:cacheprovider tests/unit

# The unit tests on Python 3.13 (pyenv's, or python3.13 on PATH), without torch: its CPU
# build on this disk is for Python 3.11 only.
# pyenv's shim for python3.13 exists but fails unless 3.13 is selected, so each candidate is
# run once and the first that starts is used.
PYTHON313 ?= $(shell for p in $(HOME)/.pyenv/versions/3.13*/bin/python3.13 $$(command -v python3.13); do \
  "$$p" -c "import sys" 2>/dev/null && { echo "$$p"; break; }; done)
VENV313 := .venv-py313
test-py313:
	@if [ -z "$(PYTHON313)" ]; then echo "test-py313: no Python 3.13 (python3.13 or pyenv's): skipped"; exit 0; fi; \
	{ [ -x $(VENV313)/bin/pip ] || $(PYTHON313) -m venv $(VENV313); } && \
	$(VENV313)/bin/pip install -q --upgrade pip && \
	$(VENV313)/bin/pip install -q -e '.[demo,dev,gpu]' && \
	$(VENV313)/bin/python --version && \
	$(VENV313)/bin/pytest -q -p no:cacheprovider tests/unit

# Re-vendors the dashboard's charting library after a version change in web/package.json;
# the copied files are committed, so installing inferwatch needs no npm.
VENDOR := src/inferwatch/stack/dashboard/static/vendor
assets:
	cd web && npm ci --no-audit --no-fund
	cp web/node_modules/uplot/dist/uPlot.iife.min.js web/node_modules/uplot/dist/uPlot.min.css $(VENDOR)/
	cp web/node_modules/uplot/LICENSE $(VENDOR)/uPlot.LICENSE

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) $(TORCHSERVE_VENV) $(TRANSFORMERS_VENV) $(VENV313) run generated build
