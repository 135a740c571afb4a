# Two commands do everything on a fresh machine:
#   make demo   build the demo models, start the gateway on :3000, drive traffic through a canary
#   make test   lint and run the whole test suite (unit + integration against the real server)
#   (make test-unit: the tests that start no server, in about a minute)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000
DEMO_HOME ?= .gateway-home
export BENTOML_DO_NOT_TRACK := True

.PHONY: demo serve-demo test test-unit lint format bench clean promtool chromium postgresql wrk grpc-stubs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo --home $(DEMO_HOME) --port $(PORT)

serve-demo: $(STAMP)
	$(BIN)/gateway demo --home $(DEMO_HOME) --port $(PORT) --serve-only

lint: $(STAMP)
	$(BIN)/ruff check service traffic monitors storage tests bench grafana loadtests
	$(BIN)/ruff format --check service traffic monitors storage tests bench grafana loadtests

format: $(STAMP)
	$(BIN)/ruff check --fix service traffic monitors storage tests bench grafana loadtests
	$(BIN)/ruff format service traffic monitors storage tests bench grafana loadtests

# The gRPC modules from service/gateway/grpc/inference.proto (committed; a test checks they match).
grpc-stubs: $(STAMP)
	$(BIN)/python service/gateway/grpc/generate.py

# promtool (Debian's prometheus package) checks the metrics; installed here when missing.
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; }

# chromium (Debian's) opens the reports page in a real browser in the tests; installed when missing.
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# PostgreSQL (Debian's server): the store tests run on it as well as on SQLite, and the replica
# test shares one between two gateways and two monitors. The tests start a throwaway cluster
# themselves (tests/postgres.py); only the package is installed here, when missing.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }

# The tests run on TEST_WORKERS processes (pytest-xdist), each test file on one of them, so the
# servers a file shares start once. Tests marked `alone` bound a latency or a delay; they run
# afterwards, one at a time, with the machine to themselves.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
PYTEST_SHARED := $(PYTEST) -n $(TEST_WORKERS) --dist loadfile
test: lint promtool chromium postgresql
	$(PYTEST_SHARED) -m "not alone"
	$(PYTEST) -m alone

# Everything but the tests that start real servers (marked integration): the edit-test loop.
test-unit: $(STAMP) promtool postgresql
	$(PYTEST_SHARED) -m "not integration and not alone"
	$(PYTEST) -m "not integration and alone"

# Serving and overload drive load with aiohttp callers (bench/load.py), as the issues measure it;
# routing and recording use wrk (Debian package), installed here when missing.
wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

bench: $(STAMP) wrk
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/overload.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/drift.py
	$(BIN)/python bench/recording.py
	$(BIN)/python bench/rollout.py

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache .ruff_cache
