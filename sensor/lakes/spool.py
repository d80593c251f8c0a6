"""The DuckLake writer's local spool: record batches kept on disk until the catalog has committed them.

Each batch is one Arrow IPC file, written under a temporary name, fsynced and renamed, so a batch is there
whole or not at all and survives a restart. Its name carries its order, its batch id (the key the lake's
commit ledger records, so a batch whose commit was acknowledged late is never committed twice), its table and
its record count. The spool is bounded: past `max_records` the oldest batches are dropped, and counted.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.ipc as ipc

from sensor.atomic import atomic_write
from sensor.errors import SinkError

_NAME = re.compile(r"^(?P<seq>\d{20})-(?P<batch>[0-9a-f]{32})\.(?P<table>[a-z_]+)\.(?P<rows>\d+)\.arrow$")
SENSOR_KEY = b"lync_sensor.sensor_id"


@dataclass(frozen=True)
class Batch:
    """One spooled batch of records for one table."""

    path: Path
    batch_id: str
    table: str
    rows: int

    def read(self) -> tuple[pa.Table, str]:
        """The records and the sensor that wrote them."""
        with ipc.open_file(self.path) as reader:
            tbl = reader.read_all()
        sensor = (tbl.schema.metadata or {}).get(SENSOR_KEY, b"").decode()
        return tbl.replace_schema_metadata(None), sensor


def _write_ipc(fh: BinaryIO, rows: pa.Table) -> None:
    with ipc.new_file(fh, rows.schema) as writer:
        writer.write_table(rows)


class Spool:
    """A directory of batches, oldest first."""

    def __init__(self, path: Path, max_records: int) -> None:
        self.path = path
        self.max_records = max_records

    def put(self, table: str, rows: pa.Table, sensor_id: str) -> Batch:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.{table}.{rows.num_rows}.arrow"
        meta = dict(rows.schema.metadata or {})
        meta[SENSOR_KEY] = sensor_id.encode()
        rows = rows.replace_schema_metadata(meta)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            final = atomic_write(self.path / name, lambda fh: _write_ipc(fh, rows))
        except OSError as exc:
            raise SinkError(f"lake spool {self.path}: cannot write a batch: {exc.strerror or exc}") from exc
        m = _NAME.match(name)
        assert m is not None
        return Batch(final, m.group("batch"), table, rows.num_rows)

    def batches(self) -> list[Batch]:
        if not self.path.is_dir():
            return []
        out = []
        for p in sorted(self.path.iterdir()):
            m = _NAME.match(p.name)
            if m:
                out.append(Batch(p, m.group("batch"), m.group("table"), int(m.group("rows"))))
        return out

    def records(self) -> int:
        return sum(b.rows for b in self.batches())

    def remove(self, batch: Batch) -> None:
        with contextlib.suppress(FileNotFoundError):
            batch.path.unlink()

    def enforce_bound(self) -> int:
        """Drop the oldest batches while the spool holds more than max_records; returns the records dropped."""
        batches = self.batches()
        total = sum(b.rows for b in batches)
        dropped = 0
        while total > self.max_records and len(batches) > 1:
            oldest = batches.pop(0)
            self.remove(oldest)
            total -= oldest.rows
            dropped += oldest.rows
        return dropped
