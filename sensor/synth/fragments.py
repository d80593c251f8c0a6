"""IP fragments: UDP SIP whose SDP (Lync style: audio and video, ICE candidates, SRTP keys) exceeds the MTU."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from sensor.synth import packets as pk
from sensor.synth import sip

SIP_UDP = 5060
SDP_ENCRYPTION = "required"


def lync_sdp(rng: random.Random, ip: str, relay: str, audio: int, video: int) -> bytes:
    """An SDP as Lync 2013 sends it: RTP/AVP with a=crypto and a=encryption, MS-ICE2 candidates, two m= lines."""
    family = "IP6" if ":" in ip else "IP4"
    lines = ["v=0", f"o=- 0 0 IN {family} {ip}", "s=session", f"c=IN {family} {ip}", "b=CT:99980", "t=0 0"]
    lines += ["a=x-mediabw:main-video send=8100;recv=8100", "a=x-devicecaps:audio:send,recv;video:send,recv"]
    for kind, port, pts in (
        ("audio", audio, "117 104 114 9 112 111 0 8 116 115 4 97 13 118 101"),
        ("video", video, "122 121 123"),
    ):
        lines.append(f"m={kind} {port} RTP/AVP {pts}")
        lines.append(f"a=x-ssrc-range:{rng.randrange(1 << 31)}-{rng.randrange(1 << 31)}")
        lines.append("a=rtcp-fb:* x-message app send:dsh recv:dsh")
        lines.append(f"a=rtcp:{port + 1}")
        lines.append(f"a=ice-ufrag:{rng.randbytes(3).hex()}")
        lines.append(f"a=ice-pwd:{rng.randbytes(18).hex()}")
        for component, p in ((1, port), (2, port + 1)):
            lines.append(f"a=candidate:1 {component} UDP 2130706431 {ip} {p} typ host")
            lines.append(f"a=candidate:2 {component} TCP-PASS 174456318 {ip} {p + 20} typ host")
            lines.append(
                f"a=candidate:3 {component} UDP 16648703 {relay} {50000 + p % 1000} typ relay raddr {ip} rport {p}"
            )
            lines.append(
                f"a=candidate:4 {component} TCP-ACT 7076863 {relay} {50500 + p % 1000} typ relay raddr {ip} rport {p}"
            )
        for tag in (1, 2):
            key = rng.randbytes(30).hex()[:40]
            lines.append(f"a=cryptoscale:{tag} client AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:1")
            lines.append(f"a=crypto:{tag} AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:1")
        lines.append(f"a=encryption:{SDP_ENCRYPTION}")
        lines.append(f"a=label:main-{kind}")
        lines += ["a=rtpmap:117 G722/8000/2", "a=rtpmap:104 SILK/16000", "a=rtpmap:114 x-msrta/16000"]
        lines += ["a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(frozen=True)
class SipCall:
    """An INVITE with an offer and its 200 OK with an answer, between two hosts on UDP 5060."""

    caller: str
    callee: str
    invite: bytes
    ok: bytes
    offer_ports: tuple[int, ...]
    answer_ports: tuple[int, ...]


def sip_call(caller: str, callee: str, relay: str, seed: str) -> SipCall:
    """A Lync INVITE with its SDP offer and the 200 OK with the answer, both over UDP 5060; same seed, same bytes."""
    rng = random.Random(seed)
    dialog = sip.Dialog(
        rng,
        "UDP",
        (caller, SIP_UDP),
        (callee, SIP_UDP),
        "sip:fe01@contoso.com",
        "sip:+14255550123@contoso.com;user=phone",
    )
    invite = dialog.request("INVITE", lync_sdp(rng, caller, relay, 50010, 50020), in_dialog=False)
    ok = dialog.respond(invite, 200, "OK", lync_sdp(rng, callee, relay, 49160, 57510))
    return SipCall(caller, callee, invite, ok, (50010, 50020), (49160, 57510))


def fragments(datagram: bytes, size: int, overlap: int = 0) -> list[tuple[int, bytes]]:
    """(offset, bytes) pieces of an IP payload, `size` bytes each (a multiple of 8); overlap > 0 moves the
    second and later pieces back by that many bytes, the first `overlap` bytes of the second piece altered."""
    starts = [0, *range(size - overlap, len(datagram), size)]
    ends = [*starts[1:], len(datagram)]
    ends[0] = size  # the first piece keeps its full size, so the second overlaps it
    pieces = [(a, datagram[a:b]) for a, b in zip(starts, ends, strict=True)]
    if overlap:
        off, data = pieces[1]
        pieces[1] = (off, bytes(b ^ 0x20 for b in data[:overlap]) + data[overlap:])
    return pieces


def _ipv4_fragment(src: bytes, dst: bytes, ident: int, offset: int, more: bool, data: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(data),
        ident,
        (0x2000 if more else 0) | offset // 8,
        64,
        pk.IPPROTO_UDP,
        0,
        src,
        dst,
    )
    return header[:10] + struct.pack("!H", pk.checksum(header)) + header[12:] + data


def _ipv6_fragment(src: bytes, dst: bytes, ident: int, offset: int, more: bool, data: bytes) -> bytes:
    """IPv6 with a Fragment extension header (next header 44, RFC 8200 §4.5)."""
    frag = struct.pack("!BBHI", pk.IPPROTO_UDP, 0, offset | int(more), ident)
    return pk.ipv6(src, dst, 44, frag + data, hop_limit=64)


def fragmented_frames(src_h: str, dst_h: str, payload: bytes, ident: int, mode: str) -> list[bytes]:
    """One UDP datagram (5060 -> 5060) as IP fragments: in-order, reversed, overlap (16 bytes) or incomplete
    (the middle fragment lost). IPv4 at MTU 1500, IPv6 at its minimum MTU, 1280."""
    src, dst = pk.packed(src_h), pk.packed(dst_h)
    v6 = len(src) == 16
    datagram = pk.udp(src, dst, SIP_UDP, SIP_UDP, payload)
    size = 1280 - 40 - 8 if v6 else 1500 - 20
    pieces = fragments(datagram, size, overlap=16 if mode == "overlap" else 0)
    if len(pieces) < 3:
        raise ValueError("the SDP must need at least three fragments")
    build = _ipv6_fragment if v6 else _ipv4_fragment
    packets = [build(src, dst, ident, off, off + len(d) < len(datagram), d) for off, d in pieces]
    if mode == "reversed":
        packets.reverse()
    elif mode == "incomplete":
        del packets[1]
    elif mode not in ("in-order", "overlap"):
        raise ValueError(f"unknown fragment mode {mode!r}")
    ethertype = pk.ETH_IPV6 if v6 else pk.ETH_IPV4
    return [pk.ethernet(pk.mac_for(src_h), pk.mac_for(dst_h), ethertype, p) for p in packets]
