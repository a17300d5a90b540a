# The two commands of the README's quick start. Each sets up .venv first (idempotent, minutes the
# first time, instant afterwards), then does its job. Extra flags: make run ARGS="--profile smoke".
VENV ?= .venv
ARGS ?=

.PHONY: setup run test test-e2e test-slow

setup:
	bash scripts/install.sh

run: setup
	$(VENV)/bin/bench run --learners all $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -n auto $(ARGS)

test-e2e: setup
	$(VENV)/bin/python -m pytest -m "e2e and not slow" $(ARGS)

test-slow: setup
	$(VENV)/bin/python -m pytest -n auto -m slow $(ARGS)
