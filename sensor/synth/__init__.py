"""Generator of labelled, Lync-like packet captures (raw bytes, no scapy) and of benchmark captures."""

from sensor.synth.bulk import BulkStats, write_bench_capture
from sensor.synth.flow import FlowLabel, Packet
from sensor.synth.scenario import SITE_ROLES, Scenario, build_labelled, role_of, write

__all__ = [
    "SITE_ROLES",
    "BulkStats",
    "FlowLabel",
    "Packet",
    "Scenario",
    "build_labelled",
    "role_of",
    "write",
    "write_bench_capture",
]
