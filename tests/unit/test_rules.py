"""Rules R1-R17 end to end: synthetic captures -> Analyzer (real tshark) -> Checker, per rule and per site policy.

Each capture is analysed once per module (roles are tagged at analysis time, so only a config that changes
[topology.roles] needs another analysis); the Checker then runs once per policy variant, which is fast.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pyarrow as pa
import pytest

from sensor.analyze import Analyzer
from sensor.config import Config, load_config
from sensor.rules.check import Checker, CheckReport
from sensor.schema import FLOW_SCHEMA
from sensor.synth import FlowLabel, Scenario, build_labelled, write
from sensor.synth.rule_cases import RULE_CASE_ROLES, build_rule_cases, flow_record

SITE = """
[sensor]
id = "sensor-t"
[topology.roles]
front_end = ["10.0.1.10", "10.0.1.11"]
director = ["10.0.1.30"]
mediation = ["10.0.1.20"]
edge_internal = ["10.0.2.10"]
edge_external = ["203.0.113.10"]
edge_external_av = ["203.0.113.11"]
pstn_gateway = ["10.0.3.5", "10.0.3.7"]
e911_gateway = ["10.0.3.6"]
trusted_application = ["10.0.1.40"]
[topology.networks]
internal = ["10.0.0.0/8"]
[policy]
media_encryption_level = "RequireEncryption"
fips = false
[policy.gateways."10.0.3.5"]
transport = "tcp"
[policy.gateways."10.0.3.6"]
transport = "tcp"
e911 = true
[policy.gateways."10.0.3.7"]
transport = "tls"
[policy.trusted_applications."10.0.1.40"]
port = 5060
"""
TRUSTED_ROLE = 'trusted_application = ["10.0.1.40"]\n'
TRUSTED_POLICY = '[policy.trusted_applications."10.0.1.40"]\nport = 5060\n'
# E1 off: the site declares no trusted application at all (neither the role nor the policy table).
SITE_NO_TRUSTED_APP = SITE.replace(TRUSTED_ROLE, "").replace(TRUSTED_POLICY, "")

NOW = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
RULES = frozenset(f"R{n}" for n in range(1, 18))
SCENARIOS: dict[str, Callable[[], Scenario]] = {"rules": build_rule_cases, "labelled": partial(build_labelled, 7)}
RULE_CASES = build_rule_cases()
LABELLED = build_labelled(7)

Finding = dict[str, object]
Tuple5 = tuple[object, object, object, object, object]


def five_tuple(row: FlowLabel | Finding) -> Tuple5:
    if isinstance(row, FlowLabel):
        return (row.orig_h, row.orig_p, row.resp_h, row.resp_p, row.proto)
    return (row["orig_h"], row["orig_p"], row["resp_h"], row["resp_p"], row["proto"])


def endpoints(key: Tuple5) -> tuple[frozenset[tuple[object, object]], object]:
    """The flow without its orientation: a finding that names the flow backwards still belongs to it."""
    return frozenset({(key[0], key[1]), (key[2], key[3])}), key[4]


class Pipeline:
    """Captures written once, analysed once per topology, checked once per (capture, site, overrides)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tables: dict[tuple[str, str], pa.Table] = {}
        self._reports: dict[tuple[str, str, tuple[str, ...]], CheckReport] = {}

    def config(self, site: str = SITE, overrides: Sequence[str] = ()) -> Config:
        path = self.root / f"site-{hashlib.sha256(site.encode()).hexdigest()[:12]}.toml"
        if not path.exists():
            path.write_text(site)
        return load_config(path, env={}, overrides=list(overrides))

    def table(self, capture: str, site: str = SITE) -> pa.Table:
        key = (capture, site)
        if key not in self._tables:
            pcap = self.root / f"{capture}.pcap"
            if not pcap.exists():
                write(SCENARIOS[capture](), pcap)
            self._tables[key] = Analyzer(self.config(site)).run([pcap]).table
        return self._tables[key]

    def report(self, capture: str, site: str = SITE, overrides: Sequence[str] = ()) -> CheckReport:
        key = (capture, site, tuple(overrides))
        if key not in self._reports:
            checker = Checker(self.config(site, overrides))
            self._reports[key] = checker.check_table(
                self.table(capture, site), self.root / "lake", now=NOW, store=False
            )
        return self._reports[key]

    def findings(self, capture: str, site: str = SITE, overrides: Sequence[str] = ()) -> list[Finding]:
        rows: list[Finding] = self.report(capture, site, overrides).evaluation.findings.to_pylist()
        return rows

    def on_flow(self, capture: str, label: FlowLabel, site: str = SITE, overrides: Sequence[str] = ()) -> list[Finding]:
        """Findings of rules R1-R17 about the labelled flow, whichever way round they name it."""
        flow = endpoints(five_tuple(label))
        rows = self.findings(capture, site, overrides)
        return [f for f in rows if f["rule_id"] in RULES and endpoints(five_tuple(f)) == flow]

    def severities(
        self, capture: str, label: FlowLabel, rule: str, site: str = SITE, overrides: Sequence[str] = ()
    ) -> list[str]:
        return sorted(str(f["severity"]) for f in self.on_flow(capture, label, site, overrides) if f["rule_id"] == rule)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline(tmp_path_factory.mktemp("rules"))


def label(scenario: Scenario, name: str) -> FlowLabel:
    (found,) = [lab for lab in scenario.labels if lab.name == name]
    return found


def expected_findings(lab: FlowLabel) -> dict[str, str]:
    findings = lab.expect["findings"]
    assert isinstance(findings, dict)
    return {str(k): str(v) for k, v in findings.items()}


# --- The config and the rules themselves -------------------------------------------------------------------------


def test_site_config_loads(pipeline: Pipeline) -> None:
    cfg = pipeline.config()
    assert cfg.roles["edge_external_av"] == ("203.0.113.11",)
    assert cfg.policy.gateways["10.0.3.6"].e911 and cfg.policy.gateways["10.0.3.7"].transport == "tls"
    assert cfg.policy.trusted_applications["10.0.1.40"].port == 5060
    bare = pipeline.config(SITE_NO_TRUSTED_APP)
    assert "trusted_application" not in bare.roles and not bare.policy.trusted_applications


@pytest.mark.parametrize("capture", sorted(SCENARIOS))
def test_every_rule_runs(pipeline: Pipeline, capture: str) -> None:
    ev = pipeline.report(capture).evaluation
    assert not ev.problems, "\n".join(map(str, ev.problems))
    assert {r.rule.id for r in ev.results} >= RULES


# --- (a) every rule case: exactly its expected findings, naming its own 5-tuple -----------------------------------


def test_every_rule_case_flow_is_labelled(pipeline: Pipeline) -> None:
    table = pipeline.table("rules")
    flows = {(r["orig_h"], r["orig_p"], r["resp_h"], r["resp_p"], r["proto"]) for r in table.to_pylist()}
    assert flows == {five_tuple(lab) for lab in RULE_CASES.labels}


def test_rule_cases_cover_every_rule() -> None:
    fired = {rule for lab in RULE_CASES.labels for rule in expected_findings(lab)}
    # R7 (client media) and R10 (web paths) fire in the labelled scenario; R6 on fips-chacha20 under policy.fips.
    assert fired | {"R6", "R7", "R10"} == RULES
    assert any(not expected_findings(lab) for lab in RULE_CASES.labels)


@pytest.mark.parametrize("case", RULE_CASES.labels, ids=lambda lab: lab.name)
def test_rule_case(pipeline: Pipeline, case: FlowLabel) -> None:
    found = pipeline.on_flow("rules", case)
    for f in found:
        assert five_tuple(f) == five_tuple(case), f"{f['rule_id']} names the flow the wrong way round"
    got = sorted((str(f["rule_id"]), str(f["severity"])) for f in found)
    assert got == sorted(expected_findings(case).items()), [f["evidence"] for f in found]


# --- (b) the labelled scenario --------------------------------------------------------------------------------------

LABELLED_EXPECT = [
    # (flow label, rule, severities)
    ("fe-edge-empty-cert", "R1", ["violation"]),
    ("fe-dir-no-certreq", "R1", ["warning"]),
    ("fe-fe-mtls", "R1", []),
    ("client-fe-sip-udp", "R2", ["violation"]),
    ("client-fe-sip-tcp", "R2", ["violation"]),
    ("gw-mediation-sip-tcp", "R2", ["warning"]),
    ("client-ext-sslv3-rc4", "R5", ["violation"]),
    ("client-ext-sslv2", "R5", ["violation"]),
    ("client-fe-tls10", "R5", ["info"]),
    ("client-fe-web-tls12", "R5", []),
    ("client-ext-sslv3-rc4", "R6", ["violation"]),
    ("client-ext-sslv2", "R6", ["violation"]),
    ("client-fe-web-tls12", "R6", []),
    ("sip-tcp-call-pcmu", "R7", ["violation"]),
    ("srtp-rtaudio-nosig", "R7", []),
    ("client-fe-http-abs", "R10", ["violation"]),
    ("client-fe-http-autodiscover", "R10", ["info"]),
]


def test_labelled_fe_edge_flow_is_the_documented_one() -> None:
    assert five_tuple(label(LABELLED, "fe-edge-empty-cert")) == ("10.0.1.10", 50111, "10.0.2.10", 5061, "tcp")


@pytest.mark.parametrize(("name", "rule", "want"), LABELLED_EXPECT, ids=[f"{r}-{n}" for n, r, _ in LABELLED_EXPECT])
def test_labelled(pipeline: Pipeline, name: str, rule: str, want: list[str]) -> None:
    lab = label(LABELLED, name)
    assert pipeline.severities("labelled", lab, rule) == want
    for f in pipeline.on_flow("labelled", lab):
        assert five_tuple(f) == five_tuple(lab)


# --- (c) site-policy exceptions, both ways ---------------------------------------------------------------------------

POLICY_CASES = [
    # (id, capture, flow label, rule, site, --set overrides, severities)
    ("E1-trusted-app", "rules", "e1-fe-trusted-app-5060", "R2", SITE, (), []),
    ("E1-not-declared", "rules", "e1-fe-trusted-app-5060", "R2", SITE_NO_TRUSTED_APP, (), ["violation"]),
    ("E2-tcp-trunk", "labelled", "gw-mediation-sip-tcp", "R2", SITE, (), ["warning"]),
    ("E2-tls-trunk", "labelled", "gw-mediation-sip-tcp", "R2", SITE, ('policy.gateways."10.0.3.5".transport=tls',),
     ["violation"]),
    ("E3-e911-gateway", "rules", "e3-fe-e911-gateway-5066", "R2", SITE, (), ["warning"]),
    ("X3-require", "labelled", "sip-tcp-call-pcmu", "R7", SITE, (), ["violation"]),
    ("X3-support", "labelled", "sip-tcp-call-pcmu", "R7", SITE, ("policy.media_encryption_level=SupportEncryption",),
     ["warning"]),
    ("FIPS-off", "rules", "fips-chacha20", "R6", SITE, (), []),
    ("FIPS-on", "rules", "fips-chacha20", "R6", SITE, ("policy.fips=true",), ["violation"]),
    ("edge-tls10-default", "rules", "r5-edge-tls10", "R5", SITE, (), ["info"]),
    ("edge-tls10-require-tls12", "rules", "r5-edge-tls10", "R5", SITE, ("policy.require_tls12_on_edge=true",),
     ["warning"]),
    ("internal-tls10-require-tls12", "labelled", "client-fe-tls10", "R5", SITE,
     ("policy.require_tls12_on_edge=true",), ["info"]),
    ("XMPP-required", "rules", "r13-fire-xmpp-clear", "R13", SITE, (), ["violation"]),
    ("XMPP-optional-partner", "rules", "r13-fire-xmpp-clear", "R13", SITE,
     ('policy.xmpp_partners."partner.example".tls_negotiation=Optional',), ["warning"]),
    ("XMPP-starttls-optional-partner", "rules", "r13-nofire-xmpp-starttls", "R13", SITE,
     ('policy.xmpp_partners."partner.example".tls_negotiation=Optional',), []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("capture", "name", "rule", "site", "overrides", "want"),
    [case[1:] for case in POLICY_CASES],
    ids=[case[0] for case in POLICY_CASES],
)
def test_site_policy(
    pipeline: Pipeline, capture: str, name: str, rule: str, site: str, overrides: tuple[str, ...], want: list[str]
) -> None:
    lab = label(LABELLED if capture == "labelled" else RULE_CASES, name)
    assert pipeline.severities(capture, lab, rule, site, overrides) == want


def test_e1_not_declared_is_only_plaintext_sip(pipeline: Pipeline) -> None:
    lab = label(RULE_CASES, "e1-fe-trusted-app-5060")
    found = pipeline.on_flow("rules", lab, SITE_NO_TRUSTED_APP)
    assert [(f["rule_id"], f["severity"], f["resp_role"]) for f in found] == [("R2", "violation", "client")]


def test_fips_mode_flags_only_the_non_fips_suite(pipeline: Pipeline) -> None:
    flagged = {
        five_tuple(f) for f in pipeline.findings("rules", overrides=("policy.fips=true",)) if f["rule_id"] == "R6"
    }
    assert flagged == {five_tuple(label(RULE_CASES, "fips-chacha20"))}


# --- (d) what a finding carries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", sorted(SCENARIOS))
def test_findings_carry_evidence_requirement_and_source(pipeline: Pipeline, capture: str) -> None:
    rows = pipeline.findings(capture)
    assert rows
    for f in rows:
        assert f["severity"] in ("violation", "warning", "info")
        for column in ("evidence", "requirement", "source", "title"):
            text = f[column]
            assert isinstance(text, str) and text.strip(), f"{f['rule_id']}: empty {column}"
        evidence = str(f["evidence"])
        assert f"{f['orig_h']}:{f['orig_p']} -> " in evidence, evidence
        assert f"{f['resp_h']}:{f['resp_p']}/{f['proto']}" in evidence, evidence


# --- (e) flow records written with the schema: unknown is not false, E2 on every TCP trunk, the Edge per service ---

PARTNER = "198.51.100.50"
ACCESS, WEBCONF = "203.0.113.12", "203.0.113.13"  # an Edge with one external address per service
HELLO = {"app": "tls", "orig_first_byte": 22, "tls_version": "TLSv12", "tls_server_cert": True}
UNSEEN = {**HELLO, "tls_cert_requested": True, "tls_client_cert": None}  # the client's answer was not captured
EMPTY = {**HELLO, "tls_cert_requested": True, "tls_client_cert": False}  # the client's Certificate was empty
PLAIN_SIP = {"orig_first_byte": 0x49, "sip_plain": True, "sip_messages": 3, "sip_methods": ["INVITE", "ACK"]}
MEDIATION_H, FE2_H = RULE_CASE_ROLES["mediation"][0], RULE_CASE_ROLES["front_end"][1]
EDGE_H, AV_H = RULE_CASE_ROLES["edge_external"][0], RULE_CASE_ROLES["edge_external_av"][0]
TCP_GW, E911_GW, TLS_GW = RULE_CASE_ROLES["pstn_gateway"][0], RULE_CASE_ROLES["e911_gateway"][0], "10.0.3.7"

ROW_CASES: list[tuple[str, dict[str, object], dict[str, str], str]] = [
    # (id, flow record, {rule: severity} on it (other rules may name it too), evidence words)
    ("R1-unseen-client-cert", flow_record(("10.0.1.10", 50001), (FE2_H, 5061), **UNSEEN), {"R1": "warning"},
     "Certificate message was not seen"),
    ("R1-empty-client-cert", flow_record(("10.0.1.10", 50002), (FE2_H, 5061), **EMPTY), {"R1": "violation"},
     "answered with no certificate"),
    ("R4-unseen-client-cert", flow_record((PARTNER, 50003), (EDGE_H, 5061), **UNSEEN), {"R4": "warning"},
     "Certificate message was not seen"),
    ("R4-empty-client-cert", flow_record((PARTNER, 50004), (EDGE_H, 5061), **EMPTY), {"R4": "violation"},
     "without a client certificate"),
    ("R8b-unseen-client-cert", flow_record((MEDIATION_H, 50005), (TLS_GW, 5067), **UNSEEN), {"R8": "warning"},
     "Certificate message was not seen"),
    ("R8b-empty-client-cert", flow_record((MEDIATION_H, 50006), (TLS_GW, 5067), **EMPTY), {"R8": "violation"},
     "without a client certificate"),
    ("R2-mediation-e911-tcp", flow_record((MEDIATION_H, 50007), (E911_GW, 5066), **PLAIN_SIP),
     {"R2": "warning", "R8": "warning"}, "E9-1-1 gateway (E2"),
    ("R2-mediation-e911-5068", flow_record((E911_GW, 50008), (MEDIATION_H, 5068), **PLAIN_SIP),
     {"R2": "warning", "R8": "warning"}, "E9-1-1 gateway (E2"),
    ("R2-sba-gateway-tcp", flow_record(("10.0.1.50", 50009), (TCP_GW, 5066), orig_role="sba", **PLAIN_SIP),
     {"R2": "warning", "R8": "warning"}, "Mediation-gateway trunk (E2"),
    ("R2-fe-e911-tcp-5066", flow_record(("10.0.1.10", 50010), (E911_GW, 5066), **PLAIN_SIP),
     {"R2": "warning", "R8": "warning"}, "E3"),
    ("R2-mediation-tls-trunk", flow_record((MEDIATION_H, 50011), (TLS_GW, 5067), **PLAIN_SIP),
     {"R2": "violation", "R8": "violation"}, "defined with TLS"),
    ("R12-smtp-from-media-range", flow_record((EDGE_H, 50012), (PARTNER, 25)), {"R12": "warning"},
     "undocumented outbound destination"),
    ("R12-smtp-from-61000", flow_record((EDGE_H, 61000), (PARTNER, 25)), {"R12": "warning"},
     "undocumented outbound destination"),
    ("R12-av-smtp-from-media-range", flow_record((AV_H, 50013), (PARTNER, 25)), {"R12": "warning"}, "A/V Edge"),
    ("R12-av-to-partner-443", flow_record((AV_H, 50014), (PARTNER, 443)), {}, ""),
    ("R12-av-to-partner-3478", flow_record((AV_H, 50015), (PARTNER, 3478), "udp"), {}, ""),
    ("R12-av-443-from-ephemeral", flow_record((AV_H, 61001), (PARTNER, 443)), {"R12": "warning"}, "from port 61001"),
    ("R12-crl-fetch", flow_record((EDGE_H, 61002), (PARTNER, 80)), {}, ""),
    ("R12-webconf-5061", flow_record((PARTNER, 50016), (WEBCONF, 5061), resp_role="edge_external_webconf"),
     {"R12": "warning"}, "Web Conferencing Edge external interface: tcp 5061"),
    ("R12-av-5269", flow_record((PARTNER, 50017), (AV_H, 5269)), {"R12": "warning"},
     "A/V Edge external interface: tcp 5269"),
    ("R12-access-udp-media", flow_record((PARTNER, 50018), (ACCESS, 50020), "udp", resp_role="edge_external_access"),
     {"R12": "warning"}, "Access Edge external interface: udp 50020"),
    ("R12-access-5061", flow_record((PARTNER, 50019), (ACCESS, 5061), resp_role="edge_external_access"), {}, ""),
    ("R12-webconf-443", flow_record((PARTNER, 50021), (WEBCONF, 443), resp_role="edge_external_webconf"), {}, ""),
    ("R12-av-3478", flow_record((PARTNER, 50022), (AV_H, 3478), "udp"), {}, ""),
    ("R12-shared-5269", flow_record((PARTNER, 50023), (EDGE_H, 5269)), {}, ""),
    ("R12-shared-udp-media", flow_record((PARTNER, 50024), (EDGE_H, 50030), "udp"), {"R12": "info"}, "OCS 2007"),
    ("R8a-weak-plain-rtp", flow_record((MEDIATION_H, 49170), (FE2_H, 50400), "udp", app="rtp", media_encrypted=False,
                                       media_confidence=0.5, orig_pkts=3, resp_pkts=3), {"R8": "warning"},
     "below the evidence bar"),
    ("R8a-strong-plain-rtp", flow_record((MEDIATION_H, 49172), (FE2_H, 50402), "udp", app="rtp", media_encrypted=False,
                                         media_confidence=0.9, orig_pkts=300, resp_pkts=300), {"R8": "violation"},
     "unencrypted media"),
    ("R7-weak-plain-rtp", flow_record(("10.0.5.1", 50050), ("10.0.5.2", 50060), "udp", app="rtp",
                                      media_encrypted=False, media_confidence=0.5, orig_pkts=3, resp_pkts=3),
     {"R7": "warning"}, "unencrypted rtp"),
]  # fmt: skip


@pytest.fixture(scope="module")
def row_report(pipeline: Pipeline) -> CheckReport:
    table = pa.Table.from_pylist([row for _, row, _, _ in ROW_CASES], schema=FLOW_SCHEMA)
    return Checker(pipeline.config()).check_table(table, pipeline.root / "lake", now=NOW, store=False)


@pytest.mark.parametrize(("row", "want", "words"), [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES])
def test_rule_on_flow_record(row_report: CheckReport, row: dict[str, object], want: dict[str, str], words: str) -> None:
    assert not row_report.evaluation.problems
    found = [f for f in row_report.evaluation.findings.to_pylist() if f["uid"] == row["uid"]]
    judged = {str(f["rule_id"]): str(f["severity"]) for f in found if f["rule_id"] in want or f["rule_id"] == "R12"}
    assert judged == want, [f["evidence"] for f in found]
    if words:
        assert any(words in str(f["evidence"]) for f in found if f["rule_id"] in want), [f["evidence"] for f in found]
