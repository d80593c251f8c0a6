"""The one role vocabulary: Lync role names, their families and sets, and the address syntax roles are given in."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Role names a site may give addresses ([topology.roles]). The order breaks ties when one prefix is listed under
# two roles (a Front End with a collocated Mediation Server is "front_end"). Reference §2-§4.
KNOWN_ROLES: tuple[str, ...] = (
    "front_end",
    "standard_edition",
    "director",
    "mediation",
    "edge_internal",
    "edge_external",
    "edge_external_access",
    "edge_external_webconf",
    "edge_external_av",
    "persistent_chat",
    "sba",
    "office_web_apps",
    "reverse_proxy",
    "pstn_gateway",
    "e911_gateway",
    "trusted_application",  # RCC line server / trusted application on TCP 5060, exception E1
)

CLIENT = "client"  # an internal address that holds no role
EXTERNAL = "external"  # any other address
# Every role an address can be given by the topology: the known roles, then client and external.
ADDRESS_ROLES: tuple[str, ...] = (*KNOWN_ROLES, CLIENT, EXTERNAL)
# The role column of the port catalogue (sensor/data/ports.csv): the known roles, client, and "any" (a row that
# fits whatever listens).
ANY = "any"
CATALOGUE_ROLES: frozenset[str] = frozenset({*KNOWN_ROLES, CLIENT, ANY})

# The external interfaces of an Edge Server: consolidated ("edge_external") or one per service.
EDGE_EXTERNAL_ROLES: tuple[str, ...] = (
    "edge_external",
    "edge_external_access",
    "edge_external_webconf",
    "edge_external_av",
)

# Reference §7 "server set": FE/SE, Director, Mediation, Edge internal, PChat, SBA/SBS, OWAS; plus the Edge
# external interface, which is the same server seen from outside.
SERVER_ROLES: frozenset[str] = frozenset(
    {
        "front_end",
        "standard_edition",
        "director",
        "mediation",
        "edge_internal",
        "persistent_chat",
        "sba",
        "office_web_apps",
        *EDGE_EXTERNAL_ROLES,
    }
)
GATEWAY_ROLES: frozenset[str] = frozenset({"pstn_gateway", "e911_gateway"})
# The roles a gateway trunk ends on besides the Front End family: a Mediation Server or a Survivable Branch
# Appliance ([GW]).
GATEWAY_PEER_ROLES: tuple[str, ...] = ("mediation", "sba")

# A role and its family match each other, the exact role first: a consolidated Edge tagged "edge_external"
# matches the Access/Web Conferencing/A/V Edge rows, and a Standard Edition server the Front End rows.
ROLE_FAMILY: Mapping[str, str] = MappingProxyType(
    {
        "edge_external_access": "edge_external",
        "edge_external_webconf": "edge_external",
        "edge_external_av": "edge_external",
        "standard_edition": "front_end",
    }
)


def family(role: str) -> str:
    """The family a role belongs to (itself when it has none): standard_edition -> front_end."""
    return ROLE_FAMILY.get(role, role)


def parse_address(text: str) -> IPAddress:
    """Parse an IPv4 or IPv6 address; an IPv4-mapped IPv6 address (::ffff:a.b.c.d) becomes IPv4."""
    addr = ipaddress.ip_address(text.strip())
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_network(text: str) -> IPNetwork:
    """Parse an address or CIDR (host bits zero) into a network; ValueError says what is wrong."""
    text = text.strip()
    if "/" not in text:
        return ipaddress.ip_network(parse_address(text))
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text!r} has host bits set (the network is {loose})") from None
        raise ValueError(f"{text!r} is not an IP address or CIDR") from None
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is not None and net.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net
