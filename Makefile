# SocTalk control plane. Everything runs from the project's own venv; nothing to install by hand.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
BENCH_SCALE ?= default
PYTEST_ARGS ?=

.PHONY: demo test unit integration contract e2e reliability soak bench lint schemas charts-docs dev clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## demo: start the embedded stack, provision the sample tenant end to end, show its lifecycle
demo: $(STAMP)
	$(BIN)/soctalk demo $(DEMO_ARGS)

## test: every test tier (unit, integration, contract, e2e, reliability fast subset)
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

contract: $(STAMP)
	$(BIN)/python -m pytest -q tests/contract

e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

soak: $(STAMP)
	SOCTALK_SOAK=1 $(BIN)/python -m pytest -q tests/reliability

bench: $(STAMP)
	BENCH_SCALE=$(BENCH_SCALE) $(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy libs services cli
	$(BIN)/lint-imports

schemas: $(STAMP)
	$(BIN)/python -m soctalk_common.schemagen

charts-docs: $(STAMP)
	$(BIN)/python -m soctalk_common.charts readme

dev: $(STAMP)
	$(BIN)/soctalk dev up

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
