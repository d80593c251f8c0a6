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
import math
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
BAD_VALUE = "zeek_bad_value"  # one field not of its type (the field is left unset, the rest of the line kept)
LONG_LINE = "zeek_line_too_long"  # a line longer than the line cap (skipped without being held in memory)
SIZE_CAP = "zeek_file_size_cap"  # a file whose decompressed size passed the per-file cap (the rest not read)
PROBLEMS: tuple[str, ...] = (
    MALFORMED,
    HEADER_CHANGE,
    TRUNCATED_GZIP,
    ROTATED,
    BAD_TS,
    LOST,
    TRUNCATED_FILE,
    BAD_VALUE,
    LONG_LINE,
    SIZE_CAP,
)

# Caps on what one log file may cost (the config keys zeek.max_line_bytes and zeek.max_file_bytes would set
# them; a line of Zeek's own logs is a few KiB, an hour of a busy conn.log a few GiB uncompressed).
MAX_LINE_BYTES = 1 << 20
MAX_FILE_BYTES = 64 << 30
_MAX_DEPTH = 4  # JSON nesting the logs use: `id.orig_h` nested is depth 2; anything deeper is not Zeek's

# Zeek's types of the fields the mapping (sensor/zeek.py) reads, from the Info records of Zeek's scripts
# (base/protocols/{conn,ssl,sip,http}/main.zeek, base/files/x509/main.zeek) and the package's lync.log
# (deploy/zeek/scripts/main.zeek). A value is converted to this type on its own, whatever the file's #types
# say: one that does not convert (or a negative count) is a bad value, counted and left unset.
_ID_FIELDS = {"ts": "time", "uid": "string", "id.orig_h": "addr", "id.orig_p": "port", "id.resp_h": "addr",
              "id.resp_p": "port"}  # fmt: skip
FIELD_TYPES: dict[str, dict[str, str]] = {
    "conn": {**_ID_FIELDS, "proto": "enum", "service": "string", "duration": "interval", "orig_bytes": "count",
             "resp_bytes": "count", "orig_pkts": "count", "resp_pkts": "count", "orig_ip_bytes": "count",
             "resp_ip_bytes": "count"},
    "ssl": {**_ID_FIELDS, "version": "string", "cipher": "string", "server_name": "string", "resumed": "bool",
            "last_alert": "string", "established": "bool", "ssl_history": "string",
            "cert_chain_fps": "vector[string]", "cert_chain_fuids": "vector[string]",
            "client_cert_chain_fps": "vector[string]", "client_cert_chain_fuids": "vector[string]",
            "requested_client_certificate_authorities": "vector[string]"},
    "x509": {"ts": "time", "id": "string", "fingerprint": "string", "certificate.subject": "string",
             "san.dns": "vector[string]"},
    "sip": {**_ID_FIELDS, "method": "string", "status_code": "count", "call_id": "string", "seq": "string"},
    "http": {**_ID_FIELDS, "trans_depth": "count", "method": "string", "host": "string", "uri": "string"},
    "lync": {**_ID_FIELDS, "proto": "enum", "cert_request": "bool", "orig_first_byte": "count",
             "resp_first_byte": "count", "orig_rtp_version": "count", "resp_rtp_version": "count",
             "media_range": "bool", "sip_tcp": "bool"},
}  # fmt: skip
_INT64_MAX = (1 << 63) - 1
_TS_MAX = 4_102_444_800.0  # 2100-01-01: a later (or negative) time is not a log's

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


def _flatten(obj: dict[str, Any], problems: Counter[str], prefix: str = "", depth: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            if depth >= _MAX_DEPTH:
                problems[BAD_VALUE] += 1  # nested deeper than any Zeek log: not a value of this schema
                continue
            out.update(_flatten(v, problems, f"{prefix}{k}.", depth + 1))
        elif isinstance(v, str):
            out[prefix + k] = _json_text(v, problems)
        elif isinstance(v, list):
            out[prefix + k] = [_json_text(e, problems) if isinstance(e, str) else e for e in v]
        else:
            out[prefix + k] = v
    return out


def _json_text(value: str, problems: Counter[str]) -> str:
    """A JSON string: Zeek's \\xNN escapes as bytes; a lone surrogate (`"\\ud800"`, not text in any encoding)
    is a bad value, kept as U+FFFD."""
    if not value.isascii():
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            problems[BAD_VALUE] += 1
            value = _no_lone(value)
    return _json_unescape(value)


def _no_lone(value: str) -> str:
    """Lone surrogates outside surrogateescape's range (U+DC80..U+DCFF, raw bytes) become U+FFFD."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF and not 0xDC80 <= ord(c) <= 0xDCFF else c for c in value)


def _defuse_nesting(line: bytes, limit: int = 64) -> tuple[bytes, int]:
    """Replace each top-level member value nested deeper than `limit` by null, so that the line's other fields
    still parse (Python's JSON decoder recurses and fails on deep nesting); returns the line and how many."""
    out, depth, in_str, esc, start, deep, n, last = bytearray(), 0, False, False, -1, False, 0, 0
    for i, b in enumerate(line):
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
            continue
        if b == 0x22:
            in_str = True
        elif b in (0x7B, 0x5B):
            depth += 1
            if depth == 2:
                start, deep = i, False
            elif depth > limit:
                deep = True
        elif b in (0x7D, 0x5D):
            if depth == 2 and deep:
                out += line[last:start] + b"null"
                last, n = i + 1, n + 1
            depth -= 1
    return bytes(out + line[last:]), n


def parse_ts(value: object) -> float | None:
    """Epoch seconds from a Zeek ts: seconds (TSV, JSON), milliseconds (JSON::TS_MILLIS) or ISO 8601."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _epoch(float(value))
    if isinstance(value, bytes | str):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        try:
            return _epoch(float(text))
        except (ValueError, OverflowError):
            pass
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return _epoch((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp())
    return None


def _epoch(v: float) -> float | None:
    """Seconds (milliseconds above 1e11) within 1970..2100; anything else (NaN, inf, -1) is no time."""
    if not math.isfinite(v):
        return None
    v = v / 1000.0 if v > 1e11 else v
    return v if 0.0 <= v <= _TS_MAX else None


def convert(kind: str, value: Any, problems: Counter[str]) -> Any:
    """One value (JSON's, or TSV's text) to its Zeek type; a value that is not one is counted and None."""
    if value is None:
        return None
    try:
        if kind.startswith(("set[", "vector[")):
            if not isinstance(value, list):
                raise TypeError(kind)
            inner = kind[kind.index("[") + 1 : -1]
            items = (convert(inner, e, problems) for e in value)
            return [e for e in items if e is not None]
        return _scalar_of(kind, value)
    except (ValueError, TypeError, OverflowError, UnicodeError):
        problems[BAD_VALUE] += 1
        return None


_INT_RANGE = {"count": (0, _INT64_MAX), "int": (-_INT64_MAX - 1, _INT64_MAX), "port": (0, 65535)}


def _scalar_of(kind: str, v: Any) -> Any:
    if isinstance(v, bytes):  # TSV text: a number is ASCII (b"\xff" is no count), a string has \xNN escapes
        numeric = kind in _INT_RANGE or kind in ("double", "interval", "time", "bool")
        v = v.decode("ascii") if numeric else _unescape(v).decode("utf-8", "surrogateescape")
    if kind in _INT_RANGE:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise TypeError(kind)
        n = int(v)  # int("NaN"): ValueError
        lo, hi = _INT_RANGE[kind]
        if not lo <= n <= hi:  # a negative count (orig_pkts = -1), a port past 65535, past int64
            raise ValueError(f"{kind} {n} out of range")
        return n
    if kind in ("double", "interval", "time"):
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise TypeError(kind)
        f = float(v)
        if not math.isfinite(f) or (kind == "interval" and f < 0):
            raise ValueError(f"{kind} {f}")
        return f
    if kind == "bool":
        if isinstance(v, bool):
            return v
        if v in ("T", "F"):
            return v == "T"
        raise ValueError(f"bool {v!r}")
    if not isinstance(v, str):  # string, enum, addr
        raise TypeError(kind)
    return v


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
        self.known = FIELD_TYPES.get(log_name, {})
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
        if self.format == "json":
            for name, kind in self.known.items():
                if name != "ts" and name in fields:
                    fields[name] = convert(kind, fields[name], self.problems)
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
            obj = self._loads(line)
        except ValueError:
            fixed, n = _MASKED.subn(rb"\1null", line)
            if not n:
                return None
            masked = True
            try:
                obj = self._loads(fixed)
            except ValueError:
                return None
        if not isinstance(obj, dict):
            return None
        fields = _flatten(obj, self.problems)
        if masked and fields.get("ts") is None:
            fields["ts_raw"] = "XXXXXXXXXX.XXXXXX"
        return fields

    def _loads(self, line: bytes) -> Any:
        """json.loads, with bytes that are not UTF-8 kept as raw bytes (as Zeek's \\xNN), and nesting deeper
        than Python's decoder can take cut out of the line (each such value counted as bad)."""
        text = line.decode("utf-8", "surrogateescape")
        try:
            return json.loads(text)
        except RecursionError:
            defused, n = _defuse_nesting(line)
            self.problems[BAD_VALUE] += n
            try:
                return json.loads(defused.decode("utf-8", "surrogateescape"))
            except RecursionError:
                raise ValueError("nested too deeply") from None

    def _tsv(self, line: bytes) -> dict[str, Any] | None:
        if self.fields is None:
            return None
        values = line.split(self.sep)
        if len(values) != len(self.fields):
            return None
        types = self.types if self.types is not None and len(self.types) == len(self.fields) else None
        out: dict[str, Any] = {}
        for i, (name, raw) in enumerate(zip(self.fields, values, strict=True)):
            # the sensor's own type for a field it reads, whatever #types says (a header may lie)
            kind = self.known.get(name) or (types[i] if types else "string")
            if name == "ts" or kind == "time":
                out[name] = parse_ts(raw) if raw != self.unset else None
                if name == "ts" and out[name] is None:
                    out["ts_raw"] = raw.decode("utf-8", "replace")
                continue
            out[name] = self._value(raw, kind)
        return out

    def _value(self, raw: bytes, kind: str) -> Any:
        """One TSV field to its type; a field that does not convert is counted and unset."""
        if raw == self.unset:
            return None
        if kind.startswith(("set[", "vector[")):
            if raw == self.empty:
                return []
            inner = kind[kind.index("[") + 1 : -1]
            items = (convert(inner, e, self.problems) for e in raw.split(self.set_sep) if e != self.unset)
            return [e for e in items if e is not None]
        if raw == self.empty and kind == "string":
            return ""
        return convert(kind, raw, self.problems)


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


class _Lines:
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


def read_log(
    path: Path,
    *,
    log_name: str | None = None,
    problems: Counter[str] | None = None,
    ts_substitute: float | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> list[ZeekRecord]:
    """Every record of one file (plain or gzip, TSV or JSON), e.g. a fixture read in place."""
    name = log_name or path.name.split(".", 1)[0]
    counts = problems if problems is not None else Counter()
    parser = LineParser(name, str(path), counts, ts_substitute)
    src = _Lines(path, problems=counts, max_line=max_line_bytes, max_bytes=max_file_bytes)
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
        max_line_bytes: int = MAX_LINE_BYTES,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_file_bytes = max_file_bytes
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
            src = _Lines(path, problems=self.problems, max_line=self.max_line_bytes, max_bytes=self.max_file_bytes)
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
