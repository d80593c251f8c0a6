"""Site topology: the Lync role of an address, from the config's roles and internal networks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from sensor.roles import (
    CLIENT,
    EXTERNAL,
    KNOWN_ROLES,
    SERVER_ROLES,
    IPAddress,
    IPNetwork,
    parse_address,
    parse_network,
)

if TYPE_CHECKING:
    from sensor.config import Config

INTERNAL_ZONE = "internal"
PERIMETER_ZONE = "perimeter"


class _PrefixTable:
    """Longest-prefix match over IPv4 and IPv6; for one prefix the first value added wins."""

    def __init__(self) -> None:
        self._by_len: dict[tuple[int, int], dict[int, str]] = {}
        self._probes: dict[int, list[tuple[int, dict[int, str]]]] = {4: [], 6: []}

    def add(self, net: IPNetwork, value: str) -> None:
        prefixes = self._by_len.setdefault((net.version, net.prefixlen), {})
        prefixes.setdefault(int(net.network_address), value)
        bits = net.max_prefixlen
        self._probes[net.version] = [
            (((1 << plen) - 1) << (bits - plen), self._by_len[(version, plen)])
            for version, plen in sorted(self._by_len, key=lambda k: -k[1])
            if version == net.version
        ]

    def lookup(self, addr: IPAddress) -> str | None:
        value = int(addr)
        for mask, prefixes in self._probes[addr.version]:
            found = prefixes.get(value & mask)
            if found is not None:
                return found
        return None


class Topology:
    """Maps an address to its Lync role, 'client' (internal, no role) or 'external'."""

    def __init__(
        self,
        roles: Mapping[str, Iterable[str]],
        internal: Iterable[str],
        perimeter: Iterable[str] = (),
        *,
        cache_size: int = 1 << 16,
    ) -> None:
        unknown = sorted(set(roles) - set(KNOWN_ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(unknown)} (known: {', '.join(KNOWN_ROLES)})")
        self._roles: list[tuple[str, IPNetwork]] = [
            (role, parse_network(entry)) for role in KNOWN_ROLES for entry in roles.get(role, ())
        ]
        self._networks: list[tuple[str, IPNetwork]] = [
            *((PERIMETER_ZONE, parse_network(entry)) for entry in perimeter),
            *((INTERNAL_ZONE, parse_network(entry)) for entry in internal),
        ]
        self._role_table = _PrefixTable()
        for role, net in self._roles:
            self._role_table.add(net, role)
        # Perimeter first, so a DMZ prefix listed in both wins over the internal one.
        self._zone_table = _PrefixTable()
        for zone, net in self._networks:
            self._zone_table.add(net, zone)
        # Called once per flow endpoint; bounded so a long live capture of many external hosts stays flat.
        self._cached_role: Callable[[str], str] = functools.lru_cache(maxsize=cache_size)(self._lookup_role)

    @classmethod
    def from_config(cls, cfg: Config) -> Topology:
        """The topology of a loaded config ([topology.roles] and [topology.networks])."""
        return cls(cfg.topology.roles, cfg.topology.internal, cfg.topology.perimeter)

    def role_of(self, addr: str) -> str:
        """The role holding addr (most specific prefix wins), else 'client' inside an internal network, else
        'external'. Raises ValueError if addr is not an IP address."""
        return self._cached_role(addr)

    def is_server(self, addr: str) -> bool:
        """True if addr holds a role of the reference §7 server set."""
        return self.role_of(addr) in SERVER_ROLES

    def roles_table(self) -> list[tuple[str, str]]:
        """(role, cidr) rows, in known-role order, for a SQL table the rules can join on."""
        return [(role, net.with_prefixlen) for role, net in self._roles]

    def networks_table(self) -> list[tuple[str, str]]:
        """(zone, cidr) rows for [topology.networks]: zone is 'perimeter' or 'internal'."""
        return [(zone, net.with_prefixlen) for zone, net in self._networks]

    def _lookup_role(self, addr: str) -> str:
        ip = parse_address(addr)
        role = self._role_table.lookup(ip)
        if role is not None:
            return role
        return CLIENT if self._zone_table.lookup(ip) == INTERNAL_ZONE else EXTERNAL
