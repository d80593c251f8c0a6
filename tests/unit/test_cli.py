"""The `lync-sensor` command end to end: lake written and readable by DuckDB, clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from sensor.cli import main
from sensor.lake import files as lake_files
from sensor.lake import sql_glob
from sensor.schema import FLOW_SCHEMA
from tests.conftest import EXAMPLE_CONFIG, capture


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], capture_output=True, text=True, timeout=300)


def lake_rows(lake: Path, sql: str = "SELECT count(*) FROM f") -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW f AS SELECT * FROM read_parquet('{sql_glob(lake, 'flows')}', hive_partitioning=true)")
    return con.execute(sql).fetchall()


def test_analyze_writes_hive_partitioned_lake(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    r = run(
        "analyze",
        str(capture("heplify__sip_ipv4_tcp.pcap")),
        "--config",
        str(EXAMPLE_CONFIG),
        "--lake",
        str(lake),
        "--no-progress",
    )
    assert r.returncode == 1, r.stderr  # plaintext SIP between internal hosts: an R2 violation
    assert "Flows by role pair and application" in r.stdout
    assert "R2 " in r.stdout
    assert "plaintext SIP flows" in r.stdout
    files = lake_files(lake, "flows", sensor="sensor-a")
    assert len(files) == 1
    assert files[0].parent.name.startswith("hour=") and files[0].parent.parent.name.startswith("date=")
    assert lake_rows(lake) == [(3,)]
    (row,) = lake_rows(lake, "SELECT date, hour, app, sip_plain FROM f WHERE app = 'sip'")
    assert row[2:] == ("sip", True)
    # every schema column is in the file with its description
    import pyarrow.parquet as pq

    schema = pq.read_schema(files[0])
    for field in FLOW_SCHEMA:
        assert schema.field(field.name).metadata[b"description"]
    # a second run over the same capture is refused (its records are in the lake), or replaces them with --replace
    again = [str(capture("heplify__sip_ipv4_tcp.pcap")), "--lake", str(lake), "--no-progress", "--no-rules"]
    r = run("analyze", *again, "--set", "sensor.id=sensor-a")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--replace" in r.stderr
    assert sorted((lake / "flows").rglob("*.parquet")) == files
    assert main(["analyze", *again, "--set", "sensor.id=sensor-a", "--replace"]) == 0
    assert lake_rows(lake) == [(3,)]  # replaced, not doubled
    assert not list(lake.rglob("*.tmp"))


def test_progress_lines_on_long_runs() -> None:
    import io

    from sensor.analyze import Analyzer
    from sensor.config import load_config
    from sensor.progress import Progress

    ticks = iter(range(1000))
    out = io.StringIO()
    progress = Progress(stream=out, every_s=1.0, clock=lambda: float(next(ticks)))
    cfg = load_config(None, env={}, overrides=["sensor.progress=true"])
    Analyzer(cfg, progress=progress).run([capture("ndpi__sip.pcap"), capture("zeek__tls1.2.pcap")])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # one per batch here (every clock tick is a second)
    assert "ndpi__sip.pcap: 100.0% 112 packets" in lines[0]
    assert "zeek__tls1.2.pcap: 100.0% 134 packets" in lines[1] and "M packets/s" in lines[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"GET / HTTP/1.1\r\n\r\n" * 4, "not a pcap or pcapng capture"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap header"),
    ],
)
def test_not_a_capture_is_one_line_error(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    r = run("analyze", str(bad), "--lake", str(tmp_path / "lake"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "lake").exists()


def test_missing_capture(tmp_path: Path) -> None:
    r = run("analyze", str(tmp_path / "nope.pcap"), "--lake", str(tmp_path / "lake"))
    assert r.returncode == 2 and "cannot read capture" in r.stderr and "Traceback" not in r.stderr


def test_truncated_capture_keeps_flows_before_the_damage(tmp_path: Path) -> None:
    data = capture("heplify__sip_ipv4_tcp.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 50])
    lake = tmp_path / "lake"
    r = run("analyze", str(cut), "--lake", str(lake), "--no-progress", "--no-rules")
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "1 packet lost" in r.stderr and "Traceback" not in r.stderr
    (total,) = lake_rows(lake, "SELECT sum(orig_pkts + resp_pkts) FROM f")
    assert total == (83,)


@pytest.mark.parametrize("name", ["heplify__sip_ipv4_tcp.pcap", "ndpi__stun_dtls_rtp.pcapng"])
def test_garbage_in_the_middle_is_skipped_and_reading_resumes(tmp_path: Path, name: str) -> None:
    data = bytearray(capture(name).read_bytes())
    start = _record_start_near_middle(bytes(data))
    data[start : start + 300] = b"\xff" * 300
    bad = tmp_path / ("garbage" + Path(name).suffix)
    bad.write_bytes(bytes(data))
    lake = tmp_path / "lake"
    r = run("analyze", str(bad), "--lake", str(lake), "--no-progress", "--no-rules")
    assert r.returncode == 0, r.stderr
    assert "corrupt data at byte" in r.stderr and "skipped" in r.stderr
    clean = tmp_path / "clean"
    assert run("analyze", str(capture(name)), "--lake", str(clean), "--no-progress", "--no-rules").returncode == 0
    (got,) = lake_rows(lake, "SELECT sum(orig_pkts + resp_pkts) FROM f")
    (full,) = lake_rows(clean, "SELECT sum(orig_pkts + resp_pkts) FROM f")
    # only the few packets under the garbage are lost: packets after it were read again
    assert full[0] - 6 <= got[0] < full[0]  # type: ignore[operator]


def _record_start_near_middle(data: bytes) -> int:
    """Offset of the first record (pcap) or block (pcapng) header past the middle of the file."""
    import struct

    if data[:4] == b"\x0a\x0d\x0d\x0a":
        pos, step = 0, lambda p: struct.unpack_from("<I", data, p + 4)[0]
    else:
        pos, step = 24, lambda p: 16 + struct.unpack_from("<I", data, p + 8)[0]
    while pos < len(data) // 2:
        pos += step(pos)
    return pos


def test_config_error_is_one_line_with_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[topology.roles]\nfrontend = ["10.0.1.10"]\n')
    r = run("analyze", str(capture("zeek__tls1.2.pcap")), "--config", str(cfg), "--lake", str(tmp_path / "l"))
    assert r.returncode == 2
    assert "topology.roles.frontend" in r.stderr and str(cfg) in r.stderr
    assert r.stderr.count("\n") == 1


def test_config_check_and_show() -> None:
    r = run("config", "check", "--config", str(EXAMPLE_CONFIG))
    assert r.returncode == 0 and "config ok" in r.stdout
    r = run("config", "show", "--config", str(EXAMPLE_CONFIG), "--set", "sensor.interval=30")
    assert r.returncode == 0 and '"interval": 30' in r.stdout


# an unexpected exception, raised where every command passes (loading the config)
COMMANDS = [
    ["analyze", "x.pcap"],
    ["check"],
    ["rules", "lint"],
    ["run"],
    ["status"],
    ["config", "check"],
    ["ingest-zeek", "logs"],
    ["zeek-topology"],
]


def _defect(*_: object, **__: object) -> None:
    raise ValueError("first line of a defect\n  second line")


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_unexpected_exception_exits_2_with_one_line(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sensor.cli

    monkeypatch.setattr(sensor.cli, "_load", _defect)
    assert main(argv) == 2  # never 1, which means "violations found"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "internal error: ValueError: first line of a defect; second line" in err and "--debug" in err


def test_debug_flag_prints_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sensor.cli

    monkeypatch.setattr(sensor.cli, "_load", _defect)
    assert main(["--debug", "config", "check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):" and "_defect" in "\n".join(err)
    assert err[-1] == "lync-sensor: internal error: ValueError: first line of a defect; second line"


def test_damaged_capture_is_a_warning_with_exit_0(tmp_path: Path) -> None:
    """A capture whose damage once ended in a traceback and exit 1: an orig_len beyond int32 and zeros."""
    import struct

    data = bytearray(capture("heplify__sip_ipv4_tcp.pcap").read_bytes())
    struct.pack_into("<I", data, 24 + 12, 0x80000000)  # the first record's orig_len
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data) + b"\0" * 64)
    r = run("analyze", str(bad), "--lake", str(tmp_path / "lake"), "--no-progress", "--no-rules")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"warning: {bad}: ") for line in lines)
    (total,) = lake_rows(tmp_path / "lake", "SELECT sum(orig_pkts + resp_pkts) FROM f")
    assert total == (84,)
