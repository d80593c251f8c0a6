"""The `lync-sensor` command: subcommands, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sensor import __version__
from sensor.config import Config, load_config
from sensor.errors import SensorError
from sensor.progress import Progress

if TYPE_CHECKING:
    from sensor.exporter import MetricsServer
    from sensor.rules.check import CheckReport

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
log = logging.getLogger("lync-sensor")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="site config (TOML); default: $LYNC_SENSOR_CONFIG, else built-in defaults",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set sensor.interval=30 (repeatable)",
    )


def _dissector(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--dissector", choices=("native", "wireshark"), default=None, help=help)


def build_parser() -> argparse.ArgumentParser:
    """The lync-sensor argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="lync-sensor", description="Passive Lync Server 2013 protection sensor.")
    parser.add_argument("--version", action="version", version=f"lync-sensor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument(
        "--debug", action="store_true", help="on an unexpected error, print its traceback before the one-line message"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="analyse pcap/pcapng captures into the lake and print a summary")
    a.add_argument("captures", nargs="+", type=Path, metavar="CAPTURE")
    _common(a)
    a.add_argument("--lake", type=Path, default=None, help="lake directory (overrides sensor.lake)")
    a.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    a.add_argument("--json", action="store_true", help="print the summary as JSON")
    a.add_argument("--no-rules", action="store_true", help="do not evaluate the rules after the analysis")
    _dissector(
        a,
        "who parses the handshake facts: the native stream parsers (default) or Wireshark's dissectors "
        "through tshark, a second opinion at Wireshark's speed (overrides sensor.dissector)",
    )
    a.add_argument(
        "--replace",
        action="store_true",
        help="the captures are in the lake already: replace their records (else that is refused, exit 2)",
    )
    a.add_argument(
        "--serve",
        action="store_true",
        help="serve /metrics (metrics.listen) during and after the analysis, until SIGTERM",
    )

    k = sub.add_parser("check", help="evaluate the protection rules over the lake and store the findings")
    _common(k)
    k.add_argument("--lake", type=Path, default=None, help="lake directory (overrides sensor.lake)")
    k.add_argument("--rules", type=Path, default=None, help="rules directory (default: sensor.rules or queries/)")
    win = k.add_mutually_exclusive_group()
    win.add_argument("--since", default=None, metavar="DURATION", help="window ending now, e.g. 15m, 2h, 1d")
    win.add_argument("--from", dest="start", default=None, metavar="TIME", help="window start (ISO 8601, UTC)")
    k.add_argument("--to", dest="end", default=None, metavar="TIME", help="window end (ISO 8601, UTC; default now)")
    k.add_argument("--json", action="store_true", help="print the findings as JSON lines")
    k.add_argument(
        "--sensor",
        dest="sensors",
        action="append",
        default=[],
        metavar="ID",
        help="only the flow records of this sensor (repeatable; default: every sensor in the lake)",
    )

    r = sub.add_parser("rules", help="list or lint the rule files")
    r.add_argument("action", choices=("list", "lint"))
    _common(r)
    r.add_argument("--rules", type=Path, default=None, help="rules directory (default: sensor.rules or queries/)")

    lv = sub.add_parser("run", help="the long-running sensor: capture on an interface, lake, rules, /metrics")
    _common(lv)
    lv.add_argument("--interface", default=None, help="capture interface (overrides live.interface)")
    lv.add_argument("--bpf", default=None, help="capture filter (overrides live.bpf)")
    lv.add_argument("--lake", type=Path, default=None, help="lake directory (overrides sensor.lake)")
    _dissector(lv, "native stream parsers (default) or Wireshark's dissectors (overrides sensor.dissector)")
    lv.add_argument(
        "--spool-only",
        action="store_true",
        help="no capture of our own: read the ring files another dumpcap writes into live.spool",
    )

    st = sub.add_parser("status", help="health of the running sensor (capture, packets, drops, flush, rules)")
    _common(st)

    c = sub.add_parser("config", help="check or show the effective configuration")
    c.add_argument("action", choices=("check", "show"))
    _common(c)

    lk = sub.add_parser("lake", help="a DuckLake fleet lake: maintain it (retention, compaction, sizes) or import")
    lk.add_argument("action", choices=("maintain", "import"))
    lk.add_argument("parquet_lake", nargs="?", type=Path, default=None, help="import: the Parquet lake directory")
    _common(lk)
    lk.add_argument(
        "--retention-days",
        type=int,
        default=None,
        help="maintain: delete records older than this many days (default live.retention_days; 0 keeps all)",
    )
    lk.add_argument(
        "--keep-snapshots",
        default="1d",
        metavar="DURATION",
        help="maintain: keep this much time travel, e.g. 1d or 0s; older snapshots and their files go (default 1d)",
    )

    z = sub.add_parser("ingest-zeek", help="read Zeek logs (conn, ssl, x509, sip, http, lync) into the lake")
    z.add_argument("directories", nargs="+", type=Path, metavar="DIR")
    _common(z)
    z.add_argument("--lake", type=Path, default=None, help="lake directory (overrides sensor.lake)")
    z.add_argument("--follow", action="store_true", help="keep following the current logs until SIGTERM/SIGINT")
    z.add_argument(
        "--state",
        type=Path,
        default=None,
        help="state file (where each log was left); default with --follow: <lake>/_state/zeek-<sensor id>.json",
    )
    z.add_argument("--no-rules", action="store_true", help="do not evaluate the rules")
    z.add_argument("--serve", action="store_true", help="serve /metrics (metrics.listen) while running")
    t = sub.add_parser("zeek-topology", help="write the site topology as a TSV for the Zeek package")
    _common(t)
    t.add_argument("--out", type=Path, default=None, help="output file (default: stdout)")
    return parser


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and os.environ.get("LYNC_SENSOR_CONFIG"):
        path = Path(os.environ["LYNC_SENSOR_CONFIG"])
    overrides = list(args.overrides)
    if getattr(args, "lake", None) is not None:
        overrides.append(f"sensor.lake={json.dumps(str(args.lake))}")
    if getattr(args, "dissector", None) is not None:
        overrides.append(f"sensor.dissector={json.dumps(args.dissector)}")
    return load_config(path, env=dict(os.environ), overrides=overrides)


def cmd_analyze(args: argparse.Namespace) -> int:
    """`analyze`: captures into the lake, the rules over them, then a summary; returns the exit code."""
    # heavy (pyarrow, DuckDB, numba, prometheus_client): imported when the subcommand runs, so `--help` stays fast
    from sensor.analyze import analyze_to_lake
    from sensor.exporter import MetricsServer
    from sensor.metrics import SensorMetrics, rule_ids
    from sensor.rules.check import render as render_findings
    from sensor.summary import analysis_json, analysis_text

    cfg = _load(args)
    progress = None if (args.no_progress or not cfg.sensor.progress) else Progress()
    metrics = SensorMetrics(sensor_id=cfg.sensor.id, site=cfg.sensor.site, rule_ids=rule_ids(cfg.sensor.rules))
    server = None
    if args.serve:
        server = MetricsServer(metrics.registry, cfg.metrics).start()
        print(f"Serving {server.url}", file=sys.stderr, flush=True)
    run = analyze_to_lake(
        cfg, args.captures, metrics=metrics, progress=progress, rules=not args.no_rules, replace=args.replace
    )
    for rep in run.analysis.captures:
        for reason in rep.damaged:
            print(f"warning: {rep.path}: {reason} ({rep.packets:,} packets read in all)", file=sys.stderr)
    code = _verdict(run.report)
    if args.json:
        print(json.dumps(analysis_json(run), default=str), flush=True)
    else:
        lake = cfg.sensor.lake if cfg.lake.backend == "parquet" else f"ducklake {cfg.lake.catalog}"
        print(analysis_text(run, lake=lake, dissector=cfg.sensor.dissector))
        if run.report is not None:
            print(render_findings(run.report, problems=False))
    if server is not None:
        _hold(server)
    return code


def _hold(server: MetricsServer) -> None:
    """Keep serving /metrics until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"Analysis done; serving {server.url} until SIGTERM.", file=sys.stderr, flush=True)
    stop.wait()
    server.stop()


def _now() -> datetime:
    return datetime.now(UTC)


def _verdict(report: CheckReport | None) -> int:
    """2 when a rule could not be loaded or evaluated (the result is incomplete, whatever the other rules
    found); else 1 when a rule found a violation; else 0. Rule problems go to stderr."""
    if report is None:
        return EXIT_OK
    # heavy, and loaded already by whoever made the report: imported here so `--help` does not pay for it
    from sensor.rules.check import problem_lines

    for line in problem_lines(report):
        print(line, file=sys.stderr)
    if report.evaluation.problems:
        return EXIT_ERROR
    return EXIT_FINDINGS if report.evaluation.violations else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """`check`: evaluate the rules over a window of the lake and store the findings; returns the exit code."""
    # heavy (pyarrow, DuckDB, numba, prometheus_client): imported when the subcommand runs, so `--help` stays fast
    from sensor.lakes import open_lake
    from sensor.rules.check import Checker, parse_window, render

    cfg = _load(args)
    now = _now()
    window = parse_window(args.since, args.start, args.end, now)
    lake = open_lake(cfg)
    try:
        if not lake.has_flows():
            raise SensorError(f"{lake.where('flows')}: no flows table (run `lync-sensor analyze` or the sensor first)")
        report = Checker(cfg, rules=args.rules).check_lake(lake, window, now=now, sensors=args.sensors)
    finally:
        lake.close()
    if args.json:
        for row in report.evaluation.findings.to_pylist():
            print(json.dumps(row, default=str))
    else:
        print(render(report, problems=False))
        if report.written:
            print(f"Wrote {report.fresh.num_rows:,} new findings to {lake.where('findings')}.")
    return _verdict(report)


def cmd_rules(args: argparse.Namespace) -> int:
    """`rules list|lint`: print the loaded rules or their problems; returns the exit code."""
    # heavy (pyarrow, DuckDB, numba, prometheus_client): imported when the subcommand runs, so `--help` stays fast
    from sensor.rules.check import Checker

    cfg = _load(args)
    checker = Checker(cfg, rules=args.rules)
    if args.action == "list":
        for rule in checker.rules:
            print(f"{rule.id:<5} {rule.severity:<9} {rule.area:<10} {rule.title}  ({rule.path.name})")
        for p in checker.load_problems:
            print(f"error: {p}", file=sys.stderr)
        return EXIT_ERROR if checker.load_problems else EXIT_OK
    problems = checker.lint()
    for p in problems:
        print(str(p), file=sys.stderr)
    print(f"{len(checker.rules)} rules loaded from {checker.rules_path}, {len(problems)} problem(s)")
    return EXIT_ERROR if problems else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """`run`: the long-running sensor with its /metrics server until a signal stops it; returns the exit code."""
    # heavy (pyarrow, DuckDB, numba, prometheus_client): imported when the subcommand runs, so `--help` stays fast
    from sensor.exporter import MetricsServer
    from sensor.live import LiveSensor
    from sensor.metrics import SensorMetrics, rule_ids

    if args.interface is not None:
        args.overrides.append(f"live.interface={json.dumps(args.interface)}")
    if args.bpf is not None:
        args.overrides.append(f"live.bpf={json.dumps(args.bpf)}")
    cfg = _load(args)
    metrics = SensorMetrics(sensor_id=cfg.sensor.id, site=cfg.sensor.site, rule_ids=rule_ids(cfg.sensor.rules))
    server = MetricsServer(metrics.registry, cfg.metrics).start()
    sensor = LiveSensor(cfg, metrics=metrics, reload=lambda: _load(args), capture=not args.spool_only)
    signal.signal(signal.SIGTERM, lambda *_: sensor.request_stop())
    signal.signal(signal.SIGINT, lambda *_: sensor.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: sensor.request_reload())
    print(
        f"lync-sensor run: capturing on {cfg.live.interface or '(spool only)'}, lake {cfg.sensor.lake}, "
        f"metrics {server.url}",
        file=sys.stderr,
        flush=True,
    )
    try:
        sensor.run()
    finally:
        server.stop()
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """`status`: print the running sensor's status file as JSON; exit 0 if healthy, else 1."""
    # heavy (pyarrow, through the lake's layout): imported when the subcommand runs, so `--help` stays fast
    from sensor.live_status import health, read_status

    cfg = _load(args)
    st = read_status(cfg)
    age, healthy = health(cfg, st, time.time())
    print(json.dumps({**st.__dict__, "age_seconds": round(age, 1), "healthy": healthy}, indent=2))
    return EXIT_OK if healthy else EXIT_FINDINGS


def cmd_zeek(args: argparse.Namespace) -> int:
    """`ingest-zeek` and `zeek-topology`, run by sensor.ingest_zeek; returns the exit code."""
    # heavy (pyarrow, DuckDB, numba, prometheus_client): imported when the subcommand runs, so `--help` stays fast
    from sensor.ingest_zeek import run_command

    return run_command(args, _load(args))


def cmd_lake(args: argparse.Namespace) -> int:
    """`lake maintain|import` on a DuckLake; returns the exit code."""
    # heavy (pyarrow, DuckDB, numba, prometheus_client): imported when the subcommand runs, so `--help` stays fast
    from sensor.lakes import open_lake
    from sensor.lakes.ducklake import DuckLake
    from sensor.lakes.maintain import import_parquet, maintain
    from sensor.rules.check import parse_since

    cfg = _load(args)
    lake = open_lake(cfg)
    if not isinstance(lake, DuckLake):
        raise SensorError('lake maintain/import work on a DuckLake: set [lake] backend = "ducklake" and its catalog')
    if args.action == "import":
        if args.parquet_lake is None:
            raise SensorError("lake import: name the Parquet lake directory to import")
        done = import_parquet(lake, args.parquet_lake)
        print(
            f"Imported {done.get('flows', 0):,} flow records and {done.get('findings', 0):,} findings from "
            f"{args.parquet_lake} into {lake.where('')}."
        )
        return EXIT_OK
    if args.parquet_lake is not None:
        raise SensorError("lake maintain takes no directory")
    now = _now()
    keep = now - parse_since(args.keep_snapshots, now).start  # type: ignore[operator]
    days = cfg.live.retention_days if args.retention_days is None else args.retention_days
    if days < 0:
        raise SensorError(f"--retention-days {days}: give 0 (keep all) or more")
    print(maintain(lake, retention_days=days, keep_snapshots=keep, now=now).render(days))
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    """`config check|show`: load and check the configuration, or print it as JSON; returns the exit code."""
    # the exporter (prometheus_client, bcrypt, yaml) would double `lync-sensor --help`'s start-up: imported here
    from sensor.exporter import load_web_config

    cfg = _load(args)
    if cfg.metrics.web_config_file:  # checked here too, not only when --serve starts the exporter
        load_web_config(cfg.metrics.web_config_file)
    if args.action == "show":
        print(json.dumps(cfg.to_dict(), indent=2, default=str))
    else:
        print(f"config ok: {cfg.source or 'built-in defaults'}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the lync-sensor command line; returns the exit code."""
    # Arrow's default allocator (mimalloc) keeps the pages of freed tables; the sensor frees large tables after
    # every export and wants them back (peak RSS of a 1.5 M-packet analyze: 519 -> 453 MiB, same speed). Read
    # when pyarrow first allocates, so set before; an operator's own setting wins.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    handlers = {
        "analyze": cmd_analyze,
        "check": cmd_check,
        "rules": cmd_rules,
        "config": cmd_config,
        "run": cmd_run,
        "status": cmd_status,
        "ingest-zeek": cmd_zeek,
        "zeek-topology": cmd_zeek,
        "lake": cmd_lake,
    }
    try:
        return handlers[args.command](args)
    except SensorError as exc:
        print(f"lync-sensor: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lync-sensor: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lync-sensor ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a defect, not a result: exit 2, never Python's 1 (which means "violations found")
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (run with --debug for the traceback)"
        print(f"lync-sensor: internal error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
