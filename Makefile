# tradingd: two commands do all set-up on a fresh machine with python3:
#   make run    create .venv, install, replay a demo trading day on the paper broker
#   make test   create .venv, install, run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := data/demo
RUN_STATE ?= state/demo

.PHONY: install system-deps run test lint typecheck bench demo-data model clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Ten days of the project's own demo bars to train on, and the day after them to trade.
$(DEMO)/train.csv $(DEMO)/day.csv &: $(STAMP) signals/demodata.py
	$(BIN)/python -m signals.demodata --out $(DEMO)/train.csv --last-day-to $(DEMO)/day.csv \
		--days 11 --symbols 50 --seed 7

demo-data: $(DEMO)/train.csv $(DEMO)/day.csv

# A small XGBoost model trained by the project's own command on the demo bars.
$(DEMO)/model/model.ubj: $(DEMO)/train.csv signals/features.py signals/train.py
	$(BIN)/tradingd train --bars $(DEMO)/train.csv --out $(DEMO)/model --small

model: $(DEMO)/model/model.ubj

# The embedded default: the model signal source on the paper broker, replaying the demo
# day as fast as possible. A fresh paper account each time: the same day replayed again
# would (rightly) be refused the same deterministic order ids by a persistent account.
# The demo model rescores every symbol every minute; it trades only its strong signals
# (|strength| >= 0.5): at the shipped 0.1 it would spend the day's 200 orders in the
# first hour of trading (measured: 200 orders by 11:36 New York; at 0.5, 167 orders
# spread over the day).
run: $(STAMP) $(DEMO)/day.csv $(DEMO)/model/model.ubj
	rm -rf $(RUN_STATE)
	TRADINGD_SIGNALS__MODEL__ENABLED=true \
	TRADINGD_SIGNALS__MODEL__MODEL_PATH=$(DEMO)/model/model.ubj \
	TRADINGD_RISK__SIGNAL_THRESHOLD=0.5 \
		$(BIN)/tradingd run --replay $(DEMO)/day.csv --speed max --state-dir $(RUN_STATE)

# mosquitto, mosquitto-clients, chromium and chromium-driver: apt-get when root, else say what to install.
system-deps:
	scripts/system-deps.sh

test: $(STAMP) system-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -p no:randomly --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy kernel engine daemon brokers risk portfolio signals config

bench: $(STAMP)
	$(BIN)/python benchmarks/replay.py

clean:
	rm -rf $(VENV) state data/demo build *.egg-info
