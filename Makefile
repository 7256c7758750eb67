# Two commands matter: `make demo` (the whole loop on demo data) and `make test` (the suite).
# uv is bootstrapped when missing; `uv sync --frozen` builds .venv/ from the committed uv.lock.
# Setup compiles every module to bytecode once (the packages, then ours): each `actionlayer` process imports
# Dagster and dbt, about 7 s from bytecode and 14 s from source, and where PYTHONDONTWRITEBYTECODE is set
# nothing else would ever write the bytecode.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export DAGSTER_DISABLE_TELEMETRY := 1
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup demo test dev lint format bench clean

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode
	.venv/bin/python -m compileall -q actionlayer connectors action_sinks orchestration >/dev/null

demo: setup
	.venv/bin/actionlayer demo

# two xdist workers, one per core; tests/conftest.py schedules whole test files, the longest first
test: setup
	.venv/bin/ruff check .
	.venv/bin/pytest -n 2 --no-loadscope-reorder --durations=25

dev: setup
	.venv/bin/actionlayer dev

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# The scale benchmark (benchmarks/bench_scale.py): `make bench` runs size M; `make bench SIZE=S` another size,
# BENCH_ARGS passes more options (e.g. BENCH_ARGS="--format csv --keep").
SIZE ?= M
bench: setup
	.venv/bin/python benchmarks/bench_scale.py --size $(SIZE) $(BENCH_ARGS)

clean:
	rm -rf data/ dbt_project/target dbt_project/logs
