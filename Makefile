# llama-orch developer commands. `make up` and `make test` are the README's two commands:
# each sets everything up first (venv, pinned packages), so a fresh clone needs only
# Python >= 3.11 and make.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup up test lint gen gen-check bench lock clean-venv tiny

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("llama-orch needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

## Start home mode (orchestrator + pool manager + gateway) serving the embedded `tiny` model.
up: setup
	$(VENV)/bin/llama-orch up

## Lint the contracts, check gen/ is fresh, run every test.
test: setup lint
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/buf lint
	$(PY) tools/gen_protos.py --check

## Regenerate gen/ from proto/ (Python messages, .pyi stubs, gRPC stubs; Go stubs).
gen: setup
	$(PY) tools/gen_protos.py
	tools/install_go.sh
	tools/gen_go.sh

bench: setup
	$(PY) bench/run.py

## Rebuild the embedded tiny model from its corpus (deterministic; a few minutes).
tiny: setup
	$(PY) tools/build_tiny.py --out models/tiny

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^llama-orch' > requirements.lock

clean-venv:
	rm -rf $(VENV)
