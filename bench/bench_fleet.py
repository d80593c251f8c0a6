"""Benchmark of the fleet lake (DuckLake on a PostgreSQL catalog, started here in a temporary directory).

1. Writers: N sensor processes at once, each committing one batch per interval of `--flows` records (the live
   sensor writes one record per open flow per interval), as fast as the catalog takes them: the sustained commit
   rate and records/s, and the CPU the catalog (every PostgreSQL process) used per commit.
2. Rules: the bench_rules.py day (`--rows` records) in the DuckLake and in the Parquet lake: all 17 rules over the
   last hour and over the whole day (target: the DuckLake within 2x of the Parquet lake).

Usage: python bench/bench_fleet.py [--writers 4] [--flows 2000] [--seconds 30] [--rows 10000000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_rules import DAY, hour_table  # noqa: E402
from sensor.config import load_config  # noqa: E402
from sensor.lake import LakeWriter  # noqa: E402
from sensor.lakes.ducklake import DuckLake  # noqa: E402
from sensor.rules.check import Checker  # noqa: E402
from sensor.rules.context import Window  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402

WRITER = """
import sys, time
from pathlib import Path
from sensor.lakes.ducklake import DuckLake
from tests.system.test_ducklake import records
catalog, data, spool, sensor, n, seconds = sys.argv[1:7]
lake = DuckLake(catalog, data, Path(spool))
end, b = time.monotonic() + float(seconds), 0
while time.monotonic() < end:
    lake.write("flows", records(sensor, b, int(n)), sensor_id=sensor)
    b += 1
lake.close()
print(b, len(lake.spool.batches()))
"""


def pg_cpu_seconds(data: Path) -> float:
    """User+system CPU of the postmaster and every backend (its children), from /proc."""
    pid = int((data / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(proc.name) == pid:  # its own, and its exited backends' (cutime, cstime)
            total += sum(int(f) for f in fields[11:15]) / tick
        elif int(fields[1]) == pid:  # a running backend or background worker
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def writers(pg: Postgres, out: Path, n_writers: int, flows: int, seconds: float) -> list[str]:
    catalog = pg.createdb("bench_writers")
    data = out / "fleet-data"
    DuckLake(catalog, str(data), out / "fleet-init").connect().close()
    cpu0, t0 = pg_cpu_seconds(pg.data), time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                catalog,
                str(data),
                str(out / f"spool-{i}"),
                f"s{i}",
                str(flows),
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for i in range(n_writers)
    ]
    commits = 0
    for p in procs:
        done, left = p.communicate()[0].split()
        commits += int(done)
        assert left == "0", "a writer left batches in its spool"
    wall = time.monotonic() - t0
    cpu = pg_cpu_seconds(pg.data) - cpu0
    return [
        f"| {n_writers} | {flows:,} | {wall:.0f} | {commits:,} | {commits / wall:.1f} | {commits * flows / wall:,.0f} "
        f"| {cpu / wall * 100:.0f}% | {cpu / max(commits, 1) * 1000:.1f} ms |"
    ]


def rules(pg: Postgres, out: Path, rows: int) -> list[str]:
    import numpy as np

    parquet = out / "fleet-parquet"
    shutil.rmtree(parquet, ignore_errors=True)
    lake = DuckLake(pg.createdb("bench_rules"), str(out / "fleet-rules-data"), out / "fleet-rules-spool")
    writer = LakeWriter(parquet, "sensor-a")
    rng = np.random.default_rng(7)
    for hour in range(24):
        t = hour_table(hour, rows // 24, rng)
        writer.write("flows", t)
        lake.write("flows", t, sensor_id="sensor-a")
    cfg = load_config(ROOT / "deploy" / "lync-sensor.example.toml", env={})
    checker = Checker(cfg)
    now = DAY + timedelta(days=1)
    lines = []
    for label, window in (("last hour", Window(now - timedelta(hours=1), now)), ("whole day", Window(DAY, now))):
        secs = []
        for target in (parquet, lake):
            t = time.monotonic()
            report = checker.check_lake(target, window, now=now, store=False)
            secs.append(time.monotonic() - t)
            assert not report.evaluation.failed, [r.rule.id for r in report.evaluation.failed]
        lines.append(f"| {label} | {report.records:,} | {secs[0]:.1f} | {secs[1]:.1f} | {secs[1] / secs[0]:.2f}x |")
    lake.close()
    shutil.rmtree(parquet, ignore_errors=True)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--flows", type=int, default=2000, help="records per commit (open flows per interval)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pg = Postgres()
    pg.start()
    try:
        lines = [
            "| writers | records per commit | seconds | commits | commits/s | records/s | catalog CPU "
            "| catalog CPU per commit |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *writers(pg, args.out, args.writers, args.flows, args.seconds),
            "",
            f"| window ({args.rows:,} records in the day) | flow records | Parquet lake s | DuckLake s | ratio |",
            "|---|---:|---:|---:|---:|",
            *rules(pg, args.out, args.rows),
        ]
    finally:
        pg.cleanup()
        for d in ("fleet-data", "fleet-init", "fleet-rules-data", "fleet-rules-spool"):
            shutil.rmtree(args.out / d, ignore_errors=True)
        for d in args.out.glob("spool-*"):
            shutil.rmtree(d, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    (args.out / "fleet-results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
