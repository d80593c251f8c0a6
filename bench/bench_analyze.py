"""Benchmark of `lync-sensor analyze` against tshark and pyshark on the same multi-million-packet capture.

Generates a realistic Lync mix (sensor.synth.bulk), then measures in one run on the same file:
  - lync-sensor analyze end to end (capture in, Parquet lake and summary out): packets/s, peak RSS;
  - tshark -T fields -e frame.number: packets/s;
  - a plain pyshark FileCapture loop on a slice of the file: packets/s;
  - lync-sensor analyze on a capture N times longer: peak RSS (memory must not grow with length).
Usage: python bench/bench_analyze.py [--packets 10000000] [--long-factor 5] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def capture(out: Path, packets: int, seed: int = 1) -> Path:
    """The benchmark capture for this size, generated once and reused (with a metadata file)."""
    from sensor.synth.bulk import write_bench_capture

    path = out / f"lync-mix-{packets}.pcap"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists() and json.loads(meta.read_text()).get("packets") == packets:
        return path
    t = time.monotonic()
    stats = write_bench_capture(path, packets, seed=seed)
    meta.write_text(json.dumps({"packets": stats.packets, "flows": stats.flows, "duration": stats.duration}))
    print(
        f"generated {path.name}: {stats.packets:,} packets, {stats.flows:,} flows, "
        f"{stats.duration:.0f} s of traffic in {time.monotonic() - t:.1f} s",
        file=sys.stderr,
    )
    return path


def measure(cmd: list[str], ok: tuple[int, ...] = (0, 1)) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command, run in a fresh wrapper so the RSS is its own."""
    code = (
        "import resource,subprocess,sys,time;t=time.monotonic();"
        "rc=subprocess.call(sys.argv[1:],stdout=subprocess.DEVNULL);"
        "e=time.monotonic()-t;"
        "print(e,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=False)
    # lync-sensor exits 1 when a rule found a violation (the mix holds some on purpose)
    if r.returncode not in ok:
        raise SystemExit(f"benchmark command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    secs, rss = r.stdout.split()
    return float(secs), int(rss)


def sensor_cmd(path: Path, lake: Path) -> list[str]:
    exe = shutil.which("lync-sensor") or str(Path(sys.executable).with_name("lync-sensor"))
    return [
        exe,
        "analyze",
        str(path),
        "--config",
        str(ROOT / "deploy" / "lync-sensor.example.toml"),
        "--lake",
        str(lake),
        "--no-progress",
    ]


def pyshark_rate(path: Path, slice_packets: int, tmp: Path) -> float:
    sliced = tmp / "slice.pcap"
    subprocess.run(["editcap", "-r", str(path), str(sliced), f"1-{slice_packets}"], check=True, capture_output=True)
    code = (
        "import pyshark,sys,time;t=time.monotonic();n=0\n"
        "cap=pyshark.FileCapture(sys.argv[1],keep_packets=False)\n"
        "for _ in cap: n+=1\n"
        "cap.close();print(n,time.monotonic()-t)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(sliced)], capture_output=True, text=True, check=True)
    n, secs = r.stdout.split()
    return int(n) / float(secs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=10_000_000)
    ap.add_argument("--long-factor", type=int, default=5)
    ap.add_argument("--pyshark-slice", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--keep", action="store_true", help="keep the generated captures for the next run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = capture(args.out, args.packets)
    long = capture(args.out, args.packets * args.long_factor) if args.long_factor > 1 else None
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="lync-bench-") as tmp_s:
        tmp = Path(tmp_s)
        # warm the compile cache so the measurement is the steady state a deployed sensor sees
        measure(sensor_cmd(base, tmp / "warm"))
        secs, rss = measure(sensor_cmd(base, tmp / "lake1"))
        sensor_pps = args.packets / secs
        t_secs, _ = measure(["tshark", "-r", str(base), "-T", "fields", "-e", "frame.number"])
        tshark_pps = args.packets / t_secs
        pys_pps = pyshark_rate(base, args.pyshark_slice, tmp)
        rows.append(
            ("lync-sensor analyze (end to end)", f"{args.packets:,}", f"{sensor_pps:,.0f}", f"{rss / 1024:,.0f} MiB")
        )
        rows.append(("tshark -T fields -e frame.number", f"{args.packets:,}", f"{tshark_pps:,.0f}", ""))
        rows.append(
            (
                f"pyshark FileCapture loop (first {args.pyshark_slice:,} packets)",
                f"{args.pyshark_slice:,}",
                f"{pys_pps:,.0f}",
                "",
            )
        )
        ratio = sensor_pps / tshark_pps
        long_rss = None
        if long is not None:
            l_secs, long_rss = measure(sensor_cmd(long, tmp / "lake2"))
            rows.append(
                (
                    f"lync-sensor analyze, capture {args.long_factor}x longer",
                    f"{args.packets * args.long_factor:,}",
                    f"{args.packets * args.long_factor / l_secs:,.0f}",
                    f"{long_rss / 1024:,.0f} MiB",
                )
            )
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"capture {base.name} ({base.stat().st_size / 1e9:.2f} GB)",
        "",
        "| what | packets | packets/s | peak RSS |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines.append("")
    lines.append(f"lync-sensor end to end = {ratio:.1f}x tshark's packets/s (target >= 25x)")
    if long_rss is not None:
        growth = (long_rss - rss) / rss * 100
        lines.append(f"peak RSS {args.long_factor}x longer capture: {growth:+.1f}% (target within 20%)")
    text = "\n".join(lines)
    print(text)
    (args.out / "results.md").write_text(text + "\n")
    if not args.keep:
        for p in args.out.glob("lync-mix-*"):
            p.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
