"""The fact stream: the few packets the fast path selects for Wireshark, as pcapng, with their flows.

The packets go through a pipe to a tshark that dissects them while the fast path is still reading the
capture (the second core does the dissection); a writer thread with an in-memory queue keeps the fast
path from ever waiting on tshark.
"""

from __future__ import annotations

import os
import queue
import struct
import threading

import numpy as np

from sensor.errors import SourceError
from sensor.fastpath.flows import FactPackets
from sensor.sources.pcap import Batch


class FactCapture:
    """Writes selected packets as pcapng (one interface per link type) into a pipe whose read end
    (`read_fd`) feeds the dissector, and remembers for each frame number the flow index and direction it
    belongs to (frame n is at index n-1)."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self.flow: list[int] = []
        self.direction: list[int] = []
        self.base = 0  # frame number - 1 of flow[0] (older frames were dissected and forgotten)
        self.count = 0
        self.error: str | None = None
        self._iface: dict[int, int] = {}
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._abandon = threading.Event()
        self._writer = threading.Thread(target=self._drain, name="fact-writer", daemon=True)
        self._writer.start()
        self._block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))

    def _drain(self) -> None:
        fd = self._write_fd
        try:
            while True:
                data = self._queue.get()
                if data is None:
                    break
                if self._abandon.is_set():
                    continue
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        except OSError as exc:
            self.error = f"the dissector stopped reading the fact stream ({exc.strerror or exc})"
        finally:
            os.close(fd)

    def _block(self, btype: int, body: bytes) -> None:
        pad = (-len(body)) % 4
        total = 12 + len(body) + pad
        self._queue.put(struct.pack("<II", btype, total) + body + b"\0" * pad + struct.pack("<I", total))

    def _interface(self, linktype: int) -> int:
        idx = self._iface.get(linktype)
        if idx is None:
            idx = len(self._iface)
            self._iface[linktype] = idx
            # if_tsresol = 9 (nanoseconds), then opt_endofopt
            opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
            self._block(1, struct.pack("<HHI", linktype, 0, 262144) + opts)
        return idx

    def add(self, batch: Batch, facts: FactPackets) -> None:
        idx = np.flatnonzero(facts.mask)
        if idx.size == 0:
            return
        buf = batch.buf
        flows = facts.flow[idx].tolist()
        dirs = facts.direction[idx].tolist()
        chunks: list[bytes] = []
        for k, i in enumerate(idx.tolist()):
            off = int(batch.offset[i])
            cap = int(batch.caplen[i])
            ts = int(batch.ts_ns[i])
            iface = self._interface(int(batch.linktype[i]))
            body = struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, cap, int(batch.wirelen[i]))
            body += buf[off : off + cap].tobytes()
            pad = (-len(body)) % 4
            total = 12 + len(body) + pad
            chunks.append(struct.pack("<II", 6, total) + body + b"\0" * pad + struct.pack("<I", total))
            # the mapping is recorded before the frame can reach the dissector
            self.flow.append(flows[k])
            self.direction.append(dirs[k])
        self.count += len(chunks)
        self._queue.put(b"".join(chunks))

    def remap(self, remap: np.ndarray) -> None:
        """Follow a compaction of the flow table; frames of dropped flows map to -1."""
        self.flow = [int(remap[f]) if 0 <= f < remap.size else -1 for f in self.flow]

    def forget(self, frames: int) -> None:
        """Drop the mapping of the first `frames` frames still held (already dissected)."""
        frames = min(frames, len(self.flow))
        del self.flow[:frames]
        del self.direction[:frames]
        self.base += frames

    def close(self, *, abandon: bool = False) -> None:
        """End the stream (the reader sees end of file); with abandon, drop what is still queued."""
        if abandon:
            self._abandon.set()
        self._queue.put(None)
        self._writer.join()
        if self.error and not abandon:
            raise SourceError(self.error)
