"""The long-running appliance: capture on an interface, continuous flow records, rules and metrics.

Capture runs in Wireshark's dumpcap, writing a ring of short pcapng files into a spool directory (a tmpfs);
the sensor reads each file once dumpcap has moved on to the next, runs it through the same fast path and
dissectors as `analyze`, and deletes it. A dumpcap that dies is restarted with backoff; ring files
overwritten before they were read are counted as overruns, and the drops dumpcap reports are exported.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from sensor.analyze import Analyzer
from sensor.atomic import atomic_write
from sensor.config import Config
from sensor.errors import SensorError, SinkError, SourceError
from sensor.fastpath.path import PacketPath
from sensor.lake import partitions
from sensor.lakes import Lake, open_lake
from sensor.metrics import SensorMetrics
from sensor.rules.check import Checker
from sensor.rules.context import Window
from sensor.site import Site
from sensor.sources.pcap import CaptureReader

log = logging.getLogger(__name__)
_RING = re.compile(r"^live_(\d+)_(\d{14})\.pcapng$")
_DROPS = re.compile(r"Packets received/dropped on interface '.*': (\d+)/(\d+)")
MAX_PENDING_RECORDS = 2_000_000


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


class DumpcapCapture:
    """dumpcap writing a ring of files into the spool; restarted with backoff when it dies."""

    def __init__(
        self,
        interface: str,
        bpf: str,
        spool: Path,
        *,
        seconds: int,
        files: int,
        buffer_mib: int,
        metrics: SensorMetrics,
        on_error: Callable[[str], None],
    ) -> None:
        self.cmd = [
            "dumpcap",
            "-i",
            interface,
            "-q",
            "-B",
            str(buffer_mib),
            "-b",
            f"duration:{seconds}",
            "-b",
            f"files:{files}",
            "-w",
            str(spool / "live.pcapng"),
        ]
        if bpf:
            self.cmd[3:3] = ["-f", bpf]
        self.metrics = metrics
        self.on_error = on_error
        self.proc: subprocess.Popen[str] | None = None
        self.restarts = 0
        self.drops = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="dumpcap", daemon=True)

    def start(self) -> None:
        if shutil.which("dumpcap") is None:
            raise SourceError("dumpcap not found (install the Debian package 'tshark': make setup)")
        self._thread.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.metrics.capture_running.set(1)
            _, err = self.proc.communicate()
            self.metrics.capture_running.set(0)
            for m in _DROPS.finditer(err or ""):
                dropped = int(m.group(2))
                self.drops += dropped
                self.metrics.capture_drops.labels("live").inc(dropped)
            if self._stopping.is_set():
                return
            reason = (err or "").strip().splitlines()
            self.on_error(f"dumpcap exited with code {self.proc.returncode}: {reason[-1] if reason else 'no message'}")
            self.restarts += 1
            self.metrics.capture_restarts.inc()
            if time.monotonic() - started > 60:
                backoff = 1.0
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def stop(self) -> None:
        self._stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # dumpcap closes its current file cleanly
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._thread.is_alive():
            self._thread.join(timeout=15)


class Spool:
    """The ring files in the spool directory, in capture order, and the ones safe to read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: tuple[str, int] | None = None

    def files(self) -> list[tuple[str, int, Path]]:
        out = []
        for p in self.path.iterdir():
            m = _RING.match(p.name)
            if m:
                out.append((m.group(2), int(m.group(1)), p))
        return sorted(out)

    def ready(self, capture_running: bool) -> tuple[list[Path], int]:
        """Files dumpcap has finished (all but the newest while it runs), and how many ring files were
        overwritten since the last call (a gap in the sequence numbers of one dumpcap run)."""
        files = self.files()
        if capture_running and files:
            files = files[:-1]
        lost = 0
        for stamp, seq, _ in files:
            if self._last is not None and seq > self._last[1] + 1 and stamp >= self._last[0]:
                lost += seq - self._last[1] - 1
            self._last = (stamp, seq)
        return [p for _, _, p in files], lost


class LiveSensor:
    """`lync-sensor run`: one capture, one flow table, continuous export, rules on an interval."""

    def __init__(
        self,
        cfg: Config,
        *,
        metrics: SensorMetrics,
        reload: Callable[[], Config] | None = None,
        capture: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.reload_config = reload
        self.use_capture = capture
        self.clock = clock
        self.spool = Path(cfg.live.spool)
        self.lake = Path(cfg.sensor.lake)
        self.status = Status(pid=os.getpid(), started=clock(), interface=cfg.live.interface)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._pending: list[pa.Table] = []
        self._rx_dropped: int | None = None
        self._iface_drops = 0
        self._stream_seen: dict[str, int] = {}
        self._setup(cfg)

    def _setup(self, cfg: Config) -> None:
        self.cfg = cfg
        self.site = Site.build(cfg)  # once per start and per reload: the packet path, records and rules share it
        self.builder = Analyzer(cfg, site=self.site, source_name="live")
        self.checker = Checker(cfg, site=self.site)
        if getattr(self, "store", None) is not None:
            self.store.close()
        self.store: Lake = open_lake(cfg, metrics=self.metrics)

    # ---- signals -----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def _error(self, message: str) -> None:
        log.warning("%s", message)
        self.status.errors = [*self.status.errors[-9:], f"{datetime.now(UTC).isoformat()} {message}"]

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        s, live = self.cfg.sensor, self.cfg.live
        self.spool.mkdir(parents=True, exist_ok=True)
        self.lake.mkdir(parents=True, exist_ok=True)
        path = self.builder.packet_path()
        table = path.table
        capture = self._start_capture() if self.use_capture else None
        spool = Spool(self.spool)
        exported = 0
        next_export = self.clock() + s.interval
        next_rules = self.clock() + live.rule_interval
        try:
            while True:
                stopping = self._stop.is_set()
                if stopping and capture is not None:
                    capture.stop()
                running = capture.running if capture is not None else False
                files, lost = spool.ready(running and not stopping)
                if lost:
                    self.metrics.spool_overruns.inc(lost)
                    self.status.overruns += lost
                    self._error(f"capture ring overrun: {lost} spool file(s) overwritten before they were read")
                for spooled in files:
                    self._ingest(spooled, path)
                    if table.nflows > 2 * self.cfg.sensor.flow_capacity:
                        # a scan or flood: end the oldest flows and drop them from memory now, not at the tick
                        exported = self._export(path, exported, int(self.clock() * 1e9), final=False)
                if files:
                    self.status.open_flows = int(table.active().size)
                    self.metrics.open_flows.set(self.status.open_flows)
                now = self.clock()
                if self._reload.is_set():
                    self._reload.clear()
                    self._do_reload()
                if stopping:
                    break
                if now >= next_export:
                    exported = self._export(path, exported, int(now * 1e9), final=False)
                    next_export = now + s.interval
                if now >= next_rules:
                    self._evaluate(now)
                    self._retention(now)
                    next_rules = now + live.rule_interval
                self._interface_drops()
                self._write_status(capture)
                if not files:
                    self._stop.wait(0.2)
            path.finish()
            exported = self._export(path, exported, int(self.clock() * 1e9), final=True)
            self._evaluate(self.clock())
        except BaseException:
            path.abort()
            raise
        finally:
            if capture is not None:
                capture.stop()
            self.store.close()
            self._write_status(capture)

    def _start_capture(self) -> DumpcapCapture:
        """Start dumpcap on live.interface, writing its ring of files into the spool."""
        live = self.cfg.live
        if not live.interface:
            raise SensorError("no capture interface: set live.interface or use --interface")
        capture = DumpcapCapture(
            live.interface,
            live.bpf,
            self.spool,
            seconds=live.spool_seconds,
            files=live.spool_files,
            buffer_mib=live.capture_buffer_mib,
            metrics=self.metrics,
            on_error=self._error,
        )
        capture.start()
        return capture

    def _interface_drops(self) -> None:
        """Kernel drops on the capture interface (packets dropped before any socket saw them), as a delta."""
        if not self.use_capture or not self.cfg.live.interface:
            return
        try:
            now = int(Path(f"/sys/class/net/{self.cfg.live.interface}/statistics/rx_dropped").read_text())
        except (OSError, ValueError):
            return
        if self._rx_dropped is not None and now > self._rx_dropped:
            self.metrics.capture_drops.labels("live").inc(now - self._rx_dropped)
            self._iface_drops += now - self._rx_dropped
        self._rx_dropped = now

    def _ingest(self, path: Path, packets: PacketPath) -> None:
        try:
            reader = CaptureReader(path)
            for batch in reader:
                packets.feed(batch)
            n = reader.stats.packets
            self.metrics.capture_packets.labels("live").inc(n)
            self.metrics.decode_errors.labels("skipped_bytes").inc(reader.stats.skipped_bytes)
            for kind, count in reader.stats.damaged_packets.items():
                self.metrics.decode_errors.labels(kind).inc(count)
            self.status.packets += n
        except SourceError as exc:  # an empty or damaged ring file: count it and go on
            self._error(f"spool file {path.name}: {exc}")
            self.metrics.decode_errors.labels("damaged_bytes").inc(path.stat().st_size if path.exists() else 0)
        finally:
            path.unlink(missing_ok=True)

    def _export(self, path: PacketPath, exported: int, now_ns: int, *, final: bool) -> int:
        """Close finished intervals, end idle and excess flows, write the new records, compact."""
        table = path.table
        if not final:
            table.flush_closed(now_ns)
            table.expire_idle(now_ns)
        evicted = table.evict_over(self.cfg.sensor.flow_capacity)
        self.metrics.open_flows.set(int(table.active().size))
        if evicted:
            self.metrics.flow_evictions.inc(evicted)
        # facts are complete (as far as the bytes go) on a flow's first interval record: parse every stream
        # prefix still pending before building the records
        path.facts_for_export(path.last_ts)
        for event, total in path.stream_counters().items():
            delta = total - self._stream_seen.get(event, 0)
            if delta > 0:
                self.metrics.stream_events.labels(event).inc(delta)
            self._stream_seen[event] = total
        with path.lock:
            records = self.builder.records.build(table, path.facts, exported, table.nrecords)
        self.metrics.open_flows.set(int(table.active().size))
        self.status.open_flows = int(table.active().size)
        if records.num_rows:
            self.metrics.observe_flows(records)
            self._pending.append(records)
        self._flush_pending()
        exported = table.nrecords
        if not final:
            path.compact()
            exported = 0
        return exported

    def _flush_pending(self) -> None:
        retry = getattr(self.store, "flush", None)
        if retry is not None:  # a DuckLake's spool: batches the catalog has not taken yet, retried with backoff
            retry()
        if not self._pending:
            self.metrics.pending_records.set(0)
            return
        free = shutil.disk_usage(self.lake).free
        guard = free < self.cfg.live.min_free_bytes
        if guard != self.status.disk_guard:
            self._error(
                f"lake {self.lake}: {free:,} bytes free, below live.min_free_bytes: writes held back"
                if guard
                else f"lake {self.lake}: free space is back ({free:,} bytes): writing resumes"
            )
        self.status.disk_guard = guard
        self.metrics.disk_guard.set(1 if guard else 0)
        if not guard:
            while self._pending:
                try:
                    self.store.write("flows", self._pending[0], sensor_id=self.cfg.sensor.id)
                except SinkError as exc:
                    self.metrics.lake_write_errors.inc()
                    self._error(str(exc))
                    break
                self._pending.pop(0)
                now = self.clock()
                self.metrics.last_flush.set(now)
                self.status.last_flush = now
        pending = sum(t.num_rows for t in self._pending)
        while pending > MAX_PENDING_RECORDS and len(self._pending) > 1:  # bounded: drop the oldest, say so
            dropped = self._pending.pop(0)
            pending -= dropped.num_rows
            self._error(f"dropped {dropped.num_rows} flow records that could not be written")
        self.status.pending_records = pending
        self.metrics.pending_records.set(pending)

    def _evaluate(self, now: float) -> None:
        if self.status.disk_guard:
            return
        window = Window(
            datetime.fromtimestamp(now, UTC) - timedelta(seconds=self.cfg.live.rule_window),
            datetime.fromtimestamp(now + 1, UTC),
        )
        try:
            report = self.checker.check_lake(self.store, window, now=datetime.fromtimestamp(now, UTC))
        except SinkError as exc:  # a fleet lake's catalog out of reach: the next evaluation tries again
            self._error(str(exc))
            return
        self.metrics.observe_evaluation(report.evaluation.results, report.fresh, self.checker.broken_files, now)
        self.status.last_rule_evaluation = now
        for p in report.evaluation.problems:
            self._error(f"rule error: {p}")

    def _retention(self, now: float) -> None:
        if self.store.backend != "parquet":
            return  # a DuckLake's retention is `lync-sensor lake maintain` (snapshot expiry, file cleanup)
        removed = apply_retention(
            self.lake, days=self.cfg.live.retention_days, max_bytes=self.cfg.live.retention_max_bytes, now=now
        )
        if removed:
            log.warning("retention removed %d lake partition(s), oldest %s", len(removed), removed[0])

    def _do_reload(self) -> None:
        if self.reload_config is None:
            return
        try:
            cfg = self.reload_config()
        except SensorError as exc:
            self._error(f"reload refused, keeping the running config: {exc}")
            return
        if (cfg.live.interface, cfg.live.bpf) != (self.cfg.live.interface, self.cfg.live.bpf):
            self._error("reload: the capture interface and filter take effect at the next start")
        self._setup(cfg)
        log.warning("configuration and rules reloaded (%d rules)", len(self.checker.rules))

    def _write_status(self, capture: DumpcapCapture | None) -> None:
        st = self.status
        st.updated = self.clock()
        st.capture_running = capture.running if capture is not None else False
        st.capture_restarts = capture.restarts if capture is not None else 0
        st.drops = self._iface_drops + (capture.drops if capture is not None else 0)
        path = status_path(self.cfg)
        try:
            atomic_write(path, json.dumps(st.__dict__, indent=1), durable=False)  # rewritten every few seconds
        except OSError as exc:
            log.debug("status file: %s", exc)


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
