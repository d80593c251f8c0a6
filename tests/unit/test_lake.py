"""The lake under concurrent writers, re-analysis and kill -9: no file lost, no copy doubled, no temp kept."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sensor.atomic import atomic_write
from sensor.lake import LakeWriter, Source, clean_stale_temporaries, source_of, sql_glob, temp_name
from sensor.lake import files as lake_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lync-sample.pcap"
HOUR = datetime(2026, 11, 26, 10, tzinfo=UTC)


def cli(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sensor.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd or ROOT,
    )


def finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def rows(lake: Path, table: str, what: str = "count(*)") -> int:
    if not lake_files(lake, table):
        return 0
    row = duckdb.sql(f"SELECT {what} FROM read_parquet('{sql_glob(lake, table)}', hive_partitioning = true)").fetchone()
    assert row is not None
    return int(row[0])


def _small(n: int, tag: int) -> pa.Table:
    ts = pa.array([HOUR.timestamp() * 1_000_000 + i for i in range(n)], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.table({"ts": ts, "writer": pa.array([tag] * n, pa.int32())})


def _write_many(lake: str, tag: int, start: float, times: int) -> None:
    while time.time() < start:
        pass
    w = LakeWriter(Path(lake), "sensor")
    for _ in range(times):
        w.write("flows", _small(7, tag))


def test_parallel_writers_to_one_partition_lose_nothing(tmp_path: Path) -> None:
    """Four processes, one sensor id, one partition, 40 files each: every file and every row survives."""
    ctx = multiprocessing.get_context("fork")
    start = time.time() + 0.5
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), tag, start, 40)) for tag in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    files = lake_files(tmp_path, "flows")
    assert len(files) == 160
    assert rows(tmp_path, "flows") == 4 * 40 * 7
    for tag in range(4):
        assert rows(tmp_path, "flows", f"count(*) FILTER (WHERE writer = {tag})") == 40 * 7
    assert all(re.fullmatch(r"sensor-\d{6}\.parquet", f.name) for f in files)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_writer_never_replaces_a_file_it_did_not_create(tmp_path: Path) -> None:
    """A file another writer holds the next sequence number of is kept as it is; the new file takes the next."""
    part = tmp_path / "flows" / "date=2026-11-26" / "hour=10"
    w = LakeWriter(tmp_path, "sensor")
    first = w.write("flows", _small(3, 1))[0].path
    assert first.name == "sensor-000000.parquet"
    # the race: another writer listed the directory before `first` existed and claims the same number
    other = LakeWriter(tmp_path, "sensor")
    claimed = other._claim(part, lambda fh: pq.write_table(_small(5, 2), fh))
    assert claimed.name == "sensor-000001.parquet"
    assert pq.read_table(first).num_rows == 3
    assert pq.read_table(claimed).num_rows == 5
    assert not list(part.glob(".*.tmp"))


def test_atomic_write_replaces_or_refuses_and_never_leaves_half_a_file(tmp_path: Path) -> None:
    """replace=True renames over the target; replace=False refuses a taken name; a failed writer leaves the
    target as it was; no temporary file is left in any case."""
    target = tmp_path / "state.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_text() == "new"
    with pytest.raises(FileExistsError):
        atomic_write(target, b"other", replace=False)
    assert target.read_text() == "new"

    def fails(fh: object) -> None:
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        atomic_write(target, fails)
    assert target.read_text() == "new"
    fresh = atomic_write(tmp_path / "fresh.bin", lambda fh: fh.write(b"x"), replace=False)
    assert fresh.read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.bin", "state.json"]


SIGKILL_MID_WRITE = """
import sys
from datetime import UTC, datetime
from pathlib import Path
import pyarrow as pa
from sensor.lake import LakeWriter
t0 = int(datetime(2026, 11, 26, 10, tzinfo=UTC).timestamp() * 1_000_000)
big = pa.table({"ts": pa.array(range(t0, t0 + 1_000_000), pa.int64()).cast(pa.timestamp("us", tz="UTC"))})
w = LakeWriter(Path(sys.argv[1]), "sensor")
while True:
    w.write("flows", big)
"""


def test_kill_9_leaves_no_temporary_file_for_the_next_writer(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    part = lake / "flows" / "date=2026-11-26" / "hour=10"
    part.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", SIGKILL_MID_WRITE, str(lake)], cwd=ROOT)
    deadline = time.time() + 60
    while not list(part.glob(".*.tmp")) and time.time() < deadline:
        time.sleep(0.005)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    left = list(part.glob(".*.tmp"))
    assert left, "the writer was not caught mid-write"
    assert str(writer.pid) in left[0].name
    # a temporary file of a writer that is alive (this process) stays; one of an older layout is removed
    # once it is older than any write takes
    mine = part / temp_name()
    mine.write_bytes(b"in progress")
    legacy = part / ".sensor-000003.parquet.0123456789abcdef0123456789abcdef.tmp"
    legacy.write_bytes(b"old")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    # the next writer, at start, in another process
    start_writer = (
        "import sys; from pathlib import Path; from sensor.lake import LakeWriter; LakeWriter(Path(sys.argv[1]), 's')"
    )
    subprocess.run([sys.executable, "-c", start_writer, str(lake)], cwd=ROOT, check=True)
    assert mine.exists()
    assert not legacy.exists()
    assert not [p for p in left if p.exists()]
    assert clean_stale_temporaries(lake) == []
    mine.unlink()


def test_source_is_the_content_digest(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    a.write_bytes(EXAMPLE.read_bytes())
    b.write_bytes(EXAMPLE.read_bytes() + b"\0")
    assert Source.of_files([EXAMPLE]).id == Source.of_files([a]).id  # where it lies does not matter
    assert Source.of_files([a, b]).id == Source.of_files([b, a]).id  # nor the order given
    assert Source.of_files([a]).id != Source.of_files([b]).id
    w = LakeWriter(tmp_path / "lake", "sensor", source=Source.of_files([a]))
    path = w.write("flows", _small(2, 0))[0].path
    assert source_of(path) == Source.of_files([a]).id
    meta = pq.read_schema(path).metadata
    assert meta[b"lync_sensor.source"] == Source.of_files([a]).id.encode()


# ---- the commands ------------------------------------------------------------------------------------------


def _wrote(out: str) -> int:
    m = re.search(r"Wrote ([\d,]+) flow records", out)
    assert m, out
    return int(m.group(1).replace(",", ""))


def test_reanalysing_a_capture_is_refused_then_replaced(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    code, out, err = finish(cli("analyze", str(EXAMPLE), "--lake", str(lake), "--no-progress"))
    assert code == 1, err  # the example holds violations
    flows, findings = rows(lake, "flows"), rows(lake, "findings")
    assert flows == _wrote(out) > 0
    assert findings > 0
    # a copy under another name is the same source
    copy = tmp_path / "copy.pcap"
    copy.write_bytes(EXAMPLE.read_bytes())
    code, out, err = finish(cli("analyze", str(copy), "--lake", str(lake), "--no-progress"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--replace" in err
    assert rows(lake, "flows") == flows
    code, out, err = finish(cli("analyze", str(copy), "--lake", str(lake), "--no-progress", "--replace"))
    assert code == 1, err
    assert "Replaced" in out
    assert rows(lake, "flows") == flows
    assert rows(lake, "findings") == findings
    assert rows(lake, "findings", "count(DISTINCT finding_id)") == findings
    assert not (lake / "_sources" / f"{Source.of_files([EXAMPLE]).id}.lock").exists()


def test_analyze_x_analyze(tmp_path: Path) -> None:
    """Two analyses of the same traffic (pcap and pcapng: two sources, the same partitions) at the same time."""
    pcap, pcapng = tmp_path / "l.pcap", tmp_path / "l.pcapng"
    for out, fmt in ((pcap, "pcap"), (pcapng, "pcapng")):
        subprocess.run(
            [sys.executable, "-m", "sensor.synth", "labelled", str(out), "--format", fmt], check=True, cwd=ROOT
        )
    alone = tmp_path / "alone"
    code, _, err = finish(cli("analyze", str(pcap), "--lake", str(alone), "--no-progress"))
    assert code in (0, 1), err
    distinct = rows(alone, "findings", "count(DISTINCT finding_id)")
    assert distinct > 0
    lake = tmp_path / "lake"
    for _ in range(3):
        procs = [cli("analyze", str(c), "--lake", str(lake), "--no-progress", "--replace") for c in (pcap, pcapng)]
        results = [finish(p) for p in procs]
        assert all(code in (0, 1) for code, _, _ in results), [e for _, _, e in results]
        assert rows(lake, "flows") == sum(_wrote(out) for _, out, _ in results)
        # the same traffic gives the same flows (uids) and so the same findings: none lost; two runs that store
        # at the same moment may both store one (README, Reliability)
        assert rows(lake, "findings", "count(DISTINCT finding_id)") == distinct


def test_check_x_check(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    code, _, err = finish(cli("analyze", str(EXAMPLE), "--lake", str(lake), "--no-progress", "--no-rules"))
    assert code == 0, err
    procs = [cli("check", "--lake", str(lake)) for _ in range(3)]
    results = [finish(p) for p in procs]
    assert all(code == 1 for code, _, _ in results), [e for _, _, e in results]
    new = [
        int(m.group(1).replace(",", "")) if (m := re.search(r"Wrote ([\d,]+) new findings", o)) else 0
        for _, o, _ in results
    ]
    distinct = rows(lake, "findings", "count(DISTINCT finding_id)")
    assert distinct > 0
    # every file each check wrote is there: concurrent checks may each store a finding (no file is lost)
    assert rows(lake, "findings") == sum(new)
    assert max(new) == distinct


RUN_X_CHECK = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
import duckdb
from sensor.config import load_config
from sensor.live import LiveSensor
from sensor.metrics import SensorMetrics
lake, src = sys.argv[1], sys.argv[2]
cfg = load_config(None, env={}, overrides=[f'sensor.lake="{lake}"', 'live.rule_window=86400'])
glob = f"{src}/flows/**/*.parquet"
query = f"SELECT * EXCLUDE (date, hour) FROM read_parquet('{glob}', hive_partitioning=true)"
table = duckdb.sql(query).to_arrow_table()
Path(lake).mkdir(parents=True)  # as LiveSensor.run does
end = max(t.timestamp() for t in table.column("ts_end").to_pylist()) + 1
metrics = SensorMetrics()
sensor = LiveSensor(cfg, metrics=metrics, capture=False)
written = 0
for i in range(4):
    sensor._pending.append(table)
    sensor._flush_pending()
    written += table.num_rows
    sensor._evaluate(end, sensor.checker)  # the capture's own time: the rule window covers it
found = sum(s.value for m in metrics.findings.collect() for s in m.samples if s.name.endswith("_total"))
print(written, int(found))
"""


def test_run_x_check(tmp_path: Path) -> None:
    """The live sensor's own lake writes (flows every interval, findings after each evaluation) beside `check`."""
    src = tmp_path / "src"
    code, _, err = finish(cli("analyze", str(EXAMPLE), "--lake", str(src), "--no-progress", "--no-rules"))
    assert code == 0, err
    lake = tmp_path / "lake"
    live = subprocess.Popen(
        [sys.executable, "-c", RUN_X_CHECK, str(lake), str(src)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    checks: list[int] = []
    while live.poll() is None:
        if (lake / "flows").is_dir():
            code, out, err = finish(cli("check", "--lake", str(lake)))
            assert code in (0, 1), err
            m = re.search(r"Wrote ([\d,]+) new findings", out)
            checks.append(int(m.group(1).replace(",", "")) if m else 0)
        else:
            time.sleep(0.05)
    out, _ = live.communicate()
    assert live.returncode == 0
    flows_written, live_findings = map(int, out.split())
    assert rows(lake, "flows") == flows_written == 4 * rows(src, "flows")
    assert rows(lake, "findings") == live_findings + sum(checks)
    assert checks, "no check ran beside the live writer"


@pytest.mark.parametrize("name", ["sensor-000001.parquet", "a.b-c-000123.0123456789abcdef.parquet"])
def test_names(name: str) -> None:
    src = source_of(Path(name))
    assert src == (None if name.startswith("sensor") else "0123456789abcdef")


def test_large_captures_are_refused_after_the_analysis_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above QUICK_DIGEST_BYTES the digest runs beside the analysis; the refusal comes before any write."""
    from sensor import analyze as pipeline
    from sensor.config import load_config
    from sensor.errors import SinkError

    monkeypatch.setattr(pipeline, "QUICK_DIGEST_BYTES", 0)
    lake = tmp_path / "lake"
    cfg = load_config(None, env={}, overrides=[f'sensor.lake="{lake}"'])
    first = pipeline.analyze_to_lake(cfg, [EXAMPLE], rules=False)
    assert first.source is not None and first.written
    before = sorted(lake.rglob("*.parquet"))
    with pytest.raises(SinkError, match="--replace"):
        pipeline.analyze_to_lake(cfg, [EXAMPLE], rules=False)
    assert sorted(lake.rglob("*.parquet")) == before
    again = pipeline.analyze_to_lake(cfg, [EXAMPLE], rules=False, replace=True)
    assert again.replaced == len(before) and rows(lake, "flows") == first.analysis.table.num_rows
