"""The fleet lake: a DuckLake (catalog in PostgreSQL or a DuckDB file, data files on shared storage).

Every write is a DuckLake transaction. Interval records (`run`, `ingest-zeek`) go through a local spool first
and are committed batch by batch together with a row in the commit ledger (`lync_commits`, keyed by batch id),
so a batch is committed once even when the acknowledgement of a commit was lost; while the catalog cannot be
reached the batches wait in the spool (bounded) and are retried with backoff. Writes that must not interleave
(findings, an analysis replacing its records) also update the one row of `lync_locks`: DuckLake refuses the
second of two concurrent transactions that change the same row, which then retries and sees the first's rows.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from sensor.config import Config
from sensor.errors import SinkError
from sensor.lake import Source, Written
from sensor.lakes import extensions
from sensor.lakes.spool import Batch, Spool
from sensor.rules import context
from sensor.rules.context import Window
from sensor.schema import FINDING_SCHEMA, FLOW_SCHEMA

log = logging.getLogger(__name__)
ALIAS = "lake"
CONFLICT_RETRIES = 50
_TYPES = {
    "timestamp[us, tz=UTC]": "TIMESTAMPTZ",
    "timestamp[ns, tz=UTC]": "TIMESTAMPTZ",
    "string": "VARCHAR",
    "large_string": "VARCHAR",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "bool": "BOOLEAN",
}


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _sql_type(t.value_type) + "[]"
    try:
        return _TYPES[str(t)]
    except KeyError:
        raise SinkError(f"ducklake: no SQL type for the Arrow type {t}") from None


def _columns(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {_sql_type(f.type)}" for f in schema) + ", lake_source VARCHAR"


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _msg(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _conflict(exc: BaseException) -> bool:
    text = str(exc)
    return "conflict" in text.lower() or "Failed to commit DuckLake transaction" in text


SCHEMAS = {"flows": FLOW_SCHEMA, "findings": FINDING_SCHEMA}
# sensor first: one sensor's records are apart in files (its share of the lake is measurable), then the day
PARTITIONS = {"flows": "sensor_id, year(ts), month(ts), day(ts)", "findings": "year(ts), month(ts)"}


class DuckLake:
    """A DuckLake holding `flows` and `findings`, plus the commit ledger and the lock row."""

    backend = "ducklake"

    def __init__(
        self,
        catalog: str,
        data_path: str,
        spool: Path,
        *,
        spool_max_records: int = 2_000_000,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.data_path = data_path
        self.spool = Spool(spool, spool_max_records)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.metrics = metrics
        self.clock = clock
        self._con: duckdb.DuckDBPyConnection | None = None
        self._failures = 0
        self._next_try = 0.0
        self.last_error = ""

    @classmethod
    def from_config(cls, cfg: Config, *, metrics: Any = None) -> DuckLake:
        lake = Path(cfg.sensor.lake)
        data = cfg.lake.data_path or str((lake / "ducklake-data").resolve())
        return cls(
            cfg.lake.catalog,
            data,
            Path(cfg.lake.spool) if cfg.lake.spool else lake / "_spool",
            spool_max_records=cfg.lake.spool_max_records,
            retry_initial=cfg.lake.retry_initial_seconds,
            retry_max=cfg.lake.retry_max_seconds,
            metrics=metrics,
        )

    # ---- connection ------------------------------------------------------------------------------------------
    def _attach_sql(self, *, read_only: bool = False) -> str:
        catalog = self.catalog
        if catalog.startswith("postgresql:"):
            catalog = "postgres:" + catalog.split(":", 1)[1]
        opts = [f"DATA_PATH {_q(self.data_path.rstrip('/') + '/')}"]
        if read_only:
            opts.append("READ_ONLY")
        return f"ATTACH {_q('ducklake:' + catalog)} AS {ALIAS} ({', '.join(opts)})"

    def connect(self, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with this lake attached as `lake` (tables created on first use)."""
        if not self.data_path.startswith("s3://"):
            Path(self.data_path).mkdir(parents=True, exist_ok=True)
        if not self.catalog.startswith(("postgres:", "postgresql:")):
            Path(self.catalog).parent.mkdir(parents=True, exist_ok=True)
        con = extensions.connect()
        try:
            if self.data_path.startswith("s3://"):
                _s3_secret(con)
            con.execute(self._attach_sql(read_only=read_only))
            if not read_only:
                self._ensure_tables(con)
        except duckdb.Error as exc:
            con.close()
            raise SinkError(f"ducklake {self.catalog}: cannot attach: {_msg(exc)}") from exc
        return con

    def _ensure_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        for attempt in range(CONFLICT_RETRIES):
            try:
                con.execute("BEGIN")
                for name, schema in SCHEMAS.items():
                    con.execute(f"CREATE TABLE IF NOT EXISTS {ALIAS}.{name} ({_columns(schema)})")
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS {ALIAS}.lync_commits (batch_id VARCHAR, sensor_id VARCHAR, "
                    "table_name VARCHAR, records BIGINT, committed_at TIMESTAMPTZ)"
                )
                fresh = not con.execute(
                    f"SELECT 1 FROM duckdb_tables() WHERE database_name = '{ALIAS}' AND table_name = 'lync_locks'"
                ).fetchone()
                if fresh:
                    con.execute(f"CREATE TABLE {ALIAS}.lync_locks (name VARCHAR, n BIGINT)")
                    con.execute(f"INSERT INTO {ALIAS}.lync_locks VALUES ('writes', 0)")
                    for name, parts in PARTITIONS.items():
                        con.execute(f"ALTER TABLE {ALIAS}.{name} SET PARTITIONED BY ({parts})")
                con.execute("COMMIT")
                return
            except duckdb.Error as exc:
                _rollback(con)
                if not _conflict(exc) or attempt == CONFLICT_RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.01, 0.1))

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = self.connect()
        return self._con

    def _drop_connection(self) -> None:
        if self._con is not None:
            with suppress(duckdb.Error):
                self._con.close()
            self._con = None

    def close(self) -> None:
        self._drop_connection()

    def where(self, table: str) -> str:
        return f"ducklake {self.catalog} (data {self.data_path}): {table}"

    # ---- transactions ----------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self, *, locked: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._connection()
        con.execute("BEGIN")
        try:
            if locked:
                con.execute(f"UPDATE {ALIAS}.lync_locks SET n = n + 1 WHERE name = 'writes'")
            yield con
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    def _serialized(self, work: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """Run `work` in a locked transaction, again (seeing the winner's rows) when it lost a conflict."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                with self._transaction(locked=True) as con:
                    return work(con)
            except duckdb.Error as exc:
                if not _conflict(exc) or attempt == CONFLICT_RETRIES - 1:
                    self._drop_connection()
                    raise SinkError(f"{self.where('')} write failed: {_msg(exc)}") from exc
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def _insert(self, con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, source: str | None) -> None:
        cols = ", ".join(f.name for f in SCHEMAS[table])
        con.register("lync_batch", rows)
        try:
            tag = _q(source) if source else "NULL"
            con.execute(f"INSERT INTO {ALIAS}.{table} ({cols}, lake_source) SELECT {cols}, {tag} FROM lync_batch")
        finally:
            con.unregister("lync_batch")

    def _fresh(self, con: duckdb.DuckDBPyConnection, findings: pa.Table) -> pa.Table:
        con.register("lync_candidate", findings)
        try:
            return (
                con.sql(
                    f"SELECT * FROM lync_candidate WHERE finding_id NOT IN (SELECT finding_id FROM {ALIAS}.findings)"
                )
                .to_arrow_table()
                .cast(FINDING_SCHEMA)
            )
        finally:
            con.unregister("lync_candidate")

    # ---- writers ---------------------------------------------------------------------------------------------
    def has_flows(self) -> bool:
        return True

    def write(self, table: str, rows: pa.Table, *, sensor_id: str) -> list[Written]:
        """Spool the batch, then commit whatever the spool holds (unless a retry is not due yet)."""
        if rows.num_rows == 0:
            return []
        self.spool.put(table, rows, sensor_id)
        dropped = self.spool.enforce_bound()
        if dropped:
            log.warning("lake spool %s over its bound: dropped %d oldest records", self.spool.path, dropped)
            if self.metrics is not None:
                self.metrics.lake_spool_dropped.inc(dropped)
        return self.flush()

    def flush(self, *, force: bool = False) -> list[Written]:
        """Commit the spooled batches, oldest first; on failure keep them and back off. Returns what committed."""
        out: list[Written] = []
        if force or self.clock() >= self._next_try:
            for batch in self.spool.batches():
                try:
                    out.append(self._commit(batch))
                except (duckdb.Error, SinkError, OSError) as exc:
                    self._failed(exc)
                    break
                self.spool.remove(batch)
            else:
                self._failures = 0
                self._next_try = 0.0
        if self.metrics is not None:
            self.metrics.lake_spool_records.set(self.spool.records())
        return out

    def _failed(self, exc: BaseException) -> None:
        self._drop_connection()
        self._failures += 1
        wait = min(self.retry_initial * 2 ** (self._failures - 1), self.retry_max)
        self._next_try = self.clock() + wait
        self.last_error = f"{self.where('')} commit failed, retry in {wait:.0f} s: {_msg(exc)}"
        log.warning("%s", self.last_error)
        if self.metrics is not None:
            self.metrics.lake_write_errors.inc()

    def _commit(self, batch: Batch) -> Written:
        rows, sensor = batch.read()
        for attempt in range(CONFLICT_RETRIES):
            con = self._connection()
            try:
                con.execute("BEGIN")
                done = con.execute(
                    f"SELECT 1 FROM {ALIAS}.lync_commits WHERE batch_id = ?", [batch.batch_id]
                ).fetchone()
                if not done:
                    self._insert(con, batch.table, rows, None)
                    con.execute(
                        f"INSERT INTO {ALIAS}.lync_commits VALUES (?, ?, ?, ?, now())",
                        [batch.batch_id, sensor, batch.table, rows.num_rows],
                    )
                con.execute("COMMIT")
                return Written(Path(f"{self.data_path}/main/{batch.table}"), rows.num_rows)
            except duckdb.Error as exc:
                _rollback(con)
                if not _conflict(exc) or attempt == CONFLICT_RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.005, 0.05))
        raise AssertionError("unreachable")

    def source_records(self, source: Source) -> int:
        con = self._connection()
        row = con.execute(
            f"SELECT (SELECT count(*) FROM {ALIAS}.flows WHERE lake_source = $s) "
            f"+ (SELECT count(*) FROM {ALIAS}.findings WHERE lake_source = $s)",
            {"s": source.id},
        ).fetchone()
        return int(row[0]) if row else 0

    def store_analysis(
        self, sensor_id: str, source: Source, flows: pa.Table, findings: pa.Table | None, *, replace: bool
    ) -> tuple[list[Written], pa.Table | None, list[Written], int]:
        def work(con: duckdb.DuckDBPyConnection) -> tuple[pa.Table | None, int]:
            row = con.execute(f"SELECT count(*) FROM {ALIAS}.flows WHERE lake_source = ?", [source.id]).fetchone()
            earlier = int(row[0]) if row else 0
            if earlier and not replace:
                raise _Refused(
                    f"{self.where('flows')}: these capture(s) are in it already (source {source.id}, {earlier:,} "
                    "flow records); give --replace to replace their records"
                )
            if replace:
                con.execute(f"DELETE FROM {ALIAS}.flows WHERE lake_source = ?", [source.id])
            self._insert(con, "flows", flows, source.id)
            fresh = None
            if findings is not None:
                if replace:
                    con.execute(f"DELETE FROM {ALIAS}.findings WHERE lake_source = ?", [source.id])
                fresh = self._fresh(con, findings)
                if fresh.num_rows:
                    self._insert(con, "findings", fresh, source.id)
            return fresh, earlier

        try:
            fresh, earlier = self._serialized(work)
        except _Refused as exc:
            raise SinkError(str(exc)) from None
        where = Path(f"{self.data_path}/main")
        return (
            [Written(where / "flows", flows.num_rows)] if flows.num_rows else [],
            fresh,
            [Written(where / "findings", fresh.num_rows)] if fresh is not None and fresh.num_rows else [],
            earlier,
        )

    def write_findings(self, sensor_id: str, findings: pa.Table) -> tuple[pa.Table, list[Written]]:
        if findings.num_rows == 0:
            return findings, []

        def work(con: duckdb.DuckDBPyConnection) -> pa.Table:
            fresh = self._fresh(con, findings)
            if fresh.num_rows:
                self._insert(con, "findings", fresh, None)
            return fresh

        fresh: pa.Table = self._serialized(work)
        written = [Written(Path(f"{self.data_path}/main/findings"), fresh.num_rows)] if fresh.num_rows else []
        return fresh, written

    # ---- readers ---------------------------------------------------------------------------------------------
    def context_connection(self) -> duckdb.DuckDBPyConnection:
        """The connection the rules run in. A DuckDB-file catalog admits one DuckDB at a time, so the writer's
        connection is closed first (it reopens on the next write)."""
        if not self.catalog.startswith(("postgres:", "postgresql:")):
            self._drop_connection()
        return self.connect()

    def register_flows(self, con: duckdb.DuckDBPyConnection, window: Window, sensors: Sequence[str] = ()) -> list[str]:
        context.register_flows_from_relation(con, f"{ALIAS}.flows", context.record_filter(window, sensors))
        return [] if self.data_path.startswith("s3://") else [self.data_path]


class _Refused(Exception):
    """An analysis of captures already in the lake, without --replace."""


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    with suppress(duckdb.Error):
        con.execute("ROLLBACK")


def _s3_secret(con: duckdb.DuckDBPyConnection) -> None:
    """Object storage credentials from the standard AWS variables (the appliance's environment file)."""
    import os

    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        return
    parts = [
        "TYPE s3",
        f"KEY_ID {_q(os.environ['AWS_ACCESS_KEY_ID'])}",
        f"SECRET {_q(os.environ.get('AWS_SECRET_ACCESS_KEY', ''))}",
    ]
    if os.environ.get("AWS_REGION"):
        parts.append(f"REGION {_q(os.environ['AWS_REGION'])}")
    if os.environ.get("AWS_ENDPOINT_URL"):
        endpoint = os.environ["AWS_ENDPOINT_URL"].split("://", 1)[-1]
        parts += [f"ENDPOINT {_q(endpoint)}", "URL_STYLE 'path'"]
        if os.environ["AWS_ENDPOINT_URL"].startswith("http://"):
            parts.append("USE_SSL false")
    con.execute(f"CREATE OR REPLACE SECRET lync_lake_s3 ({', '.join(parts)})")
