# Two commands: `make demo` runs the main job (imlab compare --quick), `make test` passes the tests.
# Both create .venv and install the project (with its dev extra) when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint fmt clean kafka nodegen

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Apache Kafka's jars, fetched once by Maven into .cache/kafka (a no-op when present;
# without a JDK it says so and the stages fall back to Tansu).
kafka: $(STAMP)
	$(BIN)/python -m imlab.kafka_dist fetch

# The Node.js load generator's Socket.IO client, fetched once by npm into .cache/nodegen.
nodegen: $(STAMP)
	$(BIN)/python -m loadtest.nodegen

demo: $(STAMP) kafka
	$(BIN)/imlab compare --quick

test: $(STAMP) kafka nodegen
	$(BIN)/pytest -q --durations=15

# the unit tests alone (tests/unit: no process started), in seconds
test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .cache .pytest_cache .mypy_cache .ruff_cache
