# Two commands do everything from nothing: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-extended install clean

$(STAMP): pyproject.toml open_clip_lightclip.pth
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/open-clip-lightclip demo

# pytest-xdist workers (one per core of the 2-core CI machine); TEST_WORKERS=0 runs the suite in one process
TEST_WORKERS ?= 2

test: $(STAMP)
	$(VENV)/bin/lint-imports  # the rooms' import contract (pyproject.toml [tool.importlinter])
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations 15 -m "not extended"

# the longest end-to-end runs (a plugin-free venv, ablate / demo end to end, more --torchcompile runs): minutes more
test-extended: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations 15 -m extended

clean:
	rm -rf $(VENV) demo_out
