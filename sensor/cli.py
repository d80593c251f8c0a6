"""The `lync-sensor` command: subcommands, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sensor import __version__
from sensor.config import Config, load_config
from sensor.errors import SensorError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lync-sensor", description="Passive Lync Server 2013 protection sensor.")
    parser.add_argument("--version", action="version", version=f"lync-sensor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="analyse pcap/pcapng captures into the lake and print a summary")
    a.add_argument("captures", nargs="+", type=Path, metavar="CAPTURE")
    _common(a)
    a.add_argument("--lake", type=Path, default=None, help="lake directory (overrides sensor.lake)")
    a.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    a.add_argument("--json", action="store_true", help="print the summary as JSON")

    c = sub.add_parser("config", help="check or show the effective configuration")
    c.add_argument("action", choices=("check", "show"))
    _common(c)
    return parser


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and os.environ.get("LYNC_SENSOR_CONFIG"):
        path = Path(os.environ["LYNC_SENSOR_CONFIG"])
    overrides = list(args.overrides)
    if getattr(args, "lake", None) is not None:
        overrides.append(f"sensor.lake={json.dumps(str(args.lake))}")
    return load_config(path, env=dict(os.environ), overrides=overrides)


def cmd_analyze(args: argparse.Namespace) -> int:
    from sensor.analyze import Analyzer
    from sensor.lake import LakeWriter
    from sensor.progress import Progress
    from sensor.summary import render, summarize

    cfg = _load(args)
    progress = None if (args.no_progress or not cfg.sensor.progress) else Progress()
    result = Analyzer(cfg, progress=progress).run(args.captures)
    lake = Path(cfg.sensor.lake)
    written = LakeWriter(lake, cfg.sensor.id).write("flows", result.table)
    for rep in result.captures:
        for reason in rep.damaged:
            print(
                f"warning: {rep.path}: {reason}; {rep.packets:,} packets read before it, "
                f"{rep.skipped_bytes:,} bytes skipped",
                file=sys.stderr,
            )
    if args.json:
        print(
            json.dumps(
                {
                    "packets": result.packets,
                    "flows": result.table.num_rows,
                    "files": [str(w.path) for w in written],
                    "summary": summarize(result.table),
                },
                default=str,
            )
        )
        return EXIT_OK
    rate = result.packets / result.seconds if result.seconds else 0.0
    print(
        f"Analysed {len(result.captures)} capture(s): {result.packets:,} packets in {result.seconds:.1f} s "
        f"({rate:,.0f} packets/s), {result.fact_packets:,} handed to Wireshark's dissectors."
    )
    print(f"Wrote {result.table.num_rows:,} flow records to {lake}/flows in {len(written)} file(s).")
    print(render(result.table))
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.action == "show":
        print(json.dumps(cfg.to_dict(), indent=2, default=str))
    else:
        print(f"config ok: {cfg.source or 'built-in defaults'}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    handlers = {"analyze": cmd_analyze, "config": cmd_config}
    try:
        return handlers[args.command](args)
    except SensorError as exc:
        print(f"lync-sensor: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lync-sensor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
