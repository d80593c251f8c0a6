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
from sensor.lake import LakeWriter, Source, Written, claim_source, files_of_source, remove_files
from sensor.metrics import SensorMetrics
from sensor.rules.check import Checker, CheckReport
from sensor.rules.engine import new_findings

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
    lake = Path(cfg.sensor.lake)
    # The digest reads every byte (~1 GB/s): beside the analysis, on a thread (hashlib releases the GIL). Up to
    # QUICK_DIGEST_BYTES it is waited for, so that a refused re-analysis costs nothing.
    with ThreadPoolExecutor(1, thread_name_prefix="source-digest") as pool:
        digest = pool.submit(Source.of_files, list(captures))
        if _total_size(captures) <= QUICK_DIGEST_BYTES:
            _refuse_unless(replace, lake, digest.result())
        analysis = Analyzer(cfg, progress=progress).run(captures)
        source = digest.result()
    with claim_source(lake, source):  # one run per source at a time; the lake exists from here on
        old_flows, old_findings = _refuse_unless(replace, lake, source)
        writer = LakeWriter(lake, cfg.sensor.id, source=source)
        written = writer.write("flows", analysis.table)
        new = {w.path for w in written}
        replaced = remove_files([p for p in old_flows if p not in new])
        if metrics is not None:
            metrics.capture_packets.labels("pcap").inc(analysis.packets)
            metrics.decode_errors.labels("non_ip").inc(analysis.non_ip)
            metrics.decode_errors.labels("skipped_bytes").inc(sum(c.skipped_bytes for c in analysis.captures))
            for event, n in analysis.stream.items():
                metrics.stream_events.labels(event).inc(n)
            metrics.observe_flows(analysis.table)
            metrics.last_flush.set(time.time())
        report = None
        if rules:
            # this source's findings go with its flows; findings other runs wrote stay (`check` adds no duplicates)
            replaced += remove_files(old_findings)
            checker = Checker(cfg)
            report = checker.check_table(analysis.table, lake, now=now or datetime.now(UTC), store=False)
            fresh = new_findings(lake, report.evaluation.findings)
            report = dataclasses.replace(report, fresh=fresh, written=writer.write("findings", fresh))
            if metrics is not None:
                metrics.observe_evaluation(report.evaluation.results, report.fresh, checker.broken_files, time.time())
    return RunResult(analysis, written, report, source, replaced)


def _total_size(paths: Sequence[Path]) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def _refuse_unless(replace: bool, lake: Path, source: Source) -> tuple[list[Path], list[Path]]:
    """The lake files of an earlier analysis of the same captures; SinkError (exit 2) if any and not `replace`."""
    flows = files_of_source(lake, "flows", source.id)
    findings = files_of_source(lake, "findings", source.id)
    if (flows or findings) and not replace:
        raise SinkError(
            f"lake {lake}: these capture(s) are in it already (source {source.id}, {len(flows)} flow "
            "file(s)); give --replace to replace their records"
        )
    return flows, findings
