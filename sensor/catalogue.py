"""The Lync 2013 reference tables (ports, web paths, cipher suites), indexed for lookups (read by catalogue_csv)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from sensor.catalogue_csv import PROTOS, CipherSuite, PortRow, WebPath, load_tables
from sensor.roles import ANY, CLIENT, EXTERNAL, family

# Flow roles that are not a server (sensor.topology gives "client" or "external" to hosts without a role).
_NOT_SERVER = frozenset({CLIENT, EXTERNAL, ANY, ""})
_ORIGINATOR_RANGE_PROTOS = frozenset({"udp"})
_NO_OVERRIDES: Mapping[str, tuple[int, int]] = MappingProxyType({})


class Catalogue:
    """The three reference tables with precomputed lookups; immutable once built."""

    __slots__ = (
        "_ciphers", "_ports", "_ranges", "_ranked_memo", "_server_ports",
        "_singles", "_web_paths",
    )  # fmt: skip

    def __init__(
        self, ports: Sequence[PortRow], web_paths: Sequence[WebPath], cipher_suites: Sequence[CipherSuite]
    ) -> None:
        self._ports = tuple(ports)
        self._ranked_memo: dict[tuple[str, int, str | None], tuple[PortRow | None, ...]] = {}
        self._web_paths = tuple(web_paths)
        self._ciphers = {suite.code: suite for suite in cipher_suites}
        # Single listening ports in file order: the first row is the preferred one for a (proto, port).
        singles: dict[tuple[str, int], list[PortRow]] = {}
        for row in self._ports:
            if not row.is_range:
                singles.setdefault((row.proto, row.port_lo), []).append(row)
        self._singles = {key: tuple(rows) for key, rows in singles.items()}
        # Ranges per proto, most specific (narrowest) first, then file order.
        ranked = sorted((r.width, n, r) for n, r in enumerate(self._ports) if r.is_range)
        self._ranges = {proto: tuple(r for _, _, r in ranked if r.proto == proto) for proto in PROTOS}
        self._server_ports: dict[str, npt.NDArray[np.uint8]] = {}
        for proto in PROTOS:
            table = np.zeros(65536, dtype=np.uint8)
            for (p, port), rows in self._singles.items():
                if p == proto and any(r.role != CLIENT for r in rows):
                    table[port] = 1
            table.flags.writeable = False
            self._server_ports[proto] = table

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, tuple[int, int]] = _NO_OVERRIDES,
        source: str | None = None,
        *,
        data_dir: Traversable | None = None,
    ) -> Catalogue:
        """Load sensor/data/*.csv (or data_dir/*.csv), validate, and apply port-range overrides by id.

        `source` names the config file the overrides came from, for error messages.
        """
        return cls(*load_tables(overrides, source, data_dir=data_dir))

    # ----------------------------------------------------------------- port lookups

    def rows(self) -> tuple[PortRow, ...]:
        """All port rows, in file order (overrides applied)."""
        return self._ports

    def match(
        self, proto: str, orig_p: int, resp_p: int, orig_role: str | None, resp_role: str | None
    ) -> PortRow | None:
        """The catalogue row that best explains a flow, or None.

        Order: a single port on the responder with the responder's role, then with any role; a range on the
        responder with the responder's role (for a server role, a range of role "any" = "all internal servers"
        counts too); the same three on the originator; then the remaining ranges of role "any", and last the
        ranges of another role when that side's role is not a server role; responder before originator.
        Originator ranges are tried for UDP only: UDP media is often sent first from the server's range, while
        a TCP originator port is ephemeral (Windows 49152-65535 lies inside the server ranges). Client ranges
        cover 1024-65535, so they never name a server's port: an undocumented port between servers stays None.
        """
        proto = proto.lower()
        if proto not in self._ranges:
            return None
        resp = self._ranked_memoised(proto, resp_p, resp_role)
        orig = self._ranked_memoised(proto, orig_p, orig_role)
        if proto not in _ORIGINATOR_RANGE_PROTOS:
            orig = (orig[0], orig[1], None, None, None)
        for row in (*resp[:3], *orig[:3], resp[3], orig[3], resp[4], orig[4]):
            if row is not None:
                return row
        return None

    def server_ports(self, proto: str) -> npt.NDArray[np.uint8]:
        """uint8[65536] with 1 at every single (non-range) server-side port of `proto` (a fresh copy)."""
        table = self._server_ports.get(proto.lower())
        return table.copy() if table is not None else np.zeros(65536, dtype=np.uint8)

    def _ranked_memoised(self, proto: str, port: int, role: str | None) -> tuple[PortRow | None, ...]:
        """_ranked, remembered: the catalogue does not change after loading, and a run asks about the same
        server ports thousands of times (the memo is bounded by ports x roles)."""
        key = (proto, port, role)
        hit = self._ranked_memo.get(key)
        if hit is None:
            hit = self._ranked_memo[key] = self._ranked(proto, port, role)
        return hit

    def _ranked(
        self, proto: str, port: int, role: str | None
    ) -> tuple[PortRow | None, PortRow | None, PortRow | None, PortRow | None, PortRow | None]:
        """Best (single of the role, single any, range of the role, range of role "any", range of other role).

        "Of the role" = the exact role, else one of its family (sensor.roles.ROLE_FAMILY). For a server role, a range of
        role "any" ("all internal servers") counts as the role's own, and a range of another role (a client
        range) does not count at all.
        """
        role_family = family(role) if role else None
        singles = self._singles.get((proto, port), ())
        single_role = next((r for r in singles if r.role == role), None) or next(
            (r for r in singles if family(r.role) == role_family), None
        )
        single_any = singles[0] if singles else None
        range_exact = range_family = range_any = range_other = None
        for r in self._ranges[proto]:
            if not r.port_lo <= port <= r.port_hi:
                continue
            if r.role == role:
                range_exact = range_exact or r
            elif family(r.role) == role_family:
                range_family = range_family or r
            elif r.role == ANY:
                range_any = range_any or r
            else:
                range_other = range_other or r
        range_role = range_exact or range_family
        if role is not None and role not in _NOT_SERVER:
            range_role, range_other = range_role or range_any, None
        return single_role, single_any, range_role, range_any, range_other

    # ----------------------------------------------------------------- web paths and cipher suites

    def web_paths(self) -> tuple[WebPath, ...]:
        """All web path and host rows, in file order."""
        return self._web_paths

    def cipher_suites(self) -> tuple[CipherSuite, ...]:
        """All cipher suite rows, in file order."""
        return tuple(self._ciphers.values())

    def as_tables(self) -> dict[str, list[dict[str, Any]]]:
        """The three tables as lists of dicts, with the CSV column names, for loading into DuckDB."""
        return {
            "ports": [row.as_dict() for row in self._ports],
            "web_paths": [row.as_dict() for row in self._web_paths],
            "cipher_suites": [row.as_dict() for row in self._ciphers.values()],
        }
