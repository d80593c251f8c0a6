"""The Zeek front end: real Zeek logs read in place, rotation and damage, the mapping into the flow schema, the
same captures through pcap and Zeek, the rules on Zeek-derived nulls, the CLI, and the Zeek package.

Real inputs: ../shared/zeek-logs (Zeek's own test baselines, masked timestamps and all) and the captures they
came from. tests/data/zeek holds HAND-WRITTEN logs only where the shared folders have none (a conn.log for
tls1.2.pcap, lync.log rows of the package in deploy/zeek/); each says so in its header.
"""

from __future__ import annotations

import configparser
import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from sensor import ingest_zeek
from sensor.analyze import Analyzer
from sensor.catalogue import Catalogue
from sensor.config import Config, load_config
from sensor.errors import SourceError
from sensor.metrics import SensorMetrics
from sensor.rules.check import Checker
from sensor.sources.zeek import base as zb
from sensor.sources.zeek import fields as zf
from sensor.sources.zeek import files as zfiles
from sensor.sources.zeek import logs as zs
from tests.conftest import EXAMPLE_CONFIG, ROOT, ZEEK_LOGS, flows_by_uid

DATA = ROOT / "tests" / "data" / "zeek"
PACKAGE = ROOT / "deploy" / "zeek"
TS = 1_700_000_000.0  # the test-only substitute for the masked timestamps of the shared logs
NOW = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)


def shared(folder: str) -> Path:
    path = ZEEK_LOGS / folder
    if not path.is_dir():
        pytest.skip(f"shared Zeek logs {folder} not present at {ZEEK_LOGS}")
    return path


def config(tmp_path: Path, text: str = "", overrides: tuple[str, ...] = ()) -> Config:
    path = tmp_path / "site.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_config(path, env={}, overrides=[f'sensor.lake="{tmp_path / "lake"}"', *overrides])


def ingest(cfg: Config, *dirs: Path, **kw: object) -> ingest_zeek.IngestResult:
    kw.setdefault("ts_substitute", TS)
    return ingest_zeek.ZeekIngest(cfg, list(dirs), **kw).run()  # type: ignore[arg-type]


def lake_table(lake: Path) -> pa.Table:
    con = duckdb.connect()
    return con.sql(
        f"SELECT * FROM read_parquet('{lake}/flows/**/*.parquet', hive_partitioning = true) ORDER BY ts, uid"
    ).to_arrow_table()


def findings_key(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    keys = ("rule_id", "severity", "orig_h", "orig_p", "resp_h", "resp_p", "proto")
    return sorted(tuple(r[k] for k in keys) for r in rows)


# ------------------------------------------------------------------------------------------ reading the real logs


def test_real_tsv_logs_read_in_place() -> None:
    problems: Counter[str] = Counter()
    (ssl,) = zs.read_log(shared("ssl-certificate-request-info") / "ssl.log", problems=problems)
    f = ssl.fields
    assert (f["uid"], f["id.orig_p"], f["id.resp_p"], f["version"]) == ("CHhAvVGS1DHFjwGM9", 52464, 3000, "TLSv12")
    assert f["resumed"] is False and f["established"] is False and f["server_name"] is None
    assert f["ssl_history"] == "CsxkrnXGIl" and f["client_cert_chain_fps"] == [] and len(f["cert_chain_fps"]) == 2
    # a vector element holding the set separator: Zeek escapes the commas as \x2c
    assert f["requested_client_certificate_authorities"] == ["O=SomeOrg,L=Somewhere,ST=Some-State,C=US"]
    # the btest banner line is no header; the masked ts is reported, not a crash
    assert ssl.ts is None and problems == Counter({zb.BAD_TS: 1})
    x509 = zs.read_log(shared("ssl-tls-1.2") / "x509.log", ts_substitute=TS)
    assert [r.fields["san.dns"] for r in x509] == [["*.taleo.net", "taleo.net"], None, None]
    assert x509[0].fields["certificate.not_valid_before"] == 1304467200.0 and x509[0].ts == TS
    sip = zs.read_log(shared("sip-wireshark") / "sip.log", ts_substitute=TS)
    assert len(sip) == 36 and [r.fields["response_path"] for r in sip if r.fields["method"] == "ACK"][1] == []
    assert {r.fields["method"] for r in sip} == {"REGISTER", "INVITE", "CANCEL", "ACK"}


def test_masked_ts_is_reported_clearly(caplog: pytest.LogCaptureFixture) -> None:
    problems: Counter[str] = Counter()
    recs = zs.read_log(shared("sip-wireshark") / "sip.log", problems=problems)
    assert len(recs) == 36 and all(r.ts is None for r in recs)  # facts kept, ts unset
    assert problems[zb.BAD_TS] == 36 and not problems[zb.MALFORMED]
    assert "unparseable ts XXXXXXXXXX.XXXXXX" in caplog.text
    json_recs = zs.read_log(shared("http-json-and-tsv") / "http.log.json", log_name="http", problems=problems)
    assert len(json_recs) == 4 and problems[zb.BAD_TS] == 40  # `"ts":XXXXXXXXXX.XXXXXX` is not even JSON


def test_json_ts_forms_and_nested_ids(tmp_path: Path) -> None:
    p = tmp_path / "conn.log"
    p.write_text(
        '{"ts":1795687200.25,"uid":"Ca","id.orig_h":"10.0.0.1","id.orig_p":1,"id.resp_h":"10.0.0.2","id.resp_p":2}\n'
        '{"ts":"2026-11-26T10:00:00.500000Z","uid":"Cb","id":{"orig_h":"10.0.0.1","orig_p":3}}\n'
        '{"ts":1795687200750,"uid":"Cc"}\n'
        "{not json\n"
    )
    problems: Counter[str] = Counter()
    recs = zs.read_log(p, problems=problems)
    assert [r.ts for r in recs] == [1795687200.25, 1795687200.5, 1795687200.75]
    assert recs[1].fields["id.orig_p"] == 3 and problems == Counter({zb.MALFORMED: 1})


def test_json_and_tsv_http_logs_give_the_same_records(tmp_path: Path) -> None:
    folder = shared("http-json-and-tsv")
    tables = {}
    for fmt in ("tsv", "json"):
        d = tmp_path / fmt
        d.mkdir()
        shutil.copy(folder / f"http.log.{fmt}", d / "http.log")  # the front end finds logs by name
        table = ingest(config(tmp_path / fmt), d, rules=False).table.sort_by("orig_p")  # one ts: the log order
        tables[fmt] = table.to_pylist()
    tsv, js = tables["tsv"], tables["json"]
    assert [r["http_path"] for r in tsv] == [
        "/regular_file.html",
        "/printable_%F0%9F%98%84",
        "/non_printable_%07",
        "/non_printable_literal_%5Cx07",
    ]
    # Zeek's JSON writer writes byte 0x07 and the four characters \x07 alike ("\\x07"): the one URI with a
    # literal backslash reads as the byte in JSON. TSV keeps them apart (\x07 vs \\x07). Everything else is equal.
    assert js[3]["http_path"] == "/non_printable_literal_%07"
    for a, b in zip(tsv, js, strict=True):
        diff = {k for k in a if a[k] != b[k]}
        assert diff <= ({"http_path", "http_paths"} if a["uid"] == "CtPZjS20MLrsMUOJi2" else set()), diff


def test_http_query_is_redacted_like_the_pcap_front_end(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    (d / "http.log").write_text(
        '{"ts":1795687200.0,"uid":"Cq","id.orig_h":"10.0.5.1","id.orig_p":50000,"id.resp_h":"10.0.1.10",'
        '"id.resp_p":80,"trans_depth":1,"method":"GET","host":"lyncweb.example.com",'
        '"uri":"/abs/handler/x.ashx?user=alice@example.com"}\n'
    )
    (row,) = ingest(config(tmp_path / "a"), d, rules=False).table.to_pylist()
    assert row["http_path"] == "/abs/handler/x.ashx?<redacted>" and row["http_requests"] == 1
    cfg = config(tmp_path / "b", "[privacy]\nredact_http_query = false\n")
    (row,) = ingest(cfg, d, rules=False).table.to_pylist()
    assert row["http_path"] == "/abs/handler/x.ashx?user=alice@example.com"


# ------------------------------------------------------------------------------------------ files, rotation, damage


def _tsv(path_name: str, fields: list[str], types: list[str], rows: list[list[str]], opened: str) -> bytes:
    head = "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
    head += f"#path\t{path_name}\n#open\t{opened}\n#fields\t" + "\t".join(fields) + "\n#types\t" + "\t".join(types)
    return (head + "\n" + "".join("\t".join(r) + "\n" for r in rows)).encode()


CONN_FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration",
               "orig_pkts", "resp_pkts"]  # fmt: skip
CONN_TYPES = ["time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count", "count"]


def conn_row(n: int, ts: float = 1795687200.0) -> list[str]:
    return [f"{ts + n:.6f}", f"CFollow{n:011d}", "10.0.5.1", str(40000 + n), "10.0.1.10", "5061", "tcp", "ssl",
            "1.0", "3", "2"]  # fmt: skip


def conn_log(rows: list[list[str]], opened: str = "2026-11-26-10-00-00") -> bytes:
    return _tsv("conn", CONN_FIELDS, CONN_TYPES, rows, opened)


def test_gzip_and_rotated_files_are_read_in_time_order(tmp_path: Path) -> None:
    src = (shared("sip-wireshark") / "sip.log").read_bytes()
    lines = src.splitlines(keepends=True)
    header = [ln for ln in lines if ln.startswith(b"#") and not ln.startswith(b"#close")]
    data = [ln for ln in lines if not ln.startswith(b"#")]
    parts = [data[:10], data[10:20], data[20:30], data[30:]]
    # written out of order on purpose; the names carry the rotation time
    (tmp_path / "sip.2026-11-26-12-00-00.log.gz").write_bytes(gzip.compress(b"".join(header + parts[2])))
    (tmp_path / "sip.2026-11-26-10-00-00.log.gz").write_bytes(gzip.compress(b"".join(header + parts[0])))
    (tmp_path / "sip.2026-11-26-11-00-00.log").write_bytes(b"".join(header + parts[1]))
    (tmp_path / "sip.log").write_bytes(b"".join(header + parts[3]))
    found = zfiles.discover(tmp_path, "sip")
    assert [f.path.name for f in found] == [
        "sip.2026-11-26-10-00-00.log.gz",
        "sip.2026-11-26-11-00-00.log",
        "sip.2026-11-26-12-00-00.log.gz",
        "sip.log",
    ]
    problems: Counter[str] = Counter()
    stream = zs.LogStream(tmp_path, "sip", follow=False, problems=problems, ts_substitute=TS)
    got = stream.read()
    want = zs.read_log(shared("sip-wireshark") / "sip.log", ts_substitute=TS)
    assert [r.fields for r in got] == [r.fields for r in want]
    assert stream.read() == []  # a one-shot read hands out each line once
    assert set(problems) == {zb.BAD_TS}


def test_zeekctl_archive_names_sort_by_directory_date(tmp_path: Path) -> None:
    day = tmp_path / "2026-11-25"
    day.mkdir()
    for name in ("conn.23:00:00-00:00:00.log.gz", "conn.09:00:00-10:00:00.log.gz"):
        (day / name).write_bytes(gzip.compress(conn_log([])))
    assert [f.path.name for f in zfiles.discover(day, "conn")] == [
        "conn.09:00:00-10:00:00.log.gz",
        "conn.23:00:00-00:00:00.log.gz",
    ]


def test_malformed_lines_and_a_header_change_are_counted_and_reading_goes_on(tmp_path: Path) -> None:
    body = conn_log([conn_row(1)]).decode()
    body += "this is not a zeek line\n"
    body += "\t".join([*conn_row(2)[:-1], "many"]) + "\n"  # a count that is not a number: that field only
    body += "\t".join(conn_row(3)) + "\n"
    # Zeek started writing with another schema (e.g. a package added a field): new #fields, new #types
    body += "#fields\t" + "\t".join([*CONN_FIELDS, "orig_role"]) + "\n#types\t" + "\t".join([*CONN_TYPES, "string"])
    body += "\n" + "\t".join([*conn_row(4), "client"]) + "\n"
    body += "\t".join(conn_row(5)) + "\n"  # one field short for the new schema
    (tmp_path / "conn.log").write_text(body)
    metrics = SensorMetrics()
    result = ingest(config(tmp_path / "c"), tmp_path, rules=False, metrics=metrics)
    rows = {r["uid"]: r for r in result.table.to_pylist()}
    assert sorted(rows) == [f"CFollow0000000000{n}" for n in (1, 2, 3, 4)]
    assert rows["CFollow00000000002"]["resp_pkts"] is None and rows["CFollow00000000002"]["orig_pkts"] == 3
    assert result.problems[zb.MALFORMED] == 2 and result.problems[zb.HEADER_CHANGE] == 1
    assert result.problems[zb.BAD_VALUE] == 1
    sample = metrics.registry.get_sample_value
    assert sample("lync_sensor_decode_errors_total", {"kind": "zeek_malformed_line"}) == 2
    assert sample("lync_sensor_decode_errors_total", {"kind": "zeek_header_change"}) == 1
    assert sample("lync_sensor_decode_errors_total", {"kind": "zeek_bad_value"}) == 1
    assert sample("lync_sensor_capture_packets_total", {"source": "zeek"}) == 18  # 3 flows x 5 packets, 1 x 3
    lines = ingest_zeek.problem_lines(result)
    assert "2 malformed line(s) skipped" in lines and "1 header change(s) mid-file (schema switched)" in lines


def test_truncated_gzip_keeps_the_lines_before_the_damage(tmp_path: Path) -> None:
    whole = gzip.compress(conn_log([conn_row(n) for n in range(200)]))
    (tmp_path / "conn.2026-11-26-10-00-00.log.gz").write_bytes(whole[: len(whole) * 2 // 3])
    result = ingest(config(tmp_path / "c"), tmp_path, rules=False)
    got = [r["uid"] for r in result.table.to_pylist()]
    assert 50 < len(got) < 200 and got == [f"CFollow{n:011d}" for n in range(len(got))]
    assert result.problems[zb.TRUNCATED_GZIP] == 1


def test_no_logs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no Zeek logs"):
        ingest_zeek.ZeekIngest(config(tmp_path), [tmp_path])
    with pytest.raises(SourceError, match="not a directory"):
        ingest_zeek.ZeekIngest(config(tmp_path), [tmp_path / "missing"])


# ------------------------------------------------------------------------------------------ follow and restart


def rotate(d: Path, stamp: str, *, compress: bool = True) -> None:
    """What Zeek (or zeekctl) does: rename the current log, compress it, and the next write makes a new one."""
    rotated = d / f"conn.{stamp}.log"
    os.rename(d / "conn.log", rotated)
    if compress:
        (d / f"conn.{stamp}.log.gz").write_bytes(gzip.compress(rotated.read_bytes()))
        rotated.unlink()


def uids_in(lake: Path) -> list[str]:
    return sorted(str(u) for u in lake_table(lake).column("uid").to_pylist())


def test_follow_across_rotation_and_restart_loses_and_repeats_nothing(tmp_path: Path) -> None:
    d, state = tmp_path / "spool", tmp_path / "state.json"
    d.mkdir()
    cfg = config(tmp_path)
    lake = Path(cfg.sensor.lake)
    (d / "conn.log").write_bytes(conn_log([conn_row(n) for n in (1, 2, 3)]))
    ing = ingest_zeek.ZeekIngest(cfg, [d], follow=True, state_path=state, rules=False, settle_s=0)
    ing.poll()
    assert ing.flush().num_rows == 3
    with (d / "conn.log").open("ab") as fh:  # two lines and the first half of a third
        fh.write(b"".join("\t".join(conn_row(n)).encode() + b"\n" for n in (4, 5)))
        fh.write("\t".join(conn_row(6)).encode()[:20])
    ing.poll()
    assert ing.flush().num_rows == 2  # the half line waits for its newline
    with (d / "conn.log").open("ab") as fh:
        fh.write("\t".join(conn_row(6)).encode()[20:] + b"\n" + "\t".join(conn_row(7)).encode() + b"\n")
    # rotated (renamed and compressed away) before the sensor read the end of it; a new conn.log starts
    rotate(d, "2026-11-26-10-00-00")
    (d / "conn.log").write_bytes(conn_log([conn_row(8)], opened="2026-11-26-11-00-00"))
    ing.poll()
    assert sorted(ing.flush().column("uid").to_pylist()) == [f"CFollow{n:011d}" for n in (6, 7, 8)]
    assert ing.problems[zb.ROTATED] == 1
    ing.close()
    # stopped; meanwhile Zeek writes one more line and rotates again; then the sensor restarts from its state
    with (d / "conn.log").open("ab") as fh:
        fh.write("\t".join(conn_row(9)).encode() + b"\n")
    rotate(d, "2026-11-26-11-00-00")
    (d / "conn.log").write_bytes(conn_log([conn_row(10)], opened="2026-11-26-12-00-00"))
    ing2 = ingest_zeek.ZeekIngest(cfg, [d], follow=True, state_path=state, rules=False, settle_s=0)
    ing2.poll()
    assert sorted(ing2.flush().column("uid").to_pylist()) == [f"CFollow{n:011d}" for n in (9, 10)]
    ing2.close()
    assert uids_in(lake) == [f"CFollow{n:011d}" for n in range(1, 11)]  # each line exactly once
    assert not ing2.problems[zb.LOST]


def test_a_one_shot_run_with_a_state_file_reads_only_what_is_new(tmp_path: Path) -> None:
    d, state = tmp_path / "spool", tmp_path / "state.json"
    d.mkdir()
    cfg = config(tmp_path)
    (d / "conn.log").write_bytes(conn_log([conn_row(1)]))
    assert ingest(cfg, d, state_path=state, rules=False).table.num_rows == 1
    with (d / "conn.log").open("ab") as fh:
        fh.write("\t".join(conn_row(2)).encode() + b"\n")
    assert ingest(cfg, d, state_path=state, rules=False).table.column("uid").to_pylist() == ["CFollow00000000002"]
    rotate(d, "2026-11-26-10-00-00")
    assert ingest(cfg, d, state_path=state, rules=False).table.num_rows == 0  # the rotated file was read
    assert uids_in(Path(cfg.sensor.lake)) == ["CFollow00000000001", "CFollow00000000002"]


def test_a_file_gone_while_stopped_is_reported_lost(tmp_path: Path) -> None:
    d, state = tmp_path / "spool", tmp_path / "state.json"
    d.mkdir()
    cfg = config(tmp_path)
    (d / "conn.log").write_bytes(conn_log([conn_row(1)]))
    ingest(cfg, d, state_path=state, rules=False, follow=False)
    (d / "conn.log").unlink()  # archived elsewhere while the sensor was stopped
    (d / "conn.log").write_bytes(conn_log([conn_row(2)], opened="2026-11-26-11-00-00"))
    result = ingest(cfg, d, state_path=state, rules=False)
    assert result.problems[zb.LOST] == 1 and result.table.column("uid").to_pylist() == ["CFollow00000000002"]


def _wait_rows(lake: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((lake / "flows").glob("date=*/hour=*/*.parquet")) and lake_table(lake).num_rows >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"lake never reached {n} rows")


def test_follow_in_a_subprocess_stops_on_sigterm_after_a_final_flush(tmp_path: Path) -> None:
    d, state, lake = tmp_path / "spool", tmp_path / "state.json", tmp_path / "lake"
    d.mkdir()
    (d / "conn.log").write_bytes(conn_log([conn_row(n) for n in (1, 2)]))
    cmd = [sys.executable, "-m", "sensor.cli", "ingest-zeek", str(d), "--follow", "--state", str(state),
           "--lake", str(lake), "--no-rules", "--set", "sensor.interval=1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(lake, 2, proc)
        with (d / "conn.log").open("ab") as fh:
            fh.write("\t".join(conn_row(3)).encode() + b"\n")
        rotate(d, "2026-11-26-10-00-00")
        (d / "conn.log").write_bytes(conn_log([conn_row(4)], opened="2026-11-26-11-00-00"))
        _wait_rows(lake, 4, proc)
        with (d / "conn.log").open("ab") as fh:  # written just before the stop: the final flush has it
            fh.write("\t".join(conn_row(5)).encode() + b"\n")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Wrote" in out and "Flows by role pair and application" in out
    assert uids_in(lake) == [f"CFollow{n:011d}" for n in range(1, 6)]
    assert state.exists()


# ------------------------------------------------------------------------------------------ mapping


def test_tls12_flow_from_conn_ssl_and_x509(tmp_path: Path) -> None:
    result = ingest(config(tmp_path), DATA / "ssl-tls-1.2", shared("ssl-tls-1.2"))
    (row,) = result.table.to_pylist()
    assert row["ts"] == datetime.fromtimestamp(1357328848.512314, UTC) and row["source"] == "zeek"
    assert (row["uid"], row["interval_seq"], row["service"], row["app"]) == ("CHhAvVGS1DHFjwGM9", 0, "https", "tls")
    assert (row["tls_version"], row["tls_cipher"]) == ("TLSv12", "0x0004")  # TLS_RSA_WITH_RC4_128_MD5
    assert row["tls_server_cert"] is True and row["tls_cert_requested"] is False and row["tls_client_cert"] is None
    assert row["tls_cert_names"] == ["*.taleo.net", "taleo.net"] and row["tls_alert"] is None
    assert (row["orig_pkts"], row["resp_pkts"], row["orig_bytes"], row["resp_ip_bytes"]) == (13, 9, 713, 6516)
    assert row["media_encrypted"] is None and row["orig_first_byte"] is None
    assert result.report is not None
    assert [(r.rule.id, r.by_severity) for r in result.report.evaluation.results if r.findings] == [
        ("R6", {"violation": 1})
    ]


def test_certificate_request_and_empty_client_chain(tmp_path: Path) -> None:
    (row,) = ingest(config(tmp_path), shared("ssl-certificate-request-info")).table.to_pylist()
    assert row["tls_cert_requested"] is True  # 'r' in ssl_history, requested_client_certificate_authorities
    assert row["tls_client_cert"] is False  # 'X' (an empty client Certificate) and client_cert_chain_fps (empty)
    assert row["tls_server_cert"] is True and row["tls_alert"] == "40"  # handshake_failure
    assert (row["tls_cipher"], row["ip_version"], row["orig_pkts"]) == ("0xC030", 6, None)  # no conn.log here
    assert row["ts"] == datetime.fromtimestamp(TS, UTC)  # ssl.log alone: its (substituted) ts


def test_without_a_substitute_a_flow_needs_a_real_ts(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    alone = ingest(cfg, shared("ssl-certificate-request-info"), ts_substitute=None)
    assert alone.table.num_rows == 0 and alone.dropped_no_ts == 1 and alone.problems[zb.BAD_TS] == 1
    assert "1 flow(s) without any usable ts dropped" in ingest_zeek.problem_lines(alone)
    # the hand-written lync.log row of the same connection carries a real ts: the flow is kept
    both = ingest(cfg, shared("ssl-certificate-request-info"), DATA / "ssl-certificate-request-info",
                  ts_substitute=None)  # fmt: skip
    (row,) = both.table.to_pylist()
    assert row["ts"] == datetime.fromtimestamp(1677605225.547927, UTC)
    assert (row["orig_first_byte"], row["resp_first_byte"], row["tls_cert_requested"]) == (22, 22, True)


@pytest.mark.parametrize(
    ("ssl", "lync", "want"),
    [
        # a client chain: mutual TLS
        ({"version": "TLSv12", "ssl_history": "CsxrnXYGIiFf", "cert_chain_fps": ["a"],
          "client_cert_chain_fps": ["b"]}, {}, {"tls_client_cert": True, "tls_cert_requested": True}),
        # CertificateRequest, then ClientKeyExchange without a Certificate: not mutual TLS
        ({"version": "TLSv12", "ssl_history": "CsxrnGIi", "cert_chain_fps": ["a"], "client_cert_chain_fps": []},
         {}, {"tls_client_cert": False, "tls_cert_requested": True}),
        # no request: nothing to say about a client certificate
        ({"version": "TLSv12", "ssl_history": "CsxknGIi"}, {}, {"tls_client_cert": None, "tls_cert_requested": False}),
        # TLS 1.3: the certificate exchange is encrypted
        ({"version": "TLSv13", "ssl_history": "CsiI"}, {}, {"tls_server_cert": False, "tls_client_cert": None}),
        # an older Zeek without ssl_history: the certificate-request-info column, a completed handshake
        ({"version": "TLSv12", "requested_client_certificate_authorities": [], "client_cert_chain_fps": [],
          "established": True}, {}, {"tls_cert_requested": True, "tls_client_cert": False}),
        # the package's lync.log says the server asked
        ({"version": "TLSv12"}, {"cert_request": True}, {"tls_cert_requested": True, "tls_client_cert": None}),
        # nothing visible at all
        ({"version": "TLSv12"}, {}, {"tls_cert_requested": None, "tls_server_cert": None, "tls_pseudo": None}),
        # MS-TURN pseudo-TLS: ServerHello + ServerHelloDone and nothing else
        ({"version": "TLSv10", "cipher": "TLS_RSA_WITH_RC4_128_SHA", "ssl_history": "Csn"}, {},
         {"tls_pseudo": True, "tls_version": None, "tls_cipher": None}),
        ({"version": "SSLv2", "cipher": "SSLv20_CK_RC4_128_WITH_MD5"}, {},
         {"tls_version": "SSLv2", "tls_sslv2_hello": True, "tls_cipher": "0x010080"}),
        ({"version": "TLSv13-draft23", "cipher": "unknown-4865"}, {},
         {"tls_version": "TLSv13", "tls_cipher": "0x1301"}),
        ({"version": "TLSv12", "cipher": "TLS_DH_ANON_WITH_RC4_128_MD5", "last_alert": "unknown-250"}, {},
         {"tls_alert": "250"}),
    ],
)  # fmt: skip
def test_tls_facts_from_ssl_log(ssl: dict[str, object], lync: dict[str, object], want: dict[str, object]) -> None:
    facts, _, _ = zf.tls_facts(ssl, lync, zf.CipherNames(Catalogue.load()))
    assert {k: facts[k] for k in want} == want


def test_apps_and_unknown_ciphers() -> None:
    names = zf.CipherNames(Catalogue.load())
    assert names.code("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384") == ("0xC030", True)
    assert names.code("TLS_ECDHE_RSA_WITH_ARIA_256_GCM_SHA384") == (None, False)  # not in cipher_suites.csv
    for version, app in (("DTLSv12", "dtls"), ("SSLv2", "sslv2"), ("TLSv11", "tls")):
        assert zf.tls_facts({"version": version}, {}, names)[1] == app


def test_sip_log_marks_plaintext_sip_without_uris(tmp_path: Path) -> None:
    result = ingest(config(tmp_path), shared("sip-wireshark"))
    rows = {r["uid"]: r for r in result.table.to_pylist()}
    assert len(rows) == 9 and all(r["sip_plain"] and r["app"] == "sip" and r["proto"] == "udp" for r in rows.values())
    first = rows["CHhAvVGS1DHFjwGM9"]
    assert (first["sip_methods"], first["sip_status_codes"], first["sip_messages"]) == (
        ["REGISTER"],
        [100, 401, 403],
        5,
    )
    assert rows["CUM0KZ3MLUfNB0cl11"]["sip_methods"] == ["CANCEL", "INVITE"]
    text = repr(result.table.to_pylist())
    assert "sip:" not in text and "voi18063" not in text and "97239287044" not in text  # URIs and numbers never kept
    assert result.report is not None and result.report.evaluation.violations  # SIP over UDP across the perimeter


def test_lync_log_facts_from_the_package(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE_CONFIG, env={}, overrides=[f'sensor.lake="{tmp_path / "lake"}"'])
    result = ingest(cfg, DATA / "lync-package")
    rows = {r["uid"]: r for r in result.table.to_pylist()}
    media, sip_tcp, clear = rows["CLyncMedia00000001"], rows["CLyncSipTcp0000001"], rows["CLyncClear00000001"]
    assert (media["app"], media["media_encrypted"], media["service"]) == ("rtp", None, "media-audio")
    assert (media["orig_first_byte"], media["orig_role"], media["resp_role"]) == (0x80, "mediation", "pstn_gateway")
    assert (sip_tcp["sip_plain"], sip_tcp["app"], sip_tcp["sip_methods"], sip_tcp["proto"]) == (
        True,
        "sip",
        None,
        "tcp",
    )
    assert (clear["orig_first_byte"], clear["sip_plain"]) == (0x53, True)
    assert result.report is not None
    got = findings_key(result.report.evaluation.findings.to_pylist())
    assert ("R1", "violation", "10.0.1.10", 50111, "10.0.2.10", 5061, "tcp") in got  # cleartext FE -> Edge
    assert ("R2", "warning", "10.0.3.5", 51000, "10.0.1.20", 5068, "tcp") in got  # E2: TCP gateway trunk
    assert not [k for k in got if k[0] in ("R7", "R8") and k[1] == "violation"]  # media protection unknown


# ------------------------------------------------------------------------------------------ pcap and Zeek agree

# Facts both front ends see; anything else is listed below with the reason it differs.
COMMON = ("orig_h", "orig_p", "resp_h", "resp_p", "proto", "ip_version", "orig_role", "resp_role", "service",
          "service_source", "app", "sip_plain")  # fmt: skip
TLS_COMMON = ("tls_version", "tls_cipher", "tls_sni", "tls_server_cert", "tls_cert_requested", "tls_client_cert",
              "tls_resumed", "tls_pseudo", "tls_alert")  # fmt: skip
# What differs, and why (asserted below for each trace):
#   uid                 Zeek's own uid vs the pcap front end's hash of sensor, 5-tuple and start
#   orig/resp_first_byte  not in Zeek's stock logs (the package's lync.log has them)
#   tls_record_version, tls_client_version, tls_client_max_version  ssl.log has the negotiated version only
#   tls_sslv2_hello     ssl.log does not say which record format the ClientHello used (null unless SSLv2)
#   media_*, rtp_*, sdp_*, stun_*, ms_turn  Zeek has no RTP/SRTP, SDP or STUN facts: null, never a verdict
#   counters, ts        from conn.log (one record per connection, at its end); null/the ts of the fact log without
NOT_FROM_ZEEK = ("tls_record_version", "tls_client_version", "tls_client_max_version", "media_encrypted",
                 "media_confidence", "media_evidence", "sdp_protos", "sdp_crypto")  # fmt: skip


def _pcap(cfg: Config, pcap: Path) -> list[dict[str, object]]:
    return sorted(flows_by_uid(Analyzer(cfg).run([pcap]).table), key=lambda f: str(f["ts"]))


def _check(cfg: Config, table: pa.Table, lake: Path) -> list[tuple[object, ...]]:
    report = Checker(cfg).check_table(table, lake, now=NOW, store=False)
    return findings_key(report.evaluation.findings.to_pylist())


def test_same_capture_tls12_pcap_and_zeek(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (p,) = _pcap(cfg, shared("ssl-tls-1.2") / "tls1.2.pcap")
    z_table = ingest(cfg, DATA / "ssl-tls-1.2", shared("ssl-tls-1.2"), rules=False).table
    (z,) = flows_by_uid(z_table)
    for k in (*COMMON, *TLS_COMMON, "tls_cert_names"):
        assert p[k] == z[k], k
    # the hand-written conn.log copies tshark's counts: equal by construction, so the join is what is tested
    for k in ("ts", "ts_end", "duration", "orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes",
              "resp_ip_bytes"):  # fmt: skip
        assert p[k] == pytest.approx(z[k]) if k == "duration" else p[k] == z[k], k
    assert p["uid"] != z["uid"]
    assert (p["orig_first_byte"], z["orig_first_byte"]) == (22, None)
    assert (p["tls_client_max_version"], p["tls_sslv2_hello"]) == ("TLSv12", False)
    assert all(z[k] is None for k in (*NOT_FROM_ZEEK, "tls_sslv2_hello"))
    assert (
        _check(cfg, Analyzer(cfg).run([shared("ssl-tls-1.2") / "tls1.2.pcap"]).table, tmp_path)
        == _check(cfg, z_table, tmp_path)
        == [("R6", "violation", "10.0.0.80", 56637, "68.233.76.12", 443, "tcp")]
    )


def test_same_capture_certificate_request_pcap_and_zeek(tmp_path: Path) -> None:
    # make both ends Lync servers, so that R1 (mutual TLS) judges the connection
    site = (
        '[topology.roles]\nfront_end = ["fd42:496a:d659:bb85::1"]\n'
        'director = ["fd42:496a:d659:bb85:216:3eff:fe6a:a257"]\n'
    )
    cfg = config(tmp_path, site)
    pcap = shared("ssl-certificate-request-info") / "certificate-request-failed.pcap"
    (p,) = _pcap(cfg, pcap)
    z_table = ingest(cfg, shared("ssl-certificate-request-info"), DATA / "ssl-certificate-request-info",
                     rules=False).table  # fmt: skip
    (z,) = flows_by_uid(z_table)
    for k in (*COMMON, *TLS_COMMON, "orig_first_byte", "resp_first_byte"):  # first bytes: the hand-written lync.log
        assert p[k] == z[k], k
    assert (p["orig_role"], p["tls_cert_requested"], p["tls_client_cert"]) == ("front_end", True, False)
    # no x509.log in that folder: the server certificate's names are not visible from Zeek
    assert (p["tls_cert_names"], z["tls_cert_names"]) == (["testing.zeek.org"], None)
    assert (p["orig_pkts"], z["orig_pkts"]) == (6, None)  # no conn.log either: ssl.log-only flow, counters null
    want = [
        ("R1", "warning", "fd42:496a:d659:bb85::1", 52464, "fd42:496a:d659:bb85:216:3eff:fe6a:a257", 3000, "tcp"),
        ("R17", "warning", "fd42:496a:d659:bb85::1", 52464, "fd42:496a:d659:bb85:216:3eff:fe6a:a257", 3000, "tcp"),
    ]
    assert _check(cfg, Analyzer(cfg).run([pcap]).table, tmp_path) == _check(cfg, z_table, tmp_path) == want


def test_same_capture_sip_pcap_and_zeek(tmp_path: Path) -> None:
    # Zeek closes an idle UDP connection after udp_inactivity_timeout (1 min): the same idle timeout makes the
    # pcap front end cut the trace into the same nine flows.
    cfg = config(tmp_path, overrides=("sensor.idle_timeout=60",))
    pcap_table = Analyzer(cfg).run([shared("sip-wireshark") / "wireshark.pcap"]).table
    pcap_flows = sorted(flows_by_uid(pcap_table), key=lambda f: str(f["ts"]))
    z_table = ingest(cfg, shared("sip-wireshark"), rules=False).table
    by_uid = {f["uid"]: f for f in flows_by_uid(z_table)}
    order = list(dict.fromkeys(r.fields["uid"] for r in zs.read_log(shared("sip-wireshark") / "sip.log")))
    zeek_flows = [by_uid[u] for u in order]  # the masked ts leave only the log's order
    assert len(pcap_flows) == len(zeek_flows) == 9
    for i, (p, z) in enumerate(zip(pcap_flows, zeek_flows, strict=True)):
        for k in COMMON:
            assert p[k] == z[k], (i, k)
        pm, zm = set(p["sip_methods"]), set(z["sip_methods"])  # type: ignore[arg-type]
        pc, zc = set(p["sip_status_codes"]), set(z["sip_status_codes"])  # type: ignore[arg-type]
        assert zm <= pm and zc <= pc and int(z["sip_messages"]) <= int(p["sip_messages"])  # type: ignore[call-overload]
        if i in (4, 8):
            # sip.log has a line per transaction (request and response): an ACK after a final non-2xx
            # response belongs to the INVITE's transaction and gets no line of its own
            assert pm - zm == {"ACK"} and zc == pc
        else:
            assert (zm, zc) == (pm, pc), i
    # sip_messages: Zeek folds retransmissions (one INVITE sent three times is one request)
    assert [z["sip_messages"] for z in zeek_flows] == [5, 4, 4, 5, 5, 5, 8, 15, 11]
    assert [p["sip_messages"] for p in pcap_flows] == [5, 4, 4, 5, 18, 8, 8, 16, 13]
    p_find, z_find = _check(cfg, pcap_table, tmp_path), _check(cfg, z_table, tmp_path)
    assert p_find == z_find and {f[:2] for f in z_find} == {("R2", "violation")} and len(z_find) == 9


def test_same_capture_http_pcap_and_zeek(tmp_path: Path) -> None:
    d = tmp_path / "tsv"
    d.mkdir()
    shutil.copy(shared("http-json-and-tsv") / "http.log.tsv", d / "http.log")
    cfg = config(tmp_path)
    pcap_flows = _pcap(cfg, shared("http-json-and-tsv") / "http-non-printable-characters.pcap")
    z = {(f["orig_p"]): f for f in flows_by_uid(ingest(cfg, d, rules=False).table)}
    for p in pcap_flows:
        for k in (*COMMON, "http_method", "http_host", "http_path", "http_paths", "http_requests"):
            assert p[k] == z[p["orig_p"]][k], k


# ------------------------------------------------------------------------------------------ rules on Zeek nulls


NULL_FROM_ZEEK = (*NOT_FROM_ZEEK, "orig_first_byte", "resp_first_byte", "sdp_media_ports", "sdp_encryption",
                  "rtp_payload_types", "rtp_ssrcs", "rtp_packets", "rtcp_packets", "stun_messages",
                  "ms_turn")  # fmt: skip


def zeek_view(table: pa.Table) -> pa.Table:
    """A pcap-derived table with what Zeek's logs cannot tell set to null (the mapping's own rules)."""
    rows = table.to_pylist()
    for r in rows:
        for k in NULL_FROM_ZEEK:
            r[k] = None
        if r["tls_version"] != "SSLv2":
            r["tls_sslv2_hello"] = None
        if r["app"] in ("rtp", "srtp", "rtcp", "srtcp", "stun", "ms-turn"):
            r["app"] = None  # stock Zeek identifies neither media nor STUN
        if r["proto"] == "tcp" and r["sip_plain"]:  # Zeek's SIP analyzer parses UDP only
            r.update(sip_plain=None, sip_messages=None, sip_methods=None, sip_status_codes=None)
            r["app"] = None if r["app"] == "sip" else r["app"]
        if not r["sip_plain"] and r["app"] not in ("tls", "sslv2", "http"):
            r["sip_plain"] = None
    return pa.Table.from_pylist(rows, schema=table.schema)


@pytest.mark.parametrize("scenario", ["rules", "labelled"])
def test_synthetic_lync_traffic_seen_through_zeek_gains_no_finding(tmp_path: Path, scenario: str) -> None:
    """Every rule of queries/ over the rule cases (a flow per rule that must and must not fire) and the labelled
    Lync scenario, as packets see them and as Zeek's logs would: no violation, no finding at all, may appear
    because a fact Zeek cannot supply is null."""
    from sensor.synth import build_labelled, write
    from sensor.synth.rule_cases import build_rule_cases
    from tests.unit.test_rules import SITE

    pcap = tmp_path / f"{scenario}.pcap"
    write(build_rule_cases() if scenario == "rules" else build_labelled(7), pcap)
    cfg = config(tmp_path, SITE)
    table = Analyzer(cfg).run([pcap]).table
    checker = Checker(cfg)
    before = checker.check_table(table, tmp_path, now=NOW, store=False).evaluation.findings.to_pylist()
    after = checker.check_table(zeek_view(table), tmp_path, now=NOW, store=False).evaluation.findings.to_pylist()
    keys_before = {(f["rule_id"], f["uid"], f["severity"]) for f in before}
    new = [(f["rule_id"], f["evidence"]) for f in after if (f["rule_id"], f["uid"], f["severity"]) not in keys_before]
    assert not [n for n in new if n[0]], new  # nothing new at all, and in particular no violation
    assert len(after) < len(before)  # the cleartext checks need the first byte: fewer findings, never more


def test_unidentified_udp_on_the_edge_internal_interface_is_not_a_violation(tmp_path: Path) -> None:
    """R11 exempts relayed media and ICE checks by their app (srtp, stun); Zeek cannot name them, so a relay
    flow from the Edge internal 3478 must not become an 'undocumented service' violation (queries/ change)."""
    d = tmp_path / "logs"
    d.mkdir()
    (d / "conn.log").write_bytes(
        _tsv(
            "conn",
            CONN_FIELDS,
            CONN_TYPES,
            [
                [
                    "1795687200.000000",
                    "CRelay",
                    "10.0.2.10",
                    "3478",
                    "10.0.5.61",
                    "50020",
                    "udp",
                    "-",
                    "20.0",
                    "900",
                    "900",
                ],
            ],
            "2026-11-26-10-00-00",
        )
    )
    cfg = load_config(EXAMPLE_CONFIG, env={}, overrides=[f'sensor.lake="{tmp_path / "lake"}"'])
    result = ingest(cfg, d)
    assert result.report is not None and not result.report.evaluation.findings.num_rows
    # with lync.log's first byte (not RTP-shaped: a real undocumented service) R11 judges it again
    (d / "lync.log").write_bytes(
        _tsv(
            "lync",
            ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "orig_first_byte"],
            ["time", "string", "addr", "port", "addr", "port", "enum", "count"],
            [["1795687200.000000", "CRelay", "10.0.2.10", "3478", "10.0.5.61", "50020", "udp", "65"]],
            "2026-11-26-10-00-00",
        )
    )
    result = ingest(cfg, d)
    assert result.report is not None
    assert [(f["rule_id"], f["severity"]) for f in result.report.evaluation.findings.to_pylist()] == [
        ("R11", "violation")
    ]


# ------------------------------------------------------------------------------------------ command line


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], capture_output=True, text=True, timeout=300)


def test_ingest_then_check_the_same_findings(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    r = run("ingest-zeek", str(DATA / "ssl-tls-1.2"), str(shared("ssl-tls-1.2")), "--lake", str(lake))
    assert r.returncode == 1, r.stderr  # R6: RC4
    assert "Flows by role pair and application" in r.stdout and "TLSv12" in r.stdout
    assert re.search(r"R6\s+1\s+0\s+0", r.stdout), r.stdout
    assert "warning: zeek logs: 4 line(s) with an unparseable ts" in r.stderr
    (row,) = lake_table(lake).to_pylist()
    assert (row["source"], row["tls_cipher"], str(row["date"]), row["hour"]) == ("zeek", "0x0004", "2013-01-04", 19)
    # `check` does not care which front end wrote the lake
    c = run("check", "--lake", str(lake), "--json")
    assert c.returncode == 1, c.stderr
    assert '"rule_id": "R6"' in c.stdout and '"severity": "violation"' in c.stdout
    assert run("ingest-zeek", str(DATA / "ssl-tls-1.2"), "--lake", str(tmp_path / "l2"), "--no-rules").returncode == 0
    bad = run("ingest-zeek", str(tmp_path / "nowhere"), "--lake", str(lake))
    assert bad.returncode == 2 and "not a directory of Zeek logs" in bad.stderr and "Traceback" not in bad.stderr


def test_zeek_topology_file(tmp_path: Path) -> None:
    out = tmp_path / "zeek-topology.tsv"
    r = run("zeek-topology", "--config", str(EXAMPLE_CONFIG), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = zs.read_log(out, log_name="topology", ts_substitute=0.0)
    got = [(x.fields["cidr"], x.fields["kind"], x.fields["name"]) for x in rows]
    assert ("10.0.1.10/32", "role", "front_end") in got and ("10.0.0.0/8", "zone", "internal") in got
    assert ("10.0.2.0/24", "zone", "perimeter") in got and len({g[0] + g[1] for g in got}) == len(got)
    assert out.read_text().splitlines()[1] == "#fields\tcidr\tkind\tname"  # what the package's Input table reads
    # the same answer as the sensor's topology for every role address
    cfg = load_config(EXAMPLE_CONFIG, env={})
    for role, addrs in cfg.topology.roles.items():
        for a in addrs:
            assert (a if "/" in a else f"{a}/32", "role", role) in got


# ------------------------------------------------------------------------------------------ the Zeek package


def test_zeek_scripts_parse_and_are_formatted() -> None:
    # the venv's own console script first: the tests run from .venv/bin without the venv on PATH
    beside = Path(sys.executable).parent / "zeek-script"
    tool = str(beside) if beside.exists() else shutil.which("zeek-script")
    if tool is None:
        pytest.skip("zeekscript is not installed (pip install -e '.[dev]')")
    scripts = sorted(PACKAGE.rglob("*.zeek"))
    assert {s.name for s in scripts} >= {"__load__.zeek", "main.zeek"}
    for script in scripts:
        r = subprocess.run([tool, "parse", "--quiet", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: zeek-script parse failed ({r.returncode}): {r.stdout}{r.stderr}"
        fmt = subprocess.run([tool, "format", str(script)], capture_output=True, text=True)
        assert fmt.returncode == 0 and fmt.stdout == script.read_text(), f"{script}: run zeek-format -i on it"


def test_lync_log_of_the_package_is_what_the_sensor_reads() -> None:
    script = (PACKAGE / "scripts" / "main.zeek").read_text()
    fields = re.findall(r"^\s*(\w+):\s*([\w\[\] ]+?)\s*&log", script[script.index("type Info: record {") :], re.M)
    names = []
    for name, _ in fields[:12]:
        names += ["id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"] if name == "id" else [name]
        if name == "sip_tcp":
            break
    header = next(
        ln for ln in (DATA / "lync-package" / "lync.log").read_text().splitlines() if ln.startswith("#fields")
    )
    assert names == header.split("\t")[1:]
    # every field of a log record carries a ## comment, as zeek's own scripts do
    lines = script.splitlines()
    for i, ln in enumerate(lines):
        if re.match(r"^\s+\w+:\s.*&log", ln):
            assert lines[i - 1].strip().startswith("##"), ln
    assert "orig_role: string &log &optional;" in script and "resp_role: string &log &optional;" in script
    assert "ssl_certificate_request" in script and "@load-sigs ./lync.sig" in script
    sigs = (PACKAGE / "scripts" / "lync.sig").read_text()
    for sig in re.findall(r"^signature (\S+) \{", sigs, re.M):
        assert f'["{sig}"] = Signatures::SIG_IGNORE' in script, sig


def test_zkg_meta() -> None:
    meta = configparser.ConfigParser()
    meta.read(PACKAGE / "zkg.meta")
    pkg = meta["package"]
    assert (PACKAGE / pkg["script_dir"] / "__load__.zeek").exists()
    assert pkg["depends"].startswith("zeek >=") and pkg["description"]


# ------------------------------------------------------------------------------------------ bad values and caps


def _tls12_logs(d: Path) -> dict[str, str]:
    """The tls1.2.pcap logs (conn.log of tests/data, the real ssl.log and x509.log) as text, to mutate."""
    d.mkdir(parents=True, exist_ok=True)
    return {
        "conn": (DATA / "ssl-tls-1.2" / "conn.log").read_text(),
        "ssl": (shared("ssl-tls-1.2") / "ssl.log").read_text(),
        "x509": (shared("ssl-tls-1.2") / "x509.log").read_text(),
    }


def _row(text: str) -> list[str]:
    return next(ln for ln in text.splitlines() if ln and not ln.startswith("#")).split("\t")


def _fields(text: str) -> list[str]:
    return next(ln for ln in text.splitlines() if ln.startswith("#fields")).split("\t")[1:]


def test_a_negative_counter_is_a_bad_value_and_the_flow_stays(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    logs = _tls12_logs(d)
    conn = logs["conn"]
    row = _row(conn)
    bad = row.copy()
    bad[_fields(conn).index("orig_pkts")] = "-1"
    logs["conn"] = conn.replace("\t".join(row), "\t".join(bad))
    for name, text in logs.items():
        (d / f"{name}.log").write_text(text)
    result = ingest(config(tmp_path / "c"), d, rules=False)
    (rec,) = result.table.to_pylist()
    assert rec["uid"] == "CHhAvVGS1DHFjwGM9" and rec["orig_pkts"] is None and rec["resp_pkts"] == 9
    assert rec["tls_version"] == "TLSv12" and rec["tls_cipher"] == "0x0004"  # the rest of the line and the joins
    assert result.problems[zb.BAD_VALUE] == 1


def test_nan_xff_and_a_mutated_header_mid_file_cost_one_field_each(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    logs = _tls12_logs(d)
    conn, names = logs["conn"], _fields(logs["conn"])
    row = _row(conn)
    nan = row.copy()
    nan[names.index("orig_bytes")] = "NaN"  # int("NaN")
    xff = row.copy()
    xff[names.index("uid")] = (
        "CHhAvVGS1DHFj\\xffM9"  # Zeek's escape of a byte that is not UTF-8: kept, stored as U+FFFD
    )
    xff[names.index("resp_bytes")] = "60\xff36"  # the raw byte in a count
    xff[names.index("id.orig_p")] = "56638"
    # Zeek (or a corrupted file) switches schema mid-file, with types that do not fit the values
    mutated = ["count" if t == "string" else "bool" if t == "count" else "string" if t == "port" else t
               for t in next(ln for ln in conn.splitlines() if ln.startswith("#types")).split("\t")[1:]]  # fmt: skip
    late = row.copy()
    late[names.index("uid")] = "CLateSchema000001"
    late[names.index("id.orig_p")] = "56639"
    late[names.index("resp_pkts")] = "T"  # a bool where the sensor reads a count
    body = [ln for ln in conn.splitlines() if not ln.startswith("#close")]
    body.remove("\t".join(row))
    body += ["\t".join(nan), "\t".join(xff)]
    body += ["#fields\t" + "\t".join(names), "#types\t" + "\t".join(mutated), "\t".join(late)]
    (d / "conn.log").write_bytes(("\n".join(body) + "\n").encode("utf-8", "surrogateescape"))
    (d / "ssl.log").write_text(logs["ssl"])
    result = ingest(config(tmp_path / "c"), d, rules=False)
    rows = {r["orig_p"]: r for r in result.table.to_pylist()}
    assert sorted(rows) == [56637, 56638, 56639]
    assert rows[56637]["orig_bytes"] is None and rows[56637]["resp_bytes"] == 6036
    assert rows[56637]["tls_version"] == "TLSv12"
    assert rows[56638]["uid"] == "CHhAvVGS1DHFj\ufffdM9" and rows[56638]["resp_bytes"] is None
    assert rows[56638]["orig_pkts"] == 13
    # the sensor's own type of each field it reads, whatever the new #types say
    assert rows[56639]["resp_pkts"] is None and rows[56639]["orig_pkts"] == 13 and rows[56639]["duration"] > 3
    # three fields the sensor reads, and three the new #types declare wrongly (conn_state and history as
    # counts, missed_bytes as a bool): each costs its field only
    assert result.problems[zb.BAD_VALUE] == 6 and result.problems[zb.HEADER_CHANGE] == 1
    assert not result.problems[zb.MALFORMED]


def test_json_deep_nesting_lone_surrogates_and_wrong_types(tmp_path: Path) -> None:
    """The real JSON http.log with one mutation per line; every line and every other field is kept."""
    lines = (shared("http-json-and-tsv") / "http.log.json").read_text().splitlines()
    data = [ln for ln in lines if ln.startswith("{")]
    assert len(data) == 4
    depth = 200_000  # RecursionError in Python's JSON decoder
    data[0] = data[0][:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
    data[1] = data[1].replace('"uri":"/printable_', '"uri":"/\\ud800printable_')  # a lone surrogate
    data[2] = data[2].replace('"trans_depth":1', '"trans_depth":1e400').replace('"host":"172.24.0.3"', '"host":5')
    data[3] = data[3].replace('"host":"172.24.0.3"', '"host":["a",{"b":{"c":{"d":{"e":1}}}}]')
    assert data[2].count("1e400") == 1 and '"host":5' in data[2] and '"host":["a"' in data[3]
    d = tmp_path / "logs"
    d.mkdir()
    (d / "http.log").write_text("\n".join(data) + "\n")
    result = ingest(config(tmp_path / "c"), d, rules=False)
    rows = {r["uid"]: r for r in result.table.to_pylist()}
    assert len(rows) == 4
    by_order = [rows[u] for u in (ln.split('"uid":"')[1].split('"')[0] for ln in data)]
    assert by_order[0]["http_path"] == "/regular_file.html" and by_order[0]["http_method"] == "GET"
    assert by_order[1]["http_path"].startswith("/%EF%BF%BDprintable_")  # U+FFFD, %-encoded as sent
    assert by_order[2]["http_host"] is None and by_order[2]["http_method"] == "GET"
    assert by_order[2]["http_path"] == "/non_printable_%07"
    assert by_order[3]["http_host"] is None and by_order[3]["http_method"] == "GET"
    # deep value (1), surrogate (1), an infinite trans_depth and a number for a host (2), a list for a host (1)
    assert result.problems[zb.BAD_VALUE] == 5
    assert not result.problems[zb.MALFORMED]


def test_json_ssl_values_of_the_wrong_type(tmp_path: Path) -> None:
    """The real TSV ssl.log and conn.log as JSON lines, with values of types the columns cannot take."""
    import json

    d = tmp_path / "logs"
    d.mkdir()
    (conn,) = zs.read_log(DATA / "ssl-tls-1.2" / "conn.log")
    (ssl,) = zs.read_log(shared("ssl-tls-1.2") / "ssl.log", ts_substitute=TS)
    c = dict(conn.fields, resp_pkts=2**64, orig_ip_bytes=True, duration=float("nan"))
    s = dict(ssl.fields, ts=conn.ts, resumed="yes", cert_chain_fps=7, server_name=["x"], established=None)
    (d / "conn.log").write_text(json.dumps(c) + "\n")  # NaN: Python's JSON (and jq's) extension
    (d / "ssl.log").write_text(json.dumps(s) + "\n")
    result = ingest(config(tmp_path / "c"), d, rules=False)
    (rec,) = result.table.to_pylist()
    assert rec["resp_pkts"] is None and rec["orig_ip_bytes"] is None and rec["duration"] == 0.0
    assert rec["orig_pkts"] == 13 and rec["tls_version"] == "TLSv12"
    assert rec["tls_resumed"] is None and rec["tls_sni"] is None and rec["tls_server_cert"] is True
    assert result.problems[zb.BAD_VALUE] == 6


# Peak RSS of the reader alone. ru_maxrss of a process forked from pytest starts at pytest's own peak (Linux
# carries it across exec), so a fresh interpreter runs the reader as its child and reads RUSAGE_CHILDREN.
READER = """
import sys
from collections import Counter
from pathlib import Path
from sensor.sources.zeek import base as zb
from sensor.sources.zeek import logs as zs
problems = Counter()
recs = zs.read_log(Path(sys.argv[1]), problems=problems)
print(len(recs), problems[zb.LONG_LINE])
"""
RSS_PROBE = """
import resource, subprocess, sys
out = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], capture_output=True, text=True, check=True)
print(out.stdout.strip(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def test_a_300_mb_line_in_a_gzip_is_cut_in_flat_memory(tmp_path: Path) -> None:
    conn = (DATA / "ssl-tls-1.2" / "conn.log").read_bytes()
    head, _, tail = conn.partition(b"\n1357328848")
    row = b"1357328848" + tail.split(b"\n")[0] + b"\n"
    path = tmp_path / "conn.2026-11-26-10-00-00.log.gz"
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(head + b"\n" + row)
        block = b"A" * (1 << 20)
        for _ in range(300):
            gz.write(block)
        gz.write(b"\n" + row.replace(b"56637", b"56638"))
    assert path.stat().st_size < 2_000_000
    probe = [sys.executable, "-c", RSS_PROBE, READER, str(path)]
    out = subprocess.run(probe, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    records, long_lines, rss_mib = map(int, out.stdout.split())
    assert records == 2 and long_lines == 1
    assert rss_mib < 150, f"peak RSS {rss_mib} MiB reading a 300 MB line"


def test_decompressed_size_cap_cuts_a_file_and_counts_it(tmp_path: Path) -> None:
    rows = [conn_row(n) for n in range(2000)]
    path = tmp_path / "conn.log.gz"
    path.write_bytes(gzip.compress(conn_log(rows)))
    problems: Counter[str] = Counter()
    recs = zs.read_log(path, problems=problems, max_file_bytes=64 * 1024)
    assert 0 < len(recs) < 2000 and problems[zb.SIZE_CAP] == 1
    assert [r.fields["uid"] for r in recs] == [f"CFollow{n:011d}" for n in range(len(recs))]
    # the line cap through the front end, counted in the warning line
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "conn.log").write_bytes(conn_log([conn_row(1), [*conn_row(2)[:-1], "9" * 5000]]))
    result = ingest(config(tmp_path / "c"), tmp_path / "logs", rules=False, max_line_bytes=1024)
    assert [r["uid"] for r in result.table.to_pylist()] == ["CFollow00000000001"]
    assert result.problems[zb.LONG_LINE] == 1
    assert "1 line(s) longer than the line cap skipped" in ingest_zeek.problem_lines(result)


def test_ingest_with_a_broken_rule_reports_it_on_stderr_and_exits_2(tmp_path: Path) -> None:
    """As analyze: a rule that cannot run makes the result incomplete (exit 2 over 1), said on stderr."""
    import shutil

    from sensor.rules.loader import default_rules_dir

    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    (rules / "tls" / "R90_broken.sql").write_text(
        "-- id: R90\n-- title: broken\n-- severity: warning\n-- requirement: x\n-- source: x\n"
        "SELECT uid, 'x' AS evidence FROM nowhere\n"
    )
    lake = str(tmp_path / "lake")
    r = run(
        "ingest-zeek",
        str(DATA / "ssl-tls-1.2"),
        str(shared("ssl-tls-1.2")),
        "--lake",
        lake,
        "--set",
        f"sensor.rules={rules}",
    )
    assert r.returncode == 2, r.stderr  # R6 still fires (RC4), but the result is incomplete
    assert re.search(r"R6\s+1\s+0\s+0", r.stdout), r.stdout
    assert "rule error" not in r.stdout and "R90_broken.sql" in r.stderr
