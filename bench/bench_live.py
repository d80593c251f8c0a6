"""Benchmark of `lync-sensor run`: replay a Lync mix into a veth pair at fixed rates and report, for each rate,
drops, CPU, RSS over time (is it flat?) and the accounting lag (does the sensor keep up, or build a backlog?).

Mixes: `handshake` (bench_stream.py's short TLS sessions to Lync ports; default: 100,000 packets/s for 60 s,
the targets of issue 9) and `media` (the bulk Lync mix, default: a sweep of rates up to 200,000 packets/s).
The capture is looped by tcpreplay for the whole duration; each loop's sessions start with a SYN again after
the previous ones ended with FIN, so the sensor sees them as new flows (a sign-in peak that does not end).

Measured every 0.5 s while tcpreplay runs and until the sensor has caught up:
  - tcpreplay's packets sent (--stats=1), the sensor's status file (`packets`: counted by the fast path) and
    the packets of the flow records in the lake (orig_pkts + resp_pkts of each new Parquet file);
  - CPU and RSS of the sensor, its dissector worker and dumpcap.
Accounting lag of packet n = (first time the sensor's count reached n) - (time tcpreplay had sent n), worst
case over the run: "status lag" from the status file, "lake lag" from the lake (the latter includes waiting
for the flow export every sensor.interval seconds, 60 in the example config: set --interval to shorten it).
RSS is flat when the median of the last quarter of the replay is within 10% of the second quarter's.

Runs as root: it creates two network namespaces and a veth pair (removed at the end).
Usage: python bench/bench_live.py [--mix handshake|media] [--rates 100000] [--seconds 60] [--interval S]
                                  [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_analyze import capture  # noqa: E402 - the same generated mix as the offline benchmark
from bench_stream import handshake_capture, sensor_cmd, write_handshake_capture  # noqa: E402

DEFAULT_RATES = {"handshake": "100000", "media": "25000,50000,100000,150000,200000"}
SAMPLE_S = 0.5
CATCH_UP_S = 60  # after the replay, wait this long (plus one flow interval for the lake) for the sensor
FLAT_RSS_PCT = 10.0
LAG_TARGET_S = 5.0


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def link_counters(ns: str, ifname: str) -> dict[str, int]:
    """The kernel's counters of one interface in a namespace (rx_packets, rx_dropped, tx_packets, tx_dropped)."""
    names = ("rx_packets", "rx_dropped", "tx_packets", "tx_dropped")
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", *(f"/sys/class/net/{ifname}/statistics/{n}" for n in names)],
        capture_output=True,
        text=True,
    ).stdout.split()
    return dict(zip(names, (int(v) for v in out), strict=False))


def softnet_dropped() -> int:
    """Packets the kernel dropped because a CPU's input backlog (net.core.netdev_max_backlog) was full."""
    try:
        rows = Path("/proc/net/softnet_stat").read_text().splitlines()
    except OSError:
        return -1
    return sum(int(row.split()[1], 16) for row in rows if row.strip())  # per CPU: processed, dropped, ...


def tree_stats(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS (KiB) of a process and its descendants (sensor, dissector worker, dumpcap)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,rss=,times=", "-e"], capture_output=True, text=True).stdout
    procs = {}
    for line in out.splitlines():
        pid_s, ppid_s, rss_s, cpu_s = line.split()
        procs[int(pid_s)] = (int(ppid_s), int(rss_s), int(cpu_s))
    family = {pid}
    changed = True
    while changed:
        changed = False
        for p, (pp, _, _) in procs.items():
            if pp in family and p not in family:
                family.add(p)
                changed = True
    return float(sum(procs[p][2] for p in family if p in procs)), sum(procs[p][1] for p in family if p in procs)


@dataclass
class Sample:
    """One observation, seconds after the replay started."""

    t: float
    rss_mib: float
    status_packets: int
    lake_packets: int


@dataclass
class Replay:
    """tcpreplay in the other namespace; a thread records (time, packets sent) from its --stats lines."""

    proc: subprocess.Popen[str]
    t0: float
    sent: list[tuple[float, int]] = field(default_factory=list)
    failed: int = 0

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            words = line.split()
            if words[:1] == ["Actual:"]:
                self.sent.append((time.monotonic() - self.t0, int(words[1])))
            elif line.strip().startswith("Failed packets:"):
                self.failed = int(words[-1])


class LakeCounter:
    """Packets accounted in the flow records of the lake: each new Parquet file is read once (two columns)."""

    def __init__(self, lake: Path) -> None:
        self.root = lake / "flows"
        self.seen: set[Path] = set()
        self.packets = 0

    def poll(self) -> int:
        for path in sorted(self.root.rglob("*.parquet")) if self.root.exists() else ():
            if path in self.seen or path.name.startswith("."):
                continue
            try:
                table = pq.read_table(path, columns=["orig_pkts", "resp_pkts"])
            except (OSError, ValueError):
                continue  # being renamed into place: read it at the next poll
            self.seen.add(path)
            self.packets += sum(int(table.column(c).to_numpy().sum()) for c in ("orig_pkts", "resp_pkts"))
        return self.packets


@dataclass
class RateResult:
    """One rate's outcome."""

    rate: int
    sent: int
    send_failures: int
    captured: int
    drops: int
    overruns: int
    cpu_pct: float
    rss_q2_mib: float  # median of the replay's second quarter
    rss_q4_mib: float  # median of its last quarter
    rss_peak_mib: float
    rss_growth_pct: float
    delivered: int  # packets the sensor's veth received (kernel counter): what the capture could see
    kernel_dropped: int  # dropped before any capture: veth rx/tx drops and full input backlogs (softnet_stat)
    status_lag_s: float | None
    lake_lag_s: float | None
    samples: list[Sample]

    @property
    def clean(self) -> bool:
        """Zero drops, zero ring overruns, every replayed packet captured."""
        return self.drops == 0 and self.overruns == 0 and self.captured >= self.sent > 0

    def verdict(self) -> str:
        flat = abs(self.rss_growth_pct) <= FLAT_RSS_PCT
        lag = self.status_lag_s
        keeps_up = lag is not None and lag < LAG_TARGET_S
        return (
            f"{self.rate:,} packets/s: {'zero drops' if self.clean else 'DROPS or packets missing'}; "
            f"RSS {'flat' if flat else 'NOT flat'} ({self.rss_growth_pct:+.1f}%, target within {FLAT_RSS_PCT:g}%); "
            f"status lag {_lag(lag)} s (target < {LAG_TARGET_S:g} s): {'met' if keeps_up else 'missed'}"
        )


def _lag(value: float | None) -> str:
    return "not caught up" if value is None else f"{value:.1f}"


def worst_lag(sent: list[tuple[float, int]], seen: list[tuple[float, int]]) -> float | None:
    """Worst time from a packet's replay to the sensor's count reaching it; None if some never got counted."""
    worst, j = 0.0, 0
    for t_sent, n in sent:
        while j < len(seen) and (seen[j][1] < n or seen[j][0] < t_sent):
            j += 1
        if j == len(seen):
            return None
        worst = max(worst, seen[j][0] - t_sent)
    return worst


def rss_quarters(samples: list[Sample], replay_s: float) -> tuple[float, float]:
    """Median RSS of the second quarter of the replay (the first holds start-up) and of the last quarter."""
    during = [s.rss_mib for s in samples if s.t <= replay_s]
    q = len(during) // 4
    if q == 0:
        return during[0], during[-1]
    return statistics.median(during[q : 2 * q]), statistics.median(during[-q:])


def warm_compile_cache(tmp: Path) -> None:
    """Compile the fast path once, on small pcapng files of both mixes (the ring files are pcapng), so that
    the first rate measures the steady state and not numba compiling."""
    for name, write in (
        ("handshake", lambda p: write_handshake_capture(p, 200)),
        ("media", lambda p: capture(tmp, 20_000).rename(p)),
    ):
        pcap, pcapng = tmp / f"warm-{name}.pcap", tmp / f"warm-{name}.pcapng"
        write(pcap)
        sh("editcap", "-F", "pcapng", str(pcap), str(pcapng))
        r = subprocess.run(sensor_cmd(pcapng, tmp / f"warm-lake-{name}"), capture_output=True, text=True)
        if r.returncode not in (0, 1):  # 1 = violations found
            print(f"bench_live: warm-up analyze failed: {r.stderr.strip()}", file=sys.stderr)


def run_rate(
    pcap: Path,
    rate: int,
    seconds: int,
    ns: tuple[str, str],
    ifs: tuple[str, str],
    tmp: Path,
    interval: int | None,
) -> RateResult:
    lake, spool = tmp / f"lake-{rate}", tmp / f"spool-{rate}"
    extra = ["--set", f"sensor.interval={interval}"] if interval else []
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
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = spool / "status.json"

    def status_packets() -> int:
        try:
            return int(json.loads(status.read_text())["packets"])
        except (OSError, ValueError, KeyError):
            return 0

    end = time.monotonic() + 120
    while time.monotonic() < end and not (status.exists() and json.loads(status.read_text())["capture_running"]):
        time.sleep(0.5)
    base = status_packets()  # anything the interface saw before the replay (IPv6 neighbour discovery)
    rx0, tx0, soft0 = link_counters(ns[0], ifs[0]), link_counters(ns[1], ifs[1]), softnet_dropped()
    cpu0, _ = tree_stats(sensor.pid)
    t0 = time.monotonic()
    replay = Replay(
        subprocess.Popen(
            [
                *("ip", "netns", "exec", ns[1], "tcpreplay", "-i", ifs[1], "--pps", str(rate), "--stats=1"),
                *("--loop", "0", "--duration", str(seconds), str(pcap)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ),
        t0,
    )
    reader = threading.Thread(target=replay.read, daemon=True)
    reader.start()
    counter = LakeCounter(lake)
    samples: list[Sample] = []
    replay_s = float(seconds)
    deadline = None
    while True:
        now = time.monotonic() - t0
        _, rss = tree_stats(sensor.pid)
        samples.append(Sample(now, rss / 1024, status_packets() - base, counter.poll()))
        if deadline is None and replay.proc.poll() is not None:
            reader.join(timeout=5)
            replay_s = now
            deadline = now + CATCH_UP_S + (interval or 60)
        total = replay.sent[-1][1] if replay.sent and deadline is not None else None
        if total is not None and samples[-1].status_packets >= total and samples[-1].lake_packets >= total:
            break
        if deadline is not None and now > deadline:
            break
        time.sleep(SAMPLE_S)
    cpu1, _ = tree_stats(sensor.pid)
    rx1, tx1, soft1 = link_counters(ns[0], ifs[0]), link_counters(ns[1], ifs[1]), softnet_dropped()
    elapsed = time.monotonic() - t0
    sensor.send_signal(signal.SIGTERM)
    sensor.wait(timeout=300)
    st = json.loads(status.read_text())
    sent = replay.sent[-1][1] if replay.sent else 0
    status_lag = worst_lag(replay.sent, [(s.t, s.status_packets) for s in samples])
    lake_lag = worst_lag(replay.sent, [(s.t, s.lake_packets) for s in samples])
    q2, q4 = rss_quarters(samples, replay_s)
    return RateResult(
        rate=rate,
        sent=sent,
        send_failures=replay.failed,
        captured=int(st["packets"]),
        drops=int(st["drops"]),
        overruns=int(st["overruns"]),
        cpu_pct=100.0 * (cpu1 - cpu0) / elapsed,
        rss_q2_mib=q2,
        rss_q4_mib=q4,
        rss_peak_mib=max(s.rss_mib for s in samples),
        rss_growth_pct=(q4 - q2) / q2 * 100,
        delivered=rx1.get("rx_packets", 0) - rx0.get("rx_packets", 0),
        kernel_dropped=(rx1.get("rx_dropped", 0) - rx0.get("rx_dropped", 0))
        + (tx1.get("tx_dropped", 0) - tx0.get("tx_dropped", 0))
        + max(0, soft1 - soft0),
        status_lag_s=status_lag,
        lake_lag_s=lake_lag,
        samples=samples,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", choices=("handshake", "media"), default="handshake")
    ap.add_argument("--rates", help="comma-separated packets/s (default: 100000 for handshake, a sweep for media)")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--sessions", type=int, default=20_000, help="handshake mix: TLS sessions in the looped file")
    ap.add_argument("--packets", type=int, default=1_000_000, help="media mix: packets in the looped file")
    ap.add_argument("--interval", type=int, help="sensor.interval for the run (flow export period, seconds)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_live needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        rates = [int(r) for r in (args.rates or DEFAULT_RATES[args.mix]).split(",")]
    except ValueError:
        print(f"bench_live: --rates takes comma-separated packets/s, not {args.rates!r}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mix == "handshake":
        pcap, _ = handshake_capture(args.out, args.sessions)
    else:
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
            warm_compile_cache(Path(tmp))
            for rate in rates:
                row = run_rate(pcap, rate, args.seconds, ns, ifs, Path(tmp), args.interval)
                rows.append(row)
                brief = {k: v for k, v in asdict(row).items() if k != "samples"}
                print(json.dumps(brief), file=sys.stderr)
    finally:
        subprocess.run(["ip", "netns", "del", ns[0]], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns[1]], capture_output=True)
    interval = f"{args.interval} s" if args.interval else "sensor.interval of the config"
    lines = [
        f"Replay of {pcap.name} into a veth pair, {args.seconds} s per rate (tcpreplay in one namespace, "
        "lync-sensor run in the other; CPU and RSS of the sensor, its dissector worker and dumpcap; "
        f"flow export every {interval})",
        "",
        "| target pps | sent | captured | drops | ring overruns | CPU % (of one core) "
        "| RSS MiB 2nd quarter / last quarter / peak | RSS growth | status lag s | lake lag s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.rate:,} | {r.sent:,} | {r.captured:,} | {r.drops:,} | {r.overruns:,} | {r.cpu_pct:.0f} | "
        f"{r.rss_q2_mib:.0f} / {r.rss_q4_mib:.0f} / {r.rss_peak_mib:.0f} | {r.rss_growth_pct:+.1f}% | "
        f"{_lag(r.status_lag_s)} | {_lag(r.lake_lag_s)} |"
        for r in rows
    ]
    lines += ["", *(r.verdict() for r in rows)]
    best = max((r.rate for r in rows if r.clean), default=0)
    lines.append(f"highest rate sustained with zero drops: {best:,} packets/s")
    text = "\n".join(lines)
    print(text)
    (args.out / f"live-results-{args.mix}.md").write_text(text + "\n")
    (args.out / f"live-results-{args.mix}.json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
