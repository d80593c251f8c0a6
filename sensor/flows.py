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
from sensor import rtp
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
NFS = F_CLS + pk.NCLS
# Per-flow uint64 columns: addresses (128-bit as hi/lo) and the RTP payload-type bitmap.
U_ORIG_HI, U_ORIG_LO, U_RESP_HI, U_RESP_LO, U_PT_LO, U_PT_HI = range(6)
NFU = 6
# Interval record columns.
R_FLOW, R_SEQ, R_FIRST, R_LAST, R_PK, R_BY, R_IPBY = 0, 1, 2, 3, 4, 6, 8
NREC = 10

FL_SYN, FL_FIN, FL_RST = 1, 2, 4
ST_DONE, ST_NEED_RECORDS, ST_NEED_FLOWS, ST_NEED_TABLE = 0, 1, 2, 3
# kernel counters (the `state` array)
S_NFLOWS, S_NREC, S_HTUSED, S_NONIP, S_FRAGS = range(5)


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
def _new_flow(fs, fu, nib, state, h_src_first, shi, slo, dhi, dlo, sport, dport, proto, ipver, ts):  # type: ignore[no-untyped-def]
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
):
    """Account packets start.. of one batch. Returns (next index, status); a status other than ST_DONE
    asks the caller to grow the named array and call again from that index."""
    n = offs.shape[0]
    mask = np.uint64(ht_keys.shape[0] - 1)
    for i in range(start, n):
        if state[S_NREC] + 2 > rec.shape[0]:
            return i, ST_NEED_RECORDS
        if state[S_NFLOWS] + 2 > fs.shape[0]:
            return i, ST_NEED_FLOWS
        if (state[S_HTUSED] + 1) * 2 > ht_keys.shape[0]:
            return i, ST_NEED_TABLE
        fact_mask[i] = 0
        ok, ipver, shi, slo, dhi, dlo, proto, sport, dport, poff, plen, flags, iplen, ff = pk.decode(
            buf, offs[i], caplens[i], lts[i]
        )
        if not ok:
            state[S_NONIP] += 1
            continue
        if not ff:
            state[S_FRAGS] += 1
        ts = tss[i]
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
            f = _new_flow(fs, fu, nib, state, src_first, shi, slo, dhi, dlo, sport, dport, proto, ipver, ts)
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
        if proto == 6:
            if flags & 0x02:
                fs[f, F_FLAGS] |= FL_SYN
            if flags & 0x01:
                fs[f, F_FLAGS] |= FL_FIN
            if flags & 0x04:
                fs[f, F_FLAGS] |= FL_RST
        if plen <= 0:
            continue
        cls = pk.classify(buf, poff, plen, proto, mtable, mlen)
        fs[f, F_CLS + cls] += 1
        if fs[f, F_FIRST_BYTE + d] < 0:
            fs[f, F_FIRST_BYTE + d] = buf[poff]
            fs[f, F_FIRST_CLS + d] = cls
        first = fs[f, F_FIRST_CLS]
        if first < 0:
            first = fs[f, F_FIRST_CLS + 1]
        # Fact packets: the opening payload packets of flows that start with a handshake or a request
        # (enough for tshark to reassemble a TLS flight), and SIP/HTTP messages up to a per-flow cap.
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
            # ChangeCipherSpec or application data: this side's cleartext handshake is over, later
            # records are encrypted and tell the dissectors nothing.
            if fs[f, F_DATA_PKTS + d] < k_fact:
                fs[f, F_DATA_PKTS + d] = k_fact
            want = want and buf[poff] == 20
        if want:
            fact_mask[i] = 1
            fact_flow[i] = f
            fact_dir[i] = d
            fs[f, F_FACTS] += 1
        if proto != 17:
            continue
        if cls == pk.CLS_RTP:
            ssrc = pk.be32(buf, poff + 8)
            if fs[f, F_RTP_SSRC + d] < 0:
                fs[f, F_RTP_SSRC + d] = ssrc
            if fs[f, F_RTP_SSRC + d] == ssrc:
                fs[f, F_SSRC_SAME] += 1
            seq = pk.be16(buf, poff + 2)
            if (fs[f, F_SEQ_LAST + d] >= 0 and seq == ((fs[f, F_SEQ_LAST + d] + 1) & 0xFFFF)) or fs[
                f, F_SEQ_LAST + d
            ] < 0:
                fs[f, F_SEQ_OK] += 1
            fs[f, F_SEQ_LAST + d] = seq
            pt = buf[poff + 1] & 0x7F
            if pt < 64:
                fu[f, U_PT_LO] |= np.uint64(1) << np.uint64(pt)
            else:
                fu[f, U_PT_HI] |= np.uint64(1) << np.uint64(pt - 64)
            hl = rtp.rtp_header_len(buf, poff, plen)
            rtp.observe_payload(buf, poff, plen, hl, pt, d, ts, pstats, f)
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
        elif cls == pk.CLS_RTCP:
            kind = rtp.rtcp_kind(buf, poff, plen)
            if kind == 1:
                fs[f, F_RTCP_PLAIN] += 1
            elif kind == 2:
                fs[f, F_RTCP_SRTCP] += 1
    return n, ST_DONE


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
    ) -> None:
        self.interval_ns = int(interval_s) * 1_000_000_000
        self.idle_ns = int(idle_s) * 1_000_000_000
        self.k_fact = fact_packets
        self.k_sip = sip_messages
        self.server_tcp = server_tcp
        self.server_udp = server_udp
        self.ht_keys = np.zeros(1 << 16, np.uint64)
        self.ht_vals = np.zeros(1 << 16, np.int64)
        self.fs = np.zeros((4096, NFS), np.int64)
        self.fu = np.zeros((4096, NFU), np.uint64)
        self.nib = np.zeros((4096, 16), np.int64)
        self.pstats = np.zeros((4096, rtp.NPS), np.int64)
        self.rec = np.zeros((8192, NREC), np.int64)
        self.state = np.zeros(5, np.int64)
        self._facts_buf: FactPackets | None = None

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
            )
            if status == ST_DONE:
                return facts
            if status == ST_NEED_RECORDS:
                self.rec = _grow(self.rec, self.rec.shape[0] * 2)  # type: ignore[assignment]
            elif status == ST_NEED_FLOWS:
                rows = self.fs.shape[0] * 2
                self.fs = _grow(self.fs, rows)  # type: ignore[assignment]
                self.fu = _grow(self.fu, rows)  # type: ignore[assignment]
                self.nib = _grow(self.nib, rows)  # type: ignore[assignment]
                self.pstats = _grow(self.pstats, rows)  # type: ignore[assignment]
            else:
                self._rehash(self.ht_keys.shape[0] * 2)

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
            udp_packets=int(row[F_TOT_PK] + row[F_TOT_PK + 1]) if row[F_PROTO] == 17 else 0,
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
