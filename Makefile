# frontfleet — the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the controller needs: Redis for the tests, OpenSSH, the fleet harness's tools.
APT_PACKAGES := redis-server openssh-client debootstrap systemd-container python3-venv rsync

.PHONY: venv test test-fast lint system-deps clean

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[controller]'
	touch $@

venv: $(BIN)/activate

$(VENV)/.test-deps: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

test: system-deps $(VENV)/.test-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.test-deps
	$(BIN)/pytest -m "unit or integration" $(PYTEST_ARGS)

lint: $(VENV)/.test-deps
	$(BIN)/ruff check sync_agent tests fleet fabfile.py
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
