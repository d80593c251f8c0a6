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
from sensor.synth import FlowLabel, Scenario, build_labelled, write
from sensor.synth.rule_cases import build_rule_cases

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
