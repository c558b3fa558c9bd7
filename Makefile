# gate-agent: `make demo` shows the gate working; `make test` installs everything and tests it.
PYTHON ?= python3
VENV ?= .venv
NEED_GB ?= 8
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install system-deps venv clean bench hil

demo: $(STAMP)
	$(PY) -m agent demo

test: system-deps $(STAMP)
	$(PY) -m pytest -q

install: $(STAMP)

system-deps:
	@bash .ci/system-deps.sh

$(STAMP): pyproject.toml
	@test -d $(VENV) || bash .ci/check-space.sh $(dir $(abspath $(VENV))) $(NEED_GB)
	@test -d $(VENV) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,easyocr]'
	@touch $(STAMP)

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

hil: $(STAMP)
	$(PY) -m agent hil run --junit hil-report.xml

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
