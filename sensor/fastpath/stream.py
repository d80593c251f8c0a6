"""The stream layer: IP fragment reassembly and per-direction TCP stream prefixes, reassembled by sequence number.

Facts must not depend on the order packets arrive in. IPv4/IPv6 fragments are held per datagram (bounded: a
timeout, 64 KiB per datagram, a cap on concurrent reassemblies) and the whole datagram enters the flow table
once. For TCP, the fast path keeps the segments of the first K bytes of each direction (a segment arena); this
module turns them into contiguous byte strings from stream offset 0, first copy winning on overlaps, holes kept
as holes: a fact that needs bytes beyond a hole is unknown, never false.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
import numpy.typing as npt

import sensor.fastpath.jit  # noqa: F401  (numba cache location; before any @njit)

# ---- IP fragments ----------------------------------------------------------------------------------------
MAX_DATAGRAM = 65536
# Per-reassembly int64 columns.
FI_USED, FI_ID, FI_PROTO, FI_IPVER, FI_FIRST_TS, FI_TOTAL, FI_GOT, FI_BAD, FI_EXTENT = range(9)
NFI = 9
# Fragment counters (the `fstate` array).
FS_FRAGMENTS, FS_DATAGRAMS, FS_OVERLAPS, FS_EVICTED, FS_TIMED_OUT, FS_INVALID = range(6)
NFSTATE = 6
FRAG_COUNTER_NAMES = ("fragments", "datagrams", "overlaps", "evicted", "timed_out", "invalid")


@nb.njit(cache=True, nogil=True)
def _frag_free(fi, fcov, slot):  # type: ignore[no-untyped-def]
    ext = fi[slot, FI_EXTENT]
    for j in range(ext):
        fcov[slot, j] = 0
    fi[slot, FI_USED] = 0
    fi[slot, FI_EXTENT] = 0


@nb.njit(cache=True, nogil=True)
def frag_add(fk, fi, fdata, fcov, fstate, shi, slo, dhi, dlo, proto, ipver, fid, foff, mf, buf, p, n, ts, timeout_ns):  # type: ignore[no-untyped-def]
    """Add one fragment (data buf[p:p+n] at byte offset foff of its datagram). Returns the slot holding the
    complete datagram (its bytes are fdata[slot, :fi[slot, FI_TOTAL]]; the caller frees it with frag_release),
    or -1 while it is incomplete or when it was dropped. Overlapping fragments drop the whole datagram
    (RFC 5722); a datagram over 64 KiB is dropped; reassemblies older than the timeout are dropped."""
    fstate[FS_FRAGMENTS] += 1
    nslots = fi.shape[0]
    slot = -1
    free = -1
    oldest = -1
    for s in range(nslots):
        if fi[s, FI_USED] == 0:
            if free < 0:
                free = s
            continue
        if ts - fi[s, FI_FIRST_TS] > timeout_ns:
            if fi[s, FI_BAD] == 0:
                fstate[FS_TIMED_OUT] += 1
            _frag_free(fi, fcov, s)
            if free < 0:
                free = s
            continue
        if (
            fi[s, FI_ID] == fid
            and fi[s, FI_PROTO] == proto
            and fk[s, 0] == shi
            and fk[s, 1] == slo
            and fk[s, 2] == dhi
            and fk[s, 3] == dlo
        ):
            slot = s
            break
        if oldest < 0 or fi[s, FI_FIRST_TS] < fi[oldest, FI_FIRST_TS]:
            oldest = s
    if slot < 0:
        if free < 0:
            free = oldest
            if fi[free, FI_BAD] == 0:
                fstate[FS_EVICTED] += 1
            _frag_free(fi, fcov, free)
        slot = free
        fi[slot, FI_USED] = 1
        fi[slot, FI_ID] = fid
        fi[slot, FI_PROTO] = proto
        fi[slot, FI_IPVER] = ipver
        fi[slot, FI_FIRST_TS] = ts
        fi[slot, FI_TOTAL] = -1
        fi[slot, FI_GOT] = 0
        fi[slot, FI_BAD] = 0
        fi[slot, FI_EXTENT] = 0
        fk[slot, 0] = shi
        fk[slot, 1] = slo
        fk[slot, 2] = dhi
        fk[slot, 3] = dlo
    if fi[slot, FI_BAD] != 0:
        return -1  # a dropped datagram's later fragments are dropped too (RFC 5722 §4)
    end = foff + n
    if end > MAX_DATAGRAM or (mf != 0 and n % 8 != 0):
        fstate[FS_INVALID] += 1  # over 64 KiB, or a non-last fragment not a multiple of 8
        fi[slot, FI_BAD] = 1
        return -1
    covered = 0
    same = True
    for j in range(foff, end):
        if fcov[slot, j] != 0:
            covered += 1
            if fdata[slot, j] != buf[p + j - foff]:
                same = False
    if covered > 0:
        if covered == n and same:
            return -1  # the same fragment again (a duplicated packet on the SPAN port): nothing new
        fstate[FS_OVERLAPS] += 1
        fi[slot, FI_BAD] = 1
        return -1
    for j in range(n):
        fdata[slot, foff + j] = buf[p + j]
        fcov[slot, foff + j] = 1
    if end > fi[slot, FI_EXTENT]:
        fi[slot, FI_EXTENT] = end
    fi[slot, FI_GOT] += n
    if mf == 0:
        if fi[slot, FI_TOTAL] >= 0 and fi[slot, FI_TOTAL] != end:
            fstate[FS_OVERLAPS] += 1
            fi[slot, FI_BAD] = 1
            return -1
        fi[slot, FI_TOTAL] = end
    if fi[slot, FI_TOTAL] >= 0 and fi[slot, FI_EXTENT] > fi[slot, FI_TOTAL]:
        fstate[FS_OVERLAPS] += 1
        fi[slot, FI_BAD] = 1
        return -1
    if fi[slot, FI_TOTAL] >= 0 and fi[slot, FI_GOT] == fi[slot, FI_TOTAL]:
        fstate[FS_DATAGRAMS] += 1
        return slot
    return -1


@nb.njit(cache=True, nogil=True)
def emit_datagram(fk, fi, fdata, slot, rbuf, roff, rlen, k, at):  # type: ignore[no-untyped-def]
    """Write the complete datagram in `slot` at rbuf[at:] as a raw IP packet (a fresh IPv4 or IPv6 header,
    no fragmentation) and record it as entry k of the reassembled batch."""
    total = fi[slot, FI_TOTAL]
    proto = fi[slot, FI_PROTO]
    p = at
    if fi[slot, FI_IPVER] == 4:
        ln = total + 20
        rbuf[p] = 0x45
        rbuf[p + 1] = 0
        field = ln if ln <= 0xFFFF else 0  # 0: the decoder takes the captured length
        rbuf[p + 2] = (field >> 8) & 0xFF
        rbuf[p + 3] = field & 0xFF
        for j in range(4, 9):
            rbuf[p + j] = 0
        rbuf[p + 8] = 64
        rbuf[p + 9] = proto
        rbuf[p + 10] = 0
        rbuf[p + 11] = 0
        src = fk[slot, 1]
        dst = fk[slot, 3]
        for j in range(4):
            rbuf[p + 12 + j] = np.uint8((src >> np.uint64(24 - 8 * j)) & np.uint64(0xFF))
            rbuf[p + 16 + j] = np.uint8((dst >> np.uint64(24 - 8 * j)) & np.uint64(0xFF))
        p += 20
    else:
        ln = total + 40
        rbuf[p] = 0x60
        for j in range(1, 4):
            rbuf[p + j] = 0
        field = total if total <= 0xFFFF else 0
        rbuf[p + 4] = (field >> 8) & 0xFF
        rbuf[p + 5] = field & 0xFF
        rbuf[p + 6] = proto
        rbuf[p + 7] = 64
        for w in range(4):
            v = fk[slot, w]
            for j in range(8):
                rbuf[p + 8 + 8 * w + j] = np.uint8((v >> np.uint64(56 - 8 * j)) & np.uint64(0xFF))
        p += 40
    for j in range(total):
        rbuf[p + j] = fdata[slot, j]
    roff[k] = at
    rlen[k] = ln


@nb.njit(cache=True, nogil=True)
def frag_release(fi, fcov, slot):  # type: ignore[no-untyped-def]
    """Free a completed datagram's slot."""
    _frag_free(fi, fcov, slot)


class Fragments:
    """Reassembly state for IP fragments: at most `capacity` datagrams in progress (the oldest is evicted
    beyond that, counted), each at most 64 KiB, dropped after `timeout_s` of packet time (Linux's 30 s)."""

    def __init__(self, capacity: int = 256, timeout_s: float = 30.0) -> None:
        # np.zeros is lazily committed by the OS: memory follows the reassemblies actually in use.
        self.keys = np.zeros((capacity, 4), np.uint64)
        self.info = np.zeros((capacity, NFI), np.int64)
        self.data = np.zeros((capacity, MAX_DATAGRAM), np.uint8)
        self.cover = np.zeros((capacity, MAX_DATAGRAM), np.uint8)
        self.counters = np.zeros(NFSTATE, np.int64)
        self.timeout_ns = int(timeout_s * 1e9)

    def report(self) -> dict[str, int]:
        return {name: int(v) for name, v in zip(FRAG_COUNTER_NAMES, self.counters, strict=True)}


# ---- TCP stream prefixes -----------------------------------------------------------------------------
# Segment table columns: flow, direction, absolute sequence number, arena offset, length, capture time (ns).
SG_FLOW, SG_DIR, SG_SEQ, SG_OFF, SG_LEN, SG_TS = range(6)
NSG = 6


@nb.njit(cache=True, nogil=True, inline="always")
def rel_seq(seq, base):  # type: ignore[no-untyped-def]
    """seq - base in sequence-number arithmetic (RFC 793 §3.3: modulo 2**32, as a signed 32-bit distance)."""
    d = (seq - base) & 0xFFFFFFFF
    if d >= 0x80000000:
        d -= 0x100000000
    return d


@nb.njit(cache=True, nogil=True)
def assemble(sg, arena, order, starts, isn, limit_k):  # type: ignore[no-untyped-def]
    """Reassemble each group of segments (one flow direction; `order` lists segment rows grouped by flow and
    direction, in arrival order within a group; group g is order[starts[g]:starts[g+1]]).

    isn[g] is the stream's initial sequence number + 1 (offset 0) or -1 when the SYN was not seen; then the
    lowest sequence number seen is offset 0 of what is kept (picked up mid-stream). First copy wins; bytes that
    differ in a later copy are counted. Returns (out, meta) with meta[g] = (offset in out, contiguous length
    from offset 0, extent, bytes that differed on overlap, covered bytes beyond the first hole, the sequence
    number of offset 0)."""
    ngroups = starts.shape[0] - 1
    meta = np.zeros((ngroups, 6), np.int64)
    bases = np.zeros(ngroups, np.int64)
    total = 0
    for g in range(ngroups):
        a = starts[g]
        b = starts[g + 1]
        base = isn[g]
        if base < 0:
            base = sg[order[a], SG_SEQ]
            for k in range(a + 1, b):
                s = sg[order[k], SG_SEQ]
                if rel_seq(s, base) < 0:
                    base = s
        bases[g] = base
        meta[g, 5] = base
        extent = 0
        for k in range(a, b):
            r = order[k]
            hi = rel_seq(sg[r, SG_SEQ], base) + sg[r, SG_LEN]
            if hi > limit_k:
                hi = limit_k
            if hi > extent:
                extent = hi
        meta[g, 0] = total
        meta[g, 2] = extent
        total += extent
    out = np.zeros(total, np.uint8)
    cover = np.zeros(limit_k, np.uint8)
    for g in range(ngroups):
        a = starts[g]
        b = starts[g + 1]
        base = bases[g]
        cur = meta[g, 0]
        extent = meta[g, 2]
        diff = 0
        cover[:extent] = 0
        high = 0  # every byte at or past `high` is still uncovered
        for k in range(a, b):
            r = order[k]
            lo = rel_seq(sg[r, SG_SEQ], base)
            off = sg[r, SG_OFF]
            ln = sg[r, SG_LEN]
            if lo >= high:  # the usual case: nothing seen overlaps this segment, copy it as a block
                hi = min(lo + ln, extent)
                if hi > lo:
                    out[cur + lo : cur + hi] = arena[off : off + hi - lo]
                    cover[lo:hi] = 1
                    high = hi
                continue
            if lo + ln > high:
                high = min(lo + ln, extent)
            for j in range(ln):
                pos = lo + j
                if pos < 0:
                    continue
                if pos >= extent:
                    break
                v = arena[off + j]
                if cover[pos] == 0:
                    cover[pos] = 1
                    out[cur + pos] = v
                elif out[cur + pos] != v:
                    diff += 1
        contig = 0
        while contig < extent and cover[contig] != 0:
            contig += 1
        beyond = 0
        for j in range(contig, extent):
            beyond += cover[j]
        meta[g, 1] = contig
        meta[g, 3] = diff
        meta[g, 4] = beyond
    return out, meta


@nb.njit(cache=True, nogil=True)
def compact_segments(sg, arena, keep_rows, nseg_out):  # type: ignore[no-untyped-def]
    """Keep only the given segment rows (in order), moving their bytes to the front of the arena; returns
    the arena bytes used."""
    cur = 0
    for k in range(keep_rows.shape[0]):
        r = keep_rows[k]
        off = sg[r, SG_OFF]
        ln = sg[r, SG_LEN]
        for j in range(ln):
            arena[cur + j] = arena[off + j]
        for c in range(NSG):
            nseg_out[k, c] = sg[r, c]
        nseg_out[k, SG_OFF] = cur
        cur += ln
    return cur


@dataclass(slots=True)
class StreamPrefix:
    """One direction of a TCP stream as reassembled: the contiguous bytes from the first offset kept."""

    data: bytes
    from_start: bool  # offset 0 is the byte after the SYN (False: picked up mid-stream)
    complete: bool  # nothing was seen beyond these bytes (no hole, not cut at the cap)
    differing: int  # retransmitted bytes that differed from the first copy (first copy kept)
    times: SegmentTimes | None = None  # capture time of the byte at an offset


class SegmentTimes:
    """When the byte at a stream offset was captured (the first segment that carried it): SIP messages on one
    TCP connection belong to different calls at different times. Built only when asked."""

    __slots__ = ("_a", "_b", "_base", "_order", "_sg", "_starts", "_ts")

    def __init__(self, sg: npt.NDArray[np.int64], order: npt.NDArray[np.int64], a: int, b: int, base: int) -> None:
        self._sg = sg
        self._order = order  # the group's segment rows are order[a:b]
        self._a = a
        self._b = b
        self._base = base
        self._starts: npt.NDArray[np.int64] | None = None
        self._ts: npt.NDArray[np.int64] | None = None

    def __call__(self, offset: int) -> int:
        if self._starts is None:
            seg = self._sg[self._order[self._a : self._b]]
            rel = (seg[:, SG_SEQ] - self._base) & 0xFFFFFFFF
            rel = np.where(rel >= 0x80000000, rel - 0x100000000, rel)
            order = np.lexsort((seg[:, SG_TS], rel))  # by offset; the earliest copy first
            self._starts = rel[order]
            self._ts = seg[order, SG_TS]
        assert self._ts is not None
        i = int(np.searchsorted(self._starts, offset, side="right")) - 1
        return int(self._ts[max(i, 0)])


def group_rows(flows: npt.NDArray[np.int64], dirs: npt.NDArray[np.int64]) -> tuple[np.ndarray, np.ndarray]:
    """Segment rows grouped by (flow, direction), arrival order kept inside a group; returns (order, starts)."""
    order = np.lexsort((np.arange(flows.size), dirs, flows))
    key = flows[order] * 2 + dirs[order]
    cut = np.flatnonzero(np.diff(key)) + 1
    starts = np.concatenate(([0], cut, [order.size])).astype(np.int64)
    return order.astype(np.int64), starts
