"""The fact capture: the few packets the fast path selects for Wireshark, written as pcapng, with their flows."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from sensor.flows import FactPackets
from sensor.sources.pcap import Batch


class FactCapture:
    """Appends selected packets to a pcapng file (one interface per link type) and remembers, for each
    frame number, the flow index and direction it belongs to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO = path.open("wb")
        self._iface: dict[int, int] = {}
        self.flow: list[npt.NDArray[np.int64]] = []
        self.direction: list[npt.NDArray[np.int8]] = []
        self.count = 0
        self._write_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))

    def _write_block(self, btype: int, body: bytes) -> None:
        pad = (-len(body)) % 4
        total = 12 + len(body) + pad
        self._fh.write(struct.pack("<II", btype, total) + body + b"\0" * pad + struct.pack("<I", total))

    def _interface(self, linktype: int) -> int:
        idx = self._iface.get(linktype)
        if idx is None:
            idx = len(self._iface)
            self._iface[linktype] = idx
            # if_tsresol = 9 (nanoseconds), then opt_endofopt
            opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
            self._write_block(1, struct.pack("<HHI", linktype, 0, 262144) + opts)
        return idx

    def add(self, batch: Batch, facts: FactPackets) -> None:
        idx = np.flatnonzero(facts.mask)
        if idx.size == 0:
            return
        self.flow.append(facts.flow[idx].copy())
        self.direction.append(facts.direction[idx].copy())
        buf = batch.buf
        for i in idx.tolist():
            off = int(batch.offset[i])
            cap = int(batch.caplen[i])
            ts = int(batch.ts_ns[i])
            iface = self._interface(int(batch.linktype[i]))
            data = buf[off : off + cap].tobytes()
            self._write_block(
                6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, cap, int(batch.wirelen[i])) + data
            )
        self.count += int(idx.size)

    def close(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int8]]:
        """Close the file; return flow index and direction per frame (frame n is at index n-1)."""
        self._fh.close()
        if not self.flow:
            return np.zeros(0, np.int64), np.zeros(0, np.int8)
        return np.concatenate(self.flow), np.concatenate(self.direction)
