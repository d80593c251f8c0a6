"""One conversation (5-tuple) on the wire: frames both ways, TCP state, and the tallies a label needs."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from sensor.synth import packets as pk

INTERVAL_US = 60_000_000
MSS = 1460
SEGMENT_GAP_US = 20  # back-to-back segments of one flight at roughly wire speed


@dataclass(frozen=True)
class Packet:
    """One captured frame: epoch seconds (on a microsecond grid) and bytes from the Ethernet header on."""

    ts: float
    data: bytes


@dataclass(frozen=True)
class FlowLabel:
    """What the sensor must report for one whole flow: its 5-tuple, flow columns and interval count."""

    name: str
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str
    expect: dict[str, object]
    intervals: int


@dataclass
class Side:
    """What one direction of a flow sent, as a Zeek-style flow meter counts it (payload excludes headers)."""

    pkts: int = 0
    bytes: int = 0
    ip_bytes: int = 0
    first_byte: int | None = None


class Flow:
    """Frames of one 5-tuple in both directions; `out` is the shared list every flow appends to."""

    proto = "udp"

    def __init__(
        self,
        out: list[Packet],
        orig_h: str,
        orig_p: int,
        resp_h: str,
        resp_p: int,
        seed: str,
    ) -> None:
        self.out = out
        self.orig_h, self.orig_p, self.resp_h, self.resp_p = orig_h, orig_p, resp_h, resp_p
        self.rng = random.Random(seed)
        self._addr = {True: pk.packed(orig_h), False: pk.packed(resp_h)}
        self._mac = {True: pk.mac_for(orig_h), False: pk.mac_for(resp_h)}
        self._ident = {True: self.rng.randrange(1 << 16), False: self.rng.randrange(1 << 16)}
        self.ip_version = ipaddress.ip_address(orig_h).version
        self.sides = {True: Side(), False: Side()}
        self.buckets: set[int] = set()  # 60 s intervals holding packets of the flow
        self.last_us = -1

    def _emit(self, ts_us: int, from_orig: bool, segment: bytes, payload: bytes) -> None:
        if ts_us <= self.last_us:
            raise ValueError(f"time must increase within a flow ({ts_us} <= {self.last_us})")
        self.last_us = ts_us
        src, dst = self._addr[from_orig], self._addr[not from_orig]
        proto = pk.IPPROTO_TCP if self.proto == "tcp" else pk.IPPROTO_UDP
        if self.ip_version == 4:
            ip = pk.ipv4(src, dst, proto, segment, self._ident[from_orig])
            self._ident[from_orig] += 1
            ethertype = pk.ETH_IPV4
        else:
            ip = pk.ipv6(src, dst, proto, segment)
            ethertype = pk.ETH_IPV6
        frame = pk.ethernet(self._mac[from_orig], self._mac[not from_orig], ethertype, ip)
        self.out.append(Packet(ts_us / 1e6, frame))
        self.buckets.add(ts_us // INTERVAL_US)
        side = self.sides[from_orig]
        side.pkts += 1
        side.bytes += len(payload)
        side.ip_bytes += len(ip)
        if payload and side.first_byte is None:
            side.first_byte = payload[0]

    def counts(self) -> dict[str, object]:
        """The counter columns of the whole flow, keyed by flow schema column names."""
        out: dict[str, object] = {"ip_version": self.ip_version}
        for prefix, side in (("orig", self.sides[True]), ("resp", self.sides[False])):
            out |= {
                f"{prefix}_pkts": side.pkts,
                f"{prefix}_bytes": side.bytes,
                f"{prefix}_ip_bytes": side.ip_bytes,
                f"{prefix}_first_byte": side.first_byte,
            }
        return out

    def label(self, name: str, facts: dict[str, object]) -> FlowLabel:
        """The label of this flow: counters merged with the protocol facts the caller knows."""
        return FlowLabel(
            name=name,
            orig_h=self.orig_h,
            orig_p=self.orig_p,
            resp_h=self.resp_h,
            resp_p=self.resp_p,
            proto=self.proto,
            expect={**self.counts(), **facts},
            intervals=len(self.buckets),
        )


class UdpFlow(Flow):
    """A UDP 5-tuple; the originator is whoever sends the first datagram."""

    proto = "udp"

    def send(self, ts_us: int, from_orig: bool, payload: bytes) -> None:
        src, dst = self._addr[from_orig], self._addr[not from_orig]
        sport, dport = (self.orig_p, self.resp_p) if from_orig else (self.resp_p, self.orig_p)
        self._emit(ts_us, from_orig, pk.udp(src, dst, sport, dport, payload), payload)


class TcpFlow(Flow):
    """A TCP connection with consistent sequence and acknowledgement numbers from SYN to the last ACK."""

    proto = "tcp"

    def __init__(
        self,
        out: list[Packet],
        orig_h: str,
        orig_p: int,
        resp_h: str,
        resp_p: int,
        seed: str,
        rtt_us: int = 400,
    ) -> None:
        super().__init__(out, orig_h, orig_p, resp_h, resp_p, seed)
        self.rtt_us = rtt_us
        self._next = {True: self.rng.randrange(1 << 32), False: self.rng.randrange(1 << 32)}
        self.now_us = 0

    def _segment(self, ts_us: int, from_orig: bool, flags: int, data: bytes = b"", opts: bytes = b"") -> None:
        src, dst = self._addr[from_orig], self._addr[not from_orig]
        sport, dport = (self.orig_p, self.resp_p) if from_orig else (self.resp_p, self.orig_p)
        ack = self._next[not from_orig] if flags & pk.ACK else 0
        seq = self._next[from_orig]
        seg = pk.tcp(src, dst, sport, dport, seq, ack, flags, data, options=opts)
        self._emit(ts_us, from_orig, seg, data)
        self._next[from_orig] = (seq + len(data) + (1 if flags & (pk.SYN | pk.FIN) else 0)) & 0xFFFFFFFF
        self.now_us = ts_us

    def open(self, ts_us: int) -> int:
        """Three-way handshake starting at ts_us; returns the time of the final ACK."""
        half = self.rtt_us // 2
        self._segment(ts_us, True, pk.SYN, opts=pk.syn_options())
        self._segment(ts_us + half, False, pk.SYN | pk.ACK, opts=pk.syn_options())
        self._segment(ts_us + 2 * half, True, pk.ACK)
        return self.now_us

    def send(self, ts_us: int, from_orig: bool, data: bytes) -> int:
        """Send data as MSS-sized segments (PSH on the last); returns when the peer has received it all."""
        ts = max(ts_us, self.now_us + 1)
        for start in range(0, len(data), MSS):
            chunk = data[start : start + MSS]
            last = start + MSS >= len(data)
            self._segment(ts, from_orig, pk.ACK | (pk.PSH if last else 0), chunk)
            ts += SEGMENT_GAP_US
        return self.now_us + self.rtt_us // 2

    def ack(self, ts_us: int, from_orig: bool) -> int:
        """A bare ACK from one side."""
        self._segment(max(ts_us, self.now_us + 1), from_orig, pk.ACK)
        return self.now_us

    def close(self, ts_us: int, from_orig: bool = True) -> int:
        """FIN from one side, FIN+ACK from the other, final ACK; returns the time of the last packet."""
        half = self.rtt_us // 2
        ts = max(ts_us, self.now_us + 1)
        self._segment(ts, from_orig, pk.FIN | pk.ACK)
        self._segment(ts + half, not from_orig, pk.FIN | pk.ACK)
        self._segment(ts + 2 * half, from_orig, pk.ACK)
        return self.now_us
