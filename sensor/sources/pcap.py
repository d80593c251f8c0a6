"""Capture file front end: reads pcap and pcapng in blocks and indexes packet records column-wise.

Damage is counted and skipped, never raised mid-file: garbage and zeros are skipped up to the next valid
record, a damaged field (a timestamp beyond int64 nanoseconds or far outside the capture's own time, an
impossible original length, an unusable if_tsresol) costs at most its own packet.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from sensor.errors import SourceError
from sensor.sources.pcap_index import (
    C_BAD_TS,
    C_FAR_TS,
    C_ORIG,
    C_TSRESOL,
    C_UNSUP,
    C_UNSUP_LT,
    C_UNSUP_MANY,
    C_ZERO,
    MAX_CAPLEN,
    MAX_WIRELEN,
    S_BIG,
    S_HAS_REF,
    S_IFACES,
    S_REF,
    SUPPORTED_LINKTYPES,
    index_pcap,
    index_pcapng,
    resync_pcap,
    resync_pcapng,
)

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
    """A batch of packets: one buffer and per-packet columns pointing into it.

    Every timestamp is >= 0 and within the capture's own time; caplen <= wirelen <= MAX_WIRELEN."""

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
    # packets dropped or repaired for damage, by kind (bad_timestamp, far_timestamp, bad_orig_len, empty_record,
    # unsupported_linktype): exported as lync_sensor_decode_errors_total{kind}
    damaged_packets: dict[str, int] = field(default_factory=dict)


def _pcapng_linktypes(head: bytes) -> list[int]:
    """Link types of the interfaces the first section defines before its first packet."""
    out: list[int] = []
    pos, endian = 0, "<"
    while pos + 12 <= len(head):
        if head[pos : pos + 4] == PCAPNG_SHB:
            endian = "<" if head[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        btype, blen = struct.unpack_from(endian + "II", head, pos)
        if btype in (2, 3, 6) or blen < 12 or pos + blen > len(head):
            break
        if btype == 1 and blen >= 20:
            out.append(struct.unpack_from(endian + "H", head, pos + 8)[0])
        pos += blen
    return out


def _unsupported(path: Path, linktypes: list[int]) -> SourceError:
    supported = ", ".join(f"{k} {v}" for k, v in sorted(SUPPORTED_LINKTYPES.items()))
    got = ", ".join(str(t) for t in sorted(set(linktypes)))
    return SourceError(f"{path}: unsupported link type {got} (supported: {supported})")


def _packets(n: int) -> str:
    return f"{n:,} packet" + ("" if n == 1 else "s")


class CaptureReader:
    """Reads one capture file in blocks; yields Batch objects; records damage instead of raising mid-file.

    A capture whose link type (every interface's, in pcapng) is unsupported fails at open, in both formats;
    packets of an unsupported interface beside supported ones are counted as damage and skipped."""

    def __init__(self, path: Path, *, batch_packets: int = MAX_BATCH, block_bytes: int = BLOCK_BYTES) -> None:
        self.path = path
        self.batch_packets = batch_packets
        self.block_bytes = block_bytes
        self.stats = ReadStats()
        try:
            self.stats.file_bytes = path.stat().st_size
            with path.open("rb") as fh:
                head = fh.read(1 << 16)
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
                raise _unsupported(path, [self._linktype])
        elif magic == PCAPNG_SHB:
            self.format = "pcapng"
            linktypes = _pcapng_linktypes(head)
            if linktypes and not any(t in SUPPORTED_LINKTYPES for t in linktypes):
                raise _unsupported(path, linktypes)
        else:
            raise SourceError(f"{path}: not a pcap or pcapng capture (magic {magic.hex()})")

    def __iter__(self) -> Iterator[Batch]:
        """Batches in file order. A batch's arrays and buffer are reused for the next batch: consumers
        copy what they keep before asking for the next one (this keeps the reader free of page faults).
        Damage to single packets is summed up in stats.damaged when the file ends."""
        cnt = np.zeros(8, np.int64)
        with self.path.open("rb") as fh:
            if self.format == "pcap":
                fh.seek(24)
                self.stats.bytes_read = 24
            yield from self._blocks(fh, cnt)
        self._summarise(cnt)

    def _blocks(self, fh: BinaryIO, cnt: npt.NDArray[np.int64]) -> Iterator[Batch]:
        if_link = np.zeros(64, np.int64)
        if_mul = np.ones(64, np.int64)
        if_div = np.ones(64, np.int64)
        if_ok = np.zeros(64, np.bool_)
        state = np.zeros(5, np.int64)
        n_max = self.batch_packets
        offs, caplens = np.empty(n_max, np.int64), np.empty(n_max, np.int32)
        wirelens, ts, lts = np.empty(n_max, np.int32), np.empty(n_max, np.int64), np.empty(n_max, np.int16)
        # one buffer for the whole file: the unread tail of a block moves to its start, the next block follows
        buf = np.empty(self.block_bytes + MAX_CAPLEN + 65536, np.uint8)
        tail = 0
        eof = False
        damage_at = -1  # file offset where the damage being skipped began (-1: none)
        first = 0  # where resynchronisation starts: 1 past a record known to be bad, else at pos
        while True:
            got = 0 if eof else fh.readinto(memoryview(buf)[tail : tail + self.block_bytes])  # type: ignore[attr-defined,arg-type]
            if not got:
                eof = True
            end = tail + got
            pos = 0
            while end:
                if damage_at >= 0:
                    if self.format == "pcap":
                        last_sec = int(state[S_REF]) // 1_000_000_000 if state[S_HAS_REF] else -1
                        q = int(resync_pcap(buf[:end], pos + first, end, self._big, last_sec))
                    else:
                        q = int(resync_pcapng(buf[:end], pos + first, end, bool(state[S_BIG]), int(state[S_IFACES])))
                    first = 0
                    if q < 0:  # skip what cannot start a record; keep the end to search again with more data
                        keep = 0 if eof else min(end - pos, MAX_CAPLEN + 4096)
                        self._skip(end - keep - pos)
                        pos = end - keep
                        break
                    self._skip(q - pos)
                    pos = q
                    self.stats.damaged.append(
                        f"corrupt data at byte {damage_at}: skipped {self.stats.bytes_read - damage_at} bytes "
                        "to the next valid record"
                    )
                    damage_at = -1
                view = buf[pos:end]
                if self.format == "pcap":
                    n, used, bad = index_pcap(
                        view, end - pos, eof, self._big, self._ns_per_tick, self._linktype, state, cnt,
                        offs, caplens, wirelens, ts, lts,
                    )  # fmt: skip
                else:
                    n, used, bad = index_pcapng(
                        view, end - pos, eof, state, if_link, if_mul, if_div, if_ok, cnt,
                        offs, caplens, wirelens, ts, lts,
                    )  # fmt: skip
                self.stats.bytes_read += int(used)  # before the yield, so progress sees this batch
                if n:
                    self.stats.packets += int(n)
                    yield Batch(view, offs[:n], caplens[:n], wirelens[:n], ts[:n], lts[:n])
                pos += int(used)
                if bad:
                    damage_at, first = self.stats.bytes_read, 1
                elif n < n_max:
                    break
            tail = end - pos
            if eof:
                if damage_at >= 0:
                    self.stats.damaged.append(
                        f"corrupt data at byte {damage_at}: skipped {self.stats.bytes_read - damage_at} bytes "
                        "to the end of the file"
                    )
                elif tail:
                    self.stats.damaged.append(
                        f"truncated: the last packet is cut short at byte {self.stats.bytes_read} (1 packet lost)"
                    )
                    self._skip(tail)
                return
            buf[:tail] = buf[pos:end]

    def _skip(self, nbytes: int) -> None:
        self.stats.bytes_read += nbytes
        self.stats.skipped_bytes += nbytes

    def _summarise(self, cnt: npt.NDArray[np.int64]) -> None:
        c = [int(x) for x in cnt]
        kinds = (
            ("bad_timestamp", C_BAD_TS),
            ("far_timestamp", C_FAR_TS),
            ("bad_orig_len", C_ORIG),
            ("empty_record", C_ZERO),
            ("unsupported_linktype", C_UNSUP),
        )
        self.stats.damaged_packets = {kind: c[col] for kind, col in kinds if c[col]}
        if c[C_BAD_TS]:
            self.stats.damaged.append(
                f"{_packets(c[C_BAD_TS])} skipped: timestamp beyond what int64 nanoseconds hold (negative or "
                "after 2262)"
            )
        if c[C_FAR_TS]:
            self.stats.damaged.append(
                f"{_packets(c[C_FAR_TS])} skipped: timestamp far outside the capture's time range (more than a "
                "day from the packets around it)"
            )
        if c[C_ORIG]:
            self.stats.damaged.append(
                f"{_packets(c[C_ORIG])} with an impossible original length (over {MAX_WIRELEN:,} bytes): counted "
                "with their captured length"
            )
        if c[C_TSRESOL]:
            self.stats.damaged.append(
                f"{c[C_TSRESOL]} interface(s) with an unusable if_tsresol: read with the default (microseconds)"
            )
        if c[C_ZERO]:
            self.stats.damaged.append(f"{_packets(c[C_ZERO])} skipped: empty, at time 0")
        if c[C_UNSUP]:
            more = " and others" if c[C_UNSUP_MANY] else ""
            self.stats.damaged.append(
                f"{_packets(c[C_UNSUP])} skipped: on an interface with unsupported link type {c[C_UNSUP_LT]}{more}"
            )
