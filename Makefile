# georep — the commands people and CI use.
#   make demo   start the local stack, push a multi-arch image, watch it reach both regions, stop
#   make test   lint, type-check, unit and integration tests (starts and stops its own stack)
#   make up / make down   the local stack, in the background, for poking around (REGISTRY=3: distribution v3)
#   make bench  benchmarks against skopeo and the machine's ceilings (not CI); writes bench/

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CACHE := $(CURDIR)/.cache
# Downloads and Go's build cache are shared by every checkout on the machine (outside the repository, never
# committed): a fresh clone then builds from them in seconds instead of fetching and compiling for minutes.
DOWNLOADS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/georep
export PIP_CACHE_DIR := $(DOWNLOADS)/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
KAFKA_STAMP := $(CACHE)/kafka/libs/.complete
VENV_STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(CACHE)/.system-packages
# Go programs, pinned, built from the Go module proxy into the ignored cache (a second run only checks the stamps):
# CNCF distribution v3 (the `registry:3` line, beside Debian's 2.8.2) and oras (referrers, tested on both lines).
GO_BIN := $(CACHE)/go/bin
GO_ENV := GOPATH=$(DOWNLOADS)/go/path GOMODCACHE=$(DOWNLOADS)/go/mod GOCACHE=$(DOWNLOADS)/go/build GOBIN=$(GO_BIN) \
  GOFLAGS=-buildvcs=false
DISTRIBUTION_V3 := v3.1.2
ORAS_VERSION := v1.3.6
V3_STAMP := $(GO_BIN)/.registry-$(DISTRIBUTION_V3)
ORAS_STAMP := $(GO_BIN)/.oras-$(ORAS_VERSION)
# kustomize renders deploy/k8s the way `kubectl apply -k` does; the tests check what each pod would get.
KUSTOMIZE_VERSION := v5.5.0
KUSTOMIZE_STAMP := $(GO_BIN)/.kustomize-$(KUSTOMIZE_VERSION)
# The registry line of the local stack: 2 (Debian's 2.8.2, the default) or 3 (distribution v3); `make up REGISTRY=3`.
REGISTRY ?= 2
# Kafka nodes of the local stack (1, or a cluster of 3: `make up KAFKA_BROKERS=3`), georep API processes
# (1, or 2 that elect a leader), and webhook processes (each a notification endpoint of the primary).
KAFKA_BROKERS ?= 1
API_PROCESSES ?= 1
WEBHOOKS ?= 1
STACK_ARGS = --registry $(REGISTRY) --kafka-brokers $(KAFKA_BROKERS) --api-processes $(API_PROCESSES) --webhooks $(WEBHOOKS)

.PHONY: install up down demo test lint typecheck unit integration faults bench clean readme-outputs

install: $(SYSTEM_STAMP) $(VENV_STAMP) $(KAFKA_STAMP) $(V3_STAMP) $(ORAS_STAMP) $(KUSTOMIZE_STAMP)

# Debian's CNCF distribution 2.8.2 and skopeo 1.9.3: the registries and the client users push with; chromium:
# the browser the console's tests drive (through Playwright, which downloads no browser of its own).
$(SYSTEM_STAMP):
	@if ! command -v docker-registry >/dev/null || ! command -v skopeo >/dev/null || ! command -v java >/dev/null \
	    || ! command -v chromium >/dev/null; then \
	  echo "installing docker-registry, skopeo, a JRE and chromium from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry skopeo \
	    default-jre-headless chromium >/dev/null; \
	fi
	@mkdir -p $(CACHE) && touch $@

$(VENV_STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[dev]'
	@touch $@

# Apache Kafka from Maven Central: the broker and its runtime classpath, copied into the ignored cache.
$(KAFKA_STAMP): deploy/local/kafka/pom.xml
	@command -v mvn >/dev/null || { echo "need Maven (mvn) to fetch Kafka"; exit 1; }
	rm -rf $(CACHE)/kafka/libs
	mvn -q -B -f deploy/local/kafka/pom.xml -Dmaven.repo.local=$(DOWNLOADS)/m2 \
	  dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(CACHE)/kafka/libs
	@touch $@

kafka: $(KAFKA_STAMP)

$(V3_STAMP):
	@command -v go >/dev/null || { echo "need Go to build distribution $(DISTRIBUTION_V3)"; exit 1; }
	$(GO_ENV) go install github.com/distribution/distribution/v3/cmd/registry@$(DISTRIBUTION_V3)
	@touch $@

$(ORAS_STAMP):
	@command -v go >/dev/null || { echo "need Go to build oras $(ORAS_VERSION)"; exit 1; }
	$(GO_ENV) go install oras.land/oras/cmd/oras@$(ORAS_VERSION)
	@touch $@

$(KUSTOMIZE_STAMP):
	@command -v go >/dev/null || { echo "need Go to build kustomize $(KUSTOMIZE_VERSION)"; exit 1; }
	$(GO_ENV) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	@touch $@

up: install
	$(PY) -m deploy.local.stack up $(STACK_ARGS)

# The README's captured command outputs, regenerated on the stack `make up` started (tests check their shape).
readme-outputs: install
	$(PY) -m deploy.local.readme_outputs

down:
	@if [ -x $(PY) ]; then $(PY) -m deploy.local.stack down; fi

demo: install
	$(PY) -m deploy.local.demo --registry $(REGISTRY)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy .

unit: install
	$(VENV)/bin/pytest tests/unit -q

integration: install
	$(VENV)/bin/pytest tests/integration -q

# Breaks parts of a stack of its own (Kafka, S3, replicators, the primary's bytes) and checks nothing is lost.
faults: install
	$(VENV)/bin/pytest tests/faults -q

# Not part of CI: a stack of its own on ports 27000+, every scenario 3 times; writes bench/results.{json,md}, bench/plot.png.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(VENV_STAMP)
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[dev,bench]'
	@touch $@

bench: install $(BENCH_STAMP)
	$(PY) -m tests.bench.run $(BENCH_ARGS)

test: install lint typecheck
	$(VENV)/bin/pytest tests -q --durations=10

clean: down
	rm -rf .georep
