"""The stream layer's outputs of the flow table: fact datagrams, and the TCP stream prefixes reassembled from
the kept segments (parsed, then released, by the packet path)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from sensor.fastpath import stream
from sensor.fastpath.columns import (
    DG_DIR,
    DG_FLOW,
    DG_KIND,
    DG_LEN,
    DG_OFF,
    DG_TS,
    F_CAPPED,
    F_ENDED,
    F_FLAGS,
    F_HAS_SEGS,
    F_ISN,
    F_LIMIT,
    F_SEG_TS,
    F_STREAM_DONE,
    FL_FIN,
    FL_RST,
    NDGC,
    S_ARENA,
    S_DGARENA,
    S_NDG,
    S_NFLOWS,
    S_NSEG,
)

# The segment arena is not shrunk below this after a release: the packet path parses and releases once 16 MiB
# are held (path.SETTLE_BYTES), and shrinking to 1 MiB made every round grow it back by doubling, copying it
# each time (0.35 s of an 11 s run).
ARENA_KEEP = 32 << 20


class Assembled:
    """One round of reassembled stream prefixes: `out` holds every group (one flow direction) at
    meta[g] = (offset, contiguous length from offset 0, extent, differing bytes, bytes beyond a hole, base)."""

    def __init__(
        self,
        out: npt.NDArray[np.uint8],
        meta: npt.NDArray[np.int64],
        gflow: npt.NDArray[np.int64],
        gdir: npt.NDArray[np.int64],
        isn: npt.NDArray[np.int64],
        capped: npt.NDArray[np.int64],
        order: npt.NDArray[np.int64],
        starts: npt.NDArray[np.int64],
        sg: npt.NDArray[np.int64],
        stream_k: int,
    ) -> None:
        self.out, self.meta, self.gflow, self.gdir = out, meta, gflow, gdir
        self.isn, self.capped, self.order, self.starts, self.sg, self.k = isn, capped, order, starts, sg, stream_k
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        """`out` as bytes (made when first asked: the compiled TLS scanner's flows slice `out` itself)."""
        if self._data is None:
            self._data = self.out.tobytes()
        return self._data

    def groups(self) -> dict[int, list[int]]:
        """flow -> [originator group, responder group] (-1: no bytes that way)."""
        out: dict[int, list[int]] = {}
        for g, (f, d) in enumerate(zip(self.gflow.tolist(), self.gdir.tolist(), strict=True)):
            pair = out.get(f)
            if pair is None:
                pair = out[f] = [-1, -1]
            pair[d] = g
        return out

    def prefix(self, g: int) -> stream.StreamPrefix:
        """Group g as a StreamPrefix (-1: the empty one)."""
        if g < 0:
            return stream.StreamPrefix(b"", False, False, 0)
        off, contig, extent, diff, beyond, base = (int(v) for v in self.meta[g])
        return stream.StreamPrefix(
            self.data[off : off + contig],
            bool(self.isn[g] >= 0),
            contig == extent and beyond == 0 and not self.capped[g] and extent < self.k,
            diff,
            stream.SegmentTimes(self.sg, self.order, int(self.starts[g]), int(self.starts[g + 1]), base),
        )

    def pairs(self) -> dict[int, tuple[stream.StreamPrefix, stream.StreamPrefix]]:
        return {f: (self.prefix(c), self.prefix(s)) for f, (c, s) in self.groups().items()}


class StreamOutputs:
    """Mixed into FlowTable: what the kernel kept for the native fact parsers, and giving its memory back."""

    fs: npt.NDArray[np.int64]
    state: npt.NDArray[np.int64]
    sg: npt.NDArray[np.int64]
    arena: npt.NDArray[np.uint8]
    dg: npt.NDArray[np.int64]
    dgarena: npt.NDArray[np.uint8]
    stream_k: int

    @property
    def nflows(self) -> int:
        """Flows in the table."""
        return int(self.state[S_NFLOWS])

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

    def assemble_raw(self, flows: npt.NDArray[np.int64]) -> Assembled | None:
        """Reassemble both directions of the given flows' kept segments, as arrays (None: nothing kept)."""
        nseg = int(self.state[S_NSEG])
        if nseg == 0 or flows.size == 0:
            return None
        sg = self.sg[:nseg]
        want = np.zeros(self.nflows, bool)
        want[flows] = True
        rows = np.flatnonzero(want[sg[:, stream.SG_FLOW]])
        if rows.size == 0:
            return None
        order, starts = stream.group_rows(sg[rows, stream.SG_FLOW], sg[rows, stream.SG_DIR])
        order = rows[order]
        gflow = sg[order[starts[:-1]], stream.SG_FLOW]
        gdir = sg[order[starts[:-1]], stream.SG_DIR]
        isn = self.fs[gflow, F_ISN + gdir].astype(np.int64)
        out, meta = stream.assemble(self.sg, self.arena, order, starts, isn, self.stream_k)
        # compaction writes a new segment table, so this one stays valid for the segment times
        return Assembled(
            out, meta, gflow, gdir, isn, self.fs[gflow, F_CAPPED + gdir], order, starts, self.sg, self.stream_k
        )

    def assemble(self, flows: npt.NDArray[np.int64]) -> dict[int, tuple[stream.StreamPrefix, stream.StreamPrefix]]:
        """Reassemble both directions of the given flows' kept segments (flow -> (originator, responder))."""
        asm = self.assemble_raw(flows)
        return asm.pairs() if asm is not None else {}

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
        size = ARENA_KEEP
        while size < used + 65536:
            size <<= 1
        if self.arena.shape[0] > 2 * size:  # give back what a burst grew
            self.arena = self.arena[:size].copy()
