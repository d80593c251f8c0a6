"""`lync-sensor run` for real: a veth pair between two network namespaces this test creates, dumpcap capturing
on one end, tcpreplay sending the example capture from the other; plus the failures an appliance meets."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from sensor.lake import sql_glob
from tests.conftest import EXAMPLE_CONFIG, ROOT

pytestmark = pytest.mark.root

EXAMPLE = ROOT / "examples" / "lync-sample.pcap"


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tcpreplay", "dumpcap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup installs iproute2, tcpreplay, tshark)"
    name = f"lsprobe{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


SKIP = _can_make_namespaces()
needs_netns = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@dataclass
class Link:
    sensor_ns: str
    peer_ns: str
    sensor_if: str
    peer_if: str

    def run_in(self, ns: str, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture
def link() -> Iterator[Link]:
    tag = uuid.uuid4().hex[:6]
    lk = Link(f"lss{tag}", f"lsp{tag}", f"lsv{tag}a", f"lsv{tag}b")
    cmds = [
        ["ip", "netns", "add", lk.sensor_ns],
        ["ip", "netns", "add", lk.peer_ns],
        ["ip", "link", "add", lk.sensor_if, "type", "veth", "peer", "name", lk.peer_if],
        ["ip", "link", "set", lk.sensor_if, "netns", lk.sensor_ns],
        ["ip", "link", "set", lk.peer_if, "netns", lk.peer_ns],
        ["ip", "netns", "exec", lk.sensor_ns, "ip", "link", "set", lk.sensor_if, "up"],
        ["ip", "netns", "exec", lk.sensor_ns, "ip", "link", "set", "lo", "up"],
        ["ip", "netns", "exec", lk.peer_ns, "ip", "link", "set", lk.peer_if, "up"],
    ]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield lk
    finally:
        subprocess.run(["ip", "netns", "del", lk.sensor_ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", lk.peer_ns], capture_output=True)


class Sensor:
    """A `lync-sensor run` process in the sensor namespace, with its metrics reachable there."""

    def __init__(self, link: Link | None, tmp: Path, *settings: str, spool_only: bool = False) -> None:
        self.link = link
        self.tmp = tmp
        self.lake = tmp / "lake"
        self.spool = tmp / "spool"
        self.port = 19500 + (os.getpid() + int(time.time() * 1000)) % 400
        cmd = [
            sys.executable,
            "-m",
            "sensor.cli",
            "run",
            "--config",
            str(EXAMPLE_CONFIG),
            "--lake",
            str(self.lake),
            "--set",
            f'live.spool="{self.spool}"',
            "--set",
            f"metrics.listen=127.0.0.1:{self.port}",
            "--set",
            "live.min_free_bytes=0",
            *settings,
        ]
        if spool_only:
            cmd.append("--spool-only")
        else:
            assert link is not None
            cmd += ["--interface", link.sensor_if]
        self.ns_prefix = ["ip", "netns", "exec", link.sensor_ns] if link is not None else []
        self.log = (tmp / "sensor.log").open("wb")
        self.proc = subprocess.Popen([*self.ns_prefix, *cmd], stdout=self.log, stderr=subprocess.STDOUT)

    def metrics(self) -> dict[str, float]:
        cmd = [
            *self.ns_prefix,
            sys.executable,
            "-c",
            f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{self.port}/metrics',"
            f"timeout=5).read().decode())",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        values: dict[str, float] = {}
        for line in out.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                # every series carries the sensor's fleet labels; the tests name series without them
                name = re.sub(r',?(sensor|site)="[^"]*"', "", name).replace("{,", "{").replace("{}", "")
                values[name] = float(value)
        return values

    def wait_metric(self, name: str, pred: object, timeout: float = 60) -> dict[str, float]:
        end = time.monotonic() + timeout
        last: dict[str, float] = {}
        while time.monotonic() < end:
            try:
                last = self.metrics()
                if name in last and pred(last[name]):  # type: ignore[operator]
                    return last
            except subprocess.TimeoutExpired:
                pass
            assert self.proc.poll() is None, (self.tmp / "sensor.log").read_text()
            time.sleep(0.5)
        raise AssertionError(f"{name} never satisfied the condition: {last.get(name)}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=120)


def lake_query(lake: Path, table: str, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{sql_glob(lake, table)}', hive_partitioning=true)")
    return con.execute(sql).fetchall()


def replay(link: Link, pcap: Path, pps: int = 5000) -> None:
    r = link.run_in(link.peer_ns, "tcpreplay", "-i", link.peer_if, "--pps", str(pps), str(pcap), timeout=600)
    assert r.returncode == 0, r.stderr


@needs_netns
def test_run_captures_writes_flows_findings_and_metrics(link: Link, tmp_path: Path) -> None:
    sensor = Sensor(link, tmp_path)  # interval 60 s: nothing is exported before SIGTERM, the final flush must do it
    sensor.wait_metric("lync_sensor_capture_running", lambda v: v == 1)
    replay(link, EXAMPLE)
    sensor.wait_metric('lync_sensor_capture_packets_total{source="live"}', lambda v: v >= 27340)
    # the packet counter and the open-flow gauge are set at different points of one loop pass
    m = sensor.wait_metric("lync_sensor_open_flows", lambda v: v >= 28)
    assert m['lync_sensor_capture_drops_total{source="live"}'] == 0
    assert sensor.stop() == 0
    # SIGTERM: every flow seen is in the lake, and the rules ran over it
    (row,) = lake_query(
        sensor.lake, "flows", "SELECT count(DISTINCT uid), sum(orig_pkts + resp_pkts) FROM t WHERE source = 'live'"
    )
    assert row[0] >= 28 and row[1] >= 27340 - 10
    found = set(lake_query(sensor.lake, "findings", "SELECT DISTINCT rule_id, severity FROM t"))
    assert {("R2", "violation"), ("R7", "violation"), ("R5", "violation"), ("R1", "violation")} <= found
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor.cli",
            "status",
            "--config",
            str(EXAMPLE_CONFIG),
            "--set",
            f'live.spool="{sensor.spool}"',
        ],
        capture_output=True,
        text=True,
    )
    assert '"packets": 27' in status.stdout and status.returncode == 1  # stopped: capture no longer running


@needs_netns
def test_capture_process_killed_is_restarted_and_counted(link: Link, tmp_path: Path) -> None:
    sensor = Sensor(link, tmp_path, "--set", "sensor.interval=2")
    sensor.wait_metric("lync_sensor_capture_running", lambda v: v == 1)
    subprocess.run(["pkill", "-KILL", "-f", f"dumpcap -i {link.sensor_if}"], check=True)
    m = sensor.wait_metric("lync_sensor_capture_restarts_total", lambda v: v >= 1)
    sensor.wait_metric("lync_sensor_capture_running", lambda v: v == 1)
    replay(link, EXAMPLE, pps=8000)
    m = sensor.wait_metric('lync_sensor_capture_packets_total{source="live"}', lambda v: v >= 27340)
    assert m["lync_sensor_capture_restarts_total"] == 1
    assert sensor.stop() == 0


@needs_netns
def test_kill_9_mid_write_leaves_no_partial_parquet(link: Link, tmp_path: Path) -> None:
    sensor = Sensor(link, tmp_path, "--set", "sensor.interval=1", "--set", "live.rule_interval=1")
    sensor.wait_metric("lync_sensor_capture_running", lambda v: v == 1)
    sender = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            link.peer_ns,
            "tcpreplay",
            "-i",
            link.peer_if,
            "--pps",
            "20000",
            "--loop",
            "3",
            str(EXAMPLE),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sensor.wait_metric("lync_sensor_last_flush_timestamp_seconds", lambda v: v > 0)
    time.sleep(1.3)
    sensor.proc.kill()
    sensor.proc.wait()
    sender.wait(timeout=120)
    files = list(sensor.lake.rglob("*.parquet"))
    assert files
    for f in files:  # each visible file is whole: DuckDB reads it
        duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{f}')").fetchall()
    assert lake_query(sensor.lake, "flows", "SELECT count(*) FROM t")[0][0] > 0


@needs_netns
def test_full_disk_stops_writes_and_resumes(link: Link, tmp_path: Path) -> None:
    lake_fs = tmp_path / "small"
    lake_fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "none", str(lake_fs)], check=True)
    try:
        filler = lake_fs / "filler"
        filler.write_bytes(b"\0" * (6 << 20))  # 2 MiB left, below the 4 MiB guard
        sensor = Sensor(
            link,
            tmp_path,
            "--set",
            "sensor.interval=1",
            "--set",
            "live.min_free_bytes=4194304",
            "--lake",
            str(lake_fs / "lake"),
        )
        sensor.lake = lake_fs / "lake"
        sensor.wait_metric("lync_sensor_capture_running", lambda v: v == 1)
        replay(link, EXAMPLE, pps=10000)
        m = sensor.wait_metric("lync_sensor_lake_disk_guard", lambda v: v == 1)
        m = sensor.wait_metric("lync_sensor_lake_pending_records", lambda v: v > 0)
        assert not list(sensor.lake.rglob("*.parquet"))
        filler.unlink()  # space returns
        m = sensor.wait_metric("lync_sensor_lake_disk_guard", lambda v: v == 0)
        m = sensor.wait_metric("lync_sensor_lake_pending_records", lambda v: v == 0)
        assert m["lync_sensor_last_flush_timestamp_seconds"] > 0
        assert sensor.stop() == 0
        assert lake_query(sensor.lake, "flows", "SELECT count(DISTINCT uid) FROM t")[0][0] >= 28
        assert "below live.min_free_bytes" in (tmp_path / "sensor.log").read_text()
    finally:
        subprocess.run(["umount", "-l", str(lake_fs)], capture_output=True)


def _flood(path: Path, flows: int) -> None:
    """A ring file of `flows` distinct UDP flows, one packet each (a scan or flood)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    t0 = int(time.time())
    for i in range(flows):
        payload = b"x" * 32
        udp = struct.pack("!HHHH", 1024 + i % 60000, 7000 + i // 60000, 8 + len(payload), 0) + payload
        ip = (
            struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + len(udp),
                0,
                0,
                64,
                17,
                0,
                bytes([10, 9, (i >> 8) & 255, i & 255]),
                bytes([10, 0, 1, 10]),
            )
            + udp
        )
        frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip
        out.append(struct.pack("<IIII", t0, i % 1_000_000, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def test_flood_of_flows_stays_bounded_and_evictions_are_counted(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    stamp = time.strftime("%Y%m%d%H%M%S")
    _flood(spool / f"live_00001_{stamp}.pcapng.tmp", 30_000)
    # dumpcap writes pcapng; the reader takes either format, so a classic pcap stands in for a ring file
    os.replace(spool / f"live_00001_{stamp}.pcapng.tmp", spool / f"live_00001_{stamp}.pcapng")
    sensor = Sensor(None, tmp_path, "--set", "sensor.interval=1", "--set", "sensor.flow_capacity=1000", spool_only=True)
    sensor.wait_metric("lync_sensor_flow_evictions_total", lambda v: v >= 29_000, timeout=120)
    m = sensor.wait_metric("lync_sensor_open_flows", lambda v: v <= 1000)
    assert m['lync_sensor_capture_packets_total{source="live"}'] == 30_000
    assert sensor.stop() == 0
    # nothing seen is lost: every flow, evicted or not, is in the lake
    assert lake_query(sensor.lake, "flows", "SELECT count(DISTINCT uid) FROM t")[0][0] == 30_000


@needs_netns
def test_sighup_reloads_config_without_dropping_the_capture(link: Link, tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text(EXAMPLE_CONFIG.read_text())
    sensor = Sensor(link, tmp_path, "--config", str(cfg))
    sensor.wait_metric("lync_sensor_capture_running", lambda v: v == 1)
    cfg.write_text(
        EXAMPLE_CONFIG.read_text().replace(
            'media_encryption_level = "RequireEncryption"', 'media_encryption_level = "SupportEncryption"'
        )
    )
    sensor.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "configuration and rules reloaded" not in (tmp_path / "sensor.log").read_text():
        assert time.monotonic() < deadline, (tmp_path / "sensor.log").read_text()
        time.sleep(0.3)
    cfg.write_text("[sensor]\nnot_a_key = 1\n")  # a broken config is refused, the running one stays
    sensor.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "reload refused" not in (tmp_path / "sensor.log").read_text():
        assert time.monotonic() < deadline, (tmp_path / "sensor.log").read_text()
        time.sleep(0.3)
    replay(link, EXAMPLE, pps=10000)
    m = sensor.wait_metric('lync_sensor_capture_packets_total{source="live"}', lambda v: v >= 27340)
    assert m["lync_sensor_capture_restarts_total"] == 0 and m["lync_sensor_capture_running"] == 1
    assert sensor.stop() == 0
    # the reloaded policy judged the flows: with SupportEncryption plain media is a warning (X3), not a violation
    found = set(lake_query(sensor.lake, "findings", "SELECT DISTINCT rule_id, severity FROM t"))
    assert ("R7", "warning") in found and ("R7", "violation") not in found


def test_retention_by_age_and_size(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from sensor.live_status import apply_retention

    lake = tmp_path / "lake"
    for table, day, hour, size in [
        ("flows", "2026-10-01", "00", 100),
        ("flows", "2026-11-25", "10", 300),
        ("flows", "2026-11-26", "09", 300),
        ("findings", "2026-10-02", "05", 10),
        ("findings", "2026-11-26", "09", 10),
    ]:
        part = lake / table / f"date={day}" / f"hour={hour}"
        part.mkdir(parents=True)
        (part / "s-000000.parquet").write_bytes(b"\0" * size)
    now = datetime(2026, 11, 26, 12, tzinfo=UTC).timestamp()
    removed = apply_retention(lake, days=30, max_bytes=0, now=now)
    assert sorted(p.parent.name for p in removed) == ["date=2026-10-01", "date=2026-10-02"]
    removed = apply_retention(lake, days=30, max_bytes=400, now=now)
    assert [p.parent.name for p in removed] == ["date=2026-11-25"]  # the oldest partition goes first
    left = sorted(str(p.relative_to(lake)) for p in lake.rglob("*.parquet"))
    assert left == [
        "findings/date=2026-11-26/hour=09/s-000000.parquet",
        "flows/date=2026-11-26/hour=09/s-000000.parquet",
    ]
