"""The per-packet path: one compiled loop over a batch (decode, IP reassembly, flow lookup, counters, interval
records, RTP/RTCP statistics, stream segments and fact datagrams). Python only sees batches."""

from __future__ import annotations

import numba as nb
import numpy as np

import sensor.fastpath.jit  # noqa: F401  (numba cache location; before any @njit)
from sensor.fastpath import packets as pk
from sensor.fastpath import rtp, stream
from sensor.fastpath.columns import (
    F_BY,
    F_CLS,
    F_CUR_IVAL,
    F_DATA_PKTS,
    F_ENDED,
    F_FIRST_BYTE,
    F_FIRST_CLS,
    F_FLAGS,
    F_FRAME_NEXT,
    F_IPBY,
    F_ISN,
    F_IVAL_FIRST,
    F_IVAL_LAST,
    F_LAST_TS,
    F_LEN_PLAIN,
    F_LEN_TAG,
    F_LEN_TESTED,
    F_LIMIT,
    F_NIB_PKTS,
    F_PK,
    F_PORT_O,
    F_RTP_SSRC,
    F_SEQ0,
    F_SEQ_LAST,
    F_SEQ_OK,
    F_SSRC_SAME,
    F_STREAM_DONE,
    F_TOT_BY,
    F_TOT_PK,
    FL_FIN,
    FL_RST,
    FL_SYN,
    FRAME_OFF,
    S_ARENA,
    S_DGARENA,
    S_FRAGS,
    S_HTUSED,
    S_NDG,
    S_NFLOWS,
    S_NONIP,
    S_NREASM,
    S_NREC,
    S_NSEG,
    S_RBYTES,
    ST_DONE,
    ST_NEED_ARENA,
    ST_NEED_FLOWS,
    ST_NEED_REASM,
    ST_NEED_RECORDS,
    ST_NEED_SEGS,
    ST_NEED_TABLE,
    U_ORIG_HI,
    U_ORIG_LO,
    U_PT_HI,
    U_PT_LO,
)
from sensor.fastpath.packet_facts import _native_facts, _rfc4571, _rtcp_stats, _wireshark_facts
from sensor.fastpath.table_kernels import _emit, _mix, _new_flow


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
    units,
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
        # The RTP statistics run once per media unit: a UDP datagram, or each RTP frame RFC 4571 puts in a TCP
        # segment. They stay inline rather than in a function: numba counts references to every array passed to
        # a call (two atomic operations each, per packet), which costs the media path a third of its speed.
        nunits = 0
        if proto == 17 and cls == pk.CLS_RTP:
            units[0, 0] = poff
            units[0, 1] = plen
            units[0, 2] = 1
            nunits = 1
            if not native:
                fs[f, F_DATA_PKTS + d] += 1
        else:
            if native:
                # a TCP segment is kept while its direction's prefix is (the same bounds _native_facts checks) or
                # when it starts a SIP/HTTP message; past that (bulk application data) no call is made at all
                in_prefix = fs[f, F_STREAM_DONE] == 0 and -stream_k <= rel < fs[f, F_LIMIT + d]
                message = cls == pk.CLS_SIP_REQ or cls == pk.CLS_SIP_RESP or cls == pk.CLS_HTTP_REQ
                datagram = message or cls == pk.CLS_STUN or cls == pk.CLS_STUN_OLD or cls == pk.CLS_DTLS
                if (proto == 6 and (in_prefix or message)) or (proto == 17 and datagram):
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
                _wireshark_facts(
                    buf, poff, plen, proto, cls, f, d, i, fs, fact_mask, fact_flow, fact_dir, k_fact, k_sip
                )
            if proto == 17:
                if cls == pk.CLS_RTCP:
                    _rtcp_stats(buf, poff, plen, f, fs)
            elif fs[f, F_FRAME_NEXT + d] != FRAME_OFF:
                nunits = _rfc4571(buf, poff, plen, rel, f, d, fs, units)
        for u in range(nunits):
            uo = units[u, 0]
            ul = units[u, 1]
            whole = units[u, 2] == 1
            ssrc = pk.be32(buf, uo + 8)
            if fs[f, F_RTP_SSRC + d] < 0:
                fs[f, F_RTP_SSRC + d] = ssrc
            if fs[f, F_RTP_SSRC + d] == ssrc:
                fs[f, F_SSRC_SAME] += 1
            rseq = pk.be16(buf, uo + 2)
            last = fs[f, F_SEQ_LAST + d]
            if last < 0 or rseq == ((last + 1) & 0xFFFF):
                fs[f, F_SEQ_OK] += 1
            fs[f, F_SEQ_LAST + d] = rseq
            pt = buf[uo + 1] & 0x7F
            if pt < 64:
                fu[f, U_PT_LO] |= np.uint64(1) << np.uint64(pt)
            else:
                fu[f, U_PT_HI] |= np.uint64(1) << np.uint64(pt - 64)
            hl = rtp.rtp_header_len(buf, uo, ul)
            rtp.observe_payload(buf, uo, ul, hl, pt, d, pstats, f)
            unit = frame_unit[pt]
            if hl > 0 and unit > 0 and whole:
                body = ul - hl
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
                    for j in range(uo + hl, uo + ul):
                        nib[f, buf[j] >> 4] += 1
    return n, ST_DONE
