"""The flow table: a hash table of 5-tuples over growing per-flow arrays, fed batch by batch to the compiled
kernel (sensor.fastpath.kernel); interval records, stream prefixes and fact datagrams come out of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sensor.fastpath import packets as pk
from sensor.fastpath import rtp, stream
from sensor.fastpath.columns import (
    F_ENDED,
    F_FLAGS,
    F_LAST_TS,
    FL_FIN,
    FL_RST,
    NDGC,
    NFS,
    NFU,
    NREC,
    NSTATE,
    S_ARENA,
    S_DGARENA,
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
)
from sensor.fastpath.kernel import process
from sensor.fastpath.prefixes import StreamOutputs
from sensor.fastpath.table_kernels import _reinsert, end_flows, flush_before, flush_open
from sensor.sources.pcap import Batch


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


class FlowTable(StreamOutputs):
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
        self.units = np.zeros((64, 3), np.int64)  # media units of one packet (kernel scratch): offset, length, whole

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
                self.units,
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

    def end_closed(self, now_ns: int, grace_ns: int) -> int:
        """End TCP flows closed by FIN or RST whose last packet is older than grace_ns (Zeek's tcp_close_delay:
        the last ACKs and retransmissions still belong to the flow); returns how many."""
        act = self.active()
        fs = self.fs
        closed = act[((fs[act, F_FLAGS] & (FL_FIN | FL_RST)) != 0) & (fs[act, F_LAST_TS] < now_ns - grace_ns)]
        if closed.size:
            self._ensure_records(int(closed.size))
            end_flows(self.fs, self.rec, self.state, closed.astype(np.int64))
        return int(closed.size)

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
