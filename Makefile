# llama-orch developer commands. `make up` and `make test` are the README's two commands:
# each sets everything up first (venv, pinned packages), so a fresh clone needs only
# Python >= 3.11 and make.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup up test lint gen gen-check bench lock clean-venv tiny ui ui-check

setup: $(STAMP) ui

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

## The web UI (frontend/ -> frontend/dist, served by the gateway at /ui). dist is committed,
## so machines without npm still serve it; with npm it is rebuilt when its sources change.
UI_SRC  := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html \
           frontend/vite.config.ts frontend/tsconfig.json frontend/env.d.ts \
           frontend/package.json frontend/package-lock.json
UI_DIST := frontend/dist/index.html
UI_DEPS := frontend/node_modules/.package-lock.json
ui:
	@if command -v npm >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) $(UI_DIST) \
	    || { [ -f $(UI_DIST) ] && [ -z "$$CI" ] \
	         && echo "warning: frontend/dist not rebuilt; serving it as it is" >&2; }; \
	elif [ -f $(UI_DIST) ]; then echo "npm not found: serving frontend/dist as it is"; \
	else echo "npm not found and frontend/dist missing: the gateway serves no /ui" >&2; fi
$(UI_DEPS): frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	@touch $@
$(UI_DIST): $(UI_SRC) | $(UI_DEPS)
	cd frontend && npm run --silent build -- --logLevel warn
	@touch $@
ui-check: $(UI_DEPS)
	cd frontend && npm run --silent typecheck
