# The two commands in the README: `make demo` and `make test`. Each builds .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Label Studio for tests/labelstudio: its own virtualenv (its pins differ from balseg's),
# built once per version, with a migrated empty database to copy (a start then takes
# seconds, not the minute its migrations take).
LS_VERSION := 1.23.2
LS_VENV := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed-$(LS_VERSION)

.PHONY: demo test lint bench-acquisition clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,export]'
	touch $(STAMP)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PY) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q 'label-studio==$(LS_VERSION)'
	rm -rf $(LS_VENV)/seed
	env LABEL_STUDIO_BASE_DATA_DIR=$(CURDIR)/$(LS_VENV)/seed LATEST_VERSION_CHECK=false \
	  COLLECT_ANALYTICS=false $(LS_VENV)/bin/label-studio version >$(LS_VENV)/seed.log 2>&1 \
	  || (cat $(LS_VENV)/seed.log; exit 1)
	rm -f $(LS_VENV)/.installed-*
	touch $(LS_STAMP)

demo: $(STAMP)
	$(BIN)/balseg demo

test: $(STAMP) $(LS_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV) $(LS_VENV)
