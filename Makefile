# The README's commands. Each target creates .venv and installs what it needs by itself.
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install test test-fast demo bench clean

# The CPU torch wheel first: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.torch:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	touch $@

# What the demo needs: the pipeline and lm-eval (no test-only peers, no Ray).
$(VENV)/.demo: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e '.[data,eval]'
	touch $@

# Everything, with the test-only peers (transformers, datatrove, ...).
$(VENV)/.test: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e '.[all,test]'
	touch $@

install: $(VENV)/.test

test: $(VENV)/.test
	$(PY) -m pytest -q

# The quick loop while editing, under a minute on 2 cores: the suite without the tests marked slow
# (seconds each) or distributed (torchrun, Ray). `make test` still runs everything.
test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow and not distributed"

demo: $(VENV)/.demo
	$(VENV)/bin/falconlm quickstart --out out/quickstart

bench: $(VENV)/.test
	$(PY) benchmarks/bench_generate.py --quick

clean:
	rm -rf $(VENV) out .pytest_cache
