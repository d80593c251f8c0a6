"""The sensor's one immutable config: built-in defaults, then the TOML file, then environment, then --set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sensor.config_fields import (
    BOOLEAN,
    CATALOG,
    DATA_PATH,
    LISTEN,
    NETWORKS,
    PORT_RANGE,
    SECTION,
    Problem,
    Table,
    address_key,
    choice,
    domain_key,
    entries,
    frozen,
    instance,
    integer,
    range_id_key,
    required,
    role_key,
    setting,
    string,
    string_or_empty,
    table_of,
    to_toml,
)
from sensor.config_layers import (
    ENV_SOURCE,
    SET_SOURCE,
    config_key,
    env_layers,
    merge,
    normalize,
    read_file,
    set_layers,
)
from sensor.errors import ConfigError
from sensor.roles import GATEWAY_ROLES, parse_address, parse_network

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
LAKE_BACKENDS = ("parquet", "ducklake")

# Each key is declared once, on its field: the default, then the check (sensor.config_fields) that the file,
# the environment and --set values pass. The schema and to_dict() are derived from these fields.


@dataclass(frozen=True)
class SensorSettings:
    """[sensor]: who this sensor is, where it writes, and the bounds that keep its memory flat."""

    # The id names files in the lake (<sensor>-<seq>.parquet), so it stays filename-safe.
    id: str = setting("sensor", string(r"[A-Za-z0-9][A-Za-z0-9._-]*", "may hold only letters, digits, '.', '_', '-'"))
    site: str = setting("", string_or_empty())  # the site label of every metric, for the fleet view; "" = "default"
    lake: str = setting("./lake", string())
    interval: int = setting(60, integer(1, 3600))
    idle_timeout: int = setting(120, integer(1, 86_400))
    progress: bool = setting(True, BOOLEAN)
    flow_capacity: int = setting(1_000_000, integer(1, 1_000_000_000))
    sip_messages_per_flow: int = setting(64, integer(0, 100_000))
    fact_packets_per_flow: int = setting(12, integer(0, 100_000))
    # "native": handshake facts parsed in-process from reassembled streams; "wireshark": the fact packets go to
    # Wireshark's dissectors (tshark) instead, a second opinion at Wireshark's speed.
    dissector: str = setting("native", choice(("native", "wireshark")))
    # per TCP direction, the first bytes reassembled by sequence number
    stream_bytes: int = setting(65536, integer(1024, 1 << 20))
    fragment_capacity: int = setting(256, integer(1, 65_536))  # IP datagrams in reassembly at once (oldest evicted)
    fragment_timeout: int = setting(30, integer(1, 3600))  # seconds an incomplete IP datagram is kept (ipfrag_time)
    rules: str = setting("", string_or_empty())  # directory of rule files; "" = the queries/ shipped with the sensor


@dataclass(frozen=True)
class TopologySettings:
    """[topology]: role -> addresses/CIDRs (canonical text), and the internal and perimeter networks."""

    roles: Mapping[str, tuple[str, ...]] = entries(role_key, NETWORKS)
    internal: tuple[str, ...] = setting(DEFAULT_INTERNAL_NETWORKS, NETWORKS, under="networks")
    perimeter: tuple[str, ...] = setting((), NETWORKS, under="networks")


@dataclass(frozen=True)
class GatewayPolicy:
    """[policy.gateways."<addr>"]: one PSTN gateway/IP-PBX/SBC trunk as defined in Topology Builder."""

    transport: str = required(choice(GATEWAY_TRANSPORTS))
    srtp_mode: str | None = setting(None, choice(SRTP_MODES))
    e911: bool = setting(False, BOOLEAN)

    @property
    def effective_srtp_mode(self) -> str:
        """SRTPMode as Lync applies it: NotSupported on a TCP trunk, else the setting (default Required)."""
        if self.transport == "tcp":
            return "NotSupported"
        return self.srtp_mode or "Required"


@dataclass(frozen=True)
class TrustedApplication:
    """[policy.trusted_applications."<addr>"]: a trusted application / RCC line server (exception E1)."""

    port: int = setting(5060, integer(1, 65535))


@dataclass(frozen=True)
class XmppPartner:
    """[policy.xmpp_partners."<domain>"]: an XMPP federation partner."""

    tls_negotiation: str = setting("Required", choice(TLS_NEGOTIATION_MODES))


@dataclass(frozen=True)
class PolicySettings:
    """[policy]: the site settings the rules depend on."""

    media_encryption_level: str = setting("RequireEncryption", choice(MEDIA_ENCRYPTION_LEVELS))
    fips: bool = setting(False, BOOLEAN)
    require_tls12_on_edge: bool = setting(False, BOOLEAN)
    gateways: Mapping[str, GatewayPolicy] = entries(address_key, GatewayPolicy)
    trusted_applications: Mapping[str, TrustedApplication] = entries(address_key, TrustedApplication)
    xmpp_partners: Mapping[str, XmppPartner] = entries(domain_key, XmppPartner)


@dataclass(frozen=True)
class PrivacySettings:
    """[privacy]: personal data kept in the lake."""

    REMOVED_KEYS: ClassVar[Mapping[str, str]] = {
        "store_sip_uris": "SIP URIs and phone numbers are never stored in the lake (only methods and status codes), "
        "so there is nothing to switch; delete the key",
    }

    redact_http_query: bool = setting(True, BOOLEAN)


@dataclass(frozen=True)
class LiveSettings:
    """[live]: the long-running appliance (`lync-sensor run`)."""

    interface: str = setting("", string_or_empty())
    bpf: str = setting("", string_or_empty())
    spool: str = setting("/run/lync-sensor/spool", string())
    spool_seconds: int = setting(2, integer(1, 3600))
    spool_files: int = setting(64, integer(2, 100_000))
    capture_buffer_mib: int = setting(64, integer(1, 4096))
    rule_interval: int = setting(60, integer(1, 86_400))
    rule_window: int = setting(900, integer(1, 31 * 86_400))
    retention_days: int = setting(30, integer(0, 36_500))
    retention_max_bytes: int = setting(0, integer(0, 1 << 60))
    min_free_bytes: int = setting(1 << 30, integer(0, 1 << 60))
    status_file: str = setting("", string_or_empty())


@dataclass(frozen=True)
class LakeSettings:
    """[lake]: which lake the records go to. "parquet": hive-partitioned files under sensor.lake (one box);
    "ducklake": a DuckLake, its catalog in PostgreSQL (a fleet) or a DuckDB file (one box), its data files
    under data_path (a shared filesystem or s3://). A DuckLake writer that cannot reach the catalog keeps its
    records in the local spool (bounded) and retries with backoff."""

    backend: str = setting("parquet", choice(LAKE_BACKENDS))
    # "postgres:dbname=... host=..." or a DuckDB file path; required for ducklake
    catalog: str = setting("", CATALOG)
    data_path: str = setting(
        "", DATA_PATH
    )  # directory or s3:// URL of the data files; "" = <sensor.lake>/ducklake-data
    spool: str = setting("", string_or_empty())  # records waiting for the catalog; "" = <sensor.lake>/_spool
    # beyond this the oldest spooled records are dropped (and counted)
    spool_max_records: int = setting(2_000_000, integer(1000, 1_000_000_000))
    retry_initial_seconds: int = setting(1, integer(1, 3600))  # first retry after a failed commit; doubled per failure
    retry_max_seconds: int = setting(60, integer(1, 86_400))  # longest wait between retries


_WEB_CONFIG_MIGRATION = (
    "TLS and basic auth now come from a Prometheus exporter-toolkit web config file (tls_server_config, "
    "basic_auth_users with bcrypt hashes, as for node_exporter): set metrics.web_config_file to its path "
    "(see deploy/web-config.example.yml)"
)


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: the /metrics exporter. Loopback by default; TLS and basic auth (for exposing it further) come
    from a Prometheus exporter-toolkit web config file, as for node_exporter."""

    REMOVED_KEYS: ClassVar[Mapping[str, str]] = {
        key: _WEB_CONFIG_MIGRATION
        for key in ("tls_cert_file", "tls_key_file", "basic_auth_user", "basic_auth_password_sha256")
    }

    listen: str = setting("127.0.0.1:9477", LISTEN)
    web_config_file: str = setting("", string_or_empty())  # "" = plain HTTP without authentication


@dataclass(frozen=True)
class Config:
    """The whole config; `source` is the file it was loaded from (None without one)."""

    sensor: SensorSettings = field(default_factory=SensorSettings, metadata=SECTION)
    topology: TopologySettings = field(default_factory=TopologySettings, metadata=SECTION)
    policy: PolicySettings = field(default_factory=PolicySettings, metadata=SECTION)
    ports: Mapping[str, tuple[int, int]] = entries(range_id_key, PORT_RANGE)
    privacy: PrivacySettings = field(default_factory=PrivacySettings, metadata=SECTION)
    live: LiveSettings = field(default_factory=LiveSettings, metadata=SECTION)
    lake: LakeSettings = field(default_factory=LakeSettings, metadata=SECTION)
    metrics: MetricsSettings = field(default_factory=MetricsSettings, metadata=SECTION)
    source: Path | None = None
    origins: Mapping[str, str] = field(default_factory=frozen, repr=False, compare=False)

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
        return to_toml(self)


# The schema every layer is checked against: every section and key, derived from the fields above.
_SCHEMA: Table = table_of(Config)


# --- Building the immutable config. -------------------------------------------------------------------------


def _covered(addr: str, entries: Sequence[str]) -> bool:
    ip = parse_address(addr)
    return any(ip in net for net in map(parse_network, entries) if net.version == ip.version)


def _check_site(data: Mapping[str, Any], origins: Mapping[str, str]) -> None:
    """The policy's gateways and trusted applications are hosts the topology lists under their roles."""
    roles = data.get("topology", {}).get("roles", {})
    policy = data.get("policy", {})

    def fail(message: str, *parts: str) -> ConfigError:
        return ConfigError(message, key=config_key(parts), source=origins.get(config_key(parts[:3])))

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
    for addr in policy.get("trusted_applications", {}):
        if not _covered(addr, roles.get("trusted_application", ())):
            raise fail(
                f"{addr} is not listed under topology.roles.trusted_application",
                "policy",
                "trusted_applications",
                addr,
            )


def _check_lake(lake: LakeSettings, origins: Mapping[str, str]) -> None:
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


def _build(data: Mapping[str, Any], source: Path | None, origins: Mapping[str, str]) -> Config:
    _check_site(data, origins)
    cfg: Config = instance(Config, data, source=source, origins=frozen(origins))
    _check_lake(cfg.lake, origins)
    return cfg


def load_config(path: Path | None, env: Mapping[str, str] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load the config: built-in defaults, then the TOML file at path, then LYNC_SENSOR_* variables of env,
    then `--set key=value` overrides; each later layer wins.

    Raises ConfigError naming the key and where it was set (the file, 'environment' or '--set')."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}

    def lay(layer: Mapping[str, Any], source: str, note: str = "") -> None:
        try:
            checked = normalize(_SCHEMA, layer)
        except Problem as problem:
            raise ConfigError(problem.message + note, key=problem.key, source=source) from None
        merge(merged, checked, source, origins)

    # 1. Built-in defaults: the dataclass defaults above fill every key no layer sets (in _build).
    # 2. The TOML file.
    if path is not None:
        path = Path(path)
        lay(read_file(path), str(path))
    # 3. The environment: only LYNC_SENSOR_* names, only from the mapping passed in.
    for name, layer in env_layers(_SCHEMA, env or {}):
        lay(layer, ENV_SOURCE, f" (from {name})")
    # 4. --set key=value, in the order given.
    for item, layer in set_layers(_SCHEMA, overrides):
        lay(layer, SET_SOURCE, f" (from --set {item!r})")
    return _build(merged, path, origins)
