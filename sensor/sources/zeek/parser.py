"""Zeek log lines to records: TSV (with its header) or JSON, each value converted to its Zeek type."""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sensor.sources.zeek.base import BAD_TS, BAD_VALUE, HEADER_CHANGE, MALFORMED, ZeekRecord

log = logging.getLogger(__name__)

_MAX_DEPTH = 4  # JSON nesting the logs use: `id.orig_h` nested is depth 2; anything deeper is not Zeek's

# Zeek's types of the fields the mapping (sources/zeek/assembler.py) reads, from the Info records of Zeek's scripts
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

_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|\\)")
_JSON_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_MASKED = re.compile(rb'(":\s*)X{10}\.X{6}')  # btest's masked timestamps: not valid JSON


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
            # with no usable ts at all is dropped (sensor.sources.zeek.assembler). Tests may substitute a fixed time.
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
