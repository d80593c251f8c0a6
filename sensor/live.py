"""The long-running appliance: capture on an interface, continuous flow records, rules and metrics.

Capture runs in Wireshark's dumpcap, writing a ring of short pcapng files into a spool directory (a tmpfs);
the sensor reads each file once dumpcap has moved on to the next, runs it through the same fast path and
dissectors as `analyze`, and deletes it. A dumpcap that dies is restarted with backoff; ring files
overwritten before they were read are counted as overruns, and the drops dumpcap reports are exported.
dumpcap and its ring are `sensor.sources.dumpcap`; the status file and the lake's retention `sensor.live_status`.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from sensor.analyze import Analyzer
from sensor.config import Config
from sensor.errors import SensorError, SinkError, SourceError
from sensor.fastpath.path import PacketPath
from sensor.lakes import Lake, open_lake
from sensor.live_status import Status, apply_retention, write_status
from sensor.metrics import SensorMetrics
from sensor.rules.check import Checker
from sensor.rules.context import Window
from sensor.site import Site
from sensor.sources.dumpcap import DumpcapCapture, Spool
from sensor.sources.pcap import CaptureReader

log = logging.getLogger(__name__)
MAX_PENDING_RECORDS = 2_000_000


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
        self._rules_thread: threading.Thread | None = None
        self._rules_error: BaseException | None = None
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
        # load the compiled code before the capture starts: loading it on the first ring file took the CPU while
        # the capture was starting, and a loaded 2-core box missed packets then
        if path.native:
            warm_up(self.builder.packet_path(), self.spool)
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
                self._raise_rules_error()
                if now >= next_rules:
                    self._rules_due(now)
                    next_rules = now + live.rule_interval
                self._interface_drops()
                self._write_status(capture)
                if not files:
                    self._stop.wait(0.2)
            path.close()
            exported = self._export(path, exported, int(self.clock() * 1e9), final=True)
            self._join_rules()
            self._evaluate(self.clock(), self.checker)
        except BaseException:
            path.abort()
            raise
        finally:
            if capture is not None:
                capture.stop()
            self._join_rules()
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
        # facts are complete (as far as the bytes go) on a flow's first interval record: records() parses every
        # stream prefix still pending before building them
        records = path.records(self.builder.records.build, exported, table.nrecords)
        for event, total in path.stream_counters().items():
            delta = total - self._stream_seen.get(event, 0)
            if delta > 0:
                self.metrics.stream_events.labels(event).inc(delta)
            self._stream_seen[event] = total
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

    def _rules_due(self, now: float) -> None:
        """The rules and the retention, every live.rule_interval. With the Parquet lake they run on a thread of
        their own (DuckDB on one thread), so the ring files keep being read meanwhile: at 100,000 packets/s of
        short TLS sessions an evaluation over the 15-minute window took seconds and held the accounting back by
        as much (bench_live: status lag 8.7 s). An evaluation still running when the next is due makes that one
        wait for the following tick. A DuckLake's DuckDB-file catalog admits one connection at a time, so with
        that backend they run between ring files, as before."""
        if self.store.backend != "parquet":
            self._evaluate(now, self.checker)
            self._retention(now)
            return
        if self._rules_thread is not None and self._rules_thread.is_alive():
            return
        checker = self.checker  # a reload replaces self.checker; this evaluation keeps the one it started with
        self._rules_thread = threading.Thread(target=self._rules_job, args=(now, checker), name="rules", daemon=True)
        self._rules_thread.start()

    def _rules_job(self, now: float, checker: Checker) -> None:
        try:
            self._evaluate(now, checker, threads=1)
            self._retention(now)
        except BaseException as exc:  # handed to the main loop, which raises it (exit 2)
            self._rules_error = exc

    def _raise_rules_error(self) -> None:
        if self._rules_error is not None:
            exc, self._rules_error = self._rules_error, None
            raise exc

    def _join_rules(self) -> None:
        """Wait for a running evaluation (before a reload replaces the lake handle, and before the last one)."""
        if self._rules_thread is not None:
            self._rules_thread.join()
            self._rules_thread = None
        self._raise_rules_error()

    def _evaluate(self, now: float, checker: Checker, *, threads: int | None = None) -> None:
        if self.status.disk_guard:
            return
        window = Window(
            datetime.fromtimestamp(now, UTC) - timedelta(seconds=self.cfg.live.rule_window),
            datetime.fromtimestamp(now + 1, UTC),
        )
        try:
            report = checker.check_lake(self.store, window, now=datetime.fromtimestamp(now, UTC), threads=threads)
        except SinkError as exc:  # a fleet lake's catalog out of reach: the next evaluation tries again
            self._error(str(exc))
            return
        self.metrics.observe_evaluation(report.evaluation.results, report.fresh, checker.broken_files, now)
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
        self._join_rules()  # the running evaluation uses the lake handle _setup replaces
        self._setup(cfg)
        log.warning("configuration and rules reloaded (%d rules)", len(self.checker.rules))

    def _write_status(self, capture: DumpcapCapture | None) -> None:
        st = self.status
        st.updated = self.clock()
        st.capture_running = capture.running if capture is not None else False
        st.capture_restarts = capture.restarts if capture is not None else 0
        st.drops = self._iface_drops + (capture.drops if capture is not None else 0)
        try:
            write_status(self.cfg, st)
        except OSError as exc:
            log.debug("status file: %s", exc)


def warm_up(scratch: PacketPath, spool: Path) -> None:
    """Run one packet through the reader and a throw-away packet path, so that the compiled kernels are loaded
    from numba's cache before the capture starts."""
    probe = spool / ".warm-up.pcap"
    frame = bytes.fromhex("4500001c00000000401100007f0000017f000001") + bytes.fromhex("0035003500080000")
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    record = struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame
    probe.write_bytes(header + record)
    try:
        for batch in CaptureReader(probe):
            scratch.feed(batch)
    finally:
        scratch.abort()
        probe.unlink(missing_ok=True)
