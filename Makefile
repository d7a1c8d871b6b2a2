# The commands a user needs (README.md): `make demo` and `make test`. Both set everything up first
# (scripts/bootstrap is idempotent and takes a second or two once everything is there).

# The interpreter is chosen when a recipe runs, after bootstrap may have created .venv (see scripts/python).
PY = "$$(scripts/python)"
BOOTSTRAP_FLAGS ?=
PYTEST_ARGS ?=

.PHONY: help bootstrap demo test check

help:
	@echo "make demo       set up, then boot the test guest and upgrade its VMM live three times (examples/demo.sh)"
	@echo "make test       set up, then run the test suite (python3 -m pytest; PYTEST_ARGS=... to pass options)"
	@echo "make check      ruff check, ruff format --check and mypy --strict"
	@echo "make bootstrap  only set up (scripts/bootstrap; BOOTSTRAP_FLAGS=--no-linux skips the Linux guest)"

bootstrap:
	scripts/bootstrap $(BOOTSTRAP_FLAGS)

demo: bootstrap
	examples/demo.sh

# pytest exits 5 when it collected no tests: that is not a failure of the code under test.
test: bootstrap
	$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests"; exit 0; fi; exit $$status

check: bootstrap
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

