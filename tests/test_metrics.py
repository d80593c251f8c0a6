"""The /metrics page: a golden exposition for the bundled example, bounded labels, TLS and basic auth."""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from base64 import b64encode
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from sensor.config import MetricsSettings, load_config
from sensor.errors import ConfigError
from sensor.exporter import MetricsServer
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


def _get(url: str, *, auth: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_exporter_on_loopback_with_basic_auth() -> None:
    m = SensorMetrics()
    settings = MetricsSettings(
        listen="127.0.0.1:0", basic_auth_user="prom", basic_auth_password_sha256=hashlib.sha256(b"s3cret").hexdigest()
    )
    server = MetricsServer(m.registry, settings).start()
    try:
        assert _get(server.url)[0] == 401
        assert _get(server.url, auth="prom:wrong")[0] == 401
        status, body = _get(server.url, auth="prom:s3cret")
        assert status == 200 and "lync_sensor_build_info" in body
    finally:
        server.stop()


def test_exporter_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    server = MetricsServer(
        SensorMetrics().registry, MetricsSettings(listen="127.0.0.1:0", tls_cert_file=str(cert), tls_key_file=str(key))
    ).start()
    try:
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        status, body = _get(server.url, context=ctx)
        assert status == 200 and "lync_sensor_rule_violations" in body
    finally:
        server.stop()


def test_exporter_config_errors() -> None:
    with pytest.raises(ConfigError, match="go together"):
        MetricsServer(SensorMetrics().registry, MetricsSettings(listen="127.0.0.1:0", tls_cert_file="x.pem"))
    with pytest.raises(ConfigError, match="go together"):
        MetricsServer(SensorMetrics().registry, MetricsSettings(listen="127.0.0.1:0", basic_auth_user="u"))
    busy = MetricsServer(SensorMetrics().registry, MetricsSettings(listen="127.0.0.1:0")).start()
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            MetricsServer(SensorMetrics().registry, MetricsSettings(listen=f"127.0.0.1:{busy.port}"))
    finally:
        busy.stop()
