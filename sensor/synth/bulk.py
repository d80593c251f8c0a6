"""Benchmark captures: a realistic Lync traffic mix streamed to pcap in blocks, fast and with flat memory.

Media (about 99% of packets) is built column-wise by MediaBlockBuilder; everything else (TLS, SIP,
RTCP/SRTCP, HTTP, STUN) is played by the same conversation code as the labelled scenario, driven by a
time-ordered event queue, and merged into each block by timestamp.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO

import numpy as np

from sensor.synth import calls, http, media, sip, stun
from sensor.synth import packets as pk
from sensor.synth import tls as t
from sensor.synth.flow import Packet, TcpFlow, UdpFlow
from sensor.synth.media_block import Block, MediaBlockBuilder, Stream
from sensor.synth.pcapio import atomic_output, pcap_header, pcap_record_header
from sensor.synth.scenario import EDGE_EXT, EDGE_INT, FE1, FE2, GATEWAY, MEDIATION, START_US
from sensor.synth.tls_sessions import TlsPlan, exchange_app_data, negotiate
from sensor.synth.x509 import chain

TICK_US = media.PTIME_US
BLOCK_TICKS = 25  # 0.5 s of capture per block
CONCURRENT_CALLS = 400
MEAN_CALL_S = 330.0  # calls last 1-10 minutes
CLIENTS = 800
SRTP_SHARE = 0.9
Pending = tuple[int, int, int, bytes]  # (timestamp us, tie-break order, flow id, frame)
WEB_REQUESTS = (
    (
        "/autodiscover/autodiscoverservice.svc/root?originalDomain=contoso.com",
        "lyncdiscoverinternal.contoso.com",
    ),
    ("/abs/handler/D-0e2a-0e2b.lsabs?sig=abc", "lyncpool.contoso.com"),
)


@dataclass(frozen=True)
class BulkStats:
    """What a benchmark capture holds: packets, distinct 5-tuples, seconds from first to last packet."""

    packets: int
    flows: int
    duration: float


class _Sink(list[Packet]):
    """The `out` list of one slow-path flow: appended packets go straight to the simulation's pending heap."""

    def __init__(self, sim: _Sim, flow_id: int) -> None:
        super().__init__()
        self.sim, self.flow_id = sim, flow_id

    def append(self, p: Packet) -> None:
        self.sim.order += 1
        heapq.heappush(self.sim.pending, (round(p.ts * 1_000_000), self.sim.order, self.flow_id, p.data))


@dataclass
class _Call:
    id: int
    srtp: bool
    codec: media.Codec
    first_tick: int
    ssrcs: tuple[int, int]  # originator's, responder's
    rtcp: UdpFlow
    end_us: int
    client: int  # the client whose TLS connection carries the signalling of SRTP calls
    sip_flow: TcpFlow | None = None
    dialog: sip.Dialog | None = None


class _Sim:
    """Event-driven traffic model; media streams are handed to the block builder, the rest to `pending`."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.media = MediaBlockBuilder(np.random.default_rng(seed), START_US)
        self.events: list[tuple[int, int, Callable[[int], None]]] = []
        self.pending: list[Pending] = []
        self.order = 0
        self.flow_ids = 0
        self.streams: list[Stream] = []
        self.conns: dict[int, TcpFlow] = {}
        self.calls = 0
        names = ("pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com")
        pool = chain(self.rng, "pool01.contoso.com", names)
        fe_cert = chain(self.rng, "fe01.contoso.com", ("fe01.contoso.com",))[:2]
        self.client_plan = TlsPlan(t.TLS12, 0xC030, pool, "pool01.contoso.com")
        self.mtls_plan = dataclasses.replace(self.client_plan, request_cert=True, client_chain=fe_cert)
        for i in range(CLIENTS):
            self.at(START_US + self.rng.randrange(30_000_000), partial(self._open_client, i=i))
        for j, (a, z) in enumerate(((FE1, FE2), (FE2, FE1))):
            self.at(START_US + 5_000 * (j + 1), partial(self._open_mtls, a=a, z=z, j=j))
        for _ in range(CONCURRENT_CALLS):
            self.at(START_US + self.rng.randrange(2_000_000), lambda ts: self._call(ts, arrival=False))
        self.at(START_US + 2_000_000, lambda ts: self._call(ts, arrival=True))
        self.at(START_US + 300_000, self._http)

    def at(self, ts: int, fn: Callable[[int], None]) -> None:
        self.order += 1
        heapq.heappush(self.events, (ts, self.order, fn))

    def _flow_id(self) -> int:
        self.flow_ids += 1
        return self.flow_ids

    def tcp(self, orig: tuple[str, int], resp: tuple[str, int], rtt_us: int = 400) -> TcpFlow:
        fid = self._flow_id()
        seed = f"tcp:{fid}:{self.rng.random()}"
        return TcpFlow(_Sink(self, fid), orig[0], orig[1], resp[0], resp[1], seed, rtt_us)

    def udp(self, orig: tuple[str, int], resp: tuple[str, int]) -> UdpFlow:
        fid = self._flow_id()
        return UdpFlow(_Sink(self, fid), orig[0], orig[1], resp[0], resp[1], f"udp:{fid}:{self.rng.random()}")

    @staticmethod
    def client_ip(i: int) -> str:
        return f"10.0.{5 + i // 200}.{1 + i % 200}"

    def _open_client(self, ts: int, i: int) -> None:
        conn = self.tcp((self.client_ip(i), 49200 + i), (FE1 if i % 2 else FE2, 5061))
        ts = negotiate(conn, ts, self.client_plan)
        ts = exchange_app_data(conn, ts, t.TLS12, 4)  # REGISTER, 200, SUBSCRIBE, NOTIFY
        self.conns[i] = conn
        self.at(ts + self.rng.randrange(20_000_000, 60_000_000), lambda ts: self._keepalive(ts, i))

    def _keepalive(self, ts: int, i: int) -> None:
        conn = self.conns[i]
        ts = conn.send(ts, True, t.application_data(conn.rng, t.TLS12, self.rng.randrange(90, 200)))
        ts = conn.send(ts + 300, False, t.application_data(conn.rng, t.TLS12, self.rng.randrange(150, 600)))
        conn.ack(ts + 40_000, True)
        self.at(ts + self.rng.randrange(20_000_000, 60_000_000), lambda ts: self._keepalive(ts, i))

    def _open_mtls(self, ts: int, a: str, z: str, j: int) -> None:
        link = self.tcp((a, 50100 + j), (z, 5061))
        ts = negotiate(link, ts, self.mtls_plan)
        self.at(ts + 100_000, lambda ts: self._mtls(ts, link))

    def _mtls(self, ts: int, link: TcpFlow) -> None:
        ts = link.send(ts, True, t.application_data(link.rng, t.TLS12, self.rng.randrange(300, 2500)))
        link.send(ts + 500, False, t.application_data(link.rng, t.TLS12, self.rng.randrange(200, 900)))
        self.at(ts + self.rng.randrange(200_000, 1_500_000), lambda ts: self._mtls(ts, link))

    def _tls_signal(self, ts: int, client: int, sizes: tuple[int, ...]) -> int:
        """SIP inside the client's TLS connection (if open yet): records client -> FE, FE -> client, ..."""
        conn = self.conns.get(client)
        if conn is None:
            return ts
        for n, size in enumerate(sizes):
            ts = conn.send(ts + 1_000, n % 2 == 0, t.application_data(conn.rng, t.TLS12, size))
        return ts

    def _call(self, ts: int, arrival: bool) -> None:
        if arrival:
            rate = CONCURRENT_CALLS / MEAN_CALL_S
            self.at(ts + int(self.rng.expovariate(rate) * 1_000_000), lambda ts: self._call(ts, arrival=True))
        self.calls += 1
        cid, rng = self.calls, self.rng
        srtp = rng.random() < SRTP_SHARE
        port = 49152 + 2 * (cid % 4174)
        client = rng.randrange(CLIENTS)
        if srtp:
            codec = rng.choices((media.PCMU, media.G722, media.RTAUDIO), (20, 35, 45))[0]
            # Client media ports: the 50000-59999 audio range of the [CLIRANGE] QoS example.
            client_port = 50000 + 2 * (cid % 5000)
            other = (self.client_ip((client + rng.randrange(1, CLIENTS)) % CLIENTS), client_port)
            peer = rng.choices(((FE1, port), (FE2, port), (MEDIATION, port), other), (25, 25, 20, 30))[0]
            a, b = (self.client_ip(client), client_port), peer
        else:
            codec = rng.choices((media.PCMA, media.PCMU, media.G722, media.SIREN), (45, 35, 10, 10))[0]
            a, b = (GATEWAY, 20000 + 2 * (cid % 5000)), (MEDIATION, port)
        end_us = ts + int(rng.uniform(60.0, 600.0) * 1_000_000)
        first_tick = (ts - START_US) // TICK_US + 3  # media starts ~60 ms after the signalling
        ssrcs = (rng.getrandbits(32), rng.getrandbits(32))
        rtcp = self.udp((a[0], a[1] + 1), (b[0], b[1] + 1))
        call = _Call(cid, srtp, codec, first_tick, ssrcs, rtcp, end_us, client)
        if srtp:
            self._tls_signal(ts, client, (1900, 420, 650, 1850, 600))  # INVITE, 100, 180, 200, ACK
            if rng.random() < 0.3:
                self._stun(ts, a[0], 40000 + 2 * (cid % 5000))
        else:
            self._gateway_invite(ts, call, a, b)
        fid = self._flow_id()
        for side, (src, dst) in enumerate(((a, b), (b, a))):
            stream = Stream(
                flow_id=fid,
                src=src[0],
                dst=dst[0],
                sport=src[1],
                dport=dst[1],
                codec=codec,
                srtp=srtp,
                first_tick=first_tick + side,
                end_tick=(end_us - START_US) // TICK_US,
                phase_us=rng.randrange(TICK_US),
                ssrc=ssrcs[side],
                seq0=rng.getrandbits(16),
                ts0=rng.getrandbits(32),
                ipid0=rng.getrandbits(16),
                speech_offset=rng.randrange(100_000),
            )
            self.streams.append(stream)
        for from_orig, offset in ((True, 2_500_000), (False, 3_100_000)):
            start = START_US + first_tick * TICK_US + offset
            self.at(start, partial(self._rtcp, call=call, from_orig=from_orig, index=1))
        self.at(end_us, lambda ts: self._hang_up(ts, call))

    def _gateway_invite(self, ts: int, call: _Call, a: tuple[str, int], b: tuple[str, int]) -> None:
        flow = self.tcp((GATEWAY, 40000 + call.id % 20000), (MEDIATION, 5068))
        caller, callee = "sip:+14255550100@10.0.3.5", f"sip:+1425555{call.id % 10000:04d}@contoso.com"
        dialog = sip.Dialog(flow.rng, "TCP", (GATEWAY, 5066), (MEDIATION, 5068), caller, callee)
        offer = calls.Offer(a, "RTP/AVP", (call.codec.pt, 101))
        answer = calls.Offer(b, "RTP/AVP", (call.codec.pt, 101))
        calls.invite_dialog(flow, dialog, calls.SipLog(), flow.open(ts), offer, answer, ring_us=20_000)
        call.sip_flow, call.dialog = flow, dialog

    def _rtcp(self, ts: int, call: _Call, from_orig: bool, index: int) -> None:
        if ts >= call.end_us:
            return
        ssrc, peer = call.ssrcs if from_orig else call.ssrcs[::-1]
        sent = (ts - START_US) // TICK_US - call.first_tick
        step, size = call.codec.ts_step, call.codec.max_len
        compound = media.rtcp_sr(ssrc, ts, sent * step, sent, sent * size, peer)
        compound += media.rtcp_sdes(ssrc, f"{ssrc:08x}@contoso.com")
        call.rtcp.send(ts, from_orig, media.srtcp(compound, index, call.rtcp.rng) if call.srtp else compound)
        self.at(ts + calls.RTCP_INTERVAL_US, lambda ts: self._rtcp(ts, call, from_orig, index + 1))

    def _hang_up(self, ts: int, call: _Call) -> None:
        if call.sip_flow is not None and call.dialog is not None:
            flow = call.sip_flow
            ts = calls.hang_up(calls.sender(flow, calls.SipLog()), call.dialog, ts)
            flow.close(ts + 1_000)
        else:
            self._tls_signal(ts, call.client, (700, 520))  # BYE, 200

    def _stun(self, ts: int, client: str, port: int) -> None:
        """STUN binding on the Edge's external IP, MS-TURN allocate on its internal IP."""
        binding = self.udp((client, port), (EDGE_EXT, 3478))
        txid = binding.rng.randbytes(12)
        binding.send(ts + 100, True, stun.binding_request(txid))
        binding.send(ts + 1_600, False, stun.binding_response(txid, pk.packed(client), port))
        turn = self.udp((client, port + 1), (EDGE_INT, 3478))
        txid = turn.rng.randbytes(16)
        turn.send(ts + 200, True, stun.ms_turn_allocate_request(turn.rng, txid))
        relayed, mapped = (pk.packed(EDGE_EXT), 50000 + port % 10000), (pk.packed(client), port + 1)
        turn.send(ts + 1_100, False, stun.ms_turn_allocate_response(turn.rng, txid, relayed, mapped))

    def _http(self, ts: int) -> None:
        i = self.rng.randrange(CLIENTS)
        conn = self.tcp((self.client_ip(i), 60000 + self.flow_ids % 5000), (FE1, 80))
        target, host = self.rng.choice(WEB_REQUESTS)
        ts2 = conn.send(conn.open(ts) + 50, True, http.request("GET", target, host))
        ts2 = conn.send(
            ts2 + 2_000, False, http.response(200, "OK", "application/octet-stream", conn.rng.randbytes(900))
        )
        conn.close(ts2 + 50_000)
        self.at(ts + int(self.rng.expovariate(0.5) * 1_000_000) + 1, self._http)

    def run_until(self, ts: int) -> None:
        """Play every event scheduled before ts (their packets may lie later and stay pending)."""
        while self.events and self.events[0][0] < ts:
            when, _, fn = heapq.heappop(self.events)
            fn(when)

    def take_pending(self, ts: int) -> list[Pending]:
        taken = []
        while self.pending and self.pending[0][0] < ts:
            taken.append(heapq.heappop(self.pending))
        return taken


@dataclass
class _Progress:
    """Records written so far, the flows they belong to, and the first and last timestamps."""

    written: int = 0
    flows: set[int] = field(default_factory=set)
    first_us: int | None = None
    last_us: int | None = None

    def note(self, count: int, first_us: int, last_us: int) -> None:
        self.written += count
        self.first_us = first_us if self.first_us is None else self.first_us
        self.last_us = last_us


def _write_block(fh: BinaryIO, block: Block, slow: list[Pending], goal: int, p: _Progress) -> None:
    """Merge media and slow packets by timestamp and write them until `goal` records are in the file."""
    data = memoryview(block.data)  # type: ignore[arg-type]
    ends, done = block.ends, 0

    def media_up_to(pos: int) -> None:
        nonlocal done
        take = min(pos - done, goal - p.written)
        if take > 0:
            fh.write(data[(int(ends[done - 1]) if done else 0) : int(ends[done + take - 1])])
            p.flows.update(np.unique(block.flow_ids[done : done + take]).tolist())
            p.note(take, int(block.ts_us[done]), int(block.ts_us[done + take - 1]))
            done += take

    positions = np.searchsorted(block.ts_us, [s[0] for s in slow], side="right").tolist() if slow else []
    for (ts, _, fid, frame), pos in zip(slow, positions, strict=True):
        media_up_to(pos)
        if p.written == goal:
            return
        fh.write(pcap_record_header(ts, len(frame)) + frame)
        p.flows.add(fid)
        p.note(1, ts, ts)
    media_up_to(len(ends))


def write_bench_capture(path: str | os.PathLike[str], packets: int, seed: int = 1) -> BulkStats:
    """Write exactly `packets` records of the Lync mix to a classic Ethernet pcap (atomically)."""
    sim = _Sim(seed)
    progress, tick0 = _Progress(), 0
    with atomic_output(path) as fh:
        fh.write(pcap_header(pk.LINKTYPE_ETHERNET))
        while progress.written < packets:
            block_end = START_US + (tick0 + BLOCK_TICKS) * TICK_US
            sim.run_until(block_end)
            sim.streams = [s for s in sim.streams if s.end_tick > tick0]
            active = [s for s in sim.streams if s.first_tick < tick0 + BLOCK_TICKS]
            block = sim.media.build(active, tick0, BLOCK_TICKS)
            _write_block(fh, block, sim.take_pending(block_end), packets, progress)
            tick0 += BLOCK_TICKS
    first, last = progress.first_us or 0, progress.last_us or 0
    return BulkStats(progress.written, len(progress.flows), (last - first) / 1e6)
