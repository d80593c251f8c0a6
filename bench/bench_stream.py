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
    full_handshake(flow, START_US, kind.plan)
    first = round(out[0].ts * 1e6)
    client = pk.packed(_T_CLIENT)
    from_orig = [p.data[_IP_SRC:_IP_DST] == client for p in out]
    # the SYN and the SYN-ACK carry each side's ISN; each side's first packet its first IP id
    syn, syn_ack = out[0].data, out[from_orig.index(False)].data

    def field(frame: bytes, at: int, size: int) -> int:
        return int.from_bytes(frame[at : at + size], "big")

    return Template(
        kind_index,
        [p.data for p in out],
        [round(p.ts * 1e6) - first for p in out],
        from_orig,
        (field(syn, _TCP_SEQ, 4), field(syn_ack, _TCP_SEQ, 4)),
        (field(syn, _IP_ID, 2), field(syn_ack, _IP_ID, 2)),
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
    sums: I64 = np.ascontiguousarray(rows).view(">u2").astype(np.int64).sum(axis=1)
    return sums


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


# ---- the measurement ------------------------------------------------------------------------------------

TARGETS = {"handshake": {"ndpiReader": 0.5}, "media": {"ndpiReader": 1.0, "tshark": 25.0}}
RSS_GROWTH_TARGET = 20.0  # per cent, capture N times longer
# Runs one command with stdout to a file; prints its wall seconds, the peak RSS (KiB) of it and its children.
_WRAPPER = (
    "import resource,subprocess,sys,time\n"
    "with open(sys.argv[1],'wb') as out, open(sys.argv[2],'wb') as err:\n"
    "    t=time.monotonic();rc=subprocess.call(sys.argv[3:],stdout=out,stderr=err);e=time.monotonic()-t\n"
    "print(e,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,rc)\n"
)
_NDPI_TOTAL = re.compile(r"IP packets:\s+\d+\s+of\s+(\d+)\s+packets total")


@dataclass(frozen=True)
class Run:
    """One timed run of one tool over one capture."""

    tool: str
    mix: str
    capture: str
    packets: int
    seconds: float
    rss_mib: float
    exit_code: int

    @property
    def pps(self) -> float:
        return self.packets / self.seconds


def _timed(cmd: list[str], tmp: Path) -> tuple[float, float, int, Path]:
    """Wall seconds, peak RSS (MiB), exit code and stdout file of one command in a fresh wrapper process."""
    out, err = tmp / "stdout", tmp / "stderr"
    r = subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(out), str(err), *cmd], capture_output=True, text=True, check=True
    )
    secs, rss, rc = r.stdout.split()
    if int(rc) not in (0, 1):
        tail = err.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"benchmark command failed ({rc}): {' '.join(cmd)}: {' / '.join(tail)}")
    return float(secs), int(rss) / 1024, int(rc), out


def sensor_cmd(path: Path, lake: Path) -> list[str]:
    exe = shutil.which("lync-sensor") or str(Path(sys.executable).with_name("lync-sensor"))
    config = ROOT / "deploy" / "lync-sensor.example.toml"
    return [exe, "analyze", str(path), "--config", str(config), "--lake", str(lake), "--no-progress", "--json"]


def run_tool(tool: str, mix: str, path: Path, packets: int, tmp: Path) -> Run:
    """Time one tool over the whole capture and check it saw every packet."""
    lake = Path(tempfile.mkdtemp(prefix="lake-", dir=tmp))
    cmd = {
        # exit 1 = a rule found violations: a result, not a failure
        "lync-sensor analyze": sensor_cmd(path, lake),
        # without -q (which prints nothing) ndpiReader prints its statistics only; -v would list every flow
        "ndpiReader": ["ndpiReader", "-i", str(path)],
        "tshark": ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"],
    }[tool]
    secs, rss, rc, out = _timed(cmd, tmp)
    if tool == "lync-sensor analyze":
        seen = int(json.loads(out.read_text())["packets"])
    elif tool == "ndpiReader":
        m = _NDPI_TOTAL.search(out.read_text(errors="replace"))
        seen = int(m.group(1)) if m else -1
    else:
        with out.open("rb") as fh:
            seen = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    if seen != packets:
        raise SystemExit(f"{tool} saw {seen:,} packets of {path.name}, which holds {packets:,}")
    shutil.rmtree(lake, ignore_errors=True)
    return Run(tool, mix, path.name, packets, secs, rss, rc)


def best(tool: str, mix: str, path: Path, packets: int, tmp: Path, repeat: int) -> Run:
    """The fastest of `repeat` runs (the least disturbed by other work on the machine)."""
    return min((run_tool(tool, mix, path, packets, tmp) for _ in range(repeat)), key=lambda r: r.seconds)


def handshake_capture(out: Path, sessions: int, seed: int = 1) -> tuple[Path, int]:
    """The handshake-heavy capture of this many sessions, generated once and reused (with a metadata file)."""
    path = out / f"lync-handshake-{sessions}.pcap"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists() and json.loads(meta.read_text()).get("sessions") == sessions:
        return path, int(json.loads(meta.read_text())["packets"])
    t0 = time.monotonic()
    stats = write_handshake_capture(path, sessions, seed)
    meta.write_text(json.dumps(dataclasses.asdict(stats)))
    print(
        f"generated {path.name}: {stats.packets:,} packets, {sessions:,} TLS sessions, "
        f"{stats.duration:.0f} s of traffic in {time.monotonic() - t0:.1f} s",
        file=sys.stderr,
    )
    return path, stats.packets


def media_capture(out: Path, packets: int) -> tuple[Path, int]:
    """The media-heavy Lync mix of bench_analyze.py (sensor.synth.bulk)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_analyze import capture

    return capture(out, packets), packets


def _revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{git('rev-parse', '--short', 'HEAD') or 'unknown'}{dirty}"


def _k(pps: float) -> str:
    return f"{pps / 1e6:.2f} M" if pps >= 1e6 else f"{pps / 1e3:,.0f} k"


def _verdict(ratio: float, target: float) -> str:
    return "met" if ratio >= target else f"missed by {target / ratio:.1f}x"


@dataclass
class MixResult:
    """Every run over one mix: the three tools on the base capture, analyze on the longer one."""

    mix: str
    label: str
    capture: str
    bytes: int
    packets: int
    runs: list[Run]
    long: Run | None = None
    long_label: str = ""
    long_ndpi: Run | None = None  # ndpiReader on the longer capture: the steady-state comparison

    def marginal(self, run: Run | None, base: Run) -> float | None:
        """Packets/s over the packets the longer capture adds: the rate once start-up is paid."""
        if run is None or run.seconds <= base.seconds:
            return None
        return (run.packets - base.packets) / (run.seconds - base.seconds)

    def steady_ratio(self) -> float | None:
        ours = self.marginal(self.long, self.run("lync-sensor analyze"))
        peer = self.marginal(self.long_ndpi, self.run("ndpiReader"))
        return ours / peer if ours and peer else None

    def run(self, tool: str) -> Run:
        return next(r for r in self.runs if r.tool == tool)

    def ratio(self, peer: str) -> float:
        return self.run("lync-sensor analyze").pps / self.run(peer).pps

    def rss_growth(self) -> float | None:
        if self.long is None:
            return None
        base = self.run("lync-sensor analyze").rss_mib
        return (self.long.rss_mib - base) / base * 100

    def as_json(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["runs"] = [dataclasses.asdict(r) | {"pps": r.pps} for r in self.runs]
        if self.long is not None:
            out["long"] = dataclasses.asdict(self.long) | {"pps": self.long.pps}
        if self.long_ndpi is not None:
            out["long_ndpi"] = dataclasses.asdict(self.long_ndpi) | {"pps": self.long_ndpi.pps}
        out["steady_ratio_ndpi"] = self.steady_ratio()
        out["ratios"] = {peer: self.ratio(peer) for peer in ("ndpiReader", "tshark")}
        out["targets"] = TARGETS[self.mix]
        out["rss_growth_pct"] = self.rss_growth()
        return out


def report(
    header: dict[str, str], load_start: float, long_factor: int, mixes: list[MixResult], startup: list[Run]
) -> str:
    """The results as Markdown tables and one verdict per target."""
    lines = [
        f"Machine: {header['machine']}; lync-sensor {header['revision']}; {header['date']}; "
        f"load average at start {load_start:.2f}; peak RSS = the largest process of the run (getrusage)",
        "",
        "| capture (same file, same run) | packets | lync-sensor analyze | nDPI ndpiReader | tshark -T fields |"
        " analyze / ndpiReader | analyze / tshark |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for m in mixes:
        cells = [f"{_k(r.pps)} packets/s, {r.rss_mib:,.0f} MiB" for r in m.runs]
        targets = TARGETS[m.mix]
        for peer in ("ndpiReader", "tshark"):
            target = f" (target >= {targets[peer]:g}x)" if peer in targets else ""
            cells.append(f"{m.ratio(peer):.2f}x{target}")
        lines.append(f"| {m.label} | {m.packets:,} | " + " | ".join(cells) + " |")
        verdicts += [
            f"{m.mix}: analyze = {m.ratio(p):.2f}x {p}'s packets/s (target >= {t:g}x): {_verdict(m.ratio(p), t)}"
            for p, t in targets.items()
        ]
    longs = [m for m in mixes if m.long is not None]
    if longs:
        lines += [
            "",
            f"Memory: peak RSS of lync-sensor analyze on the same mix {long_factor}x longer",
            "",
            "| capture | packets | packets/s | peak RSS | peak RSS at 1x | growth |",
            "|---|---:|---:|---:|---:|---:|",
        ]
    for m in longs:
        assert m.long is not None
        growth = m.rss_growth() or 0.0
        base = m.run("lync-sensor analyze").rss_mib
        lines.append(
            f"| {m.long_label} | {m.long.packets:,} | {_k(m.long.pps)} packets/s | {m.long.rss_mib:,.0f} MiB | "
            f"{base:,.0f} MiB | {growth:+.1f}% |"
        )
        ok = "met" if abs(growth) <= RSS_GROWTH_TARGET else "missed"
        verdicts.append(
            f"{m.mix}: peak RSS {growth:+.1f}% for a capture {long_factor}x longer "
            f"(target within {RSS_GROWTH_TARGET:g}%): {ok}"
        )
    steady = [m for m in mixes if m.steady_ratio() is not None]
    if steady:
        lines += [
            "",
            f"Steady state: packets/s over the packets the {long_factor}x capture adds (its time minus the 1x time), "
            "start-up paid once",
            "",
            "| mix | lync-sensor analyze | nDPI ndpiReader | analyze / ndpiReader |",
            "|---|---:|---:|---:|",
        ]
    for m in steady:
        ours = m.marginal(m.long, m.run("lync-sensor analyze")) or 0.0
        peer = m.marginal(m.long_ndpi, m.run("ndpiReader")) or 0.0
        lines.append(f"| {m.mix} | {_k(ours)} packets/s | {_k(peer)} packets/s | {m.steady_ratio():.2f}x |")
    if startup:
        lines += [
            "",
            f"Start-up: one TLS session ({startup[0].packets} packets) end to end: "
            + ", ".join(f"{r.tool} {r.seconds:.2f} s" for r in startup),
        ]
    lines += ["", *verdicts]
    if load_start > 1.0:
        lines.append("note: the machine was busy when the run started; the packets/s above are low bounds")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixes", default="handshake,media", help="comma-separated: handshake, media")
    ap.add_argument("--sessions", type=int, default=20_000, help="TLS sessions in the handshake-heavy mix")
    ap.add_argument("--media-packets", type=int, default=5_000_000, help="packets in the media-heavy mix")
    ap.add_argument("--long-factor", type=int, default=5, help="memory check: the same mix N times longer (1 = off)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool and capture; the fastest counts")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--keep", action="store_true", help="keep the generated captures for the next run")
    args = ap.parse_args()
    mixes = [m.strip() for m in args.mixes.split(",") if m.strip()]
    if not mixes or any(m not in TARGETS for m in mixes):
        print(f"bench_stream: --mixes takes handshake and/or media, not {args.mixes!r}", file=sys.stderr)
        return 2
    missing = [tool for tool in ("ndpiReader", "tshark") if shutil.which(tool) is None]
    if missing:
        print(f"bench_stream: {', '.join(missing)} not installed (sh deploy/bootstrap.sh bench)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    header = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "revision": _revision(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    load_start = os.getloadavg()[0]
    generated: list[Path] = []

    def make(mix: str, factor: int) -> tuple[Path, int, str]:
        if mix == "handshake":
            path, n = handshake_capture(args.out, args.sessions * factor)
            label = f"handshake-heavy, {args.sessions * factor:,} TLS sessions"
        else:
            path, n = media_capture(args.out, args.media_packets * factor)
            label = "media-heavy (Lync mix, ~99% RTP/SRTP)"
        generated.extend([path, path.with_suffix(".json")])
        return path, n, label

    results: list[MixResult] = []
    with tempfile.TemporaryDirectory(prefix="lync-bench-stream-") as tmp_s:
        tmp = Path(tmp_s)
        # warm the compile cache on small captures of both mixes: the steady state a deployed sensor sees
        warm_hs = tmp / "warm-handshake.pcap"
        write_handshake_capture(warm_hs, 200)
        warm_media, _ = media_capture(tmp, 20_000)
        for warm in (warm_hs, warm_media):
            _timed(sensor_cmd(warm, Path(tempfile.mkdtemp(prefix="lake-", dir=tmp))), tmp)
        for mix in mixes:
            path, packets, label = make(mix, 1)
            tools = ("lync-sensor analyze", "ndpiReader", "tshark")
            m = MixResult(mix, label, path.name, path.stat().st_size, packets, [])
            for tool in tools:
                m.runs.append(best(tool, mix, path, packets, tmp, args.repeat))
                r = m.runs[-1]
                print(f"{mix}: {tool}: {r.pps:,.0f} packets/s, peak RSS {r.rss_mib:,.0f} MiB", file=sys.stderr)
            if args.long_factor > 1:
                lpath, lpackets, m.long_label = make(mix, args.long_factor)
                m.long = best("lync-sensor analyze", mix, lpath, lpackets, tmp, args.repeat)
                m.long_ndpi = best("ndpiReader", mix, lpath, lpackets, tmp, args.repeat)
            results.append(m)
        # the fixed cost of one run (interpreter, compiled-code cache, rules engine, lake) against the peer's
        one = tmp / "one-session.pcap"
        stats = write_handshake_capture(one, 1)
        startup = [
            best(tool, "handshake", one, stats.packets, tmp, args.repeat)
            for tool in ("lync-sensor analyze", "ndpiReader")
        ]
    text = report(header, load_start, args.long_factor, results, startup)
    print(text)
    (args.out / "stream-results.md").write_text(text + "\n")
    doc = {
        **header,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "long_factor": args.long_factor,
        "mixes": {m.mix: m.as_json() for m in results},
        "startup": [dataclasses.asdict(r) for r in startup],
    }
    (args.out / "stream-results.json").write_text(json.dumps(doc, indent=1) + "\n")
    if not args.keep:
        for p in generated:
            p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
