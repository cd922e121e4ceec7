# tierflow: `make help` lists the targets. Every target that needs the environment
# depends on `setup`, which is idempotent and takes seconds once done.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
SERVICES ?=
SCALE ?= 1
ONLINE_STORE ?= sqlite
DEMO_ARGS ?=
# mypy's cache outside the checkout: it checks file hashes, so a fresh clone reuses it
# (lint in 3 s instead of 55 s).
MYPY_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tierflow/mypy

.DEFAULT_GOAL := help

.PHONY: dist examples bench bench-etl bench-scale bench-delta bench-features bench-features-scale bench-streaming bench-training gpu-check horovod
.PHONY: calibrate
.PHONY: help setup setup-all demo test test-unit lint fmt services-up services-down services-status shell lock clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: ## what the demo needs: Java, Maven, redis-server, .venv with the locked packages, Spark and Kafka jars
	@scripts/setup.sh

setup-all: ## setup, plus what only some tests need: S3A jars, docker compose, the MinIO server
	@scripts/setup.sh all

demo: setup ## NYC flights end to end: raw CSV to online predictions (SCALE=N, ONLINE_STORE=redis)
	@scripts/isolated.sh $(BIN)/python -m tierflow.demo --scale $(SCALE) --online-store $(ONLINE_STORE) $(DEMO_ARGS)

test: setup-all lint ## lint, then the whole suite (Horovod built once, cached) against real services in a private network namespace
	@scripts/build_horovod.sh
	@scripts/isolated.sh scripts/run-tests.sh $(PYTEST_ARGS)

test-unit: setup ## fast tests that need no service
	@$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

lint: setup ## ruff (lint and format check) and mypy (strict on lib/tierflow)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@# A crash on the shared cache (exit 2: one written by another checkout at the same
	@# time) is checked again on a cache of its own rather than failing the lint.
	@MYPY_CACHE_DIR=$(MYPY_CACHE) $(BIN)/mypy || { rc=$$?; [ $$rc -eq 2 ] || exit $$rc; \
	  echo "[lint] mypy failed on its shared cache; checking again on a fresh one" >&2; \
	  fresh=$$(mktemp -d); MYPY_CACHE_DIR=$$fresh $(BIN)/mypy; rc=$$?; rm -rf "$$fresh"; exit $$rc; }

fmt: setup ## format and auto-fix with ruff
	@$(BIN)/ruff format .
	@$(BIN)/ruff check --fix .

services-up: setup ## start local services (SERVICES="kafka redis" for some)
	@$(BIN)/tierflow services up $(SERVICES)

services-down: ## stop the local services started by services-up
	@$(BIN)/tierflow services down $(SERVICES)

services-status: ## show which local services run and answer
	@$(BIN)/tierflow services status $(SERVICES)

bench: setup ## every benchmark against its hand-written peer, then benchmarks/results/<date>/summary.md
	@scripts/isolated.sh $(BIN)/python -m benchmarks.run_all

bench-etl: setup ## TPC-H q1 and q3 per tier against Polars, DuckDB, Dask, PySpark, pandas by hand (SF 0.1, 1)
	@scripts/isolated.sh env TIERFLOW_BENCH_NAME=etl TIERFLOW_BENCH_SCALES=0.1,1 \
	  TIERFLOW_BENCH_QUERIES=q1,q3 $(BIN)/python -m benchmarks.bench_scale

bench-scale: setup ## TPC-H q1-q18 at SF 1, 10, 30 (generated, cached) per tier and the planner's pick (~2 h)
	@scripts/isolated.sh $(BIN)/python -m benchmarks.bench_scale

calibrate: setup ## measure each tier's speed and memory on this machine, for the planner
	@scripts/isolated.sh $(BIN)/tierflow calibrate

bench-delta: setup ## tierflow's Delta sink against pyarrow's Parquet writer; MERGE 1% against overwrite
	@scripts/isolated.sh $(BIN)/python -m benchmarks.bench_delta

bench-features: setup ## benchmark online-store loading and reads against raw redis-py
	@scripts/isolated.sh $(BIN)/python -m benchmarks.bench_features

bench-features-scale: setup ## training set per tier vs DuckDB/Polars; materialize + online reads at 10 M entities (EVENTS, LABELS, ENTITIES, STAGES)
	@scripts/isolated.sh $(BIN)/python -m benchmarks.bench_features_scale

gpu-check: ## training strategies on this machine's GPUs (CPU and gloo without one): samples/s, MFU
	@scripts/gpu_check.sh

horovod: setup ## build Horovod 0.28.1 from source (C++17 fix) into .venv; enables its tests
	@scripts/build_horovod.sh

bench-training: setup ## benchmark Ray Train DDP against torchrun, Ray Data against pyarrow
	@scripts/isolated.sh $(BIN)/python -m benchmarks.bench_training

bench-streaming: setup ## benchmark the feature daemon against a plain kafka-python loop
	@scripts/isolated.sh $(BIN)/python -m benchmarks.bench_streaming

dist: setup ## build dist/tierflow.zip (the library and transforms, for spark-submit --py-files)
	@$(BIN)/python scripts/build_dist.py

examples: setup ## generate the example jobs' data into data/
	@$(BIN)/tierflow examples

shell: setup ## a shell in a private network namespace holding only loopback
	@scripts/isolated.sh bash

lock: ## re-resolve pyproject.toml's dependencies into requirements.lock
	@rm -rf .local/lock-venv && python3 -m venv .local/lock-venv
	@.local/lock-venv/bin/pip install -q -e '.[all,bench,dev]'
	@{ echo "# The tested set of Python packages. Regenerate with \`make lock\` after changing pyproject.toml."; \
	  .local/lock-venv/bin/pip freeze --exclude-editable | grep -v '^tierflow'; } > requirements.lock
	@rm -rf .local/lock-venv

clean: ## stop services, remove .venv and everything under .local/
	-@[ -x $(BIN)/tierflow ] && $(BIN)/tierflow services down
	rm -rf $(VENV) .local
