"""The labelled Lync scenario: one capture holding every flow kind the sensor must judge, with its labels."""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sensor.synth import calls, http, media, sip, stun
from sensor.synth import packets as pk
from sensor.synth import tls as t
from sensor.synth.flow import Flow, FlowLabel, Packet, TcpFlow, UdpFlow
from sensor.synth.pcapio import CaptureWriter, PcapngWriter, PcapWriter, atomic_output
from sensor.synth.tls_sessions import (
    TlsPlan,
    full_handshake,
    pseudo_tls_turn,
    resumed_handshake,
    sslv2_handshake,
    tls13_handshake,
)
from sensor.synth.x509 import chain

START_US = 1_795_687_200 * 1_000_000  # 2026-11-26T10:00:00Z
VLAN_ID = 42

# The site the scenario models: Lync roles to addresses; 10.0.0.0/8 is internal (clients), the rest external.
SITE_ROLES: dict[str, tuple[str, ...]] = {
    "front_end": ("10.0.1.10", "10.0.1.11"),
    "director": ("10.0.1.30",),
    "mediation": ("10.0.1.20",),
    "edge_internal": ("10.0.2.10",),
    "edge_external": ("203.0.113.10",),
    "pstn_gateway": ("10.0.3.5",),
}
INTERNAL_NETWORKS = ("10.0.0.0/8",)

FE1, FE2 = SITE_ROLES["front_end"]
(DIRECTOR,), (MEDIATION,) = SITE_ROLES["director"], SITE_ROLES["mediation"]
(EDGE_INT,), (EDGE_EXT,) = SITE_ROLES["edge_internal"], SITE_ROLES["edge_external"]
(GATEWAY,) = SITE_ROLES["pstn_gateway"]


def role_of(address: str) -> str:
    """The Lync role of an address under SITE_ROLES: a role name, 'client' (internal) or 'external'."""
    for role, hosts in SITE_ROLES.items():
        if address in hosts:
            return role
    ip = ipaddress.ip_address(address)
    internal = any(ip in ipaddress.ip_network(net) for net in INTERNAL_NETWORKS)
    return "client" if internal else "external"


@dataclass(frozen=True)
class Scenario:
    """Packets in capture order and one label per flow (5-tuple)."""

    packets: list[Packet]
    labels: list[FlowLabel]


class _Builder:
    """Collects packets and labels while the scenario's conversations are played."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.out: list[Packet] = []
        self.labels: list[FlowLabel] = []

    def tcp(self, orig: tuple[str, int], resp: tuple[str, int], name: str, rtt_us: int = 400) -> TcpFlow:
        return TcpFlow(self.out, orig[0], orig[1], resp[0], resp[1], f"{self.seed}:{name}", rtt_us)

    def udp(self, orig: tuple[str, int], resp: tuple[str, int], name: str) -> UdpFlow:
        return UdpFlow(self.out, orig[0], orig[1], resp[0], resp[1], f"{self.seed}:{name}")

    def label(self, flow: Flow, name: str, facts: dict[str, object]) -> None:
        roles = {"orig_role": role_of(flow.orig_h), "resp_role": role_of(flow.resp_h)}
        self.labels.append(flow.label(name, {**roles, **facts}))

    def at(self, seconds: float) -> int:
        return START_US + int(seconds * 1_000_000)


def _tls_flows(b: _Builder) -> None:
    rng = random.Random(f"{b.seed}:certificates")
    pool = chain(rng, "pool01.contoso.com", ("pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com"))
    fe1_cert = chain(rng, "fe01.contoso.com", ("fe01.contoso.com", "pool01.contoso.com"))[:2]
    edge = chain(rng, "edgeint.contoso.com", ("edgeint.contoso.com",))
    director = chain(rng, "dir01.contoso.com", ("dir01.contoso.com", "dirpool.contoso.com"))
    web = chain(rng, "lyncweb.contoso.com", ("lyncweb.contoso.com", "lyncdiscoverinternal.contoso.com"))
    legacy = chain(rng, "legacy.fabrikam.com", ("legacy.fabrikam.com",))
    plans: list[tuple[str, tuple[str, int], tuple[str, int], float, TlsPlan]] = [
        ("fe-fe-mtls", (FE1, 50110), (FE2, 5061), 1.0,
         TlsPlan(t.TLS12, 0xC030, pool, "pool01.contoso.com", request_cert=True, client_chain=fe1_cert)),
        ("fe-edge-empty-cert", (FE1, 50111), (EDGE_INT, 5061), 1.5,
         TlsPlan(t.TLS12, 0xC030, edge, "edgeint.contoso.com", request_cert=True, client_chain=[])),
        ("fe-dir-no-certreq", (FE1, 50112), (DIRECTOR, 5061), 2.0,
         TlsPlan(t.TLS12, 0xC028, director, "dir01.contoso.com")),
        ("client-fe-tls10", ("10.0.5.21", 51000), (FE1, 5061), 2.5,
         TlsPlan(t.TLS10, 0xC014, pool, "pool01.contoso.com",
                 offered_suites=(0xC014, 0xC013, 0x0035, 0x002F, 0x000A))),
        ("client-fe-web-tls12", ("10.0.5.22", 51001), (FE1, 443), 3.0,
         TlsPlan(t.TLS12, 0xC030, web, "lyncweb.contoso.com", offered_versions=(t.TLS13, t.TLS12),
                 offered_suites=(*t.TLS13_SUITES, *t.SCHANNEL_SUITES))),
        ("client-ext-sslv3-rc4", ("10.0.5.23", 51002), ("198.51.100.7", 443), 3.5,
         TlsPlan(t.SSL3, 0x0005, legacy, record_version=t.SSL3, offered_suites=(0x0005, 0x0004, 0x000A))),
        ("ipv6-tls12", ("2001:db8::5", 55000), ("2001:db8::10", 443), 4.0,
         TlsPlan(t.TLS12, 0xC030, web, "lyncweb.contoso.com")),
    ]  # fmt: skip
    for name, orig, resp, when, plan in plans:
        flow = b.tcp(orig, resp, name, rtt_us=30_000 if role_of(resp[0]) == "external" else 400)
        _, facts = full_handshake(flow, b.at(when), plan)
        b.label(flow, name, facts)
    flow = b.tcp(("10.0.5.24", 51003), (EDGE_EXT, 443), "client-edge-tls13")
    b.label(flow, "client-edge-tls13", tls13_handshake(flow, b.at(4.5), "sip.contoso.com")[1])
    flow = b.tcp(("10.0.5.25", 51004), (FE1, 443), "client-fe-resumed")
    b.label(flow, "client-fe-resumed", resumed_handshake(flow, b.at(5.0), "lyncweb.contoso.com")[1])
    flow = b.tcp(("10.0.5.26", 51005), ("198.51.100.8", 443), "client-ext-sslv2", rtt_us=30_000)
    b.label(flow, "client-ext-sslv2", sslv2_handshake(flow, b.at(5.5), legacy[0])[1])
    flow = b.tcp(("198.51.100.20", 51006), (EDGE_EXT, 443), "ext-edge-pseudo-tls", rtt_us=30_000)
    relayed, mapped = (pk.packed(EDGE_EXT), 50_320), (pk.packed("198.51.100.20"), 51006)
    b.label(flow, "ext-edge-pseudo-tls", pseudo_tls_turn(flow, b.at(6.0), relayed, mapped)[1])


def _sip_tcp_call(b: _Builder) -> None:
    caller, fe = ("10.0.5.30", 52000), (FE1, 5060)
    flow = b.tcp(caller, fe, "client-fe-sip-tcp")
    log = calls.SipLog()
    dialog = sip.Dialog(flow.rng, "TCP", caller, fe, "sip:alice@contoso.com", "sip:bob@contoso.com")
    ts = flow.open(b.at(2.0))
    offer = calls.Offer(("10.0.5.30", 20000), "RTP/AVP", (0, 101))
    answer = calls.Offer((FE1, 50020), "RTP/AVP", (0, 101))
    send, ts = calls.invite_dialog(flow, dialog, log, ts + 100, offer, answer)
    for f, name, facts in calls.media_session(
        b.out,
        "sip-tcp-call-pcmu",
        offer.at,
        answer.at,
        ts + 30_000,
        130.0,
        media.PCMU,
        False,
        True,
        str(b.seed),
    ):
        b.label(f, name, facts)
    # An in-dialog OPTIONS mid-call keeps the connection busy in every minute the call spans.
    options = dialog.request("OPTIONS")
    send(ts + 65_000_000, True, options)
    send(ts + 65_003_000, False, dialog.respond(options, 200, "OK"))
    ts = calls.hang_up(send, dialog, ts + 130_200_000)
    flow.close(flow.ack(ts + 200_000, True) + 1_000_000)
    b.label(flow, "client-fe-sip-tcp", log.facts())


def _sip_udp_call(b: _Builder) -> None:
    client, fe = ("10.0.5.31", 5060), (FE1, 5060)
    flow = b.udp(client, fe, "client-fe-sip-udp")
    log = calls.SipLog()
    send = calls.sender(flow, log)
    reg = sip.Dialog(flow.rng, "UDP", client, fe, "sip:carol@contoso.com", "sip:carol@contoso.com")
    register = reg.request("REGISTER", uri="sip:contoso.com", in_dialog=False, extra=[("Expires", "7200")])
    ts = send(b.at(20.0), True, register)
    challenge = [sip.ntlm_challenge("fe01.contoso.com")]
    ts = send(ts + 2_000, False, reg.respond(register, 401, "Unauthorized", extra=challenge))
    auth = sip.ntlm_authorization(flow.rng, "fe01.contoso.com")
    extra = [("Expires", "7200"), auth]
    register = reg.request("REGISTER", uri="sip:contoso.com", in_dialog=False, extra=extra)
    ts = send(ts + 3_000, True, register)
    ts = send(ts + 2_000, False, reg.respond(register, 200, "OK"))
    dialog = sip.Dialog(flow.rng, "UDP", client, fe, "sip:carol@contoso.com", "sip:dave@contoso.com")
    offer = calls.Offer(("10.0.5.31", 21000), "RTP/SAVP", (9, 101), crypto=True, encryption="required")
    answer = calls.Offer((FE1, 50040), "RTP/SAVP", (9, 101), crypto=True, encryption="required")
    send, ts = calls.invite_dialog(flow, dialog, log, ts + 1_000_000, offer, answer)
    for f, name, facts in calls.media_session(
        b.out,
        "sip-udp-call-g722-srtp",
        offer.at,
        answer.at,
        ts + 30_000,
        30.0,
        media.G722,
        True,
        True,
        str(b.seed),
    ):
        b.label(f, name, facts)
    calls.hang_up(send, dialog, ts + 30_200_000)
    b.label(flow, "client-fe-sip-udp", log.facts())


def _gateway_call(b: _Builder) -> None:
    gw, med = (GATEWAY, 41000), (MEDIATION, 5068)
    flow = b.tcp(gw, med, "gw-mediation-sip-tcp")
    log = calls.SipLog()
    caller, callee = "sip:+14255550100@10.0.3.5;user=phone", "sip:+14255550199@contoso.com;user=phone"
    dialog = sip.Dialog(flow.rng, "TCP", gw, med, caller, callee)
    ts = flow.open(b.at(8.0))
    offer = calls.Offer((GATEWAY, 20000), "RTP/AVP", (8, 101))
    answer = calls.Offer((MEDIATION, 49160), "RTP/AVP", (8, 101))
    send, ts = calls.invite_dialog(flow, dialog, log, ts + 100, offer, answer, ring_us=800_000)
    for f, name, facts in calls.media_session(
        b.out,
        "gw-mediation-pcma",
        offer.at,
        answer.at,
        ts + 20_000,
        30.0,
        media.PCMA,
        False,
        False,
        str(b.seed),
    ):
        b.label(f, name, facts)
    ts = calls.hang_up(send, dialog, ts + 30_100_000)
    flow.close(flow.ack(ts + 200_000, True) + 500_000)
    b.label(flow, "gw-mediation-sip-tcp", log.facts())


def _unsignalled_media(b: _Builder) -> None:
    streams = [
        ("srtp-rtaudio-nosig", ("10.0.5.40", 22000), (FE1, 50100), 5.0, 30.0, media.RTAUDIO, True, True),
        ("rtp-siren-nosig", ("10.0.5.41", 23000), (FE1, 50200), 6.0, 30.0, media.SIREN, False, True),
        ("rtp-g722-nosig", ("10.0.5.42", 24000), (FE1, 50300), 7.0, 20.0, media.G722, False, False),
    ]
    for name, a, z, when, seconds, codec, srtp, rtcp in streams:
        played = calls.media_session(b.out, name, a, z, b.at(when), seconds, codec, srtp, rtcp, str(b.seed))
        for f, n, facts in played:
            b.label(f, n, facts)


def _http_flows(b: _Builder) -> None:
    requests = [
        ("client-fe-http-abs", ("10.0.5.50", 53000), 0.5, "/abs/handler/D-0e2a-0e2b.lsabs?sig=abc",
         "lyncpool.contoso.com", "application/octet-stream", 4200),
        ("client-fe-http-autodiscover", ("10.0.5.51", 53001), 0.8,
         "/autodiscover/autodiscoverservice.svc/root?originalDomain=contoso.com",
         "lyncdiscoverinternal.contoso.com", "application/vnd.microsoft.rtc.autodiscover+xml; v=1", 900),
    ]  # fmt: skip
    for name, client, when, target, host, ctype, size in requests:
        flow = b.tcp(client, (FE1, 80), name)
        ts = flow.send(flow.open(b.at(when)) + 50, True, http.request("GET", target, host))
        ts = flow.send(ts + 2_000, False, http.response(200, "OK", ctype, flow.rng.randbytes(size)))
        flow.close(flow.ack(ts + 100, True) + 50_000)
        path = http.redacted(target)
        facts = {
            "app": "http",
            "http_method": "GET",
            "http_host": host,
            "http_path": path,
            "http_paths": [path],
        }
        b.label(flow, name, {**facts, "http_requests": 1})


def _stun_flows(b: _Builder) -> None:
    flow = b.udp(("10.0.5.60", 54000), (EDGE_EXT, 3478), "client-edge-stun")
    txid = flow.rng.randbytes(12)
    flow.send(b.at(9.0), True, stun.binding_request(txid))
    flow.send(b.at(9.0) + 1_500, False, stun.binding_response(txid, pk.packed("10.0.5.60"), 54000))
    b.label(flow, "client-edge-stun", {"app": "stun", "stun_messages": 2, "ms_turn": False})
    flow = b.udp(("10.0.5.61", 54001), (EDGE_INT, 3478), "client-edge-msturn-udp")
    txid = flow.rng.randbytes(16)
    flow.send(b.at(9.5), True, stun.ms_turn_allocate_request(flow.rng, txid))
    relayed, mapped = (pk.packed(EDGE_EXT), 50_410), (pk.packed("10.0.5.61"), 54001)
    flow.send(b.at(9.5) + 900, False, stun.ms_turn_allocate_response(flow.rng, txid, relayed, mapped))
    b.label(flow, "client-edge-msturn-udp", {"app": "ms-turn", "stun_messages": 2, "ms_turn": True})


def build_labelled(seed: int = 7) -> Scenario:
    """Every flow kind of the rulebook in one ~140 s capture from 2026-11-26T10:00Z; same seed, same bytes."""
    b = _Builder(seed)
    for part in (
        _http_flows,
        _tls_flows,
        _sip_tcp_call,
        _sip_udp_call,
        _gateway_call,
        _unsignalled_media,
        _stun_flows,
    ):
        part(b)
    # Stable sort: packets with equal timestamps keep the order they were generated in.
    packets = sorted(b.out, key=lambda p: p.ts)
    return Scenario(packets, sorted(b.labels, key=lambda lab: lab.name))


def write(
    scenario: Scenario,
    path: str | os.PathLike[str],
    fmt: str = "pcap",
    link: str = "ethernet",
) -> None:
    """Write as pcap or pcapng, framed as Ethernet, 802.1Q (VLAN 42) or Linux SLL, atomically."""
    if fmt not in ("pcap", "pcapng") or link not in ("ethernet", "vlan", "sll"):
        raise ValueError(f"unsupported format/link: {fmt}/{link}")
    linktype = pk.LINKTYPE_LINUX_SLL if link == "sll" else pk.LINKTYPE_ETHERNET
    framing: dict[str, Callable[[bytes], bytes]] = {
        "ethernet": bytes,
        "vlan": partial(pk.to_vlan, vid=VLAN_ID),
        "sll": pk.to_sll,
    }
    frame = framing[link]
    with atomic_output(path) as fh:
        writer: CaptureWriter = PcapWriter(fh, linktype) if fmt == "pcap" else PcapngWriter(fh, linktype)
        for p in scenario.packets:
            writer.write(round(p.ts * 1_000_000), frame(p.data))
