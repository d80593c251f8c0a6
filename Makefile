# The few targets people reach for. `sh deploy/bootstrap.sh <target>` installs system packages first.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
EXAMPLE_LAKE ?= ./lake

.PHONY: setup example test lint typecheck tests unit system bench bench-analyze bench-rules bench-live bench-live-media golden clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# exit code 1 = violations found: the example capture holds them on purpose
example: setup
	$(BIN)/lync-sensor analyze examples/lync-sample.pcap --config deploy/lync-sensor.example.toml \
		--lake $(EXAMPLE_LAKE) || [ $$? -eq 1 ]

lint: setup
	$(BIN)/ruff check sensor tests bench
	$(BIN)/ruff format --check sensor tests bench

typecheck: setup
	$(BIN)/mypy

# every test; `make unit` runs tests/unit (no program beyond Python), `make system` tests/system (tshark, dumpcap,
# ffmpeg, Prometheus, PostgreSQL, root: see the markers in pyproject.toml)
tests: setup
	$(BIN)/pytest -q

unit: setup
	$(BIN)/pytest -q tests/unit

system: setup
	$(BIN)/pytest -q tests/system

test: lint typecheck tests

# analyze vs nDPI's ndpiReader and tshark on the handshake-heavy (20k TLS sessions) and media-heavy (5M packets)
# mixes, plus peak RSS on captures 5x longer; table on stdout, bench/out/stream-results.{md,json}
bench: setup
	$(PY) bench/bench_stream.py

# the earlier offline benchmark: analyze vs tshark and pyshark on the 10M-packet media mix
bench-analyze: setup
	$(PY) bench/bench_analyze.py

bench-rules: setup
	$(PY) bench/bench_rules.py

# needs root: the handshake-heavy mix replayed into a veth pair at 100k packets/s for 60 s
bench-live: setup
	$(PY) bench/bench_live.py --mix handshake

bench-live-media: setup
	$(PY) bench/bench_live.py --mix media

golden: setup
	$(PY) -m sensor.synth labelled examples/lync-sample.pcap --seed 7
	LYNC_SENSOR_UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/unit/test_metrics.py

clean:
	rm -rf $(VENV) lake bench/out .pytest_cache .mypy_cache .ruff_cache
