"""The Parquet lake: hive-partitioned tables; each file claimed under a name no other writer can take.

Guarantees (README, "Reliability"):
- A file appears whole or not at all: it is written under a hidden temporary name in its partition directory,
  fsynced, then hard-linked to its final name (`sensor.atomic.atomic_write`, no-replace mode). `os.link`
  fails when the name exists, so a writer never replaces a file it did not create; two writers that pick the
  same sequence number both get a file, one of them under the next number.
- Temporary names carry the writer's host, pid and process start time. A writer, when it starts, removes
  the temporary files of writers on this host that are no longer alive (a `kill -9` mid-write), and any
  temporary file older than an hour whose writer it cannot check (another host, an older layout).
- Records of an offline analysis carry their source: the digest of the capture files is in the file name
  (`<sensor>-<seq>.<source>.parquet`) and in the file's key-value metadata, so one source's records can be
  found and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sensor.atomic import NO_HARD_LINKS, Writer, atomic_write
from sensor.errors import SinkError

# <sensor>-<seq>[.<source>].parquet; sensor ids hold letters, digits, '.', '_' and '-' (sensor.config)
_NAME = re.compile(r"^(?P<sensor>.+?)-(?P<seq>\d{6,})(?:\.(?P<source>[0-9a-f]{16}))?\.parquet$")
# .lake-tmp~<host>~<pid>~<process start ticks>~<random>.tmp
_TMP = re.compile(r"^\.lake-tmp~(?P<host>[^~]*)~(?P<pid>\d+)~(?P<start>\d+)~[0-9a-f]+\.tmp$")
_LEGACY_TMP = re.compile(r"^\..+\.parquet\.[0-9a-f]{32}\.tmp$")  # before the pid was in the name
STALE_UNCHECKABLE_S = 3600.0  # a temporary file no live writer can still be writing (one file takes seconds)
SOURCE_KEY = b"lync_sensor.source"
SOURCE_FILES_KEY = b"lync_sensor.source_files"
_SOURCE_LEN = 16
_HASH_CHUNK = 1 << 20

_cleaned: set[str] = set()  # lakes this process already swept for stale temporary files


@dataclass(frozen=True)
class Written:
    """One Parquet file the lake writer committed."""

    path: Path
    rows: int


@dataclass(frozen=True)
class Source:
    """The identity of what an offline run read: a digest of the capture files' contents, and their names."""

    id: str
    files: tuple[str, ...]

    @classmethod
    def of_files(cls, paths: Sequence[Path]) -> Source:
        """sha256 over the sorted per-file sha256 digests: the same captures give the same source, wherever
        they lie and in whatever order they are named. A file that cannot be read is left to the reader, which
        reports it; its name stands in for its content here."""
        digests = []
        for p in paths:
            h = hashlib.sha256()
            try:
                with p.open("rb") as fh:
                    while chunk := fh.read(_HASH_CHUNK):
                        h.update(chunk)
            except OSError:
                h.update(b"unreadable:" + str(p).encode("utf-8", "surrogateescape"))
            digests.append(h.hexdigest())
        whole = hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()
        return cls(whole[:_SOURCE_LEN], tuple(str(p) for p in paths))


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _start_ticks(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot, /proc/<pid>/stat field 22); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    try:
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return 0


def _alive(pid: int, start: int) -> bool:
    """The process that made a temporary name still runs (same pid *and* start time: pids are reused)."""
    if Path("/proc/self/stat").exists():
        now = _start_ticks(pid)
        return now is not None and (start == 0 or now in (0, start))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name() -> str:
    """A temporary file name that says which process made it, so that a later writer can tell it is stale."""
    pid = os.getpid()
    return f".lake-tmp~{_host()}~{pid}~{_start_ticks(pid) or 0}~{uuid.uuid4().hex[:12]}.tmp"


def clean_stale_temporaries(root: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temporary files of writers that are gone; returns what was removed."""
    now = time.time() if now is None else now
    host = _host()
    removed: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith(".tmp") or not name.startswith("."):
                continue
            path = Path(dirpath) / name
            m = _TMP.match(name)
            if m and m.group("host") == host:
                stale = not _alive(int(m.group("pid")), int(m.group("start")))
            elif m or _LEGACY_TMP.match(name):
                try:
                    stale = now - path.stat().st_mtime > STALE_UNCHECKABLE_S
                except OSError:
                    continue
            else:
                continue
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def source_of(path: Path) -> str | None:
    """The source (capture digest) a lake file's records came from, from its name; None for live/check."""
    m = _NAME.match(path.name)
    return m.group("source") if m else None


def partition_dir(root: Path, table_name: str, day: str, hour: str) -> Path:
    """The directory of one hour of a table: `<lake>/<table>/date=YYYY-MM-DD/hour=HH`."""
    return root / table_name / f"date={day}" / f"hour={hour}"


@dataclass(frozen=True)
class Partition:
    """One hour partition of a table."""

    day: str  # YYYY-MM-DD
    hour: str  # HH
    path: Path


def partitions(root: Path, table_name: str) -> list[Partition]:
    """A table's hour partitions, oldest first."""
    out = []
    for d in (root / table_name).glob("date=*"):
        for h in d.glob("hour=*"):
            out.append(Partition(d.name.removeprefix("date="), h.name.removeprefix("hour="), h))
    return sorted(out, key=lambda p: (p.day, p.hour))


def files(root: Path, table_name: str, *, sensor: str | None = None, source: str | None = None) -> list[Path]:
    """A table's Parquet files (of one sensor id, and of one offline source, if given), sorted by path."""
    name = f"{sensor}-*" if sensor is not None else "*"
    if source is not None:
        name += f".{source}"
    return sorted((root / table_name).glob(f"date=*/hour=*/{name}.parquet"))


def files_of_source(root: Path, table_name: str, source: str) -> list[Path]:
    """Every file of a table written from one source."""
    return files(root, table_name, source=source)


class LakeWriter:
    """Writes tables to <lake>/<table>/date=YYYY-MM-DD/hour=HH/<sensor>-<seq>[.<source>].parquet.

    Each file is written under a hidden temporary name in its partition directory and hard-linked to a name
    that did not exist (the next free sequence number), so a reader (DuckDB's glob) never sees half a file
    and no writer, in this process or another, ever overwrites another's file; zstd compression.
    """

    def __init__(self, root: Path, sensor_id: str, *, source: Source | None = None) -> None:
        self.root = root
        self.sensor_id = sensor_id
        self.source = source
        key = str(root.resolve())
        if key not in _cleaned and root.is_dir():
            _cleaned.add(key)
            clean_stale_temporaries(root)

    def _next_seq(self, part: Path) -> int:
        best = -1
        for entry in part.iterdir():
            m = _NAME.match(entry.name)
            if m and m.group("sensor") == self.sensor_id:
                best = max(best, int(m.group("seq")))
        return best + 1

    def _name(self, seq: int) -> str:
        tag = f".{self.source.id}" if self.source is not None else ""
        return f"{self.sensor_id}-{seq:06d}{tag}.parquet"

    def write(self, table_name: str, table: pa.Table, *, ts_column: str = "ts") -> list[Written]:
        """Partition `table` by the UTC date and hour of `ts_column` and commit one file per partition."""
        if table.num_rows == 0:
            return []
        if self.source is not None:
            meta = dict(table.schema.metadata or {})
            meta[SOURCE_KEY] = self.source.id.encode()
            meta[SOURCE_FILES_KEY] = json.dumps(list(self.source.files)).encode("utf-8", "surrogateescape")
            table = table.replace_schema_metadata(meta)
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

    def _claim(self, part: Path, write: Writer) -> Path:
        """Write a file under the next free final name (`atomic_write`'s no-replace mode): never replaces an
        existing file; a name another writer took meanwhile is passed over and the file written again."""
        seq = self._next_seq(part)
        while True:
            try:
                return atomic_write(part / self._name(seq), write, replace=False, tmp_name=temp_name())
            except FileExistsError:
                seq += 1
            except OSError as exc:
                if exc.errno not in NO_HARD_LINKS:
                    raise
                # no hard links on this filesystem: a random 18-digit sequence number nobody else will pick
                final = part / self._name(uuid.uuid4().int % 10**18)
                return atomic_write(final, write, tmp_name=temp_name())

    def _commit(self, table_name: str, day: str, hour: str, rows: pa.Table) -> Written:
        part = partition_dir(self.root, table_name, day, hour)
        try:
            part.mkdir(parents=True, exist_ok=True)
            final = self._claim(part, lambda fh: pq.write_table(rows, fh, compression="zstd"))
        except OSError as exc:
            raise SinkError(
                f"lake {self.root}: cannot write {table_name} partition {day}/{hour}: {exc.strerror or exc}"
            ) from exc
        return Written(final, rows.num_rows)


def remove_files(paths: Sequence[Path]) -> int:
    """Delete lake files (the superseded records of a re-analysed source); returns how many were removed."""
    n = 0
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


@contextlib.contextmanager
def claim_source(root: Path, source: Source) -> Iterator[None]:
    """Hold `<lake>/_sources/<source>.lock` while one run writes a source: a second run of the same captures
    at the same time is refused instead of racing it. A lock left by a dead process is taken over."""
    locks = root / "_sources"
    try:
        locks.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"lake {root}: cannot create {locks}: {exc.strerror or exc}") from exc
    lock = locks / f"{source.id}.lock"
    pid = os.getpid()
    mine = json.dumps({"host": _host(), "pid": pid, "start": _start_ticks(pid) or 0})
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                held = json.loads(lock.read_text())
                host, other, start = str(held["host"]), int(held["pid"]), int(held["start"])
            except (OSError, ValueError, KeyError, TypeError):
                host, other, start = _host(), -1, 0
            if host == _host() and (other < 0 or not _alive(other, start)):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise SinkError(
                f"lake {root}: the same capture(s) are being analysed right now by pid {other} on {host} (lock {lock})"
            ) from None
        except OSError as exc:
            raise SinkError(f"lake {root}: cannot create {lock}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "w") as fh:
            fh.write(mine)
        break
    else:
        raise SinkError(f"lake {root}: cannot take the lock {lock}")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def glob(root: Path, table_name: str) -> str:
    """The DuckDB glob for a lake table (read with `hive_partitioning = true` for the date and hour columns)."""
    return str(root / table_name / "**" / "*.parquet")


def sql_glob(root: Path, table_name: str) -> str:
    """`glob` quoted for a SQL string literal."""
    return glob(root, table_name).replace("'", "''")
