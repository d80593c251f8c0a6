"""`lync-sensor check` over a lake: windows, findings written once, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

from tests.conftest import EXAMPLE_CONFIG, ROOT

EXAMPLE = ROOT / "examples" / "lync-sample.pcap"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], capture_output=True, text=True, timeout=300)


def findings(lake: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    # through Arrow: DuckDB's own conversion of TIMESTAMPTZ to Python needs pytz, which is not a dependency
    table = con.sql(
        f"SELECT rule_id, severity, uid, orig_h, resp_h, evidence, source, title, ts FROM "
        f"read_parquet('{lake}/findings/**/*.parquet', hive_partitioning=true)"
    ).to_arrow_table()
    return [tuple(row.values()) for row in table.to_pylist()]


def test_check_writes_findings_once_and_gates(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    cfg = ("--config", str(EXAMPLE_CONFIG), "--lake", str(lake))
    assert run("analyze", str(EXAMPLE), *cfg, "--no-progress", "--no-rules").returncode == 0
    assert not (lake / "findings").exists()
    r = run("check", *cfg)
    assert r.returncode == 1, r.stderr  # violations
    assert "R2" in r.stdout and "Wrote" in r.stdout
    first = findings(lake)
    assert len(first) == 19
    assert all(row[5] and row[6].startswith("[") and row[7] for row in first)
    # the same window again: nothing new
    r = run("check", *cfg)
    assert r.returncode == 1 and "(0 new)" in r.stdout
    assert len(findings(lake)) == len(first)
    # a window before the capture (2026-11-26T10:00Z) holds no flows: no finding, exit 0
    r = run("check", *cfg, "--from", "2026-11-25T00:00:00Z", "--to", "2026-11-25T01:00:00Z")
    assert r.returncode == 0 and "over 0 flow records" in r.stdout
    # a window covering only the first minute holds the TLS handshakes but not the long call's later records
    r = run("check", *cfg, "--from", "2026-11-26T10:00:00Z", "--to", "2026-11-26T10:00:30Z", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 1 and {"R1", "R2", "R5", "R6"} <= {row["rule_id"] for row in rows}


def test_check_errors(tmp_path: Path) -> None:
    r = run("check", "--lake", str(tmp_path / "nolake"))
    assert r.returncode == 2 and "no flows table" in r.stderr
    lake = tmp_path / "lake"
    assert run("analyze", str(EXAMPLE), "--lake", str(lake), "--no-progress", "--no-rules").returncode == 0
    r = run("check", "--lake", str(lake), "--since", "fortnight")
    assert r.returncode == 2 and "--since" in r.stderr and r.stderr.count("\n") == 1
    r = run("check", "--lake", str(lake), "--from", "yesterday")
    assert r.returncode == 2 and "ISO 8601" in r.stderr
    r = run("check", "--lake", str(lake), "--since", "15m")
    assert r.returncode == 0 and "over 0 flow records" in r.stdout  # the capture is from 2026-11-26T10:00
