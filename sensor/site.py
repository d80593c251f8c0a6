"""The site: config + topology + port catalogue, built once per run (or reload) and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from sensor.catalogue import Catalogue
from sensor.config import Config
from sensor.topology import Topology


@dataclass(frozen=True)
class Site:
    """Everything a run knows about the Lync estate it watches; the CSV reference data is parsed once."""

    cfg: Config
    topology: Topology
    catalogue: Catalogue

    @classmethod
    def build(cls, cfg: Config) -> Site:
        return cls(
            cfg,
            Topology.from_config(cfg),
            Catalogue.load(cfg.ports, source=str(cfg.source) if cfg.source else None),
        )
