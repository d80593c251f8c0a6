"""Shared fixtures: paths to the real captures and a runner for the real pipeline."""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow as pa
import pytest

from sensor.analyze import Analysis, Analyzer
from sensor.config import Config, load_config
from sensor.schema import FLOW_COUNTERS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CAPTURES = SHARED / "captures"
ZEEK_LOGS = SHARED / "zeek-logs"
EXAMPLE_CONFIG = ROOT / "deploy" / "lync-sensor.example.toml"
# The site config the issue gives verbatim: it must load unchanged.
ISSUE_EXAMPLE_TOML = """\
[sensor]
id = "sensor-a"
lake = "/var/lib/lync-sensor/lake"

[topology.roles]            # addresses or CIDRs per Lync role
front_end = ["10.0.1.10", "10.0.1.11"]
director = ["10.0.1.30"]
mediation = ["10.0.1.20"]
edge_internal = ["10.0.2.10"]
edge_external = ["203.0.113.10"]
pstn_gateway = ["10.0.3.5"]

[topology.networks]
internal = ["10.0.0.0/8"]    # hosts here that hold no role are "client"; outside is "external"

[policy]
media_encryption_level = "RequireEncryption"   # Set-CsMediaConfiguration -EncryptionLevel
fips = false
[policy.gateways."10.0.3.5"]
transport = "tcp"            # tcp or tls, as defined in Topology Builder
"""


def capture(name: str) -> Path:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"shared capture {name} not present at {CAPTURES}")
    return path


@functools.cache
def default_config() -> Config:
    return load_config(None, env={})


@functools.cache
def analyse(*paths: Path) -> Analysis:
    """Run the real pipeline (fast path + tshark via pyshark) with default config, once per capture set."""
    return Analyzer(default_config()).run(list(paths))


def flows_by_uid(table: pa.Table) -> list[dict[str, object]]:
    """Collapse interval records to one dict per flow: facts from the first record, counters summed."""
    out: dict[str, dict[str, object]] = {}
    for row in table.to_pylist():
        cur = out.get(row["uid"])
        if cur is None:
            out[row["uid"]] = dict(row, intervals=1)
            continue
        cur["intervals"] = int(cur["intervals"]) + 1  # type: ignore[call-overload]
        for k in FLOW_COUNTERS:
            cur[k] = int(cur[k]) + int(row[k])  # type: ignore[call-overload]
    return list(out.values())


def find(flows: list[dict[str, object]], **match: object) -> dict[str, object]:
    hits = [f for f in flows if all(f.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, f"expected one flow with {match}, found {len(hits)}: {[f['uid'] for f in hits]}"
    return hits[0]


@pytest.fixture
def example_config() -> Config:
    return load_config(EXAMPLE_CONFIG, env={})
