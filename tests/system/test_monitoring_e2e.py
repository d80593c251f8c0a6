"""End to end with the real servers: the sensor serves /metrics, Prometheus scrapes it and evaluates the shipped
alert rules, Alertmanager routes the alerts with the shipped config to webhook receivers this test runs, and
every dashboard panel's query runs against that Prometheus. All on loopback, on free ports, with temporary
configs whose only changes are short intervals and the receivers' URLs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLE_CONFIG, ROOT, capture
from tests.support.dashboards import load_dashboards, panel_queries, substitute

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("prometheus-alertmanager")),
        reason="Debian packages prometheus and prometheus-alertmanager are not installed (make setup installs them)",
    ),
]
ALERTS = ROOT / "deploy" / "prometheus" / "lync-sensor-alerts.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DEADLINE_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait_for(what: str, check: Any, timeout: float = DEADLINE_S) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
            if last:
                return last
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Hooks:
    """Webhook receivers: every Alertmanager notification, by receiver path."""

    port: int
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def alerts(self, receiver: str) -> list[dict[str, Any]]:
        return [a for n in self.received.get(receiver, []) for a in n["alerts"] if a["status"] == "firing"]

    def all_alerts(self) -> list[tuple[str, dict[str, Any]]]:
        return [(r, a) for r in self.received for a in self.alerts(r)]


def start_hooks() -> tuple[Hooks, ThreadingHTTPServer]:
    hooks = Hooks(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hooks.received.setdefault(self.path.strip("/"), []).append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", hooks.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hooks, server


@dataclass
class Stack:
    prometheus: str
    hooks: Hooks
    sensor_metrics: str


def _alertmanager_config(hooks: Hooks) -> dict[str, Any]:
    cfg = yaml.safe_load(ALERTMANAGER.read_text())
    for receiver in cfg["receivers"]:
        name = receiver["name"]
        receiver.clear()
        receiver.update(
            {
                "name": name,
                "webhook_configs": [{"url": f"http://127.0.0.1:{hooks.port}/{name}", "send_resolved": False}],
            }
        )

    def shorten(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = "1s"
        for child in route.get("routes", []):
            shorten(child)

    shorten(cfg["route"])
    cfg["route"].update({"group_wait": "1s", "group_interval": "1s"})
    return cfg


def _alert_rules() -> dict[str, Any]:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    return rules


@pytest.fixture
def stack_for(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[ThreadingHTTPServer] = []

    def start(capture_path: Path) -> Stack:
        hooks, hook_server = start_hooks()
        servers.append(hook_server)
        sensor_port, am_port, prom_port = free_port(), free_port(), free_port()
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sensor.cli",
                    "analyze",
                    str(capture_path),
                    "--config",
                    str(EXAMPLE_CONFIG),
                    "--lake",
                    str(tmp_path / "lake"),
                    "--no-progress",
                    "--serve",
                    "--set",
                    f"metrics.listen=127.0.0.1:{sensor_port}",
                ],
                stdout=(logs / "sensor.out").open("wb"),
                stderr=(logs / "sensor.err").open("wb"),
            )
        )
        metrics_url = f"http://127.0.0.1:{sensor_port}/metrics"

        def evaluated() -> bool:
            with urllib.request.urlopen(metrics_url, timeout=5) as r:
                text = r.read().decode()
            return any(
                line.startswith("lync_sensor_last_rule_evaluation_timestamp_seconds{") and float(line.split()[-1]) > 0
                for line in text.splitlines()
            )

        wait_for("the sensor to finish the analysis and serve /metrics", evaluated, timeout=180)
        (tmp_path / "am.yml").write_text(yaml.safe_dump(_alertmanager_config(hooks)))
        procs.append(
            subprocess.Popen(
                [
                    "prometheus-alertmanager",
                    f"--config.file={tmp_path / 'am.yml'}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                stdout=(logs / "am.out").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        (tmp_path / "rules.yml").write_text(yaml.safe_dump(_alert_rules()))
        prom_cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [
                {"job_name": "lync-sensor", "static_configs": [{"targets": [f"127.0.0.1:{sensor_port}"]}]}
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        procs.append(
            subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=(logs / "prom.out").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        prom = f"http://127.0.0.1:{prom_port}"
        wait_for(
            "Prometheus to scrape the sensor",
            lambda: get_json(f"{prom}/api/v1/query?query=" + urllib.parse.quote('up{job="lync-sensor"} == 1'))["data"][
                "result"
            ],
        )
        return Stack(prom, hooks, metrics_url)

    yield start
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    for s in servers:
        s.shutdown()


def query(prom: str, expr: str) -> dict[str, Any]:
    out: dict[str, Any] = get_json(f"{prom}/api/v1/query?query=" + urllib.parse.quote(expr))
    return out


def test_violations_page_and_dashboards_have_data(stack_for: Any) -> None:
    stack: Stack = stack_for(ROOT / "examples" / "lync-sample.pcap")
    expected = {
        "LyncServerLinkWithoutMTLS": "R1",
        "LyncPlaintextSIP": "R2",
        "LyncObsoleteTLS": "R5",
        "LyncWeakCipher": "R6",
        "LyncUnencryptedMedia": "R7",
        "LyncPlaintextWebContent": "R10",
    }

    def all_paged() -> set[str]:
        names = {a["labels"]["alertname"] for a in stack.hooks.alerts("pager")}
        return names if set(expected) <= names else set()

    wait_for("the critical alerts to reach the pager receiver", all_paged)
    pager = stack.hooks.alerts("pager")
    for alert in pager:
        labels = alert["labels"]
        assert labels["severity"] == "critical"
        assert labels["job"] == "lync-sensor"
        # the example config's sensor.id and sensor.site, as the sensor labels its series
        assert (labels["sensor"], labels["site"]) == ("sensor-a", "hq"), labels
        assert "sensor-a (site hq," in alert["annotations"]["summary"]
        assert alert["annotations"]["summary"] and alert["annotations"]["runbook_url"]
    paged_rules = {(a["labels"]["alertname"], a["labels"].get("rule_id")) for a in pager}
    for name, rule in expected.items():
        assert (name, rule) in paged_rules, (name, rule, sorted(paged_rules))
    # warnings (e.g. R1's unknown MTLS, R2's gateway trunk) go to the ticket receiver, never to the pager
    wait_for("warning alerts on the ticket receiver", lambda: stack.hooks.alerts("ticket"))
    assert all(a["labels"]["severity"] == "warning" for a in stack.hooks.alerts("ticket"))
    assert not any(a["labels"]["severity"] != "critical" for a in pager)
    # the sensor is healthy: no health alert anywhere
    assert not [a for _, a in stack.hooks.all_alerts() if a["labels"].get("family") == "health"]

    # every dashboard panel's query runs without error and returns data: with every site and sensor (All),
    # with this sensor chosen, and with another sensor chosen it returns none of this sensor's series
    empty: list[str] = []
    leaked: list[str] = []
    this = {"site": "hq", "sensor": "sensor-a"}
    other = {"site": ".*", "sensor": "sensor-b"}
    for path, dashboard in load_dashboards(ROOT / "grafana" / "dashboards"):
        for title, expr in panel_queries(dashboard):
            for chosen in ({}, this, other):
                values = {"__rate_interval": "1m", "__range": "5m", **chosen}
                res = query(stack.prometheus, substitute(expr, values))
                assert res["status"] == "success", (path.name, title, expr, res)
                series = [r["metric"] for r in res["data"]["result"]]
                if chosen is other:
                    if title.startswith("variable "):  # the site and sensor lists themselves span the fleet
                        continue
                    leaked += [f"{path.name}: {title}: {m}" for m in series if m.get("sensor") == "sensor-a"]
                elif not series:
                    empty.append(f"{path.name}: {title} ({chosen or 'All'}): {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert not leaked, "another sensor chosen, yet this sensor's series shown:\n" + "\n".join(leaked)


def test_compliant_capture_pages_nobody(stack_for: Any) -> None:
    stack: Stack = stack_for(capture("zeek__client-certificate.pcap"))
    # give rules and routing time to fire if they were going to: several evaluation and group intervals
    wait_for("alert rules evaluated", lambda: query(stack.prometheus, "ALERTS")["status"] == "success")
    time.sleep(12)
    firing = query(stack.prometheus, 'ALERTS{alertstate="firing"}')["data"]["result"]
    assert [r["metric"]["alertname"] for r in firing if r["metric"].get("family") != "health"] == []
    assert [a for _, a in stack.hooks.all_alerts() if a["labels"].get("family") != "health"] == []
    # and the sensor's metrics did reach Prometheus: the MTLS session is counted
    res = query(stack.prometheus, 'sum(lync_sensor_tls_sessions_total{version="TLSv12"})')["data"]["result"]
    assert res and float(res[0]["value"][1]) == 1.0
