"""`ingest-zeek`: the driver that reads Zeek logs into the lake (one-shot or following), its state file, and
the command the CLI runs (`ingest-zeek`, `zeek-topology`).

conn.log gives the flow (one record per Zeek connection, interval_seq 0: Zeek logs a connection when it
ends, so a long connection appears then, unlike the pcap front end's per-interval records); ssl.log, x509.log,
sip.log, http.log and the package's lync.log (deploy/zeek/) add facts joined by Zeek's uid
(sensor/sources/zeek/). What Zeek cannot see (RTP vs SRTP, SDP, the ClientHello's offered versions, STUN)
stays null: the rules read null as "not visible".
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from sensor.atomic import atomic_write
from sensor.config import Config
from sensor.errors import SinkError, SourceError
from sensor.exporter import MetricsServer
from sensor.lakes import open_lake
from sensor.metrics import SensorMetrics, rule_ids
from sensor.rules.check import Checker, CheckReport
from sensor.rules.check import problem_lines as rule_problem_lines
from sensor.rules.check import render as render_findings
from sensor.schema import FLOW_SCHEMA
from sensor.site import Site
from sensor.sources.zeek.assembler import FlowAssembler, load_catalogue
from sensor.sources.zeek.base import LOGS, MAX_FILE_BYTES, MAX_LINE_BYTES, PROBLEMS, Position
from sensor.sources.zeek.fields import UNKNOWN_CIPHER, to_table
from sensor.sources.zeek.logs import LogStream
from sensor.sources.zeek.topology_file import write_topology
from sensor.summary import render
from sensor.topology import Topology


@dataclass
class State:
    """Where each log was left (`Position`) and which rotated files were read completely, per dir|log."""

    positions: dict[str, Position] = field(default_factory=dict)
    done: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> State:
        if path is None or not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            positions = {k: Position.from_dict(v) for k, v in data.get("positions", {}).items()}
            done = {k: [str(x) for x in v] for k, v in data.get("done", {}).items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"state file {path}: unreadable ({exc}); move it away to start from scratch") from exc
        return cls(positions, done)

    def save(self, path: Path) -> None:
        """Write to a temporary name in the same directory, fsync, rename: a crash leaves the old state."""
        data = {
            "version": 1,
            "positions": {k: p.to_dict() for k, p in sorted(self.positions.items())},
            "done": dict(sorted(self.done.items())),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(data, indent=1))
        except OSError as exc:
            raise SinkError(f"state file {path}: cannot write: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------------- ingesting


@dataclass
class IngestResult:
    """What one `ingest-zeek` run did."""

    table: pa.Table  # the flow records written by this run (the latest `keep_rows` in follow mode)
    written: list[Any]
    report: CheckReport | None
    problems: Counter[str]
    records_by_log: Counter[str]
    dropped_no_ts: int
    violations_seen: bool
    seconds: float


class ZeekIngest:
    """Reads the Zeek logs of some directories into the lake: flow records, rules, findings, metrics.

    One-shot (default): every log up to its end, in time order, then the rules over everything written.
    `follow`: keeps reading the current logs, flushing every `sensor.interval` seconds (records, rules,
    metrics, then the state file), until `stop` is set; then a final flush. `ts_substitute` is for tests only.
    """

    def __init__(
        self,
        cfg: Config,
        directories: Sequence[Path],
        *,
        follow: bool = False,
        state_path: Path | None = None,
        rules: bool = True,
        metrics: SensorMetrics | None = None,
        ts_substitute: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.5,
        settle_s: float = 2.0,
        chunk_flows: int = 100_000,
        keep_rows: int = 1_000_000,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        seen: dict[Path, None] = {}
        for d in directories:
            if not d.is_dir():
                raise SourceError(f"{d}: not a directory of Zeek logs")
            seen[d.resolve()] = None
        self.cfg = cfg
        self.directories = list(seen)
        self.follow = follow
        self.state_path = state_path
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self.poll_s = poll_s
        self.chunk_flows = chunk_flows
        self.keep_rows = keep_rows
        self.problems: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()
        self.state = State.load(state_path)
        self.topology = Topology.from_config(cfg)
        self.catalogue = load_catalogue(cfg)
        self.assembler = FlowAssembler(cfg, topology=self.topology, catalogue=self.catalogue, problems=self.problems)
        self.streams: dict[str, LogStream] = {}
        for d in self.directories:
            for name in LOGS:
                key = f"{d}|{name}"
                self.streams[key] = LogStream(
                    d,
                    name,
                    follow=follow,
                    problems=self.problems,
                    position=self.state.positions.get(key),
                    done=self.state.done.get(key, ()),
                    ts_substitute=ts_substitute,
                    settle_s=settle_s,
                    max_line_bytes=max_line_bytes,
                    max_file_bytes=max_file_bytes,
                )
        if not follow and not any(any(d.glob(f"{n}*.log*")) for d in self.directories for n in LOGS):
            names = ", ".join(LOGS)
            raise SourceError(f"no Zeek logs ({names}) in {', '.join(map(str, self.directories))}")
        self._checker: Checker | None = None
        self._tables: list[pa.Table] = []
        self._written: list[Any] = []
        self._violations = False
        if metrics is not None:
            for kind in (*PROBLEMS, UNKNOWN_CIPHER):
                metrics.decode_errors.labels(kind)

    # ---- running ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> IngestResult:
        started = time.monotonic()
        stop = stop or threading.Event()
        try:
            if self.follow:
                self._follow(stop)
            else:
                self._one_shot()
        finally:
            for s in self.streams.values():
                s.close()
        report = self._final_report()
        return IngestResult(
            table=self._kept(),
            written=self._written,
            report=report,
            problems=self.problems,
            records_by_log=self.assembler.records_by_log,
            dropped_no_ts=self.assembler.dropped_no_ts,
            violations_seen=self._violations or bool(report is not None and report.evaluation.violations),
            seconds=time.monotonic() - started,
        )

    def _one_shot(self) -> None:
        """Every log to its end, interleaved by time (rounds of `step` seconds), so that a connection's conn.log
        and ssl.log lines are joined in the same flush even when many flows are flushed in chunks."""
        step = float(max(self.cfg.sensor.interval, 60) * 10)
        streams = list(self.streams.values())
        for s in streams:
            self.assembler.add(s.read(float("-inf")))  # hold each log's first record: where time starts
        while True:
            heads = [s.held_ts for s in streams if not s.exhausted and s.held_ts is not None]
            if not heads:
                break
            horizon = min(heads) + step
            for s in streams:
                self.assembler.add(s.read(horizon))
            if self.assembler.pending() >= self.chunk_flows:
                self._flush(evaluate=False)
        for s in streams:
            self.assembler.add(s.read(None))
        self._flush(evaluate=False)
        self._save_state()

    def _follow(self, stop: threading.Event) -> None:
        interval = float(self.cfg.sensor.interval)
        last = self.clock()
        while not stop.is_set():
            for s in self.streams.values():
                self.assembler.add(s.read(None))
            if self.clock() - last >= interval:
                self._flush(evaluate=self.rules)
                self._save_state()
                last = self.clock()
            stop.wait(self.poll_s)
        for s in self.streams.values():  # what arrived before the stop
            self.assembler.add(s.read(None))
        self._flush(evaluate=self.rules)
        self._save_state()

    def poll(self) -> int:
        """Read what is available now without flushing (tests drive follow mode step by step); records read."""
        before = sum(self.assembler.records_by_log.values())
        for s in self.streams.values():
            self.assembler.add(s.read(None))
        return sum(self.assembler.records_by_log.values()) - before

    def flush(self) -> pa.Table:
        """Write what was read, evaluate the rules over it (follow mode), save the state; the records written."""
        table = self._flush(evaluate=self.rules and self.follow)
        self._save_state()
        return table

    def close(self) -> None:
        for s in self.streams.values():
            s.close()

    # ---- flushing --------------------------------------------------------------------------------------------
    def _flush(self, *, evaluate: bool) -> pa.Table:
        rows = self.assembler.take()
        table = to_table(rows, self.problems)
        if table.num_rows:
            lake = open_lake(self.cfg, metrics=self.metrics)
            try:
                self._written += lake.write("flows", table, sensor_id=self.cfg.sensor.id)
            finally:
                lake.close()
            self._keep(table)
        m = self.metrics
        if m is not None:
            m.capture_packets.labels("zeek").inc(self.assembler.conn_packets)
            self.assembler.conn_packets = 0
            m.observe_flows(table)
            m.last_flush.set(time.time())
        self._count_problems()
        if evaluate and table.num_rows:
            report = self._check(table)
            self._violations = self._violations or bool(report.evaluation.violations)
        return table

    def _count_problems(self) -> None:
        if self.metrics is None:
            return
        for kind, n in self.problems.items():
            delta = n - self._reported[kind]
            if delta > 0:
                self.metrics.decode_errors.labels(kind).inc(delta)
                self._reported[kind] = n

    def _check(self, table: pa.Table) -> CheckReport:
        if self._checker is None:
            self._checker = Checker(self.cfg, site=Site(self.cfg, self.topology, self.catalogue))
        lake = open_lake(self.cfg, metrics=self.metrics)
        try:
            report: CheckReport = self._checker.check_table(table, lake, now=datetime.now(UTC))
        finally:
            lake.close()
        if self.metrics is not None:
            self.metrics.observe_evaluation(
                report.evaluation.results,
                report.fresh,
                self._checker.broken_files,
                time.time(),
            )
        return report

    def _keep(self, table: pa.Table) -> None:
        self._tables.append(table)
        if self.follow:
            while len(self._tables) > 1 and sum(t.num_rows for t in self._tables) > self.keep_rows:
                self._tables.pop(0)

    def _kept(self) -> pa.Table:
        return pa.concat_tables(self._tables) if self._tables else FLOW_SCHEMA.empty_table()

    def _final_report(self) -> CheckReport | None:
        if not self.rules:
            return None
        return self._check(self._kept())

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        for key, s in self.streams.items():
            pos = s.position()
            if pos is not None:
                self.state.positions[key] = pos
            else:
                self.state.positions.pop(key, None)
            if s.done:
                self.state.done[key] = list(s.done)
        self.state.save(self.state_path)


_PROBLEM_TEXT = {
    "zeek_malformed_line": "malformed line(s) skipped",
    "zeek_header_change": "header change(s) mid-file (schema switched)",
    "zeek_truncated_gzip": "truncated gzip file(s) (lines before the damage kept)",
    "zeek_rotated_while_reading": "log rotation(s) while reading (old file read to its end)",
    "zeek_unparseable_ts": "line(s) with an unparseable ts (facts kept, joined by uid)",
    "zeek_rotated_file_lost": "file(s) being read at the last stop no longer found",
    "zeek_truncated_file": "file(s) truncated in place (read again from the start)",
    "zeek_bad_value": "value(s) not of their field's type (left unset, the rest of the line kept)",
    "zeek_line_too_long": "line(s) longer than the line cap skipped",
    "zeek_file_size_cap": "file(s) cut at the decompressed size cap",
    UNKNOWN_CIPHER: "cipher name(s) not in cipher_suites.csv (tls_cipher left null)",
}


def problem_lines(result: IngestResult) -> list[str]:
    """The problems of an ingest as lines for the user, one per kind with its count."""
    out = [f"{n:,} {_PROBLEM_TEXT.get(k, k)}" for k, n in sorted(result.problems.items()) if n]
    if result.dropped_no_ts:
        out.append(f"{result.dropped_no_ts:,} flow(s) without any usable ts dropped")
    return out


def run_command(args: argparse.Namespace, cfg: Config) -> int:
    """The `ingest-zeek` and `zeek-topology` subcommands (exit 0/1/2 as `analyze`)."""
    if args.command == "zeek-topology":
        write_topology(cfg, args.out)
        if args.out is not None:
            print(f"Wrote the topology for Zeek to {args.out}", file=sys.stderr)
        return 0
    return _ingest(args, cfg)


def _ingest(args: argparse.Namespace, cfg: Config) -> int:
    lake = Path(cfg.sensor.lake)
    state = args.state
    if state is None and args.follow:
        state = lake / "_state" / f"zeek-{cfg.sensor.id}.json"
    metrics = SensorMetrics(sensor_id=cfg.sensor.id, site=cfg.sensor.site, rule_ids=rule_ids(cfg.sensor.rules))
    server = None
    if args.serve:
        server = MetricsServer(metrics.registry, cfg.metrics).start()
        print(f"Serving {server.url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    if args.follow:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(f"Following Zeek logs in {', '.join(map(str, args.directories))}; state {state}", file=sys.stderr)
    try:
        ingest = ZeekIngest(cfg, args.directories, follow=args.follow, state_path=state, rules=not args.no_rules,
                            metrics=metrics)  # fmt: skip
        result = ingest.run(stop)
    finally:
        if server is not None:
            server.stop()
    problems = problem_lines(result)
    if problems:
        print("warning: zeek logs: " + "; ".join(problems), file=sys.stderr)
    by_log = ", ".join(f"{k} {v:,}" for k, v in sorted(result.records_by_log.items())) or "none"
    n = len(ingest.directories)
    print(
        f"Read Zeek logs from {n} {'directory' if n == 1 else 'directories'}: "
        f"{sum(result.records_by_log.values()):,} lines ({by_log}) in {result.seconds:.1f} s."
    )
    total = sum(w.rows for w in result.written)
    print(f"Wrote {total:,} flow records to {lake}/flows in {len(result.written)} file(s).")
    print(render(result.table))
    code = 0
    if result.report is not None:
        print(render_findings(result.report, problems=False))
        for line in rule_problem_lines(result.report):
            print(line, file=sys.stderr)
        # as analyze: an incomplete result (a rule could not run) is exit 2, whatever the other rules found
        if result.report.evaluation.problems:
            code = 2
        elif result.violations_seen:
            code = 1
    return code
