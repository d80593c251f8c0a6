"""Real TLS 1.2 sessions (OpenSSL on both ends over memory BIOs) and the TCP segments and frames that carry them."""

from __future__ import annotations

import random
import ssl
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sensor.synth import packets as pk
from sensor.synth.pki import POOL, pki

CIPHER = "ECDHE-RSA-AES256-GCM-SHA384"  # 0xC030, the suite Schannel prefers ([CS81])
CIPHER_CODE = "0xC030"

# TLS content types (RFC 5246 §6.2.1).
_CHANGE_CIPHER_SPEC, _HANDSHAKE = 20, 22

# --- real TLS 1.2 sessions: OpenSSL on both ends, over memory BIOs -----------------------------------------------


@dataclass(frozen=True)
class TlsSession:
    """The bytes each side wrote, in order: (from client, bytes); the first `handshake` flights are the handshake."""

    flights: tuple[tuple[bool, bytes], ...]
    handshake: int


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _contexts(client_cert: bool, work: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    p = pki()
    (work / "server.pem").write_bytes(_pem(*p.chain()))
    (work / "server.key").write_bytes(_key_pem(p.server_key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.maximum_version = ssl.TLSVersion.TLSv1_2  # CertificateRequest and client Certificate stay visible
    server.set_ciphers(CIPHER)
    server.options |= ssl.OP_NO_TICKET
    server.load_cert_chain(work / "server.pem", work / "server.key")
    server.load_verify_locations(cadata=_pem(p.root).decode())
    # Required: a client without a certificate is refused; optional: it answers with an empty Certificate.
    server.verify_mode = ssl.CERT_REQUIRED if client_cert else ssl.CERT_OPTIONAL
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.load_verify_locations(cadata=_pem(p.root).decode())
    if client_cert:
        (work / "client.pem").write_bytes(_pem(p.client, p.intermediate))
        (work / "client.key").write_bytes(_key_pem(p.client_key))
        client.load_cert_chain(work / "client.pem", work / "client.key")
    return client, server


def _step(obj: ssl.SSLObject) -> bool:
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def tls_session(client_cert: bool, requests: Sequence[tuple[bytes, bytes]]) -> TlsSession:
    """A full TLS 1.2 handshake (server always sends CertificateRequest), then request/response exchanges."""
    with tempfile.TemporaryDirectory(prefix="netcond-") as tmp:
        client_ctx, server_ctx = _contexts(client_cert, Path(tmp))
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_ctx.wrap_bio(c_in, c_out, server_hostname=POOL)
        server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        flights: list[tuple[bool, bytes]] = []

        def move(from_client: bool) -> None:
            data = (c_out if from_client else s_out).read()
            if data:
                flights.append((from_client, data))
                (s_in if from_client else c_in).write(data)

        done = {True: False, False: False}
        for _ in range(10):
            for side, obj in ((True, client), (False, server)):
                done[side] = done[side] or _step(obj)
                move(side)
            if all(done.values()):
                break
        else:
            raise RuntimeError("TLS handshake did not complete")
        handshake = len(flights)
        for request, response in requests:
            client.write(request)
            move(True)
            if server.read(len(request) + 1) != request:
                raise RuntimeError("server did not read the request back")
            server.write(response)
            move(False)
            if client.read(len(response) + 1) != response:
                raise RuntimeError("client did not read the response back")
    return TlsSession(tuple(flights), handshake)


# --- TCP on the wire: segments with their stream offsets, then captured in any order ------------------------------


@dataclass(frozen=True)
class Segment:
    """One TCP segment; offset is its payload's position in the direction's stream (0 = first byte after SYN)."""

    from_orig: bool
    seq: int
    ack: int
    flags: int
    payload: bytes = b""
    offset: int = 0
    phase: str = "open"  # open, handshake, data, close
    flight: int = -1
    opts: bytes = b""


def tcp_conversation(session: TlsSession, mss: int, seed: str) -> list[Segment]:
    """SYN, SYN-ACK, ACK; each flight cut into MSS segments and acknowledged; FIN both ways."""
    rng = random.Random(seed)
    isn = {True: rng.randrange(1 << 32), False: rng.randrange(1 << 32)}
    sent = {True: 0, False: 0}
    out: list[Segment] = []

    def seq(side: bool) -> int:
        return (isn[side] + 1 + sent[side]) & 0xFFFFFFFF

    def ack(side: bool) -> int:
        return seq(not side)

    opts = pk.syn_options(mss)
    out.append(Segment(True, isn[True], 0, pk.SYN, opts=opts))
    out.append(Segment(False, isn[False], (isn[True] + 1) & 0xFFFFFFFF, pk.SYN | pk.ACK, opts=opts))
    out.append(Segment(True, seq(True), ack(True), pk.ACK))
    for i, (side, data) in enumerate(session.flights):
        phase = "handshake" if i < session.handshake else "data"
        for start in range(0, len(data), mss):
            chunk = data[start : start + mss]
            flags = pk.ACK | (pk.PSH if start + mss >= len(data) else 0)
            out.append(Segment(side, seq(side), ack(side), flags, chunk, sent[side], phase, i))
            sent[side] += len(chunk)
        out.append(Segment(not side, seq(not side), ack(not side), pk.ACK, phase=phase, flight=i))
    out.append(Segment(True, seq(True), ack(True), pk.FIN | pk.ACK, phase="close"))
    sent[True] += 1
    out.append(Segment(False, seq(False), ack(False), pk.FIN | pk.ACK, phase="close"))
    sent[False] += 1
    out.append(Segment(True, seq(True), ack(True), pk.ACK, phase="close"))
    return out


@dataclass(frozen=True)
class Endpoints:
    """The TCP connection's originator and responder address and port."""

    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int


def tcp_frames(ends: Endpoints, segments: Sequence[Segment]) -> list[bytes]:
    """Ethernet/IPv4 frames of the segments in the order given (IP ids count per sender as they appear)."""
    addr = {True: pk.packed(ends.orig_h), False: pk.packed(ends.resp_h)}
    port = {True: ends.orig_p, False: ends.resp_p}
    mac = {True: pk.mac_for(ends.orig_h), False: pk.mac_for(ends.resp_h)}
    ident = {True: 0x1000, False: 0x5000}
    frames = []
    for s in segments:
        src, dst = addr[s.from_orig], addr[not s.from_orig]
        seg = pk.tcp(
            src, dst, port[s.from_orig], port[not s.from_orig], s.seq, s.ack, s.flags, s.payload, options=s.opts
        )
        ip = pk.ipv4(src, dst, pk.IPPROTO_TCP, seg, ident[s.from_orig])
        ident[s.from_orig] += 1
        frames.append(pk.ethernet(mac[s.from_orig], mac[not s.from_orig], pk.ETH_IPV4, ip))
    return frames


def handshake_messages(stream: bytes) -> list[tuple[int, int, int]]:
    """(handshake type, start offset, end offset) of each plaintext handshake message in a TLS byte stream.

    Only for the generator's own bookkeeping (where does the CertificateRequest start?); records are walked
    from offset 0 and messages are not split across records by OpenSSL at these sizes. ChangeCipherSpec ends
    the walk: what follows it is encrypted."""
    out, pos = [], 0
    while pos + 5 <= len(stream):
        ctype, length = stream[pos], struct.unpack("!H", stream[pos + 3 : pos + 5])[0]
        if ctype == _CHANGE_CIPHER_SPEC:
            break
        body_start, end = pos + 5, pos + 5 + length
        if ctype == _HANDSHAKE:
            p = body_start
            while p + 4 <= end:
                hlen = int.from_bytes(stream[p + 1 : p + 4], "big")
                out.append((stream[p], p, p + 4 + hlen))
                p += 4 + hlen
        pos = end
    return out


def record_starts(stream: bytes) -> list[int]:
    """Offsets where TLS records begin in a byte stream that starts on a record (headers are always clear)."""
    out, pos = [], 0
    while pos + 5 <= len(stream):
        out.append(pos)
        pos += 5 + struct.unpack("!H", stream[pos + 3 : pos + 5])[0]
    return out
