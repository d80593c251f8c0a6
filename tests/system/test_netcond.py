"""Network conditions (issue 9): each generated case is checked against Wireshark (whole file, out-of-order
reassembly), then `analyze` with the issue's example site must report the expected facts and findings.

The Wireshark tests check the generator: they must pass whatever the sensor does. The analyze tests check the
stream layer. Deliberate differences from Wireshark are stated per case in sensor.synth.netcond: Wireshark
reassembles overlapping IP fragments (it flags them), the sensor drops the datagram (RFC 5722).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from sensor.analyze import Analyzer
from sensor.config import Config, load_config
from sensor.rules.check import Checker
from sensor.schema import tls_version_name
from sensor.synth import netcond as nc
from sensor.synth import pki, tls_capture
from tests.conftest import ISSUE_EXAMPLE_TOML, flows_by_uid

pytestmark = pytest.mark.tshark

CASES = {case.name: case for case in nc.all_cases()}
TCP = [name for name, case in CASES.items() if case.flows[0].proto == "tcp"]
UDP = [name for name, case in CASES.items() if case.flows[0].proto == "udp"]
RULES = frozenset(f"R{n}" for n in range(1, 18))
NOW = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
AGG = "\x1f"  # tshark's aggregator: SDP attribute values contain commas, spaces and '|'

# The issue's example site, with IPv6 addresses for the Front End and the Mediation Server.
SITE = (
    ISSUE_EXAMPLE_TOML.replace('front_end = ["10.0.1.10", ', f'front_end = ["{nc.FE1_V6}", "10.0.1.10", ')
    .replace('mediation = ["10.0.1.20"]', f'mediation = ["10.0.1.20", "{nc.MEDIATION_V6}"]')
    .replace('internal = ["10.0.0.0/8"]', 'internal = ["10.0.0.0/8", "fd00::/8"]')
)
TLS_FIELDS = [
    "ip.src",
    "tcp.srcport",
    "tcp.flags.syn",
    "tcp.flags.ack",
    "tcp.seq",
    "tcp.len",
    "tcp.payload",
    "tls.handshake.type",
    "tls.handshake.version",
    "tls.handshake.extensions.supported_version",
    "tls.handshake.ciphersuite",
    "tls.handshake.certificates_length",
    "tcp.segment.count",
]
SIP_FIELDS = [
    "sip.Method",
    "sip.Status-Code",
    "sdp.media.port",
    "sdp.media.proto",
    "sdp.media_attr",
    "ip.fragment.overlap",
    "ipv6.fragment.overlap",
    "udp.srcport",
    "udp.dstport",
]
TLS_FACT_KEYS = ("orig_first_byte", "tls_version", "tls_cipher", "tls_server_cert", "tls_cert_requested")
SIP_FACT_KEYS = ("sip_plain", "sdp_protos", "sdp_crypto", "sdp_encryption", "sdp_media_ports")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("netcond")
    return {name: nc.write_case(case, root) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("site") / "site.toml"
    path.write_text(SITE)
    return load_config(path, env={})


def tshark(path: Path, fields: Sequence[str]) -> list[dict[str, list[str]]]:
    cmd = ["tshark", "-r", str(path), "-o", "tcp.reassemble_out_of_order:TRUE", "-T", "fields"]
    cmd += ["-E", "separator=\t", "-E", f"aggregator={AGG}", "-E", "occurrence=a"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [
        {f: [v for v in col.split(AGG) if v] for f, col in zip(fields, line.split("\t"), strict=True)}
        for line in out.splitlines()
    ]


def _ints(values: list[str]) -> list[int]:
    return [int(v, 0) for v in values]


def wireshark_tls(path: Path, flow: nc.FlowExpect) -> dict[str, object]:
    """The TLS facts of one flow as Wireshark's dissectors show them, with the schema's null-when-unseen rules."""
    rows = tshark(path, TLS_FIELDS)
    orig = [r for r in rows if r["ip.src"] == [flow.orig_h] and r["tcp.srcport"] == [str(flow.orig_p)]]
    resp = [r for r in rows if r["ip.src"] == [flow.resp_h] and r["tcp.srcport"] == [str(flow.resp_p)]]
    assert len(orig) + len(resp) == len(rows)
    first_byte = None
    if any(r["tcp.flags.syn"] == ["1"] and r["tcp.flags.ack"] == ["0"] for r in orig):
        at_zero = [r for r in orig if r["tcp.seq"] == ["1"] and r["tcp.len"] != ["0"]]
        first_byte = int(at_zero[0]["tcp.payload"][0][:2], 16) if at_zero else None
    s_types = [t for r in resp for t in _ints(r["tls.handshake.type"])]
    c_types = [t for r in orig for t in _ints(r["tls.handshake.type"])]
    hello = [r for r in resp if 2 in _ints(r["tls.handshake.type"])]
    version = cipher = None
    if hello:
        chosen = _ints(hello[0]["tls.handshake.extensions.supported_version"] or hello[0]["tls.handshake.version"])
        version = tls_version_name(chosen[0])
        cipher = "0x" + format(int(hello[0]["tls.handshake.ciphersuite"][0], 16), "04X")
    s_certs = [
        n for r in resp if 11 in _ints(r["tls.handshake.type"]) for n in _ints(r["tls.handshake.certificates_length"])
    ]
    c_certs = [
        n for r in orig if 11 in _ints(r["tls.handshake.type"]) for n in _ints(r["tls.handshake.certificates_length"])
    ]
    done = 14 in s_types
    requested = True if 13 in s_types else (False if done else None)
    client_cert = None
    if c_certs:
        client_cert = c_certs[0] > 0
    elif requested and 16 in c_types:
        client_cert = False
    segments = [n for r in resp if 11 in _ints(r["tls.handshake.type"]) for n in _ints(r["tcp.segment.count"])]
    return {
        "orig_first_byte": first_byte,
        "tls_version": version,
        "tls_cipher": cipher,
        "tls_server_cert": s_certs[0] > 0 if s_certs else (False if done else None),
        "tls_cert_requested": requested,
        "tls_client_cert": client_cert,
        "certificate_segments": max(segments, default=0),
    }


def wireshark_sip(path: Path) -> dict[str, object]:
    rows = tshark(path, SIP_FIELDS)
    sip = [r for r in rows if r["sip.Method"] or r["sip.Status-Code"]]
    attrs = [a for r in sip for a in r["sdp.media_attr"]]
    encryption = sorted({a.split(":", 1)[1] for a in attrs if a.startswith("encryption:")})
    return {
        "sip_plain": bool(sip),
        "sip_methods": sorted({m for r in sip for m in r["sip.Method"]}),
        "sdp_protos": sorted({p for r in sip for p in r["sdp.media.proto"]}),
        "sdp_crypto": any(a.startswith("crypto:") for a in attrs),
        "sdp_encryption": encryption[0] if len(encryption) == 1 else encryption,
        "sdp_media_ports": sorted({int(p) for r in sip for p in r["sdp.media.port"]}),
        "overlap": any(r["ip.fragment.overlap"] or r["ipv6.fragment.overlap"] for r in rows),
        "udp_ports": sorted({int(p) for r in rows for p in r["udp.srcport"] + r["udp.dstport"]}),
    }


# --- (1) the generator: Wireshark finds what each case claims --------------------------------------------------


def test_generator_builds_what_the_issue_asks() -> None:
    assert 5500 <= pki.pki().chain_bytes() <= 6500  # root -> intermediate -> leaf, about 6 KB
    assert {"tcp-reordered", "tcp-midstream", "tcp-duplicated", "tcp-hole-in-handshake"} <= set(TCP)
    assert {f"frag-v{v}-{m}" for v in (4, 6) for m in ("in-order", "reversed", "overlap", "incomplete")} == set(UDP)
    # the same fixed keys build the same certificates
    assert pki.pki().server.fingerprint(hashes.SHA256()) == pki.certificate(
        pki.POOL, pki.pki().server_key, "Contoso Issuing CA 01", pki.rsa_key("intermediate", 2048), 0x2001, False,
        pki.POOL_SANS,
    ).fingerprint(hashes.SHA256())  # fmt: skip


def test_reordered_case_puts_each_first_segment_last() -> None:
    session = tls_capture.tls_session(True, [])
    segs = nc._reorder(tls_capture.tcp_conversation(session, 536, "t"))
    for side in (True, False):
        data = [s for s in segs if s.from_orig == side and s.payload and s.phase == "handshake"]
        starts = tls_capture.record_starts(b"".join(s.payload for s in sorted(data, key=lambda s: s.offset)))
        assert data[-1].offset == 0 and len(data) > 2
        assert data[0].offset not in starts  # captured first: a segment from the middle of a record


@pytest.mark.parametrize("name", TCP)
def test_wireshark_agrees_tls(written: dict[str, Path], name: str) -> None:
    case = CASES[name]
    got = wireshark_tls(written[name], case.flows[0])
    want = {k: case.wireshark[k] for k in (*TLS_FACT_KEYS, "tls_client_cert")}
    assert {k: got[k] for k in want} == want
    if "min_certificate_segments" in case.wireshark:
        assert got["certificate_segments"] >= case.wireshark["min_certificate_segments"]  # type: ignore[operator]


@pytest.mark.parametrize("name", UDP)
def test_wireshark_agrees_sip(written: dict[str, Path], name: str) -> None:
    case = CASES[name]
    got = wireshark_sip(written[name])
    assert {k: got[k] for k in case.wireshark} == case.wireshark
    assert got["udp_ports"] == [nc.SIP_UDP]  # only the real ports: no fragment is read as a datagram of its own


# --- (2) analyze: the expected facts and findings ------------------------------------------------------------------


def _matches(row: dict[str, object], flow: nc.FlowExpect) -> bool:
    fwd = (row["orig_h"], row["orig_p"], row["resp_h"], row["resp_p"]) == (
        flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p,
    )  # fmt: skip
    back = (row["orig_h"], row["orig_p"], row["resp_h"], row["resp_p"]) == (
        flow.resp_h, flow.resp_p, flow.orig_h, flow.orig_p,
    )  # fmt: skip
    return row["proto"] == flow.proto and (fwd or (back and not flow.oriented))


@pytest.mark.parametrize("name", list(CASES))
def test_analyze(written: dict[str, Path], site: Config, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    table = Analyzer(site).run([written[name]]).table
    flows = flows_by_uid(table)
    assert not [f for f in flows if 0 in (f["orig_p"], f["resp_p"])], "a fragment made a flow on ports 0/0"
    report = Checker(site).check_table(table, tmp_path / "lake", now=NOW, store=False)
    findings = [f for f in report.evaluation.findings.to_pylist() if f["rule_id"] in RULES]
    false_cleartext = [f["evidence"] for f in findings if f["rule_id"] == "R1" and "cleartext" in str(f["evidence"])]
    assert not false_cleartext, false_cleartext
    problems = []
    for flow in case.flows:
        hits = [f for f in flows if _matches(f, flow)]
        if len(hits) != 1:
            problems.append(
                f"expected one flow {flow.orig_h}:{flow.orig_p} -> {flow.resp_h}:{flow.resp_p}, got {len(hits)}"
            )
            continue
        got = {k: hits[0][k] for k in flow.facts}
        if got != flow.facts:
            diff = {k: (got[k], v) for k, v in flow.facts.items() if got[k] != v}
            problems.append(f"facts (got, want): {diff}")
        mine = sorted((str(f["rule_id"]), str(f["severity"])) for f in findings if _matches(f, flow))
        if mine != sorted(flow.findings.items()):
            problems.append(f"findings {mine} != {sorted(flow.findings.items())}: {[f['evidence'] for f in findings]}")
    if len(flows) != len(case.flows):
        problems.append(
            f"{len(flows)} flows, expected {len(case.flows)}: {[(f['orig_p'], f['resp_p']) for f in flows]}"
        )
    assert not problems, f"{case.why}:\n" + "\n".join(problems)


def test_cli_writes_every_case_and_its_expectations(tmp_path: Path) -> None:
    from sensor.synth.__main__ import main

    assert main(["netcond", str(tmp_path)]) == 0
    expect = json.loads((tmp_path / "expect.json").read_text())
    assert [e["name"] for e in expect] == list(CASES)
    assert all((tmp_path / f"{name}.pcap").stat().st_size > 0 for name in CASES)
    assert expect[0]["flows"][0]["facts"] == CASES[expect[0]["name"]].flows[0].facts
