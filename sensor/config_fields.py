"""Config keys as data: validators, declared once in `field(metadata=...)`, and the schema and dicts derived."""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import io
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, TypeAlias

from sensor.roles import KNOWN_ROLES, parse_address, parse_network


def frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only copy of mapping (the config's tables are immutable)."""
    return MappingProxyType(dict(mapping or {}))


class Problem(Exception):
    """A value or key that does not fit; the loader adds the file (or 'environment'/'--set')."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


@dataclass(frozen=True)
class Given:
    """A value from the environment or --set: its text, and the TOML value when the text parses as one."""

    text: str
    parsed: Any


@dataclass(frozen=True)
class Leaf:
    """A key holding one value, checked and made canonical by `check`."""

    check: Callable[[Any], Any]


@dataclass(frozen=True)
class Table:
    """A table with fixed keys."""

    fields: Mapping[str, Node]


@dataclass(frozen=True)
class Entries:
    """A table whose keys are data (roles, addresses, domains, range ids), each checked by `key`."""

    key: Callable[[str], str]
    value: Node


Node: TypeAlias = "Leaf | Table | Entries"

# --- Declaring keys: each dataclass field carries its node (and, for sections and entries, its class). ------


def setting(default: Any, node: Leaf, *, under: str | None = None) -> Any:
    """A key with a default, checked by node; `under` puts it in a sub-table of the TOML ([topology.networks])."""
    return field(default=default, metadata={"node": node, "under": under})


def required(node: Leaf) -> Any:
    """A key without a default (the loader checks it is given)."""
    return field(metadata={"node": node})


def entries(key: Callable[[str], str], value: Node | type) -> Any:
    """A table keyed by data; value is a node, or a dataclass whose keyed fields make each entry's table."""
    entry = value if isinstance(value, type) else None
    node = Entries(key, table_of(value) if isinstance(value, type) else value)
    return field(default_factory=frozen, metadata={"node": node, "entry": entry})


# The metadata of a [section] of the file: field(default_factory=<its settings dataclass>, metadata=SECTION).
SECTION: Mapping[str, Any] = MappingProxyType({"section": True})


def _section_class(f: dataclasses.Field[Any]) -> type:
    cls = f.default_factory
    assert isinstance(cls, type) and dataclasses.is_dataclass(cls), f"{f.name}: a section's factory is its class"
    return cls


def _keyed(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "node" in f.metadata or "section" in f.metadata]


def table_of(cls: type) -> Table:
    """The schema of a settings dataclass: its keyed fields in order, then the keys it removed (REMOVED_KEYS)."""
    out: dict[str, Any] = {}
    for f in _keyed(cls):
        node = table_of(_section_class(f)) if "section" in f.metadata else f.metadata["node"]
        under = f.metadata.get("under")
        if under is None:
            out[f.name] = node
        else:
            out.setdefault(under, {})[f.name] = node
    for name, why in getattr(cls, "REMOVED_KEYS", {}).items():
        out[name] = removed(why)
    return Table({k: Table(v) if isinstance(v, dict) else v for k, v in out.items()})


def _toml_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_toml(value)
    if isinstance(value, Mapping):
        return {k: _toml_value(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_toml_value(v) for v in value]
    return value


def to_toml(obj: Any) -> dict[str, Any]:
    """A settings dataclass as plain dicts and lists, shaped like the TOML file; keys set to None are left out."""
    out: dict[str, Any] = {}
    for f in _keyed(type(obj)):
        value = getattr(obj, f.name)
        if value is None:
            continue
        under = f.metadata.get("under")
        (out if under is None else out.setdefault(under, {}))[f.name] = _toml_value(value)
    return out


def instance(cls: type, data: Mapping[str, Any], **extra: Any) -> Any:
    """Build a settings dataclass from checked data (shaped like the TOML); keys not given keep their defaults."""
    kwargs: dict[str, Any] = {}
    for f in _keyed(cls):
        under = f.metadata.get("under")
        table = data if under is None else data.get(under, {})
        if f.name not in table:
            continue
        value = table[f.name]
        if "section" in f.metadata:
            value = instance(_section_class(f), value)
        elif isinstance(f.metadata["node"], Entries):
            entry = f.metadata.get("entry")
            value = frozen({k: entry(**v) for k, v in value.items()} if entry else value)
        kwargs[f.name] = value
    return cls(**kwargs, **extra)


# --- Validators. ---------------------------------------------------------------------------------------------

_TOML_TYPES = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"}


def show(value: Any) -> str:
    """A value as an error message names it: its TOML type and (shortened) repr."""
    kind = _TOML_TYPES.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def parsed(value: Any) -> Any:
    """The TOML value of a layer's value (env/--set text parsed as TOML when it parses)."""
    return value.parsed if isinstance(value, Given) else value


def _text(value: Any) -> str:
    if isinstance(value, Given):  # `--set sensor.id=2024` means the text, not the integer
        value = value.parsed if isinstance(value.parsed, str) else value.text
    if not isinstance(value, str):
        raise Problem(f"expected a string, got {show(value)}")
    return value


def string(pattern: str | None = None, hint: str = "") -> Leaf:
    """A non-empty string, matching pattern when given (else the error says `hint`)."""

    def check(value: Any) -> str:
        text = _text(value)
        if not text:
            raise Problem("must not be empty")
        if pattern is not None and not re.fullmatch(pattern, text):
            raise Problem(f"{text!r} {hint}")
        return text

    return Leaf(check)


def string_or_empty() -> Leaf:
    """A string that may be empty ("" = the built-in default, e.g. sensor.rules)."""
    return Leaf(_text)


def _check_boolean(value: Any) -> bool:
    value = parsed(value)
    if not isinstance(value, bool):
        raise Problem(f"expected true or false, got {show(value)}")
    return value


BOOLEAN = Leaf(_check_boolean)


def integer(lo: int, hi: int) -> Leaf:
    """An integer lo..hi."""

    def check(value: Any) -> int:
        value = parsed(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise Problem(f"expected an integer {lo}..{hi}, got {show(value)}")
        if not lo <= value <= hi:
            raise Problem(f"{value} is out of range {lo}..{hi}")
        return value

    return Leaf(check)


def choice(options: Sequence[str]) -> Leaf:
    """One of options, case-insensitive; the canonical spelling is kept."""

    def check(value: Any) -> str:
        value = parsed(value)
        if isinstance(value, str):
            for option in options:  # PowerShell and Topology Builder values are case-insensitive
                if value.casefold() == option.casefold():
                    return option
        raise Problem(f"expected one of {', '.join(options)}, got {show(value)}")

    return Leaf(check)


def _check_networks(value: Any) -> tuple[str, ...]:
    if isinstance(value, Given):  # a bare string from env/--set is a comma-separated list
        value = value.parsed if isinstance(value.parsed, list) else [p for p in value.text.split(",") if p.strip()]
    if not isinstance(value, list):
        raise Problem(f"expected an array of addresses or CIDRs, got {show(value)}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise Problem(f"expected an address or CIDR string, got {show(item)}")
        try:
            net = parse_network(item)
        except ValueError as exc:
            raise Problem(str(exc) if "host bits" in str(exc) else f"{item!r} is not an IP address or CIDR") from None
        out.append(str(net.network_address) if net.prefixlen == net.max_prefixlen else net.with_prefixlen)
    return tuple(out)


NETWORKS = Leaf(_check_networks)


def _check_listen(value: Any) -> str:
    """host:port, [ipv6]:port; the port 0..65535 (0 picks a free one), checked here so --serve cannot overflow."""
    text = _text(value)
    match = re.fullmatch(r"\[([^]]+)\]:([0-9]+)|([A-Za-z0-9.-]+):([0-9]+)", text)
    if match is None:
        raise Problem(f"{text!r} must be host:port, e.g. 127.0.0.1:9477 or [::1]:9477")
    if match[1] is not None:
        try:
            ipaddress.IPv6Address(match[1])
        except ValueError:
            raise Problem(f"{match[1]!r} in {text!r} is not an IPv6 address") from None
    port = int(match[2] or match[4])
    if port > 65535:
        raise Problem(f"port {port} in {text!r} is out of range 0..65535")
    return text


LISTEN = Leaf(_check_listen)


def _check_catalog(value: Any) -> str:
    """A DuckLake catalog: "postgres:<libpq key=value DSN>" or a DuckDB file path ("" = none)."""
    text = _text(value).strip()
    if text.startswith(("postgres:", "postgresql:")):
        dsn = text.split(":", 1)[1].strip()
        if not dsn or not all(re.fullmatch(r"[A-Za-z_]+=\S*", part) for part in dsn.split()):
            raise Problem(f"{text!r}: a postgres catalog is postgres:key=value ... (e.g. postgres:dbname=lake host=db)")
        return text
    if re.match(r"^[a-z][a-z0-9+]*://", text) or text.startswith(("sqlite:", "mysql:", "ducklake:")):
        raise Problem(f"{text!r}: a catalog is postgres:key=value ... or a DuckDB file path")
    return text


CATALOG = Leaf(_check_catalog)


def _check_data_path(value: Any) -> str:
    """Where DuckLake puts its data files: an absolute directory or an s3:// URL ("" = under sensor.lake)."""
    text = _text(value).strip()
    if text and not (text.startswith("/") or re.match(r"^s3://[^/]+", text)):
        raise Problem(f"{text!r}: give an absolute directory or an s3://bucket/prefix URL")
    return text


DATA_PATH = Leaf(_check_data_path)


def removed(why: str) -> Leaf:
    """A key that no longer exists: any value is an error that says what replaced it."""

    def check(value: Any) -> Any:
        raise Problem(f"this key was removed: {why}")

    return Leaf(check)


def _check_port_range(value: Any) -> tuple[int, int]:
    value = parsed(value)
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value) if isinstance(value, str) else None
    if match:
        lo, hi = int(match[1]), int(match[2])
    elif (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        lo, hi = value
    else:
        raise Problem(f'expected "lo-hi" or [lo, hi], got {show(value)}')
    if not 1 <= lo <= hi <= 65535:
        raise Problem(f"port range {lo}-{hi} must satisfy 1 <= lo <= hi <= 65535")
    return (lo, hi)


PORT_RANGE = Leaf(_check_port_range)

# --- Keys that are data. -------------------------------------------------------------------------------------


def unknown(what: str, name: str, known: Sequence[str]) -> str:
    """The error for an unknown name, with the closest known one ("did you mean") and the whole list."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f", did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}{hint} (known: {', '.join(known)})"


def role_key(name: str) -> str:
    """A role of sensor.roles.KNOWN_ROLES."""
    if name not in KNOWN_ROLES:
        raise Problem(unknown("role", name, KNOWN_ROLES))
    return name


def address_key(name: str) -> str:
    """An IP address, in canonical text."""
    try:
        return str(parse_address(name))
    except ValueError:
        raise Problem(f"{name!r} is not an IP address") from None


def domain_key(name: str) -> str:
    """A domain name, lower case."""
    label = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    if not re.fullmatch(rf"{label}(?:\.{label})*", name.lower()):
        raise Problem(f"{name!r} is not a domain name")
    return name.lower()


@functools.cache
def port_range_ids() -> tuple[str, ...]:
    """The ids of the port catalogue (the id column of sensor/data/ports.csv), the keys [ports] may override."""
    text = (resources.files("sensor") / "data" / "ports.csv").read_text(encoding="utf-8")
    return tuple(sorted({row["id"] for row in csv.DictReader(io.StringIO(text))}))


def range_id_key(name: str) -> str:
    """A port range id of the catalogue."""
    known = port_range_ids()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f", did you mean {', '.join(map(repr, close))}?" if close else ""
        raise Problem(f"unknown port range id {name!r}{hint} (the ids are the id column of sensor/data/ports.csv)")
    return name
