# tradingd: two commands do all set-up on a fresh machine with python3:
#   make run    create .venv, install, replay a demo trading day on the paper broker
#   make test   create .venv, install, run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := data/demo
RUN_STATE ?= state/demo

.PHONY: install run test lint typecheck bench demo-data clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(DEMO)/day.csv: $(STAMP) signals/demodata.py
	$(BIN)/python -m signals.demodata --out $@ --days 1 --first-day 2024-03-18 --seed 11

demo-data: $(DEMO)/day.csv

# A fresh paper account each time: the demo replays the same day, and a persistent paper
# account would (rightly) refuse the same deterministic order ids a second time.
run: $(STAMP) $(DEMO)/day.csv
	rm -rf $(RUN_STATE)
	$(BIN)/tradingd run --replay $(DEMO)/day.csv --speed max --state-dir $(RUN_STATE)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:randomly --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy daemon brokers risk portfolio signals config

bench: $(STAMP)
	$(BIN)/python benchmarks/replay.py

clean:
	rm -rf $(VENV) state data/demo build *.egg-info
