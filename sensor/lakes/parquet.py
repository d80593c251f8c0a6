"""The embedded lake: sensor/lake.py's hive-partitioned Parquet files behind the Lake interface."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from sensor.errors import SinkError
from sensor.lake import LakeWriter, Source, Written, claim_source, files_of_source, remove_files
from sensor.rules import context
from sensor.rules.context import Window
from sensor.rules.engine import new_findings


class ParquetLake:
    """`<lake>/<table>/date=YYYY-MM-DD/hour=HH/<sensor>-<seq>[.<source>].parquet`."""

    backend = "parquet"

    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, table: str) -> str:
        return f"{self.root}/{table}"

    def has_flows(self) -> bool:
        return (self.root / "flows").is_dir()

    def write(self, table: str, rows: pa.Table, *, sensor_id: str) -> list[Written]:
        return LakeWriter(self.root, sensor_id).write(table, rows)

    def source_records(self, source: Source) -> int:
        return len(files_of_source(self.root, "flows", source.id) + files_of_source(self.root, "findings", source.id))

    def _refuse_unless(self, replace: bool, source: Source) -> tuple[list[Path], list[Path]]:
        flows = files_of_source(self.root, "flows", source.id)
        findings = files_of_source(self.root, "findings", source.id)
        if (flows or findings) and not replace:
            raise SinkError(
                f"lake {self.root}: these capture(s) are in it already (source {source.id}, {len(flows)} flow "
                "file(s)); give --replace to replace their records"
            )
        return flows, findings

    def store_analysis(
        self, sensor_id: str, source: Source, flows: pa.Table, findings: pa.Table | None, *, replace: bool
    ) -> tuple[list[Written], pa.Table | None, list[Written], int]:
        with claim_source(self.root, source):  # one run per source at a time
            old_flows, old_findings = self._refuse_unless(replace, source)
            writer = LakeWriter(self.root, sensor_id, source=source)
            written = writer.write("flows", flows)
            new = {w.path for w in written}
            replaced = remove_files([p for p in old_flows if p not in new])
            if findings is None:
                return written, None, [], replaced
            # this source's findings go with its flows; findings other runs wrote stay (no duplicates)
            replaced += remove_files(old_findings)
            fresh = self._new_findings(findings)
            return written, fresh, writer.write("findings", fresh), replaced

    def write_findings(self, sensor_id: str, findings: pa.Table) -> tuple[pa.Table, list[Written]]:
        fresh = self._new_findings(findings)
        return fresh, LakeWriter(self.root, sensor_id).write("findings", fresh)

    def _new_findings(self, findings: pa.Table) -> pa.Table:
        """The findings not in the lake yet. Another run replacing its source may delete findings files between
        the listing and the read: then the lake is read again."""
        for attempt in range(10):
            try:
                return new_findings(self.root, findings)
            except duckdb.IOException:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def context_connection(self) -> duckdb.DuckDBPyConnection:
        return context.connect()

    def register_flows(self, con: duckdb.DuckDBPyConnection, window: Window, sensors: Sequence[str] = ()) -> list[str]:
        context.register_flows_from_lake(con, self.root, window, sensors)
        return [str(self.root / "flows")]

    def close(self) -> None:
        return None
