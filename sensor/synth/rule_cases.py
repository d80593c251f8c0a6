"""Rule cases: one capture with, per rule R1-R17, flows that must fire it and flows that must not.

Addresses follow RULE_CASE_ROLES (the site of tests/unit/test_rules.py). Each label's expect["findings"] maps
rule id -> severity under that site's default policy; a rule not listed must not name the flow.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import struct
from datetime import UTC, datetime, timedelta

from sensor.schema import FLOW_SCHEMA
from sensor.synth import calls, http, media, sip
from sensor.synth import packets as pk
from sensor.synth import tls as t
from sensor.synth.flow import Flow, TcpFlow
from sensor.synth.scenario import Scenario, _Builder
from sensor.synth.tls_sessions import (
    SERVER_THINK_US,
    TlsPlan,
    exchange_app_data,
    full_handshake,
    pseudo_tls_turn,
)
from sensor.synth.x509 import Certificate, chain

Findings = dict[str, str]

RULE_CASE_ROLES: dict[str, tuple[str, ...]] = {
    "front_end": ("10.0.1.10", "10.0.1.11"),
    "director": ("10.0.1.30",),
    "mediation": ("10.0.1.20",),
    "edge_internal": ("10.0.2.10",),
    "edge_external": ("203.0.113.10",),
    "edge_external_av": ("203.0.113.11",),
    "pstn_gateway": ("10.0.3.5", "10.0.3.7"),
    "e911_gateway": ("10.0.3.6",),
    "trusted_application": ("10.0.1.40",),
}
INTERNAL = ipaddress.ip_network("10.0.0.0/8")

FE1, FE2 = RULE_CASE_ROLES["front_end"]
(MEDIATION,), (EDGE_INT,) = RULE_CASE_ROLES["mediation"], RULE_CASE_ROLES["edge_internal"]
(EDGE_EXT,), (AV_EDGE,) = RULE_CASE_ROLES["edge_external"], RULE_CASE_ROLES["edge_external_av"]
TLS_GATEWAY = RULE_CASE_ROLES["pstn_gateway"][1]
(E911_GATEWAY,), (TRUSTED_APP,) = RULE_CASE_ROLES["e911_gateway"], RULE_CASE_ROLES["trusted_application"]

XMPP_TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"


def flow_record(
    orig: tuple[str, int], resp: tuple[str, int], proto: str = "tcp", /, **facts: object
) -> dict[str, object]:
    """One flow record as the lake holds it, for rule tests that need no capture: every column of the flow
    schema null except the connection, its roles (RULE_CASE_ROLES unless given) and the facts given."""
    row: dict[str, object] = dict.fromkeys(FLOW_SCHEMA.names)
    ts = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    row.update(
        ts=ts,
        ts_end=ts + timedelta(seconds=30),
        flow_start=ts,
        interval_seq=0,
        uid="C" + hashlib.sha256(repr((orig, resp, proto, sorted(facts.items()))).encode()).hexdigest()[:17],
        sensor_id="sensor-t",
        source="pcap",
        orig_h=orig[0],
        orig_p=orig[1],
        resp_h=resp[0],
        resp_p=resp[1],
        proto=proto,
        ip_version=4,
        orig_role=rule_case_role(orig[0]),
        resp_role=rule_case_role(resp[0]),
        duration=30.0,
    )
    unknown = set(facts) - set(FLOW_SCHEMA.names)
    if unknown:
        raise KeyError(f"not flow columns: {sorted(unknown)}")
    row.update(facts)
    return row


def rule_case_role(address: str) -> str:
    """The role of an address under RULE_CASE_ROLES: a role name, 'client' (10.0.0.0/8) or 'external'."""
    for role, hosts in RULE_CASE_ROLES.items():
        if address in hosts:
            return role
    return "client" if ipaddress.ip_address(address) in INTERNAL else "external"


class _CaseBuilder(_Builder):
    """The scenario builder, labelling roles by the rule-case site and recording the expected findings."""

    def label(self, flow: Flow, name: str, facts: dict[str, object]) -> None:
        roles = {"orig_role": rule_case_role(flow.orig_h), "resp_role": rule_case_role(flow.resp_h)}
        self.labels.append(flow.label(name, {**roles, **facts}))

    def case(self, flow: Flow, name: str, findings: Findings, why: str) -> None:
        self.label(flow, name, {"findings": dict(findings), "case": why})


def _negotiate(flow: TcpFlow, ts: int, plan: TlsPlan) -> int:
    """ClientHello .. server Finished, as tls_sessions.negotiate, with an ECDHE key exchange for every ECDHE
    suite (0xC0xx and ChaCha20 0xCCA8/0xCCA9); the connection must be open. Returns when the handshake ends."""
    rng, v = flow.rng, plan.version
    ecdhe = plan.suite >> 8 == 0xC0 or plan.suite in (0xCCA8, 0xCCA9)
    hello = t.client_hello(rng, v, plan.offered_suites, plan.server_name)
    ts = flow.send(ts + 50, True, t.record(t.HANDSHAKE, plan.record_version, hello))
    flight = t.server_hello(rng, v, plan.suite, rng.randbytes(32))
    flight += t.certificate([c.der for c in plan.server_chain])
    if ecdhe:
        flight += t.server_key_exchange_ecdhe(rng, v)
    flight += t.server_hello_done()
    ts = flow.send(ts + SERVER_THINK_US, False, t.record(t.HANDSHAKE, v, flight))
    client = t.client_key_exchange_ecdhe(rng) if ecdhe else t.client_key_exchange_rsa(rng, v)
    finished = t.change_cipher_spec(v) + t.encrypted_finished(rng, v, 40)
    ts = flow.send(ts + SERVER_THINK_US, True, t.record(t.HANDSHAKE, v, client) + finished)
    return flow.send(ts + SERVER_THINK_US, False, t.change_cipher_spec(v) + t.encrypted_finished(rng, v, 40))


def _certificates(seed: int) -> dict[str, list[Certificate]]:
    rng = random.Random(f"{seed}:rule-case-certificates")
    return {
        "pool": chain(rng, "pool01.contoso.com", ("pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com")),
        "fe1": chain(rng, "fe01.contoso.com", ("fe01.contoso.com", "pool01.contoso.com"))[:2],
        "fe2": chain(rng, "fe02.contoso.com", ("fe02.contoso.com", "pool01.contoso.com"))[:2],
        "mediation": chain(rng, "med01.contoso.com", ("med01.contoso.com",)),
        "edge-int": chain(rng, "edgeint.contoso.com", ("edgeint.contoso.com",)),
        "access": chain(rng, "sip.contoso.com", ("sip.contoso.com", "webconf.contoso.com")),
        "av": chain(rng, "av.contoso.com", ("av.contoso.com",)),
        "web": chain(rng, "lyncweb.contoso.com", ("lyncweb.contoso.com", "lyncdiscoverinternal.contoso.com")),
        "wildcard": chain(rng, "*.contoso.com", ("*.contoso.com",)),
        "fabrikam": chain(rng, "other.fabrikam.com", ("other.fabrikam.com",)),
        "partner": chain(rng, "sip.partner.example", ("sip.partner.example",))[:2],
        "gateway": chain(rng, "gw02.contoso.com", ("gw02.contoso.com",)),
    }


def _tls_cases(b: _CaseBuilder) -> None:
    c = _certificates(b.seed)
    mtls_pool = TlsPlan(t.TLS12, 0xC028, c["pool"], "pool01.contoso.com", request_cert=True, client_chain=c["fe1"])
    cases: list[tuple[str, tuple[str, int], tuple[str, int], float, TlsPlan, Findings, str]] = [
        ("r3-nofire-client-fe-tls12", ("10.0.5.63", 51100), (FE1, 5061), 1.0,
         TlsPlan(t.TLS12, 0xC028, c["pool"], "pool01.contoso.com"), {},
         "client SIP to the Front End over TLS 1.2 (no client certificate needed)"),
        ("r4-fire-federation-empty-cert", ("198.51.100.20", 51101), (EDGE_EXT, 5061), 1.5,
         TlsPlan(t.TLS12, 0xC028, c["access"], "sip.contoso.com", request_cert=True, client_chain=[]),
         {"R4": "violation"}, "federated partner answers CertificateRequest with an empty Certificate"),
        ("r4-nofire-federation-mtls", ("198.51.100.21", 51102), (EDGE_EXT, 5061), 2.0,
         TlsPlan(t.TLS12, 0xC028, c["access"], "sip.contoso.com", request_cert=True, client_chain=c["partner"]),
         {}, "federated partner presents its certificate chain (mutual TLS)"),
        ("r9-nofire-client-fe-psom-tls", ("10.0.5.62", 51103), (FE1, 8057), 2.5,
         TlsPlan(t.TLS12, 0xC028, c["pool"], "pool01.contoso.com"), {}, "PSOM from a client over TLS 1.2"),
        ("r11-nofire-fe-edge-psom-mtls", (FE2, 51104), (EDGE_INT, 8057), 3.0,
         TlsPlan(t.TLS12, 0xC028, c["edge-int"], "edgeint.contoso.com", request_cert=True, client_chain=c["fe2"]),
         {}, "Front End to Edge internal PSOM 8057 over mutual TLS (a documented Edge internal row)"),
        ("r12-fire-edge-undocumented-8443", ("198.51.100.22", 51105), (EDGE_EXT, 8443), 3.5,
         TlsPlan(t.TLS12, 0xC028, c["access"], "sip.contoso.com"), {"R12": "warning"},
         "TLS to TCP 8443 on the Edge external interface, a port no port summary lists"),
        ("r14-fire-av-edge-real-tls", ("10.0.5.71", 51106), (AV_EDGE, 443), 4.0,
         TlsPlan(t.TLS12, 0xC028, c["av"], "av.contoso.com"), {"R14": "info"},
         "real TLS with a server certificate to the A/V Edge 443, where MS-TURN pseudo-TLS is expected"),
        ("r15-fire-cert-mismatch", ("10.0.5.73", 51107), (FE2, 443), 4.5,
         TlsPlan(t.TLS12, 0xC028, c["fabrikam"], "lyncweb.contoso.com"), {"R15": "warning"},
         "SNI lyncweb.contoso.com answered by a certificate naming only other.fabrikam.com"),
        ("r15-nofire-wildcard-cert", ("10.0.5.74", 51108), (FE2, 443), 5.0,
         TlsPlan(t.TLS12, 0xC028, c["wildcard"], "meet.contoso.com"), {},
         "SNI meet.contoso.com answered by a *.contoso.com certificate (one-label wildcard)"),
        ("r17-fire-fe-mediation-5069", (FE1, 51109), (MEDIATION, 5069), 5.5,
         TlsPlan(t.TLS12, 0xC028, c["mediation"], "med01.contoso.com"), {"R17": "warning", "R1": "warning"},
         "TLS between two servers on TCP 5069, a port [PORTS] does not list; no CertificateRequest (R1 unknown)"),
        ("r17-nofire-fe-mediation-mtls-5070", (FE2, 51110), (MEDIATION, 5070), 6.0,
         TlsPlan(t.TLS12, 0xC028, c["mediation"], "med01.contoso.com", request_cert=True, client_chain=c["fe2"]),
         {}, "Front End to Mediation 5070 over mutual TLS"),
        ("r8b-fire-mediation-gateway-empty-cert", (MEDIATION, 51111), (TLS_GATEWAY, 5067), 6.5,
         TlsPlan(t.TLS12, 0xC028, c["gateway"], "gw02.contoso.com", request_cert=True, client_chain=[]),
         {"R8": "violation"}, "TLS gateway trunk: the Mediation Server answers CertificateRequest with no certificate"),
        ("r5-edge-tls10", ("10.0.5.76", 51112), (EDGE_EXT, 443), 7.0,
         TlsPlan(t.TLS10, 0xC014, c["access"], "sip.contoso.com", offered_suites=(0xC014, 0xC013, 0x0035, 0x002F)),
         {"R5": "info"}, "TLS 1.0 to the Access Edge 443 (warning when the site requires TLS 1.2 on the Edge)"),
        ("fe-fe-mtls-5061", (FE1, 51113), (FE2, 5061), 7.5, mtls_pool, {}, "Front End pool peers over mutual TLS"),
    ]  # fmt: skip
    for name, orig, resp, when, plan, findings, why in cases:
        flow = b.tcp(orig, resp, name, rtt_us=30_000 if rule_case_role(orig[0]) == "external" else 400)
        full_handshake(flow, b.at(when), plan)
        b.case(flow, name, findings, why)
    # ECDHE-RSA-CHACHA20-POLY1305 is not FIPS 140-2: R6 fires only when the site declares FIPS mode.
    flow = b.tcp(("10.0.5.75", 51114), (FE2, 443), "fips-chacha20")
    plan = TlsPlan(t.TLS12, 0xCCA8, c["web"], "lyncweb.contoso.com", offered_suites=(0xCCA8, *t.SCHANNEL_SUITES))
    ts = _negotiate(flow, flow.open(b.at(8.0)), plan)
    flow.close(exchange_app_data(flow, ts, plan.version, 6) + 5_000)
    b.case(flow, "fips-chacha20", {}, "TLS 1.2 with 0xCCA8 (ChaCha20-Poly1305): R6 violation only with policy.fips")
    flow = b.tcp(("10.0.5.72", 51115), (AV_EDGE, 443), "r14-nofire-av-edge-pseudo-tls")
    relayed, mapped = (pk.packed(AV_EDGE), 50_420), (pk.packed("10.0.5.72"), 51115)
    pseudo_tls_turn(flow, b.at(8.5), relayed, mapped)
    b.case(flow, "r14-nofire-av-edge-pseudo-tls", {}, "MS-TURN pseudo-TLS to the A/V Edge 443")


def _sip_cases(b: _CaseBuilder) -> None:
    # R3: a client registers on the TLS port in clear text (REGISTER, 401 with the NTLM challenge).
    client, fe = ("10.0.5.60", 51200), (FE1, 5061)
    flow = b.tcp(client, fe, "r3-fire-client-fe-plain-sip-5061")
    log = calls.SipLog()
    send = calls.sender(flow, log)
    reg = sip.Dialog(flow.rng, "TCP", client, fe, "sip:erin@contoso.com", "sip:erin@contoso.com")
    register = reg.request("REGISTER", uri="sip:contoso.com", in_dialog=False, extra=[("Expires", "7200")])
    ts = send(flow.open(b.at(10.0)) + 100, True, register)
    ts = send(ts + 2_000, False, reg.respond(register, 401, "Unauthorized", extra=[sip.ntlm_challenge(FE1)]))
    flow.close(flow.ack(ts + 200, True) + 500_000)
    b.case(
        flow,
        "r3-fire-client-fe-plain-sip-5061",
        {"R2": "violation", "R3": "violation"},
        "plaintext SIP REGISTER/401 from a client on the Front End's TLS port 5061",
    )
    dialogs = [
        ("e1-fe-trusted-app-5060", (FE1, 51201), (TRUSTED_APP, 5060), 10.5, "sip:rcc@contoso.com",
         "sip:line1@rcc.contoso.com", (49500, 49502), {},
         "plain SIP on TCP 5060 to a configured trusted application (E1: no finding)"),
        ("e3-fe-e911-gateway-5066", (FE1, 51202), (E911_GATEWAY, 5066), 11.0, "sip:+14255550100@contoso.com",
         "sip:911@10.0.3.6;user=phone", (49510, 20010), {"R2": "warning", "R8": "warning"},
         "plain SIP on TCP 5066 to the E9-1-1 gateway (E3: warning; R8 grades the trunk the same)"),
    ]  # fmt: skip
    for name, orig, resp, when, caller, callee, ports, findings, why in dialogs:
        flow = b.tcp(orig, resp, name)
        log = calls.SipLog()
        send = calls.sender(flow, log)
        dialog = sip.Dialog(flow.rng, "TCP", orig, resp, caller, callee)
        offer = calls.Offer((orig[0], ports[0]), "RTP/AVP", (0, 101))
        answer = calls.Offer((resp[0], ports[1]), "RTP/AVP", (0, 101))
        invite = dialog.request("INVITE", offer.sdp(flow.rng), in_dialog=False)
        ts = send(flow.open(b.at(when)) + 100, True, invite)
        ts = send(ts + 30_000, False, dialog.respond(invite, 200, "OK", answer.sdp(flow.rng)))
        ts = send(ts + 1_000, True, dialog.request("ACK", same_cseq=True))
        flow.close(flow.ack(ts + 200, False) + 500_000)
        b.case(flow, name, findings, why)


def _cleartext_cases(b: _CaseBuilder) -> None:
    # R9: PSOM in clear. A binary request and reply whose first bytes are neither TLS, SSLv2, STUN nor text.
    flow = b.tcp(("10.0.5.61", 51300), (FE1, 8057), "r9-fire-client-fe-psom-clear")
    ts = flow.open(b.at(12.0))
    request = struct.pack("!IHH", 0x00000028, 0x0001, 0x0000) + flow.rng.randbytes(40)
    ts = flow.send(ts + 50, True, request)
    ts = flow.send(ts + 800, False, struct.pack("!IHH", 0x00000018, 0x0002, 0x0000) + flow.rng.randbytes(24))
    flow.close(flow.ack(ts + 200, True) + 200_000)
    b.case(
        flow,
        "r9-fire-client-fe-psom-clear",
        {"R9": "violation"},
        "web conferencing (PSOM) to the Front End 8057 that does not start with a TLS record",
    )
    # R11: plaintext HTTP on the Edge internal interface.
    flow = b.tcp(("10.0.5.70", 51301), (EDGE_INT, 8080), "r11-fire-client-edge-int-http")
    ts = flow.send(flow.open(b.at(12.5)) + 50, True, http.request("GET", "/status", "edgeint.contoso.com"))
    ts = flow.send(ts + 2_000, False, http.response(200, "OK", "text/plain", b"OK"))
    flow.close(flow.ack(ts + 100, True) + 50_000)
    b.case(
        flow,
        "r11-fire-client-edge-int-http",
        {"R11": "violation"},
        "plaintext HTTP GET /status to the Edge internal interface on 8080 (no web path rule matches)",
    )
    # R16: DCE/RPC bind between two Front Ends on 135 (documented cleartext, info).
    flow = b.tcp((FE1, 51302), (FE2, 135), "r16-fire-fe-fe-dcom")
    ts = flow.open(b.at(13.0))
    bind = bytes([5, 0, 11, 3, 0x10, 0, 0, 0]) + struct.pack("<HHI", 72, 0, 1) + flow.rng.randbytes(56)
    ts = flow.send(ts + 50, True, bind)
    ts = flow.send(ts + 300, False, bytes([5, 0, 12, 3, 0x10, 0, 0, 0]) + struct.pack("<HHI", 64, 0, 1) + bytes(48))
    flow.close(flow.ack(ts + 100, True) + 50_000)
    b.case(flow, "r16-fire-fe-fe-dcom", {"R16": "info"}, "DCE/RPC bind on TCP 135 between two Front Ends")


def _xmpp_header(sender: str, receiver: str, stream_id: str = "") -> bytes:
    ident = f" id='{stream_id}'" if stream_id else ""
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        f" xmlns:db='jabber:server:dialback' from='{sender}' to='{receiver}'{ident} version='1.0'>"
    ).encode()


def _xmpp_cases(b: _CaseBuilder) -> None:
    # R13 fires: the partner's server opens a stream, the Edge offers no STARTTLS, messages follow in clear.
    flow = b.tcp(("198.51.100.40", 51400), (EDGE_EXT, 5269), "r13-fire-xmpp-clear", rtt_us=30_000)
    ts = flow.send(flow.open(b.at(14.0)) + 50, True, _xmpp_header("partner.example", "contoso.com"))
    features = b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
    ts = flow.send(ts + 500, False, _xmpp_header("contoso.com", "partner.example", "a81c2e") + features)
    ts = flow.send(ts + 500, True, b"<db:result from='partner.example' to='contoso.com'>3f8a9c1e</db:result>")
    ts = flow.send(ts + 900, False, b"<db:result from='contoso.com' to='partner.example' type='valid'/>")
    for i in range(3):
        stanza = f"<message from='bob@partner.example/pc' to='alice@contoso.com' type='chat' id='m{i}'>"
        ts = flow.send(ts + 400_000, True, (stanza + "<body>hi</body></message>").encode())
    ts = flow.send(ts + 1_000_000, True, b"</stream:stream>")
    ts = flow.send(ts + 500, False, b"</stream:stream>")
    flow.close(ts + 100)
    b.case(
        flow,
        "r13-fire-xmpp-clear",
        {"R13": "violation"},
        "XMPP federation on 5269 without STARTTLS: message stanzas in clear",
    )
    # R13 does not fire: STARTTLS offered, requested and accepted, then TLS 1.2 on the same connection.
    flow = b.tcp(("198.51.100.41", 51401), (EDGE_EXT, 5269), "r13-nofire-xmpp-starttls", rtt_us=30_000)
    ts = flow.send(flow.open(b.at(15.0)) + 50, True, _xmpp_header("partner.example", "contoso.com"))
    tls_offer = f"<stream:features><starttls xmlns='{XMPP_TLS_NS}'><required/></starttls></stream:features>"
    ts = flow.send(ts + 500, False, _xmpp_header("contoso.com", "partner.example", "b92d3f") + tls_offer.encode())
    ts = flow.send(ts + 500, True, f"<starttls xmlns='{XMPP_TLS_NS}'/>".encode())
    ts = flow.send(ts + 500, False, f"<proceed xmlns='{XMPP_TLS_NS}'/>".encode())
    plan = TlsPlan(t.TLS12, 0xC028, _certificates(b.seed)["access"], "contoso.com")
    ts = _negotiate(flow, ts, plan)
    flow.close(exchange_app_data(flow, ts, plan.version, 6) + 5_000)
    b.case(
        flow,
        "r13-nofire-xmpp-starttls",
        {},
        "XMPP federation on 5269: <starttls/>, <proceed/>, then a TLS 1.2 handshake before any stanza",
    )


def _media_cases(b: _CaseBuilder) -> None:
    # (name, a, z, start s, seconds, codec, srtp, rtcp, findings of the RTP flow, of the RTCP flow, why)
    sessions: list[tuple[str, tuple[str, int], tuple[str, int], float, float, media.Codec, bool, bool,
                         Findings, Findings, str]] = [
        ("r8a-fire-mediation-fe-pcmu", (MEDIATION, 49170), (FE2, 50400), 16.0, 6.0, media.PCMU, False, True,
         {"R8": "violation"}, {"R8": "warning"},
         "plain PCMU RTP (300 packets each way: violation) and RTCP (2 packets, under R7's and R8's one evidence "
         "bar: warning) between the Mediation Server and its internal next hop"),
        ("r8-nofire-mediation-fe-srtp", (MEDIATION, 49180), (FE2, 50410), 17.0, 6.0, media.PCMU, True, True,
         {}, {}, "SRTP (160 + 10-byte tag) and SRTCP between the Mediation Server and a Front End"),
        ("r12-info-edge-udp-srtp", ("198.51.100.30", 40000), (EDGE_EXT, 50010), 18.0, 2.0, media.G722, True,
         False, {"R12": "info"}, {}, "SRTP G.722 on UDP 50010 of the Edge media range (OCS 2007 federation only)"),
    ]  # fmt: skip
    for name, a, z, when, seconds, codec, srtp, rtcp, rtp_findings, rtcp_findings, why in sessions:
        played = calls.media_session(b.out, name, a, z, b.at(when), seconds, codec, srtp, rtcp, str(b.seed))
        for flow, flow_name, _ in played:
            rtcp_flow = flow_name.endswith("-rtcp")
            b.case(flow, flow_name, rtcp_findings if rtcp_flow else rtp_findings, why)


def build_rule_cases(seed: int = 11) -> Scenario:
    """The rule-case capture: ~25 s from 2026-11-26T10:00Z, one labelled flow per case; same seed, same bytes."""
    b = _CaseBuilder(seed)
    for part in (_tls_cases, _sip_cases, _cleartext_cases, _xmpp_cases, _media_cases):
        part(b)
    packets = sorted(b.out, key=lambda p: p.ts)
    return Scenario(packets, sorted(b.labels, key=lambda lab: lab.name))
