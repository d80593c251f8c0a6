"""The /metrics page: a golden exposition for the bundled example and bounded labels (the server: test_exporter)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest

from sensor.config import load_config
from sensor.metrics import SensorMetrics
from sensor.pipeline import analyze_to_lake
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
    metrics = SensorMetrics()
    analyze_to_lake(
        cfg, [ROOT / "examples" / "lync-sample.pcap"], metrics=metrics, now=datetime(2026, 11, 26, 12, tzinfo=UTC)
    )
    return generate_latest(metrics.registry).decode()


def test_golden_metrics_page(example_metrics: str) -> None:
    """Regenerate with `LYNC_SENSOR_UPDATE_GOLDEN=1 pytest tests/test_metrics.py` (make golden)."""
    got = normalised(example_metrics)
    if UPDATE:
        GOLDEN.write_text(got)
    assert GOLDEN.exists(), "no golden file: run `make golden`"
    assert got == GOLDEN.read_text(), "the /metrics page changed: review, then `make golden`"


def test_metrics_content(example_metrics: str) -> None:
    lines = example_metrics.splitlines()
    assert 'lync_sensor_rule_violations{rule_id="R2",severity="violation"} 2.0' in lines
    assert 'lync_sensor_findings_total{rule_id="R7",severity="violation"} 5.0' in lines
    assert 'lync_sensor_capture_packets_total{source="pcap"} 27340.0' in lines
    assert 'lync_sensor_tls_sessions_total{orig_role="front_end",resp_role="front_end",version="TLSv12"} 1.0' in lines
    assert any(line.startswith('lync_sensor_rule_evaluation_success{rule_id="R17"} 1.0') for line in lines)
    # labels come from bounded sets: never an address
    labels = " ".join(re.findall(r"\{[^}]*\}", example_metrics))
    assert not re.search(r"\d+\.\d+\.\d+\.\d+", labels.replace('version="0.1.0"', ""))
    assert "::" not in labels
