"""Deploy files: the systemd unit verifies and drops privileges; the container files reference real paths."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import bcrypt
import pytest
import yaml

from sensor.exporter import load_web_config
from tests.conftest import ROOT

UNIT = ROOT / "deploy" / "systemd" / "lync-sensor.service"
COMPOSE = ROOT / "deploy" / "container" / "compose.yml"
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment, method-assign]
    cp.read_string(UNIT.read_text())
    return cp


def test_unit_runs_unprivileged_with_capture_capabilities_only() -> None:
    svc = unit()["Service"]
    assert svc["User"] == "lync-sensor" and svc["NoNewPrivileges"] == "yes"
    assert set(svc["AmbientCapabilities"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert svc["CapabilityBoundingSet"] == svc["AmbientCapabilities"]
    assert svc["ProtectSystem"] == "strict" and svc["StateDirectory"] == "lync-sensor"
    assert svc["Restart"] == "on-failure" and svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["ExecStart"].endswith("lync-sensor run")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path: Path) -> None:
    copy = tmp_path / "lync-sensor.service"
    copy.write_text(UNIT.read_text().replace("/opt/lync-sensor/.venv/bin/lync-sensor", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_compose_starts_the_stack_with_the_shipped_rules_and_dashboards() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert set(compose["services"]) == {"sensor", "prometheus", "alertmanager", "grafana"}
    base = COMPOSE.parent
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                if name == "sensor" and src.endswith("lync-sensor.toml"):
                    continue  # the site's own config, written by the operator
                assert (base / src).resolve().exists(), (name, src)
    sensor = compose["services"]["sensor"]
    assert sensor["cap_add"] == ["NET_RAW", "NET_ADMIN"] and sensor["cap_drop"] == ["ALL"]
    assert (base / sensor["build"]["context"] / sensor["build"]["dockerfile"]).resolve() == CONTAINERFILE


def test_containerfile_copies_what_exists_and_runs_unprivileged() -> None:
    lines = CONTAINERFILE.read_text().splitlines()
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    assert "USER lync-sensor" in lines and 'CMD ["run"]' in lines


def test_the_example_web_config_loads(tmp_path: Path) -> None:
    """deploy/web-config.example.yml, with its certificate paths pointed at a real pair, is a valid web config."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(tmp_path / "sensor.key"), "-out", str(tmp_path / "sensor.pem"), "-days", "1",
         "-subj", "/CN=sensor-a.example.net"],
        check=True, capture_output=True,
    )  # fmt: skip
    text = (ROOT / "deploy" / "web-config.example.yml").read_text()
    assert "/etc/lync-sensor/tls/sensor.pem" in text
    path = tmp_path / "web.yml"
    path.write_text(text.replace("/etc/lync-sensor/tls/", ""))  # relative to the web config's directory
    web = load_web_config(path)
    assert web.tls is not None and web.tls.minimum_version.name == "TLSv1_2"
    assert list(web.users) == ["prometheus"]
    assert bcrypt.checkpw(b"change-me", web.users["prometheus"])  # the password the comment names
