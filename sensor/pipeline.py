"""One offline run end to end: captures -> flow records in the lake -> rules -> findings, with metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sensor.analyze import Analysis, Analyzer, ProgressFn
from sensor.config import Config
from sensor.errors import SinkError
from sensor.lake import Source, Written
from sensor.lakes import Lake, open_lake
from sensor.metrics import SensorMetrics
from sensor.rules.check import Checker, CheckReport

QUICK_DIGEST_BYTES = 256 << 20  # captures up to this size are digested before the analysis starts


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
            analysis = Analyzer(cfg, progress=progress).run(captures)
            source = digest.result()
        report = None
        if rules:
            checker = Checker(cfg)
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
