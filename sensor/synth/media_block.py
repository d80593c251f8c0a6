"""Vectorised RTP/SRTP frames of many concurrent 20 ms streams: a numpy row per packet, compacted to pcap."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sensor.synth import media
from sensor.synth import packets as pk

# Row layout: pcap record header | Ethernet | IPv4 | UDP | RTP | payload (SRTP tag included).
REC, ETH, IP, UDP, RTP, PAYLOAD = 0, 16, 30, 50, 58, 70
MAX_PAYLOAD = 170
ROW = PAYLOAD + MAX_PAYLOAD
HEADERS = PAYLOAD - ETH  # bytes of Ethernet + IPv4 + UDP + RTP headers

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


@dataclass
class Stream:
    """One direction of one call's media: addresses, codec, protection and RTP counters' starting points."""

    flow_id: int
    src: str
    dst: str
    sport: int
    dport: int
    codec: media.Codec
    srtp: bool
    first_tick: int
    end_tick: int  # exclusive
    phase_us: int  # offset within the 20 ms tick, fixed for the stream's life
    ssrc: int
    seq0: int
    ts0: int
    ipid0: int
    speech_offset: int
    template: U8 = field(init=False)
    ip_sum: int = field(init=False)

    def __post_init__(self) -> None:
        src, dst = pk.packed(self.src), pk.packed(self.dst)
        eth = pk.mac_for(self.dst) + pk.mac_for(self.src) + struct.pack("!H", pk.ETH_IPV4)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, 128, pk.IPPROTO_UDP, 0, src, dst)
        udp = struct.pack("!HHHH", self.sport, self.dport, 0, 0)  # checksum 0: not computed (RFC 768)
        rtp = media.rtp_header(self.codec.pt, 0, 0, self.ssrc)
        self.template = np.frombuffer(bytes(16) + eth + ip + udp + rtp, dtype=np.uint8)
        words = struct.unpack("!10H", ip)
        self.ip_sum = sum(words)  # total length and identification are zero here; added per packet


@dataclass(frozen=True)
class Block:
    """Media records of one block in capture order: timestamps, flow ids, record end offsets, bytes."""

    ts_us: I64
    flow_ids: I64
    ends: I64  # end offset of each record in data
    data: U8


def _put(buf: U8, col: int, values: npt.NDArray[np.int64], dtype: str) -> None:
    width = np.dtype(dtype).itemsize
    buf[:, col : col + width] = values.astype(dtype).view(np.uint8).reshape(-1, width)


class MediaBlockBuilder:
    """Builds blocks of media packets from a random pool and G.711 speech tables (deterministic by seed)."""

    def __init__(self, rng: np.random.Generator, start_us: int, pool_bytes: int = 1 << 24) -> None:
        self.rng = rng
        self.start_us = start_us
        self.pool = np.frombuffer(rng.bytes(pool_bytes), dtype=np.uint8)
        pcm = media.speech(rng, 30.0)
        self.speech = {"mulaw": media.mulaw(pcm), "alaw": media.alaw(pcm)}

    def build(self, streams: list[Stream], tick0: int, ticks: int) -> Block:
        """Every packet the streams send during ticks [tick0, tick0 + ticks), ordered by time."""
        streams = sorted(streams, key=lambda s: s.phase_us)
        first = np.array([s.first_tick for s in streams], dtype=np.int64)
        end = np.array([s.end_tick for s in streams], dtype=np.int64)
        tick = np.arange(tick0, tick0 + ticks, dtype=np.int64)
        ti, si = np.nonzero((tick[:, None] >= first[None, :]) & (tick[:, None] < end[None, :]))
        n = len(si)
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return Block(empty, empty, empty, np.zeros(0, dtype=np.uint8))

        def col(attr: str) -> I64:
            return np.array([getattr(s, attr) for s in streams], dtype=np.int64)[si]

        k = tick[ti] - first[si]
        ts_us = self.start_us + tick[ti] * media.PTIME_US + col("phase_us")
        fixed = np.array([s.codec.min_len == s.codec.max_len for s in streams])[si]
        lo, hi = self._codec_bounds(streams, si)
        plen = np.where(fixed, lo, self.rng.integers(lo, hi + 1))
        plen += np.array([media.SRTP_TAG_LEN if s.srtp else 0 for s in streams], dtype=np.int64)[si]

        buf = np.empty((n, ROW), dtype=np.uint8)
        buf[:, :PAYLOAD] = np.stack([s.template for s in streams])[si]
        offset = int(self.rng.integers(0, len(self.pool) - n * MAX_PAYLOAD))
        buf[:, PAYLOAD:] = self.pool[offset : offset + n * MAX_PAYLOAD].reshape(n, MAX_PAYLOAD)
        self._speech(buf, streams, si, k)

        caplen = HEADERS + plen
        _put(buf, REC, ts_us // 1_000_000, "<u4")
        _put(buf, REC + 4, ts_us % 1_000_000, "<u4")
        _put(buf, REC + 8, caplen, "<u4")
        _put(buf, REC + 12, caplen, "<u4")
        total_len = caplen - 14
        ipid = (col("ipid0") + k) & 0xFFFF
        csum = col("ip_sum") + total_len + ipid
        csum = (csum & 0xFFFF) + (csum >> 16)
        csum = (csum & 0xFFFF) + (csum >> 16)
        _put(buf, IP + 2, total_len, ">u2")
        _put(buf, IP + 4, ipid, ">u2")
        _put(buf, IP + 10, ~csum & 0xFFFF, ">u2")
        _put(buf, UDP + 4, total_len - 20, ">u2")
        _put(buf, RTP + 2, (col("seq0") + k) & 0xFFFF, ">u2")
        step = np.array([s.codec.ts_step for s in streams], dtype=np.int64)[si]
        _put(buf, RTP + 4, (col("ts0") + k * step) & 0xFFFFFFFF, ">u4")
        buf[:, RTP + 1] |= np.where(k == 0, 0x80, 0).astype(np.uint8)

        rec_len = PAYLOAD + plen
        data = buf[np.arange(ROW)[None, :] < rec_len[:, None]]
        return Block(ts_us, col("flow_id"), np.cumsum(rec_len), data)

    @staticmethod
    def _codec_bounds(streams: list[Stream], si: npt.NDArray[np.intp]) -> tuple[I64, I64]:
        lo = np.array([s.codec.min_len for s in streams], dtype=np.int64)[si]
        hi = np.array([s.codec.max_len for s in streams], dtype=np.int64)[si]
        return lo, hi

    def _speech(self, buf: U8, streams: list[Stream], si: npt.NDArray[np.intp], k: I64) -> None:
        """Plain G.711 rows carry real mu-law / A-law frames of the test signal instead of random bytes."""
        for encoding, table in self.speech.items():
            wanted = np.array([s.codec.encoding == encoding and not s.srtp for s in streams])[si]
            rows = np.nonzero(wanted)[0]
            if len(rows) == 0:
                continue
            offsets = np.array([s.speech_offset for s in streams], dtype=np.int64)[si[rows]]
            start = (offsets + k[rows] * 160) % (len(table) - 160)
            buf[rows, PAYLOAD : PAYLOAD + 160] = table[start[:, None] + np.arange(160)]
