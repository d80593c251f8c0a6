"""The bundled example: it is exactly the generator's labelled scenario, and the README's first command works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sensor.synth import build_labelled, write
from tests.conftest import EXAMPLE_CONFIG, ROOT

EXAMPLE = ROOT / "examples" / "lync-sample.pcap"


def test_example_is_the_generators_output(tmp_path: Path) -> None:
    fresh = tmp_path / "sample.pcap"
    write(build_labelled(7), fresh)
    assert fresh.read_bytes() == EXAMPLE.read_bytes(), "regenerate with `make golden`"


def test_example_analysis_with_the_worked_config(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor.cli",
            "analyze",
            str(EXAMPLE),
            "--config",
            str(EXAMPLE_CONFIG),
            "--lake",
            str(tmp_path / "lake"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 1, r.stderr  # the example holds violations on purpose
    out = json.loads(r.stdout)
    assert out["packets"] == 27340
    pairs = {(o, rr, a) for o, rr, a, _n, _p in out["summary"]["role_pairs"]}
    assert ("front_end", "front_end", "tls") in pairs
    assert ("pstn_gateway", "mediation", "sip") in pairs
    assert ("external", "edge_external", "ms-turn") in pairs
    plain = dict(out["summary"]["plaintext"])
    assert plain["plaintext SIP flows"] == 3
    assert plain["unencrypted media flows"] == 6 and plain["encrypted media flows"] == 4
    assert out["rule_errors"] == []
    assert out["findings"]["R2"] == {"violation": 2, "warning": 1}
    assert out["findings"]["R7"] == {"violation": 5}
