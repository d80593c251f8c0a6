"""SDP per call: the answer decides, optional crypto in an offer is no evidence, bindings end with the call."""

from __future__ import annotations

from sensor.facts.calls import CallIndex
from sensor.facts.sip import SdpMedia, SipMessage, parse_message

S = 1_000_000_000
CLIENT, SERVER = "192.0.2.10", "192.0.2.20"


def sdp(addr: str, port: int, proto: str, *, crypto: bool = False, encryption: str | None = None) -> str:
    lines = ["v=0", f"o=- 1 1 IN IP4 {addr}", "s=session", f"c=IN IP4 {addr}", "t=0 0", f"m=audio {port} {proto} 0 8"]
    if crypto:
        lines.append("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|2^31")
    if encryption:
        lines.append(f"a=encryption:{encryption}")
    lines.append(f"a=rtcp:{port + 1}")
    return "\r\n".join(lines) + "\r\n"


def message(start: str, call_id: str, cseq: str, ts: int, body: str = "") -> SipMessage:
    head = [
        start,
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1",
        "From: <sip:alice@example.com>;tag=1",
        "To: <sip:bob@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq}",
    ]
    if body:
        head += ["Content-Type: application/sdp", f"Content-Length: {len(body)}"]
    else:
        head.append("Content-Length: 0")
    raw = ("\r\n".join(head) + "\r\n\r\n" + body).encode()
    msg, _ = parse_message(raw, 0, ts, stream=False)
    assert msg is not None
    return msg


def invite(call: str, ts: int, body: str) -> SipMessage:
    return message("INVITE sip:bob@example.com SIP/2.0", call, "1 INVITE", ts, body)


def ok(call: str, ts: int, body: str = "", cseq: str = "1 INVITE") -> SipMessage:
    return message("SIP/2.0 200 OK", call, cseq, ts, body)


def bye(call: str, ts: int) -> SipMessage:
    return message("BYE sip:bob@example.com SIP/2.0", call, "2 BYE", ts)


def verdict(index: CallIndex, port: int, ts: int, *, rtcp: bool = False) -> bool | None:
    b = index.binding([(CLIENT, port), (SERVER, 30000)], ts, rtcp=rtcp)
    return None if b is None or b.evidence is None else b.evidence.encrypted


def test_optional_crypto_offer_declined_by_the_answer_is_plain() -> None:
    msgs = [
        invite("c1", 10 * S, sdp(CLIENT, 40000, "RTP/AVP", crypto=True, encryption="optional")),
        ok("c1", 11 * S, sdp(SERVER, 30000, "RTP/AVP")),
    ]
    index = CallIndex(msgs)
    assert verdict(index, 40000, 12 * S) is False
    b = index.binding([(CLIENT, 40000)], 12 * S, rtcp=False)
    assert b is not None and b.evidence is not None and "declined" in b.evidence.text


def test_answer_accepting_crypto_is_encrypted() -> None:
    msgs = [
        invite("c1", 10 * S, sdp(CLIENT, 40000, "RTP/AVP", crypto=True, encryption="optional")),
        ok("c1", 11 * S, sdp(SERVER, 30000, "RTP/AVP", crypto=True)),
    ]
    assert verdict(CallIndex(msgs), 40000, 12 * S) is True


def test_offer_alone_is_evidence_only_when_it_requires_encryption() -> None:
    optional = CallIndex([invite("c1", 10 * S, sdp(CLIENT, 40000, "RTP/AVP", crypto=True))])
    assert verdict(optional, 40000, 12 * S) is None
    required = CallIndex([invite("c2", 10 * S, sdp(CLIENT, 40002, "RTP/AVP", crypto=True, encryption="required"))])
    assert verdict(required, 40002, 12 * S) is True
    savp = CallIndex([invite("c3", 10 * S, sdp(CLIENT, 40004, "RTP/SAVP", crypto=True))])
    assert verdict(savp, 40004, 12 * S) is True


def test_a_port_reused_after_bye_gets_nothing_from_the_ended_call() -> None:
    msgs = [
        invite("c1", 10 * S, sdp(CLIENT, 40000, "RTP/AVP")),
        ok("c1", 11 * S, sdp(SERVER, 30000, "RTP/AVP")),
        bye("c1", 60 * S),
    ]
    index = CallIndex(msgs)
    assert verdict(index, 40000, 20 * S) is False  # during the call
    assert verdict(index, 40000, 120 * S) is None  # a later call reusing the client port


def test_a_failed_invite_ends_the_call() -> None:
    msgs = [
        invite("c1", 10 * S, sdp(CLIENT, 40000, "RTP/AVP")),
        message("SIP/2.0 486 Busy Here", "c1", "1 INVITE", 11 * S),
    ]
    assert verdict(CallIndex(msgs), 40000, 30 * S) is None


def test_late_offer_in_the_200_answered_in_the_ack() -> None:
    msgs = [
        invite("c1", 10 * S, ""),
        ok("c1", 11 * S, sdp(SERVER, 30000, "RTP/AVP", crypto=True)),
        message("ACK sip:bob@example.com SIP/2.0", "c1", "1 ACK", 12 * S, sdp(CLIENT, 40000, "RTP/AVP")),
    ]
    assert verdict(CallIndex(msgs), 40000, 13 * S) is False


def test_rtcp_binds_on_the_a_rtcp_port() -> None:
    msgs = [
        invite("c1", 10 * S, sdp(CLIENT, 40000, "RTP/SAVP", crypto=True)),
        ok("c1", 11 * S, sdp(SERVER, 30000, "RTP/SAVP", crypto=True)),
    ]
    index = CallIndex(msgs)
    assert verdict(index, 40001, 12 * S, rtcp=True) is True


def test_sdp_without_call_id_still_lets_the_answer_decide() -> None:
    offer = SdpMedia(CLIENT, 40000, "RTP/AVP", True, "optional", False)
    answer = SdpMedia(SERVER, 30000, "RTP/AVP", False, None, True)
    assert verdict(CallIndex([], [offer]), 40000, S) is None
    assert verdict(CallIndex([], [offer, answer]), 30000, S) is False
