"""The Parquet lake: hive-partitioned tables written atomically (temporary name, then rename)."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sensor.errors import SinkError

_SEQ = re.compile(r"-(\d+)\.parquet$")


@dataclass(frozen=True)
class Written:
    """One Parquet file the lake writer committed."""

    path: Path
    rows: int


class LakeWriter:
    """Writes tables to <lake>/<table>/date=YYYY-MM-DD/hour=HH/<sensor>-<seq>.parquet.

    Each file is written under a dot-prefixed temporary name in its partition directory and renamed
    into place, so a reader (DuckDB's glob) never sees half a file; zstd compression.
    """

    def __init__(self, root: Path, sensor_id: str) -> None:
        self.root = root
        self.sensor_id = sensor_id

    def _next_seq(self, part: Path) -> int:
        best = -1
        prefix = f"{self.sensor_id}-"
        for entry in part.iterdir():
            if entry.name.startswith(prefix):
                m = _SEQ.search(entry.name)
                if m:
                    best = max(best, int(m.group(1)))
        return best + 1

    def write(self, table_name: str, table: pa.Table, *, ts_column: str = "ts") -> list[Written]:
        """Partition `table` by the UTC date and hour of `ts_column` and commit one file per partition."""
        if table.num_rows == 0:
            return []
        ts = table.column(ts_column)
        days = pc.strftime(ts, format="%Y-%m-%d", locale="C")
        hours = pc.strftime(ts, format="%H", locale="C")
        keys = pc.binary_join_element_wise(days, hours, "/")
        out: list[Written] = []
        for key in pc.unique(keys).to_pylist():
            day, hour = key.split("/")
            part_rows = table.filter(pc.equal(keys, key))
            out.append(self._commit(table_name, day, hour, part_rows))
        return out

    def _commit(self, table_name: str, day: str, hour: str, rows: pa.Table) -> Written:
        part = self.root / table_name / f"date={day}" / f"hour={hour}"
        try:
            part.mkdir(parents=True, exist_ok=True)
            seq = self._next_seq(part)
            final = part / f"{self.sensor_id}-{seq:06d}.parquet"
            tmp = part / f".{final.name}.{uuid.uuid4().hex}.tmp"
            pq.write_table(rows, tmp, compression="zstd")
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            raise SinkError(
                f"lake {self.root}: cannot write {table_name} partition {day}/{hour}: {exc.strerror or exc}"
            ) from exc
        return Written(final, rows.num_rows)


def glob(root: Path, table_name: str) -> str:
    """The DuckDB glob for a lake table."""
    return str(root / table_name / "**" / "*.parquet")
