"""The media verdict: evidence from a flow's RTP/RTCP statistics and its payload, each with a confidence."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sensor.fastpath.rtp import (
    NPS,
    POS_BYTES,
    POS_MIN_PACKETS,
    PS_CLK_N,
    PS_CN_HIGH,
    PS_CN_N,
    PS_CN_SHORT,
    PS_DISTINCT,
    PS_POS_N,
    PS_RED_FIT,
    PS_RED_SEEN,
    PS_SAME_TS,
    PS_STEP48,
    PS_TE_BAD,
    PS_TE_OK,
    PS_TE_TAG,
    STRUCTURE_FRACTION,
    UNIFORM_SIGMAS,
)


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
    payload: tuple[int, ...] = ()  # the flow's row of payload statistics (columns PS_*), empty if not kept


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


def _uniform_distinct(n: int) -> tuple[float, float]:
    """Mean and standard deviation of the number of distinct values among n uniform random bytes."""
    q1, q2 = (255 / 256) ** n, (254 / 256) ** n
    mean = 256 * (1 - q1)
    var = 256 * 255 * q2 + 256 * q1 - 256 * 256 * q1 * q1
    return mean, math.sqrt(max(var, 1e-9))


def structured_when_plain(ps: Sequence[int]) -> str | None:
    """Why this stream's plain payloads would start with structure, or None if nothing says so.

    Every RTP video format puts a payload header first (H.264 NAL header RFC 6184, VP8 descriptor RFC 7741,
    H.263 RFC 4629/2190, Lync's RTVideo), and only video spreads a frame over packets sharing a timestamp;
    Opus (48 kHz clock, RFC 7587) starts each packet with its TOC byte. Narrow- and wideband speech codecs
    (G.711 noise, G.722, G.729, SILK, Siren, RTAudio) can look random in the clear, so uniform bytes say
    nothing about them. Both tests read the RTP header, which SRTP leaves in the clear.
    """
    n = ps[PS_CLK_N] + ps[PS_CLK_N + 1]
    if n < POS_MIN_PACKETS:
        return None
    same = ps[PS_SAME_TS] + ps[PS_SAME_TS + 1]
    if same >= 0.1 * n:
        return f"video: {same}/{n} pkts share a frame timestamp"
    step48 = ps[PS_STEP48] + ps[PS_STEP48 + 1]
    if step48 >= 0.8 * n:
        return f"opus: {step48}/{n} timestamp steps of a 48kHz frame"
    return None


def payload_evidence(ps: Sequence[int]) -> list[Evidence]:
    """Evidence from the payload bytes themselves (columns PS_* of one flow; see observe_payload)."""
    ev: list[Evidence] = []
    if len(ps) < NPS:
        return ev
    n = ps[PS_POS_N]
    if n >= POS_MIN_PACKETS:
        distinct = [ps[PS_DISTINCT + j] for j in range(POS_BYTES)]
        low = min(distinct)
        mean, sd = _uniform_distinct(n)
        text = f"bytes0-{POS_BYTES - 1} distinct {'/'.join(map(str, distinct))} of {n} pkts"
        if low <= STRUCTURE_FRACTION * mean:
            ev.append(Evidence(False, 0.85, f"payload:structure {text}"))
        elif low >= mean - UNIFORM_SIGMAS * sd:
            why = structured_when_plain(ps)
            if why is not None:
                ev.append(Evidence(True, 0.8, f"payload:uniform {text} ({why})"))
    cn = ps[PS_CN_N]
    if cn >= 3:
        if ps[PS_CN_SHORT] > 0 and ps[PS_CN_HIGH] == 0:
            ev.append(Evidence(False, 0.8, f"payload:cn-plain {ps[PS_CN_SHORT]}/{cn} of 1-4 bytes, levels < 128"))
        elif ps[PS_CN_SHORT] == 0 and ps[PS_CN_HIGH] >= 0.2 * cn:
            ev.append(Evidence(True, 0.7, f"payload:cn-tag {cn} of 5+ bytes, {ps[PS_CN_HIGH]} levels >= 128"))
    ok, bad, tagged = ps[PS_TE_OK], ps[PS_TE_BAD], ps[PS_TE_TAG]
    if ok >= 3 and bad == 0 and tagged == 0:
        ev.append(Evidence(False, 0.8, f"payload:telephone-event {ok} plain 4-byte events"))
    elif tagged >= 3 and ok == 0:
        ev.append(Evidence(True, 0.7, f"payload:telephone-event+tag {tagged} of 8/14 bytes"))
    if ps[PS_RED_FIT] >= 3:
        seen = ps[PS_RED_SEEN]
        conf = 0.85 if seen else 0.7
        ev.append(Evidence(False, conf, f"payload:red-headers {ps[PS_RED_FIT]} ({seen} naming a type of the stream)"))
    return ev


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
    ev += payload_evidence(s.payload)
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
