# The one entry point for people, CI and scripts. `make help` lists the targets.

SHELL := /bin/bash
CARGO ?= cargo
KORVID_TOOLS ?= $(HOME)/.cache/korvid/tools
export KORVID_TOOLS
WEBHOOK ?= http://127.0.0.1:9440/audit/webhook

.PHONY: help setup build up send-sample test lint fmt bench bench-scan ci clean-data

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: ## Install the broker (tansu) and ONNX Runtime into $(KORVID_TOOLS), once
	@scripts/setup.sh

build: setup ## Build korvid
	$(CARGO) build --bin korvid

up: build ## Run all services on the embedded broker (data in ./.korvid); Ctrl-C stops
	$(CARGO) run --quiet --bin korvid -- up

send-sample: ## Post a sample audit batch (kubectl exec into a pod) to the running korvid
	@curl -sS -X POST -H 'content-type: application/json' \
	  --data @deploy/samples/audit-exec.json $(WEBHOOK); echo

lint: ## Formatting and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

test: setup lint ## The whole suite: lint, unit, integration and end-to-end tests on the real broker
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --locked --no-fail-fast; \
	fi

bench: setup ## Stage benchmarks against same-run baselines (release build); writes BENCHMARKS.md
	KORVID_BENCH_OUT=$(CURDIR)/BENCHMARKS.md KORVID_BENCH_DATE=$$(date -u +%FT%TZ) \
	  $(CARGO) bench --bench stages

CHECKOV_VENV ?= $(HOME)/.cache/korvid/checkov-venv
# The binary users run (`dist`: whole-program optimised; its first build takes ~20 minutes on
# 2 cores). SCAN_PROFILE=release measures the development build instead.
SCAN_PROFILE ?= dist

bench-scan: ## korvid scan vs checkov on 1,000 manifests from ../shared/corpora (installs checkov from PyPI into a cached venv)
	@test -x $(CHECKOV_VENV)/bin/checkov || { echo "bench-scan: installing checkov into $(CHECKOV_VENV)"; \
	  python3 -m venv $(CHECKOV_VENV) && $(CHECKOV_VENV)/bin/pip install -q checkov; }
	$(CARGO) build --profile $(SCAN_PROFILE) --bin korvid
	$(CHECKOV_VENV)/bin/python scripts/bench_scan_vs_checkov.py $${CARGO_TARGET_DIR:-target}/$(SCAN_PROFILE)/korvid $(CHECKOV_VENV)/bin/checkov 1000

fmt: ## Format the code
	$(CARGO) fmt --all

ci: test ## What CI runs

clean-data: ## Forget the embedded broker's data and notify's memory (./.korvid)
	rm -rf .korvid
