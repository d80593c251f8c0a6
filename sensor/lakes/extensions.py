"""DuckDB's DuckLake, postgres and httpfs extensions, loaded from the PyPI packages that ship them: no network.

The `duckdb-ext-*` wheels put DuckDB's official binaries under `duckdb_ext/extensions/v<version>/<platform>/`,
the layout of DuckDB's own extension directory. An extension only loads into the DuckDB it was built for, so
the binaries for another DuckDB version than the one installed are refused with both versions named.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import duckdb

from sensor.errors import SinkError

EXTENSIONS = ("ducklake", "postgres", "httpfs")
_FILES = {"ducklake": "ducklake", "postgres": "postgres_scanner", "httpfs": "httpfs"}
_PACKAGES = {name: f"duckdb-ext-{name}" for name in EXTENSIONS}


def duckdb_version() -> str:
    """The DuckDB version as extension directories spell it ("v1.4.4")."""
    return "v" + duckdb.__version__.lstrip("v")


def platform_dir() -> str:
    """The DuckDB extension platform of this machine ("linux_amd64", "linux_arm64")."""
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    return f"linux_{machine}"


def extension_root() -> Path:
    """The `extensions` directory the duckdb-ext-* packages install into (inside site-packages)."""
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None or not spec.submodule_search_locations:
        raise SinkError(
            "the DuckLake backend needs the packages duckdb-ext-ducklake, duckdb-ext-postgres and duckdb-ext-httpfs "
            f"built for DuckDB {duckdb_version()} (pip install the project: they are its dependencies)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "extensions"


def extension_file(name: str, root: Path | None = None) -> Path:
    """The binary of one extension for the installed DuckDB; SinkError naming both versions on a mismatch."""
    root = root or extension_root()
    want = duckdb_version()
    path = root / want / platform_dir() / f"{_FILES[name]}.duckdb_extension"
    if path.is_file():
        return path
    found = sorted(p.parent.parent.name for p in root.glob(f"v*/*/{_FILES[name]}.duckdb_extension"))
    if found:
        raise SinkError(
            f"DuckDB extension {name}: the installed {_PACKAGES[name]} is built for DuckDB {', '.join(found)} but "
            f"DuckDB is {want}; install {_PACKAGES[name]} {want.lstrip('v')}.*"
        )
    raise SinkError(f"DuckDB extension {name}: no {path.name} for DuckDB {want} ({platform_dir()}) under {root}")


def connect(*, extensions: tuple[str, ...] = EXTENSIONS, root: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the extensions loaded from the packages' files; it never downloads one."""
    files = [extension_file(name, root) for name in extensions]
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET extension_directory = {_quote(str(root or extension_root()))}")
    for path in files:
        try:
            con.execute(f"LOAD {_quote(str(path))}")
        except duckdb.Error as exc:
            con.close()
            raise SinkError(f"DuckDB {duckdb_version()} cannot load {path}: {_first_line(exc)}") from exc
    return con


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
