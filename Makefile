# The two set-up commands: `make up` (the stack with demo traffic) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := prometheus prometheus-alertmanager prometheus-node-exporter prometheus-pushgateway
BINARIES := prometheus promtool prometheus-alertmanager amtool prometheus-node-exporter prometheus-pushgateway
UP_ARGS ?=
# MLServer, the third-party Open Inference Protocol server that the proxy is tested against,
# pins an older Starlette than inferwatch: it gets a venv of its own (about 35 s, 530 MB), and
# the tests run it as a subprocess.
MLSERVER_VENV := .venv-mlserver
MLSERVER_PACKAGES := mlserver==1.7.1 mlserver-sklearn==1.7.1

.PHONY: up test deps lint clean

# Installs the Prometheus binaries with apt when any is missing (needs root).
deps:
	@missing=""; for b in $(BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing. Run as root: apt-get install -y $(APT_PACKAGES)"; \
	    echo "or put the upstream prometheus/alertmanager/node_exporter binaries on PATH."; exit 1; \
	  fi; \
	fi

$(VENV)/.venv-ok:
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	touch $@

$(VENV)/.installed-run: $(VENV)/.venv-ok pyproject.toml
	$(BIN)/pip install -q -e '.[fast]'
	touch $@

# torch==2.13.0 is the CPU build on these machines; the resnet18 tests need it.
$(VENV)/.installed-test: $(VENV)/.venv-ok pyproject.toml
	$(BIN)/pip install -q -e '.[dev,torch]'
	touch $@ $(VENV)/.installed-run

$(MLSERVER_VENV)/.installed: $(VENV)/.venv-ok
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q $(MLSERVER_PACKAGES)
	touch $@

up: deps $(VENV)/.installed-run
	$(BIN)/inferwatch up $(UP_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

test: deps $(VENV)/.installed-test $(MLSERVER_VENV)/.installed lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) run generated
