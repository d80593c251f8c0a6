"""The running sensor's status (`lync-sensor status`): the status file, its path, and the lake's retention."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sensor.atomic import atomic_write
from sensor.config import Config
from sensor.errors import SensorError
from sensor.lake import partitions


@dataclass
class Status:
    """What `lync-sensor status` shows; written by the running sensor every tick."""

    pid: int = 0
    started: float = 0.0
    updated: float = 0.0
    interface: str = ""
    capture_running: bool = False
    capture_restarts: int = 0
    packets: int = 0
    drops: int = 0
    overruns: int = 0
    open_flows: int = 0
    last_flush: float = 0.0
    last_rule_evaluation: float = 0.0
    disk_guard: bool = False
    pending_records: int = 0
    errors: list[str] = field(default_factory=list)


def apply_retention(lake: Path, *, days: int, max_bytes: int, now: float) -> list[Path]:
    """Delete hour partitions of the lake's tables older than `days`, then the oldest ones while the lake is
    larger than `max_bytes` (0 = no limit for either). Returns the partitions removed, oldest first."""
    cutoff = (datetime.fromtimestamp(now, UTC) - timedelta(days=days)).date().isoformat() if days else None
    parts = sorted(
        (p for tbl in ("flows", "findings") for p in partitions(lake, tbl)), key=lambda p: (p.day, p.hour, p.path)
    )
    removed: list[Path] = []
    kept: list[tuple[Path, int]] = []
    for p in parts:
        if cutoff and p.day < cutoff:
            shutil.rmtree(p.path, ignore_errors=True)
            removed.append(p.path)
        else:
            kept.append((p.path, sum(f.stat().st_size for f in p.path.glob("*.parquet"))))
    total = sum(size for _, size in kept)
    for path, size in kept:
        if not max_bytes or total <= max_bytes:
            break
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        total -= size
    return removed


def status_path(cfg: Config) -> Path:
    """The live status file: live.status_file if set, else status.json in the spool directory."""
    return Path(cfg.live.status_file) if cfg.live.status_file else Path(cfg.live.spool) / "status.json"


def read_status(cfg: Config) -> Status:
    """The status the running sensor last wrote; SensorError if there is none."""
    path = status_path(cfg)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SensorError(f"no sensor status at {path}: {exc}") from exc
    return Status(**{k: v for k, v in data.items() if k in Status.__dataclass_fields__})


def health(cfg: Config, status: Status, now: float) -> tuple[float, bool]:
    """The status's age in seconds, and whether the sensor is healthy: capturing, and updated within
    max(30 s, three export intervals)."""
    age = now - status.updated
    return age, status.capture_running and age < max(30, 3 * cfg.sensor.interval)


def write_status(cfg: Config, status: Status) -> None:
    """Replace the status file (not fsynced: it is rewritten every few seconds); OSError if it cannot be written."""
    atomic_write(status_path(cfg), json.dumps(status.__dict__, indent=1), durable=False)
