"""The lake behind one interface: `parquet` (hive-partitioned files, one box) or `ducklake` (a fleet's shared lake).

Writers (analyze, run, ingest-zeek) and readers (check, the rules) see the same two tables, `flows` and
`findings`, with the same columns; which backend holds them is the config's `[lake] backend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa

from sensor.config import Config
from sensor.lake import Source, Written
from sensor.rules.context import Window

TABLES = ("flows", "findings")


class Lake(Protocol):
    """What every command needs of a lake."""

    backend: str

    def where(self, table: str) -> str:
        """Where a table lives, for messages ("<dir>/flows" or "ducklake <catalog>: flows")."""
        ...

    def has_flows(self) -> bool: ...

    def write(self, table: str, rows: pa.Table, *, sensor_id: str) -> list[Written]:
        """Commit records (interval records of `run` and `ingest-zeek`, findings); all or nothing per call."""
        ...

    def source_records(self, source: Source) -> int:
        """How many flow records an earlier analysis of these captures left in the lake."""
        ...

    def store_analysis(
        self, sensor_id: str, source: Source, flows: pa.Table, findings: pa.Table | None, *, replace: bool
    ) -> tuple[list[Written], pa.Table | None, list[Written], int]:
        """One offline analysis: its flows, and its findings not in the lake yet; with `replace` the earlier
        records of the source go. Refused (SinkError) if the source is in the lake and not `replace`.
        Returns (flows written, fresh findings, findings written, earlier files or records removed)."""
        ...

    def write_findings(self, sensor_id: str, findings: pa.Table) -> tuple[pa.Table, list[Written]]:
        """Store the findings not in the lake yet (by finding_id), once even with several checkers at once."""
        ...

    def context_connection(self) -> duckdb.DuckDBPyConnection:
        """A fresh DuckDB connection that can read this lake, for the rules' context."""
        ...

    def register_flows(self, con: duckdb.DuckDBPyConnection, window: Window, sensors: Sequence[str] = ()) -> list[str]:
        """Make the `flow_records` view over the window (only the given sensors, if any) in `con`; returns the
        directories the confined connection must still be allowed to read."""
        ...

    def close(self) -> None: ...


def open_lake(cfg: Config, *, metrics: object | None = None) -> Lake:
    """The lake the config names."""
    if cfg.lake.backend == "ducklake":
        from sensor.lakes.ducklake import DuckLake

        return DuckLake.from_config(cfg, metrics=metrics)
    from sensor.lakes.parquet import ParquetLake

    return ParquetLake(Path(cfg.sensor.lake))


def as_lake(lake: Lake | Path) -> Lake:
    """A path given where a lake is expected is a Parquet lake (the embedded default)."""
    if isinstance(lake, Path):
        from sensor.lakes.parquet import ParquetLake

        return ParquetLake(lake)
    return lake
