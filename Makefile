# frontfleet — the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the controller needs: Redis for the tests, OpenSSH, the fleet harness's tools, and the browser the
# live stream's end-to-end tests drive (Playwright with Debian's chromium, never a browser of its own).
APT_PACKAGES := redis-server openssh-client debootstrap systemd-container python3-venv rsync nftables chromium

.PHONY: venv test test-fast lint system-deps clean demo demo-down bench

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@# node runs the browser client's tests; a machine may have its own node, else Debian's
	@command -v node >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs; }

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# the distribution was named frontfleet-sync-agent until 0.1.0: a venv that has it installs frontfleet instead
	$(BIN)/pip uninstall -q -y frontfleet-sync-agent 2>/dev/null || true
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
	$(BIN)/ruff check sync_agent tests fleet fabfile.py ansible_collections
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info

# The local demo fleet: 3 web hosts and a Redis host (systemd-nspawn on $(DEMO_SUBNET).x), provisioned and
# serving examples/frontend. `make demo-down` removes it all.
DEMO_NAME ?= demo
DEMO_SUBNET ?= 127.0.1
DEMO_INVENTORY := inventory/demo

demo: system-deps $(BIN)/activate
	$(BIN)/python -m fleet up --name $(DEMO_NAME) --subnet $(DEMO_SUBNET) --web 3 --redis 1 \
		--inventory $(DEMO_INVENTORY)/hosts.yml
	. $(BIN)/activate && ansible-playbook deploy.yml -i $(DEMO_INVENTORY) -e release_build=examples/frontend
	@echo; echo "The demo fleet serves examples/frontend:"
	@$(BIN)/python -m fleet urls --name $(DEMO_NAME)
	@echo; echo "Next, from this folder (. .venv/bin/activate first):"
	@echo "  fab status                                        # the fleet: host, release, revision, state"
	@echo "  fab data-set banner '{\"text\": \"Hello from Redis\"}'   # every host, within milliseconds"
	@echo "  fab rollout --build examples/frontend --label demo  # stage + cut over (nothing to send: same build)"
	@echo "  fab releases && fab rollback                      # history, and one step back"
	@echo "  ssh -F /var/lib/frontfleet-fleet/$(DEMO_NAME)/ssh_config web1 systemctl status sync-agent"
	@echo "  make demo-down                                    # remove it all"

demo-down:
	$(BIN)/python -m fleet down --name $(DEMO_NAME)
	rm -rf $(DEMO_INVENTORY)/hosts.yml $(DEMO_INVENTORY)/credentials

# Benchmarks (docs/performance.md): figures and ratios against same-run baselines, bench/results/*.json.
bench: system-deps $(BIN)/activate
	$(BIN)/python -m bench.run $(BENCH_ARGS)
