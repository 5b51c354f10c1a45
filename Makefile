# Two commands for a new machine:  `make demo`  and  `make test`.
# Both create .venv, install torch first (the CPU build unless TORCH_SPEC says otherwise),
# then this package with its pinned ranges, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a GPU machine install the CUDA build you want first, or set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test bench clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch first: a bare `torch` requirement on an empty environment pulls CUDA wheels.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,bench,eval]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/llamantino run demo

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
