"""Tests for sensor.config: defaults, the worked examples, precedence and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from sensor.config import (
    DEFAULT_INTERNAL_NETWORKS,
    Config,
    GatewayPolicy,
    load_config,
)
from sensor.errors import ConfigError
from tests.conftest import ISSUE_EXAMPLE_TOML

REPO = Path(__file__).resolve().parents[2]
DEPLOY_EXAMPLE = REPO / "deploy" / "lync-sensor.example.toml"

EXAMPLE = ISSUE_EXAMPLE_TOML


def write(tmp_path: Path, text: str, name: str = "lync-sensor.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def example(tmp_path: Path) -> Path:
    return write(tmp_path, EXAMPLE)


# --- defaults and the worked examples


def test_no_file_gives_the_built_in_defaults() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.source is None
    assert (cfg.sensor.id, cfg.sensor.lake, cfg.sensor.interval, cfg.sensor.idle_timeout) == (
        "sensor",
        "./lake",
        60,
        120,
    )
    assert cfg.sensor.progress is True
    assert cfg.sensor.flow_capacity == 1_000_000
    assert (cfg.sensor.sip_messages_per_flow, cfg.sensor.fact_packets_per_flow) == (64, 12)
    assert dict(cfg.roles) == {}
    assert cfg.topology.internal == DEFAULT_INTERNAL_NETWORKS
    assert "fc00::/7" in cfg.topology.internal
    assert cfg.topology.perimeter == ()
    assert cfg.policy.media_encryption_level == "RequireEncryption"
    assert cfg.policy.fips is False and cfg.policy.require_tls12_on_edge is False
    assert dict(cfg.policy.gateways) == {}
    assert dict(cfg.ports) == {}
    assert cfg.privacy.redact_http_query is True
    assert (cfg.metrics.listen, cfg.metrics.web_config_file) == ("127.0.0.1:9477", "")
    assert cfg.origin_of("sensor", "interval") == "default"


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    cfg = load_config(path)
    assert cfg == dataclasses.replace(Config(), source=path)


def test_the_brief_example_loads_unchanged(example: Path) -> None:
    cfg = load_config(example)
    assert cfg.source == example
    assert cfg.sensor.id == "sensor-a"
    assert cfg.sensor.lake == "/var/lib/lync-sensor/lake"
    assert cfg.sensor.interval == 60  # not in the file: built-in default
    assert dict(cfg.roles) == {
        "front_end": ("10.0.1.10", "10.0.1.11"),
        "director": ("10.0.1.30",),
        "mediation": ("10.0.1.20",),
        "edge_internal": ("10.0.2.10",),
        "edge_external": ("203.0.113.10",),
        "pstn_gateway": ("10.0.3.5",),
    }
    assert cfg.topology.internal == ("10.0.0.0/8",)
    assert cfg.policy.media_encryption_level == "RequireEncryption"
    assert cfg.policy.fips is False
    gateway = cfg.policy.gateways["10.0.3.5"]
    assert gateway == GatewayPolicy(transport="tcp")
    assert gateway.effective_srtp_mode == "NotSupported"  # [TRUNK]: TCP trunks are set to NotSupported
    assert cfg.origin_of("sensor", "id") == str(example)


def test_the_deploy_example_loads_and_uses_every_section() -> None:
    cfg = load_config(DEPLOY_EXAMPLE)
    assert set(cfg.to_dict()) == {"sensor", "topology", "policy", "ports", "privacy", "metrics", "live", "lake"}
    assert cfg.metrics.listen == "127.0.0.1:9477"
    assert cfg.sensor.id == "sensor-a"
    assert cfg.roles["front_end"] == ("10.0.1.10", "10.0.1.11")
    assert cfg.policy.gateways["10.0.3.5"].transport == "tcp"
    tls_gateway = cfg.policy.gateways["10.0.3.6"]
    assert (tls_gateway.transport, tls_gateway.srtp_mode, tls_gateway.e911) == ("tls", "Required", True)
    assert cfg.policy.trusted_applications["10.0.1.40"].port == 5060
    assert cfg.policy.xmpp_partners["partner.example.com"].tls_negotiation == "Required"
    assert cfg.topology.perimeter


def test_the_deploy_example_names_every_key() -> None:
    text = DEPLOY_EXAMPLE.read_text(encoding="utf-8")
    for section in ("sensor", "live", "lake"):
        for key in Config().to_dict()[section]:
            assert f"\n{key} = " in text, (section, key)
    for key in (
        "media_encryption_level",
        "fips",
        "require_tls12_on_edge",
        "redact_http_query",
        "listen",
        "web_config_file",
    ):
        assert f"\n{key} = " in text
    for key in ("transport", "srtp_mode", "e911", "port", "tls_negotiation", "internal", "perimeter"):
        assert f"\n{key} = " in text
    for section in ("[ports]", "[privacy]", "[policy.trusted_applications.", "[policy.xmpp_partners."):
        assert section in text


def test_config_is_immutable(example: Path) -> None:
    cfg = load_config(example)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sensor.interval = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.roles["front_end"] = ("10.9.9.9",)  # type: ignore[index]
    assert isinstance(cfg.roles["front_end"], tuple)


def test_to_dict_is_plain_data(tmp_path: Path) -> None:
    cfg = load_config(DEPLOY_EXAMPLE, overrides=["ports.client-audio=49152-57500"])
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["ports"] == {"client-audio": [49152, 57500]}
    assert data["policy"]["gateways"]["10.0.3.5"] == {"transport": "tcp", "e911": False}
    assert data["topology"]["roles"]["front_end"] == ["10.0.1.10", "10.0.1.11"]


def _inline_toml(value: object) -> str:
    """A value as a TOML inline value (quoted keys, JSON-compatible strings), for the round-trip test."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_inline_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline_toml(v) for v in value) + "]"
    return json.dumps(value)


def test_to_dict_round_trips_through_the_loader(tmp_path: Path) -> None:
    """to_dict is derived from the same fields as the schema: what it writes, the loader reads back unchanged."""
    cfg = load_config(
        DEPLOY_EXAMPLE,
        overrides=[
            "ports.client-audio=49152-57500",
            'policy.gateways."10.0.3.5".srtp_mode=optional',
            'topology.networks.perimeter=["203.0.113.0/24"]',
            "live.interface=eth1",
        ],
    )
    text = "".join(f"{section} = {_inline_toml(table)}\n" for section, table in cfg.to_dict().items())
    again = load_config(write(tmp_path, text))
    assert dataclasses.replace(again, source=cfg.source) == cfg
    assert again.to_dict() == cfg.to_dict()
    assert again.topology.perimeter == ("203.0.113.0/24",)


def test_every_key_is_declared_once_on_its_field() -> None:
    """Each settings field carries its check; the schema's keys are the fields (plus the removed keys, which
    only say what replaced them), in field order."""
    from sensor.config import _SCHEMA, MetricsSettings, PrivacySettings
    from sensor.config_fields import Entries, Leaf, Table

    sections = {f.name: f for f in dataclasses.fields(Config) if f.name not in ("source", "origins")}
    assert list(_SCHEMA.fields) == list(sections)
    for name, f in sections.items():
        node = _SCHEMA.fields[name]
        if isinstance(node, Entries):
            continue
        assert isinstance(node, Table) and isinstance(f.default_factory, type)
        fields = dataclasses.fields(f.default_factory)
        assert all("node" in sub.metadata for sub in fields), name
        keys = [sub.name for sub in fields if sub.metadata.get("under") is None]
        keys += [u for u in dict.fromkeys(sub.metadata.get("under") for sub in fields) if u is not None]
        removed = list(getattr(f.default_factory, "REMOVED_KEYS", {}))
        assert list(node.fields) == keys + removed, name
    assert list(PrivacySettings.REMOVED_KEYS) == ["store_sip_uris"]
    assert all(isinstance(_SCHEMA.fields["metrics"].fields[k], Leaf) for k in MetricsSettings.REMOVED_KEYS)  # type: ignore[union-attr]


def test_derived_schema_and_dict_for_a_new_section() -> None:
    """A key added to a settings dataclass needs nothing else: the schema, the dict and the builder follow."""
    from sensor.config_fields import (
        BOOLEAN,
        NETWORKS,
        address_key,
        entries,
        instance,
        integer,
        setting,
        table_of,
        to_toml,
    )
    from sensor.config_layers import normalize

    @dataclasses.dataclass(frozen=True)
    class Peer:
        weight: int = setting(1, integer(1, 9))
        note: str | None = setting(None, integer(0, 0))

    @dataclasses.dataclass(frozen=True)
    class Example:
        on: bool = setting(False, BOOLEAN)
        lan: tuple[str, ...] = setting((), NETWORKS, under="nets")
        peers: Mapping[str, Peer] = entries(address_key, Peer)

    schema = table_of(Example)
    checked = normalize(schema, {"on": True, "nets": {"lan": ["10.0.0.1"]}, "peers": {"::ffff:10.0.0.9": {}}})
    assert checked == {"on": True, "nets": {"lan": ("10.0.0.1",)}, "peers": {"10.0.0.9": {}}}
    built = instance(Example, checked)
    assert built == Example(on=True, lan=("10.0.0.1",), peers={"10.0.0.9": Peer()})
    assert to_toml(built) == {"on": True, "nets": {"lan": ["10.0.0.1"]}, "peers": {"10.0.0.9": {"weight": 1}}}


def test_config_does_not_import_the_topology() -> None:
    """The config and the topology formed an import cycle; the config now draws roles from sensor.roles."""
    code = "import sys, sensor.config; print('sensor.topology' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


# --- precedence: defaults -> file -> environment -> --set


def test_precedence_on_one_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[sensor]\ninterval = 10\n")
    env = {"LYNC_SENSOR_SENSOR__INTERVAL": "20"}

    assert load_config(None).sensor.interval == 60
    assert load_config(path).sensor.interval == 10
    assert load_config(path, env).sensor.interval == 20
    cfg = load_config(path, env, ["sensor.interval=30"])
    assert cfg.sensor.interval == 30
    assert cfg.origin_of("sensor", "interval") == "--set"
    assert load_config(path, env).origin_of("sensor", "interval") == "environment"
    assert load_config(path).origin_of("sensor", "interval") == str(path)


def test_later_set_wins_and_layers_merge(example: Path) -> None:
    cfg = load_config(
        example,
        {"LYNC_SENSOR_POLICY__FIPS": "true"},
        ["sensor.interval=30", "sensor.interval=45", "policy.require_tls12_on_edge=true"],
    )
    assert cfg.sensor.interval == 45
    assert cfg.policy.fips is True
    assert cfg.policy.require_tls12_on_edge is True
    assert cfg.sensor.id == "sensor-a"  # untouched keys keep the file's value
    assert cfg.policy.gateways["10.0.3.5"].transport == "tcp"


def test_environment_names_are_case_insensitive_and_only_lync_sensor_is_read(example: Path) -> None:
    env = {
        "lync_sensor_sensor__lake": "/x",
        "LYNC_SENSOR_POLICY__MEDIA_ENCRYPTION_LEVEL": "supportencryption",
        "LYNC_SENSOR_CONFIG": "/etc/lync-sensor.toml",  # the CLI's, not a key
        "PATH": "/usr/bin",
        "SENSOR__INTERVAL": "5",
    }
    cfg = load_config(example, env)
    assert cfg.sensor.lake == "/x"
    assert cfg.policy.media_encryption_level == "SupportEncryption"
    assert cfg.sensor.interval == 60


def test_env_and_set_values_parse_as_toml_else_string(example: Path) -> None:
    env = {
        "LYNC_SENSOR_TOPOLOGY__ROLES__DIRECTOR": '["10.0.1.31", "10.0.1.32"]',
        "LYNC_SENSOR_SENSOR__PROGRESS": "false",
        "LYNC_SENSOR_SENSOR__ID": "2024",  # a TOML integer, taken as text for a string key
    }
    cfg = load_config(
        example,
        env,
        [
            "topology.roles.mediation=10.0.1.21,10.0.1.22",
            'policy.gateways."10.0.3.5".transport=tls',
            "policy.gateways.10.0.3.5.srtp_mode=Optional",
            'topology.roles.sba=["10.0.4.0/24"]',
            "ports.client-audio=[49152, 57500]",
            "ports.edge-media = 50000-59999",
        ],
    )
    assert cfg.roles["director"] == ("10.0.1.31", "10.0.1.32")
    assert cfg.roles["mediation"] == ("10.0.1.21", "10.0.1.22")
    assert cfg.roles["sba"] == ("10.0.4.0/24",)
    assert cfg.sensor.progress is False
    assert cfg.sensor.id == "2024"
    assert cfg.policy.gateways["10.0.3.5"] == GatewayPolicy(transport="tls", srtp_mode="Optional")
    assert dict(cfg.ports) == {"client-audio": (49152, 57500), "edge-media": (50000, 59999)}


def test_env_gateway_table_and_inline_table(example: Path) -> None:
    env = {"LYNC_SENSOR_POLICY__GATEWAYS__10.0.3.5__E911": "true"}
    cfg = load_config(example, env, ['policy.xmpp_partners."Jabber.Example.org"={tls_negotiation="optional"}'])
    assert cfg.policy.gateways["10.0.3.5"] == GatewayPolicy(transport="tcp", e911=True)
    assert cfg.policy.xmpp_partners["jabber.example.org"].tls_negotiation == "Optional"


def test_addresses_are_canonical(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[topology.roles]\nfront_end = ["2001:DB8:0::10", "::ffff:10.0.1.10", "10.0.1.0/24", " 10.0.9.9 "]\n'
        'pstn_gateway = ["::ffff:10.0.3.5"]\n[policy.gateways."::ffff:10.0.3.5"]\ntransport = "TLS"\n',
    )
    cfg = load_config(path)
    assert cfg.roles["front_end"] == ("2001:db8::10", "10.0.1.10", "10.0.1.0/24", "10.0.9.9")
    assert cfg.policy.gateways["10.0.3.5"].transport == "tls"


def test_config_has_no_hidden_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[sensor]\nid = 'from-cwd'\n", "lync-sensor.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYNC_SENSOR_SENSOR__ID", "from-os-environ")
    assert load_config(None).sensor.id == "sensor"


# --- errors: one line naming the key and the file


@pytest.mark.parametrize(
    ("toml", "key", "words"),
    [
        ("[sensr]\nid = 'a'\n", "sensr", "unknown section 'sensr', did you mean 'sensor'?"),
        ("[sensor]\nintervall = 3\n", "sensor.intervall", "unknown key 'intervall'"),
        (
            '[topology.roles]\nfrontend = ["10.0.1.10"]\n',
            "topology.roles.frontend",
            "unknown role 'frontend'",
        ),
        ('[topology.roles]\nfront_end = ["10.0.1.300"]\n', "topology.roles.front_end", "'10.0.1.300'"),
        ('[topology.roles]\nfront_end = ["10.0.1.10/24"]\n', "topology.roles.front_end", "host bits set"),
        ('[topology.roles]\nfront_end = "10.0.1.10"\n', "topology.roles.front_end", "expected an array"),
        ('[topology.networks]\ninternal = ["10.0.0.0/33"]\n', "topology.networks.internal", "10.0.0.0/33"),
        ("[sensor]\ninterval = 0\n", "sensor.interval", "out of range 1..3600"),
        ("[sensor]\ninterval = 3601\n", "sensor.interval", "out of range 1..3600"),
        ('[sensor]\ninterval = "60"\n', "sensor.interval", "expected an integer"),
        ("[sensor]\nprogress = 1\n", "sensor.progress", "expected true or false"),
        ("[sensor]\nflow_capacity = true\n", "sensor.flow_capacity", "expected an integer"),
        ('[sensor]\nid = "a/b"\n', "sensor.id", "'a/b'"),
        ("[sensor]\nid = ''\n", "sensor.id", "must not be empty"),
        (
            "[policy]\nmedia_encryption_level = 'Required'\n",
            "policy.media_encryption_level",
            "RequireEncryption",
        ),
        (
            "[policy.gateways.'10.0.3.x']\ntransport = 'tcp'\n",
            'policy.gateways."10.0.3.x"',
            "not an IP address",
        ),
        (
            "[policy.gateways.'10.0.3.5']\ntransport = 'udp'\n",
            'policy.gateways."10.0.3.5".transport',
            "tcp, tls",
        ),
        (
            "[policy.gateways.'10.0.3.5']\nsrtp_mode = 'Required'\n",
            'policy.gateways."10.0.3.5".transport',
            "needs",
        ),
        ("[policy.gateways.'10.0.3.9']\ntransport = 'tls'\n", 'policy.gateways."10.0.3.9"', "pstn_gateway"),
        ("[policy.gateways.'10.0.3.5']\nport = 5067\n", 'policy.gateways."10.0.3.5".port', "unknown key"),
        (
            "[policy.trusted_applications.'10.0.1.40']\n",
            'policy.trusted_applications."10.0.1.40"',
            "trusted_app",
        ),
        ("[policy.xmpp_partners.'a..b']\n", 'policy.xmpp_partners."a..b"', "not a domain name"),
        (
            "[policy.xmpp_partners.'a.com']\ntls_negotiation = 'yes'\n",
            None,
            "Required, Optional, NotSupported",
        ),
        ("[ports]\nclient-audio = '57500-49152'\n", "ports.client-audio", "lo <= hi"),
        ("[ports]\nclient-audio = [0, 10]\n", "ports.client-audio", "1 <= lo"),
        ("[ports]\nclient-audio = '49152'\n", "ports.client-audio", '"lo-hi" or [lo, hi]'),
        ("[ports]\nclient-audio = [1, 2, 3]\n", "ports.client-audio", '"lo-hi" or [lo, hi]'),
        ("[ports]\nfe_audio = [50000, 50100]\n", "ports.fe_audio", "unknown port range id 'fe_audio'"),
        ("[privacy]\nstore_sip_uris = false\n", "privacy.store_sip_uris", "SIP URIs and phone numbers are never"),
        ("[metrics]\nlisten = '127.0.0.1:65536'\n", "metrics.listen", "port 65536 in '127.0.0.1:65536' is out"),
        ("[metrics]\nlisten = '127.0.0.1:99999'\n", "metrics.listen", "out of range 0..65535"),
        ("[metrics]\nlisten = '[::1:9477'\n", "metrics.listen", "must be host:port"),
        ("[metrics]\nlisten = '[fe80::zz]:9477'\n", "metrics.listen", "not an IPv6 address"),
        ("[metrics]\nlisten = '127.0.0.1:\u0663'\n", "metrics.listen", "must be host:port"),
        ("[metrics]\nbasic_auth_user = 'prom'\n", "metrics.basic_auth_user", "set metrics.web_config_file"),
        (
            "[metrics]\nbasic_auth_password_sha256 = '" + "0" * 64 + "'\n",
            "metrics.basic_auth_password_sha256",
            "basic_auth_users with bcrypt hashes",
        ),
        ("[metrics]\ntls_cert_file = 'c.pem'\n", "metrics.tls_cert_file", "tls_server_config"),
        ("[metrics]\ntls_key_file = 'k.pem'\n", "metrics.tls_key_file", "web_config_file"),
        ("sensor = 1\n", "sensor", "expected a table"),
    ],
)
def test_file_errors_name_the_key_and_the_file(tmp_path: Path, toml: str, key: str | None, words: str) -> None:
    base = '[topology.roles]\npstn_gateway = ["10.0.3.5"]\n' if "gateways.'10.0.3.5'" in toml else ""
    path = write(tmp_path, base + toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    err = caught.value
    message = str(err)
    assert "\n" not in message
    assert err.source == str(path)
    assert message.startswith(f"{path}: ")
    if key is not None:
        assert err.key == key
        assert f"{path}: {key}: " in message
    assert words in message


def test_unknown_port_range_id_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    """The id is checked at load, so `config check` fails, and the error names the variable, not the file."""
    path = write(tmp_path, "[sensor]\nid = 'a'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"LYNC_SENSOR_PORTS__EDGE_MEDA": "50000-50100"})
    message = str(caught.value)
    assert caught.value.source == "environment" and caught.value.key == "ports.edge-meda"
    assert str(path) not in message
    assert "(from LYNC_SENSOR_PORTS__EDGE_MEDA)" in message
    assert "did you mean 'edge-media'" in message
    suggested = message.split("did you mean ")[1].split("?")[0].split(", ")
    assert 1 <= len(suggested) <= 3  # the nearest few, not all of the catalogue's ids


def test_port_range_ids_from_the_environment_may_use_underscores() -> None:
    cfg = load_config(None, {"LYNC_SENSOR_PORTS__EDGE_MEDIA": "[50000, 50100]"})
    assert dict(cfg.ports) == {"edge-media": (50000, 50100)}
    assert cfg.origin_of("ports", "edge-media") == "environment"


def test_unknown_port_range_id_with_no_near_id_suggests_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown port range id 'zzz' \(the ids are the id column"):
        load_config(None, overrides=["ports.zzz=1-2"])


def test_listen_port_bounds(tmp_path: Path) -> None:
    assert load_config(None, overrides=["metrics.listen=127.0.0.1:0"]).metrics.listen == "127.0.0.1:0"
    assert load_config(None, overrides=["metrics.listen=[::1]:65535"]).metrics.listen == "[::1]:65535"
    with pytest.raises(ConfigError, match=r"--set: metrics.listen: port 65536 .* out of range 0..65535"):
        load_config(None, overrides=["metrics.listen=localhost:65536"])


def test_unknown_role_lists_the_known_roles(tmp_path: Path) -> None:
    path = write(tmp_path, '[topology.roles]\nfrontend = ["10.0.1.10"]\n')
    with pytest.raises(ConfigError, match=r"unknown role 'frontend'.*\(known: front_end, standard_edition, "):
        load_config(path)


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[sensor\nid = 'a'\n")
    with pytest.raises(ConfigError, match="TOML syntax error") as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "line 1" in str(caught.value)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="cannot read config file") as caught:
        load_config(missing)
    assert str(caught.value).startswith(f"{missing}: ")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)  # a directory
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[sensor]\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(binary)


@pytest.mark.parametrize(
    ("item", "key", "words"),
    [
        ("sensor.interval", None, "expected key=value"),
        ("=30", None, "expected key=value"),
        ("sensor..interval=30", None, "expected key=value"),
        ("sensor.interval.=30", None, "expected key=value"),
        ("sensor interval=30", None, "expected key=value"),
        ("sensor.interval=abc", "sensor.interval", "expected an integer"),
        ("sensor.interval=0", "sensor.interval", "out of range"),
        ("policy.fips=yes", "policy.fips", "expected true or false"),
        ("policy.fipz=true", "policy.fipz", "unknown key 'fipz'"),
        ("topology.roles.frontend=10.0.1.10", "topology.roles.frontend", "unknown role"),
        ("topology.roles.front_end=10.0.1.300", "topology.roles.front_end", "not an IP address or CIDR"),
        ("topology.roles=10.0.1.1", "topology.roles", "expected a table"),
    ],
)
def test_set_errors(example: Path, item: str, key: str | None, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(example, overrides=[item])
    err = caught.value
    assert err.source == "--set"
    assert err.key == key
    assert str(err).startswith("--set: " + (f"{key}: " if key else ""))
    assert words in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ({"LYNC_SENSOR_SENSOR__INTERVAL": "soon"}, "sensor.interval", "LYNC_SENSOR_SENSOR__INTERVAL"),
        ({"LYNC_SENSOR_SENSOR_LAKE": "/x"}, "sensor_lake", "unknown section"),
        ({"LYNC_SENSOR_POLICY__FIPS__X": "1"}, "policy.fips", "expected true or false"),
        ({"LYNC_SENSOR_SENSOR____LAKE": "/x"}, None, "does not name a key"),
        (
            {"LYNC_SENSOR_TOPOLOGY__ROLES__EDGE_INTERNL": "10.0.2.10"},
            "topology.roles.edge_internl",
            "edge_internal",
        ),
    ],
)
def test_environment_errors(example: Path, env: dict[str, str], key: str | None, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(example, env)
    err = caught.value
    assert err.source == "environment"
    assert err.key == key
    assert str(err).startswith("environment: " + (f"{key}: " if key else ""))
    assert words in str(err)


def test_errors_are_sensor_errors_with_exit_code(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "[nope]\n"))
    assert caught.value.exit_code == 2
