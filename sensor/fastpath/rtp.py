"""RTP/SRTP and RTCP/SRTCP in the compiled path: payload-type tables and the per-packet statistics kernels."""

from __future__ import annotations

import numba as nb
import numpy as np

import sensor.fastpath.jit  # noqa: F401  (numba cache location; before any @njit)

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

# Payload kinds by payload type, for the payload tests. Static types: RFC 3551 §6 (13 CN; 34 H.263).
# Dynamic types as Lync Server 2013 assigns them in its SDP (issue 11): RED 97, telephone-event 101, CN 118;
# other implementations may reuse these numbers, so every test on them also checks the payload's shape.
PK_OTHER, PK_CN, PK_TE = 0, 1, 2
PT_KIND = np.zeros(128, np.int64)
PT_KIND[13] = PK_CN
PT_KIND[19] = PK_CN  # RFC 1890's reserved CN type, still sent by old gateways
PT_KIND[118] = PK_CN
PT_KIND[101] = PK_TE

# Positional verdicts: at least POS_MIN_PACKETS sampled packets; "structure" when some byte position took at
# most STRUCTURE_FRACTION of the distinct values uniform bytes give; "uniform" when every position is within
# UNIFORM_SIGMAS standard deviations of it (calibrated on the ffmpeg corpus, tests/support/media_corpus.py).
POS_MIN_PACKETS = 32
STRUCTURE_FRACTION = 0.5
UNIFORM_SIGMAS = 4.0

# Per-flow payload statistics (one int64 row per flow, kept by the flow table; observe_payload writes them).
# Positional byte statistics: the first POS_SAMPLE RTP packets of the flow whose payload is at least
# POS_MIN_BODY bytes (so bytes 0..3 lie before an SRTP tag), a 256-bit set of the values of each of
# payload bytes 0..POS_BYTES-1, and the number of distinct values per byte.
POS_BYTES = 4
POS_SAMPLE = 64
POS_MIN_BODY = 4 + 10
# Timestamp sample per direction: over the first CLOCK_SAMPLE packets, how many advance the RTP timestamp by an
# Opus frame (10/20/40/60 ms at the 48 kHz clock RFC 7587 mandates), and how many media packets (20 bytes or
# more) repeat the previous packet's timestamp, as the packets of one video frame do (RFC 3550 §5.1).
CLOCK_SAMPLE = 64
OPUS_STEPS = (480, 960, 1920, 2880)
PS_POS_N = 0
PS_DISTINCT = 1  # .. +POS_BYTES
PS_BITS = PS_DISTINCT + POS_BYTES  # POS_BYTES x 4 words of 64 bits
PS_CLK_N = PS_BITS + 4 * POS_BYTES  # per direction (2 columns each from here on)
PS_STEP48 = PS_CLK_N + 2
PS_SAME_TS = PS_STEP48 + 2
PS_PREV_TS = PS_SAME_TS + 2
PS_PREV_PT = PS_PREV_TS + 2
PS_PREV_DUR = PS_PREV_PT + 2
PS_SAME_TS = PS_PREV_DUR + 2  # packets carrying the previous packet's timestamp (video frames, events)
# Comfort noise (RFC 3389): packets, plain-only lengths (1-4 bytes), level byte with the top bit set
# (plain levels are 0..127 -dBov), and lengths that hold a tag (5 bytes or more).
PS_CN_N = PS_SAME_TS + 2
PS_CN_SHORT = PS_CN_N + 1
PS_CN_HIGH = PS_CN_SHORT + 1
PS_CN_LONG = PS_CN_HIGH + 1
# telephone-event (RFC 4733): 4-byte events that parse (event <= 16, R bit clear, duration rising within an
# event), 4-byte packets that do not, and 8- or 14-byte packets (the event plus a 4- or 10-byte tag).
PS_TE_OK = PS_CN_LONG + 1
PS_TE_BAD = PS_TE_OK + 1
PS_TE_TAG = PS_TE_BAD + 1
# RED (RFC 2198): packets whose block headers parse, fit the payload and name one payload type, and those
# whose named type was also seen as an RTP payload type of the flow; a 128-bit set of the types seen.
PS_RED_FIT = PS_TE_TAG + 1
PS_RED_SEEN = PS_RED_FIT + 1
PS_PT_LO = PS_RED_SEEN + 1
PS_PT_HI = PS_PT_LO + 1
PS_RTP_N = PS_PT_HI + 1
NPS = PS_RTP_N + 1
# Packets of a flow inspected for RED headers: enough to decide within the stream's first 100 packets.
RED_SAMPLE = 128


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


@nb.njit(cache=True, nogil=True, inline="always")
def _pt_seen(ps, f, pt):  # type: ignore[no-untyped-def]
    if pt < 64:
        return (ps[f, PS_PT_LO] >> np.int64(pt)) & 1
    return (ps[f, PS_PT_HI] >> np.int64(pt - 64)) & 1


@nb.njit(cache=True, nogil=True)
def _red_fit(buf, p, body, pt):  # type: ignore[no-untyped-def]
    """The payload type a RED header chain names (RFC 2198 §3), or -1: at least one redundant block,
    every block and the primary naming the same type (not RED's own), lengths that fit the payload."""
    off = 0
    total = 0
    named = -1
    blocks = 0
    while off < body and (buf[p + off] & 0x80):
        if off + 4 > body or blocks == 8:
            return -1
        bpt = buf[p + off] & 0x7F
        tsoff = (np.int64(buf[p + off + 1]) << 6) | (buf[p + off + 2] >> 2)
        blen = ((np.int64(buf[p + off + 2]) & 3) << 8) | buf[p + off + 3]
        if tsoff == 0 or blen == 0 or (named >= 0 and bpt != named):
            return -1
        named = bpt
        total += blen
        off += 4
        blocks += 1
    if blocks == 0 or off >= body:
        return -1
    if (buf[p + off] & 0x7F) != named or named == pt or off + 1 + total > body:
        return -1
    return named


@nb.njit(cache=True, nogil=True)
def observe_payload(buf, poff, plen, hl, pt, d, ps, f):  # type: ignore[no-untyped-def]
    """Payload statistics of one RTP packet (datagram at poff, plen bytes, header hl bytes, direction d)
    into row f of the per-flow array ps (columns PS_*)."""
    if hl <= 0:
        return
    p = poff + hl
    body = plen - hl
    n = ps[f, PS_RTP_N]
    ps[f, PS_RTP_N] = n + 1
    rts = (np.int64(buf[poff + 4]) << 24) | (np.int64(buf[poff + 5]) << 16) | (np.int64(buf[poff + 6]) << 8)
    rts |= buf[poff + 7]
    same = ps[f, PS_CLK_N + d] > 0 and rts == ps[f, PS_PREV_TS + d] and pt == ps[f, PS_PREV_PT + d]
    k = ps[f, PS_CLK_N + d]
    if k < CLOCK_SAMPLE:
        if k > 0 and pt == ps[f, PS_PREV_PT + d]:
            step = (rts - ps[f, PS_PREV_TS + d]) & 0xFFFFFFFF
            if step == 480 or step == 960 or step == 1920 or step == 2880:
                ps[f, PS_STEP48 + d] += 1
            elif step == 0 and body >= 20:
                ps[f, PS_SAME_TS + d] += 1
        ps[f, PS_CLK_N + d] = k + 1
    kind = PT_KIND[pt]
    if kind == PK_CN and body > 0:
        ps[f, PS_CN_N] += 1
        if body <= 4:
            ps[f, PS_CN_SHORT] += 1
        else:
            ps[f, PS_CN_LONG] += 1
        if buf[p] & 0x80:
            ps[f, PS_CN_HIGH] += 1
    elif body == 4 and (kind == PK_TE or same):
        dur = (np.int64(buf[p + 2]) << 8) | buf[p + 3]
        rising = not same or dur >= ps[f, PS_PREV_DUR + d]
        if buf[p] <= 16 and (buf[p + 1] & 0x40) == 0 and dur > 0 and rising:
            ps[f, PS_TE_OK] += 1
        else:
            ps[f, PS_TE_BAD] += 1
        ps[f, PS_PREV_DUR + d] = dur
    elif (body == 8 or body == 14) and (kind == PK_TE or same):
        ps[f, PS_TE_TAG] += 1
    ps[f, PS_PREV_TS + d] = rts
    ps[f, PS_PREV_PT + d] = pt
    if n < RED_SAMPLE and body >= 6:
        named = _red_fit(buf, p, body, pt)
        if named >= 0:
            ps[f, PS_RED_FIT] += 1
            if _pt_seen(ps, f, named):
                ps[f, PS_RED_SEEN] += 1
    if pt < 64:
        ps[f, PS_PT_LO] |= np.int64(1) << np.int64(pt)
    else:
        ps[f, PS_PT_HI] |= np.int64(1) << np.int64(pt - 64)
    if body >= POS_MIN_BODY and ps[f, PS_POS_N] < POS_SAMPLE and kind == PK_OTHER:
        ps[f, PS_POS_N] += 1
        for j in range(POS_BYTES):
            v = np.int64(buf[p + j])
            col = PS_BITS + 4 * j + (v >> 6)
            bit = np.int64(1) << (v & 63)
            if (ps[f, col] & bit) == 0:
                ps[f, col] |= bit
                ps[f, PS_DISTINCT + j] += 1
