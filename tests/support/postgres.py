"""A real PostgreSQL for tests: initdb and pg_ctl in a temporary directory, listening on a Unix socket there.

The Debian package's binaries (/usr/lib/postgresql/<version>/bin) are used; initdb refuses to run as root, so
as root the server runs as the package's `postgres` user. Nothing listens on TCP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def binary(name: str) -> str | None:
    for d in BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


def available() -> bool:
    return binary("initdb") is not None and binary("pg_ctl") is not None


class Postgres:
    """One throwaway cluster; `dsn(db)` is the catalog string the sensor's config takes."""

    user = "lync"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lync-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync")

    def _run(self, *cmd: str | None) -> None:
        subprocess.run([*self._as, *(c for c in cmd if c)], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            binary("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-o",
            f"-k {self.root} -c listen_addresses='' -c fsync=off -c max_connections=100",
            "start",
        )

    def stop(self) -> None:
        self._run(binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def createdb(self, name: str) -> str:
        self._run(binary("createdb"), "-h", str(self.root), "-U", self.user, name)
        return self.dsn(name)

    def dsn(self, db: str) -> str:
        return f"postgres:dbname={db} host={self.root} user={self.user}"

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
