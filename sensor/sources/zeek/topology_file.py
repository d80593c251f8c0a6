"""`zeek-topology`: the site topology as a Zeek Input-framework TSV for the package in deploy/zeek/."""

from __future__ import annotations

import sys
from pathlib import Path

from sensor.atomic import atomic_write
from sensor.config import Config
from sensor.errors import SinkError
from sensor.topology import Topology


def topology_tsv(cfg: Config) -> str:
    """The site topology for the Zeek package (deploy/zeek/): a Zeek Input-framework TSV of cidr, kind, name.

    kind `role`: a Lync role's address or CIDR; kind `zone`: an `internal` or `perimeter` network. Zeek looks
    an address up by longest prefix in each, as sensor.topology does: a role first, else `client` inside an
    internal network, else `external`. For a prefix listed twice the first role (KNOWN_ROLES order) or zone
    (perimeter first) wins, as in sensor.topology.
    """
    topo = Topology.from_config(cfg)
    lines = ["#separator \\x09", "#fields\tcidr\tkind\tname"]
    for kind, rows in (("role", topo.roles_table()), ("zone", topo.networks_table())):
        seen: set[str] = set()
        for name, cidr in rows:
            if cidr not in seen:
                seen.add(cidr)
                lines.append(f"{cidr}\t{kind}\t{name}")
    return "\n".join(lines) + "\n"


def write_topology(cfg: Config, out: Path | None) -> str:
    """Write the topology TSV atomically to out, or to stdout when out is None; returns the text."""
    text = topology_tsv(cfg)
    if out is None:
        sys.stdout.write(text)
        return text
    try:
        atomic_write(out, text)  # Zeek re-reads the file (Input::REREAD) when it changes: never half a file
    except OSError as exc:
        raise SinkError(f"{out}: cannot write: {exc.strerror or exc}") from exc
    return text
