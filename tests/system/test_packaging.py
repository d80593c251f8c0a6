"""A built wheel is the whole product: installed into a fresh venv, it analyses and checks with all 17 rules."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

RULES = [f"R{n}" for n in range(1, 18)]


def run(*args: str | Path, cwd: Path, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LYNC_SENSOR_") or k == "LYNC_SENSOR_JIT_CACHE"}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode in ok, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the source (an in-tree build would write build/ into the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("sensor", "queries"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", out, src, cwd=src)
    (built,) = out.glob("lync_sensor-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel alone installed; its dependencies come from this venv through a .pth file
    (a path entry: this venv's own .pth files, such as the checkout's editable install, are not read)."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "--quiet",
        wheel,
        cwd=venv,
    )
    return venv


def test_the_wheel_ships_every_rule(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if re.fullmatch(r"sensor/queries/\w+/R\d+_\w+\.sql", n))
    in_repo = sorted(f"sensor/queries/{p.relative_to(ROOT / 'queries')}" for p in (ROOT / "queries").glob("*/*.sql"))
    assert shipped == in_repo and len(shipped) == 17
    assert "sensor/queries/README.md" in names
    assert "sensor/data/ports.csv" in names


def test_installed_sensor_analyses_and_checks_from_another_directory(venv: Path, tmp_path: Path) -> None:
    cli = venv / "bin" / "lync-sensor"
    where = run(venv / "bin" / "python", "-c", "import sensor; print(sensor.__file__)", cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where  # the wheel's package, not the checkout's
    lint = run(cli, "rules", "lint", cwd=tmp_path)
    assert re.search(r"^17 rules loaded from \S*/site-packages/sensor/queries, 0 problem\(s\)$", lint.stdout, re.M)

    lake = tmp_path / "lake"
    sample = ROOT / "examples" / "lync-sample.pcap"
    # exit 1: the sample holds violations, a result
    analysed = run(cli, "analyze", sample, "--no-progress", "--set", f'sensor.lake="{lake}"', cwd=tmp_path, ok=(1,))
    assert "27,340 packets" in analysed.stdout
    assert all(re.search(rf"^  {rule} ", analysed.stdout, re.M) for rule in RULES), analysed.stdout
    findings = re.search(r"^Rules evaluated over \d+ flow records .*: (\d+) findings", analysed.stdout, re.M)
    assert findings and int(findings[1]) > 0, analysed.stdout
    checked = run(cli, "check", "--lake", lake, "--from", "2000-01-01T00:00:00Z", cwd=tmp_path, ok=(1,))
    assert all(re.search(rf"^  {rule} ", checked.stdout, re.M) for rule in RULES), checked.stdout
    assert f": {findings[1]} findings (0 new)" in checked.stdout  # the same window, already stored
    assert not (tmp_path / "queries").exists()
