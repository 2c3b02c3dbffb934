# smtpmailer: `make run` starts the daemon on a local default, `make test` runs every check.
# Both bootstrap their own virtualenv on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The working tree is imported through PYTHONPATH, which is also how Twisted finds
# twisted/plugins/ in our flat layout (an installed copy is tested separately).
export PYTHONPATH := $(CURDIR)
DEPS_STAMP := $(VENV)/.deps-$(shell cat setup.cfg pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: run test check lint typecheck unit deps clean

$(DEPS_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python tools/requirements.py install_requires test > $(VENV)/requirements.txt
	$(BIN)/python -m pip install -q -r $(VENV)/requirements.txt
	rm -f $(VENV)/.deps-*
	touch $@

deps: $(DEPS_STAMP)

run: deps
	mkdir -p var
	$(BIN)/twistd -n --pidfile= smtpmailer --config conf/local.conf

lint: deps
	$(BIN)/ruff check smtpmailer tests twisted bench tools
	$(BIN)/ruff format --check smtpmailer tests twisted bench tools

typecheck: deps
	$(BIN)/mypy

unit: deps
	$(BIN)/python tools/run_trial.py tests

test: lint typecheck unit

clean:
	rm -rf $(VENV) _trial_temp var
