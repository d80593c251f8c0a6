"""Zeek log readers: TSV and JSON, plain or gzip, rotated files in time order, followed across rotation.

A log is one Zeek stream in one directory (`<dir>/conn.log` and its rotated files). `LogStream` reads its
rotated files oldest first, then the current file; with `follow` it keeps the current file open, so when Zeek
renames (and compresses) it away and starts a new one, the rest of the old file is read through the open
descriptor before the new file is opened: no line lost, none read twice. `Position` says where a restart
resumes: the file (device, inode and a hash of its first bytes, i.e. the header and first record) and the
byte offset of the first line not yet handed out. Damage is counted by kind (`PROBLEMS`), never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

# The Zeek logs the sensor reads (lync.log is written by the package in deploy/zeek/).
LOGS: tuple[str, ...] = ("conn", "ssl", "x509", "sip", "http", "lync")

# Problem kinds: the `kind` label of lync_sensor_decode_errors_total.
MALFORMED = "zeek_malformed_line"
HEADER_CHANGE = "zeek_header_change"
TRUNCATED_GZIP = "zeek_truncated_gzip"
ROTATED = "zeek_rotated_while_reading"
BAD_TS = "zeek_unparseable_ts"
LOST = "zeek_rotated_file_lost"
TRUNCATED_FILE = "zeek_truncated_file"
PROBLEMS: tuple[str, ...] = (MALFORMED, HEADER_CHANGE, TRUNCATED_GZIP, ROTATED, BAD_TS, LOST, TRUNCATED_FILE)

_CHUNK = 1 << 20
_IDENT_MAX = 1 << 16  # the identity hash covers the header and the first record, at most this many bytes
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|\\)")
_JSON_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_MASKED = re.compile(rb'(":\s*)X{10}\.X{6}')  # btest's masked timestamps: not valid JSON
_ROTATED_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}$")  # Log::default_rotation_date_format
_ZEEKCTL_STAMP = re.compile(r"^(\d{2}:\d{2}:\d{2})-\d{2}:\d{2}:\d{2}$")  # zeekctl archive: <date dir>/conn.HH:MM:SS-..


@dataclass(frozen=True)
class ZeekRecord:
    """One log line: its fields by Zeek name (`id.orig_h` ...), with the log it came from and where."""

    log: str
    ts: float | None  # None: unparseable (counted), e.g. the masked XXXXXXXXXX.XXXXXX of Zeek's test baselines
    fields: dict[str, Any]
    source: str
    offset: int


@dataclass(frozen=True)
class Position:
    """Where reading of a log resumes: the file (device, inode, identity hash of its first bytes) and offset."""

    path: str
    dev: int
    inode: int
    offset: int
    ident: str
    ident_len: int

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "dev": self.dev,
            "inode": self.inode,
            "offset": self.offset,
            "ident": self.ident,
            "ident_len": self.ident_len,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Position:
        return cls(
            str(d["path"]), int(d["dev"]), int(d["inode"]), int(d["offset"]), str(d["ident"]), int(d["ident_len"])
        )


def _unescape(raw: bytes) -> bytes:
    """Zeek ASCII escapes: \\xNN for a byte, \\\\ for a backslash."""
    if b"\\" not in raw:
        return raw
    return _ESCAPE.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]), raw)


def _json_unescape(text: str) -> str:
    """Zeek's JSON writer escapes non-printable bytes as the text \\xNN; make them bytes again (surrogateescape).

    The JSON writer does not escape a literal backslash, so a URI that held the four characters `\\x07` reads
    the same as one that held the byte 0x07: that difference is lost in Zeek's JSON, not here (TSV keeps it).
    """
    if "\\x" not in text:
        return text
    raw = _JSON_ESCAPE.sub(lambda m: _byte_char(int(m.group(1), 16)), text)
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")


def _byte_char(b: int) -> str:
    """A raw byte as a str character: ASCII as itself, 0x80-0xFF as its surrogateescape code point."""
    return chr(b) if b < 0x80 else chr(0xDC00 + b)


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, str):
            out[prefix + k] = _json_unescape(v)
        elif isinstance(v, list):
            out[prefix + k] = [_json_unescape(e) if isinstance(e, str) else e for e in v]
        else:
            out[prefix + k] = v
    return out


def parse_ts(value: object) -> float | None:
    """Epoch seconds from a Zeek ts: seconds (TSV, JSON), milliseconds (JSON::TS_MILLIS) or ISO 8601."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        v = float(value)
        return v / 1000.0 if v > 1e11 else v
    if isinstance(value, bytes | str):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        try:
            return float(text)
        except ValueError:
            pass
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    return None


class LineParser:
    """Turns the lines of one file into records; the format (Zeek TSV with its header, or JSON) is sniffed.

    A new `#fields` line in the middle of a file switches the schema (counted as a header change).
    `ts_substitute` replaces an unparseable ts (the masked `XXXXXXXXXX.XXXXXX` of Zeek's test baselines);
    it exists for tests. Either way the line is counted as an unparseable ts and its fields are kept.
    """

    def __init__(self, log_name: str, source: str, problems: Counter[str], ts_substitute: float | None = None):
        self.log = log_name
        self.source = source
        self.problems = problems
        self.ts_substitute = ts_substitute
        self.format: str | None = None
        self.sep = b"\t"
        self.set_sep = b","
        self.empty = b"(empty)"
        self.unset = b"-"
        self.fields: list[str] | None = None
        self.types: list[str] | None = None
        self.data_lines = 0
        self._warned: set[str] = set()

    @staticmethod
    def is_header_line(line: bytes) -> bool:
        return line.startswith(b"#")

    def is_header(self, line: bytes) -> bool:
        return line.startswith(b"#")

    def header(self, line: bytes, *, count: bool = True) -> None:
        """Apply one '#' line (TSV directives; anything else, like btest's '###' banner, is ignored)."""
        if line.startswith(b"#separator "):
            self.sep = _unescape(line[len(b"#separator ") :].strip())
            return
        parts = line[1:].split(self.sep)
        key, values = parts[0].decode("ascii", "replace"), parts[1:]
        if key == "set_separator" and values:
            self.set_sep = _unescape(values[0])
        elif key == "empty_field" and values:
            self.empty = values[0]
        elif key == "unset_field" and values:
            self.unset = values[0]
        elif key == "fields":
            new = [v.decode("utf-8", "replace") for v in values]
            if count and self.fields is not None and (self.data_lines or new != self.fields):
                self.problems[HEADER_CHANGE] += 1
                self._warn("header", f"{self.source}: a new #fields line mid-file; switching to its schema")
            self.fields, self.types = new, None
            self.format = "tsv"
        elif key == "types":
            self.types = [v.decode("ascii", "replace") for v in values]

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def parse(self, line: bytes, offset: int) -> ZeekRecord | None:
        """A data line (no trailing newline) to a record; None when malformed (counted) or a header line."""
        line = line.rstrip(b"\r")
        if not line:
            return None
        if self.is_header(line):
            if self.format != "json":
                self.header(line)
            return None
        if self.format is None:
            self.format = "json" if line.startswith(b"{") else "tsv"
        self.data_lines += 1
        fields = self._json(line) if self.format == "json" else self._tsv(line)
        if fields is None:
            self.problems[MALFORMED] += 1
            return None
        ts = parse_ts(fields.get("ts"))
        if ts is None:
            # Counted and reported; the line's facts are kept (they join conn.log by uid), and only a flow
            # with no usable ts at all is dropped (sensor.zeek). Tests may substitute a fixed time.
            self.problems[BAD_TS] += 1
            shown = fields.get("ts_raw", fields.get("ts"))
            what = f"substitute {self.ts_substitute} used" if self.ts_substitute is not None else "ts left unset"
            self._warn("ts", f"{self.source}: unparseable ts {shown!s} (counted; {what})")
            ts = self.ts_substitute
        fields.pop("ts_raw", None)
        fields["ts"] = ts
        return ZeekRecord(self.log, ts, fields, self.source, offset)

    @staticmethod
    def parse_with(parser: LineParser, problems: Counter[str], line: bytes, offset: int) -> ZeekRecord | None:
        """Parse one line counting problems elsewhere (a trial parse that must not count)."""
        saved, parser.problems = parser.problems, problems
        try:
            rec = parser.parse(line, offset)
        finally:
            parser.problems = saved
        if rec is not None:
            for kind, n in problems.items():
                saved[kind] += n
        return rec

    def _json(self, line: bytes) -> dict[str, Any] | None:
        masked = False
        try:
            obj = json.loads(line)
        except ValueError:
            fixed, n = _MASKED.subn(rb"\1null", line)
            if not n:
                return None
            masked = True
            try:
                obj = json.loads(fixed)
            except ValueError:
                return None
        if not isinstance(obj, dict):
            return None
        fields = _flatten(obj)
        if masked and fields.get("ts") is None:
            fields["ts_raw"] = "XXXXXXXXXX.XXXXXX"
        return fields

    def _tsv(self, line: bytes) -> dict[str, Any] | None:
        if self.fields is None:
            return None
        values = line.split(self.sep)
        if len(values) != len(self.fields):
            return None
        types = self.types if self.types is not None and len(self.types) == len(self.fields) else None
        out: dict[str, Any] = {}
        try:
            for i, (name, raw) in enumerate(zip(self.fields, values, strict=True)):
                kind = types[i] if types else ("time" if name == "ts" else "string")
                if kind == "time":
                    out[name] = parse_ts(raw) if raw != self.unset else None
                    if name == "ts" and out[name] is None:
                        out["ts_raw"] = raw.decode("utf-8", "replace")
                else:
                    out[name] = self._value(raw, kind)
        except ValueError:
            return None
        return out

    def _value(self, raw: bytes, kind: str) -> Any:
        if raw == self.unset:
            return None
        if kind.startswith(("set[", "vector[")):
            if raw == self.empty:
                return []
            inner = kind[kind.index("[") + 1 : -1]
            return [None if e == self.unset else self._scalar(e, inner) for e in raw.split(self.set_sep)]
        if raw == self.empty and kind == "string":
            return ""
        return self._scalar(raw, kind)

    def _scalar(self, raw: bytes, kind: str) -> Any:
        if kind in ("count", "int", "port"):
            return int(raw)
        if kind in ("double", "interval", "time"):
            return float(raw)
        if kind == "bool":
            if raw in (b"T", b"F"):
                return raw == b"T"
            raise ValueError(f"bool {raw!r}")
        return _unescape(raw).decode("utf-8", "surrogateescape")


class _Gunzip:
    """gzip decompression that hands out every byte it could decode before a truncation (GzipFile drops the
    last block it was decoding), for concatenated members too; a truncated file raises EOFError at its end."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self._d = zlib.decompressobj(wbits=31)

    def read(self, n: int = _CHUNK) -> bytes:
        out = b""
        while not out:
            chunk = self.raw.read(max(n, 1 << 16))
            if not chunk:
                if not self._d.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                return b""
            out = self._d.decompress(chunk)
            while self._d.eof and self._d.unused_data:
                rest, self._d = self._d.unused_data, zlib.decompressobj(wbits=31)
                out += self._d.decompress(rest)
        return out

    def close(self) -> None:
        self.raw.close()


class _Lines:
    """One open file, plain or gzip, handing out complete lines from a (decompressed) byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.gz = path.name.endswith(".gz")
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
        if self.damaged:
            return False
        try:
            data = self.fh.read(_CHUNK)
        except (EOFError, zlib.error, OSError) as exc:
            self.damaged = True
            log.warning("%s: %s; keeping the lines before it", self.path, exc)
            return False
        if not data:
            return False
        self.buf += data
        return True

    def lines(self, is_header: Callable[[bytes], bool]) -> Iterator[tuple[int, bytes]]:
        """(start offset, line without newline) for each complete line available now."""
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if not self._fill():
                    return
                continue
            line = self.buf[: nl + 1]
            self.buf = self.buf[nl + 1 :]
            start = self.offset
            self.offset += len(line)
            if not self.ident_done:
                self._hash.update(line)
                self.ident_len = self.offset
                if not is_header(line) or self.offset >= _IDENT_MAX:
                    self.ident_done = True
            yield start, line[:-1]

    def rest(self) -> bytes:
        """What is left after the last complete line (a partial line), once the file is at its end."""
        while self._fill():
            pass
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


def read_log(
    path: Path, *, log_name: str | None = None, problems: Counter[str] | None = None, ts_substitute: float | None = None
) -> list[ZeekRecord]:
    """Every record of one file (plain or gzip, TSV or JSON), e.g. a fixture read in place."""
    name = log_name or path.name.split(".", 1)[0]
    counts = problems if problems is not None else Counter()
    parser = LineParser(name, str(path), counts, ts_substitute)
    src = _Lines(path)
    try:
        out = [r for start, line in src.lines(parser.is_header) if (r := parser.parse(line, start)) is not None]
        tail = src.rest()
        if tail and (r := parser.parse(tail, src.offset)) is not None:
            out.append(r)
        if src.damaged:
            counts[TRUNCATED_GZIP if src.gz else MALFORMED] += 1
    finally:
        src.close()
    return out


class LogStream:
    """One log (e.g. `conn`) in one directory: rotated files oldest first, then the current file, followed.

    `done` holds the identities of files already read completely (kept in the state file), so a restart reads
    neither them nor the part of the current file before `position`. In follow mode the current file's last
    partial line waits for its newline; a rotated file that is still being compressed (modified less than
    `settle_s` ago) waits for the next poll.
    """

    def __init__(
        self,
        directory: Path,
        log_name: str,
        *,
        follow: bool,
        problems: Counter[str],
        position: Position | None = None,
        done: Sequence[str] = (),
        ts_substitute: float | None = None,
        settle_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.log = log_name
        self.follow = follow
        self.problems = problems
        self.ts_substitute = ts_substitute
        self.settle_s = settle_s
        self.clock = clock
        self.done: list[str] = list(done)
        self._done_set = set(self.done)
        self._open: _Lines | None = None
        self._parser: LineParser | None = None
        self._open_current = False
        self._resume = position
        self._held: ZeekRecord | None = None
        self._held_pos: Position | None = None
        self._last: Position | None = None  # the current file's end, after a one-shot run read it
        self._idents: dict[tuple[str, int, float], str] = {}

    @property
    def current_path(self) -> Path:
        return self.directory / f"{self.log}.log"

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    # ---- positions -------------------------------------------------------------------------------------------
    @property
    def held_ts(self) -> float | None:
        """ts of the record held back by the last `read(horizon)` (the next one this stream hands out)."""
        return self._held.ts if self._held is not None else None

    @property
    def exhausted(self) -> bool:
        """Nothing held back (in a one-shot run after a `read`: everything available was handed out)."""
        return self._held is None

    def position(self) -> Position | None:
        """Where a restart resumes (the first line not handed out)."""
        if self._held_pos is not None:
            return self._held_pos
        if self._open is not None:
            return self._open.position()
        return self._resume or self._last

    def _mark_done(self, ident: str) -> None:
        if ident not in self._done_set:
            self._done_set.add(ident)
            self.done.append(ident)
            del self.done[:-256]  # bounded: only the recent rotated files can still be in the directory

    # ---- opening files ---------------------------------------------------------------------------------------
    def _start(self, path: Path, current: bool, offset: int = 0) -> bool:
        try:
            src = _Lines(path)
        except OSError as exc:
            log.warning("%s: cannot open: %s", path, exc)
            return False
        parser = LineParser(self.log, str(path), self.problems, self.ts_substitute)
        # Re-read the part before the offset for its header lines (the schema in force at the offset).
        if offset:
            for start, line in src.lines(parser.is_header):
                if line.startswith(b"#"):
                    parser.header(line, count=False)  # counted when it was first read
                if start + len(line) + 1 >= offset:
                    break
            if src.offset != offset:
                log.warning("%s: resume offset %d not at a line end; reading from %d", path, offset, src.offset)
        self._open, self._parser, self._open_current = src, parser, current
        return True

    def _pending_rotated(self) -> list[LogFile]:
        """Rotated files not read yet, oldest first (skipping those still being written)."""
        now = self.clock()
        out = []
        for f in discover(self.directory, self.log):
            if f.current:
                continue
            if self.follow:
                try:
                    if now - f.path.stat().st_mtime < self.settle_s:
                        continue
                except OSError:
                    continue
            if self._file_done(f.path):
                continue
            out.append(f)
        return out

    def _file_done(self, path: Path) -> bool:
        """A rotated file already read: the hash of its header and first record is a known identity."""
        if not self._done_set:
            return False
        try:
            st = path.stat()
        except OSError:
            return False
        key = (str(path), st.st_size, st.st_mtime)
        ident = self._idents.get(key)
        if ident is None:
            src = None
            try:
                src = _Lines(path)
                for _ in src.lines(LineParser.is_header_line):
                    if src.ident_done:
                        break
                ident = self._idents[key] = src.ident
            except OSError:
                return False
            finally:
                if src is not None:
                    src.close()
        return ident in self._done_set

    def _restore(self) -> None:
        """Reopen the file of the saved position: the current file (same inode, same first bytes), else the
        rotated file with the same first bytes (renamed or compressed since), else report it lost."""
        pos, self._resume = self._resume, None
        if pos is None:
            return
        cur = self.current_path
        try:
            st = cur.stat()
            same = (st.st_dev, st.st_ino) == (pos.dev, pos.inode)
        except OSError:
            same = False
        if same and identity(cur, pos.ident_len) == pos.ident:
            self._start(cur, True, pos.offset)
            return
        for f in discover(self.directory, self.log):
            if not f.current and identity(f.path, pos.ident_len) == pos.ident:
                self._start(f.path, False, pos.offset)
                return
        self.problems[LOST] += 1
        log.warning(
            "%s: the file being read at the last stop (%s, offset %d) is no longer in %s; lines after it are lost",
            self.log,
            pos.path,
            pos.offset,
            self.directory,
        )

    # ---- reading ---------------------------------------------------------------------------------------------
    def read(self, horizon: float | None = None) -> list[ZeekRecord]:
        """Records available now (up to the first one later than `horizon`, which is held for the next call)."""
        out: list[ZeekRecord] = []
        if self._held is not None:
            if horizon is not None and self._held.ts is not None and self._held.ts > horizon:
                return out
            out.append(self._held)
            self._held, self._held_pos = None, None
        if self._resume is not None:
            self._restore()
        while True:
            if self._open is None and not self._next_file():
                return out
            assert self._open is not None and self._parser is not None
            src, parser = self._open, self._parser
            tailing = self._open_current and self.follow
            # Look for a rotation *before* reading to the end: Zeek closes a file before renaming it, so once
            # it is renamed, reading the descriptor to its end gets every line it will ever have.
            moved = self._rotated_away(src) if tailing else None
            for start, line in src.lines(parser.is_header):
                rec = parser.parse(line, start)
                if rec is None:
                    continue
                if horizon is not None and rec.ts is not None and rec.ts > horizon:
                    self._held = rec
                    self._held_pos = Position(str(src.path), src.dev, src.inode, start, src.ident, src.ident_len)
                    return out
                out.append(rec)
            if tailing and moved is None:
                return out  # still the current file: wait for more lines
            if moved == "truncated":
                self.problems[TRUNCATED_FILE] += 1
                log.warning("%s: truncated in place (copytruncate?); reading it again from the start", src.path)
                self._close_open()
                self._start(self.current_path, True)
                continue
            if moved == "renamed":
                self.problems[ROTATED] += 1
                log.info("%s: rotated while being read; old file read to its end, opening the new one", src.path)
            one_shot_current = self._open_current and not self.follow
            tail = src.rest()
            if tail and one_shot_current:
                # A last line without its newline: Zeek may be writing it. Take it if it parses whole (a file
                # written by other tools), else leave it for the next run.
                probe = Counter[str]()
                rec = LineParser.parse_with(parser, probe, tail, src.offset)
                if rec is not None:
                    out.append(rec)
                    src.offset += len(tail)
            elif tail.strip():
                self.problems[MALFORMED] += 1
            if src.damaged:
                self.problems[TRUNCATED_GZIP if src.gz else MALFORMED] += 1
            if one_shot_current:
                self._last = src.position()
            else:
                self._mark_done(src.ident)
            self._close_open()
            if one_shot_current:
                return out

    def _close_open(self) -> None:
        if self._open is not None:
            self._open.close()
        self._open, self._parser = None, None

    def _next_file(self) -> bool:
        pending = self._pending_rotated()
        if pending:
            return self._start(pending[0].path, False)
        if self._last is not None and not self.follow:
            return False  # a one-shot run reads the current file once
        if self.current_path.exists():
            return self._start(self.current_path, True)
        return False

    def _rotated_away(self, src: _Lines) -> str | None:
        """None while `src` is still the current file; 'renamed' or 'truncated' otherwise."""
        try:
            st = os.stat(self.current_path)
            cur: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            cur = None
        if cur == (src.dev, src.inode):
            try:
                size = os.fstat(src.fileno()).st_size
            except OSError:
                return None
            return "truncated" if size < src.offset + len(src.buf) else None
        return "renamed"
