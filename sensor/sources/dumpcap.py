"""Live capture through Wireshark's dumpcap: a ring of pcapng files in a spool directory, restarted with backoff.

`DumpcapCapture` runs and supervises dumpcap (drops it reports are counted); `Spool` lists the ring files in
capture order, says which ones dumpcap has finished, and counts the ones overwritten before they were read.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sensor.errors import SourceError
from sensor.metrics import SensorMetrics

STDERR_LINES = 64
_RING = re.compile(r"^live_(\d+)_(\d{14})\.pcapng$")
_DROPS = re.compile(r"Packets received/dropped on interface '.*': (\d+)/(\d+)")


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
        self._capturing = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="dumpcap", daemon=True)

    def start(self) -> None:
        if shutil.which("dumpcap") is None:
            raise SourceError("dumpcap not found (install the Debian package 'tshark': make setup)")
        self._thread.start()

    @property
    def running(self) -> bool:
        """dumpcap is capturing: alive, and it named its first ring file ("File: ..."), which it does once the
        interface is open and its filter set, so nothing sent from now on is missed. (Its "Capturing on" line
        comes before it opens the interface: a replay started then lost its first ~30 ms uncounted.)"""
        return self.proc is not None and self.proc.poll() is None and self._capturing.is_set()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            self._capturing.clear()
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # the last lines only: dumpcap names every ring file it opens (43,200 lines a day at 2 s per file),
            # and its exit message (drop counts, or the error) comes last
            lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                lines.append(line)
                # "Capturing on" comes before the interface is opened; "File:" after it is open, its filter set
                # and the first ring file created: a replay started at "Capturing on" lost its first ~30 ms
                if line.startswith("File: ") and not self._capturing.is_set():
                    self._capturing.set()
                    self.metrics.capture_running.set(1)
            self.proc.wait()
            err = "".join(lines)
            self._capturing.clear()
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
