"""Rule files: the shipped queries/ lint clean; broken files are reported with file and line, never fatal."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sensor.config import load_config
from sensor.rules.check import Checker
from sensor.rules.context import Window
from sensor.rules.loader import REQUIRED_KEYS, default_rules_dir, load_rules
from tests.conftest import EXAMPLE_CONFIG, ROOT, analyse, capture

GOOD = """-- id: R90
-- title: test rule
-- severity: warning
-- requirement: "a sentence"
-- source: [ENC]
-- description: every TLS flow
SELECT uid, 'tls flow' AS evidence FROM flows WHERE app = 'tls'
"""


def test_shipped_rules_lint_clean() -> None:
    rules, problems = load_rules(default_rules_dir())
    assert not problems, "\n".join(map(str, problems))
    assert [r.id for r in rules] == [f"R{i}" for i in range(1, 18)]
    checker = Checker(load_config(EXAMPLE_CONFIG, env={}))
    assert checker.lint() == []
    for rule in rules:
        for key in REQUIRED_KEYS:
            assert getattr(rule, key), f"{rule.path}: {key}"
        assert rule.source.startswith("["), rule.path
        assert rule.path.parent.parent == ROOT / "queries"


def test_rules_cli_list_and_lint() -> None:
    r = subprocess.run([sys.executable, "-m", "sensor.cli", "rules", "lint"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "17 rules loaded" in r.stdout
    r = subprocess.run([sys.executable, "-m", "sensor.cli", "rules", "list"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("\n") == 17 and "R17" in r.stdout


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (GOOD.replace("-- severity: warning", "-- severity: fatal"), 3, "severity 'fatal' is not one of"),
        (GOOD.replace('-- requirement: "a sentence"\n', ""), 1, "missing header key 'requirement'"),
        (GOOD.replace("-- id: R90", "-- id: X90"), 1, "is not of the form R<number>"),
        (GOOD.replace("SELECT uid", "DELETE FROM flows; SELECT uid"), 7, "must be one SELECT"),
        (GOOD.replace("SELECT uid, 'tls flow'", "SELECT uid, 'a'; SELECT 'b'"), 7, "single statement"),
    ],
)
def test_header_and_body_problems_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    (tmp_path / "x").mkdir()
    path = tmp_path / "x" / "R90_test.sql"
    path.write_text(text)
    rules, problems = load_rules(tmp_path)
    assert rules == []
    assert len(problems) == 1 and problems[0].line == line and message in problems[0].message
    assert str(problems[0]).startswith(f"{path}:{line}: ")


def test_sql_error_is_mapped_to_the_file_line(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    path = tmp_path / "a" / "R90_test.sql"
    path.write_text(GOOD.replace("WHERE app = 'tls'", "WHERE app = 'tls'\n  AND no_such_column > 1"))
    cfg = load_config(None, env={})
    problems = Checker(cfg, rules=tmp_path).lint()
    assert len(problems) == 1
    assert problems[0].line == 8 and "no_such_column" in problems[0].message


def test_duplicate_ids_and_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "R90_one.sql").write_text(GOOD)
    (tmp_path / "a" / "R90_two.sql").write_text(GOOD)
    (tmp_path / "a" / "R91_cols.sql").write_text(GOOD.replace("R90", "R91").replace(", 'tls flow' AS evidence", ""))
    checker = Checker(load_config(None, env={}), rules=tmp_path)
    messages = [p.message for p in checker.lint()]
    assert any("duplicate rule id R90" in m for m in messages)
    assert any("must return column(s) evidence" in m for m in messages)


def test_a_broken_rule_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    (rules / "tls" / "R90_broken.sql").write_text(GOOD.replace("R90", "R90").replace("FROM flows", "FROM nowhere"))
    (rules / "tls" / "R91_badsev.sql").write_text(
        GOOD.replace("R90", "R91").replace(
            "SELECT uid, 'tls flow' AS evidence", "SELECT uid, 'tls flow' AS evidence, 'critical' AS severity"
        )
    )
    (rules / "tls" / "R92_header.sql").write_text("-- id: R92\nSELECT 1\n")
    cfg = load_config(None, env={})
    checker = Checker(cfg, rules=rules)
    table = analyse(capture("arkime__openssl-ssl3.pcap")).table
    report = checker.check_table(table, tmp_path / "lake", now=datetime.now(UTC), store=False)
    failed = {r.rule.id for r in report.evaluation.failed}
    assert failed == {"R90", "R91"}
    assert {p.path.name for p in report.evaluation.problems} == {"R90_broken.sql", "R91_badsev.sql", "R92_header.sql"}
    fired = set(report.evaluation.findings.column("rule_id").to_pylist())
    assert {"R5", "R6"} <= fired  # SSLv3 + RC4 still found by the healthy rules
    # the CLI says so on stderr, still shows what the healthy rules found, and exits 2: the result is incomplete
    lake = tmp_path / "lake2"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor.cli",
            "analyze",
            str(capture("arkime__openssl-ssl3.pcap")),
            "--lake",
            str(lake),
            "--no-progress",
            "--set",
            f"sensor.rules={rules}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "R5 " in r.stdout and "rule error" not in r.stdout and "R90_broken.sql" not in r.stdout
    assert "rule error:" in r.stderr and "R90_broken.sql" in r.stderr
    assert "incomplete result: 2 of 19 rules failed and 1 rule file(s) could not be loaded" in r.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], capture_output=True, text=True, timeout=300)


def test_lint_catches_an_invalid_severity_value(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    path = tmp_path / "a" / "R91_badsev.sql"
    path.write_text(
        GOOD.replace("R90", "R91")
        .replace("-- severity: warning", "-- severity: per-row")
        .replace(
            "SELECT uid, 'tls flow' AS evidence",
            "SELECT uid, 'tls flow' AS evidence,\n       CASE WHEN tls_version = 'TLSv10' THEN 'info'\n"
            "            ELSE 'critical' END AS severity",
        )
    )
    problems = Checker(load_config(None, env={}), rules=tmp_path).lint()
    assert [(p.line, p.message) for p in problems] == [
        (9, "severity 'critical' is not one of violation, warning, info")
    ]
    r = run_cli("rules", "lint", "--rules", str(tmp_path))
    assert r.returncode == 2 and f"{path}:9: severity 'critical'" in r.stderr and "1 problem(s)" in r.stdout


def test_a_missing_rules_directory_goes_to_stderr(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    missing = tmp_path / "no-rules"
    ssl3 = str(capture("arkime__openssl-ssl3.pcap"))
    assert run_cli("analyze", ssl3, "--lake", str(lake), "--no-progress", "--no-rules").returncode == 0
    for args in (("check", "--lake", str(lake), "--rules", str(missing)), ("rules", "lint", "--rules", str(missing))):
        r = run_cli(*args)
        assert r.returncode == 2, r
        assert "rules directory does not exist" in r.stderr and "does not exist" not in r.stdout


def test_a_rule_cannot_read_files_outside_the_lake(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    (rules / "tls" / "R90_etc.sql").write_text(
        GOOD.replace("FROM flows WHERE app = 'tls'", "FROM flows, read_text('/etc/hostname') WHERE app = 'tls'")
    )
    lake = tmp_path / "lake"
    ssl3 = str(capture("arkime__openssl-ssl3.pcap"))
    assert run_cli("analyze", ssl3, "--lake", str(lake), "--no-progress", "--no-rules").returncode == 0
    cfg = load_config(None, env={})
    checker = Checker(cfg, rules=rules)
    (lint,) = checker.lint()
    assert lint.path.name == "R90_etc.sql" and lint.line == 7
    assert lint.message.startswith("a rule may read only the lake's flows and the site tables: Permission Error")
    report = checker.check_lake(lake, Window(), now=datetime.now(UTC), store=False)
    assert [r.rule.id for r in report.evaluation.failed] == ["R90"]
    assert "/etc/hostname" in report.evaluation.problems[0].message
    fired = set(report.evaluation.findings.column("rule_id").to_pylist())
    assert {"R5", "R6"} <= fired  # the other rules still read the lake
    # the in-memory path (analyze's, ingest-zeek's and the live sensor's rule step) is confined the same way
    table = analyse(capture("arkime__openssl-ssl3.pcap")).table
    report = checker.check_table(table, lake, now=datetime.now(UTC), store=False)
    assert [r.rule.id for r in report.evaluation.failed] == ["R90"]
    assert "Permission Error" in report.evaluation.problems[0].message
    r = run_cli("check", "--lake", str(lake), "--rules", str(rules))
    assert r.returncode == 2 and "R90_etc.sql:7: a rule may read only" in r.stderr and "R5 " in r.stdout
