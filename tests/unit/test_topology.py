"""Tests for sensor.topology: role lookup for role hosts, clients, externals, IPv6 and prefix specificity."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.config import load_config
from sensor.roles import GATEWAY_ROLES, KNOWN_ROLES, SERVER_ROLES, parse_address, parse_network
from sensor.topology import Topology

EXAMPLE = """\
[topology.roles]
front_end = ["10.0.1.10", "10.0.1.11"]
director = ["10.0.1.30"]
mediation = ["10.0.1.20"]
edge_internal = ["10.0.2.10"]
edge_external = ["203.0.113.10"]
pstn_gateway = ["10.0.3.5"]

[topology.networks]
internal = ["10.0.0.0/8"]
"""


@pytest.fixture
def topology(tmp_path: Path) -> Topology:
    path = tmp_path / "lync-sensor.toml"
    path.write_text(EXAMPLE, encoding="utf-8")
    return Topology.from_config(load_config(path))


@pytest.mark.parametrize(
    ("addr", "role"),
    [
        ("10.0.1.10", "front_end"),
        ("10.0.1.11", "front_end"),
        ("10.0.1.30", "director"),
        ("10.0.1.20", "mediation"),
        ("10.0.2.10", "edge_internal"),
        ("203.0.113.10", "edge_external"),
        ("10.0.3.5", "pstn_gateway"),
        ("10.0.1.12", "client"),
        ("10.200.3.4", "client"),
        ("192.168.1.10", "external"),  # RFC 1918, but the site's internal list replaces the default
        ("198.51.100.7", "external"),
        ("203.0.113.11", "external"),
        ("::ffff:10.0.1.20", "mediation"),
        ("::FFFF:10.0.1.99", "client"),
        ("2001:db8::1", "external"),
    ],
)
def test_role_of_the_example(topology: Topology, addr: str, role: str) -> None:
    assert topology.role_of(addr) == role


def test_default_internal_networks_make_rfc1918_and_ula_clients() -> None:
    topo = Topology.from_config(load_config(None))
    assert topo.role_of("10.1.2.3") == "client"
    assert topo.role_of("172.16.0.1") == "client"
    assert topo.role_of("172.32.0.1") == "external"
    assert topo.role_of("192.168.0.1") == "client"
    assert topo.role_of("fd12:3456::1") == "client"
    assert topo.role_of("2001:db8::1") == "external"
    assert topo.role_of("8.8.8.8") == "external"


def test_ipv6_roles_and_networks() -> None:
    topo = Topology(
        {"front_end": ["2001:db8:1::10"], "edge_external": ["2001:db8:ff::/64"]},
        internal=["2001:db8::/48"],
    )
    assert topo.role_of("2001:db8:1::10") == "front_end"
    assert topo.role_of("2001:DB8:1:0::10") == "front_end"
    assert topo.role_of("2001:db8:0:1::5") == "client"
    assert topo.role_of("2001:db8:ff::1234") == "edge_external"
    assert topo.role_of("2001:db9::1") == "external"
    assert topo.role_of("10.0.0.1") == "external"


def test_most_specific_prefix_wins() -> None:
    topo = Topology(
        {
            "front_end": ["10.0.1.0/24"],
            "mediation": ["10.0.1.20"],
            "sba": ["10.0.1.16/28"],
            "reverse_proxy": ["10.0.0.0/16"],
        },
        internal=["10.0.0.0/8"],
    )
    assert topo.role_of("10.0.1.20") == "mediation"  # /32 over /28 over /24
    assert topo.role_of("10.0.1.17") == "sba"
    assert topo.role_of("10.0.1.99") == "front_end"
    assert topo.role_of("10.0.7.1") == "reverse_proxy"
    assert topo.role_of("10.1.0.1") == "client"


def test_ties_follow_the_known_role_order() -> None:
    # A Front End with a collocated Mediation Server listed under both roles is a front_end.
    topo = Topology({"mediation": ["10.0.1.10"], "front_end": ["10.0.1.10"]}, internal=["10.0.0.0/8"])
    assert topo.role_of("10.0.1.10") == "front_end"
    topo = Topology({"trusted_application": ["10.0.5.0/24"], "director": ["10.0.5.0/24"]}, internal=[])
    assert topo.role_of("10.0.5.1") == "director"


def test_perimeter_hosts_without_a_role_are_external() -> None:
    topo = Topology(
        {"edge_internal": ["10.0.2.10"]},
        internal=["10.0.0.0/8"],
        perimeter=["10.0.2.0/24"],
    )
    assert topo.role_of("10.0.2.10") == "edge_internal"
    assert topo.role_of("10.0.2.11") == "external"
    assert topo.role_of("10.0.3.1") == "client"
    assert topo.role_of("1.1.1.1") == "external"


def test_results_are_cached(topology: Topology) -> None:
    assert topology.role_of("10.0.1.10") == "front_end"
    assert topology.role_of("10.0.1.10") == "front_end"
    info = topology._cached_role.cache_info()  # type: ignore[attr-defined]
    assert info.hits >= 1


def test_bad_addresses_raise_value_error(topology: Topology) -> None:
    with pytest.raises(ValueError):
        topology.role_of("10.0.1.300")
    with pytest.raises(ValueError, match="unknown role"):
        Topology({"frontend": ["10.0.0.1"]}, internal=[])


def test_roles_table_for_sql(topology: Topology) -> None:
    assert topology.roles_table() == [
        ("front_end", "10.0.1.10/32"),
        ("front_end", "10.0.1.11/32"),
        ("director", "10.0.1.30/32"),
        ("mediation", "10.0.1.20/32"),
        ("edge_internal", "10.0.2.10/32"),
        ("edge_external", "203.0.113.10/32"),
        ("pstn_gateway", "10.0.3.5/32"),
    ]
    assert topology.networks_table() == [("internal", "10.0.0.0/8")]


def test_role_sets_follow_the_reference() -> None:
    assert {
        "front_end",
        "standard_edition",
        "director",
        "mediation",
        "edge_internal",
        "persistent_chat",
        "sba",
        "office_web_apps",
        "edge_external",
        "edge_external_access",
        "edge_external_webconf",
        "edge_external_av",
    } == SERVER_ROLES
    assert {"pstn_gateway", "e911_gateway"} == GATEWAY_ROLES
    assert SERVER_ROLES.issubset(KNOWN_ROLES) and GATEWAY_ROLES.issubset(KNOWN_ROLES)
    assert not SERVER_ROLES & GATEWAY_ROLES
    assert "trusted_application" not in SERVER_ROLES


def test_one_role_vocabulary() -> None:
    """Every role set is drawn from KNOWN_ROLES in sensor.roles: families, Edge interfaces, gateway peers, the
    catalogue's roles and the roles an address can be given."""
    from sensor.catalogue import Catalogue
    from sensor.roles import (
        ADDRESS_ROLES,
        CATALOGUE_ROLES,
        CLIENT,
        EDGE_EXTERNAL_ROLES,
        EXTERNAL,
        GATEWAY_PEER_ROLES,
        ROLE_FAMILY,
        family,
    )

    assert set(ROLE_FAMILY) | set(ROLE_FAMILY.values()) <= set(KNOWN_ROLES)
    assert set(EDGE_EXTERNAL_ROLES) <= SERVER_ROLES and set(GATEWAY_PEER_ROLES) <= SERVER_ROLES
    assert {family(r) for r in EDGE_EXTERNAL_ROLES} == {"edge_external"}
    assert family("standard_edition") == "front_end" and family("mediation") == "mediation"
    assert {*KNOWN_ROLES, CLIENT, "any"} == CATALOGUE_ROLES
    assert (*KNOWN_ROLES, CLIENT, EXTERNAL) == ADDRESS_ROLES and len(set(ADDRESS_ROLES)) == len(ADDRESS_ROLES)
    assert {r.role for r in Catalogue.load().rows()} <= CATALOGUE_ROLES


def test_is_server(topology: Topology) -> None:
    assert topology.is_server("10.0.1.20")
    assert not topology.is_server("10.0.3.5")
    assert not topology.is_server("10.0.9.9")


def test_parsing_helpers() -> None:
    assert str(parse_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(parse_network("::ffff:10.0.0.0/104")) == "10.0.0.0/8"
    assert str(parse_network("10.0.0.1")) == "10.0.0.1/32"
    with pytest.raises(ValueError, match="host bits set"):
        parse_network("10.0.0.1/8")
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        parse_network("10.0.0.0/40")
