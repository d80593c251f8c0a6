"""`lync-sensor analyze`: captures in, flow records, rules and findings out, through the packet path."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sensor.config import Config
from sensor.errors import SinkError
from sensor.fastpath.path import PacketPath
from sensor.lake import Source, Written
from sensor.lakes import Lake, open_lake
from sensor.metrics import SensorMetrics
from sensor.records import RecordBuilder
from sensor.rules.check import Checker, CheckReport
from sensor.site import Site
from sensor.sources.pcap import CaptureReader

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int, int], None]  # (file, bytes read, file bytes, packets)


@dataclass
class CaptureReport:
    """What happened to one input file."""

    path: Path
    format: str
    packets: int
    damaged: list[str]
    skipped_bytes: int
    damaged_packets: dict[str, int] = field(default_factory=dict)  # by kind (sources.pcap.ReadStats)


@dataclass
class Analysis:
    """Result of one analysis run: the flow interval records and what was read."""

    table: pa.Table
    captures: list[CaptureReport]
    packets: int
    fact_packets: int
    non_ip: int
    seconds: float
    stream: dict[str, int] = field(default_factory=dict)  # stream-layer events (IP fragments, TCP overlaps)


class Analyzer:
    """Runs the packet path over one set of captures with one site."""

    def __init__(
        self,
        cfg: Config,
        *,
        site: Site | None = None,
        progress: ProgressFn | None = None,
        source_name: str = "pcap",
    ) -> None:
        self.cfg = cfg
        self.site = site or Site.build(cfg)
        self.records = RecordBuilder(self.site, source_name)
        self.progress = progress

    def packet_path(self) -> PacketPath:
        cat = self.site.catalogue
        return PacketPath(self.cfg, cat.server_ports("tcp"), cat.server_ports("udp"))

    def run(self, captures: Sequence[Path]) -> Analysis:
        started = time.monotonic()
        readers = [CaptureReader(p) for p in captures]  # open all first: a bad path fails before any work
        reports: list[CaptureReport] = []
        path = self.packet_path()
        chunks: list[pa.Table] = []
        exported = 0
        try:
            for reader in readers:
                for batch in reader:
                    path.feed(batch)
                    if path.native and path.table.nflows > CHUNK_FLOWS:
                        exported = self._export_ended(path, chunks, exported)
                    if self.progress:
                        st = reader.stats
                        self.progress(str(reader.path), st.bytes_read, st.file_bytes, path.packets)
                st = reader.stats
                reports.append(
                    CaptureReport(
                        reader.path,
                        reader.format,
                        st.packets,
                        list(st.damaged),
                        st.skipped_bytes,
                        dict(st.damaged_packets),
                    )
                )
            scanned = time.monotonic()
            path.close()
        except BaseException:
            path.abort()
            raise
        log.debug(
            "fast path %.2f s; facts finished %.2f s later (%d fact units); stream layer %s",
            scanned - started,
            time.monotonic() - scanned,
            path.fact_count,
            path.stream_counters(),
        )
        chunks.append(path.records(self.records.build, exported))
        out = chunks[0] if len(chunks) == 1 else _sorted_concat(chunks)
        return Analysis(
            out,
            reports,
            path.packets,
            path.fact_count,
            path.table.non_ip,
            time.monotonic() - started,
            path.stream_counters(),
        )

    def _export_ended(self, path: PacketPath, chunks: list[pa.Table], exported: int) -> int:
        """Memory follows the open flows, not the capture's length: end the flows a long capture has finished
        with (closed by FIN/RST, or idle), turn their records into a table and drop them from memory, as the
        live sensor does at each export. Returns the records still to export (0 after the compaction)."""
        table, now = path.table, path.last_ts
        ended = table.end_closed(now, CLOSE_GRACE_NS) + table.expire_idle(now)
        if not ended:
            return exported
        path.settle(now)  # the ended flows' stream prefixes are parsed and released
        chunks.append(self.records.build(table, path.facts, exported, table.nrecords))
        path.compact()
        return 0


def _sorted_concat(chunks: list[pa.Table]) -> pa.Table:
    """The chunks' records as one table in (ts, uid) order, built a column at a time with each source column let
    go once taken, so the run's records are held about once, not twice, at the end of a long run."""
    whole = pa.concat_tables(chunks)
    order = pc.sort_indices(whole, sort_keys=[("ts", "ascending"), ("uid", "ascending")])
    schema = whole.schema
    del whole
    columns = []
    for name in schema.names:
        parts = [piece for c in chunks for piece in c.column(name).chunks]
        columns.append(pa.chunked_array(parts, schema.field(name).type).take(order))
        chunks[:] = [c.drop_columns([name]) for c in chunks]
    return pa.Table.from_arrays(columns, schema=schema)


# An offline run (native facts) holding more flows than this ends and exports the flows it has finished with (see
# Analyzer._export_ended); below it everything stays in memory to the end. Closed TCP flows are ended
# CLOSE_GRACE_NS after their last packet (packet time).
CHUNK_FLOWS = 5_000
CLOSE_GRACE_NS = 5 * 1_000_000_000


# ---- one offline run end to end: captures -> flow records in the lake -> rules -> findings, with metrics ----
QUICK_DIGEST_BYTES = 16 << 20  # captures up to this size are digested before the analysis starts (larger: beside it)


@dataclass
class RunResult:
    """What one run produced (`replaced`: lake files of an earlier analysis of the same captures removed)."""

    analysis: Analysis
    written: list[Written]
    report: CheckReport | None
    source: Source | None = None
    replaced: int = 0


def analyze_to_lake(
    cfg: Config,
    captures: Sequence[Path],
    *,
    metrics: SensorMetrics | None = None,
    progress: ProgressFn | None = None,
    rules: bool = True,
    now: datetime | None = None,
    replace: bool = False,
) -> RunResult:
    """Analyse captures, write the flow records, evaluate the rules and write new findings; count it all.

    The records carry the captures' source (their content digest). Captures already in the lake are refused
    (SinkError, exit 2) unless `replace`: then the new records are written first, and the earlier records of
    that source (flows, and the findings that analysis wrote) are deleted after them.
    """
    lake = open_lake(cfg, metrics=metrics)
    try:
        # The digest reads every byte (~1 GB/s): beside the analysis, on a thread (hashlib releases the GIL). Up
        # to QUICK_DIGEST_BYTES it is waited for, so that a refused re-analysis costs nothing.
        with ThreadPoolExecutor(1, thread_name_prefix="source-digest") as pool:
            digest = pool.submit(Source.of_files, list(captures))
            if _total_size(captures) <= QUICK_DIGEST_BYTES:
                _refuse_unless(replace, lake, digest.result())
            site = Site.build(cfg)
            analysis = Analyzer(cfg, site=site, progress=progress).run(captures)
            source = digest.result()
        report = None
        if rules:
            checker = Checker(cfg, site=site)
            report = checker.check_table(analysis.table, lake, now=now or datetime.now(UTC), store=False)
        # one run per source at a time: its flows, and its findings not in the lake yet (`check` adds none twice);
        # with `replace` the earlier records of the source go
        written, fresh, findings_written, replaced = lake.store_analysis(
            cfg.sensor.id,
            source,
            analysis.table,
            report.evaluation.findings if report is not None else None,
            replace=replace,
        )
    finally:
        lake.close()
    if metrics is not None:
        metrics.capture_packets.labels("pcap").inc(analysis.packets)
        metrics.decode_errors.labels("non_ip").inc(analysis.non_ip)
        metrics.decode_errors.labels("skipped_bytes").inc(sum(c.skipped_bytes for c in analysis.captures))
        for rep in analysis.captures:
            for kind, n in rep.damaged_packets.items():
                metrics.decode_errors.labels(kind).inc(n)
        for event, n in analysis.stream.items():
            metrics.stream_events.labels(event).inc(n)
        metrics.observe_flows(analysis.table)
        metrics.last_flush.set(time.time())
    if report is not None and fresh is not None:
        report = dataclasses.replace(report, fresh=fresh, written=findings_written)
        if metrics is not None:
            metrics.observe_evaluation(report.evaluation.results, report.fresh, checker.broken_files, time.time())
    return RunResult(analysis, written, report, source, replaced)


def _total_size(paths: Sequence[Path]) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def _refuse_unless(replace: bool, lake: Lake, source: Source) -> None:
    """SinkError (exit 2) if an earlier analysis of the same captures is in the lake and not `replace`."""
    if not replace and lake.source_records(source):
        raise SinkError(
            f"{lake.where('flows')}: these capture(s) are in it already (source {source.id}); give --replace to "
            "replace their records"
        )
