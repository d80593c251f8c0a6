"""The Lync 2013 reference data (sensor/data/*.csv): its vocabularies, row types, parsing and validation.

Every error names the file, line and column. `load_tables` returns the three tables with the config's
port-range overrides applied; `sensor.catalogue.Catalogue` indexes them for lookups.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, TypeVar

from sensor.errors import ConfigError
from sensor.roles import CATALOGUE_ROLES
from sensor.schema import TLS_VERSIONS

# Vocabularies of the data files. The values themselves (which port, which path) live in sensor/data/*.csv.
PROTOS = ("tcp", "udp")
# `required` holds one or more of these joined by "|": each applies to a part of the row's traffic
# (e.g. "MTLS|TLS" = MTLS between servers, TLS from clients); the row's note says which.
REQUIREMENTS = frozenset(
    {
        "MTLS",
        "MTLS*",  # the doc says only "TCP"/"HTTPS" but both ends are servers: MTLS by [ENC] [inference]
        "TLS",
        "HTTPS",
        "SRTP",
        "STARTTLS",
        "STUN/MS-TURN",
        "pseudo-TLS",
        "TLS-optional",
        "static-route",
        "none",  # documented plaintext (HTTP)
        "n/c",  # OS/SQL protocol not covered by the Lync encryption rules
        "not-stated",
    }
)
SEVERITIES = frozenset({"V", "W", "I"})
MATCH_KINDS = frozenset({"path", "host"})
DOC_SCHEMES = frozenset({"https", "http", "http+https", "(path only)"})
CIPHER_CLASSES = frozenset({"null", "rc4", "des", "export", "3des", "sslv2", "strong"})
FIPS_VALUES = frozenset({"yes", "derived", "no"})
# Source tags of lync-reference.md §0, plus IANA for code points the reference does not list.
SOURCE_TAGS = frozenset(
    {
        "ENC", "TLS-MTLS", "PORTS", "EDGE", "EDGE-HLB", "FED", "AVFW", "RP", "DIR", "SRVRANGE", "CLIRANGE",
        "GW", "IIS", "WS", "AUTOD", "AUTOD-DNS", "SURL", "WCR", "TLS10", "MEDIA", "CONF", "EDGECMD", "TRUNK",
        "XMPP", "CS81", "CS8", "CS7", "CSVISTA", "MS-TURN", "MS-SDPEXT", "MS-SDP", "3rd-party", "inference",
        "IANA",
    }
)  # fmt: skip

_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")
_RULE = re.compile(r"R[0-9]+")
_TAG = re.compile(r"\[([A-Za-z0-9-]+)\]")
_CODE = re.compile(r"0x(?:[0-9A-F]{4}|[0-9A-F]{6})")


@dataclass(frozen=True, slots=True)
class PortRow:
    """One row of ports.csv: a port or port range the reference documents for a role."""

    id: str  # slug; several rows share one id when a range spans TCP and UDP (the config overrides by id)
    proto: str  # tcp or udp
    port_lo: int
    port_hi: int  # equal to port_lo for a single port
    role: str  # the listening (server-side) role, one of sensor.roles.CATALOGUE_ROLES
    service: str  # short stable name shown in the flows table and used in rules
    app_proto: str  # SIP, PSOM, HTTPS, HTTP, RTP, STUN/MS-TURN, XMPP, ...
    doc_label: str  # the doc's label, verbatim
    required: str  # REQUIREMENTS tokens joined by "|"
    rules: tuple[str, ...]  # reference rule ids (R1..R17) that apply to flows on this row
    source: str  # reference source tags, e.g. "[PORTS];[SRVRANGE]"
    note: str

    @property
    def is_range(self) -> bool:
        """True for a port range (media ranges), False for a single listening port."""
        return self.port_hi != self.port_lo

    @property
    def width(self) -> int:
        """Number of ports the row covers."""
        return self.port_hi - self.port_lo + 1

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict (rules as a list) for DuckDB/Arrow."""
        row = asdict(self)
        row["rules"] = list(self.rules)
        return row


@dataclass(frozen=True, slots=True)
class WebPath:
    """One row of web_paths.csv: a URL path or host prefix and what plaintext HTTP to it means."""

    match: str  # "path" or "host"
    prefix: str  # lower case; paths start with "/", hosts end with "."
    service: str
    doc_scheme: str  # scheme as printed in the doc
    severity: str  # plaintext HTTP to it: V (must be HTTPS per [ENC]), W (HTTPS expected), I (HTTP allowed)
    requirement: str
    source: str

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict for DuckDB/Arrow."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """One row of cipher_suites.csv: a TLS (or SSL 2.0) cipher suite and how the reference classes it."""

    code: str  # "0xC030"; SSL 2.0 cipher kinds have six hex digits ("0x0700C0")
    name: str
    class_: str  # CSV column "class": null, rc4, des, export, 3des, sslv2 or strong
    fips: str  # yes ([CSVISTA]), derived (algorithm-level judgement, ref §8.11) or no
    schannel_default: bool  # in the Windows Server 2012 R2 Schannel default list ([CS81])
    min_version: str
    source: str
    note: str

    @property
    def value(self) -> int:
        """The code point as an integer."""
        return int(self.code, 16)

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict with the CSV's column names for DuckDB/Arrow."""
        row = asdict(self)
        row["class"] = row.pop("class_")
        return row


_Row = TypeVar("_Row")
_Parser = Callable[[dict[str, str], Callable[[str, str], ConfigError]], _Row]


# --------------------------------------------------------------------- parsing and validation

_PORT_COLUMNS = (
    "id", "proto", "port_lo", "port_hi", "role", "service", "app_proto", "doc_label", "required", "rules",
    "source", "note",
)  # fmt: skip
_WEB_COLUMNS = ("match", "prefix", "service", "doc_scheme", "severity", "requirement", "source")
_CIPHER_COLUMNS = ("code", "name", "class", "fips", "schannel_default", "min_version", "source", "note")

_Fail = Callable[[str, str], ConfigError]


def _parse(file: Traversable, name: str, columns: tuple[str, ...], parse_row: _Parser[_Row]) -> list[tuple[_Row, int]]:
    """Read one CSV, check its header, and parse each row; errors name the file, line and column."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read catalogue table: {exc}", source=name) from exc
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != columns:
        raise ConfigError(f"header must be {','.join(columns)}", source=f"{name}:1")
    rows: list[tuple[_Row, int]] = []
    for record in reader:
        line = reader.line_num

        def fail(column: str, message: str, line: int = line) -> ConfigError:
            return ConfigError(message, key=column, source=f"{name}:{line}")

        if None in record or any(value is None for value in record.values()):
            raise fail("", f"expected {len(columns)} fields")
        rows.append((parse_row({k: v.strip() for k, v in record.items()}, fail), line))
    return rows


def _one_of(record: dict[str, str], column: str, allowed: Iterable[str], fail: _Fail) -> str:
    value = record[column]
    if value not in allowed:
        raise fail(column, f"{value!r} is not one of {', '.join(sorted(allowed))}")
    return value


def _matches(record: dict[str, str], column: str, pattern: re.Pattern[str], fail: _Fail) -> str:
    value = record[column]
    if not pattern.fullmatch(value):
        raise fail(column, f"{value!r} does not match {pattern.pattern}")
    return value


def _sources(record: dict[str, str], fail: _Fail) -> str:
    value = record["source"]
    parts = value.split(";")
    for part in parts:
        tag = _TAG.fullmatch(part)
        if tag is None or tag.group(1) not in SOURCE_TAGS:
            raise fail("source", f"{part!r} is not a known source tag like [PORTS]")
    return value


def _port(record: dict[str, str], column: str, fail: _Fail) -> int:
    try:
        value = int(record[column])
    except ValueError:
        raise fail(column, f"{record[column]!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise fail(column, f"{value} is outside 0..65535")
    return value


def _port_row(record: dict[str, str], fail: _Fail) -> PortRow:
    lo, hi = _port(record, "port_lo", fail), _port(record, "port_hi", fail)
    if lo > hi:
        raise fail("port_hi", f"port_lo {lo} > port_hi {hi}")
    for token in record["required"].split("|"):
        if token not in REQUIREMENTS:
            raise fail("required", f"{token!r} is not one of {', '.join(sorted(REQUIREMENTS))}")
    rules = tuple(record["rules"].split(";")) if record["rules"] else ()
    for rule in rules:
        if not _RULE.fullmatch(rule):
            raise fail("rules", f"{rule!r} is not a rule id like R1")
    return PortRow(
        id=_matches(record, "id", _SLUG, fail),
        proto=_one_of(record, "proto", PROTOS, fail),
        port_lo=lo,
        port_hi=hi,
        role=_one_of(record, "role", CATALOGUE_ROLES, fail),
        service=_matches(record, "service", _SLUG, fail),
        app_proto=record["app_proto"],
        doc_label=record["doc_label"],
        required=record["required"],
        rules=rules,
        source=_sources(record, fail),
        note=record["note"],
    )


def _web_row(record: dict[str, str], fail: _Fail) -> WebPath:
    match = _one_of(record, "match", MATCH_KINDS, fail)
    prefix = record["prefix"]
    shape_ok = prefix.startswith("/") if match == "path" else prefix.endswith(".") and "/" not in prefix
    if not prefix or prefix != prefix.lower() or not shape_ok:
        raise fail("prefix", f"{prefix!r}: lower case; a path starts with '/', a host prefix ends with '.'")
    return WebPath(
        match=match,
        prefix=prefix,
        service=_matches(record, "service", _SLUG, fail),
        doc_scheme=_one_of(record, "doc_scheme", DOC_SCHEMES, fail),
        severity=_one_of(record, "severity", SEVERITIES, fail),
        requirement=record["requirement"],
        source=_sources(record, fail),
    )


def _cipher_row(record: dict[str, str], fail: _Fail) -> CipherSuite:
    code = _matches(record, "code", _CODE, fail)
    kind = _one_of(record, "class", CIPHER_CLASSES, fail)
    version = _one_of(record, "min_version", TLS_VERSIONS, fail)
    if (len(code) == 8) != (kind == "sslv2" and version == "SSLv2"):
        raise fail("code", f"{code}: six-digit codes are exactly the SSL 2.0 cipher kinds (class sslv2)")
    return CipherSuite(
        code=code,
        name=_matches(record, "name", re.compile(r"(TLS|SSL)_[A-Z0-9_]+"), fail),
        class_=kind,
        fips=_one_of(record, "fips", FIPS_VALUES, fail),
        schannel_default=_one_of(record, "schannel_default", ("yes", "no"), fail) == "yes",
        min_version=version,
        source=_sources(record, fail),
        note=record["note"],
    )


def _check_unique(keys: Iterable[object], name: str, column: str) -> None:
    seen: set[object] = set()
    for key in keys:
        if key in seen:
            raise ConfigError(f"duplicate {key!r}", key=column, source=name)
        seen.add(key)


def _check_port_ids(rows: list[tuple[PortRow, int]], name: str) -> None:
    """(id, proto) is unique; rows sharing an id share their bounds, so an override moves them together."""
    seen: dict[str, PortRow] = {}
    keys: set[tuple[str, str]] = set()
    for row, line in rows:
        if (row.id, row.proto) in keys:
            raise ConfigError(f"duplicate id {row.id!r} for {row.proto}", key="id", source=f"{name}:{line}")
        keys.add((row.id, row.proto))
        first = seen.setdefault(row.id, row)
        if (first.port_lo, first.port_hi) != (row.port_lo, row.port_hi):
            raise ConfigError(f"rows of id {row.id!r} have different ports", key="id", source=f"{name}:{line}")


def _apply_overrides(
    rows: list[PortRow], overrides: Mapping[str, tuple[int, int]], source: str | None
) -> list[PortRow]:
    """Replace port_lo/port_hi of every row with an overridden id; unknown ids and bad ranges are errors."""
    known = {row.id for row in rows}
    checked: dict[str, tuple[int, int]] = {}
    for key, value in overrides.items():
        if key not in known:
            known_ids = ", ".join(sorted(known))
            raise ConfigError(f"unknown port range id {key!r} (known: {known_ids})", key=f"ports.{key}", source=source)
        pair = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
        if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
            raise ConfigError(f"expected [low, high] port numbers, got {value!r}", key=f"ports.{key}", source=source)
        lo, hi = pair
        if not (0 <= lo <= hi <= 65535):
            message = f"bad port range {lo}-{hi}: need 0 <= low <= high <= 65535"
            raise ConfigError(message, key=f"ports.{key}", source=source)
        checked[key] = (lo, hi)
    return [replace(r, port_lo=checked[r.id][0], port_hi=checked[r.id][1]) if r.id in checked else r for r in rows]


def load_tables(
    overrides: Mapping[str, tuple[int, int]], source: str | None, *, data_dir: Traversable | None = None
) -> tuple[list[PortRow], list[WebPath], list[CipherSuite]]:
    """Read and validate sensor/data/*.csv (or data_dir/*.csv), then apply the port-range overrides by id."""
    base = data_dir if data_dir is not None else resources.files("sensor") / "data"
    ports = _parse(base / "ports.csv", "ports.csv", _PORT_COLUMNS, _port_row)
    _check_port_ids(ports, "ports.csv")
    web_paths = _parse(base / "web_paths.csv", "web_paths.csv", _WEB_COLUMNS, _web_row)
    _check_unique(((w.match, w.prefix) for w, _ in web_paths), "web_paths.csv", "prefix")
    suites = _parse(base / "cipher_suites.csv", "cipher_suites.csv", _CIPHER_COLUMNS, _cipher_row)
    _check_unique((s.code for s, _ in suites), "cipher_suites.csv", "code")
    return (
        _apply_overrides([row for row, _ in ports], overrides, source),
        [row for row, _ in web_paths],
        [row for row, _ in suites],
    )
