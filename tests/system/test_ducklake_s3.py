"""The DuckLake backend with its data path on object storage (`s3://…` through DuckDB's httpfs), against a real
S3-compatible server on loopback (moto_server, started here on a free port): analyze, check and lake maintain,
with the catalog in a DuckDB file and in a real PostgreSQL."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sensor.lakes import extensions
from sensor.lakes.ducklake import _s3_secret
from tests.support.postgres import Postgres, available

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lync-sample.pcap"
BUCKET = "lync-lake"

pytestmark = [
    pytest.mark.s3,
    pytest.mark.skipif(importlib.util.find_spec("moto") is None, reason="moto[server] (dev dependency) not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 and the AWS_* variables that point at it (with one bucket made)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        env = {
            "AWS_ACCESS_KEY_ID": "lync-test",
            "AWS_SECRET_ACCESS_KEY": "lync-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": url,
        }
        client(env).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def keys(env: dict[str, str], prefix: str) -> list[str]:
    pages = client(env).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    p = subprocess.run(
        [sys.executable, "-m", "sensor.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    return p.returncode, p.stdout, p.stderr


def findings(json_lines: str) -> list[tuple[Any, ...]]:
    rows = [json.loads(line) for line in json_lines.splitlines() if line.strip()]
    return sorted((r["finding_id"], r["rule_id"], r["severity"], r["uid"], r["sensor_id"]) for r in rows)


def test_an_http_endpoint_gives_path_style_urls_without_ssl(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    con = extensions.connect()
    _s3_secret(con)
    row = con.execute("SELECT secret_string FROM duckdb_secrets() WHERE name = 'lync_lake_s3'").fetchone()
    assert row is not None
    secret = row[0]
    assert "endpoint=127.0.0.1:9000" in secret and "url_style=path" in secret and "use_ssl=false" in secret
    assert "region=eu-west-1" in secret and "key_id=k" in secret
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9000")
    _s3_secret(con)
    row = con.execute("SELECT secret_string FROM duckdb_secrets() WHERE name = 'lync_lake_s3'").fetchone()
    assert row is not None and "use_ssl=false" not in row[0] and "endpoint=minio.example:9000" in row[0]


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    server = Postgres()
    server.start()
    yield server
    server.cleanup()


@pytest.mark.parametrize(
    "catalog_kind",
    [
        "duckdb-file",
        pytest.param(
            "postgres",
            marks=[pytest.mark.postgres, pytest.mark.skipif(not available(), reason="PostgreSQL not installed")],
        ),
    ],
)
def test_analyze_check_and_maintain_with_the_data_on_s3(
    s3: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path, catalog_kind: str
) -> None:
    if catalog_kind == "postgres":
        catalog = request.getfixturevalue("pg").createdb("s3lake")
    else:
        catalog = str(tmp_path / "catalog.ducklake")
    prefix = f"{catalog_kind}/lake"
    dl = [
        "--set",
        'lake.backend="ducklake"',
        "--set",
        f"lake.catalog={json.dumps(catalog)}",
        "--set",
        f'lake.data_path="s3://{BUCKET}/{prefix}"',
        "--set",
        f"sensor.lake={json.dumps(str(tmp_path / 'local'))}",
    ]
    # the same capture through the Parquet lake, for comparison
    parquet = tmp_path / "parquet"
    code_p, _, err = cli(s3, "analyze", str(EXAMPLE), "--no-progress", "--lake", str(parquet))
    assert code_p in (0, 1), err
    code, out, err = cli(s3, "analyze", str(EXAMPLE), "--no-progress", *dl)
    assert code == code_p, err
    assert "Wrote 34 flow records" in out
    # the data files are objects in the bucket, under the data path, partitioned as on a filesystem
    objects = keys(s3, prefix + "/")
    flows = [k for k in objects if k.startswith(f"{prefix}/main/flows/sensor_id=") and k.endswith(".parquet")]
    finds = [k for k in objects if k.startswith(f"{prefix}/main/findings/") and k.endswith(".parquet")]
    assert flows and finds, objects
    assert not (tmp_path / "local" / "ducklake-data").exists()  # nothing went to the local default data path
    # `check` over the S3 lake finds what `check` over the Parquet lake finds, and stores nothing new
    c_p, o_p, e_p = cli(s3, "check", "--json", "--lake", str(parquet))
    c_d, o_d, e_d = cli(s3, "check", "--json", *dl)
    assert c_p == c_d == 1, (e_p, e_d)
    assert findings(o_p) and findings(o_d) == findings(o_p)
    # maintenance on the bucket: compaction, snapshot expiry and removal of the files no snapshot needs
    code, out, err = cli(s3, "lake", "maintain", "--retention-days", "0", "--keep-snapshots", "0s", *dl)
    assert code == 0, err
    sizes = [line.split() for line in out.splitlines() if line.startswith("  ") and "records" not in line]
    report = {row[0]: row for row in sizes}
    assert report["flows"][3] == "34" and int(report["findings"][3]) == len(findings(o_p))
    removed = int(out.split("old files removed: ")[1].split(".")[0])
    after = keys(s3, prefix + "/")
    gone = set(objects) - set(after)
    assert removed > 0 and len(gone) == removed, (out, objects, after)  # removed from the bucket, not just listed
    assert any("/main/flows/" in k for k in after) and any("/main/findings/" in k for k in after)
    c_d2, o_d2, e_d2 = cli(s3, "check", "--json", *dl)
    assert c_d2 == 1 and findings(o_d2) == findings(o_p), e_d2
