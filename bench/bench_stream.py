"""Stream benchmark: `lync-sensor analyze` against nDPI's ndpiReader and tshark on a handshake-heavy and a
media-heavy capture, in one run on the same files.

Mixes:
  - handshake: N short TLS sessions to Lync ports (client SIP/TLS 5061, client HTTPS 443 to the web services,
    MTLS 5061 between Front End pool servers, Director and Mediation Server): SYN, ClientHello, server flight
    with a real RSA certificate chain (made with `cryptography`), client key exchange/CCS/Finished, a little
    application data, FIN. Built from a few played templates whose addresses, ports, sequence numbers, IP ids
    and times are rewritten column-wise (checksums updated), so 20,000 sessions take a second or two.
  - media: the Lync mix of sensor.synth.bulk (about 99% RTP/SRTP), the same file bench_analyze.py uses.
For each mix and file: packets/s and peak RSS of `lync-sensor analyze` end to end (capture in, Parquet,
rules and summary out; exit 1 = violations found is a result), of `ndpiReader -i FILE` (stats only) and of
`tshark -T fields -e frame.number`; then `analyze` on the same mix N times longer (peak RSS must stay within
20%). Results: a table on stdout, bench/out/stream-results.{md,json}.
Usage: python bench/bench_stream.py [--sessions 20000] [--media-packets 5000000] [--long-factor 5]
                                    [--mixes handshake,media] [--out bench/out] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sensor.synth import packets as pk  # noqa: E402
from sensor.synth import tls as t  # noqa: E402
from sensor.synth.flow import Packet, TcpFlow  # noqa: E402
from sensor.synth.pcapio import atomic_output, pcap_header  # noqa: E402
from sensor.synth.scenario import DIRECTOR, FE1, FE2, MEDIATION, START_US  # noqa: E402
from sensor.synth.tls_sessions import TlsPlan, full_handshake  # noqa: E402
from sensor.synth.x509 import Certificate  # noqa: E402

U8 = NDArray[np.uint8]
I64 = NDArray[np.int64]

# ---- the handshake-heavy mix ----------------------------------------------------------------------------

SESSIONS_PER_S = 400  # sign-in peak of a Front End pool: new TLS connections per second
CLIENT_HOSTS = 4000  # internal clients 10.0.5.1 .. 10.0.20.250
BATCH_SESSIONS = 4000  # sessions rewritten per numpy batch (memory stays flat for any length)
VARIANTS = 3  # templates per kind, played with different seeds (application data sizes differ)
POOL = (FE1, FE2)
MTLS_PEERS = (FE1, FE2, DIRECTOR, MEDIATION)
_T_CLIENT = "10.0.250.1"  # placeholder addresses of the played templates, rewritten per session
_T_SERVER = "10.0.250.2"

# Ethernet II + IPv4 (no options) + TCP offsets of the fields rewritten per session.
_ETH_DST_IP, _ETH_SRC_IP = 2, 8  # mac_for(): 02:00 + the internal IPv4 address
_IP_ID, _IP_SUM, _IP_SRC, _IP_DST = 18, 24, 26, 30
_TCP_SPORT, _TCP_SEQ, _TCP_ACK, _TCP_FLAGS, _TCP_SUM = 34, 38, 42, 47, 50
_REC = 16  # pcap record header


@dataclass(frozen=True)
class Kind:
    """One kind of session: who connects to which Lync port, how the TLS handshake goes, its share."""

    name: str
    share: float
    port: int
    mtls: bool
    plan: TlsPlan


@dataclass(frozen=True)
class Template:
    """One played session: frames (placeholder addresses), time offsets (us), sender side, ISNs and IP ids."""

    kind: int
    frames: list[bytes]
    offsets: list[int]
    from_orig: list[bool]
    isn: tuple[int, int]  # originator's, responder's
    ipid: tuple[int, int]


def real_chains() -> dict[str, list[Certificate]]:
    """RSA-2048 certificate chains signed for real (root CA, issuing CA, leaf), as an enterprise PKI issues them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso Ltd"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    def cert(
        subject: str, issuer: str, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey, sans: tuple[str, ...]
    ) -> Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2028, 1, 1, tzinfo=dt.UTC))
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH, x509.OID_CLIENT_AUTH]), critical=False)
        else:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        der = b.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        return Certificate(der, subject, sans)

    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    root_key, ca_key, leaf_key = keys
    root = cert("Contoso Root CA", "Contoso Root CA", root_key, root_key, ())
    issuing = cert("Contoso Issuing CA 01", "Contoso Root CA", ca_key, root_key, ())

    def leaf(cn: str, sans: tuple[str, ...]) -> list[Certificate]:
        return [cert(cn, "Contoso Issuing CA 01", leaf_key, ca_key, sans), issuing, root]

    return {
        "pool": leaf("pool01.contoso.com", ("pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com")),
        "web": leaf(
            "lyncweb.contoso.com",
            ("lyncweb.contoso.com", "lyncdiscoverinternal.contoso.com", "meet.contoso.com", "dialin.contoso.com"),
        ),
        "fe01": leaf("fe01.contoso.com", ("fe01.contoso.com", "pool01.contoso.com")),
        "fe02": leaf("fe02.contoso.com", ("fe02.contoso.com", "pool01.contoso.com")),
    }


def kinds(chains: dict[str, list[Certificate]]) -> list[Kind]:
    """The session kinds of a pool's sign-in peak and their shares."""
    sip12 = TlsPlan(t.TLS12, 0xC030, chains["pool"], "pool01.contoso.com", app_records=2)
    return [
        Kind("client SIP/TLS 5061, TLS 1.2", 0.30, 5061, False, sip12),
        Kind(
            "client SIP/TLS 5061, TLS 1.0",
            0.15,
            5061,
            False,
            dataclasses.replace(sip12, version=t.TLS10, suite=0x002F),
        ),
        Kind(
            "client HTTPS 443 (web services)",
            0.45,
            443,
            False,
            TlsPlan(t.TLS12, 0xC028, chains["web"], "lyncweb.contoso.com", app_records=2),
        ),
        Kind(
            "server MTLS 5061",
            0.10,
            5061,
            True,
            TlsPlan(
                t.TLS12, 0xC030, chains["fe02"], "fe02.contoso.com", request_cert=True, client_chain=chains["fe01"]
            ),
        ),
    ]


def play(kind_index: int, kind: Kind, variant: int) -> Template:
    """Play one whole session of this kind between the placeholder addresses."""
    out: list[Packet] = []
    flow = TcpFlow(out, _T_CLIENT, 50000, _T_SERVER, kind.port, f"hs:{kind_index}:{variant}", rtt_us=400)
    isn = (flow._next[True], flow._next[False])  # noqa: SLF001 - the ISNs the template starts from
    ipid = (flow._ident[True], flow._ident[False])  # noqa: SLF001
    full_handshake(flow, START_US, kind.plan)
    first = round(out[0].ts * 1e6)
    client = pk.packed(_T_CLIENT)
    return Template(
        kind_index,
        [p.data for p in out],
        [round(p.ts * 1e6) - first for p in out],
        [p.data[_IP_SRC:_IP_DST] == client for p in out],
        isn,
        ipid,
    )


def _be(values: NDArray[np.integer], dtype: str) -> U8:
    """Big-endian bytes of each value, one row per value."""
    arr = np.ascontiguousarray(values.astype(dtype))
    return arr.view(np.uint8).reshape(len(values), -1)


def _fold(total: I64) -> I64:
    for _ in range(3):
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(rows: U8) -> I64:
    """Sum of the big-endian 16-bit words of each row."""
    return np.ascontiguousarray(rows).view(">u2").astype(np.int64).sum(axis=1)


@dataclass
class Sessions:
    """One batch of sessions: template, start time, addresses, ports, ISNs, IP ids and RTT scale of each."""

    template: I64
    start_us: I64
    client: U8  # (n, 4)
    server: U8
    client_port: I64
    isn: NDArray[np.uint32]  # (n, 2)
    ipid: I64  # (n, 2)
    scale: NDArray[np.float64]


def _records(tpl: Template, s: Sessions, rows: I64) -> tuple[list[U8], list[I64], list[I64]]:
    """The pcap records of every packet of template `tpl` for the sessions `rows`: blocks, times, packet index."""
    n = len(rows)
    blocks, times, index = [], [], []
    for j, (frame, offset, from_orig) in enumerate(zip(tpl.frames, tpl.offsets, tpl.from_orig, strict=True)):
        length = len(frame)
        block = np.empty((n, _REC + length), np.uint8)
        block[:, _REC:] = np.frombuffer(frame, np.uint8)
        ts = s.start_us[rows] + np.rint(offset * s.scale[rows]).astype(np.int64)
        block[:, 0:4] = (ts // 1_000_000).astype("<u4").view(np.uint8).reshape(n, 4)
        block[:, 4:8] = (ts % 1_000_000).astype("<u4").view(np.uint8).reshape(n, 4)
        block[:, 8:16] = np.frombuffer(np.array([length, length], "<u4").tobytes(), np.uint8)
        f = block[:, _REC:]
        old = np.frombuffer(frame[_IP_SRC : _TCP_ACK + 4], np.uint8)
        src, dst = (s.client[rows], s.server[rows]) if from_orig else (s.server[rows], s.client[rows])
        sport, dport = (s.client_port[rows], None) if from_orig else (None, s.client_port[rows])
        f[:, _IP_SRC : _IP_SRC + 4], f[:, _IP_DST : _IP_DST + 4] = src, dst
        f[:, _ETH_SRC_IP : _ETH_SRC_IP + 4], f[:, _ETH_DST_IP : _ETH_DST_IP + 4] = src, dst
        if sport is not None:
            f[:, _TCP_SPORT : _TCP_SPORT + 2] = _be(sport, ">u2")
        if dport is not None:
            f[:, _TCP_SPORT + 2 : _TCP_SPORT + 4] = _be(dport, ">u2")
        me, peer = (0, 1) if from_orig else (1, 0)
        seq = int.from_bytes(frame[_TCP_SEQ : _TCP_SEQ + 4], "big")
        ack = int.from_bytes(frame[_TCP_ACK : _TCP_ACK + 4], "big")
        isn = s.isn[rows].astype(np.int64)
        f[:, _TCP_SEQ : _TCP_SEQ + 4] = _be((isn[:, me] + (seq - tpl.isn[me])) & 0xFFFFFFFF, ">u4")
        if frame[_TCP_FLAGS] & pk.ACK:
            f[:, _TCP_ACK : _TCP_ACK + 4] = _be((isn[:, peer] + (ack - tpl.isn[peer])) & 0xFFFFFFFF, ">u4")
        ident = int.from_bytes(frame[_IP_ID : _IP_ID + 2], "big")
        f[:, _IP_ID : _IP_ID + 2] = _be((s.ipid[rows, me] + (ident - tpl.ipid[me])) & 0xFFFF, ">u2")
        # IPv4 header checksum afresh; TCP checksum updated incrementally (RFC 1624 eqn 3) over the
        # pseudo-header addresses, ports, sequence and acknowledgement numbers, the only covered bytes rewritten.
        f[:, _IP_SUM : _IP_SUM + 2] = 0
        f[:, _IP_SUM : _IP_SUM + 2] = _be(~_fold(_words(f[:, 14:34])) & 0xFFFF, ">u2")
        old_sum = int.from_bytes(frame[_TCP_SUM : _TCP_SUM + 2], "big")
        old_words = int(np.frombuffer(old.tobytes(), ">u2").astype(np.int64).sum())
        total = (~old_sum & 0xFFFF) + (10 * 0xFFFF - old_words) + _words(f[:, _IP_SRC : _TCP_ACK + 4])
        f[:, _TCP_SUM : _TCP_SUM + 2] = _be(~_fold(total) & 0xFFFF, ">u2")
        blocks.append(block)
        times.append(ts)
        index.append(np.full(n, j, np.int64))
    return blocks, times, index


@dataclass
class _Pending:
    """Records built but not yet written (they may lie after the next batch's first packets)."""

    ts: I64
    order: I64  # session number * 64 + packet index: the order within one timestamp
    blob: bytes
    starts: I64
    ends: I64


def _write_until(fh: BinaryIO, p: _Pending, boundary: int) -> _Pending:
    """Write the pending records before `boundary` in capture order; return the rest."""
    order = np.lexsort((p.order, p.ts))
    ts, starts, ends = p.ts[order], p.starts[order], p.ends[order]
    cut = int(np.searchsorted(ts, boundary, side="left"))
    view = memoryview(p.blob)
    fh.write(b"".join(view[a:b] for a, b in zip(starts[:cut].tolist(), ends[:cut].tolist(), strict=True)))
    rest = [view[a:b] for a, b in zip(starts[cut:].tolist(), ends[cut:].tolist(), strict=True)]
    lens = ends[cut:] - starts[cut:]
    new_ends = np.cumsum(lens)
    return _Pending(ts[cut:], p.order[order][cut:], b"".join(rest), new_ends - lens, new_ends)


@dataclass(frozen=True)
class MixStats:
    """What a generated capture holds."""

    packets: int
    sessions: int
    duration: float


def _ip_rows(addresses: list[str]) -> U8:
    return np.array([list(ipaddress.IPv4Address(a).packed) for a in addresses], np.uint8)


def write_handshake_capture(path: str | os.PathLike[str], sessions: int, seed: int = 1) -> MixStats:
    """Write `sessions` short TLS sessions to Lync ports to a classic Ethernet pcap (atomically)."""
    rng = np.random.default_rng(seed)
    mix = kinds(real_chains())
    templates = [play(k, kind, v) for k, kind in enumerate(mix) for v in range(VARIANTS)]
    assert max(len(tp.frames) for tp in templates) < 64, "the order key holds 64 packets per session"
    shares = np.array([mix[tp.kind].share for tp in templates]) / VARIANTS
    # originating hosts: the clients, then the servers that open MTLS connections (FE1 and FE2 first)
    hosts = _ip_rows([f"10.0.{5 + i // 250}.{1 + i % 250}" for i in range(CLIENT_HOSTS)] + list(MTLS_PEERS))
    pool = _ip_rows(list(POOL))
    mtls = np.array([mix[tp.kind].mtls for tp in templates])
    next_port = np.zeros(CLIENT_HOSTS + len(MTLS_PEERS), np.int64)  # per originating host
    packets, now = 0, START_US
    pending = _Pending(np.empty(0, np.int64), np.empty(0, np.int64), b"", np.empty(0, np.int64), np.empty(0, np.int64))
    first_us = last_us = START_US
    with atomic_output(path) as fh:
        fh.write(pcap_header(pk.LINKTYPE_ETHERNET))
        for base in range(0, sessions, BATCH_SESSIONS):
            n = min(BATCH_SESSIONS, sessions - base)
            tpl = rng.choice(len(templates), n, p=shares)
            start = now + np.cumsum(rng.exponential(1e6 / SESSIONS_PER_S, n)).astype(np.int64)
            now = int(start[-1])
            is_mtls = mtls[tpl]
            peer = CLIENT_HOSTS + rng.integers(0, len(MTLS_PEERS), n)
            host = np.where(is_mtls, peer, rng.integers(0, CLIENT_HOSTS, n))
            # the server: a pool member, never the originating server itself
            server_i = rng.integers(0, len(POOL), n)
            same = is_mtls & (host - CLIENT_HOSTS == server_i)
            server_i[same] = 1 - server_i[same]
            # each originating host takes the next ephemeral port (49152-65535) for each new connection
            rank = np.zeros(n, np.int64)
            order = np.argsort(host, kind="stable")
            h_sorted = host[order]
            group_start = np.r_[0, np.flatnonzero(np.diff(h_sorted)) + 1]
            run = np.arange(n) - np.repeat(group_start, np.diff(np.r_[group_start, n]))
            rank[order] = run
            port = 49152 + (next_port[host] + rank) % 16384
            np.add.at(next_port, host, 1)
            s = Sessions(
                template=tpl,
                start_us=start,
                client=hosts[host],
                server=pool[server_i],
                client_port=port,
                isn=rng.integers(0, 1 << 32, (n, 2), dtype=np.uint32),
                ipid=rng.integers(0, 1 << 16, (n, 2)),
                scale=rng.uniform(0.5, 3.0, n),  # RTT and think time vary per client
            )
            blocks, times, orders = [], [], []
            for ti, tp in enumerate(templates):
                rows = np.flatnonzero(tpl == ti)
                if len(rows):
                    b, ts, idx = _records(tp, s, rows)
                    blocks += b
                    times += ts
                    orders += [(base + rows) * 64 + i for i in idx]
            sizes = np.concatenate([np.full(b.shape[0], b.shape[1], np.int64) for b in blocks])
            lens = np.r_[len(pending.blob), sizes]
            ends = np.cumsum(lens)
            new = _Pending(
                np.concatenate([pending.ts, *times]),
                np.concatenate([pending.order, *orders]),
                pending.blob + b"".join(b.tobytes() for b in blocks),
                np.r_[pending.starts, (ends - lens)[1:]],
                np.r_[pending.ends, ends[1:]],
            )
            packets += len(sizes)
            last_us = max(last_us, int(new.ts.max()))
            first_us = min(first_us, int(new.ts.min()))
            boundary = now if base + n < sessions else 1 << 62
            pending = _write_until(fh, new, boundary)
    return MixStats(packets, sessions, (last_us - first_us) / 1e6)


if __name__ == "__main__":
    t0 = time.monotonic()
    st = write_handshake_capture(sys.argv[1], int(sys.argv[2]))
    print(st, time.monotonic() - t0)
