"""The stream layer in the compiled path: IP fragment reassembly and TCP stream prefixes by sequence number."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sensor.fastpath import columns as fl
from sensor.fastpath.flows import FlowTable
from sensor.sources.pcap import Batch

A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6, B6 = bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002")
RAW_IP = 101


def ipv4(
    src: bytes, dst: bytes, proto: int, payload: bytes, *, ident: int = 7, off: int = 0, mf: bool = False
) -> bytes:
    word = (off // 8) | (0x2000 if mf else 0)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, word, 64, proto, 0, src, dst)
    return hdr + payload


def ipv6(
    src: bytes, dst: bytes, proto: int, payload: bytes, *, ident: int | None = None, off: int = 0, mf: bool = False
) -> bytes:
    if ident is None:
        return struct.pack("!IHBB16s16s", 0x60000000, len(payload), proto, 64, src, dst) + payload
    frag = struct.pack("!BBHI", proto, 0, off | (1 if mf else 0), ident)
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload) + 8, 44, 64, src, dst) + frag + payload


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport: int, dport: int, seq: int, data: bytes = b"", flags: int = 0x18, ack: int = 0) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, 5 << 4, flags, 65535, 0, 0) + data


def batch(packets: list[bytes], t0: int = 1_700_000_000 * 10**9) -> Batch:
    buf = np.frombuffer(b"".join(packets), np.uint8).copy()
    lens = np.array([len(p) for p in packets], np.int32)
    offs = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
    ts = np.array([t0 + i * 1000 for i in range(len(packets))], np.int64)
    return Batch(buf, offs, lens, lens.copy(), ts, np.full(len(packets), RAW_IP, np.int16))


def table() -> FlowTable:
    ports = np.zeros(65536, np.uint8)
    ports[5060] = ports[5061] = 1
    return FlowTable(
        interval_s=60, idle_s=120, fact_packets=12, sip_messages=64, server_tcp=ports, server_udp=ports, native=True
    )


def fragments(datagram: bytes, size: int) -> list[tuple[int, bytes, bool]]:
    out = []
    for off in range(0, len(datagram), size):
        out.append((off, datagram[off : off + size], off + size < len(datagram)))
    return out


SIP = (
    b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: x\r\nContent-Length: 1200\r\n\r\n" + b"v=0\r\n" + b"a=x\r\n" * 240
)


@pytest.mark.parametrize("order", ["in-order", "reversed"])
@pytest.mark.parametrize("version", [4, 6])
def test_fragmented_udp_datagram_enters_the_flow_table_once_with_its_ports(order: str, version: int) -> None:
    dgram = udp(5060, 5060, SIP)
    parts = fragments(dgram, 512)
    if order == "reversed":
        parts.reverse()
    if version == 4:
        pkts = [ipv4(A4, B4, 17, d, off=o, mf=m) for o, d, m in parts]
    else:
        pkts = [ipv6(A6, B6, 17, d, ident=99, off=o, mf=m) for o, d, m in parts]
    t = table()
    t.add(batch(pkts))
    assert t.nflows == 1
    assert t.fs[0, fl.F_PORT_O] == 5060 and t.fs[0, fl.F_PORT_R] == 5060
    assert t.fs[0, fl.F_TOT_PK] + t.fs[0, fl.F_TOT_PK + 1] == 1
    got = t.take_datagrams()
    assert len(got) == 1 and got[0][4] == SIP
    rep = t.frags.report()
    assert rep["datagrams"] == 1 and rep["fragments"] == len(pkts) and rep["overlaps"] == 0


def test_overlapping_fragments_drop_the_datagram_and_are_counted() -> None:
    dgram = udp(5060, 5060, SIP)
    parts = fragments(dgram, 512)
    pkts = [ipv4(A4, B4, 17, d, off=o, mf=m) for o, d, m in parts]
    # a second copy of fragment 1 shifted by 8 bytes with other bytes: an overlap (RFC 5722)
    o, d, _ = parts[1]
    pkts.insert(2, ipv4(A4, B4, 17, b"X" * len(d), off=o + 8, mf=True))
    t = table()
    t.add(batch(pkts))
    assert t.nflows == 0
    assert t.take_datagrams() == []
    assert t.frags.report()["overlaps"] == 1


def test_a_duplicated_fragment_is_not_an_overlap() -> None:
    parts = fragments(udp(5060, 5060, SIP), 512)
    pkts = [ipv4(A4, B4, 17, d, off=o, mf=m) for o, d, m in parts]
    pkts.insert(1, pkts[0])
    t = table()
    t.add(batch(pkts))
    assert t.nflows == 1 and t.frags.report()["overlaps"] == 0


def test_incomplete_datagram_makes_no_flow_and_times_out() -> None:
    parts = fragments(udp(5060, 5060, SIP), 512)
    pkts = [ipv4(A4, B4, 17, d, off=o, mf=m) for o, d, m in parts]
    del pkts[1]
    t = table()
    t.add(batch(pkts))
    assert t.nflows == 0  # never a flow on ports 0/0
    # 31 s later any fragment ends the stale reassembly
    late = ipv4(A4, B4, 17, b"y" * 16, ident=8, off=0, mf=True)
    t.add(batch([late], t0=1_700_000_031 * 10**9))
    assert t.frags.report()["timed_out"] == 1


def _handshake_segments() -> tuple[bytes, bytes, list[bytes]]:
    client = bytes([22, 3, 1, 0, 40]) + bytes(range(40))
    server = bytes([22, 3, 3, 0x10, 0]) + bytes(i % 251 for i in range(4096))
    return client, server, [server[i : i + 536] for i in range(0, len(server), 536)]


def _tcp_flow(
    server_order: list[int], *, syn: bool = True, drop: int | None = None, extra: list[bytes] = ()
) -> FlowTable:  # type: ignore[assignment]
    client, _, segs = _handshake_segments()
    cisn, sisn = 1000, 900_000
    pkts = []
    if syn:
        pkts.append(ipv4(A4, B4, 6, tcp(40000, 5061, cisn, flags=0x02)))
        pkts.append(ipv4(B4, A4, 6, tcp(5061, 40000, sisn, flags=0x12)))
    pkts.append(ipv4(A4, B4, 6, tcp(40000, 5061, cisn + 1, client)))
    for k in server_order:
        if k == drop:
            continue
        pkts.append(ipv4(B4, A4, 6, tcp(5061, 40000, sisn + 1 + 536 * k, segs[k])))
    pkts += list(extra)
    t = table()
    t.add(batch(pkts))
    return t


def test_tcp_segments_reordered_reassemble_from_offset_zero() -> None:
    _, server, segs = _handshake_segments()
    order = [*range(1, len(segs)), 0]  # the first segment arrives last
    t = _tcp_flow(order)
    assert t.nflows == 1
    assert t.fs[0, fl.F_FIRST_BYTE + 1] == 22  # offset 0, not the first segment that arrived
    (c, s) = t.assemble(np.array([0]))[0]
    assert s.data == server and s.from_start and s.complete
    assert c.data[:1] == b"\x16"


def test_a_hole_stops_the_contiguous_prefix_and_marks_it_incomplete() -> None:
    _, server, segs = _handshake_segments()
    t = _tcp_flow(list(range(len(segs))), drop=3)
    (_, s) = t.assemble(np.array([0]))[0]
    assert s.data == server[: 3 * 536] and not s.complete


def test_lost_first_segment_leaves_first_byte_unknown() -> None:
    _, _, segs = _handshake_segments()
    t = _tcp_flow(list(range(len(segs))), drop=0)
    assert t.fs[0, fl.F_FIRST_BYTE + 1] == -1
    (_, s) = t.assemble(np.array([0]))[0]
    assert s.data == b"" and not s.complete


def test_retransmission_with_different_bytes_first_copy_wins() -> None:
    _, server, segs = _handshake_segments()
    forged = ipv4(B4, A4, 6, tcp(5061, 40000, 900_000 + 1 + 536, b"Z" * 536))
    t = _tcp_flow(list(range(len(segs))), extra=[forged])
    (_, s) = t.assemble(np.array([0]))[0]
    assert s.data == server and s.differing == sum(1 for x in segs[1] if x != ord("Z"))


def test_mid_stream_pickup_starts_at_the_lowest_sequence_number() -> None:
    _, server, _ = _handshake_segments()
    t = _tcp_flow([2, 1, 3, 4, 5, 6, 7], syn=False)
    (_, s) = t.assemble(np.array([0]))[0]
    assert not s.from_start
    assert s.data == server[536:]
    assert t.fs[0, fl.F_FIRST_BYTE + 1] == -1  # offset 0 was never seen


def test_release_gives_the_arena_back_and_compaction_keeps_open_flows() -> None:
    _, _, segs = _handshake_segments()
    t = _tcp_flow(list(range(len(segs))))
    assert t.stream_bytes_held > 4000
    t.release_streams(np.array([0]))
    assert t.stream_bytes_held == 0
    assert t.streams_pending().size == 0
