"""The live sensor keeps reading ring files while its rules run (Parquet lake): a slow evaluation no longer
holds the capture's accounting back."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sensor.config import load_config
from sensor.live import LiveSensor
from sensor.metrics import SensorMetrics
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "lync-sample.pcap"

# A rule that takes seconds of DuckDB work on one thread and finds nothing.
SLOW_RULE = """-- id: R90
-- title: A slow rule (test)
-- severity: warning
-- requirement: "none"
-- source: [TEST]
-- description: Hashes 400 million integers, then finds nothing.
WITH slow AS MATERIALIZED (SELECT count(*) AS n FROM range(400000000) t(i) WHERE hash(i) % 7 = 3)
SELECT uid, 'never' AS evidence FROM flows, slow WHERE slow.n < 0
"""


def wait(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_ring_files_are_read_while_the_rules_run(tmp_path: Path) -> None:
    rules, spool, lake = tmp_path / "rules", tmp_path / "spool", tmp_path / "lake"
    rules.mkdir()
    (rules / "R90_slow.sql").write_text(SLOW_RULE)
    cfg = load_config(
        None,
        env={},
        overrides=[
            f'sensor.lake="{lake}"',
            f'sensor.rules="{rules}"',
            f'live.spool="{spool}"',
            "live.rule_interval=1",
            "live.rule_window=3600",
            "sensor.interval=1",
            "live.min_free_bytes=0",
        ],
    )
    # the sensor's clock runs from just after the example capture (2026-11-26 10:00-10:02 UTC), so the rule
    # window covers its records whatever the date
    offset = time.time() - datetime(2026, 11, 26, 10, 5, tzinfo=UTC).timestamp()
    sensor = LiveSensor(cfg, metrics=SensorMetrics(), capture=False, clock=lambda: time.time() - offset)
    runner = threading.Thread(target=sensor.run)
    runner.start()
    try:
        spool.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLE, spool / "live_00001_20261201000000.pcapng")
        assert wait(lambda: any((lake / "flows").rglob("*.parquet")), 60), "the first ring file was not exported"
        first = sensor._rules_thread
        # an evaluation that starts after the records are in the lake (so the rule has flows to read)
        assert wait(lambda: sensor._rules_thread is not first and sensor._rules_thread is not None, 30)
        evaluation = sensor._rules_thread
        assert evaluation is not None and evaluation.is_alive()
        before = sensor.status.packets
        shutil.copy(EXAMPLE, spool / "live_00002_20261201000001.pcapng")
        assert wait(lambda: sensor.status.packets > before, 30), "the ring file was not read"
        assert evaluation.is_alive(), "the evaluation ended before the file was read: the test proves nothing"
    finally:
        sensor.request_stop()
        runner.join(120)
    assert not runner.is_alive()
    assert sensor.status.last_rule_evaluation > 0
    assert sensor.status.packets == 2 * before
