"""The Prometheus alerts, their unit tests, the example Prometheus and Alertmanager configs and the runbook.

Runs the real promtool / amtool (and the Alertmanager binary for the inhibition rules), then checks the
conventions of deploy/prometheus/lync-sensor-alerts.yml statically: labels, annotations, runbook anchors,
rule-id coverage, metric names against what sensor.metrics.SensorMetrics exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from sensor.metrics import RULE_IDS, SensorMetrics

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "lync-sensor-alerts.yml"
PROM_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
PROM_CONFIG = PROM_DIR / "prometheus.yml"
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "deploy" / "runbook.md"
RUNBOOK_URL = "https://github.com/lync-sensor/lync-sensor/blob/main/deploy/runbook.md#"
SEVERITIES = {"critical", "warning", "info"}
RULE_SEVERITY = {"critical": "violation", "warning": "warning", "info": "info"}
JOB_SELECTOR = 'job="lync-sensor"'


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: prometheus / prometheus-alertmanager packages)")
    return path


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _compliance() -> list[dict[str, Any]]:
    return [a for a in _alerts() if a["labels"].get("family") != "health"]


def _rule_ids(text: str) -> set[str]:
    return set(re.findall(r"\bR\d+\b", text))


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (letters, digits, '-', '_' kept), spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        base = github_anchor(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
    return anchors


def exposed_metric_names() -> set[str]:
    """Metric and sample names of a fresh SensorMetrics() exposition (counters as *_total / *_created)."""
    text = generate_latest(SensorMetrics(CollectorRegistry()).registry).decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("# TYPE ", "# HELP ")):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


# --- the real tools ---------------------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    out = _run(_tool("promtool"), "check", "rules", str(ALERTS)).stdout
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_promtool_unit_tests_pass() -> None:
    assert PROM_TESTS, "no promtool unit tests in deploy/prometheus/tests/"
    out = _run(_tool("promtool"), "test", "rules", *map(str, PROM_TESTS)).stdout
    assert "SUCCESS" in out and "FAILED" not in out


def test_promtool_check_config(tmp_path: Path) -> None:
    # rule_files is relative to the config file's directory, so the check works from any working directory
    out = _run(_tool("promtool"), "check", "config", str(PROM_CONFIG), cwd=tmp_path).stdout
    assert "1 rule files found" in out
    config = yaml.safe_load(PROM_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["lync-sensor"]["static_configs"][0]["targets"] == ["127.0.0.1:9477"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    assert [(PROM_DIR / f).resolve() for f in config["rule_files"]] == [ALERTS.resolve()]


def test_amtool_check_config() -> None:
    out = _run(_tool("amtool"), "check-config", str(AM_CONFIG)).stdout
    assert "SUCCESS" in out


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=LyncPlaintextSIP", "rule_id=R2"], "pager"),
        (["severity=critical", "alertname=LyncSensorDown"], "pager"),
        (["severity=warning", "alertname=LyncPlaintextSIP", "rule_id=R2"], "ticket"),
        (["severity=warning", "alertname=LyncSensorCaptureDrops"], "ticket"),
        (["severity=info", "alertname=LyncProtectionInfo", "rule_id=R16"], "chat"),
        (["alertname=SomethingElse"], "ticket"),
        (["severity=critical", "alertname=LyncPlaintextSIP", "rule_id=R2", "sensor=edge-1", "site=dmz"], "pager"),
    ],
)
def test_alertmanager_routes(labels: list[str], receiver: str) -> None:
    out = _run(_tool("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels).stdout
    assert out.split() == [receiver]


def test_alertmanager_groups_by_alertname_rule_id_and_sensor() -> None:
    route = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))["route"]
    assert route["group_by"] == ["alertname", "rule_id", "site", "sensor"]
    for child in route["routes"]:
        assert {"site", "sensor"} <= set(child.get("group_by", route["group_by"])), child["receiver"]


# --- inhibition, on a real Alertmanager -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        _tool("prometheus-alertmanager")
    assert binary is not None
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={AM_CONFIG}",
            f"--storage.path={tmp_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Alertmanager did not start:\n{(tmp_path / 'alertmanager.log').read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _alert(alertname: str, severity: str, family: str, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": alertname, "severity": severity, "family": family, **labels}}


def test_inhibition_rules(alertmanager: str) -> None:
    job = {"job": "lync-sensor"}
    a = {**job, "instance": "sensor-a:9477", "sensor": "sensor-a", "site": "hq"}
    b = {**job, "instance": "sensor-b:9477", "sensor": "sensor-b", "site": "dmz"}
    alerts = {
        "down-a": _alert("LyncSensorDown", "critical", "health", **a),
        "sip-a": _alert("LyncPlaintextSIP", "critical", "signaling", rule_id="R2", **a),
        "drops-a": _alert("LyncSensorCaptureDrops", "warning", "health", source="live", **a),
        "sip-crit-b": _alert("LyncPlaintextSIP", "critical", "signaling", rule_id="R2", **b),
        "sip-warn-b": _alert("LyncPlaintextSIP", "warning", "signaling", rule_id="R2", **b),
        "sip-warn-r3-b": _alert("LyncPlaintextSIP", "warning", "signaling", rule_id="R3", **b),
        "mtls-warn-b": _alert("LyncServerLinkWithoutMTLS", "warning", "mtls", rule_id="R2", **b),
        "other-job": _alert("LyncPlaintextSIP", "critical", "signaling", rule_id="R2", job="x", instance="y:1"),
    }
    expected_muted = {"sip-a", "sip-warn-b"}

    def post(batch: list[dict[str, Any]]) -> None:
        req = urllib.request.Request(
            f"{alertmanager}/api/v2/alerts",
            data=json.dumps(batch).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200

    def muted() -> dict[str, bool]:
        with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts", timeout=5) as resp:
            got = json.load(resp)
        by_labels = {json.dumps(g["labels"], sort_keys=True): bool(g["status"]["inhibitedBy"]) for g in got}
        return {k: by_labels.get(json.dumps(v["labels"], sort_keys=True), False) for k, v in alerts.items()}

    post(list(alerts.values()))
    deadline = time.monotonic() + 10
    while {k for k, v in muted().items() if v} != expected_muted and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {k for k, v in muted().items() if v} == expected_muted

    # LyncSensorAbsent carries only job="lync-sensor": it mutes every compliance alert of the job, not others
    post([_alert("LyncSensorAbsent", "critical", "health", **job)])
    expected_muted = {"sip-a", "sip-crit-b", "sip-warn-b", "sip-warn-r3-b", "mtls-warn-b"}
    deadline = time.monotonic() + 10
    while {k for k, v in muted().items() if v} != expected_muted and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {k for k, v in muted().items() if v} == expected_muted


def test_alertmanager_notifies_each_sensor_apart(alertmanager: str) -> None:
    """The same alert and rule on two sensors of the fleet: two groups (two pages), each naming its sensor."""
    batch = [
        _alert(
            "LyncPlaintextSIP",
            "critical",
            "signaling",
            rule_id="R2",
            job="lync-sensor",
            instance=i,
            sensor=s,
            site=site,
        )
        for i, s, site in (("a:9477", "pool-a", "hq"), ("b:9477", "edge-1", "dmz"), ("c:9477", "pool-c", "hq"))
    ]
    req = urllib.request.Request(
        f"{alertmanager}/api/v2/alerts",
        data=json.dumps(batch).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts/groups", timeout=5) as resp:
            groups = json.load(resp)
        got = sorted((g["receiver"]["name"], g["labels"].get("sensor"), len(g["alerts"])) for g in groups)
        if len(got) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == [("pager", "edge-1", 1), ("pager", "pool-a", 1), ("pager", "pool-c", 1)]
    assert {g["labels"]["site"] for g in groups} == {"hq", "dmz"}


# --- conventions of the rules file ------------------------------------------------------------------------------


def test_every_alert_has_for_labels_and_annotations() -> None:
    anchors = runbook_anchors()
    alerts = _alerts()
    assert alerts
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"Lync[A-Za-z0-9]+", name), name
        assert re.fullmatch(r"\d+[smh]", str(alert.get("for", ""))), f"{name}: no for:"
        assert alert["labels"].get("severity") in SEVERITIES, name
        assert alert["labels"].get("family"), f"{name}: no family label"
        ann = alert["annotations"]
        for key in ("summary", "description", "runbook_url"):
            assert str(ann.get(key, "")).strip(), f"{name}: no {key}"
        url = ann["runbook_url"]
        assert url.startswith(RUNBOOK_URL), f"{name}: {url}"
        assert url.removeprefix(RUNBOOK_URL) in anchors, f"{name}: anchor of {url} not in {RUNBOOK.name}"
        assert JOB_SELECTOR in alert["expr"], f"{name}: expr does not select {JOB_SELECTOR}"


def test_alert_names_and_severities_are_unique() -> None:
    pairs = [(a["alert"], a["labels"]["severity"]) for a in _alerts()]
    assert len(pairs) == len(set(pairs))
    for name in {a["alert"] for a in _alerts()}:
        same = [a for a in _alerts() if a["alert"] == name]
        assert len({a["labels"]["family"] for a in same}) == 1, f"{name}: one family per alert name"
        assert len({a["annotations"]["runbook_url"] for a in same}) == 1, f"{name}: one runbook section"


def test_compliance_alerts_read_rule_violations_of_known_rules() -> None:
    compliance = _compliance()
    assert compliance
    for alert in compliance:
        name, expr, sev = alert["alert"], alert["expr"], alert["labels"]["severity"]
        assert "lync_sensor_rule_violations" in expr, name
        ids = _rule_ids(expr)
        assert ids, f"{name}: names no rule id"
        assert ids <= set(RULE_IDS), f"{name}: unknown rule ids {ids - set(RULE_IDS)}"
        assert f'severity="{RULE_SEVERITY[sev]}"' in expr, f"{name} ({sev}): must select the {RULE_SEVERITY[sev]}s"
        assert re.search(r"by \([^)]*\brule_id\b", expr), f"{name}: rule_id must reach Alertmanager"
        assert re.search(r"by \([^)]*\binstance\b", expr), f"{name}: instance must reach Alertmanager"
        for label in ("sensor", "site"):  # a fleet pages per sensor, and the page names it
            assert re.search(rf"by \([^)]*\b{label}\b", expr), f"{name}: {label} must reach Alertmanager"
            assert f"$labels.{label}" in alert["annotations"]["summary"], f"{name}: summary must name the {label}"
        assert "--sensor {{ $labels.sensor }}" in alert["annotations"]["description"], name
        assert ids <= _rule_ids(alert["annotations"]["description"]), f"{name}: description must name {ids}"


def test_every_rule_id_is_covered_once_per_severity() -> None:
    covered: dict[str, set[str]] = {sev: set() for sev in SEVERITIES}
    for alert in _compliance():
        ids = _rule_ids(alert["expr"])
        sev = alert["labels"]["severity"]
        assert not ids & covered[sev], f"{alert['alert']}: {ids & covered[sev]} already alerted at {sev}"
        covered[sev] |= ids
    assert set().union(*covered.values()) == set(RULE_IDS)


def test_health_alerts() -> None:
    health = {a["alert"]: a for a in _alerts() if a["labels"]["family"] == "health"}
    assert set(health) == {
        "LyncSensorDown",
        "LyncSensorAbsent",
        "LyncSensorNoCaptureTraffic",
        "LyncSensorCaptureDrops",
        "LyncSensorRuleEvaluationFailing",
        "LyncSensorRuleEvaluationStale",
        "LyncSensorLakeNotFlushed",
        "LyncSensorSpoolOverrun",
        "LyncSensorLakeDiskGuard",
    }
    assert "absent(up{" in health["LyncSensorAbsent"]["expr"]
    for name, alert in health.items():
        if name != "LyncSensorAbsent":  # absent() has no series, so no sensor to name
            assert "$labels.sensor" in alert["annotations"]["summary"], f"{name}: summary must name the sensor"
            assert "$labels.site" in alert["annotations"]["summary"], f"{name}: summary must name the site"
    assert "group_left (sensor, site)" in health["LyncSensorDown"]["expr"], "up has no sensor label of its own"
    assert 'source="live"' in health["LyncSensorNoCaptureTraffic"]["expr"]
    for name in ("LyncSensorRuleEvaluationStale", "LyncSensorLakeNotFlushed"):
        assert re.search(r"_timestamp_seconds\{[^}]*\} > 0", health[name]["expr"]), f"{name}: no guard for 0"


def test_metric_names_are_exposed_by_the_sensor() -> None:
    exposed = exposed_metric_names()
    assert "lync_sensor_rule_violations" in exposed
    for alert in _alerts():
        for metric in re.findall(r"\blync_sensor_[a-z_]+", alert["expr"]):
            assert metric in exposed, f"{alert['alert']}: {metric} is not exposed by SensorMetrics"


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for path in PROM_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                exp = case.get("exp_alerts") or []
                if not exp:
                    quiet.add(case["alertname"])
                for e in exp:
                    assert "summary" in e.get("exp_annotations", {}), f"{case['alertname']}: no summary expected"
                    firing.add((case["alertname"], e["exp_labels"]["severity"]))
    for alert in _alerts():
        name = alert["alert"]
        assert (name, alert["labels"]["severity"]) in firing, f"{name} ({alert['labels']['severity']}): never fires"
        assert name in quiet, f"{name}: no not-firing case"


def test_alertmanager_inhibits_on_labels_the_alerts_carry() -> None:
    config = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    names = {a["alert"] for a in _alerts()}
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"]:
            m = re.fullmatch(r'alertname="(\w+)"', matcher)
            if m:
                assert m.group(1) in names, matcher
    absent = next(r for r in config["inhibit_rules"] if 'alertname="LyncSensorAbsent"' in r["source_matchers"])
    assert absent["equal"] == ["job"], "absent() alerts carry only the selector's labels"


def test_runbook_links_resolve() -> None:
    anchors = runbook_anchors()
    text = RUNBOOK.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, f"runbook link #{target} has no heading"
    for alert in {a["alert"] for a in _alerts()}:
        assert alert.lower() in anchors, f"{alert}: no runbook section"


def test_github_anchor() -> None:
    assert github_anchor("LyncSensorDown") == "lyncsensordown"
    assert (
        github_anchor("Accepted exceptions: site policy and silences") == "accepted-exceptions-site-policy-and-silences"
    )
