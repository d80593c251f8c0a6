"""The DuckLake backend with the real DuckLake extension and a real PostgreSQL catalog: concurrent sensors,
the catalog going away, concurrent checkers, maintenance, import, and parity with the Parquet lake."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from sensor.config import load_config
from sensor.errors import ConfigError, SinkError
from sensor.lakes import extensions
from sensor.lakes.ducklake import DuckLake
from sensor.schema import FLOW_SCHEMA
from tests.support.postgres import Postgres, available

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lync-sample.pcap"
NOW = datetime.now(UTC).replace(microsecond=0)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not available(), reason="PostgreSQL (Debian package postgresql) not installed"),
]


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    server = Postgres()
    server.start()
    yield server
    server.cleanup()


_dbs = iter(range(1000))


@pytest.fixture
def catalog(pg: Postgres) -> str:
    return pg.createdb(f"lake{next(_dbs)}")


def records(sensor: str, batch: int, n: int, ts: datetime = NOW) -> pa.Table:
    """n interval records of sensor's flows (the flow schema, facts left null)."""
    cols = {f.name: pa.nulls(n, f.type) for f in FLOW_SCHEMA}
    cols["uid"] = pa.array([f"C{sensor}-{batch}-{i}" for i in range(n)])
    cols["sensor_id"] = pa.array([sensor] * n)
    cols["source"] = pa.array(["live"] * n)
    cols["ts"] = pa.array([ts] * n, FLOW_SCHEMA.field("ts").type)
    cols["ts_end"] = pa.array([ts + timedelta(seconds=1)] * n, FLOW_SCHEMA.field("ts_end").type)
    cols["orig_pkts"] = pa.array([1] * n, pa.int64())
    return pa.table(cols, schema=FLOW_SCHEMA)


def ducklake_args(catalog: str, data: Path, lake: Path) -> list[str]:
    return [
        "--set",
        'lake.backend="ducklake"',
        "--set",
        f"lake.catalog={json.dumps(catalog)}",
        "--set",
        f"lake.data_path={json.dumps(str(data))}",
        "--set",
        f"sensor.lake={json.dumps(str(lake))}",
    ]


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sensor.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def query(catalog: str, data: Path, sql: str) -> list[tuple[object, ...]]:
    lake = DuckLake(catalog, str(data), data.parent / "q-spool")
    con = lake.connect()
    try:
        return [tuple(r.values()) for r in con.sql(sql).to_arrow_table().to_pylist()]
    finally:
        con.close()


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sensor.lakes.ducklake import DuckLake
    from tests.system.test_ducklake import records
    catalog, data, spool, sensor, batches, n, pause = sys.argv[1:8]
    lake = DuckLake(catalog, data, Path(spool), retry_initial=0.2, retry_max=1.0)
    for b in range(int(batches)):
        lake.write("flows", records(sensor, b, int(n)), sensor_id=sensor)
        time.sleep(float(pause))
    deadline = time.monotonic() + 120
    while lake.spool.batches() and time.monotonic() < deadline:
        time.sleep(0.2)
        lake.flush()
    lake.close()
    print(len(lake.spool.batches()))
""")


def writer(
    catalog: str, data: Path, spool: Path, sensor: str, batches: int, n: int, pause: float
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, catalog, str(data), str(spool), sensor, str(batches), str(n), str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


# --- versions and config ------------------------------------------------------------------------------------


def test_extensions_load_from_the_packages_without_network() -> None:
    con = extensions.connect()
    loaded = {
        r[0]: r[1]
        for r in con.execute("SELECT extension_name, install_path FROM duckdb_extensions() WHERE loaded").fetchall()
    }
    assert {"ducklake", "postgres_scanner", "httpfs"} <= set(loaded)
    assert all("duckdb_ext" in str(loaded[n]) for n in ("ducklake", "postgres_scanner", "httpfs"))
    assert con.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone() == (False,)


def test_an_extension_built_for_another_duckdb_is_refused_naming_both_versions(tmp_path: Path) -> None:
    other = tmp_path / "v1.4.3" / extensions.platform_dir()
    other.mkdir(parents=True)
    (other / "ducklake.duckdb_extension").write_bytes(b"\0" * 64)
    with pytest.raises(SinkError) as info:
        extensions.connect(extensions=("ducklake",), root=tmp_path)
    msg = str(info.value)
    assert "v1.4.3" in msg and extensions.duckdb_version() in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (['lake.backend="ducklake"'], "lake.catalog"),
        (['lake.backend="iceberg"'], "lake.backend"),
        (['lake.catalog="postgres:"'], "lake.catalog"),
        (['lake.catalog="mysql:db=x"'], "lake.catalog"),
        (['lake.data_path="relative/dir"'], "lake.data_path"),
        (["lake.spool_max_records=10"], "lake.spool_max_records"),
        (["lake.retry_initial_seconds=10", "lake.retry_max_seconds=5"], "lake.retry_max_seconds"),
    ],
)
def test_lake_config_keys_are_checked(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides=overrides)
    assert info.value.key == key


# --- parity, checking, import ---------------------------------------------------------------------------------


def _flows(rows: list[dict[str, object]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)


def test_the_same_capture_gives_the_same_flows_and_findings_on_both_backends(catalog: str, tmp_path: Path) -> None:
    parquet = tmp_path / "parquet"
    code, _, err = finish(cli("analyze", str(EXAMPLE), "--no-progress", "--lake", str(parquet)))
    assert code in (0, 1), err
    dl = ducklake_args(catalog, tmp_path / "data", tmp_path / "local")
    code2, _, err2 = finish(cli("analyze", str(EXAMPLE), "--no-progress", *dl))
    assert code2 == code, err2
    con = duckdb.connect()
    p_flows = con.sql(f"SELECT * FROM read_parquet('{parquet}/flows/**/*.parquet')").to_arrow_table()
    cols = ", ".join(f.name for f in FLOW_SCHEMA)
    d_flows = query(catalog, tmp_path / "data", f"SELECT {cols} FROM lake.flows")
    assert p_flows.num_rows > 0 and len(d_flows) == p_flows.num_rows
    assert _flows([dict(zip(FLOW_SCHEMA.names, r, strict=True)) for r in d_flows]) == _flows(
        p_flows.select(FLOW_SCHEMA.names).to_pylist()
    )
    fcols = "finding_id, rule_id, severity, uid, evidence, sensor_id"
    p_find = sorted(con.sql(f"SELECT {fcols} FROM read_parquet('{parquet}/findings/**/*.parquet')").fetchall())
    d_find = sorted(query(catalog, tmp_path / "data", f"SELECT {fcols} FROM lake.findings"))
    assert p_find and d_find == p_find
    # `check` over each lake: the same rule table, nothing new to store
    table = lambda text: [line for line in text.splitlines() if re.match(r"\s+R\d", line)]  # noqa: E731
    c1, o1, e1 = finish(cli("check", "--lake", str(parquet)))
    c2, o2, e2 = finish(cli("check", *dl))
    assert (c1, table(o1)) == (c2, table(o2)), (e1, e2)
    assert "Wrote" not in o2
    # the same captures again are refused (exit 2, one line), and replaced with --replace
    code3, _, err3 = finish(cli("analyze", str(EXAMPLE), "--no-progress", *dl))
    assert code3 == 2 and "in it already" in err3 and len(err3.strip().splitlines()) == 1
    code4, _, err4 = finish(cli("analyze", str(EXAMPLE), "--no-progress", "--replace", *dl))
    assert code4 == code, err4
    assert query(catalog, tmp_path / "data", "SELECT count(*) FROM lake.flows") == [(p_flows.num_rows,)]
    assert len(query(catalog, tmp_path / "data", "SELECT * FROM lake.findings")) == len(p_find)


def test_two_checkers_at_once_store_each_finding_once(catalog: str, tmp_path: Path) -> None:
    dl = ducklake_args(catalog, tmp_path / "data", tmp_path / "local")
    code, _, err = finish(cli("analyze", str(EXAMPLE), "--no-progress", "--no-rules", *dl))
    assert code == 0, err
    results = [finish(p) for p in [cli("check", *dl) for _ in range(2)]]
    assert all(c == 1 for c, _, _ in results), [e for _, _, e in results]
    new = [int(m.group(1).replace(",", "")) if (m := re.search(r"Wrote ([\d,]+) new", o)) else 0 for _, o, _ in results]
    ((total, distinct),) = query(
        catalog, tmp_path / "data", "SELECT count(*), count(DISTINCT finding_id) FROM lake.findings"
    )
    assert distinct > 0 and total == distinct == sum(new)


def test_check_sensor_filter_and_findings_name_their_sensor(catalog: str, tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.pcapng"  # the same traffic as the example, another file (another source)
    subprocess.run(
        [sys.executable, "-m", "sensor.synth", "labelled", str(labelled), "--format", "pcapng"], check=True, cwd=ROOT
    )
    for sensor, capture in (("site-a", EXAMPLE), ("site-b", labelled)):
        dl = ducklake_args(catalog, tmp_path / "data", tmp_path / sensor)
        code, _, err = finish(
            cli("analyze", str(capture), "--no-progress", "--no-rules", "--set", f'sensor.id="{sensor}"', *dl)
        )
        assert code == 0, err
    central = ducklake_args(catalog, tmp_path / "data", tmp_path / "central")
    code, out, err = finish(cli("check", "--json", "--sensor", "site-b", "--set", 'sensor.id="central"', *central))
    assert code == 1, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and {r["sensor_id"] for r in rows} == {"site-b"}
    code, out, err = finish(cli("check", "--json", "--set", 'sensor.id="central"', *central))
    assert {json.loads(line)["sensor_id"] for line in out.splitlines()} == {"site-a", "site-b"}


def test_import_moves_a_parquet_lake_once(catalog: str, tmp_path: Path) -> None:
    parquet = tmp_path / "parquet"
    code, _, err = finish(cli("analyze", str(EXAMPLE), "--no-progress", "--lake", str(parquet)))
    assert code in (0, 1), err
    con = duckdb.connect()
    flows = con.sql(f"SELECT count(*) FROM read_parquet('{parquet}/flows/**/*.parquet')").fetchone()
    finds = con.sql(f"SELECT count(*) FROM read_parquet('{parquet}/findings/**/*.parquet')").fetchone()
    dl = ducklake_args(catalog, tmp_path / "data", tmp_path / "local")
    code, out, err = finish(cli("lake", "import", str(parquet), *dl))
    assert code == 0, err
    assert f"Imported {flows[0]:,} flow records and {finds[0]:,} findings" in out
    code, out, err = finish(cli("lake", "import", str(parquet), *dl))
    assert code == 0 and "Imported 0 flow records and 0 findings" in out, err
    assert query(catalog, tmp_path / "data", "SELECT count(*) FROM lake.flows") == [flows]
    # the imported source is known: analysing the same capture into the DuckLake is refused
    code, _, err = finish(cli("analyze", str(EXAMPLE), "--no-progress", *dl))
    assert code == 2 and "in it already" in err


# --- concurrent sensors, the catalog going away ---------------------------------------------------------------


def test_four_sensor_processes_write_concurrently_without_loss_or_duplicates(catalog: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    batches, n = 15, 200
    procs = [writer(catalog, data, tmp_path / f"spool-{s}", f"s{s}", batches, n, 0.0) for s in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert [o.strip() for o, _ in outs] == ["0"] * 4  # every spool emptied
    got = query(catalog, data, "SELECT sensor_id, count(*), count(DISTINCT uid) FROM lake.flows GROUP BY 1 ORDER BY 1")
    assert got == [(f"s{s}", batches * n, batches * n) for s in range(4)]
    assert query(catalog, data, "SELECT count(*), count(DISTINCT batch_id) FROM lake.lync_commits") == [(60, 60)]


def test_the_catalog_stopped_and_restarted_mid_run_loses_nothing(pg: Postgres, catalog: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    DuckLake(catalog, str(data), tmp_path / "init").connect().close()  # the tables exist before the outage
    proc = writer(catalog, data, tmp_path / "spool", "s-out", 40, 50, 0.1)
    time.sleep(1.5)
    pg.stop()
    try:
        time.sleep(2.5)
        spooled = [p for p in (tmp_path / "spool").iterdir() if p.suffix == ".arrow"]
        assert spooled, "records are kept in the spool while the catalog is down"
    finally:
        pg.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.strip() == "0"
    assert "commit failed" in err  # the outage was seen, and retried
    assert query(catalog, data, "SELECT count(*), count(DISTINCT uid) FROM lake.flows") == [(2000, 2000)]


def test_the_spool_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    from sensor.metrics import SensorMetrics

    m = SensorMetrics()
    lake = DuckLake("postgres:dbname=none host=/nonexistent", str(tmp_path / "d"), tmp_path / "spool",
                    spool_max_records=1000, retry_initial=3600, retry_max=3600, metrics=m)  # fmt: skip
    for b in range(5):
        lake.write("flows", records("s", b, 400), sensor_id="s")
    assert lake.spool.records() == 800  # the two newest batches; the oldest three dropped
    assert m.lake_spool_dropped._value.get() == 1200
    assert m.lake_spool_records._value.get() == 800
    assert m.lake_write_errors._value.get() == 1  # one failed attempt, then backoff: no retry storm


# --- maintenance ----------------------------------------------------------------------------------------------


def test_maintain_compacts_expires_and_keeps_results_equal(catalog: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    lake = DuckLake(catalog, str(data), tmp_path / "spool")
    for b in range(12):
        lake.write("flows", records("s1" if b % 2 else "s2", b, 30), sensor_id="s")
    old = NOW - timedelta(days=40)
    lake.write("flows", records("s1", 99, 25, ts=old), sensor_id="s1")
    lake.close()
    recent = (
        "SELECT sensor_id, count(*), sum(orig_pkts), min(uid), max(uid) FROM lake.flows "
        f"WHERE ts > TIMESTAMPTZ '{NOW - timedelta(days=1)}' GROUP BY 1 ORDER BY 1"
    )
    before = query(catalog, data, recent)
    files_before = len(list(data.rglob("*.parquet")))
    dl = ducklake_args(catalog, data, tmp_path / "local")
    code, out, err = finish(cli("lake", "maintain", "--retention-days", "30", "--keep-snapshots", "0s", *dl))
    assert code == 0, err
    assert "flows 25" in out
    assert query(catalog, data, recent) == before
    assert query(catalog, data, "SELECT count(*) FROM lake.flows") == [(12 * 30,)]
    files_after = len(list(data.rglob("*.parquet")))
    assert files_after < files_before  # small per-interval files merged, the expired ones removed from disk
    sizes = {line.split()[1]: line.split() for line in out.splitlines() if line.strip().startswith("flows")}
    assert set(sizes) == {"s1", "s2"} and sizes["s1"][3] == "180" and sizes["s2"][3] == "180"


# --- the units that run maintenance and the central check -----------------------------------------------------

UNITS = ROOT / "deploy" / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("name", ["lync-sensor-lake-maintain", "lync-sensor-check"])
def test_fleet_units_verify(tmp_path: Path, name: str) -> None:
    for suffix in ("service", "timer"):
        text = (UNITS / f"{name}.{suffix}").read_text()
        (tmp_path / f"{name}.{suffix}").write_text(text.replace("/opt/lync-sensor/.venv/bin/lync-sensor", "/bin/true"))
    service = (UNITS / f"{name}.service").read_text()
    assert (
        "ExecStart=/opt/lync-sensor/.venv/bin/lync-sensor " + ("lake maintain" if "maintain" in name else "check")
        in service
    )
    r = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / f"{name}.service"), str(tmp_path / f"{name}.timer")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
