"""No rule convicts on a fact the bytes did not show: every rule, every fact it reads, set to null one at a time.

For each rule, must-fire flow records carry only the facts that rule needs to fire (written with the flow
schema, no capture). The facts a rule reads are derived from its SQL (the flow columns it names), so a new
rule, or a rule that starts reading another fact, is covered without touching this file; only its must-fire
records have to be added, and test_every_rule_has_must_fire_records says so. queries/README.md documents the
outcome of each null fact ("Null facts"), and test_readme_documents_every_null_fact keeps it true.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from sensor.config import load_config
from sensor.rules.check import Checker, CheckReport
from sensor.rules.loader import Rule, default_rules_dir, load_rules
from sensor.schema import FLOW_SCHEMA
from sensor.synth.rule_cases import RULE_CASE_ROLES, flow_record
from tests.conftest import ROOT

SITE = """
[sensor]
id = "sensor-t"
[topology.roles]
pstn_gateway = ["10.0.3.5", "10.0.3.7"]
[topology.networks]
internal = ["10.0.0.0/8"]
[policy.gateways."10.0.3.5"]
transport = "tcp"
[policy.gateways."10.0.3.7"]
transport = "tls"
"""
NOW = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
RANK = {"none": 0, "info": 1, "warning": 2, "violation": 3}
ABBREV = {"violation": "V", "warning": "W", "info": "I"}

# What identifies the flow rather than what its bytes showed: conn.log columns, the roles and service the
# site's topology and the port catalogue give every flow, bookkeeping. Never null in the lake.
IDENTITY = frozenset(
    {
        "ts", "ts_end", "flow_start", "interval_seq", "uid", "sensor_id", "source", "orig_h", "orig_p", "resp_h",
        "resp_p", "proto", "ip_version", "service", "service_source", "orig_role", "resp_role", "duration",
    }
)  # fmt: skip
FACTS = tuple(name for name in FLOW_SCHEMA.names if name not in IDENTITY)

FE1, FE2 = RULE_CASE_ROLES["front_end"]
(MED,), (EDGE_INT,) = RULE_CASE_ROLES["mediation"], RULE_CASE_ROLES["edge_internal"]
(EDGE,), (AV,) = RULE_CASE_ROLES["edge_external"], RULE_CASE_ROLES["edge_external_av"]
TLS_GW = "10.0.3.7"
CLIENT, PARTNER = "10.0.5.60", "198.51.100.20"
EMPTY_CERT = {"app": "tls", "tls_cert_requested": True, "tls_client_cert": False}
PLAIN_RTP = {"app": "rtp", "media_encrypted": False, "media_confidence": 0.9, "orig_pkts": 10, "resp_pkts": 10}

# (rule, case, flow record carrying only the facts the rule needs, severity it must fire with)
MUST_FIRE: list[tuple[str, str, dict[str, object], str]] = [
    ("R1", "cleartext", flow_record((FE1, 50101), (FE2, 5061), orig_first_byte=0x49), "violation"),
    ("R1", "empty client certificate", flow_record((FE1, 50102), (FE2, 5061), **EMPTY_CERT), "violation"),
    ("R2", "plaintext SIP over TCP", flow_record((CLIENT, 50103), (FE1, 5061), sip_plain=True), "violation"),
    ("R2", "plaintext SIP over UDP", flow_record((CLIENT, 50104), (FE1, 5060), "udp", sip_plain=True), "violation"),
    ("R2", "TLS trunk in clear", flow_record((MED, 50105), (TLS_GW, 5067), sip_plain=True), "violation"),
    ("R3", "cleartext", flow_record((CLIENT, 50106), (FE1, 5061), orig_first_byte=0x52), "violation"),
    ("R3", "plaintext SIP", flow_record((CLIENT, 50107), (FE1, 5061), sip_plain=True), "violation"),
    ("R3", "SSL 3.0", flow_record((CLIENT, 50108), (FE1, 5061), tls_version="SSLv3"), "violation"),
    ("R4", "cleartext", flow_record((PARTNER, 50109), (EDGE, 5061), orig_first_byte=0x49), "violation"),
    ("R4", "plaintext SIP", flow_record((PARTNER, 50110), (EDGE, 5061), sip_plain=True), "violation"),
    ("R4", "empty client certificate", flow_record((PARTNER, 50111), (EDGE, 5061), **EMPTY_CERT), "violation"),
    ("R5", "SSL 3.0", flow_record((CLIENT, 50112), (FE1, 443), app="tls", tls_version="SSLv3"), "violation"),
    ("R5", "TLS 1.0", flow_record((CLIENT, 50113), (FE1, 443), app="tls", tls_version="TLSv10"), "info"),
    ("R6", "RC4", flow_record((CLIENT, 50114), (FE1, 443), tls_cipher="0x0005"), "violation"),
    ("R6", "3DES", flow_record((CLIENT, 50115), (FE1, 443), tls_cipher="0x000A"), "warning"),
    ("R7", "plain RTP", flow_record((CLIENT, 50116), ("10.0.5.61", 50200), "udp", **PLAIN_RTP), "violation"),
    ("R8", "(a) plain media to the next hop",
     flow_record((MED, 50117), (FE2, 50400), "udp", **{**PLAIN_RTP, "app": None}), "violation"),
    ("R8", "(b) empty client certificate", flow_record((MED, 50118), (TLS_GW, 5067), **EMPTY_CERT), "violation"),
    ("R8", "(b) TLS trunk in clear", flow_record((MED, 50119), (TLS_GW, 5067), sip_plain=True), "violation"),
    ("R9", "cleartext PSOM", flow_record((CLIENT, 50120), (FE1, 8057), orig_first_byte=0x00), "violation"),
    ("R10", "address book over HTTP",
     flow_record((CLIENT, 50121), (FE1, 80), http_requests=1, http_paths=["/abs/handler/x.lsabs"]), "violation"),
    ("R11", "plaintext SIP", flow_record((FE1, 50122), (EDGE_INT, 5061), sip_plain=True), "violation"),
    ("R11", "plaintext HTTP", flow_record((CLIENT, 50123), (EDGE_INT, 4443), http_requests=1), "violation"),
    ("R11", "undocumented UDP service",
     flow_record((CLIENT, 50124), (EDGE_INT, 9999), "udp", orig_first_byte=0x01), "violation"),
    ("R11", "undocumented TCP port", flow_record((CLIENT, 50125), (EDGE_INT, 9999)), "violation"),
    ("R12", "undocumented listener", flow_record((PARTNER, 50126), (EDGE, 8443)), "warning"),
    ("R13", "XMPP in clear", flow_record((PARTNER, 50127), (EDGE, 5269), orig_first_byte=0x3C), "violation"),
    ("R14", "real TLS on the A/V Edge", flow_record((PARTNER, 50128), (AV, 443), app="tls"), "info"),
    ("R15", "certificate names another host",
     flow_record((CLIENT, 50129), (FE2, 443), tls_sni="lyncweb.contoso.com", tls_cert_names=["other.fabrikam.com"]),
     "warning"),
    ("R16", "DCOM between Front Ends", flow_record((FE1, 50130), (FE2, 135)), "info"),
    ("R17", "undocumented server port", flow_record((FE1, 50131), (MED, 5069)), "warning"),
]  # fmt: skip

RULES = {rule.id: rule for rule in load_rules(default_rules_dir())[0]}


def facts_read(rule: Rule) -> set[str]:
    """The flow facts a rule's SQL names (string literals and comments left out)."""
    code = re.sub(r"'(?:[^']|'')*'|--[^\n]*", " ", rule.sql)
    return set(re.findall(r"[a-z_][a-z0-9_]*", code)) & set(FACTS)


def nulled(row: dict[str, object], fact: str) -> dict[str, object]:
    return {**row, fact: None, "uid": f"{row['uid']}-null-{fact}"}


VARIANTS: list[tuple[str, str, str, dict[str, object], dict[str, object]]] = [
    (rule, case, fact, row, nulled(row, fact))
    for rule, case, row, _ in MUST_FIRE
    for fact in sorted(facts_read(RULES[rule]))
    if row[fact] is not None
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> CheckReport:
    root = tmp_path_factory.mktemp("null-facts")
    (root / "site.toml").write_text(SITE)
    rows = [row for _, _, row, _ in MUST_FIRE] + [variant for *_, variant in VARIANTS]
    table = pa.Table.from_pylist(rows, schema=FLOW_SCHEMA)
    return Checker(load_config(root / "site.toml", env={})).check_table(table, root / "lake", now=NOW, store=False)


def judged(report: CheckReport, uid: object) -> dict[str, str]:
    """rule -> the highest severity it gave the flow."""
    out: dict[str, str] = {}
    for f in report.evaluation.findings.to_pylist():
        if f["uid"] == uid and RANK[f["severity"]] > RANK[out.get(f["rule_id"], "none")]:
            out[f["rule_id"]] = f["severity"]
    return out


def test_every_rule_has_must_fire_records() -> None:
    missing = sorted(set(RULES) - {rule for rule, *_ in MUST_FIRE}, key=lambda r: int(r[1:]))
    assert not missing, f"add must-fire flow records to MUST_FIRE for {', '.join(missing)}"


@pytest.mark.parametrize(
    ("rule", "row"), [(r, row) for r, _, row, _ in MUST_FIRE], ids=[f"{r}-{c}" for r, c, *_ in MUST_FIRE]
)
def test_must_fire_records_carry_only_what_the_rule_reads(rule: str, row: dict[str, object]) -> None:
    carried = {fact for fact in FACTS if row[fact] is not None}
    assert carried <= facts_read(RULES[rule]), f"{rule} does not read {sorted(carried - facts_read(RULES[rule]))}"


@pytest.mark.parametrize(
    ("rule", "row", "severity"), [(r, row, s) for r, _, row, s in MUST_FIRE], ids=[f"{r}-{c}" for r, c, *_ in MUST_FIRE]
)
def test_must_fire_record_fires(report: CheckReport, rule: str, row: dict[str, object], severity: str) -> None:
    assert not report.evaluation.problems, report.evaluation.problems
    assert judged(report, row["uid"]).get(rule) == severity


@pytest.mark.parametrize(
    ("rule", "row", "variant"),
    [(rule, row, variant) for rule, _, _, row, variant in VARIANTS],
    ids=[f"{rule}-{case}-{fact}" for rule, case, fact, *_ in VARIANTS],
)
def test_no_rule_convicts_on_a_null_fact(
    report: CheckReport, rule: str, row: dict[str, object], variant: dict[str, object]
) -> None:
    after = judged(report, variant["uid"])
    assert after.get(rule) != "violation", f"{rule} still convicts with the fact null"
    before = judged(report, row["uid"])
    added = {r for r, s in after.items() if s == "violation" and before.get(r) != "violation"}
    assert not added, f"a null fact made {sorted(added)} convict"


def measured_table(report: CheckReport) -> list[str]:
    """The 'Null facts' table of queries/README.md as the rules behave today."""
    lines = []
    for rule, case, _, severity in MUST_FIRE:
        unknown, nothing = [], []
        for r, c, fact, _, variant in VARIANTS:
            if (r, c) != (rule, case):
                continue
            outcome = judged(report, variant["uid"]).get(rule)
            if outcome is None:
                nothing.append(fact)
            else:
                unknown.append(f"{fact} ({ABBREV[outcome]})")
        if not unknown and not nothing:
            nothing.append("(fires on the connection alone: no fact needed)")
        lines.append(f"| {rule} | {case} | {ABBREV[severity]} | {', '.join(unknown) or '-'} | {', '.join(nothing)} |")
    return lines


def test_readme_documents_every_null_fact(report: CheckReport) -> None:
    text = (ROOT / "queries" / "README.md").read_text()
    section = text.split("## Null facts", 1)[1].split("\n## ", 1)[0]
    documented = [line.strip() for line in section.splitlines() if re.match(r"^\| R\d+ \|", line.strip())]
    want = measured_table(report)
    assert documented == want, "queries/README.md 'Null facts' table should read:\n" + "\n".join(want)


def test_facts_read_are_derived_from_the_sql() -> None:
    assert {"tls_cert_requested", "tls_client_cert", "orig_first_byte", "app"} <= facts_read(RULES["R1"])
    assert "orig_h" not in facts_read(RULES["R1"])  # identity, not a fact
    assert facts_read(RULES["R16"]) == set()
    assert Path(RULES["R1"].path).is_file()
