# Set-up and the two main jobs. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint results bench regenerate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU PyTorch first: a bare `pip install torch` may pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0 || $(BIN)/pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install --quiet -e '.[test]'
	# torchvision's model definitions for the real-model tests (they skip without it); no deps,
	# so that it never replaces the CPU torch above
	$(BIN)/pip install --quiet --no-deps torchvision==0.28.0 pillow || echo "torchvision not installed: real-model tests skip"
	# timm's model definitions likewise (imported without their optional hub dependencies)
	$(BIN)/pip install --quiet --no-deps timm==1.0.31 pyyaml || echo "timm not installed: timm tests skip"
	touch $(STAMP)

## derive, generate and verify layers for the built-in example (a ReLU MLP 784-64-64-10)
demo: $(STAMP)
	$(BIN)/nfn-derive demo -o nfn_demo

## the fast test tier (what CI runs): every feature, at small sizes; tests marked slow are skipped
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

## every test, the slow ones too
test-all: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

## formatting, lint and strict typing (CI runs it beside the fast tier); all three always run
LINT_DIRS := derive nfn_runtime nfn_tasks tests benchmarks
TYPED_DIRS := derive nfn_runtime nfn_tasks
lint: $(STAMP)
	@status=0; \
	echo "ruff format --check $(LINT_DIRS)"; $(BIN)/ruff format --check $(LINT_DIRS) || status=1; \
	echo "ruff check $(LINT_DIRS)"; $(BIN)/ruff check $(LINT_DIRS) || status=1; \
	echo "mypy --strict $(TYPED_DIRS)"; $(BIN)/mypy --strict $(TYPED_DIRS) || status=1; \
	exit $$status

## model zoos, every NFN and baseline on every task, the robustness experiment (small setting)
results: $(STAMP)
	$(BIN)/nfn-derive experiment --setting small --out results/small

## the benchmarks reported in README.md (minutes, not part of the tests)
bench: $(STAMP)
	$(BIN)/python benchmarks/derive_time.py
	$(BIN)/python benchmarks/layer_speed.py
	$(BIN)/python benchmarks/codegen_size.py
	$(BIN)/python benchmarks/poly_speed.py
	$(BIN)/python benchmarks/trace_time.py
	$(BIN)/python benchmarks/zoo_time.py

## rewrite generated/ from generated/specs
regenerate: $(STAMP)
	$(BIN)/python -m derive.cli.regenerate

clean:
	rm -rf $(VENV) nfn_demo .pytest_cache .mypy_cache .ruff_cache
