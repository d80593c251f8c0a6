"""Benchmark of `lync-sensor run`: replay the Lync mix into a veth pair at increasing rates and report the
highest rate the sensor sustains for the whole duration with zero drops, with CPU and peak RSS at each rate.

Runs as root: it creates two network namespaces and a veth pair (removed at the end).
Usage: python bench/bench_live.py [--rates 25000,50000,100000,150000] [--seconds 60] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_analyze import capture  # noqa: E402 - the same generated mix as the offline benchmark


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def tree_stats(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS (KiB) of a process and its descendants (sensor, dissector worker, dumpcap)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,rss=,times=", "-e"], capture_output=True, text=True).stdout
    procs = {}
    for line in out.splitlines():
        p, pp, rss, cpu = line.split()
        procs[int(p)] = (int(pp), int(rss), int(cpu))
    family = {pid}
    changed = True
    while changed:
        changed = False
        for p, (pp, _, _) in procs.items():
            if pp in family and p not in family:
                family.add(p)
                changed = True
    return float(sum(procs[p][2] for p in family if p in procs)), sum(procs[p][1] for p in family if p in procs)


def run_rate(
    pcap: Path, rate: int, seconds: int, ns: tuple[str, str], ifs: tuple[str, str], tmp: Path
) -> dict[str, float]:
    lake, spool = tmp / f"lake-{rate}", tmp / f"spool-{rate}"
    sensor = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns[0],
            sys.executable,
            "-m",
            "sensor.cli",
            "run",
            "--config",
            str(ROOT / "deploy" / "lync-sensor.example.toml"),
            "--interface",
            ifs[0],
            "--lake",
            str(lake),
            "--set",
            f'live.spool="{spool}"',
            "--set",
            "live.min_free_bytes=0",
            "--set",
            "live.spool_files=256",
            "--set",
            "live.capture_buffer_mib=256",
            "--set",
            "metrics.listen=127.0.0.1:19999",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = spool / "status.json"
    end = time.monotonic() + 120
    while time.monotonic() < end and not (status.exists() and json.loads(status.read_text())["capture_running"]):
        time.sleep(0.5)
    cpu0, _ = tree_stats(sensor.pid)
    t0 = time.monotonic()
    replay = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns[1],
            "tcpreplay",
            "-i",
            ifs[1],
            "--pps",
            str(rate),
            "--loop",
            "0",
            "--duration",
            str(seconds),
            str(pcap),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = 0
    while replay.poll() is None:
        peak = max(peak, tree_stats(sensor.pid)[1])
        time.sleep(1)
    out = replay.stdout.read() if replay.stdout else ""
    sent = next((int(line.split()[1]) for line in out.splitlines() if line.strip().startswith("Actual:")), 0)
    time.sleep(5)  # let the last ring files drain
    cpu1, rss = tree_stats(sensor.pid)
    elapsed = time.monotonic() - t0
    sensor.send_signal(signal.SIGTERM)
    sensor.wait(timeout=300)
    st = json.loads(status.read_text())
    return {
        "rate": rate,
        "sent": sent,
        "captured": st["packets"],
        "drops": st["drops"],
        "overruns": st["overruns"],
        "cpu_pct": 100.0 * (cpu1 - cpu0) / elapsed,
        "rss_mib": max(peak, rss) / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="25000,50000,100000,150000,200000")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--packets", type=int, default=1_000_000, help="size of the generated mix that is looped")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_live needs root (network namespaces)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    pcap = capture(args.out, args.packets)
    tag = uuid.uuid4().hex[:6]
    ns, ifs = (f"lbs{tag}", f"lbp{tag}"), (f"lbv{tag}a", f"lbv{tag}b")
    rows = []
    try:
        sh("ip", "netns", "add", ns[0])
        sh("ip", "netns", "add", ns[1])
        sh("ip", "link", "add", ifs[0], "type", "veth", "peer", "name", ifs[1])
        sh("ip", "link", "set", ifs[0], "netns", ns[0])
        sh("ip", "link", "set", ifs[1], "netns", ns[1])
        sh("ip", "netns", "exec", ns[0], "ip", "link", "set", ifs[0], "up")
        sh("ip", "netns", "exec", ns[0], "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns[1], "ip", "link", "set", ifs[1], "up")
        with tempfile.TemporaryDirectory(prefix="lync-bench-live-") as tmp:
            for rate in (int(r) for r in args.rates.split(",")):
                row = run_rate(pcap, rate, args.seconds, ns, ifs, Path(tmp))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        subprocess.run(["ip", "netns", "del", ns[0]], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns[1]], capture_output=True)
    ok = [r for r in rows if r["drops"] == 0 and r["overruns"] == 0 and r["captured"] >= r["sent"] > 0]
    lines = [
        f"Replay of {pcap.name} into a veth pair, {args.seconds} s per rate (tcpreplay in one namespace, "
        "lync-sensor run in the other; CPU and RSS of the sensor, its dissector worker and dumpcap)",
        "",
        "| target pps | sent | captured | drops | ring overruns | CPU % (of one core) | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['rate']:,} | {r['sent']:,} | {r['captured']:,} | {r['drops']:,} | {r['overruns']:,} | "
        f"{r['cpu_pct']:.0f} | {r['rss_mib']:.0f} |"
        for r in rows
    ]
    lines.append("")
    best = max((r["rate"] for r in ok), default=0)
    lines.append(f"highest rate sustained with zero drops: {best:,} packets/s (target >= 100,000)")
    text = "\n".join(lines)
    print(text)
    (args.out / "live-results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
