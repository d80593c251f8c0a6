"""Command line: write the labelled scenario, its labels as JSON, or a benchmark capture."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sensor.synth.bulk import write_bench_capture
from sensor.synth.netcond import all_cases, write_case
from sensor.synth.pcapio import atomic_output
from sensor.synth.scenario import build_labelled, write


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sensor.synth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    labelled = sub.add_parser("labelled", help="write the labelled Lync scenario capture")
    labelled.add_argument("out")
    labelled.add_argument("--format", choices=("pcap", "pcapng"), default="pcap")
    labelled.add_argument("--link", choices=("ethernet", "vlan", "sll"), default="ethernet")
    labelled.add_argument("--seed", type=int, default=7)
    labels = sub.add_parser("labels", help="write the labelled scenario's flow labels as JSON")
    labels.add_argument("out")
    labels.add_argument("--seed", type=int, default=7)
    bulk = sub.add_parser("bulk", help="write a benchmark capture of the Lync traffic mix")
    bulk.add_argument("out")
    bulk.add_argument("--packets", type=int, required=True)
    bulk.add_argument("--seed", type=int, default=1)
    netcond = sub.add_parser("netcond", help="write the network-condition cases and their expectations (JSON)")
    netcond.add_argument("outdir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m sensor.synth`: parse argv, write what the subcommand asks for; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "labelled":
        scenario = build_labelled(args.seed)
        write(scenario, args.out, args.format, args.link)
        print(f"{args.out}: {len(scenario.packets)} packets, {len(scenario.labels)} labelled flows")
    elif args.command == "labels":
        labels = [dataclasses.asdict(label) for label in build_labelled(args.seed).labels]
        with atomic_output(args.out) as fh:
            fh.write((json.dumps(labels, indent=2) + "\n").encode())
        print(f"{args.out}: {len(labels)} labels")
    elif args.command == "netcond":
        out = Path(args.outdir)
        out.mkdir(parents=True, exist_ok=True)
        cases = all_cases()
        expect = []
        for case in cases:
            write_case(case, out)
            flows = [dataclasses.asdict(f) for f in case.flows]
            expect.append({"name": case.name, "why": case.why, "flows": flows, "wireshark": case.wireshark})
        with atomic_output(out / "expect.json") as fh:
            fh.write((json.dumps(expect, indent=2) + "\n").encode())
        print(f"{out}: {len(cases)} cases and expect.json")
    else:
        started = time.perf_counter()
        stats = write_bench_capture(args.out, args.packets, args.seed)
        elapsed = time.perf_counter() - started
        print(
            f"{args.out}: {stats.packets} packets, {stats.flows} flows, {stats.duration:.1f} s of traffic; "
            f"written in {elapsed:.2f} s ({stats.packets / elapsed:,.0f} packets/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
