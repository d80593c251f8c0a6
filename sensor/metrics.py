"""Every Prometheus metric of the sensor, declared in one place (names lync_sensor_*, bounded labels only).

Labels come from bounded sets: Lync role names (sensor.roles: the known roles, 'client', 'external'), the
application names of the flow schema, TLS version names, the ids of the loaded rules and severities. Addresses never
become labels. Every series also carries the sensor's constant labels `sensor` (sensor.id) and `site`
(sensor.site, "" = "default"): one value each per sensor, so a fleet's Prometheus tells sensors apart
by what they are, not only by their scrape address.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import duckdb
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sensor import __version__
from sensor.roles import ADDRESS_ROLES
from sensor.rules.loader import SEVERITIES, default_rules_dir, load_rules
from sensor.schema import APP_VALUES, TLS_VERSIONS

ROLES = ADDRESS_ROLES


def rule_ids(rules: str | Path = "") -> tuple[str, ...]:
    """The ids of the rules in a rules directory ("" = the rules shipped with the sensor, as sensor.rules), in
    rule order: the rule_id label values whose series exist from the start."""
    rules_list, _ = load_rules(Path(rules) if rules else default_rules_dir())
    return tuple(rule.id for rule in rules_list)


RULE_IDS = rule_ids()  # the shipped rules (R1..R17 today)
NO_APP = "none"
CONSTANT_LABELS = ("sensor", "site")
DEFAULT_SITE = "default"


def _bounded(value: object, allowed: Iterable[str], other: str = "other") -> str:
    v = str(value) if value is not None else NO_APP
    return v if v in allowed else other


def constant_labels(sensor_id: str, site: str = "") -> dict[str, str]:
    """The labels every series of one sensor carries: its id and its site ("" = "default")."""
    return {"sensor": sensor_id, "site": site or DEFAULT_SITE}


class ConstantLabels(Collector):
    """Every metric of an inner registry, each sample with the given constant labels added.

    prometheus_client has no constant labels; wrapping the registry keeps the metric objects (and every
    caller's `.inc()`/`.set()`) unchanged while the exposition names the sensor on every series."""

    def __init__(self, inner: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self.inner = inner
        self.labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            out.samples = [s._replace(labels={**s.labels, **self.labels}) for s in metric.samples]
            yield out


class SensorRegistry(CollectorRegistry):
    """The registry a sensor serves: its metrics under its constant labels. `get_sample_value` reads this
    sensor's sample when the constant labels are left out."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        super().__init__(auto_describe=True)
        self.constant_labels = dict(labels)

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return super().get_sample_value(name, {**self.constant_labels, **(labels or {})})


class SensorMetrics:
    """The sensor's metrics on one registry (injected, so tests use their own), every series labelled with
    the sensor's id and site."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        sensor_id: str = "sensor",
        site: str = "",
        rule_ids: Iterable[str] = RULE_IDS,
    ) -> None:
        labels = constant_labels(sensor_id, site)
        self.registry = registry if registry is not None else SensorRegistry(labels)
        r = CollectorRegistry(auto_describe=True)  # the metric objects; exposed through the wrapper below
        self.registry.register(ConstantLabels(r, labels))
        flow_labels = ("orig_role", "resp_role", "app")
        self.packets = Counter(
            "lync_sensor_packets", "Packets accounted to flows, by role pair and application.", flow_labels, registry=r
        )
        self.bytes = Counter(
            "lync_sensor_bytes",
            "Transport payload bytes of flows, by role pair and application.",
            flow_labels,
            registry=r,
        )
        self.flows = Counter("lync_sensor_flows", "Flows seen, by role pair and application.", flow_labels, registry=r)
        self.tls_sessions = Counter(
            "lync_sensor_tls_sessions",
            "TLS sessions by negotiated version (SSLv2..TLSv13) and role pair.",
            ("version", "orig_role", "resp_role"),
            registry=r,
        )
        self.plaintext_sip = Counter(
            "lync_sensor_plaintext_sip_flows",
            "Flows carrying plaintext SIP, by role pair.",
            ("orig_role", "resp_role"),
            registry=r,
        )
        self.unencrypted_media = Counter(
            "lync_sensor_unencrypted_media_flows",
            "Media flows judged unencrypted (RTP/RTCP), by role pair.",
            ("orig_role", "resp_role"),
            registry=r,
        )
        self.encrypted_media = Counter(
            "lync_sensor_encrypted_media_flows",
            "Media flows judged encrypted (SRTP/SRTCP), by role pair.",
            ("orig_role", "resp_role"),
            registry=r,
        )
        self.plaintext_http = Counter(
            "lync_sensor_plaintext_http_flows",
            "Flows carrying plaintext HTTP requests.",
            ("orig_role", "resp_role"),
            registry=r,
        )
        self.rule_violations = Gauge(
            "lync_sensor_rule_violations",
            "Flows breaking the rule in the last evaluation window, by severity.",
            ("rule_id", "severity"),
            registry=r,
        )
        self.findings = Counter(
            "lync_sensor_findings", "Findings since start, by rule and severity.", ("rule_id", "severity"), registry=r
        )
        self.rule_success = Gauge(
            "lync_sensor_rule_evaluation_success",
            "1 if the rule's last evaluation succeeded, 0 if it failed.",
            ("rule_id",),
            registry=r,
        )
        self.rule_duration = Gauge(
            "lync_sensor_rule_evaluation_duration_seconds",
            "Seconds the rule's last evaluation took.",
            ("rule_id",),
            registry=r,
        )
        self.rule_file_errors = Gauge(
            "lync_sensor_rule_file_errors",
            "Rule files that could not be loaded (see `lync-sensor rules lint`).",
            registry=r,
        )
        self.capture_packets = Counter(
            "lync_sensor_capture_packets", "Packets read from the capture source.", ("source",), registry=r
        )
        self.decode_errors = Counter(
            "lync_sensor_decode_errors", "Packets or bytes that could not be decoded, by kind.", ("kind",), registry=r
        )
        self.stream_events = Counter(
            "lync_sensor_stream_events",
            "Stream-layer events: IP fragments seen, datagrams reassembled, overlapping fragments dropped, "
            "reassemblies evicted at the cap, timed out or invalid; TCP retransmitted bytes that differed.",
            ("event",),
            registry=r,
        )
        self.capture_drops = Counter(
            "lync_sensor_capture_drops",
            "Packets dropped before the sensor saw them (kernel or capture engine).",
            ("source",),
            registry=r,
        )
        self.capture_restarts = Counter(
            "lync_sensor_capture_restarts", "Times the capture process (dumpcap) died and was restarted.", registry=r
        )
        self.spool_overruns = Counter(
            "lync_sensor_spool_overruns",
            "Capture ring files overwritten before the sensor read them (packets lost).",
            registry=r,
        )
        self.open_flows = Gauge("lync_sensor_open_flows", "Flows held in memory (open).", registry=r)
        self.flow_evictions = Counter(
            "lync_sensor_flow_evictions",
            "Open flows ended early because the flow table was full (sensor.flow_capacity).",
            registry=r,
        )
        self.disk_guard = Gauge(
            "lync_sensor_lake_disk_guard",
            "1 while lake writes are held back: free disk below live.min_free_bytes.",
            registry=r,
        )
        self.lake_write_errors = Counter(
            "lync_sensor_lake_write_errors", "Lake writes that failed (retried later).", registry=r
        )
        self.pending_records = Gauge(
            "lync_sensor_lake_pending_records",
            "Flow records waiting to be written to the lake (disk guard or write errors).",
            registry=r,
        )
        self.lake_spool_records = Gauge(
            "lync_sensor_lake_spool_records",
            "Records in the local spool of a DuckLake writer, waiting for the catalog (lake.spool).",
            registry=r,
        )
        self.lake_spool_dropped = Counter(
            "lync_sensor_lake_spool_dropped_records",
            "Records dropped from a full DuckLake spool (lake.spool_max_records), oldest first.",
            registry=r,
        )
        self.capture_running = Gauge("lync_sensor_capture_running", "1 while the capture process runs.", registry=r)
        self.last_flush = Gauge(
            "lync_sensor_last_flush_timestamp_seconds",
            "Unix time of the last successful write to the lake.",
            registry=r,
        )
        self.last_evaluation = Gauge(
            "lync_sensor_last_rule_evaluation_timestamp_seconds", "Unix time of the last rule evaluation.", registry=r
        )
        self.build_info = Gauge(
            "lync_sensor_build_info", "Build information (always 1).", ("version", "python"), registry=r
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        # Series of bounded sets exist from the start (at 0), so dashboards and alerts see data, not gaps.
        for rid in rule_ids:
            for sev in SEVERITIES:
                self.rule_violations.labels(rid, sev).set(0)
                self.findings.labels(rid, sev)
        for kind in ("non_ip", "damaged_bytes", "skipped_bytes"):
            self.decode_errors.labels(kind)
        for source in ("pcap", "live", "zeek"):
            self.capture_drops.labels(source)
            self.capture_packets.labels(source)

    def observe_flows(self, flows: pa.Table) -> None:
        """Count a batch of new flow interval records (packets and bytes per record; flows and facts once per
        flow, on its first record)."""
        if flows.num_rows == 0:
            return
        con = duckdb.connect()
        con.register("f", flows)
        for o, r, app, pkts, byts in con.execute(
            "SELECT orig_role, resp_role, coalesce(app, 'none'), sum(orig_pkts + resp_pkts), "
            "sum(orig_bytes + resp_bytes) FROM f GROUP BY ALL ORDER BY ALL"
        ).fetchall():
            labels = (_bounded(o, ROLES), _bounded(r, ROLES), _bounded(app, (*APP_VALUES, NO_APP)))
            self.packets.labels(*labels).inc(int(pkts or 0))
            self.bytes.labels(*labels).inc(int(byts or 0))
        firsts = con.execute(
            "SELECT orig_role, resp_role, coalesce(app, 'none'), tls_version, sip_plain, media_encrypted, "
            "coalesce(http_requests, 0) > 0, count(*) FROM f WHERE interval_seq = 0 GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        con.close()
        for o, r, app, tls, sip, enc, http, n in firsts:
            ro, rr = _bounded(o, ROLES), _bounded(r, ROLES)
            self.flows.labels(ro, rr, _bounded(app, (*APP_VALUES, NO_APP))).inc(n)
            if tls is not None:
                self.tls_sessions.labels(_bounded(tls, TLS_VERSIONS), ro, rr).inc(n)
            if sip:
                self.plaintext_sip.labels(ro, rr).inc(n)
            if enc is False:
                self.unencrypted_media.labels(ro, rr).inc(n)
            elif enc is True:
                self.encrypted_media.labels(ro, rr).inc(n)
            if http:
                self.plaintext_http.labels(ro, rr).inc(n)

    def observe_evaluation(
        self, results: Iterable[object], new_findings: pa.Table, file_errors: int, at: float
    ) -> None:
        """Per-rule gauges from one evaluation; findings counters from the findings new to the lake."""
        from sensor.rules.engine import RuleResult

        for res in results:
            assert isinstance(res, RuleResult)
            rid = res.rule.id  # bounded by the rule files
            self.rule_success.labels(rid).set(1 if res.ok else 0)
            self.rule_duration.labels(rid).set(res.seconds)
            if res.ok:
                for sev in SEVERITIES:
                    self.rule_violations.labels(rid, sev).set(res.by_severity.get(sev, 0))
        for row in new_findings.select(["rule_id", "severity"]).to_pylist():
            self.findings.labels(str(row["rule_id"]), _bounded(row["severity"], SEVERITIES)).inc()
        self.rule_file_errors.set(file_errors)
        self.last_evaluation.set(at)
