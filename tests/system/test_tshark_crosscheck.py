"""Cross-check: the facts the sensor read through pyshark agree with tshark's own fields on the same packets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sensor.schema import tls_version_name
from tests.conftest import analyse, capture, flows_by_uid

pytestmark = pytest.mark.tshark

TLS_CAPTURES = [
    "zeek__tls1.2.pcap",
    "zeek__client-certificate.pcap",
    "zeek__certificate-request-failed.pcap",
    "arkime__openssl-ssl3.pcap",
    "zeek__tls1_1.pcap",
    "ndpi__tls_1.3_unidirectional_server.pcapng",
]
FIELDS = [
    "ip.src",
    "ipv6.src",
    "tcp.srcport",
    "ip.dst",
    "ipv6.dst",
    "tcp.dstport",
    "tls.handshake.type",
    "tls.handshake.version",
    "tls.handshake.extensions.supported_version",
    "tls.handshake.ciphersuite",
    "tls.handshake.certificates_length",
    "sip.Method",
    "sip.Status-Code",
    "udp.srcport",
    "udp.dstport",
]


def tshark_rows(path: Path) -> list[dict[str, list[str]]]:
    cmd = [
        "tshark",
        "-r",
        str(path),
        "-o",
        "tcp.reassemble_out_of_order:TRUE",
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-E",
        "aggregator=,",
    ]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split("\t")
        rows.append({f: [v for v in c.split(",") if v] for f, c in zip(FIELDS, cols, strict=False)})
    return rows


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_negotiated_version_cipher_and_client_certificate(name: str) -> None:
    path = capture(name)
    (flow,) = flows_by_uid(analyse(path).table)
    server_hellos = [r for r in tshark_rows(path) if "2" in r["tls.handshake.type"]]
    assert len(server_hellos) == 1
    sh = server_hellos[0]
    version = int((sh["tls.handshake.extensions.supported_version"] or sh["tls.handshake.version"])[0], 16)
    assert flow["tls_version"] == tls_version_name(version)
    assert flow["tls_cipher"] == "0x" + format(int(sh["tls.handshake.ciphersuite"][0], 16), "04X")
    server = (sh["ip.src"] or sh["ipv6.src"])[0]
    assert flow["resp_h"] == server and flow["resp_p"] == int(sh["tcp.srcport"][0])
    client_certs = [
        r for r in tshark_rows(path) if "11" in r["tls.handshake.type"] and (r["ip.src"] or r["ipv6.src"])[0] != server
    ]
    if client_certs:
        assert flow["tls_client_cert"] == (int(client_certs[0]["tls.handshake.certificates_length"][0]) > 0)


@pytest.mark.parametrize("name", ["heplify__sip_ipv4_tcp.pcap", "ndpi__sip.pcap"])
def test_sip_methods_and_status_codes(name: str) -> None:
    path = capture(name)
    rows = [r for r in tshark_rows(path) if r["sip.Method"] or r["sip.Status-Code"]]
    flows = [f for f in flows_by_uid(analyse(path).table) if f["sip_plain"]]
    assert sum(int(f["sip_messages"]) for f in flows) == len(rows)  # type: ignore[call-overload]
    assert {m for f in flows for m in f["sip_methods"]} == {m for r in rows for m in r["sip.Method"]}  # type: ignore[union-attr]
    assert {c for f in flows for c in f["sip_status_codes"]} == {  # type: ignore[union-attr]
        int(c) for r in rows for c in r["sip.Status-Code"]
    }
