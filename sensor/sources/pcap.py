"""Capture file front end: reads pcap and pcapng in blocks and indexes packet records column-wise."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numba as nb
import numpy as np
import numpy.typing as npt

import sensor.jit  # noqa: F401  (numba cache location; before any @njit)
from sensor.errors import SourceError

# Link types the decoder understands (tcpdump.org/linktypes.html).
SUPPORTED_LINKTYPES = {
    0: "NULL",
    1: "ETHERNET",
    12: "RAW",
    101: "RAW",
    113: "LINUX_SLL",
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",
}

# A record claiming more than this is damage, not a packet (Wireshark's WTAP_MAX_PACKET_SIZE_STANDARD).
MAX_CAPLEN = 262_144
BLOCK_BYTES = 16 << 20
MAX_BATCH = 1 << 18

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # microsecond, little-endian
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanosecond
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


@dataclass
class Batch:
    """A batch of packets: one buffer and per-packet columns pointing into it."""

    buf: npt.NDArray[np.uint8]
    offset: npt.NDArray[np.int64]
    caplen: npt.NDArray[np.int32]
    wirelen: npt.NDArray[np.int32]
    ts_ns: npt.NDArray[np.int64]
    linktype: npt.NDArray[np.int16]

    def __len__(self) -> int:
        return int(self.offset.shape[0])


@dataclass
class ReadStats:
    """What the reader saw: packets, bytes and any damage (a reason and the bytes skipped)."""

    packets: int = 0
    bytes_read: int = 0
    file_bytes: int = 0
    damaged: list[str] = field(default_factory=list)
    skipped_bytes: int = 0


@nb.njit(cache=True, nogil=True, inline="always")
def _u32(buf, p, big):  # type: ignore[no-untyped-def]
    if big:
        return (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) | buf[p + 3]
    return (np.int64(buf[p + 3]) << 24) | (np.int64(buf[p + 2]) << 16) | (np.int64(buf[p + 1]) << 8) | buf[p]


@nb.njit(cache=True, nogil=True, inline="always")
def _u16(buf, p, big):  # type: ignore[no-untyped-def]
    if big:
        return (np.int64(buf[p]) << 8) | buf[p + 1]
    return (np.int64(buf[p + 1]) << 8) | buf[p]


@nb.njit(cache=True, nogil=True)
def index_pcap(buf, end, big, ns_per_tick, linktype, offs, caplens, wirelens, ts, lts):  # type: ignore[no-untyped-def]
    """Index classic pcap records in buf[0:end]; returns (records, bytes consumed, damage flag)."""
    pos = 0
    n = 0
    cap = offs.shape[0]
    while n < cap and pos + 16 <= end:
        sec = _u32(buf, pos, big)
        frac = _u32(buf, pos + 4, big)
        incl = _u32(buf, pos + 8, big)
        orig = _u32(buf, pos + 12, big)
        if incl > 262144 or frac >= 1_000_000_000:
            return n, pos, 1
        if pos + 16 + incl > end:
            break
        offs[n] = pos + 16
        caplens[n] = incl
        wirelens[n] = orig if orig >= incl else incl
        ts[n] = sec * 1_000_000_000 + frac * ns_per_tick
        lts[n] = linktype
        n += 1
        pos += 16 + incl
    return n, pos, 0


@nb.njit(cache=True, nogil=True)
def index_pcapng(buf, end, state, if_link, if_mul, if_div, offs, caplens, wirelens, ts, lts):  # type: ignore[no-untyped-def]
    """Index pcapng blocks in buf[0:end]; state = [big-endian flag, interfaces, last ts].

    Returns (packets, bytes consumed, damage flag). Interface description blocks update if_* in place.
    """
    pos = 0
    n = 0
    cap = offs.shape[0]
    while n < cap and pos + 12 <= end:
        big = state[0] == 1
        btype = _u32(buf, pos, big)
        if btype == 0x0A0D0D0A:
            bom = _u32(buf, pos + 8, False)
            if bom == 0x1A2B3C4D:
                state[0] = 0
            elif bom == 0x4D3C2B1A:
                state[0] = 1
            else:
                return n, pos, 1
            big = state[0] == 1
            state[1] = 0
        blen = _u32(buf, pos + 4, big)
        if blen < 12 or blen % 4 != 0 or blen > 262144 + 4096:
            return n, pos, 1
        if pos + blen > end:
            break
        if btype == 1:  # Interface Description Block
            k = state[1]
            if k < if_link.shape[0]:
                if_link[k] = _u16(buf, pos + 8, big)
                if_mul[k] = 1000
                if_div[k] = 1
                op = pos + 16
                while op + 4 <= pos + blen - 4:
                    code = _u16(buf, op, big)
                    olen = _u16(buf, op + 2, big)
                    if code == 0:
                        break
                    if code == 9 and olen >= 1:
                        r = buf[op + 4]
                        if r & 0x80 == 0:
                            if r <= 9:
                                if_mul[k] = 10 ** (9 - r)
                                if_div[k] = 1
                            else:
                                if_mul[k] = 1
                                if_div[k] = 10 ** (r - 9)
                        else:
                            # binary resolution 2^-r: ticks * 1e9 / 2^r
                            if_mul[k] = 1_000_000_000
                            if_div[k] = 1 << (r & 0x7F)
                    op += 4 + ((olen + 3) // 4) * 4
            state[1] = k + 1
        elif btype == 6 or btype == 2:  # Enhanced Packet Block (or obsolete Packet Block)
            iface = _u32(buf, pos + 8, big) if btype == 6 else _u16(buf, pos + 8, big)
            hi = _u32(buf, pos + 12, big)
            lo = _u32(buf, pos + 16, big)
            incl = _u32(buf, pos + 20, big)
            orig = _u32(buf, pos + 24, big)
            if incl > blen - 32 or iface >= state[1] or iface >= if_link.shape[0]:
                return n, pos, 1
            ticks = (hi << 32) | lo
            mul = if_mul[iface]
            div = if_div[iface]
            if div == 1:
                t = ticks * mul
            elif mul == 1:
                t = ticks // div
            else:
                t = (ticks // div) * mul + ((ticks % div) * mul) // div
            offs[n] = pos + 28
            caplens[n] = incl
            wirelens[n] = orig if orig >= incl else incl
            ts[n] = t
            lts[n] = if_link[iface]
            state[2] = t
            n += 1
        elif btype == 3:  # Simple Packet Block: no timestamp, interface 0
            orig = _u32(buf, pos + 8, big)
            incl = blen - 16
            if orig < incl:
                incl = orig
            if state[1] < 1:
                return n, pos, 1
            offs[n] = pos + 12
            caplens[n] = incl
            wirelens[n] = orig
            ts[n] = state[2]
            lts[n] = if_link[0]
            n += 1
        pos += blen
    return n, pos, 0


@nb.njit(cache=True, nogil=True)
def _plausible(buf, q, end, big, last_sec):  # type: ignore[no-untyped-def]
    sec = _u32(buf, q, big)
    incl = _u32(buf, q + 8, big)
    orig = _u32(buf, q + 12, big)
    if _u32(buf, q + 4, big) >= 1_000_000_000 or incl > 262144 or orig < incl or orig > 262144 or incl < 14:
        return False
    return last_sec < 0 or abs(sec - last_sec) <= 86400


@nb.njit(cache=True, nogil=True)
def resync_pcap(buf, start, end, big, last_sec):  # type: ignore[no-untyped-def]
    """First offset >= start where two consecutive plausible pcap record headers begin (or one that ends the
    data exactly); -1 if none. Used to skip garbage in a damaged capture."""
    for q in range(start, end - 16):
        if _plausible(buf, q, end, big, last_sec):
            nxt = q + 16 + _u32(buf, q + 8, big)
            if nxt == end or (nxt + 16 <= end and _plausible(buf, nxt, end, big, last_sec)):
                return q
    return -1


@nb.njit(cache=True, nogil=True)
def resync_pcapng(buf, start, end, big):  # type: ignore[no-untyped-def]
    """First offset >= start (4-aligned from start) of an Enhanced Packet Block whose leading and trailing
    lengths agree; -1 if none."""
    q = start
    while q + 32 <= end:
        if _u32(buf, q, big) == 6:
            blen = _u32(buf, q + 4, big)
            if (
                32 <= blen <= 262144 + 4096
                and blen % 4 == 0
                and q + blen <= end
                and _u32(buf, q + blen - 4, big) == blen
            ):
                return q
        q += 4
    return -1


class CaptureReader:
    """Reads one capture file in blocks; yields Batch objects; records damage instead of raising mid-file."""

    def __init__(self, path: Path, *, batch_packets: int = MAX_BATCH, block_bytes: int = BLOCK_BYTES) -> None:
        self.path = path
        self.batch_packets = batch_packets
        self.block_bytes = block_bytes
        self.stats = ReadStats()
        try:
            self.stats.file_bytes = path.stat().st_size
            with path.open("rb") as fh:
                head = fh.read(24)
        except OSError as exc:
            raise SourceError(f"{path}: cannot read capture: {exc.strerror or exc}") from exc
        if len(head) == 0:
            raise SourceError(f"{path}: empty file, not a capture")
        magic = head[:4]
        if magic in PCAP_MAGICS:
            if len(head) < 24:
                raise SourceError(f"{path}: truncated pcap header ({len(head)} of 24 bytes)")
            self.format = "pcap"
            endian, self._ns_per_tick = PCAP_MAGICS[magic]
            self._big = endian == ">"
            self._linktype = struct.unpack(endian + "I", head[20:24])[0] & 0x0FFFFFFF
            if self._linktype not in SUPPORTED_LINKTYPES:
                raise SourceError(
                    f"{path}: unsupported link type {self._linktype} (supported: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(SUPPORTED_LINKTYPES.items()))
                    + ")"
                )
        elif magic == PCAPNG_SHB:
            self.format = "pcapng"
        else:
            raise SourceError(f"{path}: not a pcap or pcapng capture (magic {magic.hex()})")

    def __iter__(self) -> Iterator[Batch]:
        """Batches in file order. A batch's arrays and buffer are reused for the next batch: consumers
        copy what they keep before asking for the next one (this keeps the reader free of page faults)."""
        if_link = np.zeros(64, np.int64)
        if_mul = np.ones(64, np.int64)
        if_div = np.ones(64, np.int64)
        state = np.zeros(3, np.int64)
        with self.path.open("rb") as fh:
            if self.format == "pcap":
                fh.seek(24)
                self.stats.bytes_read = 24
            yield from self._blocks(fh, state, if_link, if_mul, if_div)

    def _blocks(
        self,
        fh: BinaryIO,
        state: npt.NDArray[np.int64],
        if_link: npt.NDArray[np.int64],
        if_mul: npt.NDArray[np.int64],
        if_div: npt.NDArray[np.int64],
    ) -> Iterator[Batch]:
        n_max = self.batch_packets
        offs, caplens = np.empty(n_max, np.int64), np.empty(n_max, np.int32)
        wirelens, ts, lts = np.empty(n_max, np.int32), np.empty(n_max, np.int64), np.empty(n_max, np.int16)
        # one buffer for the whole file: the unread tail of a block moves to its start, the next block follows
        buf = np.empty(self.block_bytes + MAX_CAPLEN + 65536, np.uint8)
        tail = 0
        eof = False
        last_sec = -1
        while True:
            got = 0 if eof else fh.readinto(memoryview(buf)[tail : tail + self.block_bytes])  # type: ignore[attr-defined,arg-type]
            if not got:
                eof = True
            end = tail + got
            if end == 0:
                return
            pos = 0
            while True:
                view = buf[pos:end]
                if self.format == "pcap":
                    n, used, bad = index_pcap(
                        view, end - pos, self._big, self._ns_per_tick, self._linktype, offs, caplens, wirelens, ts, lts
                    )
                else:
                    n, used, bad = index_pcapng(
                        view, end - pos, state, if_link, if_mul, if_div, offs, caplens, wirelens, ts, lts
                    )
                self.stats.bytes_read += int(used)  # before the yield, so progress sees this batch
                if n:
                    self.stats.packets += int(n)
                    last_sec = int(ts[n - 1] // 1_000_000_000)
                    yield Batch(view, offs[:n], caplens[:n], wirelens[:n], ts[:n], lts[:n])
                pos += int(used)
                if bad:
                    at = self.stats.bytes_read
                    if self.format == "pcap":
                        q = int(resync_pcap(buf[:end], pos + 1, end, self._big, last_sec))
                    else:
                        q = int(resync_pcapng(buf[:end], pos + 4, end, bool(state[0])))
                    if q < 0:
                        keep = 0 if eof else min(end - pos, MAX_CAPLEN + 4096)
                        skip = end - pos - keep
                        self._damage(f"corrupt data at byte {at}: skipped {skip} bytes", skip)
                        self.stats.bytes_read += skip
                        pos = end - keep
                        break
                    self._damage(
                        f"corrupt data at byte {at}: skipped {q - pos} bytes to the next valid record", q - pos
                    )
                    self.stats.bytes_read += q - pos
                    pos = q
                    continue
                if n < n_max:
                    break
            tail = end - pos
            if eof:
                if tail:
                    self._damage(
                        f"truncated: the last packet is cut short at byte {self.stats.bytes_read} (1 packet lost)", tail
                    )
                return
            buf[:tail] = buf[pos:end]

    def _damage(self, reason: str, skipped: int) -> None:
        self.stats.damaged.append(reason)
        self.stats.skipped_bytes += max(0, skipped)
