"""Compiled per-packet fact keeping: RTP/RTCP statistics, RFC 4571 framing, stream segments and fact datagrams
for the native parsers, fact packets for Wireshark."""

from __future__ import annotations

import numba as nb
import numpy as np

import sensor.fastpath.jit  # noqa: F401  (numba cache location; before any @njit)
from sensor.fastpath import packets as pk
from sensor.fastpath import rtp, stream
from sensor.fastpath.columns import (
    DG_DATAGRAM,
    DG_DIR,
    DG_FLOW,
    DG_KIND,
    DG_LEN,
    DG_MESSAGE,
    DG_OFF,
    DG_TS,
    F_CAPPED,
    F_CLS,
    F_DATA_PKTS,
    F_DG,
    F_FACTS,
    F_FRAME_NEXT,
    F_FRAMES,
    F_HAS_SEGS,
    F_ISN,
    F_LEN_PLAIN,
    F_LEN_TAG,
    F_LEN_TESTED,
    F_LIMIT,
    F_NIB_PKTS,
    F_RTCP_PLAIN,
    F_RTCP_SRTCP,
    F_RTP_SSRC,
    F_SEEN_CLS,
    F_SEG_TS,
    F_SEQ0,
    F_SEQ_LAST,
    F_SEQ_OK,
    F_SIP_FACTS,
    F_SSRC_SAME,
    F_STORED,
    F_STREAM_DONE,
    FRAME_OFF,
    FRAME_UNKNOWN,
    S_ARENA,
    S_DGARENA,
    S_NDG,
    S_NSEG,
    SHORT_PREFIX,
    U_PT_HI,
    U_PT_LO,
)


@nb.njit(cache=True, nogil=True)
def _rtp_stats(buf, poff, plen, f, d, fs, fu, nib, pstats, frame_unit, whole=True):  # type: ignore[no-untyped-def]
    """Header and payload statistics of one RTP packet (UDP datagram or RFC 4571 frame). A frame cut by the
    segment's end (whole=False) gives its header and first payload bytes, not its length."""
    ssrc = pk.be32(buf, poff + 8)
    if fs[f, F_RTP_SSRC + d] < 0:
        fs[f, F_RTP_SSRC + d] = ssrc
    if fs[f, F_RTP_SSRC + d] == ssrc:
        fs[f, F_SSRC_SAME] += 1
    seq = pk.be16(buf, poff + 2)
    if (fs[f, F_SEQ_LAST + d] >= 0 and seq == ((fs[f, F_SEQ_LAST + d] + 1) & 0xFFFF)) or fs[f, F_SEQ_LAST + d] < 0:
        fs[f, F_SEQ_OK] += 1
    fs[f, F_SEQ_LAST + d] = seq
    pt = buf[poff + 1] & 0x7F
    if pt < 64:
        fu[f, U_PT_LO] |= np.uint64(1) << np.uint64(pt)
    else:
        fu[f, U_PT_HI] |= np.uint64(1) << np.uint64(pt - 64)
    hl = rtp.rtp_header_len(buf, poff, plen)
    rtp.observe_payload(buf, poff, plen, hl, pt, d, pstats, f)
    unit = frame_unit[pt]
    if hl > 0 and unit > 0 and whole:
        body = plen - hl
        if body > 0:
            plain_ok = body % unit == 0
            tag_ok = (body > 10 and (body - 10) % unit == 0) or (body > 4 and (body - 4) % unit == 0)
            if plain_ok != tag_ok:
                fs[f, F_LEN_TESTED] += 1
                if plain_ok:
                    fs[f, F_LEN_PLAIN] += 1
                else:
                    fs[f, F_LEN_TAG] += 1
        if (pt == 0 or pt == 8) and fs[f, F_NIB_PKTS] < 64:
            fs[f, F_NIB_PKTS] += 1
            for j in range(poff + hl, poff + plen):
                nib[f, buf[j] >> 4] += 1


@nb.njit(cache=True, nogil=True)
def _rtcp_stats(buf, poff, plen, f, fs):  # type: ignore[no-untyped-def]
    kind = rtp.rtcp_kind(buf, poff, plen)
    if kind == 1:
        fs[f, F_RTCP_PLAIN] += 1
    elif kind == 2:
        fs[f, F_RTCP_SRTCP] += 1


@nb.njit(cache=True, nogil=True, inline="always")
def _rtp_frame_start(buf, p, n):  # type: ignore[no-untyped-def]
    """An RFC 4571 frame header at p: a 16-bit length, then an RTP/RTCP version-2 header."""
    if n < 14:
        return False
    ln = pk.be16(buf, p)
    return 12 <= ln <= 65535 and (buf[p + 2] & 0xC0) == 0x80


@nb.njit(cache=True, nogil=True)
def _rfc4571(buf, poff, plen, rel, f, d, fs, fu, nib, pstats, frame_unit):  # type: ignore[no-untyped-def]
    """RTP and RTCP framed on TCP (RFC 4571: each packet behind a 16-bit length; [MS-ICE2] TCP candidates).
    Frames are followed in stream order from the direction's first payload; a gap ends the framing."""
    nxt = fs[f, F_FRAME_NEXT + d]
    if nxt == FRAME_UNKNOWN:
        # decide on the direction's first payload segment: it must start with a frame header
        if not _rtp_frame_start(buf, poff, plen):
            fs[f, F_FRAME_NEXT + d] = FRAME_OFF
            return
        nxt = rel
    if rel + plen <= nxt:
        return  # a retransmission of framed bytes already followed
    if rel > nxt:
        fs[f, F_FRAME_NEXT + d] = FRAME_OFF  # a gap: the framing cannot be followed any further
        return
    pos = nxt - rel
    while pos + 2 <= plen:
        ln = pk.be16(buf, poff + pos)
        fo = poff + pos + 2
        avail = plen - pos - 2  # bytes of this frame in the segment (a long video frame spans segments)
        if ln >= 8 and avail >= 2:
            b0 = buf[fo]
            if (b0 & 0xC0) != 0x80:
                fs[f, F_FRAME_NEXT + d] = FRAME_OFF
                return
            b1 = buf[fo + 1]
            if 192 <= b1 <= 223:
                if avail >= ln:
                    fs[f, F_CLS + pk.CLS_RTCP] += 1
                    _rtcp_stats(buf, fo, ln, f, fs)
            elif ln >= 12 and avail >= 16:
                fs[f, F_CLS + pk.CLS_RTP] += 1
                whole = avail >= ln
                _rtp_stats(buf, fo, ln if whole else avail, f, d, fs, fu, nib, pstats, frame_unit, whole)
            fs[f, F_FRAMES] += 1
        pos += 2 + ln
    fs[f, F_FRAME_NEXT + d] = rel + pos


@nb.njit(cache=True, nogil=True)
def _native_facts(  # type: ignore[no-untyped-def]
    buf, poff, plen, proto, cls, f, d, rel, ts, fs, sg, arena, dg, dgarena, state, stream_k, k_fact, k_sip
):
    """Keep what the native parsers need: TCP segments of the stream prefix, and fact datagrams."""
    if proto == 6:
        if fs[f, F_STREAM_DONE] == 0 and -stream_k <= rel < fs[f, F_LIMIT + d]:
            if fs[f, F_STORED + d] + plen <= 2 * stream_k:
                r = state[S_NSEG]
                a = state[S_ARENA]
                sg[r, stream.SG_FLOW] = f
                sg[r, stream.SG_DIR] = d
                sg[r, stream.SG_SEQ] = (fs[f, F_ISN + d] if fs[f, F_ISN + d] >= 0 else fs[f, F_SEQ0 + d]) + rel
                sg[r, stream.SG_SEQ] &= 0xFFFFFFFF
                sg[r, stream.SG_OFF] = a
                sg[r, stream.SG_LEN] = plen
                sg[r, stream.SG_TS] = ts
                for j in range(plen):
                    arena[a + j] = buf[poff + j]
                state[S_NSEG] = r + 1
                state[S_ARENA] = a + plen
                fs[f, F_STORED + d] += plen
                fs[f, F_SEG_TS] = ts
                fs[f, F_HAS_SEGS] = 1
                b0 = buf[poff]
                if cls == pk.CLS_TLS_REC:
                    # Application data: this side's cleartext handshake is over (keep what comes before it);
                    # ChangeCipherSpec: keep it, and nothing after it.
                    if b0 == 23 and rel < fs[f, F_LIMIT + d]:
                        fs[f, F_LIMIT + d] = max(rel, 0)
                    elif b0 == 20 and rel + plen < fs[f, F_LIMIT + d]:
                        fs[f, F_LIMIT + d] = rel + plen
                elif (
                    rel == 0
                    and fs[f, F_ISN + d] >= 0
                    and (cls == pk.CLS_OTHER or cls == pk.CLS_NONE)
                    and fs[f, F_LIMIT + d] > SHORT_PREFIX
                ):
                    # not a protocol with handshake facts: the first bytes are all the rules read
                    fs[f, F_LIMIT + d] = SHORT_PREFIX
            else:
                fs[f, F_CAPPED + d] = 1
            return
        if not (cls == pk.CLS_SIP_REQ or cls == pk.CLS_SIP_RESP or cls == pk.CLS_HTTP_REQ):
            return
        if fs[f, F_SIP_FACTS] >= k_sip:
            return
        fs[f, F_SIP_FACTS] += 1
        kind = DG_MESSAGE
    else:
        if cls == pk.CLS_SIP_REQ or cls == pk.CLS_SIP_RESP:
            if fs[f, F_SIP_FACTS] >= k_sip:
                return
            fs[f, F_SIP_FACTS] += 1
        elif cls == pk.CLS_STUN or cls == pk.CLS_STUN_OLD or cls == pk.CLS_DTLS:
            if fs[f, F_DG + d] >= k_fact:
                return
            fs[f, F_DG + d] += 1
        else:
            return
        kind = DG_DATAGRAM
    r = state[S_NDG]
    a = state[S_DGARENA]
    dg[r, DG_FLOW] = f
    dg[r, DG_DIR] = d
    dg[r, DG_TS] = ts
    dg[r, DG_OFF] = a
    dg[r, DG_LEN] = plen
    dg[r, DG_KIND] = kind
    for j in range(plen):
        dgarena[a + j] = buf[poff + j]
    state[S_NDG] = r + 1
    state[S_DGARENA] = a + plen


@nb.njit(cache=True, nogil=True)
def _wireshark_facts(buf, poff, plen, proto, cls, f, d, i, fs, fact_mask, fact_flow, fact_dir, k_fact, k_sip):  # type: ignore[no-untyped-def]
    """Mark the packets Wireshark's dissectors need (the `--dissector wireshark` second opinion): the opening
    payload packets of flows that start with a handshake or a request, and SIP/HTTP messages up to a cap."""
    first = fs[f, F_SEEN_CLS]
    if first < 0:
        first = fs[f, F_SEEN_CLS + 1]
    want = False
    if cls == pk.CLS_SIP_REQ or cls == pk.CLS_SIP_RESP or cls == pk.CLS_HTTP_REQ:
        if fs[f, F_SIP_FACTS] < k_sip:
            fs[f, F_SIP_FACTS] += 1
            want = True
    elif fs[f, F_DATA_PKTS + d] < k_fact:
        if proto == 6:
            want = (
                first == pk.CLS_TLS_HS
                or first == pk.CLS_TLS_REC
                or first == pk.CLS_SSL2
                or first == pk.CLS_SIP_REQ
                or first == pk.CLS_SIP_RESP
                or first == pk.CLS_HTTP_REQ
                or first == pk.CLS_STUN
                or first == pk.CLS_STUN_OLD
            )
        else:
            want = cls == pk.CLS_STUN or cls == pk.CLS_STUN_OLD or cls == pk.CLS_DTLS
    fs[f, F_DATA_PKTS + d] += 1
    if cls == pk.CLS_TLS_REC and (buf[poff] == 23 or buf[poff] == 20):
        # ChangeCipherSpec or application data: this side's cleartext handshake is over
        if fs[f, F_DATA_PKTS + d] < k_fact:
            fs[f, F_DATA_PKTS + d] = k_fact
        want = want and buf[poff] == 20
    if want:
        fact_mask[i] = 1
        fact_flow[i] = f
        fact_dir[i] = d
        fs[f, F_FACTS] += 1
