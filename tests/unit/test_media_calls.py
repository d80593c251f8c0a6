"""Media verdicts through the whole pipeline from call-scoped SDP and RTCP found either way or muxed, and the R7
findings that follow each verdict (issue 11 parts 1 and 2).

The media payloads here are random bytes on a dynamic payload type (SILK's 103 on an 8/16 kHz clock), which
give no evidence of their own: the verdict can only come from the call's SDP or from RTCP.
"""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sensor.analyze import Analyzer
from sensor.rules.check import Checker
from sensor.synth.media import rtcp_sdes, rtcp_sr
from sensor.synth.pcapio import PcapWriter, atomic_output
from tests.conftest import default_config, flows_by_uid

CALLER, CALLEE, REGISTRAR = "10.7.0.10", "10.7.0.20", "10.7.0.30"  # internal hosts without a role: clients
T0 = 1_700_000_000_000_000  # µs
RAW_IP = 101
NOW = datetime(2030, 1, 1, tzinfo=UTC)


class Capture:
    """Raw-IP packets with their times, written as one pcap."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []
        self.ident = 1

    def ip(
        self, src: str, dst: str, proto: int, payload: bytes, ts: int, *, mtu: int = 0, reverse: bool = False
    ) -> None:
        s = bytes(int(x) for x in src.split("."))
        d = bytes(int(x) for x in dst.split("."))
        self.ident += 1
        if not mtu or len(payload) + 20 <= mtu:
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), self.ident, 0, 64, proto, 0, s, d)
            self.packets.append((ts, hdr + payload))
            return
        step = (mtu - 20) // 8 * 8
        frags = []
        for off in range(0, len(payload), step):
            part = payload[off : off + step]
            word = (off // 8) | (0x2000 if off + step < len(payload) else 0)
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(part), self.ident, word, 64, proto, 0, s, d)
            frags.append(hdr + part)
        if reverse:
            frags.reverse()
        for k, frag in enumerate(frags):
            self.packets.append((ts + k, frag))

    def udp(self, src: tuple[str, int], dst: tuple[str, int], data: bytes, ts: int, **kw: object) -> None:
        self.ip(src[0], dst[0], 17, struct.pack("!HHHH", src[1], dst[1], 8 + len(data), 0) + data, ts, **kw)  # type: ignore[arg-type]

    def write(self, path: Path) -> Path:
        with atomic_output(path) as fh:
            w = PcapWriter(fh, RAW_IP)
            for ts, frame in sorted(self.packets, key=lambda p: p[0]):
                w.write(ts, frame)
        return path


def sdp(addr: str, port: int, proto: str, *, crypto: bool = False, encryption: str | None = None, rtcp: int = 0) -> str:
    lines = ["v=0", f"o=- 7 7 IN IP4 {addr}", "s=session", f"c=IN IP4 {addr}", "t=0 0"]
    lines.append(f"m=audio {port} {proto} 103 104 0 8 101")
    lines += ["a=rtpmap:103 SILK/8000", "a=rtpmap:104 SILK/16000", "a=rtpmap:101 telephone-event/8000"]
    # Lync's SDP is long: ICE candidates, and several crypto lines
    lines += [f"a=candidate:{k} 1 UDP {2130706431 - k} {addr} {port + 2 * k} typ host" for k in range(12)]
    if crypto:
        lines += [
            f"a=crypto:{k} AES_CM_128_HMAC_SHA1_80 inline:cHJpdmF0ZWtleXByaXZhdGVrZXlwcml2YXRla2V5{k}|2^31|1:1"
            for k in (1, 2)
        ]
    if encryption:
        lines.append(f"a=encryption:{encryption}")
    if rtcp:
        lines.append(f"a=rtcp:{rtcp}")
    return "\r\n".join(lines) + "\r\n"


def sip_msg(start: str, call: str, cseq: str, body: str = "") -> bytes:
    head = [
        start,
        f"Via: SIP/2.0/UDP {CALLER}:5060;branch=z9hG4bK{call}",
        "From: <sip:alice@contoso.com>;tag=a1",
        "To: <sip:bob@contoso.com>",
        f"Call-ID: {call}",
        f"CSeq: {cseq}",
        "Max-Forwards: 70",
    ]
    head += ["Content-Type: application/sdp"] if body else []
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def call(cap: Capture, call_id: str, ts: int, offer: str, answer: str | None, *, bye_at: int = 0, **kw: object) -> None:
    """SIP over UDP between caller and registrar: INVITE (offer), 200 OK (answer), ACK, optional BYE."""
    a, r = (CALLER, 5060), (REGISTRAR, 5060)
    cap.udp(a, r, sip_msg("INVITE sip:bob@contoso.com SIP/2.0", call_id, "1 INVITE", offer), ts, **kw)
    if answer is not None:
        cap.udp(r, a, sip_msg("SIP/2.0 200 OK", call_id, "1 INVITE", answer), ts + 1000, **kw)
        cap.udp(a, r, sip_msg("ACK sip:bob@contoso.com SIP/2.0", call_id, "1 ACK"), ts + 2000)
    if bye_at:
        cap.udp(a, r, sip_msg("BYE sip:bob@contoso.com SIP/2.0", call_id, "2 BYE"), bye_at)


def rtp_stream(cap: Capture, src: tuple[str, int], dst: tuple[str, int], ts: int, n: int, seed: int) -> None:
    rng = random.Random(seed)
    for k in range(n):
        hdr = struct.pack("!BBHII", 0x80, 103, (1000 + k) & 0xFFFF, 320 * k, 0xABC000 + seed)
        cap.udp(src, dst, hdr + rng.randbytes(60), ts + 20_000 * k)


def rtcp_plain(ssrc: int, k: int) -> bytes:
    return rtcp_sr(ssrc, T0 + k, 320 * k, 50 * k, 3000 * k, None) + rtcp_sdes(ssrc, "alice@contoso")


def analyse(cap: Capture, tmp_path: Path) -> tuple[list[dict[str, object]], set[tuple[str, str]]]:
    path = cap.write(tmp_path / "call.pcap")
    cfg = default_config()
    table = Analyzer(cfg).run([path]).table
    report = Checker(cfg).check_table(table, tmp_path / "lake", now=NOW, store=False)
    findings = {(f["rule_id"], f["severity"]) for f in report.evaluation.findings.to_pylist()}
    return flows_by_uid(table), findings


def media(flows: list[dict[str, object]], port: int) -> dict[str, object]:
    hits = [f for f in flows if f["app"] in ("rtp", "srtp") and port in (f["orig_p"], f["resp_p"])]
    assert len(hits) == 1, [(f["app"], f["orig_p"], f["resp_p"]) for f in flows]
    return hits[0]


def r7(findings: set[tuple[str, str]]) -> set[str]:
    return {sev for rule, sev in findings if rule == "R7"}


def test_optional_crypto_offer_declined_by_the_answer_is_plain_and_r7_fires(tmp_path: Path) -> None:
    cap = Capture()
    call(
        cap, "c1", T0, sdp(CALLER, 40000, "RTP/AVP", crypto=True, encryption="optional"), sdp(CALLEE, 30000, "RTP/AVP")
    )
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30000), T0 + 5000, 120, 1)
    flows, findings = analyse(cap, tmp_path)
    m = media(flows, 40000)
    assert m["media_encrypted"] is False
    assert any("declined" in str(e) for e in m["media_evidence"])  # type: ignore[union-attr]
    assert r7(findings) == {"violation"}


def test_answer_accepting_crypto_is_encrypted_and_r7_is_quiet(tmp_path: Path) -> None:
    cap = Capture()
    offer = sdp(CALLER, 40000, "RTP/AVP", crypto=True, encryption="optional")
    call(cap, "c1", T0, offer, sdp(CALLEE, 30000, "RTP/AVP", crypto=True))
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30000), T0 + 5000, 120, 1)
    flows, findings = analyse(cap, tmp_path)
    assert media(flows, 40000)["media_encrypted"] is True
    assert r7(findings) == set()


def test_offer_alone_with_optional_crypto_gives_no_verdict(tmp_path: Path) -> None:
    cap = Capture()
    call(cap, "c1", T0, sdp(CALLER, 40000, "RTP/AVP", crypto=True), None)
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30000), T0 + 5000, 120, 1)
    flows, findings = analyse(cap, tmp_path)
    assert media(flows, 40000)["media_encrypted"] is None
    assert r7(findings) == set()


def test_port_reused_after_bye_inherits_nothing(tmp_path: Path) -> None:
    cap = Capture()
    call(cap, "c1", T0, sdp(CALLER, 40000, "RTP/AVP"), sdp(CALLEE, 30000, "RTP/AVP"), bye_at=T0 + 4_000_000)
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30000), T0 + 5000, 100, 1)
    # 10 minutes later another call (its signalling not visible) reuses the client port
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30002), T0 + 600_000_000, 100, 2)
    flows, _ = analyse(cap, tmp_path)
    assert media(flows, 30000)["media_encrypted"] is False
    assert media(flows, 30002)["media_encrypted"] is None


@pytest.mark.parametrize("reverse", [False, True])
def test_fragmented_sdp_binds_the_media(tmp_path: Path, reverse: bool) -> None:
    cap = Capture()
    offer = sdp(CALLER, 40000, "RTP/SAVP", crypto=True, encryption="required")
    answer = sdp(CALLEE, 30000, "RTP/SAVP", crypto=True, encryption="required")
    call(cap, "c1", T0, offer, answer, mtu=576, reverse=reverse)
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30000), T0 + 5000, 120, 1)
    flows, findings = analyse(cap, tmp_path)
    sip = [f for f in flows if f["app"] == "sip"]
    assert len(sip) == 1 and sip[0]["sdp_protos"] == ["RTP/SAVP"]
    assert not [f for f in flows if f["orig_p"] == 0 or f["resp_p"] == 0]
    assert media(flows, 40000)["media_encrypted"] is True
    assert r7(findings) == set()


def test_rtcp_sent_callee_first_convicts_the_plain_stream(tmp_path: Path) -> None:
    cap = Capture()
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30000), T0, 150, 1)
    # the callee's RTCP comes first, so the RTCP flow's originator is the RTP flow's responder
    for k in range(3):
        cap.udp((CALLEE, 30001), (CALLER, 40001), rtcp_plain(0xBEEF, k), T0 + 1000 + k * 1_000_000)
        cap.udp((CALLER, 40001), (CALLEE, 30001), rtcp_plain(0xABC001, k), T0 + 2000 + k * 1_000_000)
    flows, findings = analyse(cap, tmp_path)
    m = media(flows, 40000)
    assert m["media_encrypted"] is False
    assert any(str(e).startswith("companion rtcp:plain-compound") for e in m["media_evidence"])  # type: ignore[union-attr]
    assert "violation" in r7(findings)


def test_rtcp_on_the_sdp_rtcp_port(tmp_path: Path) -> None:
    cap = Capture()
    call(cap, "c1", T0, sdp(CALLER, 40000, "RTP/AVP", crypto=True, rtcp=40010), None)  # offer only: no SDP verdict
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30000), T0 + 5000, 150, 1)
    for k in range(3):
        cap.udp((CALLEE, 30005), (CALLER, 40010), rtcp_plain(0xBEEF, k), T0 + 9000 + k * 1_000_000)
    flows, _ = analyse(cap, tmp_path)
    m = media(flows, 40000)
    assert m["media_encrypted"] is False
    assert any(str(e).startswith("companion rtcp:") for e in m["media_evidence"])  # type: ignore[union-attr]


def test_rtcp_muxed_on_the_rtp_5_tuple(tmp_path: Path) -> None:
    cap = Capture()
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30000), T0, 150, 1)
    for k in range(3):  # RFC 5761: RTCP on the RTP port, packet types 200-204 among the RTP packets
        cap.udp((CALLER, 40000), (CALLEE, 30000), rtcp_plain(0xABC001, k), T0 + 10_000 + k * 1_000_000)
    flows, findings = analyse(cap, tmp_path)
    m = media(flows, 40000)
    assert m["media_encrypted"] is False
    assert any(str(e).startswith("rtcp:plain-compound") for e in m["media_evidence"])  # type: ignore[union-attr]
    assert "violation" in r7(findings)


def test_no_sdp_no_rtcp_no_structure_stays_unknown(tmp_path: Path) -> None:
    cap = Capture()
    rtp_stream(cap, (CALLER, 40000), (CALLEE, 30000), T0, 150, 1)
    flows, findings = analyse(cap, tmp_path)
    assert media(flows, 40000)["media_encrypted"] is None
    assert r7(findings) == set()
