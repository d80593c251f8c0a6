"""One log file, plain or gzip, as complete lines (capped), its identity, and the files of a log in a directory."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from sensor.sources.zeek.base import LONG_LINE, MAX_FILE_BYTES, MAX_LINE_BYTES, SIZE_CAP, Position

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_IDENT_MAX = 1 << 16  # the identity hash covers the header and the first record, at most this many bytes
_ROTATED_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}$")  # Log::default_rotation_date_format
_ZEEKCTL_STAMP = re.compile(r"^(\d{2}:\d{2}:\d{2})-\d{2}:\d{2}:\d{2}$")  # zeekctl archive: <date dir>/conn.HH:MM:SS-..


class _Gunzip:
    """gzip decompression that hands out every byte it could decode before a truncation (GzipFile drops the
    last block it was decoding), for concatenated members too; a truncated file raises EOFError at its end.
    At most `n` bytes come out of one read, however well the input compresses (a gzip bomb stays small)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self._d = zlib.decompressobj(wbits=31)

    def read(self, n: int = _CHUNK) -> bytes:
        while True:
            d = self._d
            if d.eof and d.unused_data:  # the next member of a concatenated file
                data = d.unused_data
                self._d = d = zlib.decompressobj(wbits=31)
            elif d.unconsumed_tail:
                data = d.unconsumed_tail
            else:
                data = self.raw.read(1 << 16)
                if not data:
                    if not d.eof:
                        raise EOFError("compressed file ended before the end-of-stream marker was reached")
                    return b""
            out = d.decompress(data, max(n, 1))
            if out:
                return out

    def close(self) -> None:
        self.raw.close()


class Lines:
    """One open file, plain or gzip, handing out complete lines from a (decompressed) byte offset."""

    def __init__(
        self,
        path: Path,
        *,
        problems: Counter[str] | None = None,
        max_line: int = MAX_LINE_BYTES,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.path = path
        self.gz = path.name.endswith(".gz")
        self.problems: Counter[str] = problems if problems is not None else Counter()
        self.max_line = max_line
        self.max_bytes = max_bytes
        self.read_bytes = 0  # decompressed bytes read so far
        self.capped = False  # stopped at max_bytes
        self._skipping = False  # inside a line longer than max_line, throwing it away
        raw = path.open("rb", buffering=0)
        st = os.fstat(raw.fileno())
        self.dev, self.inode = st.st_dev, st.st_ino
        self.fh: BinaryIO | _Gunzip = _Gunzip(raw) if self.gz else raw
        self._raw = raw
        self.offset = 0  # bytes handed out (complete lines)
        self.buf = b""
        self.damaged = False
        self._hash = hashlib.sha256()
        self.ident_len = 0
        self.ident_done = False

    def close(self) -> None:
        self.fh.close()
        self._raw.close()

    def fileno(self) -> int:
        return self._raw.fileno()

    def _fill(self) -> bool:
        if self.damaged or self.capped:
            return False
        if self.read_bytes >= self.max_bytes:
            self.capped = True
            self.problems[SIZE_CAP] += 1
            log.warning("%s: more than %d bytes (decompressed); the rest is not read", self.path, self.max_bytes)
            return False
        try:
            data = self.fh.read(min(_CHUNK, self.max_bytes - self.read_bytes))
        except (EOFError, zlib.error, OSError) as exc:
            self.damaged = True
            log.warning("%s: %s; keeping the lines before it", self.path, exc)
            return False
        if not data:
            return False
        self.read_bytes += len(data)
        self.buf += data
        return True

    def lines(self, is_header: Callable[[bytes], bool]) -> Iterator[tuple[int, bytes]]:
        """(start offset, line without newline) for each complete line available now."""
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > self.max_line:  # an overlong line: counted once, thrown away as it comes
                    if not self._skipping:
                        self._skipping = True
                        self.problems[LONG_LINE] += 1
                        log.warning("%s: a line longer than %d bytes at offset %d skipped", self.path,
                                    self.max_line, self.offset)  # fmt: skip
                    self.offset += len(self.buf)
                    self.buf = b""
                if not self._fill():
                    return
                continue
            line = self.buf[: nl + 1]
            self.buf = self.buf[nl + 1 :]
            start = self.offset
            self.offset += len(line)
            if self._skipping or len(line) > self.max_line + 1:
                if not self._skipping:
                    self.problems[LONG_LINE] += 1
                self._skipping = False
                continue
            if not self.ident_done:
                self._hash.update(line)
                self.ident_len = self.offset
                if not is_header(line) or self.offset >= _IDENT_MAX:
                    self.ident_done = True
            yield start, line[:-1]

    def rest(self) -> bytes:
        """What is left after the last complete line (a partial line), once the file is at its end."""
        while self._fill():
            if len(self.buf) > self.max_line:
                if not self._skipping:
                    self._skipping = True
                    self.problems[LONG_LINE] += 1
                self.offset += len(self.buf)
                self.buf = b""
        if self._skipping:
            self.offset += len(self.buf)
            self.buf = b""
        return self.buf

    @property
    def ident(self) -> str:
        return self._hash.hexdigest()

    def position(self) -> Position:
        return Position(str(self.path), self.dev, self.inode, self.offset, self.ident, self.ident_len)


def identity(path: Path, length: int) -> str | None:
    """sha256 of the first `length` (decompressed) bytes of a file; None if it is shorter or unreadable."""
    try:
        with path.open("rb") as raw:
            fh: BinaryIO | _Gunzip = _Gunzip(raw) if path.name.endswith(".gz") else raw
            data = b""
            while len(data) < length:
                more = fh.read(length - len(data))
                if not more:
                    break
                data += more
            data = data[:length]
    except (OSError, EOFError, zlib.error):
        return None
    return hashlib.sha256(data).hexdigest() if len(data) == length else None


@dataclass(frozen=True)
class LogFile:
    """A file of a log found in a directory: current (`conn.log`) or rotated, with its rotation time."""

    path: Path
    log: str
    current: bool
    when: float


def discover(directory: Path, log_name: str) -> list[LogFile]:
    """The files of one log in a directory, oldest first, the current file last.

    Rotated names: `conn.2026-11-26-10-00-00.log[.gz]` (Zeek's default rotation format) or zeekctl's archive
    `YYYY-MM-DD/conn.10:00:00-11:00:00.log.gz`; any other `conn.<x>.log[.gz]` or `conn.log.gz` sorts by mtime.
    """
    pattern = re.compile(rf"^{re.escape(log_name)}(?:\.(?P<stamp>.+))?\.log(?P<gz>\.gz)?$")
    found: list[LogFile] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or not entry.is_file():
            continue
        stamp, gz = m.group("stamp"), m.group("gz")
        if stamp is None and not gz:
            found.append(LogFile(entry, log_name, True, float("inf")))
            continue
        found.append(LogFile(entry, log_name, False, _rotation_time(entry, stamp)))
    return sorted(found, key=lambda f: (f.when, f.path.name))


def _rotation_time(path: Path, stamp: str | None) -> float:
    if stamp and _ROTATED_STAMP.match(stamp):
        return datetime.strptime(stamp, "%Y-%m-%d-%H-%M-%S").replace(tzinfo=UTC).timestamp()
    m = _ZEEKCTL_STAMP.match(stamp or "")
    if m:
        try:
            day = datetime.strptime(path.parent.name, "%Y-%m-%d")
            hms = datetime.strptime(m.group(1), "%H:%M:%S")
            return day.replace(hour=hms.hour, minute=hms.minute, second=hms.second, tzinfo=UTC).timestamp()
        except ValueError:
            pass
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
