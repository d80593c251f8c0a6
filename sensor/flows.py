"""Compiled flow table: per-packet accounting, interval records, media counters and fact-packet selection.

The per-packet path is one compiled loop over a batch (numba): decode, hash the 5-tuple, update the flow's
counters, cut interval records, keep RTP/RTCP statistics and mark the few packets whose facts need
Wireshark's dissectors. Python only sees batches and, at the end, one row per flow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
import numpy.typing as npt

import sensor.jit  # noqa: F401  (numba cache location; before any @njit)
from sensor import packets as pk
from sensor import rtp, stream
from sensor.sources.pcap import Batch

# Per-flow int64 columns (FS matrix). Pairs are [originator, responder].
F_PORT_O, F_PORT_R, F_PROTO, F_IPVER, F_FIRST_TS, F_LAST_TS, F_CUR_IVAL, F_IVAL_SEQ = range(8)
F_IVAL_FIRST, F_IVAL_LAST = 8, 9
F_PK, F_BY, F_IPBY, F_TOT_PK, F_TOT_BY = 10, 12, 14, 16, 18
F_FIRST_BYTE, F_FIRST_CLS, F_DATA_PKTS = 20, 22, 24
F_FACTS, F_SIP_FACTS, F_FLAGS = 26, 27, 28
F_RTP_SSRC, F_SSRC_SAME, F_SEQ_LAST, F_SEQ_OK = 29, 31, 32, 34
F_LEN_TESTED, F_LEN_PLAIN, F_LEN_TAG, F_RTCP_PLAIN, F_RTCP_SRTCP, F_NIB_PKTS, F_ENDED = (
    35,
    36,
    37,
    38,
    39,
    40,
    41,
)
F_CLS = 42
# Stream layer, per direction [originator, responder]: initial sequence number + 1 (-1: SYN not seen), first
# payload sequence number seen, relative offset past which nothing is kept, bytes kept, kept bytes capped.
F_ISN = F_CLS + pk.NCLS
F_SEQ0, F_LIMIT, F_STORED, F_CAPPED, F_SEEN_CLS, F_DG = (F_ISN + 2 * k for k in range(1, 7))
F_STREAM_DONE, F_SEG_TS, F_HAS_SEGS = F_ISN + 14, F_ISN + 15, F_ISN + 16
# RFC 4571 framing per direction: stream offset of the next frame header (FRAME_UNKNOWN before the first
# payload, FRAME_OFF when the direction is not framed media), and the frames followed.
F_FRAME_NEXT, F_FRAMES = F_ISN + 17, F_ISN + 19
NFS = F_ISN + 20
FRAME_UNKNOWN, FRAME_OFF = -1, -2
# Per-flow uint64 columns: addresses (128-bit as hi/lo) and the RTP payload-type bitmap.
U_ORIG_HI, U_ORIG_LO, U_RESP_HI, U_RESP_LO, U_PT_LO, U_PT_HI = range(6)
NFU = 6
# Interval record columns.
R_FLOW, R_SEQ, R_FIRST, R_LAST, R_PK, R_BY, R_IPBY = 0, 1, 2, 3, 4, 6, 8
NREC = 10

FL_SYN, FL_FIN, FL_RST = 1, 2, 4
ST_DONE, ST_NEED_RECORDS, ST_NEED_FLOWS, ST_NEED_TABLE, ST_NEED_SEGS, ST_NEED_ARENA, ST_NEED_REASM = range(7)
# kernel counters (the `state` array)
S_NFLOWS, S_NREC, S_HTUSED, S_NONIP, S_FRAGS, S_NSEG, S_ARENA, S_NDG, S_DGARENA, S_NREASM, S_RBYTES = range(11)
NSTATE = 11
# Fact datagrams for the native parsers: flow, direction, time, arena offset, length, kind.
DG_FLOW, DG_DIR, DG_TS, DG_OFF, DG_LEN, DG_KIND = range(6)
NDGC = 6
DG_DATAGRAM, DG_MESSAGE = 0, 1  # a UDP payload; a SIP/HTTP message in a TCP segment past the stream prefix
# A TCP stream whose offset 0 is no protocol with handshake facts keeps only this much (R1 reads its first byte).
SHORT_PREFIX = 256


@nb.njit(cache=True, nogil=True, inline="always")
def _mix(x):  # type: ignore[no-untyped-def]
    # splitmix64 finaliser
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@nb.njit(cache=True, nogil=True)
def _emit(fs, rec, state, f):  # type: ignore[no-untyped-def]
    r = state[S_NREC]
    rec[r, R_FLOW] = f
    rec[r, R_SEQ] = fs[f, F_IVAL_SEQ]
    rec[r, R_FIRST] = fs[f, F_IVAL_FIRST]
    rec[r, R_LAST] = fs[f, F_IVAL_LAST]
    for d in range(2):
        rec[r, R_PK + d] = fs[f, F_PK + d]
        rec[r, R_BY + d] = fs[f, F_BY + d]
        rec[r, R_IPBY + d] = fs[f, F_IPBY + d]
        fs[f, F_PK + d] = 0
        fs[f, F_BY + d] = 0
        fs[f, F_IPBY + d] = 0
    fs[f, F_IVAL_SEQ] += 1
    state[S_NREC] = r + 1


@nb.njit(cache=True, nogil=True)
def _new_flow(fs, fu, nib, state, h_src_first, shi, slo, dhi, dlo, sport, dport, proto, ipver, ts, stream_k):  # type: ignore[no-untyped-def]
    f = state[S_NFLOWS]
    state[S_NFLOWS] = f + 1
    for c in range(NFS):
        fs[f, c] = 0
    for c in range(16):
        nib[f, c] = 0
    if h_src_first:
        fu[f, U_ORIG_HI], fu[f, U_ORIG_LO], fu[f, U_RESP_HI], fu[f, U_RESP_LO] = shi, slo, dhi, dlo
        fs[f, F_PORT_O], fs[f, F_PORT_R] = sport, dport
    else:
        fu[f, U_ORIG_HI], fu[f, U_ORIG_LO], fu[f, U_RESP_HI], fu[f, U_RESP_LO] = dhi, dlo, shi, slo
        fs[f, F_PORT_O], fs[f, F_PORT_R] = dport, sport
    fu[f, U_PT_LO] = 0
    fu[f, U_PT_HI] = 0
    fs[f, F_PROTO] = proto
    fs[f, F_IPVER] = ipver
    fs[f, F_FIRST_TS] = ts
    fs[f, F_LAST_TS] = ts
    fs[f, F_CUR_IVAL] = -1
    for d in range(2):
        fs[f, F_FIRST_BYTE + d] = -1
        fs[f, F_FIRST_CLS + d] = -1
        fs[f, F_RTP_SSRC + d] = -1
        fs[f, F_SEQ_LAST + d] = -1
        fs[f, F_ISN + d] = -1
        fs[f, F_SEQ0 + d] = -1
        fs[f, F_LIMIT + d] = stream_k
        fs[f, F_SEEN_CLS + d] = -1
        fs[f, F_FRAME_NEXT + d] = FRAME_UNKNOWN if proto == 6 else FRAME_OFF
    return f


@nb.njit(cache=True, nogil=True)
def process(  # type: ignore[no-untyped-def]
    buf,
    offs,
    caplens,
    wirelens,
    tss,
    lts,
    start,
    ht_keys,
    ht_vals,
    fs,
    fu,
    nib,
    pstats,
    state,
    rec,
    fact_mask,
    fact_flow,
    fact_dir,
    server_tcp,
    server_udp,
    interval_ns,
    idle_ns,
    k_fact,
    k_sip,
    mtable,
    mlen,
    frame_unit,
    native,
    stream_k,
    sg,
    arena,
    dg,
    dgarena,
    fk,
    fi,
    fdata,
    fcov,
    fstate,
    frag_timeout_ns,
    rbuf,
    roff,
    rlen,
    rts,
    rsrc,
):
    """Account packets start.. of one batch. Returns (next index, status); a status other than ST_DONE
    asks the caller to grow the named array and call again from that index.

    native: facts are parsed in-process; TCP segments of each direction's first stream_k bytes go to the
    segment table `sg` (bytes in `arena`) and fact datagrams (SIP, STUN, DTLS over UDP; SIP/HTTP messages
    past a TCP stream's prefix) to `dg` (bytes in `dgarena`). Otherwise fact packets are marked for Wireshark.
    """
    n = offs.shape[0]
    mask = np.uint64(ht_keys.shape[0] - 1)
    for i in range(start, n):
        if state[S_NREC] + 2 > rec.shape[0]:
            return i, ST_NEED_RECORDS
        if state[S_NFLOWS] + 2 > fs.shape[0]:
            return i, ST_NEED_FLOWS
        if (state[S_HTUSED] + 1) * 2 > ht_keys.shape[0]:
            return i, ST_NEED_TABLE
        if native:
            if state[S_NSEG] + 2 > sg.shape[0] or state[S_NDG] + 2 > dg.shape[0]:
                return i, ST_NEED_SEGS
            if state[S_ARENA] + 65536 > arena.shape[0] or state[S_DGARENA] + 65536 > dgarena.shape[0]:
                return i, ST_NEED_ARENA
        if state[S_NREASM] + 2 > roff.shape[0] or state[S_RBYTES] + 65536 + 40 > rbuf.shape[0]:
            return i, ST_NEED_REASM
        fact_mask[i] = 0
        ok, ipver, shi, slo, dhi, dlo, proto, sport, dport, poff, plen, flags, iplen, isfrag, seq, fr, fid = pk.decode(
            buf, offs[i], caplens[i], lts[i]
        )
        if not ok:
            state[S_NONIP] += 1
            continue
        ts = tss[i]
        if isfrag:
            state[S_FRAGS] += 1
            if proto != 6 and proto != 17:
                continue
            if not native and proto == 17:
                fact_mask[i] = 1  # Wireshark reassembles the datagram from every fragment
                fact_flow[i] = -1
                fact_dir[i] = 0
            slot = stream.frag_add(
                fk,
                fi,
                fdata,
                fcov,
                fstate,
                shi,
                slo,
                dhi,
                dlo,
                proto,
                ipver,
                fid,
                fr & 0xFFFFFFFF,
                fr >> 32,
                buf,
                poff,
                plen,
                ts,
                frag_timeout_ns,
            )
            if slot >= 0:
                # The whole datagram goes into the reassembled batch as a raw IP packet, accounted after this
                # batch (a second buffer here would cost every packet a reference count: see FlowTable.add).
                k = state[S_NREASM]
                stream.emit_datagram(fk, fi, fdata, slot, rbuf, roff, rlen, k, state[S_RBYTES])
                rts[k] = ts
                rsrc[k] = i
                state[S_RBYTES] += rlen[k]
                state[S_NREASM] = k + 1
                stream.frag_release(fi, fcov, slot)
            continue
        # canonical endpoint order so both directions hash alike
        src_low = (shi < dhi) or (shi == dhi and (slo < dlo or (slo == dlo and sport <= dport)))
        if src_low:
            ahi, alo, ap, bhi, blo, bp = shi, slo, sport, dhi, dlo, dport
        else:
            ahi, alo, ap, bhi, blo, bp = dhi, dlo, dport, shi, slo, sport
        h = _mix(
            ahi
            ^ _mix(
                alo
                ^ _mix(
                    bhi
                    ^ _mix(
                        blo ^ _mix(np.uint64(ap) << np.uint64(24) | np.uint64(bp) << np.uint64(8) | np.uint64(proto))
                    )
                )
            )
        )
        if h == 0:
            h = np.uint64(1)
        slot = h & mask
        f = -1
        while True:
            k = ht_keys[slot]
            if k == 0:
                break
            if k == h:
                f = ht_vals[slot]
                break
            slot = (slot + np.uint64(1)) & mask
        syn_only = proto == 6 and (flags & 0x12) == 0x02
        if f >= 0:
            stale = ts - fs[f, F_LAST_TS] > idle_ns
            reused = syn_only and (fs[f, F_FLAGS] & (FL_FIN | FL_RST)) != 0
            if stale or reused:
                if fs[f, F_PK] + fs[f, F_PK + 1] > 0:
                    _emit(fs, rec, state, f)
                fs[f, F_ENDED] = 1
                f = -1
        if f < 0:
            # Who originated: a SYN's sender; a SYN-ACK's receiver; else the side not on a server port.
            src_first = True
            if proto == 6 and (flags & 0x12) == 0x12:
                src_first = False
            elif not syn_only:
                sp = server_tcp if proto == 6 else server_udp
                if sp[sport] and not sp[dport]:
                    src_first = False
            if ht_keys[slot] == 0:
                state[S_HTUSED] += 1
            f = _new_flow(fs, fu, nib, state, src_first, shi, slo, dhi, dlo, sport, dport, proto, ipver, ts, stream_k)
            ht_keys[slot] = h
            ht_vals[slot] = f
        d = 0
        if not (shi == fu[f, U_ORIG_HI] and slo == fu[f, U_ORIG_LO] and sport == fs[f, F_PORT_O]):
            d = 1
        iv = ts // interval_ns
        if iv != fs[f, F_CUR_IVAL]:
            if fs[f, F_PK] + fs[f, F_PK + 1] > 0:
                _emit(fs, rec, state, f)
            fs[f, F_CUR_IVAL] = iv
            fs[f, F_IVAL_FIRST] = ts
        fs[f, F_IVAL_LAST] = ts
        fs[f, F_LAST_TS] = ts
        fs[f, F_PK + d] += 1
        fs[f, F_BY + d] += plen
        fs[f, F_IPBY + d] += iplen
        fs[f, F_TOT_PK + d] += 1
        fs[f, F_TOT_BY + d] += plen
        rel = 0
        if proto == 6:
            if flags & 0x02:
                fs[f, F_FLAGS] |= FL_SYN
                if fs[f, F_ISN + d] < 0:
                    fs[f, F_ISN + d] = (seq + 1) & 0xFFFFFFFF
                seq = (seq + 1) & 0xFFFFFFFF  # data on a SYN (TCP Fast Open) starts after it
            if flags & 0x01:
                fs[f, F_FLAGS] |= FL_FIN
            if flags & 0x04:
                fs[f, F_FLAGS] |= FL_RST
            if plen > 0:
                base = fs[f, F_ISN + d]
                if base < 0:
                    if fs[f, F_SEQ0 + d] < 0:
                        fs[f, F_SEQ0 + d] = seq
                    base = fs[f, F_SEQ0 + d]
                rel = stream.rel_seq(seq, base)
        if plen <= 0:
            continue
        cls = pk.classify(buf, poff, plen, proto, mtable, mlen)
        fs[f, F_CLS + cls] += 1
        if proto == 17:
            if fs[f, F_FIRST_BYTE + d] < 0:
                fs[f, F_FIRST_BYTE + d] = buf[poff]
                fs[f, F_FIRST_CLS + d] = cls
        elif rel == 0 and fs[f, F_ISN + d] >= 0 and fs[f, F_FIRST_BYTE + d] < 0:
            # "first payload byte" is stream offset 0, whatever order the segments came in; unknown when
            # the SYN (and so offset 0) was not seen
            fs[f, F_FIRST_BYTE + d] = buf[poff]
            fs[f, F_FIRST_CLS + d] = cls
        if fs[f, F_SEEN_CLS + d] < 0:
            fs[f, F_SEEN_CLS + d] = cls
        # Calls here pass arrays, and numba counts references to each array passed on every call (two atomic
        # operations each): the per-packet path of UDP media calls as few functions as it can.
        if proto == 17 and cls == pk.CLS_RTP:
            # RTP header statistics, inline (the same as _rtp_stats, which RFC 4571 frames use)
            ssrc = pk.be32(buf, poff + 8)
            if fs[f, F_RTP_SSRC + d] < 0:
                fs[f, F_RTP_SSRC + d] = ssrc
            if fs[f, F_RTP_SSRC + d] == ssrc:
                fs[f, F_SSRC_SAME] += 1
            rseq = pk.be16(buf, poff + 2)
            last = fs[f, F_SEQ_LAST + d]
            if last < 0 or rseq == ((last + 1) & 0xFFFF):
                fs[f, F_SEQ_OK] += 1
            fs[f, F_SEQ_LAST + d] = rseq
            pt = buf[poff + 1] & 0x7F
            if pt < 64:
                fu[f, U_PT_LO] |= np.uint64(1) << np.uint64(pt)
            else:
                fu[f, U_PT_HI] |= np.uint64(1) << np.uint64(pt - 64)
            hl = rtp.rtp_header_len(buf, poff, plen)
            rtp.observe_payload(buf, poff, plen, hl, pt, d, pstats, f)
            unit = frame_unit[pt]
            if hl > 0 and unit > 0:
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
            if not native:
                fs[f, F_DATA_PKTS + d] += 1
            continue
        if native:
            if proto == 6 or cls in (pk.CLS_SIP_REQ, pk.CLS_SIP_RESP, pk.CLS_STUN, pk.CLS_STUN_OLD, pk.CLS_DTLS):
                _native_facts(
                    buf,
                    poff,
                    plen,
                    proto,
                    cls,
                    f,
                    d,
                    rel,
                    ts,
                    fs,
                    sg,
                    arena,
                    dg,
                    dgarena,
                    state,
                    stream_k,
                    k_fact,
                    k_sip,
                )
        else:
            _wireshark_facts(buf, poff, plen, proto, cls, f, d, i, fs, fact_mask, fact_flow, fact_dir, k_fact, k_sip)
        if proto == 17:
            if cls == pk.CLS_RTCP:
                _rtcp_stats(buf, poff, plen, f, fs)
        elif fs[f, F_FRAME_NEXT + d] != FRAME_OFF:
            _rfc4571(buf, poff, plen, rel, f, d, fs, fu, nib, pstats, frame_unit)
    return n, ST_DONE


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


@nb.njit(cache=True, nogil=True)
def flush_open(fs, rec, state):  # type: ignore[no-untyped-def]
    """Emit the pending interval record of every flow (end of capture)."""
    for f in range(state[S_NFLOWS]):
        if fs[f, F_ENDED] == 0 and fs[f, F_PK] + fs[f, F_PK + 1] > 0:
            _emit(fs, rec, state, f)


@nb.njit(cache=True, nogil=True)
def flush_before(fs, rec, state, iv_now):  # type: ignore[no-untyped-def]
    """Emit the pending record of every open flow whose interval ended before interval iv_now (live mode:
    a flow that went quiet still shows up on time). Returns the records emitted."""
    n = 0
    for f in range(state[S_NFLOWS]):
        if fs[f, F_ENDED] == 0 and fs[f, F_CUR_IVAL] < iv_now and fs[f, F_PK] + fs[f, F_PK + 1] > 0:
            _emit(fs, rec, state, f)
            n += 1
    return n


@nb.njit(cache=True, nogil=True)
def end_flows(fs, rec, state, flows):  # type: ignore[no-untyped-def]
    """End the given flows (idle timeout or eviction): emit their pending record and mark them ended."""
    for j in range(flows.shape[0]):
        f = flows[j]
        if fs[f, F_ENDED] == 0:
            if fs[f, F_PK] + fs[f, F_PK + 1] > 0:
                _emit(fs, rec, state, f)
            fs[f, F_ENDED] = 1


def _grow(a: npt.NDArray[np.generic], rows: int) -> npt.NDArray[np.generic]:
    out = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


@dataclass
class FactPackets:
    """Which packets of a batch carry facts, and the flow and direction of each."""

    mask: npt.NDArray[np.uint8]
    flow: npt.NDArray[np.int64]
    direction: npt.NDArray[np.int8]


class FlowTable:
    """Flow state for one capture run: a hash table of 5-tuples over growing per-flow arrays."""

    def __init__(
        self,
        *,
        interval_s: int,
        idle_s: int,
        fact_packets: int,
        sip_messages: int,
        server_tcp: npt.NDArray[np.uint8],
        server_udp: npt.NDArray[np.uint8],
        native: bool = True,
        stream_bytes: int = 65536,
        fragment_capacity: int = 256,
        fragment_timeout_s: float = 30.0,
    ) -> None:
        self.interval_ns = int(interval_s) * 1_000_000_000
        self.idle_ns = int(idle_s) * 1_000_000_000
        self.k_fact = fact_packets
        self.k_sip = sip_messages
        self.server_tcp = server_tcp
        self.server_udp = server_udp
        self.native = native
        self.stream_k = int(stream_bytes)
        self.ht_keys = np.zeros(1 << 16, np.uint64)
        self.ht_vals = np.zeros(1 << 16, np.int64)
        self.fs = np.zeros((4096, NFS), np.int64)
        self.fu = np.zeros((4096, NFU), np.uint64)
        self.nib = np.zeros((4096, 16), np.int64)
        self.pstats = np.zeros((4096, rtp.NPS), np.int64)
        self.rec = np.zeros((8192, NREC), np.int64)
        self.state = np.zeros(NSTATE, np.int64)
        self._facts_buf: FactPackets | None = None
        self.frags = stream.Fragments(fragment_capacity, fragment_timeout_s)
        self.sg = np.zeros((4096 if native else 2, stream.NSG), np.int64)
        self.arena = np.zeros(1 << 20 if native else 2, np.uint8)
        self.dg = np.zeros((1024 if native else 2, NDGC), np.int64)
        self.dgarena = np.zeros(1 << 18 if native else 2, np.uint8)
        # reassembled IP datagrams of the current batch, as raw IP packets (accounted right after the batch)
        self.rbuf = np.zeros(1 << 17, np.uint8)
        self.roff = np.zeros(64, np.int64)
        self.rlen = np.zeros(64, np.int64)
        self.rts = np.zeros(64, np.int64)
        self.rsrc = np.zeros(64, np.int64)

    @property
    def nflows(self) -> int:
        return int(self.state[S_NFLOWS])

    @property
    def nrecords(self) -> int:
        return int(self.state[S_NREC])

    @property
    def non_ip(self) -> int:
        return int(self.state[S_NONIP])

    def add(self, b: Batch) -> FactPackets:
        """Account one batch; returns which of its packets carry facts (valid until the next call)."""
        n = len(b)
        if self._facts_buf is None or self._facts_buf.mask.shape[0] < n:
            self._facts_buf = FactPackets(np.zeros(n, np.uint8), np.zeros(n, np.int64), np.zeros(n, np.int8))
        fb = self._facts_buf
        facts = FactPackets(fb.mask[:n], fb.flow[:n], fb.direction[:n])
        self.state[S_NREASM] = 0
        self.state[S_RBYTES] = 0
        self._account(b, facts)
        k = int(self.state[S_NREASM])
        if k:
            # IP datagrams completed in this batch, as raw IP packets with the time of their last fragment
            nbytes = int(self.state[S_RBYTES])
            lens = self.rlen[:k].astype(np.int32)
            mini = Batch(
                self.rbuf[:nbytes].copy(),
                self.roff[:k].copy(),
                lens,
                lens.copy(),
                self.rts[:k].copy(),
                np.full(k, 101, np.int16),  # LINKTYPE_RAW
            )
            src = self.rsrc[:k].copy()
            self.state[S_NREASM] = 0
            self.state[S_RBYTES] = 0
            mfacts = FactPackets(np.zeros(k, np.uint8), np.zeros(k, np.int64), np.zeros(k, np.int8))
            self._account(mini, mfacts)
            # Wireshark mode: the fragment that completed the datagram carries its flow (Wireshark shows the
            # reassembled message on that frame)
            hit = np.flatnonzero(mfacts.mask)
            facts.flow[src[hit]] = mfacts.flow[hit]
            facts.direction[src[hit]] = mfacts.direction[hit]
        return facts

    def _account(self, b: Batch, facts: FactPackets) -> None:
        i = 0
        while True:
            i, status = process(
                b.buf,
                b.offset,
                b.caplen,
                b.wirelen,
                b.ts_ns,
                b.linktype,
                i,
                self.ht_keys,
                self.ht_vals,
                self.fs,
                self.fu,
                self.nib,
                self.pstats,
                self.state,
                self.rec,
                facts.mask,
                facts.flow,
                facts.direction,
                self.server_tcp,
                self.server_udp,
                self.interval_ns,
                self.idle_ns,
                self.k_fact,
                self.k_sip,
                pk.METHOD_TABLE,
                pk.METHOD_LEN,
                rtp.FRAME_UNIT,
                self.native,
                self.stream_k,
                self.sg,
                self.arena,
                self.dg,
                self.dgarena,
                self.frags.keys,
                self.frags.info,
                self.frags.data,
                self.frags.cover,
                self.frags.counters,
                self.frags.timeout_ns,
                self.rbuf,
                self.roff,
                self.rlen,
                self.rts,
                self.rsrc,
            )
            if status == ST_DONE:
                return
            if status == ST_NEED_RECORDS:
                self.rec = _grow(self.rec, self.rec.shape[0] * 2)  # type: ignore[assignment]
            elif status == ST_NEED_FLOWS:
                rows = self.fs.shape[0] * 2
                self.fs = _grow(self.fs, rows)  # type: ignore[assignment]
                self.fu = _grow(self.fu, rows)  # type: ignore[assignment]
                self.nib = _grow(self.nib, rows)  # type: ignore[assignment]
                self.pstats = _grow(self.pstats, rows)  # type: ignore[assignment]
            elif status == ST_NEED_SEGS:
                if self.state[S_NSEG] + 2 > self.sg.shape[0]:
                    self.sg = _grow(self.sg, self.sg.shape[0] * 2)  # type: ignore[assignment]
                if self.state[S_NDG] + 2 > self.dg.shape[0]:
                    self.dg = _grow(self.dg, self.dg.shape[0] * 2)  # type: ignore[assignment]
            elif status == ST_NEED_ARENA:
                if self.state[S_ARENA] + 65536 > self.arena.shape[0]:
                    self.arena = _grow(self.arena, self.arena.shape[0] * 2)  # type: ignore[assignment]
                if self.state[S_DGARENA] + 65536 > self.dgarena.shape[0]:
                    self.dgarena = _grow(self.dgarena, self.dgarena.shape[0] * 2)  # type: ignore[assignment]
            elif status == ST_NEED_REASM:
                if self.state[S_NREASM] + 2 > self.roff.shape[0]:
                    rows = self.roff.shape[0] * 2
                    self.roff = _grow(self.roff, rows)  # type: ignore[assignment]
                    self.rlen = _grow(self.rlen, rows)  # type: ignore[assignment]
                    self.rts = _grow(self.rts, rows)  # type: ignore[assignment]
                    self.rsrc = _grow(self.rsrc, rows)  # type: ignore[assignment]
                if self.state[S_RBYTES] + 65536 + 40 > self.rbuf.shape[0]:
                    self.rbuf = _grow(self.rbuf, self.rbuf.shape[0] * 2)  # type: ignore[assignment]
            else:
                self._rehash(self.ht_keys.shape[0] * 2)

    # ---- the stream layer's outputs (native facts) ----------------------------------------------------------
    def take_datagrams(self) -> list[tuple[int, int, int, int, bytes]]:
        """The fact datagrams/messages kept since the last call, as (flow, direction, ts_ns, kind, payload)."""
        n = int(self.state[S_NDG])
        if n == 0:
            return []
        rows = self.dg[:n].tolist()
        arena = self.dgarena
        out = [
            (r[DG_FLOW], r[DG_DIR], r[DG_TS], r[DG_KIND], arena[r[DG_OFF] : r[DG_OFF] + r[DG_LEN]].tobytes())
            for r in rows
        ]
        self.state[S_NDG] = 0
        self.state[S_DGARENA] = 0
        if self.dgarena.shape[0] > (8 << 20):  # give back what a burst grew
            self.dgarena = np.zeros(1 << 18, np.uint8)
            self.dg = np.zeros((1024, NDGC), np.int64)
        return out

    @property
    def stream_bytes_held(self) -> int:
        return int(self.state[S_ARENA])

    def streams_settled(self, now_ns: int, quiet_ns: int) -> npt.NDArray[np.int64]:
        """Flows whose stream prefixes can be parsed for good: ended, closed (FIN/RST), both directions past
        their handshake (limit set below the cap) and quiet, or quiet for quiet_ns."""
        n = self.nflows
        fs = self.fs[:n]
        has = (fs[:, F_HAS_SEGS] == 1) & (fs[:, F_STREAM_DONE] == 0)
        quiet = fs[:, F_SEG_TS] < now_ns - quiet_ns
        both_done = (fs[:, F_LIMIT] < self.stream_k) & (fs[:, F_LIMIT + 1] < self.stream_k)
        closed = (fs[:, F_ENDED] == 1) | ((fs[:, F_FLAGS] & (FL_FIN | FL_RST)) != 0)
        return np.flatnonzero(has & (closed | quiet | (both_done & (fs[:, F_SEG_TS] < now_ns - quiet_ns // 8))))

    def streams_pending(self) -> npt.NDArray[np.int64]:
        """Flows with kept stream segments not parsed for good yet."""
        n = self.nflows
        fs = self.fs[:n]
        return np.flatnonzero((fs[:, F_HAS_SEGS] == 1) & (fs[:, F_STREAM_DONE] == 0))

    def assemble(self, flows: npt.NDArray[np.int64]) -> dict[int, tuple[stream.StreamPrefix, stream.StreamPrefix]]:
        """Reassemble both directions of the given flows' kept segments (flow -> (originator, responder))."""
        nseg = int(self.state[S_NSEG])
        if nseg == 0 or flows.size == 0:
            return {}
        sg = self.sg[:nseg]
        want = np.zeros(self.nflows, bool)
        want[flows] = True
        rows = np.flatnonzero(want[sg[:, stream.SG_FLOW]])
        if rows.size == 0:
            return {}
        sub_flow = sg[rows, stream.SG_FLOW]
        sub_dir = sg[rows, stream.SG_DIR]
        order, starts = stream.group_rows(sub_flow, sub_dir)
        order = rows[order]
        gflow = sg[order[starts[:-1]], stream.SG_FLOW]
        gdir = sg[order[starts[:-1]], stream.SG_DIR]
        isn = self.fs[gflow, F_ISN + gdir].astype(np.int64)
        out, meta = stream.assemble(self.sg, self.arena, order, starts, isn, self.stream_k)
        result: dict[int, list[stream.StreamPrefix]] = {}
        empty = stream.StreamPrefix(b"", False, False, 0)
        capped = self.fs[gflow, F_CAPPED + gdir]
        sg_all = self.sg  # compaction writes a new table, so this one stays valid for the times
        bounds = starts.tolist()
        data = out.tobytes()
        from_start = (isn >= 0).tolist()
        capped_l = capped.tolist()
        k = self.stream_k
        for g, (f, d, (off, contig, extent, diff, beyond, base)) in enumerate(
            zip(gflow.tolist(), gdir.tolist(), meta.tolist(), strict=True)
        ):
            prefix = stream.StreamPrefix(
                data[off : off + contig],
                from_start[g],
                contig == extent and beyond == 0 and not capped_l[g] and extent < k,
                diff,
                stream.SegmentTimes(sg_all, order, bounds[g], bounds[g + 1], base),
            )
            pair = result.get(f)
            if pair is None:
                pair = result[f] = [empty, empty]
            pair[d] = prefix
        return {f: (p[0], p[1]) for f, p in result.items()}

    def release_streams(self, flows: npt.NDArray[np.int64]) -> None:
        """Parsed for good: stop keeping these flows' segments and give back their arena bytes."""
        if flows.size == 0:
            return
        self.fs[flows, F_STREAM_DONE] = 1
        self._drop_segments(self.fs[:, F_STREAM_DONE] == 1)

    def _drop_segments(self, drop_flow: npt.NDArray[np.bool_], remap: npt.NDArray[np.int64] | None = None) -> None:
        nseg = int(self.state[S_NSEG])
        if nseg == 0:
            return
        sg = self.sg[:nseg]
        keep = np.flatnonzero(~drop_flow[sg[:, stream.SG_FLOW]])
        new_sg = np.zeros((max(4096, int(keep.size) * 2), stream.NSG), np.int64)
        used = stream.compact_segments(self.sg, self.arena, keep.astype(np.int64), new_sg)
        if remap is not None:
            new_sg[: keep.size, stream.SG_FLOW] = remap[new_sg[: keep.size, stream.SG_FLOW]]
        self.sg = new_sg
        self.state[S_NSEG] = keep.size
        self.state[S_ARENA] = used
        size = 1 << 20
        while size < used + 65536:
            size <<= 1
        if self.arena.shape[0] > 2 * size:  # give back what a burst grew
            self.arena = self.arena[:size].copy()

    def _rehash(self, size: int) -> None:
        keys, vals = self.ht_keys, self.ht_vals
        live = keys != 0
        self.ht_keys = np.zeros(size, np.uint64)
        self.ht_vals = np.zeros(size, np.int64)
        self.state[S_HTUSED] = _reinsert(self.ht_keys, self.ht_vals, keys[live], vals[live], self.fs)

    def finish(self) -> None:
        """Close every open interval record (end of input)."""
        need = self.nrecords + self.nflows + 2
        if need > self.rec.shape[0]:
            self.rec = _grow(self.rec, need)  # type: ignore[assignment]
        flush_open(self.fs, self.rec, self.state)

    def _ensure_records(self, extra: int) -> None:
        need = self.nrecords + extra + 2
        if need > self.rec.shape[0]:
            self.rec = _grow(self.rec, max(need, self.rec.shape[0] * 2))  # type: ignore[assignment]

    def flush_closed(self, now_ns: int) -> int:
        """Emit the records of intervals that ended before now (by packet time)."""
        self._ensure_records(self.nflows)
        return int(flush_before(self.fs, self.rec, self.state, now_ns // self.interval_ns))

    def active(self) -> npt.NDArray[np.int64]:
        """Indices of the flows not ended."""
        return np.flatnonzero(self.fs[: self.nflows, F_ENDED] == 0)

    def expire_idle(self, now_ns: int) -> int:
        """End flows idle longer than the idle timeout; returns how many."""
        act = self.active()
        idle = act[self.fs[act, F_LAST_TS] < now_ns - self.idle_ns]
        if idle.size:
            self._ensure_records(int(idle.size))
            end_flows(self.fs, self.rec, self.state, idle.astype(np.int64))
        return int(idle.size)

    def evict_over(self, capacity: int) -> int:
        """Keep at most `capacity` open flows: end the least recently seen ones; returns how many."""
        act = self.active()
        over = int(act.size) - capacity
        if over <= 0:
            return 0
        oldest = act[np.argsort(self.fs[act, F_LAST_TS], kind="stable")[:over]]
        self._ensure_records(over)
        end_flows(self.fs, self.rec, self.state, oldest.astype(np.int64))
        return over

    def compact(self) -> npt.NDArray[np.int64]:
        """Drop ended flows once every record is exported (call only then): the per-flow arrays keep only
        open flows, so memory follows the open flows, not the run's history. Returns old -> new index
        (-1 for dropped flows) for whoever keeps flow indices (the fact sink)."""
        n = self.nflows
        keep = np.flatnonzero(self.fs[:n, F_ENDED] == 0)
        remap = np.full(n, -1, np.int64)
        remap[keep] = np.arange(keep.size)
        rows = max(4096, int(keep.size) * 2)
        fs, fu, nib = self.fs[keep], self.fu[keep], self.nib[keep]
        self.fs = _grow(fs, rows)  # type: ignore[assignment]
        self.fu = _grow(fu, rows)  # type: ignore[assignment]
        self.nib = _grow(nib, rows)  # type: ignore[assignment]
        self.pstats = _grow(self.pstats[keep], rows)  # type: ignore[assignment]
        live = self.ht_keys != 0
        keys, vals = self.ht_keys[live], self.ht_vals[live]
        mapped = remap[vals]
        ok = mapped >= 0
        size = 1 << 16
        while size < 4 * max(1, int(ok.sum())):
            size <<= 1
        self.ht_keys = np.zeros(size, np.uint64)
        self.ht_vals = np.zeros(size, np.int64)
        self.state[S_NFLOWS] = keep.size
        self.state[S_HTUSED] = _reinsert(self.ht_keys, self.ht_vals, keys[ok], mapped[ok], self.fs)
        self.state[S_NREC] = 0
        if self.native:
            self._drop_segments(remap < 0, remap)
        return remap

    def media_stats(self, f: int) -> rtp.MediaStats:
        row = self.fs[f]
        cls = row[F_CLS:]
        pts = tuple(p for p in range(64) if int(self.fu[f, U_PT_LO]) >> p & 1) + tuple(
            64 + p for p in range(64) if int(self.fu[f, U_PT_HI]) >> p & 1
        )
        return rtp.MediaStats(
            rtp_packets=int(cls[pk.CLS_RTP]),
            rtcp_packets=int(cls[pk.CLS_RTCP]),
            # datagrams on UDP; RFC 4571 frames on TCP
            udp_packets=int(row[F_TOT_PK] + row[F_TOT_PK + 1]) if row[F_PROTO] == 17 else int(row[F_FRAMES]),
            ssrc_same=int(row[F_SSRC_SAME]),
            seq_ok=int(row[F_SEQ_OK]),
            len_tested=int(row[F_LEN_TESTED]),
            len_plain=int(row[F_LEN_PLAIN]),
            len_tag=int(row[F_LEN_TAG]),
            nib_counts=tuple(int(x) for x in self.nib[f]),
            rtcp_plain=int(row[F_RTCP_PLAIN]),
            rtcp_srtcp=int(row[F_RTCP_SRTCP]),
            payload_types=pts,
            payload=tuple(int(x) for x in self.pstats[f]),
        )


@nb.njit(cache=True, nogil=True)
def _reinsert(ht_keys, ht_vals, keys, vals, fs):  # type: ignore[no-untyped-def]
    mask = np.uint64(ht_keys.shape[0] - 1)
    used = 0
    for j in range(keys.shape[0]):
        if fs[vals[j], F_ENDED] == 1:
            continue
        slot = keys[j] & mask
        while ht_keys[slot] != 0:
            slot = (slot + np.uint64(1)) & mask
        ht_keys[slot] = keys[j]
        ht_vals[slot] = vals[j]
        used += 1
    return used
