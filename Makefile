# Quick start:  make train   (set up, then run the main job)
#               make test    (set up, then run the whole test suite)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CHECKPOINT := checkpoints/minilm-l6
TRAIN_ARGS ?=
# The 1 x 2,000 budget of results/README.md (every row); RESULTS_ARGS="--rows NAME" runs one row.
RESULTS_ARGS ?=

.PHONY: setup train test convert results

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

$(CHECKPOINT)/params: $(VENV)/.installed
	$(PY) convert/pt_to_flax.py --out $(CHECKPOINT)

convert: $(CHECKPOINT)/params

train: $(CHECKPOINT)/params
	$(PY) -m train.main --preset cosfeat-pcgrad-mean --epochs 1 --samples-per-task 1000 --num-buckets 8 $(TRAIN_ARGS)

# Test files spread over the cores (pytest-xdist), each file whole on one worker: its module fixtures run once.
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist loadfile

results: $(CHECKPOINT)/params
	$(PY) results/reproduce.py --epochs 1 --samples-per-task 2000 $(RESULTS_ARGS) --extra --num-buckets 8
