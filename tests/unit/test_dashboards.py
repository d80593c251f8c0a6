"""The Grafana dashboards and provisioning files: structure, metrics used, and PromQL that Prometheus accepts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sensor.metrics import RULE_IDS
from tests.support.dashboards import (
    DEFAULT_VARIABLES,
    Dashboard,
    exposed_metric_names,
    iter_panels,
    load_dashboards,
    metric_names,
    panel_queries,
    substitute,
    variable_expr,
)

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"
EXPECTED = {"lync-estate-overview.json", "lync-findings.json", "lync-sensor-health.json"}
DATASOURCE = "${datasource}"
SITE_QUERY = "label_values(lync_sensor_build_info, site)"
SENSOR_QUERY = 'label_values(lync_sensor_build_info{site=~"$site"}, sensor)'
INSTANCE_QUERY = 'label_values(lync_sensor_build_info{site=~"$site", sensor=~"$sensor"}, instance)'
FLEET_SELECTOR = 'site=~"$site", sensor=~"$sensor", instance=~"$instance"'
RULE_ID_QUERY = "label_values(lync_sensor_rule_violations, rule_id)"
EVIDENCE_COMMAND = "lync-sensor check --since 1h --json"
EVIDENCE_SQL = "SELECT * FROM read_parquet('<lake>/findings/**/*.parquet', hive_partitioning=true) WHERE rule_id ="

ALL = load_dashboards(DASHBOARDS)
BY_FILE = {path.name: d for path, d in ALL}
QUERIES = [(path.name, title, expr) for path, d in ALL for title, expr in panel_queries(d)]
QUERY_IDS = [f"{name}:{title}" for name, title, _ in QUERIES]


def _panels(d: Dashboard) -> list[dict[str, Any]]:
    return [p for p in iter_panels(d) if p.get("type") != "row"]


def _used(d: Dashboard) -> set[str]:
    return {name for _, expr in panel_queries(d) for name in metric_names(expr)}


def _rule_titles() -> dict[str, str]:
    """rule id -> title, from the `-- id:` / `-- title:` headers of queries/*/*.sql."""
    out: dict[str, str] = {}
    for path in (ROOT / "queries").glob("*/*.sql"):
        header = dict(re.findall(r"^-- (id|title): (.+)$", path.read_text(encoding="utf-8"), re.M))
        out[header["id"].strip()] = header["title"].strip()
    return out


# ------------------------------------------------------------------------------------------ structure


def test_the_three_dashboards_parse() -> None:
    assert {path.name for path, _ in ALL} == EXPECTED
    for path in DASHBOARDS.glob("*.json"):
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path


def test_uids_are_set_and_unique() -> None:
    uids = [d.get("uid") for _, d in ALL]
    assert all(isinstance(u, str) and u for u in uids), uids
    assert len(set(uids)) == len(uids), uids


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_settings(name: str) -> None:
    d = BY_FILE[name]
    assert d["schemaVersion"] >= 36
    assert d["tags"] == ["lync-sensor"]
    assert d["time"] == {"from": "now-6h", "to": "now"}
    assert d["refresh"] == "1m"
    assert d["title"]
    ids = [p["id"] for p in iter_panels(d)]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # the fleet view: site, then the sensors of the chosen sites, then their scrape targets
    names = [v["name"] for v in d["templating"]["list"]]
    assert names.index("site") < names.index("sensor") < names.index("instance"), names
    for var, query in (("site", SITE_QUERY), ("sensor", SENSOR_QUERY), ("instance", INSTANCE_QUERY)):
        v = variables[var]
        assert v["type"] == "query", var
        assert v["query"] == v["definition"] == query, var
        assert v["datasource"]["uid"] == DATASOURCE, var
        assert v["multi"] and v["includeAll"], var
    for v in d["templating"]["list"]:
        if v.get("includeAll"):
            assert v.get("allValue") == ".*", f"{name}: ${v['name']} 'All' must be the regex .*"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_has_the_datasource_and_a_query(name: str) -> None:
    panels = _panels(BY_FILE[name])
    assert panels
    for p in panels:
        title = p.get("title")
        assert p.get("datasource", {}).get("uid") == DATASOURCE, title
        assert p.get("datasource", {}).get("type") == "prometheus", title
        exprs = [t.get("expr", "") for t in p.get("targets", [])]
        assert any(isinstance(e, str) and e.strip() for e in exprs), f"{name}: panel {title!r} has no query"
        for t in p["targets"]:
            assert t.get("datasource", {}).get("uid") == DATASOURCE, title
            assert t.get("refId"), title
    for p in iter_panels(BY_FILE[name]):
        if p.get("type") == "row":
            assert "datasource" in p, p.get("title")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_select_the_sensor_job_site_sensor_and_instance(name: str) -> None:
    for p in _panels(BY_FILE[name]):
        for t in p["targets"]:
            expr = t["expr"]
            assert 'job="lync-sensor"' in expr, (p["title"], expr)
            assert 'instance=~"$instance"' in expr, (p["title"], expr)
            # every lync_sensor_* selector filters by the fleet variables (up has no sensor label: it is joined)
            for selector in re.findall(r"\blync_sensor_\w+\{[^}]*\}", expr):
                assert FLEET_SELECTOR in selector, (p["title"], selector)
            assert re.findall(r"\blync_sensor_\w+\{", expr), (p["title"], expr)
            # a per-target aggregation keeps the sensor and its site, so the legend can name them
            for clause in re.findall(r"(?<!topk )\bby \(([^)]*)\)", expr):  # topk by: one build_info a target
                labels = {label.strip() for label in clause.split(",")}
                if "instance" in labels:
                    assert {"site", "sensor"} <= labels, (p["title"], expr)
            assert "{{instance}}" not in (t.get("legendFormat") or ""), (p["title"], "name the sensor, not the target")


# ------------------------------------------------------------------------------------------ metrics


def test_exposed_metric_names_are_the_documented_series() -> None:
    documented = {
        "lync_sensor_packets_total",
        "lync_sensor_bytes_total",
        "lync_sensor_flows_total",
        "lync_sensor_tls_sessions_total",
        "lync_sensor_plaintext_sip_flows_total",
        "lync_sensor_unencrypted_media_flows_total",
        "lync_sensor_encrypted_media_flows_total",
        "lync_sensor_plaintext_http_flows_total",
        "lync_sensor_rule_violations",
        "lync_sensor_findings_total",
        "lync_sensor_rule_evaluation_success",
        "lync_sensor_rule_evaluation_duration_seconds",
        "lync_sensor_rule_file_errors",
        "lync_sensor_capture_packets_total",
        "lync_sensor_decode_errors_total",
        "lync_sensor_capture_drops_total",
        "lync_sensor_last_flush_timestamp_seconds",
        "lync_sensor_last_rule_evaluation_timestamp_seconds",
        "lync_sensor_build_info",
    }
    assert documented <= exposed_metric_names()


@pytest.mark.parametrize(("name", "title", "expr"), QUERIES, ids=QUERY_IDS)
def test_every_query_uses_only_exported_metrics(name: str, title: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{name}: {title!r} reads no metric: {expr}"
    unknown = names - exposed_metric_names() - {"up"}
    assert not unknown, f"{name}: {title!r} uses metrics the sensor does not export: {sorted(unknown)}"


def test_dashboards_cover_their_subjects() -> None:
    assert _used(BY_FILE["lync-estate-overview.json"]) >= {
        "lync_sensor_rule_violations",
        "lync_sensor_tls_sessions_total",
        "lync_sensor_encrypted_media_flows_total",
        "lync_sensor_unencrypted_media_flows_total",
        "lync_sensor_packets_total",
        "lync_sensor_flows_total",
        "lync_sensor_plaintext_sip_flows_total",
        "lync_sensor_plaintext_http_flows_total",
    }
    assert _used(BY_FILE["lync-findings.json"]) >= {"lync_sensor_findings_total", "lync_sensor_rule_violations"}
    assert _used(BY_FILE["lync-sensor-health.json"]) >= {
        "up",
        "lync_sensor_capture_packets_total",
        "lync_sensor_capture_drops_total",
        "lync_sensor_decode_errors_total",
        "lync_sensor_rule_evaluation_success",
        "lync_sensor_rule_evaluation_duration_seconds",
        "lync_sensor_rule_file_errors",
        "lync_sensor_last_flush_timestamp_seconds",
        "lync_sensor_last_rule_evaluation_timestamp_seconds",
        "lync_sensor_build_info",
    }
    exprs = [e for _, e in panel_queries(BY_FILE["lync-estate-overview.json"])]
    assert any("topk(" in e and "by (orig_role, resp_role)" in e for e in exprs)
    assert any("by (version)" in e and "lync_sensor_tls_sessions_total" in e for e in exprs)


# ------------------------------------------------------------------------------------------ content


def test_compliance_panel_names_every_rule_with_its_title() -> None:
    titles = _rule_titles()
    assert sorted(titles) == sorted(RULE_IDS)
    panel = next(p for p in _panels(BY_FILE["lync-estate-overview.json"]) if p["title"] == "Compliance per rule")
    assert "lync_sensor_rule_violations" in panel["targets"][0]["expr"]
    assert "by (rule_id, severity)" in panel["targets"][0]["expr"]
    for rule_id, title in titles.items():
        assert f"**{rule_id}** — {title}" in panel["description"], rule_id


def test_findings_dashboard_filters_by_rule_and_tells_how_to_get_evidence() -> None:
    d = BY_FILE["lync-findings.json"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["rule_id"]["type"] == "query"
    assert variables["rule_id"]["query"] == RULE_ID_QUERY
    exprs = [e for title, e in panel_queries(d) if not title.startswith("variable ")]
    rule_exprs = [e for e in exprs if "rule_violations" in e or "findings_total" in e]
    assert rule_exprs and all('rule_id=~"$rule_id"' in e for e in rule_exprs)
    assert any("increase(lync_sensor_findings_total" in e and "[$__range]" in e for e in exprs)
    described = [p for p in _panels(d) if EVIDENCE_COMMAND in p.get("description", "")]
    assert described and all(EVIDENCE_SQL in p["description"] for p in described)
    assert any(p.get("repeat") == "rule_id" for p in iter_panels(d))
    assert any("deploy/runbook.md" in link.get("title", "") and link.get("url") for link in d["links"])


# ------------------------------------------------------------------------------------------ provisioning


def _yaml_scalars(path: Path) -> dict[str, str]:
    """key -> value of the `key: value` lines of a small YAML file (no YAML library in the dev dependencies)."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\s*(?:- )?(\w+):\s*([^#\s][^#]*?)\s*(?:#.*)?$", line):
            out[m.group(1)] = m.group(2)
    return out


def test_provisioning_files() -> None:
    ds = _yaml_scalars(PROVISIONING / "datasources" / "prometheus.yml")
    assert ds["apiVersion"] == "1"
    assert ds["type"] == "prometheus"
    assert ds["uid"] == "prometheus"
    assert ds["url"] == "http://127.0.0.1:9090"
    dash = _yaml_scalars(PROVISIONING / "dashboards" / "lync-sensor.yml")
    assert dash["apiVersion"] == "1"
    assert dash["type"] == "file"
    assert dash["path"] == "/var/lib/grafana/dashboards/lync-sensor"
    readme = (GRAFANA / "README.md").read_text(encoding="utf-8")
    assert "/var/lib/grafana/dashboards/lync-sensor" in readme


# ------------------------------------------------------------------------------------------ helpers


def test_panel_queries_reads_collapsed_rows_and_variables() -> None:
    ds = {"type": "prometheus", "uid": DATASOURCE}
    d: Dashboard = {
        "panels": [
            {"type": "stat", "title": "top", "targets": [{"expr": "up"}]},
            {
                "type": "row",
                "title": "r",
                "collapsed": True,
                "panels": [{"type": "timeseries", "title": "nested", "targets": [{"expr": "a_total"}, {"x": 1}]}],
            },
        ],
        "templating": {
            "list": [
                {"type": "datasource", "name": "datasource", "query": "prometheus"},
                {"type": "query", "name": "s", "datasource": ds, "query": "label_values(b_info, instance)"},
                {"type": "query", "name": "d", "query": {"query": "query_result(c_x > 0)", "refId": "V"}},
                {"type": "query", "name": "e", "query": "", "definition": 'label_values(d_y{a="1"}, a)'},
                {"type": "query", "name": "n", "query": "label_values(job)"},
                {"type": "custom", "name": "c", "query": "a,b"},
            ]
        },
    }
    assert panel_queries(d) == [
        ("top", "up"),
        ("nested", "a_total"),
        ("variable s", "b_info"),
        ("variable d", "c_x > 0"),
        ("variable e", 'd_y{a="1"}'),
    ]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (a, b) (rate(x_total{job="j", instance=~"$instance"}[$__rate_interval]))', {"x_total"}),
        ("sum(rate(a_total[5m])) by (b) / on (c) group_left (d) b_x offset 5m", {"a_total", "b_x"}),
        ("topk(10, x) > bool 1e3 or vector(0) unless on() y", {"x", "y"}),
        ("time() - max by (instance) (t_seconds > 0)", {"t_seconds"}),
        ('{__name__="n_total", a="by"}', {"n_total"}),
        ("rate(x[5m:1m] @ start())", {"x"}),
        ('label_replace(z, "dst", "$1", "src", "(.*)")', {"z"}),
        ("label_values(lync_sensor_build_info, instance)", {"lync_sensor_build_info"}),
        ("label_values(job)", set()),
        ("vector(Inf) + scalar(NaN)", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_variable_expr() -> None:
    assert variable_expr('label_values(up{job="a"}, instance)') == 'up{job="a"}'
    assert variable_expr("label_names()") is None
    assert variable_expr(" sum(up) ") == "sum(up)"


def test_substitute() -> None:
    expr = 'rate(x{instance=~"$instance", r=~"${rule_id:regex}", s=~"[[severity]]"}[$__rate_interval]) [$__range]'
    assert substitute(expr) == 'rate(x{instance=~".*", r=~".*", s=~".*"}[1m]) [1h]'
    assert substitute("$__range_s $__range_ms $__interval", {"__interval": "30s"}) == "3600 3600000 30s"
    assert substitute('x{instance=~"${instance}"}', {"instance": "a:9100"}) == 'x{instance=~"a:9100"}'
    assert substitute('label_replace(a, "b", "$1", "c", "(.*)")') == 'label_replace(a, "b", "$1", "c", "(.*)")'
    with pytest.raises(KeyError, match="nosuch"):
        substitute('x{a=~"$nosuch"}')
    assert DEFAULT_VARIABLES["__rate_interval"] == "1m"


@pytest.mark.parametrize(("name", "title", "expr"), QUERIES, ids=QUERY_IDS)
def test_substituted_queries_have_no_grafana_variables(name: str, title: str, expr: str) -> None:
    assert "$" not in re.sub(r'"\$\d+"', "", substitute(expr)), f"{name}: {title!r}"


# ------------------------------------------------------------------------------------------ PromQL validity


def _rule_file(tmp_path: Path) -> Path:
    """Every query as a recording rule (JSON is YAML), so that promtool parses it with Prometheus' parser."""
    rules = [{"record": f"dashboard:query:{i}", "expr": substitute(expr)} for i, (_, _, expr) in enumerate(QUERIES)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    return path


@pytest.mark.prometheus
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(_rule_file(tmp_path))], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Every query is also run against a real Prometheus scraping the sensor in tests/system/test_monitoring_e2e.py.
