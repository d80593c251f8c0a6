"""RTP/SRTP and RTCP/SRTCP: static payload-type table, compiled per-packet tests, and the media verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

import sensor.jit  # noqa: F401  (numba cache location; before any @njit)

# RFC 3551 static payload types whose frame size is fixed: bytes per 10 ms of audio.
# Source: RFC 3551 §4.5 (PCMU/PCMA 64 kbit/s = 80 bytes per 10 ms; G722 64 kbit/s; G729 8 kbit/s; GSM 33/20 ms).
STATIC_FRAME_UNIT: dict[int, tuple[str, int]] = {
    0: ("PCMU", 80),
    8: ("PCMA", 80),
    9: ("G722", 80),
    18: ("G729", 10),
    3: ("GSM", 33),
}
# G.711 payloads show the structure of companded speech (RFC 3551 §4.5.14); other codecs look random.
G711_TYPES = (0, 8)

FRAME_UNIT = np.zeros(128, np.int64)
for _pt, (_name, _unit) in STATIC_FRAME_UNIT.items():
    FRAME_UNIT[_pt] = _unit

# RFC 3711 §3.1, §3.4: SRTP appends an authentication tag (80 bits for AES_CM_128_HMAC_SHA1_80, the only
# suite Lync offers per [MS-SDPEXT]; 32 bits for _32); SRTCP appends a 32-bit E-flag|index word plus the tag.
SRTP_TAG_LENGTHS = (10, 4)
SRTCP_TRAILER = 4 + 10

# Per-flow media statistics kept by the compiled flow table, one column each (see flows.MS_*).
NIB_SAMPLE_PACKETS = 64


@nb.njit(cache=True, nogil=True)
def rtp_header_len(buf, p, n):  # type: ignore[no-untyped-def]
    """Length of the RTP header (fixed 12 bytes, CSRCs, extension); -1 when it overruns the payload."""
    b0 = buf[p]
    hl = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if hl + 4 > n:
            return -1
        hl += 4 + 4 * ((np.int64(buf[p + hl + 2]) << 8) | buf[p + hl + 3])
    if hl > n:
        return -1
    return hl


@nb.njit(cache=True, nogil=True)
def rtcp_kind(buf, p, n):  # type: ignore[no-untyped-def]
    """1: plain RTCP (the compound chain sums exactly to the datagram); 2: SRTCP-shaped (chain breaks
    after the first packet, 14-byte trailer with the E flag); 0: neither. RFC 3550 §6.1, RFC 3711 §3.4."""
    off = 0
    first_len = -1
    while off + 4 <= n:
        if (buf[p + off] & 0xC0) != 0x80:
            break
        pt = buf[p + off + 1]
        if pt < 192 or pt > 223:
            break
        ln = (((np.int64(buf[p + off + 2]) << 8) | buf[p + off + 3]) + 1) * 4
        if first_len < 0:
            first_len = ln
        off += ln
        if off == n:
            return 1
    if first_len >= 8 and n >= 8 + 14 and (buf[p + n - 14] & 0x80):
        return 2
    return 0


@dataclass(frozen=True)
class MediaStats:
    """Per-flow media counters from the fast path (whole flow, both directions)."""

    rtp_packets: int
    rtcp_packets: int
    udp_packets: int
    ssrc_same: int
    seq_ok: int
    len_tested: int
    len_plain: int
    len_tag: int
    nib_counts: tuple[int, ...]
    rtcp_plain: int
    rtcp_srtcp: int
    payload_types: tuple[int, ...]


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence about media protection."""

    encrypted: bool
    confidence: float
    text: str


def is_rtp_stream(s: MediaStats) -> bool:
    """RTP-shaped: version 2 headers on most datagrams, a stable SSRC and mostly consecutive sequence numbers."""
    # A flow may also carry STUN connectivity checks and a DTLS handshake (ICE, DTLS-SRTP) on the same 5-tuple.
    if s.rtp_packets < 3 or s.rtp_packets < 0.25 * s.udp_packets:
        return False
    return s.ssrc_same >= 0.8 * s.rtp_packets and s.seq_ok >= 0.5 * s.rtp_packets


def is_rtcp_stream(s: MediaStats) -> bool:
    """RTCP-shaped: most datagrams start with an RTCP header (PT 200-204)."""
    return s.rtcp_packets >= 1 and s.rtcp_packets >= 0.8 * s.udp_packets and s.rtp_packets <= s.rtcp_packets


def own_evidence(s: MediaStats) -> list[Evidence]:
    """Evidence from the flow's own packets: RTCP chain/trailer, payload length vs codec frame, G.711 bytes."""
    ev: list[Evidence] = []
    if s.rtcp_srtcp and not s.rtcp_plain:
        ev.append(Evidence(True, 0.9, f"rtcp:srtcp-trailer {s.rtcp_srtcp}/{s.rtcp_packets}"))
    elif s.rtcp_plain and not s.rtcp_srtcp:
        ev.append(Evidence(False, 0.9, f"rtcp:plain-compound {s.rtcp_plain}/{s.rtcp_packets}"))
    if s.len_tested >= 3:
        if s.len_tag >= 0.8 * s.len_tested:
            ev.append(Evidence(True, 0.8, f"len:codec-frame+auth-tag {s.len_tag}/{s.len_tested}"))
        elif s.len_plain >= 0.8 * s.len_tested:
            ev.append(Evidence(False, 0.8, f"len:codec-frame {s.len_plain}/{s.len_tested}"))
    n = sum(s.nib_counts)
    if n >= 256:
        # chi-square of the high-nibble histogram against uniform (15 degrees of freedom)
        expected = n / 16.0
        chi2 = sum((c - expected) ** 2 / expected for c in s.nib_counts)
        if chi2 > 200.0:
            ev.append(Evidence(False, 0.7, f"bytes:g711-structure chi2={chi2:.0f}"))
        elif chi2 < 60.0:
            ev.append(Evidence(True, 0.6, f"bytes:uniform chi2={chi2:.0f}"))
    return ev


def verdict(evidence: list[Evidence]) -> tuple[bool | None, float | None]:
    """Combine evidence: the side with more summed confidence wins; disagreement lowers the confidence."""
    if not evidence:
        return None, None
    yes = sum(e.confidence for e in evidence if e.encrypted)
    no = sum(e.confidence for e in evidence if not e.encrypted)
    if yes == no:
        return None, 0.0
    win = yes > no
    best = max(e.confidence for e in evidence if e.encrypted == win)
    conf = best * (max(yes, no) / (yes + no))
    return win, round(conf, 3)
