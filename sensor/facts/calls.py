"""SDP per call: offers and answers paired by Call-ID and CSeq, bound to the media flows of the call's lifetime.

RFC 3264: the answer decides what a media stream uses. Lync offers optional encryption as `RTP/AVP` with
`a=crypto` ([MS-SDPEXT] a=encryption:optional); an answer without crypto declines it, so such an offer alone is
no evidence. An offer alone counts only when it requires encryption (`RTP/SAVP`, a=encryption:required). Each m=
line's connection address and port is bound to the media flows that start within the call's lifetime (from the
first offer to BYE, CANCEL, a final failure of the INVITE, or a timeout): a port reused after the call ended
gets nothing from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sensor.facts.media import Evidence
from sensor.facts.sip import SdpMedia, SipMessage

# A call whose end was not seen binds media for this long after its last message.
CALL_TIMEOUT_NS = 4 * 3600 * 1_000_000_000
# Media may start just before the answer that describes it is seen (early media, capture skew).
EARLY_NS = 2 * 1_000_000_000
OFFER_METHODS = frozenset({"INVITE", "UPDATE", "PRACK", "ACK"})


@dataclass(frozen=True)
class Binding:
    """What one SDP m= line says about the media stream arriving at (address, port) in a time window."""

    address: str
    port: int
    rtcp_address: str
    rtcp_port: int
    rtcp_mux: bool
    start_ns: int
    end_ns: int
    evidence: Evidence | None


def _decide(offer: SdpMedia | None, answer: SdpMedia | None) -> Evidence | None:
    if answer is not None:
        if answer.port == 0:
            return None  # stream rejected in the answer: no media
        desc = answer.proto + ("+crypto" if answer.crypto else "")
        if answer.encryption == "rejected":
            return Evidence(False, 0.95, f"sdp:answer {desc} a=encryption:rejected")
        if "SAVP" in answer.proto or answer.crypto:
            return Evidence(True, 0.95, f"sdp:answer {desc}")
        declined = " (offered crypto declined)" if offer is not None and offer.crypto else ""
        return Evidence(False, 0.95, f"sdp:answer {desc}{declined}")
    if offer is not None and ("SAVP" in offer.proto or offer.encryption == "required"):
        enc = f" a=encryption:{offer.encryption}" if offer.encryption else ""
        return Evidence(True, 0.9, f"sdp:offer requires {offer.proto}{enc}")
    return None  # optional crypto in an offer is not evidence


def _binds(m: SdpMedia, start: int, end: int, ev: Evidence | None) -> Binding | None:
    if not m.address or m.port <= 0:
        return None
    rtcp_port = m.rtcp_port if m.rtcp_port else m.port + 1
    rtcp_addr = m.rtcp_address or m.address
    return Binding(m.address, m.port, rtcp_addr, rtcp_port, m.rtcp_mux, start, end, ev)


def _call_end(msgs: list[SipMessage]) -> int:
    """When a call's media ends: its BYE or CANCEL, a failure answer to its INVITE, else a timeout after it."""
    invite_cseq = next((m.cseq for m in msgs if m.method == "INVITE"), None)
    for m in msgs:
        if m.method in ("BYE", "CANCEL"):
            return m.ts_ns
        if m.status is not None and m.status >= 300 and m.cseq_method == "INVITE" and m.cseq == invite_cseq:
            return m.ts_ns
    return msgs[-1].ts_ns + CALL_TIMEOUT_NS


def _offer_answer_pairs(msgs: list[SipMessage], end: int) -> list[tuple[SipMessage | None, SipMessage | None]]:
    """A call's SDP offers with their answers (None for an offer never answered), up to the time `end`."""
    offers: list[SipMessage] = []
    answered: set[int] = set()
    pairs: list[tuple[SipMessage | None, SipMessage | None]] = []
    for m in msgs:
        if m.ts_ns > end or not m.media:
            continue
        if m.method in OFFER_METHODS and m.method != "ACK":
            offers.append(m)
            continue
        if m.status is not None and m.status < 300:
            # an answer to the offer with the same CSeq; with none, this response is a late offer (RFC 3261
            # §13.2.1: INVITE without SDP, offer in the 2xx, answer in the ACK)
            match = next((o for o in offers if o.cseq == m.cseq and o.method == m.cseq_method), None)
            if match is not None:
                pairs.append((match, m))
                answered.add(id(match))
            else:
                offers.append(m)
        elif m.method == "ACK":
            match = next((o for o in offers if o.status is not None and o.cseq == m.cseq), None)
            if match is not None:
                pairs.append((match, m))
                answered.add(id(match))
    pairs += [(o, None) for o in offers if id(o) not in answered]
    return pairs


class CallIndex:
    """Bindings from every plaintext SIP message seen in a run, looked up by media endpoint and time."""

    def __init__(self, messages: Iterable[SipMessage], legacy_media: Iterable[SdpMedia] = ()) -> None:
        self._by_endpoint: dict[tuple[str, int], list[Binding]] = {}
        self._by_rtcp: dict[tuple[str, int], list[Binding]] = {}
        calls: dict[str, list[SipMessage]] = {}
        for msg in messages:
            if msg.call_id:
                calls.setdefault(msg.call_id, []).append(msg)
        for msgs in calls.values():
            self._call(sorted(msgs, key=lambda m: m.ts_ns))
        # SDP without a Call-ID (Wireshark's fields carry none): each m= line on its own, for the whole run;
        # the answer-decides rule still holds.
        legacy = list(legacy_media)
        for m in legacy:
            ev = _decide(None, m) if m.is_answer else _decide(m, None)
            b = _binds(m, -(1 << 62), 1 << 62, ev)
            if b is not None:
                self._add(b)

    def _add(self, b: Binding) -> None:
        self._by_endpoint.setdefault((b.address, b.port), []).append(b)
        self._by_rtcp.setdefault((b.rtcp_address, b.rtcp_port), []).append(b)

    def _call(self, msgs: list[SipMessage]) -> None:
        end = _call_end(msgs)
        for offer, answer in _offer_answer_pairs(msgs, end):
            t0 = min(x.ts_ns for x in (offer, answer) if x is not None) - EARLY_NS
            om = offer.media if offer is not None else ()
            am = answer.media if answer is not None else ()
            for i in range(max(len(om), len(am))):
                o = om[i] if i < len(om) else None
                a = am[i] if i < len(am) else None
                ev = _decide(o, a)
                for sdp in (o, a):
                    if sdp is not None:
                        b = _binds(sdp, t0, end, ev)
                        if b is not None:
                            self._add(b)

    @staticmethod
    def _latest(cands: list[Binding], ts_ns: int) -> Binding | None:
        live = [b for b in cands if b.start_ns <= ts_ns <= b.end_ns]
        return max(live, key=lambda b: b.start_ns) if live else None

    def binding(self, endpoints: Iterable[tuple[str, int]], ts_ns: int, *, rtcp: bool) -> Binding | None:
        """The binding (latest offer/answer in force at ts_ns) for a flow with these endpoints: an RTP flow by
        its m= address and port; an RTCP flow by its a=rtcp (or port + 1) address and port."""
        index = self._by_rtcp if rtcp else self._by_endpoint
        found: list[Binding] = []
        for ep in endpoints:
            found += index.get(ep, [])
        return self._latest(found, ts_ns)
