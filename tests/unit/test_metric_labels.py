"""Metric label sets come from the vocabularies, not from lists in sensor.metrics: roles and the loaded rules."""

from __future__ import annotations

from pathlib import Path

from sensor.metrics import ROLES, RULE_IDS, SensorMetrics, rule_ids
from sensor.roles import CLIENT, EXTERNAL, KNOWN_ROLES
from sensor.rules.loader import default_rules_dir, load_rules

R5 = default_rules_dir() / "tls" / "R5_tls_version.sql"


def test_role_labels_are_the_role_vocabulary() -> None:
    assert (*KNOWN_ROLES, CLIENT, EXTERNAL) == ROLES


def test_rule_ids_are_the_shipped_rules() -> None:
    shipped, problems = load_rules(default_rules_dir())
    assert not problems
    assert tuple(r.id for r in shipped) == RULE_IDS == rule_ids("")
    assert RULE_IDS[0] == "R1" and "R17" in RULE_IDS


def test_series_exist_for_the_rules_of_a_rules_directory(tmp_path: Path) -> None:
    """A site's own rules directory (sensor.rules) gets its own rule_id series from the start, at 0."""
    text = R5.read_text(encoding="utf-8")
    for rid in ("R5", "R42"):
        (tmp_path / f"{rid}_tls_version.sql").write_text(text.replace("-- id: R5\n", f"-- id: {rid}\n", 1))
    ids = rule_ids(tmp_path)
    assert ids == ("R5", "R42")
    sample = SensorMetrics(rule_ids=ids).registry.get_sample_value
    assert sample("lync_sensor_rule_violations", {"rule_id": "R42", "severity": "violation"}) == 0
    assert sample("lync_sensor_findings_total", {"rule_id": "R42", "severity": "info"}) == 0
    assert sample("lync_sensor_rule_violations", {"rule_id": "R1", "severity": "violation"}) is None
    assert (
        SensorMetrics().registry.get_sample_value("lync_sensor_rule_violations", {"rule_id": "R17", "severity": "info"})
        == 0
    )
