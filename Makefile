# The README's commands are the contract: `make demo` and `make test` set everything up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are installed first so pip picks the builds that suit this machine;
# override TORCH_SPEC for another platform (e.g. TORCH_SPEC="torch torchvision").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.oodlens-installed
# Every plugin distribution under plugins/ is installed editable, as a user would pip-install it.
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))

.PHONY: setup test lint demo format bench bench-real clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]' $(addprefix -e ,$(PLUGIN_DIRS))
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/oodlens bench --scorers all+model logit_kde:mode=class_conditional --out runs/demo

# speed benchmarks (ratios against a reference run side by side); see docs/benchmarks.md
bench: setup
	$(PY) benchmarks/kde_speed.py
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/gradcam_speed.py
	$(PY) benchmarks/gpu_throughput.py
	$(PY) benchmarks/gpu_throughput.py --profile jpeg
	$(PY) benchmarks/neighbour_speed.py
	$(PY) benchmarks/import_speed.py
	$(PY) benchmarks/detect_speed.py
	$(PY) benchmarks/thread_contention.py
	$(PY) benchmarks/sync_docs.py

# real-data benchmarks on ../shared/data (skipped with a message when it is absent)
bench-real: setup
	$(PY) benchmarks/run_real.py
	$(PY) benchmarks/detector_cifar10.py
	$(PY) benchmarks/score_explanations.py
	$(PY) benchmarks/sync_docs.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
