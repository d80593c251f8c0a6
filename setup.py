"""The one build step pyproject.toml cannot declare: the top-level queries/ ships as the package sensor.queries.

(`packages.find` cannot add packages that live outside the tree it searches; the rest is in pyproject.toml.)
"""

from pathlib import Path

from setuptools import find_packages, setup

QUERIES = Path(__file__).resolve().parent / "queries"
AREAS = sorted(f"sensor.queries.{area.name}" for area in QUERIES.iterdir() if area.is_dir())

setup(packages=[*find_packages(include=["sensor", "sensor.*"]), "sensor.queries", *AREAS])
