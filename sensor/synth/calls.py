"""Calls: plaintext SIP over TCP or UDP with SDP, and the RTP/SRTP + RTCP/SRTCP media they set up."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sensor.synth import media, sip
from sensor.synth.flow import Flow, Packet, TcpFlow, UdpFlow

Endpoint = tuple[str, int]
Labelled = tuple[Flow, str, dict[str, object]]
RTCP_INTERVAL_US = 5_000_000


@dataclass
class SipLog:
    """What a sensor reading the plaintext SIP of one flow must find, tallied from the messages sent."""

    messages: int = 0
    methods: set[str] = field(default_factory=set)
    codes: set[int] = field(default_factory=set)
    protos: set[str] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    crypto: bool = False
    encryption: str | None = None

    def note(self, msg: bytes) -> bytes:
        self.messages += 1
        head, _, body = msg.partition(b"\r\n\r\n")
        first = head.split(b"\r\n", 1)[0].decode()
        if first.startswith("SIP/2.0 "):
            self.codes.add(int(first.split()[1]))
        else:
            self.methods.add(first.split()[0])
        for line in body.decode().split("\r\n"):
            if line.startswith("m="):
                _, port, proto = line.split()[:3]
                self.protos.add(proto)
                self.ports.add(int(port))
            elif line.startswith("a=crypto:"):
                self.crypto = True
            elif line.startswith("a=encryption:"):
                self.encryption = line.split(":", 1)[1]
        return msg

    def facts(self) -> dict[str, object]:
        return {
            "app": "sip",
            "sip_plain": True,
            "sip_messages": self.messages,
            "sip_methods": sorted(self.methods),
            "sip_status_codes": sorted(self.codes),
            "sdp_protos": sorted(self.protos),
            "sdp_media_ports": sorted(self.ports),
            "sdp_crypto": self.crypto,
            "sdp_encryption": self.encryption,
        }


def sender(flow: Flow, log: SipLog) -> Callable[[int, bool, bytes], int]:
    """Send one SIP message on a TCP or UDP flow; returns its arrival time at the peer."""

    def send(ts: int, from_orig: bool, msg: bytes) -> int:
        log.note(msg)
        if isinstance(flow, TcpFlow):
            return flow.send(ts, from_orig, msg)
        assert isinstance(flow, UdpFlow)
        flow.send(ts, from_orig, msg)
        return ts + 300

    return send


@dataclass(frozen=True)
class Offer:
    """The media one side announces: address, port, SDP transport and payload types."""

    at: Endpoint
    proto: str
    pts: tuple[int, ...]
    crypto: bool = False
    encryption: str | None = None

    def sdp(self, rng: random.Random) -> bytes:
        return sip.sdp(rng, self.at[0], self.at[1], self.proto, self.pts, self.crypto, self.encryption)


def invite_dialog(
    flow: Flow,
    dialog: sip.Dialog,
    log: SipLog,
    ts: int,
    offer: Offer,
    answer: Offer,
    ring_us: int = 1_500_000,
) -> tuple[Callable[[int, bool, bytes], int], int]:
    """INVITE/100/180/200 (SDP both ways)/ACK from the flow originator; returns (sender, answer time)."""
    send = sender(flow, log)
    rng = flow.rng
    invite = dialog.request("INVITE", offer.sdp(rng), in_dialog=False)
    ts = send(ts, True, invite)
    ts = send(ts + 5_000, False, dialog.respond(invite, 100, "Trying"))
    ts = send(ts + ring_us, False, dialog.respond(invite, 180, "Ringing"))
    ts = send(ts + 2 * ring_us, False, dialog.respond(invite, 200, "OK", answer.sdp(rng)))
    ts = send(ts + 1_000, True, dialog.request("ACK", same_cseq=True))
    return send, ts


def hang_up(send: Callable[[int, bool, bytes], int], dialog: sip.Dialog, ts: int) -> int:
    """Send BYE from the dialog originator and its 200 OK; returns the time of the answer."""
    bye = dialog.request("BYE")
    ts = send(ts, True, bye)
    return send(ts + 2_000, False, dialog.respond(bye, 200, "OK"))


@dataclass
class _Direction:
    ssrc: int
    seq: int
    rtp_ts: int
    first_us: int
    count: int = 0
    octets: int = 0
    payload: bytes = b""


def media_session(
    out: list[Packet],
    name: str,
    a: Endpoint,
    b: Endpoint,
    start_us: int,
    seconds: float,
    codec: media.Codec,
    srtp: bool,
    rtcp: bool,
    seed: str,
) -> list[Labelled]:
    """Bidirectional 20 ms media between a (originator) and b, plus RTCP/SRTCP on port+1 every 5 s."""
    rng = random.Random(f"{seed}:{name}")
    nprng = np.random.default_rng(rng.randrange(1 << 32))
    n = int(seconds * 1_000_000) // media.PTIME_US
    # The answerer's stream starts 9 ms after the caller's, so the caller is the flow originator.
    sides = {
        orig: _Direction(rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32), start_us + delay)
        for orig, delay in ((True, 0), (False, 9_000))
    }
    if codec.encoding != "opaque" and not srtp:
        for side in sides.values():
            side.payload = media.encoded_speech(nprng, codec, seconds + 1)
    flow = UdpFlow(out, a[0], a[1], b[0], b[1], f"{seed}:{name}:rtp")
    events: list[tuple[int, bool, int]] = []
    for d, s in sides.items():
        events += [(s.first_us + k * media.PTIME_US + rng.randrange(400), d, k) for k in range(n)]
    for ts, from_orig, k in sorted(events):
        s = sides[from_orig]
        size = rng.randint(codec.min_len, codec.max_len)
        if s.payload:
            body = s.payload[k * size : (k + 1) * size]
        else:
            body = rng.randbytes(size) + (rng.randbytes(media.SRTP_TAG_LEN) if srtp else b"")
        header = media.rtp_header(codec.pt, s.seq + k, s.rtp_ts + k * codec.ts_step, s.ssrc, marker=k == 0)
        flow.send(ts, from_orig, header + body)
        s.count += 1
        s.octets += size
    facts: dict[str, object] = {
        "app": "srtp" if srtp else "rtp",
        "media_encrypted": srtp,
        "rtp_payload_types": [codec.pt],
        "rtp_ssrcs": 2,
        "rtp_packets": 2 * n,
    }
    result: list[Labelled] = [(flow, name, facts)]
    if rtcp:
        result.append(_rtcp_session(out, name, a, b, sides, n, codec, srtp, rng, seed))
    return result


def _rtcp_session(
    out: list[Packet],
    name: str,
    a: Endpoint,
    b: Endpoint,
    sides: dict[bool, _Direction],
    n: int,
    codec: media.Codec,
    srtp: bool,
    rng: random.Random,
    seed: str,
) -> Labelled:
    flow = UdpFlow(out, a[0], a[1] + 1, b[0], b[1] + 1, f"{seed}:{name}:rtcp")
    end_us = max(s.first_us for s in sides.values()) + n * media.PTIME_US
    events = []
    for from_orig, s in sides.items():
        offset = 2_500_000 if from_orig else 3_100_000
        events += [(ts, from_orig) for ts in range(s.first_us + offset, end_us, RTCP_INTERVAL_US)]
    index = {True: 0, False: 0}
    for ts, from_orig in sorted(events):
        s, peer = sides[from_orig], sides[not from_orig]
        sent = min(n, (ts - s.first_us) // media.PTIME_US + 1)
        octets = sent * (codec.min_len + codec.max_len) // 2
        rtp_ts = s.rtp_ts + (sent - 1) * codec.ts_step
        compound = media.rtcp_sr(s.ssrc, ts, rtp_ts, sent, octets, peer.ssrc)
        compound += media.rtcp_sdes(s.ssrc, f"{s.ssrc:08x}@contoso.com")
        index[from_orig] += 1
        flow.send(ts, from_orig, media.srtcp(compound, index[from_orig], rng) if srtp else compound)
    packets = len(events)
    facts: dict[str, object] = {
        "app": "srtcp" if srtp else "rtcp",
        "media_encrypted": srtp,
        "rtcp_packets": packets,
    }
    return flow, f"{name}-rtcp", facts
