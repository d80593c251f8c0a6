"""The generator's labelled Lync traffic through the real pipeline: every labelled fact of every flow."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from sensor.analyze import Analyzer
from sensor.config import load_config
from sensor.synth import build_labelled, write
from tests.conftest import ISSUE_EXAMPLE_TOML, flows_by_uid


@functools.cache
def analysed(tmp: Path, fmt: str, link: str) -> list[dict[str, object]]:
    cfg_path = tmp / "site.toml"
    cfg_path.write_text(ISSUE_EXAMPLE_TOML)
    cap = tmp / f"labelled-{link}.{fmt}"
    write(build_labelled(7), cap, fmt=fmt, link=link)
    return flows_by_uid(Analyzer(load_config(cfg_path, env={})).run([cap]).table)


def _key(f: dict[str, object]) -> tuple[object, ...]:
    return (f["orig_h"], f["orig_p"], f["resp_h"], f["resp_p"], f["proto"])


def _norm(v: object) -> object:
    if isinstance(v, float):
        return round(v, 6)
    return v


@pytest.mark.parametrize(("fmt", "link"), [("pcap", "ethernet"), ("pcapng", "vlan"), ("pcap", "sll")])
def test_every_labelled_fact(tmp_path_factory: pytest.TempPathFactory, fmt: str, link: str) -> None:
    flows = analysed(tmp_path_factory.mktemp(f"{fmt}-{link}"), fmt, link)
    by_key = {_key(f): f for f in flows}
    scenario = build_labelled(7)
    problems: list[str] = []
    for label in scenario.labels:
        key = (label.orig_h, label.orig_p, label.resp_h, label.resp_p, label.proto)
        got = by_key.get(key)
        if got is None:
            problems.append(f"{label.name}: flow {key} not found")
            continue
        for column, want in label.expect.items():
            have = got.get(column)
            if isinstance(want, list) and isinstance(have, list) and column == "tls_cert_names":
                have = sorted(have)
            if _norm(have) != _norm(want):
                problems.append(f"{label.name}: {column} = {have!r}, want {want!r}")
        if got["intervals"] != label.intervals:
            problems.append(f"{label.name}: {got['intervals']} interval records, want {label.intervals}")
    assert not problems, "\n".join(problems)
    assert len(flows) == len(scenario.labels)
