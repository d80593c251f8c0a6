"""The sensor's one immutable config: built-in defaults, then the TOML file, then environment, then --set."""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import io
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeAlias

from sensor.errors import ConfigError
from sensor.roles import GATEWAY_ROLES, KNOWN_ROLES, parse_address, parse_network

ENV_PREFIX = "LYNC_SENSOR_"
# Read by the CLI (which config file to load), not a config key.
RESERVED_ENV: frozenset[str] = frozenset({"LYNC_SENSOR_CONFIG"})
ENV_SOURCE = "environment"
SET_SOURCE = "--set"
DEFAULT_SOURCE = "default"

MEDIA_ENCRYPTION_LEVELS = ("RequireEncryption", "SupportEncryption", "DoNotSupportEncryption")  # [MEDIA]
GATEWAY_TRANSPORTS = ("tcp", "tls")  # [GW]
SRTP_MODES = ("Required", "Optional", "NotSupported")  # [TRUNK]
TLS_NEGOTIATION_MODES = ("Required", "Optional", "NotSupported")  # [XMPP]
DEFAULT_INTERNAL_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)  # RFC 1918, RFC 4193


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class SensorSettings:
    """[sensor]: who this sensor is, where it writes, and the bounds that keep its memory flat."""

    id: str = "sensor"
    site: str = ""  # the site label of every metric, for the fleet view; "" = "default"
    lake: str = "./lake"
    interval: int = 60
    idle_timeout: int = 120
    progress: bool = True
    flow_capacity: int = 1_000_000
    sip_messages_per_flow: int = 64
    fact_packets_per_flow: int = 12
    # "native": handshake facts parsed in-process from reassembled streams; "wireshark": the fact packets go to
    # Wireshark's dissectors (tshark) instead, a second opinion at Wireshark's speed.
    dissector: str = "native"
    stream_bytes: int = 65536  # per TCP direction, the first bytes reassembled by sequence number
    fragment_capacity: int = 256  # IP datagrams in reassembly at once (the oldest is evicted beyond)
    fragment_timeout: int = 30  # seconds an incomplete IP datagram is kept (Linux's ipfrag_time)
    rules: str = ""  # directory of rule files; "" = the queries/ shipped with the sensor


@dataclass(frozen=True)
class TopologySettings:
    """[topology]: role -> addresses/CIDRs (canonical text), and the internal and perimeter networks."""

    roles: Mapping[str, tuple[str, ...]] = field(default_factory=_frozen)
    internal: tuple[str, ...] = DEFAULT_INTERNAL_NETWORKS
    perimeter: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayPolicy:
    """[policy.gateways."<addr>"]: one PSTN gateway/IP-PBX/SBC trunk as defined in Topology Builder."""

    transport: str
    srtp_mode: str | None = None
    e911: bool = False

    @property
    def effective_srtp_mode(self) -> str:
        """SRTPMode as Lync applies it: NotSupported on a TCP trunk, else the setting (default Required)."""
        if self.transport == "tcp":
            return "NotSupported"
        return self.srtp_mode or "Required"


@dataclass(frozen=True)
class TrustedApplication:
    """[policy.trusted_applications."<addr>"]: a trusted application / RCC line server (exception E1)."""

    port: int = 5060


@dataclass(frozen=True)
class XmppPartner:
    """[policy.xmpp_partners."<domain>"]: an XMPP federation partner."""

    tls_negotiation: str = "Required"


@dataclass(frozen=True)
class PolicySettings:
    """[policy]: the site settings the rules depend on."""

    media_encryption_level: str = "RequireEncryption"
    fips: bool = False
    require_tls12_on_edge: bool = False
    gateways: Mapping[str, GatewayPolicy] = field(default_factory=_frozen)
    trusted_applications: Mapping[str, TrustedApplication] = field(default_factory=_frozen)
    xmpp_partners: Mapping[str, XmppPartner] = field(default_factory=_frozen)


@dataclass(frozen=True)
class PrivacySettings:
    """[privacy]: personal data kept in the lake."""

    redact_http_query: bool = True


@dataclass(frozen=True)
class LiveSettings:
    """[live]: the long-running appliance (`lync-sensor run`)."""

    interface: str = ""
    bpf: str = ""
    spool: str = "/run/lync-sensor/spool"
    spool_seconds: int = 2
    spool_files: int = 64
    capture_buffer_mib: int = 64
    rule_interval: int = 60
    rule_window: int = 900
    retention_days: int = 30
    retention_max_bytes: int = 0
    min_free_bytes: int = 1 << 30
    status_file: str = ""


LAKE_BACKENDS = ("parquet", "ducklake")


@dataclass(frozen=True)
class LakeSettings:
    """[lake]: which lake the records go to. "parquet": hive-partitioned files under sensor.lake (one box);
    "ducklake": a DuckLake, its catalog in PostgreSQL (a fleet) or a DuckDB file (one box), its data files
    under data_path (a shared filesystem or s3://). A DuckLake writer that cannot reach the catalog keeps its
    records in the local spool (bounded) and retries with backoff."""

    backend: str = "parquet"
    catalog: str = ""  # "postgres:dbname=... host=..." or a DuckDB file path; required for ducklake
    data_path: str = ""  # directory or s3:// URL of the data files; "" = <sensor.lake>/ducklake-data
    spool: str = ""  # records waiting for the catalog; "" = <sensor.lake>/_spool
    spool_max_records: int = 2_000_000  # beyond this the oldest spooled records are dropped (and counted)
    retry_initial_seconds: int = 1  # first retry after a failed commit; doubled per failure
    retry_max_seconds: int = 60  # longest wait between retries


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: the /metrics exporter. Loopback by default; TLS and basic auth (for exposing it further) come
    from a Prometheus exporter-toolkit web config file, as for node_exporter."""

    listen: str = "127.0.0.1:9477"
    web_config_file: str = ""  # "" = plain HTTP without authentication


@dataclass(frozen=True)
class Config:
    """The whole config; `source` is the file it was loaded from (None without one)."""

    sensor: SensorSettings = field(default_factory=SensorSettings)
    topology: TopologySettings = field(default_factory=TopologySettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    ports: Mapping[str, tuple[int, int]] = field(default_factory=_frozen)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    live: LiveSettings = field(default_factory=LiveSettings)
    lake: LakeSettings = field(default_factory=LakeSettings)
    source: Path | None = None
    origins: Mapping[str, str] = field(default_factory=_frozen, repr=False, compare=False)

    @property
    def roles(self) -> Mapping[str, tuple[str, ...]]:
        """[topology.roles]: role name -> addresses/CIDRs."""
        return self.topology.roles

    def origin_of(self, *parts: str) -> str:
        """Where a key got its value: the file path, 'environment', '--set' or 'default'.
        E.g. cfg.origin_of("ports", "edge-media")."""
        return self.origins.get(config_key(parts), DEFAULT_SOURCE)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain dicts and lists, shaped like the TOML file (for `lync-sensor config show`)."""
        policy = self.policy
        return {
            "sensor": dataclasses.asdict(self.sensor),
            "topology": {
                "roles": {role: list(entries) for role, entries in self.topology.roles.items()},
                "networks": {
                    "internal": list(self.topology.internal),
                    "perimeter": list(self.topology.perimeter),
                },
            },
            "policy": {
                "media_encryption_level": policy.media_encryption_level,
                "fips": policy.fips,
                "require_tls12_on_edge": policy.require_tls12_on_edge,
                "gateways": {
                    addr: {k: v for k, v in dataclasses.asdict(gw).items() if v is not None}
                    for addr, gw in policy.gateways.items()
                },
                "trusted_applications": {a: dataclasses.asdict(t) for a, t in policy.trusted_applications.items()},
                "xmpp_partners": {d: dataclasses.asdict(p) for d, p in policy.xmpp_partners.items()},
            },
            "ports": {range_id: list(bounds) for range_id, bounds in self.ports.items()},
            "privacy": dataclasses.asdict(self.privacy),
            "metrics": dataclasses.asdict(self.metrics),
            "live": dataclasses.asdict(self.live),
            "lake": dataclasses.asdict(self.lake),
        }


# --- The schema: every section and key, as data. ------------------------------------------------------------


class _Problem(Exception):
    """A value or key that does not fit; the loader adds the file (or 'environment'/'--set')."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


@dataclass(frozen=True)
class _Given:
    """A value from the environment or --set: its text, and the TOML value when the text parses as one."""

    text: str
    parsed: Any


@dataclass(frozen=True)
class _Leaf:
    check: Callable[[Any], Any]


@dataclass(frozen=True)
class _Table:
    fields: Mapping[str, _Node]


@dataclass(frozen=True)
class _Entries:
    """A table whose keys are data (roles, addresses, domains, range ids), each checked by `key`."""

    key: Callable[[str], str]
    value: _Node


_Node: TypeAlias = "_Leaf | _Table | _Entries"

_TOML_TYPES = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"}


def _show(value: Any) -> str:
    kind = _TOML_TYPES.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _parsed(value: Any) -> Any:
    return value.parsed if isinstance(value, _Given) else value


def _string(pattern: str | None = None, hint: str = "") -> _Leaf:
    def check(value: Any) -> str:
        if isinstance(value, _Given):  # `--set sensor.id=2024` means the text, not the integer
            value = value.parsed if isinstance(value.parsed, str) else value.text
        if not isinstance(value, str):
            raise _Problem(f"expected a string, got {_show(value)}")
        if not value:
            raise _Problem("must not be empty")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise _Problem(f"{value!r} {hint}")
        return value

    return _Leaf(check)


def _string_or_empty() -> _Leaf:
    """A string that may be empty ("" = the built-in default, e.g. sensor.rules)."""

    def check(value: Any) -> str:
        if isinstance(value, _Given):
            value = value.parsed if isinstance(value.parsed, str) else value.text
        if not isinstance(value, str):
            raise _Problem(f"expected a string, got {_show(value)}")
        return value

    return _Leaf(check)


def _check_boolean(value: Any) -> bool:
    value = _parsed(value)
    if not isinstance(value, bool):
        raise _Problem(f"expected true or false, got {_show(value)}")
    return value


_boolean = _Leaf(_check_boolean)


def _integer(lo: int, hi: int) -> _Leaf:
    def check(value: Any) -> int:
        value = _parsed(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Problem(f"expected an integer {lo}..{hi}, got {_show(value)}")
        if not lo <= value <= hi:
            raise _Problem(f"{value} is out of range {lo}..{hi}")
        return value

    return _Leaf(check)


def _choice(options: Sequence[str]) -> _Leaf:
    def check(value: Any) -> str:
        value = _parsed(value)
        if isinstance(value, str):
            for option in options:  # PowerShell and Topology Builder values are case-insensitive
                if value.casefold() == option.casefold():
                    return option
        raise _Problem(f"expected one of {', '.join(options)}, got {_show(value)}")

    return _Leaf(check)


def _check_networks(value: Any) -> tuple[str, ...]:
    if isinstance(value, _Given):  # a bare string from env/--set is a comma-separated list
        value = value.parsed if isinstance(value.parsed, list) else [p for p in value.text.split(",") if p.strip()]
    if not isinstance(value, list):
        raise _Problem(f"expected an array of addresses or CIDRs, got {_show(value)}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise _Problem(f"expected an address or CIDR string, got {_show(item)}")
        try:
            net = parse_network(item)
        except ValueError as exc:
            raise _Problem(str(exc) if "host bits" in str(exc) else f"{item!r} is not an IP address or CIDR") from None
        out.append(str(net.network_address) if net.prefixlen == net.max_prefixlen else net.with_prefixlen)
    return tuple(out)


_networks = _Leaf(_check_networks)


def _check_listen(value: Any) -> str:
    """host:port, [ipv6]:port; the port 0..65535 (0 picks a free one), checked here so --serve cannot overflow."""
    if isinstance(value, _Given):
        value = value.parsed if isinstance(value.parsed, str) else value.text
    if not isinstance(value, str):
        raise _Problem(f"expected a string, got {_show(value)}")
    match = re.fullmatch(r"\[([^]]+)\]:([0-9]+)|([A-Za-z0-9.-]+):([0-9]+)", value)
    if match is None:
        raise _Problem(f"{value!r} must be host:port, e.g. 127.0.0.1:9477 or [::1]:9477")
    if match[1] is not None:
        try:
            ipaddress.IPv6Address(match[1])
        except ValueError:
            raise _Problem(f"{match[1]!r} in {value!r} is not an IPv6 address") from None
    port = int(match[2] or match[4])
    if port > 65535:
        raise _Problem(f"port {port} in {value!r} is out of range 0..65535")
    return value


def _text(value: Any) -> str:
    if isinstance(value, _Given):
        value = value.parsed if isinstance(value.parsed, str) else value.text
    if not isinstance(value, str):
        raise _Problem(f"expected a string, got {_show(value)}")
    return value


def _check_catalog(value: Any) -> str:
    """A DuckLake catalog: "postgres:<libpq key=value DSN>" or a DuckDB file path ("" = none)."""
    text = _text(value).strip()
    if text.startswith(("postgres:", "postgresql:")):
        dsn = text.split(":", 1)[1].strip()
        if not dsn or not all(re.fullmatch(r"[A-Za-z_]+=\S*", part) for part in dsn.split()):
            raise _Problem(
                f"{text!r}: a postgres catalog is postgres:key=value ... (e.g. postgres:dbname=lake host=db)"
            )
        return text
    if re.match(r"^[a-z][a-z0-9+]*://", text) or text.startswith(("sqlite:", "mysql:", "ducklake:")):
        raise _Problem(f"{text!r}: a catalog is postgres:key=value ... or a DuckDB file path")
    return text


def _check_data_path(value: Any) -> str:
    """Where DuckLake puts its data files: an absolute directory or an s3:// URL ("" = under sensor.lake)."""
    text = _text(value).strip()
    if text and not (text.startswith("/") or re.match(r"^s3://[^/]+", text)):
        raise _Problem(f"{text!r}: give an absolute directory or an s3://bucket/prefix URL")
    return text


def _removed(why: str) -> _Leaf:
    """A key that no longer exists: any value is an error that says what replaced it."""

    def check(value: Any) -> Any:
        raise _Problem(f"this key was removed: {why}")

    return _Leaf(check)


_WEB_CONFIG_MIGRATION = (
    "TLS and basic auth now come from a Prometheus exporter-toolkit web config file (tls_server_config, "
    "basic_auth_users with bcrypt hashes, as for node_exporter): set metrics.web_config_file to its path "
    "(see deploy/web-config.example.yml)"
)


def _check_port_range(value: Any) -> tuple[int, int]:
    value = _parsed(value)
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
        raise _Problem(f'expected "lo-hi" or [lo, hi], got {_show(value)}')
    if not 1 <= lo <= hi <= 65535:
        raise _Problem(f"port range {lo}-{hi} must satisfy 1 <= lo <= hi <= 65535")
    return (lo, hi)


def _unknown(what: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f", did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}{hint} (known: {', '.join(known)})"


def _role_key(name: str) -> str:
    if name not in KNOWN_ROLES:
        raise _Problem(_unknown("role", name, KNOWN_ROLES))
    return name


def _address_key(name: str) -> str:
    try:
        return str(parse_address(name))
    except ValueError:
        raise _Problem(f"{name!r} is not an IP address") from None


def _domain_key(name: str) -> str:
    label = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    if not re.fullmatch(rf"{label}(?:\.{label})*", name.lower()):
        raise _Problem(f"{name!r} is not a domain name")
    return name.lower()


@functools.cache
def port_range_ids() -> tuple[str, ...]:
    """The ids of the port catalogue (the id column of sensor/data/ports.csv), the keys [ports] may override."""
    text = (resources.files("sensor") / "data" / "ports.csv").read_text(encoding="utf-8")
    return tuple(sorted({row["id"] for row in csv.DictReader(io.StringIO(text))}))


def _range_id_key(name: str) -> str:
    known = port_range_ids()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f", did you mean {', '.join(map(repr, close))}?" if close else ""
        raise _Problem(f"unknown port range id {name!r}{hint} (the ids are the id column of sensor/data/ports.csv)")
    return name


_SCHEMA = _Table(
    {
        "sensor": _Table(
            {
                # The id names files in the lake (<sensor>-<seq>.parquet), so it stays filename-safe.
                "id": _string(r"[A-Za-z0-9][A-Za-z0-9._-]*", "may hold only letters, digits, '.', '_', '-'"),
                "site": _string_or_empty(),
                "lake": _string(),
                "interval": _integer(1, 3600),
                "idle_timeout": _integer(1, 86_400),
                "progress": _boolean,
                "flow_capacity": _integer(1, 1_000_000_000),
                "sip_messages_per_flow": _integer(0, 100_000),
                "fact_packets_per_flow": _integer(0, 100_000),
                "dissector": _choice(("native", "wireshark")),
                "stream_bytes": _integer(1024, 1 << 20),
                "fragment_capacity": _integer(1, 65_536),
                "fragment_timeout": _integer(1, 3600),
                "rules": _string_or_empty(),
            }
        ),
        "topology": _Table(
            {
                "roles": _Entries(_role_key, _networks),
                "networks": _Table({"internal": _networks, "perimeter": _networks}),
            }
        ),
        "policy": _Table(
            {
                "media_encryption_level": _choice(MEDIA_ENCRYPTION_LEVELS),
                "fips": _boolean,
                "require_tls12_on_edge": _boolean,
                "gateways": _Entries(
                    _address_key,
                    _Table(
                        {
                            "transport": _choice(GATEWAY_TRANSPORTS),
                            "srtp_mode": _choice(SRTP_MODES),
                            "e911": _boolean,
                        }
                    ),
                ),
                "trusted_applications": _Entries(_address_key, _Table({"port": _integer(1, 65535)})),
                "xmpp_partners": _Entries(_domain_key, _Table({"tls_negotiation": _choice(TLS_NEGOTIATION_MODES)})),
            }
        ),
        "ports": _Entries(_range_id_key, _Leaf(_check_port_range)),
        "privacy": _Table(
            {
                "redact_http_query": _boolean,
                "store_sip_uris": _removed(
                    "SIP URIs and phone numbers are never stored in the lake (only methods and status codes), "
                    "so there is nothing to switch; delete the key"
                ),
            }
        ),
        "live": _Table(
            {
                "interface": _string_or_empty(),
                "bpf": _string_or_empty(),
                "spool": _string(),
                "spool_seconds": _integer(1, 3600),
                "spool_files": _integer(2, 100_000),
                "capture_buffer_mib": _integer(1, 4096),
                "rule_interval": _integer(1, 86_400),
                "rule_window": _integer(1, 31 * 86_400),
                "retention_days": _integer(0, 36_500),
                "retention_max_bytes": _integer(0, 1 << 60),
                "min_free_bytes": _integer(0, 1 << 60),
                "status_file": _string_or_empty(),
            }
        ),
        "lake": _Table(
            {
                "backend": _choice(LAKE_BACKENDS),
                "catalog": _Leaf(_check_catalog),
                "data_path": _Leaf(_check_data_path),
                "spool": _string_or_empty(),
                "spool_max_records": _integer(1000, 1_000_000_000),
                "retry_initial_seconds": _integer(1, 3600),
                "retry_max_seconds": _integer(1, 86_400),
            }
        ),
        "metrics": _Table(
            {
                "listen": _Leaf(_check_listen),
                "web_config_file": _string_or_empty(),
                "tls_cert_file": _removed(_WEB_CONFIG_MIGRATION),
                "tls_key_file": _removed(_WEB_CONFIG_MIGRATION),
                "basic_auth_user": _removed(_WEB_CONFIG_MIGRATION),
                "basic_auth_password_sha256": _removed(_WEB_CONFIG_MIGRATION),
            }
        ),
    }
)


def config_key(parts: Sequence[str]) -> str:
    """A dotted key as TOML writes it; parts that are not bare keys are quoted: policy.gateways."10.0.3.5"."""
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else f'"{p}"' for p in parts)


def _normalize(node: _Node, value: Any, path: tuple[str, ...]) -> Any:
    """Check one layer against the schema; returns it with canonical keys and values (tuples, not lists)."""
    if isinstance(node, _Leaf):
        try:
            return node.check(value)
        except _Problem as problem:
            raise _Problem(problem.message, config_key(path)) from None
    value = _parsed(value)  # a whole table from env/--set is an inline table: {transport = "tls"}
    if not isinstance(value, dict):
        raise _Problem(f"expected a table, got {_show(value)}", config_key(path))
    out: dict[str, Any] = {}
    for name, item in value.items():
        if isinstance(node, _Table):
            child = node.fields.get(name)
            if child is None:
                raise _Problem(
                    _unknown("section" if not path else "key", name, list(node.fields)),
                    config_key((*path, name)),
                )
            out[name] = _normalize(child, item, (*path, name))
        else:
            try:
                canonical = node.key(name)
            except _Problem as problem:
                raise _Problem(problem.message, config_key((*path, name))) from None
            out[canonical] = _normalize(node.value, item, (*path, canonical))
    return out


def _merge(
    into: dict[str, Any],
    layer: Mapping[str, Any],
    source: str,
    origins: dict[str, str],
    path: tuple[str, ...] = (),
) -> None:
    """Lay one checked layer over the ones before it: tables merge key by key, anything else replaces."""
    for name, value in layer.items():
        where = (*path, name)
        origins[config_key(where)] = source
        if isinstance(value, dict):
            _merge(into.setdefault(name, {}), value, source, origins, where)
        else:
            into[name] = value


# --- Layer sources: file, environment, --set. ---------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML syntax error: {exc}", source=str(path)) from None


def _given(text: str) -> _Given:
    """Env and --set values are TOML values when they parse as one (true, 30, ["a", "b"]), else strings."""
    if "\n" not in text:
        try:
            return _Given(text, tomllib.loads(f"v = {text}")["v"])
        except tomllib.TOMLDecodeError:
            pass
    return _Given(text, text)


def _regroup(parts: list[str]) -> list[str]:
    """Re-join unquoted dotted keys inside tables keyed by address or domain:
    policy.gateways.10.0.3.5.transport -> policy, gateways, 10.0.3.5, transport."""
    node: _Node = _SCHEMA
    for i, part in enumerate(parts):
        if isinstance(node, _Entries):
            rest = parts[i:]
            fields = node.value.fields if isinstance(node.value, _Table) else {}
            if len(rest) >= 2 and rest[-1] in fields:
                return [*parts[:i], ".".join(rest[:-1]), rest[-1]]
            return [*parts[:i], ".".join(rest)]
        if not isinstance(node, _Table) or part not in node.fields:
            break
        node = node.fields[part]
    return parts


def _nest(parts: Sequence[str], value: Any) -> dict[str, Any]:
    layer: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        layer = {part: layer}
    return layer


def _env_layers(env: Mapping[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """LYNC_SENSOR_<SECTION>__<KEY>[__<KEY>...], names case-insensitive; whole tables before their keys."""
    names = [n for n in env if n.upper().startswith(ENV_PREFIX) and n.upper() not in RESERVED_ENV]
    for name in sorted(names, key=lambda n: (n.count("__"), n.upper())):
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(parts):
            raise ConfigError(
                f"{name} does not name a key: use LYNC_SENSOR_<SECTION>__<KEY> (LYNC_SENSOR_SENSOR__LAKE)",
                source=ENV_SOURCE,
            )
        parts = _regroup(parts)
        if len(parts) == 2 and parts[0] == "ports":  # range ids hold '-', which a variable name cannot
            parts[1] = parts[1].replace("_", "-")
        yield name, _nest(parts, _given(env[name]))


_KEY_PART = re.compile(r'\s*(?:"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_:-]+))\s*(\.|$)')


def _split_key(text: str) -> list[str] | None:
    parts, pos = [], 0
    while pos < len(text):
        match = _KEY_PART.match(text, pos)
        if match is None or match.end() == pos:
            return None
        parts.append(next(g for g in match.groups()[:3] if g is not None))
        pos = match.end()
        if match[4] == "." and pos == len(text):
            return None  # trailing dot
    return parts or None


def _set_layers(overrides: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """--set key=value, the key dotted as in TOML: policy.fips, policy.gateways."10.0.3.5".transport."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = _split_key(key.strip()) if sep else None
        if not parts:
            raise ConfigError(f"expected key=value like policy.fips=true, got {item!r}", source=SET_SOURCE)
        yield item, _nest(_regroup(parts), _given(value.strip()))


# --- Building the immutable config. -------------------------------------------------------------------------


def _covered(addr: str, entries: Sequence[str]) -> bool:
    ip = parse_address(addr)
    return any(ip in net for net in map(parse_network, entries) if net.version == ip.version)


def _build(data: Mapping[str, Any], source: Path | None, origins: Mapping[str, str]) -> Config:
    topo = data.get("topology", {})
    roles = topo.get("roles", {})
    networks = topo.get("networks", {})
    policy = data.get("policy", {})

    def fail(message: str, *parts: str) -> ConfigError:
        return ConfigError(message, key=config_key(parts), source=origins.get(config_key(parts[:3])))

    gateways = {}
    gateway_hosts = [entry for role in sorted(GATEWAY_ROLES) for entry in roles.get(role, ())]
    for addr, settings in policy.get("gateways", {}).items():
        if "transport" not in settings:
            raise fail(
                'needs transport = "tcp" or "tls", as defined in Topology Builder',
                "policy",
                "gateways",
                addr,
                "transport",
            )
        if not _covered(addr, gateway_hosts):
            raise fail(
                f"{addr} is not listed under topology.roles.pstn_gateway or e911_gateway",
                "policy",
                "gateways",
                addr,
            )
        gateways[addr] = GatewayPolicy(**settings)
    trusted = {}
    for addr, settings in policy.get("trusted_applications", {}).items():
        if not _covered(addr, roles.get("trusted_application", ())):
            raise fail(
                f"{addr} is not listed under topology.roles.trusted_application",
                "policy",
                "trusted_applications",
                addr,
            )
        trusted[addr] = TrustedApplication(**settings)
    partners = {domain: XmppPartner(**settings) for domain, settings in policy.get("xmpp_partners", {}).items()}

    scalars = {k: v for k, v in policy.items() if k not in ("gateways", "trusted_applications", "xmpp_partners")}
    return Config(
        sensor=SensorSettings(**data.get("sensor", {})),
        topology=TopologySettings(
            roles=_frozen(roles),
            internal=networks.get("internal", DEFAULT_INTERNAL_NETWORKS),
            perimeter=networks.get("perimeter", ()),
        ),
        policy=PolicySettings(
            **scalars,
            gateways=_frozen(gateways),
            trusted_applications=_frozen(trusted),
            xmpp_partners=_frozen(partners),
        ),
        ports=_frozen(data.get("ports", {})),
        privacy=PrivacySettings(**data.get("privacy", {})),
        metrics=MetricsSettings(**data.get("metrics", {})),
        live=LiveSettings(**data.get("live", {})),
        lake=_lake_settings(data.get("lake", {}), origins),
        source=source,
        origins=_frozen(origins),
    )


def _lake_settings(data: Mapping[str, Any], origins: Mapping[str, str]) -> LakeSettings:
    lake = LakeSettings(**data)
    if lake.backend == "ducklake" and not lake.catalog:
        raise ConfigError(
            'backend "ducklake" needs a catalog: postgres:dbname=... host=... or a DuckDB file path',
            key="lake.catalog",
            source=origins.get("lake.backend"),
        )
    if lake.retry_max_seconds < lake.retry_initial_seconds:
        raise ConfigError(
            f"{lake.retry_max_seconds} is below lake.retry_initial_seconds ({lake.retry_initial_seconds})",
            key="lake.retry_max_seconds",
            source=origins.get("lake.retry_max_seconds"),
        )
    return lake


def load_config(path: Path | None, env: Mapping[str, str] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load the config: built-in defaults, then the TOML file at path, then LYNC_SENSOR_* variables of env,
    then `--set key=value` overrides; each later layer wins.

    Raises ConfigError naming the key and where it was set (the file, 'environment' or '--set')."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}

    def lay(layer: Mapping[str, Any], source: str, note: str = "") -> None:
        try:
            checked = _normalize(_SCHEMA, layer, ())
        except _Problem as problem:
            raise ConfigError(problem.message + note, key=problem.key, source=source) from None
        _merge(merged, checked, source, origins)

    # 1. Built-in defaults: the dataclass defaults above fill every key no layer sets (in _build).
    # 2. The TOML file.
    if path is not None:
        path = Path(path)
        lay(_read_file(path), str(path))
    # 3. The environment: only LYNC_SENSOR_* names, only from the mapping passed in.
    for name, layer in _env_layers(env or {}):
        lay(layer, ENV_SOURCE, f" (from {name})")
    # 4. --set key=value, in the order given.
    for item, layer in _set_layers(overrides):
        lay(layer, SET_SOURCE, f" (from --set {item!r})")
    return _build(merged, path, origins)
