"""The /metrics page: a golden exposition for the bundled example and bounded labels (the server: test_exporter)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sensor.analyze import analyze_to_lake
from sensor.config import load_config
from sensor.metrics import SensorMetrics
from tests.conftest import EXAMPLE_CONFIG, ROOT

GOLDEN = ROOT / "tests" / "golden" / "metrics-example.prom"
UPDATE = os.environ.get("LYNC_SENSOR_UPDATE_GOLDEN") == "1"
VOLATILE = (
    "lync_sensor_last_flush_timestamp_seconds",
    "lync_sensor_last_rule_evaluation_timestamp_seconds",
    "lync_sensor_rule_evaluation_duration_seconds",
)


def normalised(text: str) -> str:
    """The exposition without what changes run to run (creation times, timestamps, durations, Python)."""
    out = []
    for line in text.splitlines():
        if re.match(r"^lync_sensor_\w+_created[{ ]", line):
            continue
        if line.startswith(VOLATILE):
            line = re.sub(r" \S+$", " <volatile>", line)
        line = re.sub(r'python="[^"]*"', 'python="<python>"', line)
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def example_metrics(tmp_path_factory: pytest.TempPathFactory) -> str:
    lake = tmp_path_factory.mktemp("lake")
    cfg = load_config(EXAMPLE_CONFIG, env={}, overrides=[f'sensor.lake="{lake}"'])
    metrics = SensorMetrics(sensor_id=cfg.sensor.id, site=cfg.sensor.site)
    analyze_to_lake(
        cfg, [ROOT / "examples" / "lync-sample.pcap"], metrics=metrics, now=datetime(2026, 11, 26, 12, tzinfo=UTC)
    )
    return generate_latest(metrics.registry).decode()


def test_golden_metrics_page(example_metrics: str) -> None:
    """Regenerate with `LYNC_SENSOR_UPDATE_GOLDEN=1 pytest tests/unit/test_metrics.py` (make golden)."""
    got = normalised(example_metrics)
    if UPDATE:
        GOLDEN.write_text(got)
    assert GOLDEN.exists(), "no golden file: run `make golden`"
    assert got == GOLDEN.read_text(), "the /metrics page changed: review, then `make golden`"


def test_metrics_content(example_metrics: str) -> None:
    lines = example_metrics.splitlines()
    s = 'sensor="sensor-a"'  # the example config's sensor.id and sensor.site; labels are sorted by name
    h = 'site="hq"'
    assert f'lync_sensor_rule_violations{{rule_id="R2",{s},severity="violation",{h}}} 2.0' in lines
    assert f'lync_sensor_findings_total{{rule_id="R7",{s},severity="violation",{h}}} 5.0' in lines
    assert f'lync_sensor_capture_packets_total{{{s},{h},source="pcap"}} 27340.0' in lines
    assert (
        f'lync_sensor_tls_sessions_total{{orig_role="front_end",resp_role="front_end",{s},{h},version="TLSv12"}} 1.0'
        in lines
    )
    assert f'lync_sensor_rule_evaluation_success{{rule_id="R17",{s},{h}}} 1.0' in lines
    # labels come from bounded sets: never an address
    labels = " ".join(re.findall(r"\{[^}]*\}", example_metrics))
    assert not re.search(r"\d+\.\d+\.\d+\.\d+", labels.replace('version="0.1.0"', ""))
    assert "::" not in labels


def _series(text: str) -> list[tuple[str, dict[str, str]]]:
    """(name, labels) of every sample line of an exposition."""
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"^(\w+)(?:\{(.*)\})? ", line)
            assert m, line
            out.append((m.group(1), dict(re.findall(r'(\w+)="((?:\\.|[^"\\])*)"', m.group(2) or ""))))
    return out


def test_every_series_names_the_sensor_and_its_site(example_metrics: str) -> None:
    series = _series(example_metrics)
    assert len(series) > 100
    for name, labels in series:
        assert name.startswith("lync_sensor_"), name
        assert labels.get("sensor") == "sensor-a" and labels.get("site") == "hq", (name, labels)


def test_constant_labels_default_and_bounded() -> None:
    """sensor.site "" is the site "default"; each sensor adds one value per constant label, whatever it counts."""
    metrics = SensorMetrics(sensor_id="sensor-b")
    metrics.open_flows.set(7)
    metrics.capture_packets.labels("live").inc(3)
    text = generate_latest(metrics.registry).decode()
    assert 'lync_sensor_open_flows{sensor="sensor-b",site="default"} 7.0' in text.splitlines()
    assert {labels["sensor"] for _, labels in _series(text)} == {"sensor-b"}
    assert {labels["site"] for _, labels in _series(text)} == {"default"}
    # this sensor's sample without spelling out its constant labels; the metric objects are unchanged
    assert metrics.registry.get_sample_value("lync_sensor_capture_packets_total", {"source": "live"}) == 3
    assert metrics.registry.get_sample_value("lync_sensor_open_flows") == 7
    assert metrics.registry.get_sample_value("lync_sensor_open_flows", {"sensor": "other"}) is None
    # an injected registry gets the same labelled series
    registry = CollectorRegistry()
    SensorMetrics(registry, sensor_id="s1", site="lab").open_flows.set(1)
    assert registry.get_sample_value("lync_sensor_open_flows", {"sensor": "s1", "site": "lab"}) == 1


def test_two_sensors_expose_distinct_series() -> None:
    """Two sensors scraped by one Prometheus: the same metric, told apart by sensor (and site), not by address."""
    a, b = SensorMetrics(sensor_id="pool-a", site="hq"), SensorMetrics(sensor_id="edge-1", site="dmz")
    a.rule_violations.labels("R2", "violation").set(4)
    pages = {m: generate_latest(m.registry).decode() for m in (a, b)}
    line = 'lync_sensor_rule_violations{{rule_id="R2",sensor="{}",severity="violation",site="{}"}} {}'
    assert line.format("pool-a", "hq", "4.0") in pages[a].splitlines()
    assert line.format("edge-1", "dmz", "0.0") in pages[b].splitlines()
