"""One offline run end to end: captures -> flow records in the lake -> rules -> findings, with metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sensor.analyze import Analysis, Analyzer, ProgressFn
from sensor.config import Config
from sensor.lake import LakeWriter, Written
from sensor.metrics import SensorMetrics
from sensor.rules.check import Checker, CheckReport


@dataclass
class RunResult:
    """What one run produced."""

    analysis: Analysis
    written: list[Written]
    report: CheckReport | None


def analyze_to_lake(
    cfg: Config,
    captures: Sequence[Path],
    *,
    metrics: SensorMetrics | None = None,
    progress: ProgressFn | None = None,
    rules: bool = True,
    now: datetime | None = None,
) -> RunResult:
    """Analyse captures, write the flow records, evaluate the rules and write new findings; count it all."""
    analysis = Analyzer(cfg, progress=progress).run(captures)
    lake = Path(cfg.sensor.lake)
    written = LakeWriter(lake, cfg.sensor.id).write("flows", analysis.table)
    if metrics is not None:
        metrics.capture_packets.labels("pcap").inc(analysis.packets)
        metrics.decode_errors.labels("non_ip").inc(analysis.non_ip)
        metrics.decode_errors.labels("skipped_bytes").inc(sum(c.skipped_bytes for c in analysis.captures))
        metrics.observe_flows(analysis.table)
        metrics.last_flush.set(time.time())
    report = None
    if rules:
        checker = Checker(cfg)
        report = checker.check_table(analysis.table, lake, now=now or datetime.now(UTC))
        if metrics is not None:
            metrics.observe_evaluation(report.evaluation.results, report.fresh, checker.broken_files, time.time())
    return RunResult(analysis, written, report)
