# The one entry point for people, CI and scripts. `make help` lists the targets.

SHELL := /bin/bash
CARGO ?= cargo
KORVID_TOOLS ?= $(HOME)/.cache/korvid/tools
export KORVID_TOOLS
WEBHOOK ?= http://127.0.0.1:9440/audit/webhook

.PHONY: help setup build up demo send-sample test lint deny fmt fuzz bench loadtest bench-scan bench-model model ci clean-data

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: ## Install the broker (tansu) and ONNX Runtime into $(KORVID_TOOLS), once
	@scripts/setup.sh

build: setup ## Build korvid
	$(CARGO) build --bin korvid

up: build ## Run all services on the embedded broker (data in ./.korvid); Ctrl-C stops
	$(CARGO) run --quiet --bin korvid -- up

demo: build ## korvid up plus a simulated cluster and attack campaigns replayed into it; alerts on screen
	$(CARGO) run --quiet --bin korvid -- demo

send-sample: ## Post a sample audit batch (kubectl exec into a pod) to the running korvid
	@curl -sS -X POST -H 'content-type: application/json' \
	  --data @deploy/samples/audit-exec.json $(WEBHOOK); echo

lint: deny ## Formatting and clippy, warnings are errors; cargo-deny
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

CARGO_DENY_VERSION ?= 0.20.2
deny: ## Licenses, bans and sources of every dependency (deny.toml; cargo-deny installed once into $(KORVID_TOOLS))
	@$(KORVID_TOOLS)/bin/cargo-deny --version 2>/dev/null | grep -q ' $(CARGO_DENY_VERSION)$$' || { \
	  echo "deny: installing cargo-deny $(CARGO_DENY_VERSION) into $(KORVID_TOOLS) (from crates.io; ~6 minutes on 2 cores, once)"; \
	  $(CARGO) install cargo-deny --version $(CARGO_DENY_VERSION) --locked --root $(KORVID_TOOLS) --quiet; }
	PATH="$(KORVID_TOOLS)/bin:$$PATH" $(CARGO) deny --log-level error check licenses bans sources
	PATH="$(KORVID_TOOLS)/bin:$$PATH" $(CARGO) deny --manifest-path fuzz/Cargo.toml --log-level error \
	  check licenses bans sources

test: setup lint ## The whole suite: lint, unit, integration and end-to-end tests on the real broker
	@export PATH="$(KORVID_TOOLS)/bin:$$PATH"; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --locked --no-fail-fast; \
	fi

FUZZ_SECONDS ?= 20
FUZZ_TARGETS ?=

fuzz: ## Fuzz every untrusted-input parser (libFuzzer on stable) for FUZZ_SECONDS (20) each, or FUZZ_TARGETS; docs/fuzzing.md
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO="$(CARGO)" scripts/fuzz.sh $(FUZZ_TARGETS)

bench: setup ## Every benchmark against its same-run baseline (release build; installs the PyTorch venv once); writes BENCHMARKS.md
	KORVID_BENCH_OUT=$(CURDIR)/BENCHMARKS.md KORVID_BENCH_DATE=$$(date -u +%FT%TZ) \
	  $(CARGO) bench --bench stages
	@mkdir -p target
	$(CARGO) bench -p korvid-notify --bench route > target/bench-route.out
	@cat target/bench-route.out; sed -n 's/^BENCH //p' target/bench-route.out >> BENCHMARKS.md
	$(MAKE) --no-print-directory bench-model MODEL_MARKDOWN=$(CURDIR)/BENCHMARKS.md
	KORVID_BENCH_OUT=$(CURDIR)/BENCHMARKS.md $(CARGO) bench --bench load
	KORVID_BENCH_OUT=$(CURDIR)/BENCHMARKS.md KORVID_LOAD_BROKER_STORAGE=memory KORVID_LOAD_RATES=20000 \
	  $(CARGO) bench --bench load
	KORVID_BENCH_OUT=$(CURDIR)/BENCHMARKS.md KORVID_LOAD_BROKER_STORAGE=memory KORVID_LOAD_RATES=20000 \
	  KORVID_LOAD_CONFIG="$$(printf '[enrich]\nearly_fire_ms = 0')" $(CARGO) bench --bench load

loadtest: setup ## The whole pipeline under sustained realistic audit traffic: accepted rate, backlog, event-to-alert p50/p99, memory (KORVID_LOAD_RATES, KORVID_LOAD_STEP_S)
	$(CARGO) bench --bench load

CHECKOV_VENV ?= $(HOME)/.cache/korvid/checkov-venv
# The binary users run (`dist`: whole-program optimised; its first build takes ~20 minutes on
# 2 cores). SCAN_PROFILE=release measures the development build instead.
SCAN_PROFILE ?= dist

bench-scan: ## korvid scan vs checkov on 1,000 manifests from ../shared/corpora (installs checkov from PyPI into a cached venv)
	@test -x $(CHECKOV_VENV)/bin/checkov || { echo "bench-scan: installing checkov into $(CHECKOV_VENV)"; \
	  python3 -m venv $(CHECKOV_VENV) && $(CHECKOV_VENV)/bin/pip install -q checkov; }
	$(CARGO) build --profile $(SCAN_PROFILE) --bin korvid
	$(CHECKOV_VENV)/bin/python scripts/bench_scan_vs_checkov.py $${CARGO_TARGET_DIR:-target}/$(SCAN_PROFILE)/korvid $(CHECKOV_VENV)/bin/checkov 1000

MODEL_VENV ?= $(HOME)/.cache/korvid/model-venv
MODEL_WORK ?= /tmp/korvid-model

model: ## Train the graph model (simulate, featurize, train, compare, export ONNX; ~40 min on 2 cores after the build, no GPU needed)
	@test -x $(MODEL_VENV)/bin/python || { echo "model: installing the training environment into $(MODEL_VENV)"; \
	  python3 -m venv $(MODEL_VENV) && $(MODEL_VENV)/bin/pip install -q -r detect/model/requirements.txt; }
	$(CARGO) build --release --bin korvid
	$(MODEL_VENV)/bin/python detect/model/train.py --korvid $${CARGO_TARGET_DIR:-target}/release/korvid --work $(MODEL_WORK)

bench-model: setup ## Graph-model inference: batched ONNX Runtime vs PyTorch eager, same inputs, same threads
	KORVID_BENCH_DIR=$(CURDIR)/target/bench-model $(CARGO) bench --bench model
	@test -x $(MODEL_VENV)/bin/python || { echo "bench-model: installing the training environment into $(MODEL_VENV)"; \
	  python3 -m venv $(MODEL_VENV) && $(MODEL_VENV)/bin/pip install -q -r detect/model/requirements.txt; }
	$(MODEL_VENV)/bin/python detect/model/bench_torch.py target/bench-model \
	  $(if $(MODEL_MARKDOWN),--markdown $(MODEL_MARKDOWN))

fmt: ## Format the code
	$(CARGO) fmt --all

ci: test ## What CI runs

clean-data: ## Forget the embedded broker's data and notify's memory (./.korvid)
	rm -rf .korvid
