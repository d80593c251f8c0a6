"""Compiled per-packet fact keeping: RTP/RTCP statistics, RFC 4571 framing, stream segments and fact datagrams
for the native parsers, fact packets for Wireshark."""

from __future__ import annotations

import numba as nb

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
    F_LIMIT,
    F_RTCP_PLAIN,
    F_RTCP_SRTCP,
    F_SEEN_CLS,
    F_SEG_TS,
    F_SEQ0,
    F_SIP_FACTS,
    F_STORED,
    F_STREAM_DONE,
    FRAME_OFF,
    FRAME_UNKNOWN,
    S_ARENA,
    S_DGARENA,
    S_NDG,
    S_NSEG,
    SHORT_PREFIX,
)


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
def _rfc4571(buf, poff, plen, rel, f, d, fs, units):  # type: ignore[no-untyped-def]
    """RTP and RTCP framed on TCP (RFC 4571: each packet behind a 16-bit length; [MS-ICE2] TCP candidates).
    Frames are followed in stream order from the direction's first payload; a gap ends the framing. RTCP frames
    are judged here; the RTP frames go to `units` (offset, bytes in this segment, whole frame) for the kernel's
    RTP statistics, and their count is returned."""
    nxt = fs[f, F_FRAME_NEXT + d]
    if nxt == FRAME_UNKNOWN:
        # decide on the direction's first payload segment: it must start with a frame header
        if not _rtp_frame_start(buf, poff, plen):
            fs[f, F_FRAME_NEXT + d] = FRAME_OFF
            return 0
        nxt = rel
    if rel + plen <= nxt:
        return 0  # a retransmission of framed bytes already followed
    if rel > nxt:
        fs[f, F_FRAME_NEXT + d] = FRAME_OFF  # a gap: the framing cannot be followed any further
        return 0
    n = 0
    pos = nxt - rel
    while pos + 2 <= plen:
        ln = pk.be16(buf, poff + pos)
        fo = poff + pos + 2
        avail = plen - pos - 2  # bytes of this frame in the segment (a long video frame spans segments)
        if ln >= 8 and avail >= 2:
            b0 = buf[fo]
            if (b0 & 0xC0) != 0x80:
                fs[f, F_FRAME_NEXT + d] = FRAME_OFF
                return n
            b1 = buf[fo + 1]
            if 192 <= b1 <= 223:
                if avail >= ln:
                    fs[f, F_CLS + pk.CLS_RTCP] += 1
                    _rtcp_stats(buf, fo, ln, f, fs)
            elif ln >= 12 and avail >= 16 and n < units.shape[0]:
                fs[f, F_CLS + pk.CLS_RTP] += 1
                whole = avail >= ln
                units[n, 0] = fo
                units[n, 1] = ln if whole else avail
                units[n, 2] = 1 if whole else 0
                n += 1
            fs[f, F_FRAMES] += 1
        pos += 2 + ln
    fs[f, F_FRAME_NEXT + d] = rel + pos
    return n


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
    if fs[f, F_SEEN_CLS + d] < 0:
        fs[f, F_SEEN_CLS + d] = cls
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
