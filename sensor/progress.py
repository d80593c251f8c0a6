"""Progress lines for long offline runs, at most one every few seconds, on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Callable progress reporter: (file, bytes read, file bytes, packets so far)."""

    def __init__(
        self, stream: TextIO = sys.stderr, every_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream
        self.every_s = every_s
        self.clock = clock
        self.started = clock()
        self._last = self.started

    def __call__(self, name: str, done: int, total: int, packets: int) -> None:
        now = self.clock()
        if now - self._last < self.every_s:
            return
        self._last = now
        pct = 100.0 * done / total if total else 0.0
        rate = packets / max(now - self.started, 1e-9)
        self.stream.write(f"analyze: {name}: {pct:5.1f}% {packets:,} packets, {rate / 1e6:.2f} M packets/s\n")
        self.stream.flush()
