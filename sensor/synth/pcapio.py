"""Capture file writers: classic pcap (microseconds) and pcapng (SHB, one IDB in nanoseconds, EPBs)."""

from __future__ import annotations

import os
import struct
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol

from sensor.atomic import atomic_open

PCAP_MAGIC_US = 0xA1B2C3D4
SNAPLEN = 262144

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_ENDOFOPT, _OPT_SHB_USERAPPL, _OPT_IF_TSRESOL = 0, 4, 9


class CaptureWriter(Protocol):
    """Anything that appends (timestamp, frame) records to an open capture file."""

    def write(self, ts_us: int, frame: bytes) -> None: ...


def atomic_output(path: str | os.PathLike[str]) -> AbstractContextManager[BinaryIO]:
    """A buffered binary file written under a temporary name and renamed into place only if all went well
    (`sensor.atomic.atomic_open`, without fsync: a generated capture can be made again)."""
    return atomic_open(path, durable=False)


def pcap_header(linktype: int) -> bytes:
    """Global header of a classic little-endian, microsecond-resolution pcap file."""
    return struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, SNAPLEN, linktype)


def pcap_record_header(ts_us: int, length: int) -> bytes:
    """Per-record header of a classic pcap file (whole frame captured)."""
    sec, usec = divmod(ts_us, 1_000_000)
    return struct.pack("<IIII", sec, usec, length, length)


class PcapWriter:
    """Classic pcap: magic 0xa1b2c3d4 (microseconds), one link type for the whole file."""

    def __init__(self, out: BinaryIO, linktype: int) -> None:
        self._out = out
        out.write(pcap_header(linktype))

    def write(self, ts_us: int, frame: bytes) -> None:
        self._out.write(pcap_record_header(ts_us, len(frame)) + frame)


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapngWriter:
    """pcapng: a Section Header Block, one Interface Description Block with if_tsresol=9 (ns), then EPBs."""

    def __init__(self, out: BinaryIO, linktype: int, application: str = "sensor.synth") -> None:
        self._out = out
        shb_opts = _option(_OPT_SHB_USERAPPL, application.encode()) + _option(_OPT_ENDOFOPT, b"")
        out.write(_block(_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + shb_opts))
        idb_opts = _option(_OPT_IF_TSRESOL, bytes([9])) + _option(_OPT_ENDOFOPT, b"")
        out.write(_block(_IDB, struct.pack("<HHI", linktype, 0, SNAPLEN) + idb_opts))

    def write(self, ts_us: int, frame: bytes) -> None:
        ts_ns = ts_us * 1000
        head = struct.pack("<IIIII", 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(frame), len(frame))
        self._out.write(_block(_EPB, head + _pad4(frame)))
