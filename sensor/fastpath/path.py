"""The packet path: the compiled flow table and stream layer, the fact parsers, and (on request) Wireshark.

`analyze` and `run` both feed batches of raw packets here and take flow facts out. By default the handshake
facts are parsed in-process from the stream layer's reassembled bytes (sensor.facts); with
`sensor.dissector = "wireshark"` the fact packets go to Wireshark's dissectors in a worker process instead, as
a second opinion.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from sensor.config import Config
from sensor.facts.dissect import DissectedPacket, DissectorProcess
from sensor.facts.factcap import FactCapture
from sensor.facts.flowfacts import FlowFacts
from sensor.fastpath import columns as col
from sensor.fastpath import flows as fl
from sensor.fastpath import tls_scan
from sensor.sources.pcap import Batch

log = logging.getLogger(__name__)

# records(): RecordBuilder.build, passed in so that the packet path does not depend on the record layer above it
BuildRecords = Callable[[fl.FlowTable, dict[int, FlowFacts], int, int | None], pa.Table]

# Parse and release settled stream prefixes once this much is held, and at least every this many batches.
SETTLE_BYTES = 16 << 20
SETTLE_BATCHES = 64
# A stream prefix with no new segment for this long (packet time) is parsed for good.
QUIET_NS = 10 * 1_000_000_000


class FactSink:
    """Collects Wireshark's dissected fact packets into FlowFacts per flow (called from the worker's reader)."""

    def __init__(
        self, factcap: FactCapture, facts: dict[int, FlowFacts], new: Callable[[], FlowFacts] | None = None
    ) -> None:
        self.factcap = factcap
        self.facts = facts
        self.last_frame = 0
        self.lock = threading.Lock()
        self._new = new

    def __call__(self, p: DissectedPacket) -> None:
        with self.lock:
            self.last_frame = max(self.last_frame, p.number)
            i = p.number - 1 - self.factcap.base
            if i < 0 or i >= len(self.factcap.flow):
                return
            f = self.factcap.flow[i]
            if f < 0:
                return
            ff = self.facts.get(f)
            if ff is None:
                ff = self.facts[f] = self._new() if self._new else FlowFacts()
            ff.observe(p, self.factcap.direction[i])


class PacketPath:
    """Flow table + stream layer + fact parsers for one run: feed() batches, records() at each export, compact()
    after it (live), close() at the end, abort() on error."""

    def __init__(self, cfg: Config, server_tcp: npt.NDArray[np.uint8], server_udp: npt.NDArray[np.uint8]) -> None:
        s = cfg.sensor
        self.native = s.dissector == "native"
        self.redact_query = cfg.privacy.redact_http_query
        self.table = fl.FlowTable(
            interval_s=s.interval,
            idle_s=s.idle_timeout,
            fact_packets=s.fact_packets_per_flow,
            sip_messages=s.sip_messages_per_flow,
            server_tcp=server_tcp,
            server_udp=server_udp,
            native=self.native,
            stream_bytes=s.stream_bytes,
            fragment_capacity=s.fragment_capacity,
            fragment_timeout_s=s.fragment_timeout,
        )
        self.facts: dict[int, FlowFacts] = {}
        self.lock = threading.Lock()  # the Wireshark worker's reader adds facts from its own thread
        self.packets = 0
        self.fact_units = 0  # datagrams/messages/stream directions parsed (native), packets dissected (wireshark)
        self.retransmitted_differing = 0
        self._batches = 0
        self._last_ts = 0
        self.factcap: FactCapture | None = None
        self.worker: DissectorProcess | None = None
        self.sink: FactSink | None = None
        if not self.native:
            self.factcap = FactCapture()
            self.sink = FactSink(self.factcap, self.facts, self._new_facts)
            self.lock = self.sink.lock
            self.worker = DissectorProcess(self.factcap.read_fd, self.sink)

    def _new_facts(self) -> FlowFacts:
        return FlowFacts(redact_query=self.redact_query)

    def _get(self, f: int) -> FlowFacts:
        ff = self.facts.get(f)
        if ff is None:
            ff = self.facts[f] = self._new_facts()
        return ff

    # ---- feeding -----------------------------------------------------------------------------------------
    def feed(self, batch: Batch) -> None:
        marks = self.table.add(batch)
        self.packets += len(batch)
        if len(batch):
            self._last_ts = max(self._last_ts, int(batch.ts_ns[len(batch) - 1]))
        if not self.native:
            assert self.factcap is not None
            self.factcap.add(batch, marks)
            return
        for f, d, ts, kind, payload in self.table.take_datagrams():
            ff = self._get(f)
            if kind == col.DG_DATAGRAM:
                ff.observe_datagram(payload, d, ts)
            else:
                ff.observe_message(payload, d, ts)
            self.fact_units += 1
        self._batches += 1
        if self.table.stream_bytes_held > SETTLE_BYTES or self._batches % SETTLE_BATCHES == 0:
            self.settle(self._last_ts)

    def settle(self, now_ns: int) -> None:
        """Parse the stream prefixes that are settled for good and give back their memory."""
        if not self.native:
            return
        done = self.table.streams_settled(now_ns, QUIET_NS)
        if done.size:
            self._parse(done)
            self.table.release_streams(done)

    def _parse(self, flows: npt.NDArray[np.int64]) -> None:
        """Parse the given flows' stream prefixes: TLS in the compiled scanner (sensor.fastpath.tls_scan), what it
        hands back and every other protocol by the parsers of sensor.facts."""
        asm = self.table.assemble_raw(flows)
        if asm is None:
            return
        ng = asm.meta.shape[0]
        scanned = np.empty((ng, tls_scan.NT), np.int64)
        types = np.empty((ng, tls_scan.MAX_TYPES), np.int64)
        tls_scan.scan_groups(asm.out, asm.meta, asm.gdir, scanned, types)
        rows = scanned.tolist()
        type_rows = types.tolist()
        differing = asm.meta[:, 3].tolist()
        first_ts = self.table.fs[:, col.F_FIRST_TS]
        handled, fallback = tls_scan.HANDLED, tls_scan.FALLBACK
        for f, (c, s) in asm.groups().items():
            self.fact_units += 2
            self.retransmitted_differing += (differing[c] if c >= 0 else 0) + (differing[s] if s >= 0 else 0)
            crow = rows[c] if c >= 0 else None
            srow = rows[s] if s >= 0 else None
            cst = crow[tls_scan.T_STATUS] if crow is not None else tls_scan.NOT_TLS
            sst = srow[tls_scan.T_STATUS] if srow is not None else tls_scan.NOT_TLS
            if (cst == handled or sst == handled) and cst != fallback and sst != fallback:
                facts = tls_scan.facts_from(
                    asm.out,
                    crow,
                    type_rows[c][: crow[tls_scan.T_NTYPES]] if crow is not None else [],
                    srow,
                    type_rows[s][: srow[tls_scan.T_NTYPES]] if srow is not None else [],
                )
                if not facts.pseudo:  # MS-TURN after pseudo-TLS is read by the STUN parser below
                    self._get(f).tls = facts
                    continue
            cp, sp = asm.prefix(c), asm.prefix(s)
            self._get(f).observe_streams(
                cp.data,
                sp.data,
                client_from_start=cp.from_start,
                server_from_start=sp.from_start,
                client_complete=cp.complete,
                server_complete=sp.complete,
                ts_ns=int(first_ts[f]),
                client_times=cp.times,
                server_times=sp.times,
            )

    # ---- taking facts out --------------------------------------------------------------------------------
    def records(self, build: BuildRecords, start: int = 0, end: int | None = None) -> pa.Table:
        """The flow records table[start:end] with the facts complete as far as the bytes go: every pending stream
        prefix is parsed first (so a flow's facts are on its first interval record), then `build` (the record
        builder's) turns flows and facts into the table."""
        self.facts_for_export(self._last_ts)
        with self.lock:
            return build(self.table, self.facts, start, end)

    def facts_for_export(self, now_ns: int) -> None:
        """Make every flow's facts as complete as the bytes so far allow (live mode, before an export): parse
        every pending stream prefix; settled ones are released."""
        if not self.native:
            return
        self.settle(now_ns)
        pending = self.table.streams_pending()
        if pending.size:
            self._parse(pending)

    def close(self) -> None:
        """End of input: close every open interval, parse every stream prefix, wait for Wireshark."""
        self.table.finish()
        if self.native:
            pending = self.table.streams_pending()
            if pending.size:
                self._parse(pending)
                self.table.release_streams(pending)
            return
        assert self.factcap is not None and self.worker is not None
        try:
            self.factcap.close()
        finally:
            self.worker.wait(timeout=600)

    def compact(self) -> None:
        """Drop ended flows (after their records were exported) and follow the new flow indices."""
        with self.lock:
            remap = self.table.compact()
            self.facts = {int(remap[f]): ff for f, ff in self.facts.items() if f < remap.size and remap[f] >= 0}
            if self.sink is not None and self.factcap is not None:
                self.sink.facts = self.facts
                self.factcap.forget(self.sink.last_frame - self.factcap.base)
                self.factcap.remap(remap)

    def abort(self) -> None:
        if self.worker is not None:
            self.worker.kill()
        if self.factcap is not None:
            self.factcap.close(abandon=True)

    @property
    def last_ts(self) -> int:
        """Time of the newest packet fed (packet time, ns)."""
        return self._last_ts

    @property
    def fact_count(self) -> int:
        return self.factcap.count if self.factcap is not None else self.fact_units

    def stream_counters(self) -> dict[str, int]:
        """What the stream layer met so far: IP fragments (seen, datagrams reassembled, overlaps dropped,
        evicted at the cap, timed out, invalid) and TCP bytes whose retransmitted copy differed."""
        out = {f"ip_{k}" if k == "fragments" else f"ip_fragment_{k}": v for k, v in self.table.frags.report().items()}
        out["tcp_differing_bytes"] = self.retransmitted_differing
        return out
