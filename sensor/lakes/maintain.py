"""`lync-sensor lake maintain` and `lake import`: a DuckLake's retention, compaction and size report, and the
move of a local Parquet lake into it.

Retention deletes the records older than the cutoff, then expires the snapshots older than the time-travel
window and removes the files no snapshot needs any more (DuckLake's own expire_snapshots and
cleanup_old_files); compaction is DuckLake's merge_adjacent_files, which rewrites the many small per-interval
files of a partition into few.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from sensor.errors import SinkError
from sensor.lake import files as lake_files
from sensor.lakes.ducklake import ALIAS, SCHEMAS, DuckLake, _msg, _q

_SOURCE = re.compile(r"\.([0-9a-f]{16})\.parquet$")


@dataclass
class SizeRow:
    """Live data files, records and bytes of one DuckLake table (and, for flows, one sensor)."""

    table: str
    sensor: str  # "" for a table not split by sensor
    files: int
    records: int
    bytes: int


@dataclass
class MaintainReport:
    """What one `maintain` run did: rows deleted per table, snapshots and files removed, files and sizes after."""

    deleted: dict[str, int] = field(default_factory=dict)
    files_before: int = 0
    files_after: int = 0
    snapshots_expired: int = 0
    files_removed: int = 0
    sizes: list[SizeRow] = field(default_factory=list)

    def render(self, retention_days: int) -> str:
        """The report as `lync-sensor lake maintain` prints it: retention, compaction, snapshots, sizes."""
        deleted = ", ".join(f"{t} {n:,}" for t, n in self.deleted.items()) or "none (retention off)"
        lines = [
            f"Retention ({retention_days} days): records deleted: {deleted}.",
            f"Compaction: {self.files_before:,} data files before, {self.files_after:,} after.",
            f"Snapshots expired: {self.snapshots_expired:,}; old files removed: {self.files_removed:,}.",
            f"  {'table':<14} {'sensor':<20} {'files':>7} {'records':>12} {'bytes':>14}",
        ]
        for row in self.sizes:
            lines.append(
                f"  {row.table:<14} {row.sensor or '-':<20} {row.files:>7,} {row.records:>12,} {row.bytes:>14,}"
            )
        return "\n".join(lines)


def _meta() -> str:
    return f"__ducklake_metadata_{ALIAS}"


def live_files(con: duckdb.DuckDBPyConnection) -> int:
    """The number of data files in the DuckLake that the current snapshot still uses."""
    row = con.execute(f"SELECT count(*) FROM {_meta()}.ducklake_data_file WHERE end_snapshot IS NULL").fetchone()
    return int(row[0]) if row else 0


def sizes(con: duckdb.DuckDBPyConnection) -> list[SizeRow]:
    """Live data files, records and bytes per table and, for flows, per sensor (its first partition key)."""
    rows = con.execute(f"""
        SELECT t.table_name,
               CASE WHEN t.table_name = 'flows' THEN coalesce(pv.partition_value, '') ELSE '' END AS sensor,
               count(*) AS files, sum(df.record_count)::BIGINT AS records, sum(df.file_size_bytes)::BIGINT AS bytes
        FROM {_meta()}.ducklake_data_file df
        JOIN {_meta()}.ducklake_table t ON t.table_id = df.table_id AND t.end_snapshot IS NULL
        LEFT JOIN {_meta()}.ducklake_file_partition_value pv
               ON pv.data_file_id = df.data_file_id AND pv.partition_key_index = 0
        WHERE df.end_snapshot IS NULL
        GROUP BY ALL ORDER BY 1, 2
    """).fetchall()
    return [SizeRow(str(r[0]), str(r[1]), int(r[2]), int(r[3] or 0), int(r[4] or 0)) for r in rows]


def maintain(lake: DuckLake, *, retention_days: int, keep_snapshots: timedelta, now: datetime) -> MaintainReport:
    """Retention by age, compaction, snapshot expiry and old-file cleanup; then the size report."""
    rep = MaintainReport()
    con = lake.connect()
    try:
        rep.files_before = live_files(con)
        if retention_days:
            cutoff = (now - timedelta(days=retention_days)).isoformat()

            def delete(c: duckdb.DuckDBPyConnection) -> dict[str, int]:
                out = {}
                for table, col in (("flows", "ts_end"), ("findings", "ts"), ("lync_commits", "committed_at")):
                    row = c.execute(f"DELETE FROM {ALIAS}.{table} WHERE {col} < TIMESTAMPTZ {_q(cutoff)}").fetchone()
                    out[table] = int(row[0]) if row else 0
                return out

            lake._con = con
            rep.deleted = lake._serialized(delete)
        con.execute(f"CALL ducklake_merge_adjacent_files({_q(ALIAS)})")
        older = (now - keep_snapshots).isoformat()
        rep.snapshots_expired = (
            con.sql(f"CALL ducklake_expire_snapshots({_q(ALIAS)}, older_than => TIMESTAMPTZ {_q(older)})")
            .to_arrow_table()
            .num_rows
        )
        rep.files_removed = (
            con.sql(f"CALL ducklake_cleanup_old_files({_q(ALIAS)}, cleanup_all => true)").to_arrow_table().num_rows
        )
        rep.files_after = live_files(con)
        rep.sizes = sizes(con)
    except duckdb.Error as exc:
        raise SinkError(f"{lake.where('')} maintenance failed: {_msg(exc)}") from exc
    finally:
        lake._con = None
        con.close()
    return rep


def import_parquet(lake: DuckLake, root: Path) -> dict[str, int]:
    """Copy a local Parquet lake's flows and findings into the DuckLake, each file once (the commit ledger
    remembers which were imported, so a second import adds only the files that are new since)."""
    done: dict[str, int] = {}
    files = {t: lake_files(root, t) for t in SCHEMAS}
    if not any(files.values()):
        raise SinkError(f"lake {root}: no Parquet flows or findings to import")

    def work(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        out: dict[str, int] = {}
        imported = {
            str(r[0])
            for r in con.execute(f"SELECT batch_id FROM {ALIAS}.lync_commits WHERE batch_id LIKE 'import:%'").fetchall()
        }
        for table, paths in files.items():
            cols = ", ".join(f.name for f in SCHEMAS[table])
            todo = [p for p in paths if f"import:{table}/{p.relative_to(root / table)}" not in imported]
            out[table] = 0
            for path in todo:
                m = _SOURCE.search(path.name)
                tag = _q(m.group(1)) if m else "NULL"
                src = f"read_parquet({_q(str(path))}, union_by_name = true)"
                if table == "findings":
                    src = f"(SELECT * FROM {src} WHERE finding_id NOT IN (SELECT finding_id FROM {ALIAS}.findings))"
                row = con.execute(
                    f"INSERT INTO {ALIAS}.{table} ({cols}, lake_source) SELECT {cols}, {tag} FROM {src}"
                ).fetchone()
                n = int(row[0]) if row else 0
                con.execute(
                    f"INSERT INTO {ALIAS}.lync_commits VALUES (?, NULL, ?, ?, now())",
                    [f"import:{table}/{path.relative_to(root / table)}", table, n],
                )
                out[table] += n
        return out

    try:
        done = lake._serialized(work)
    finally:
        lake.close()
    return done
