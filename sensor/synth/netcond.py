"""Network-condition cases: real OpenSSL handshakes and long-SDP SIP, reordered, lost, duplicated, fragmented.

Each case is a small capture plus what a sensor must report about it: per flow the facts (null where the bytes
on the wire cannot show them) and the findings (rule id -> severity). The TLS sessions are real: python's ssl
module (OpenSSL) talks to itself over memory BIOs, with a root -> intermediate -> leaf chain of about 6 KB
made with `cryptography` from fixed RSA keys, so only the handshake randoms change from run to run.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
import ssl
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sensor.synth import packets as pk
from sensor.synth import sip
from sensor.synth.pcapio import PcapWriter, atomic_output

# The issue's example site (tests/conftest.py ISSUE_EXAMPLE_TOML); the IPv6 addresses are added by SITE_V6.
FE1, FE2, MEDIATION = "10.0.1.10", "10.0.1.11", "10.0.1.20"
FE1_V6, MEDIATION_V6 = "fd00:1::10", "fd00:1::20"
SITE_V6 = {"front_end": FE1_V6, "mediation": MEDIATION_V6, "internal": "fd00::/8"}
SIP_TLS, SIP_UDP, CLIENT_PORT = 5061, 5060, 50123
START_US = 1_795_687_200 * 1_000_000  # 2026-11-26T10:00:00Z
GAP_US = 150  # between consecutive captured frames
POOL = "pool01.contoso.com"
CIPHER = "ECDHE-RSA-AES256-GCM-SHA384"  # 0xC030, the suite Schannel prefers ([CS81])
CIPHER_CODE = "0xC030"

# TLS content and handshake types (RFC 5246 §6.2.1, §7.4).
_CHANGE_CIPHER_SPEC, _HANDSHAKE = 20, 22
_HS_CERTIFICATE, _HS_CERTIFICATE_REQUEST = 11, 13

Facts = dict[str, object]

# --- fixed RSA keys: primes drawn from a seeded generator, so every run builds the same certificates ------------

_SMALL_PRIMES = [p for p in range(3, 20000, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))]
_SMALL_PRODUCT = functools.reduce(lambda a, b: a * b, _SMALL_PRIMES)


def _probable_prime(n: int, rng: random.Random, rounds: int = 20) -> bool:
    """Miller-Rabin with bases from rng (a composite passes 20 rounds with probability below 4^-20)."""
    if math.gcd(n, _SMALL_PRODUCT) != 1:
        return False  # callers ask about numbers far above the small primes
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(rng: random.Random, bits: int, e: int) -> int:
    while True:
        n = rng.getrandbits(bits) | (3 << (bits - 2)) | 1  # top two bits set: the product has 2*bits bits
        if (n - 1) % e and _probable_prime(n, rng):
            return n


@functools.cache
def rsa_key(seed: str, bits: int) -> rsa.RSAPrivateKey:
    """An RSA key that depends only on (seed, bits)."""
    rng, e = random.Random(f"netcond-rsa-{seed}-{bits}"), 65537
    p = _prime(rng, bits // 2, e)
    q = _prime(rng, bits // 2, e)
    while q == p:
        q = _prime(rng, bits // 2, e)
    n, d = p * q, pow(e, -1, (p - 1) * (q - 1))
    public = rsa.RSAPublicNumbers(e, n)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), public
    )
    return numbers.private_key()


# --- the PKI: root -> intermediate -> server leaf (a Lync pool certificate with its many SANs) and client leaf ---

_NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_NOT_AFTER = dt.datetime(2034, 1, 1, tzinfo=dt.UTC)
SIP_DOMAINS = (
    "fabrikam.com",
    "litwareinc.com",
    "adatum.com",
    "northwindtraders.com",
    "tailspintoys.com",
    "wingtiptoys.com",
    "woodgrovebank.com",
    "proseware.com",
    "fourthcoffee.com",
    "lucernepublishing.com",
    "margiestravel.com",
    "treyresearch.net",
    "cohovineyard.com",
    "alpineskihouse.com",
    "blueyonderairlines.com",
    "wideworldimporters.com",
)
# What a Lync Server 2013 Front End pool certificate names: pool, servers, simple URLs, and each SIP domain.
POOL_SANS = (
    POOL,
    "fe01.contoso.com",
    "fe02.contoso.com",
    "fe03.contoso.com",
    "sip.contoso.com",
    "meet.contoso.com",
    "dialin.contoso.com",
    "admin.contoso.com",
    "lyncdiscover.contoso.com",
    "lyncdiscoverinternal.contoso.com",
    "webpool01.contoso.com",
    "webext.contoso.com",
    *(f"{host}.{domain}" for domain in SIP_DOMAINS for host in ("sip", "meet", "dialin", "lyncdiscover")),
)


_POLICY_NOTICE = (
    "Issued under the Contoso certification practice statement to Contoso Unified Communications servers only; "
    "reliance by others is at their own risk. See the CPS for terms."
)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso Ltd"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Unified Communications"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: str,
    issuer_key: rsa.RSAPrivateKey,
    serial: int,
    ca: bool,
    sans: Sequence[str] = (),
) -> x509.Certificate:
    """RSA PKCS#1 v1.5 signatures are deterministic, so the same inputs give the same DER."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(f"http://pki.contoso.com/crl/{issuer.replace(' ', '')}.crl")],
                        None,
                        None,
                        None,
                    )
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.CertificatePolicies(
                [
                    x509.PolicyInformation(
                        x509.ObjectIdentifier("1.3.6.1.4.1.311.21.8.1.1"),
                        ["http://pki.contoso.com/cps.html", x509.UserNotice(None, _POLICY_NOTICE)],
                    )
                ]
            ),
            critical=False,
        )
    )
    if issuer != subject:
        aia = x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier(f"http://pki.contoso.com/aia/{issuer.replace(' ', '')}.crt"),
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([aia]), critical=False)
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        usage = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
        builder = builder.add_extension(usage, critical=True).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    if sans:
        names = [x509.DNSName(s) for s in sans]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    """The site's certificates; chain() is what the server sends: leaf, intermediate, root."""

    root: x509.Certificate
    intermediate: x509.Certificate
    server: x509.Certificate
    client: x509.Certificate
    server_key: rsa.RSAPrivateKey
    client_key: rsa.RSAPrivateKey

    def chain(self) -> list[x509.Certificate]:
        return [self.server, self.intermediate, self.root]

    def chain_bytes(self) -> int:
        return sum(len(c.public_bytes(serialization.Encoding.DER)) for c in self.chain())


@functools.cache
def pki() -> Pki:
    """The site's root and issuing CA, the front-end pool's server certificate and a client certificate (built once)."""
    root_key, inter_key = rsa_key("root", 2048), rsa_key("intermediate", 2048)
    server_key, client_key = rsa_key("server", 2048), rsa_key("client", 2048)
    root_cn, inter_cn = "Contoso Root CA", "Contoso Issuing CA 01"
    root = _cert(root_cn, root_key, root_cn, root_key, 0x1001, ca=True)
    inter = _cert(inter_cn, inter_key, root_cn, root_key, 0x1002, ca=True)
    server = _cert(POOL, server_key, inter_cn, inter_key, 0x2001, ca=False, sans=POOL_SANS)
    client = _cert("fe02.contoso.com", client_key, inter_cn, inter_key, 0x2002, ca=False, sans=("fe02.contoso.com",))
    return Pki(root, inter, server, client, server_key, client_key)


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


def _sip_over_tls() -> list[tuple[bytes, bytes]]:
    """Two Front Ends exchanging SIP inside the session: a 3 KB NOTIFY each way is several segments."""
    rng = random.Random("netcond-sip-tls")
    dialog = sip.Dialog(rng, "TLS", (FE2, CLIENT_PORT), (FE1, SIP_TLS), f"sip:{POOL}", f"sip:{POOL}")
    body = (rng.randbytes(1200).hex() + "\r\n").encode()
    notify = dialog.request("NOTIFY", body, extra=(("Event", "registration"),))
    return [(notify, dialog.respond(notify, 200, "OK", body))]


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


# --- cases -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowExpect:
    """One flow the sensor must report, its facts (None = must be null) and its findings (rule -> severity).

    oriented=False: either end may be the originator (the first datagram of the flow was damaged on purpose)."""

    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str
    facts: Facts
    findings: dict[str, str]
    oriented: bool = True


@dataclass(frozen=True)
class Case:
    """A small capture, what the sensor must report, and what Wireshark (whole file) must find in it."""

    name: str
    why: str
    frames: tuple[bytes, ...]
    flows: tuple[FlowExpect, ...]
    wireshark: Facts = field(default_factory=dict)


def write_case(case: Case, directory: Path) -> Path:
    """The case as a classic pcap (Ethernet) in directory; frames GAP_US apart in capture order."""
    path = Path(directory) / f"{case.name}.pcap"
    with atomic_output(path) as fh:
        writer = PcapWriter(fh, pk.LINKTYPE_ETHERNET)
        for i, frame in enumerate(case.frames):
            writer.write(START_US + i * GAP_US, frame)
    return path


def tls_facts(
    first_byte: int | None = 0x16,
    version: str | None = "TLSv12",
    cipher: str | None = CIPHER_CODE,
    server_cert: bool | None = True,
    requested: bool | None = True,
    client_cert: bool | None = True,
) -> Facts:
    """The TLS columns a case expects; the defaults are a whole mutual-TLS 1.2 handshake."""
    return {
        "orig_first_byte": first_byte,
        "tls_version": version,
        "tls_cipher": cipher,
        "tls_server_cert": server_cert,
        "tls_cert_requested": requested,
        "tls_client_cert": client_cert,
    }


TLS_ENDS = Endpoints(FE2, CLIENT_PORT, FE1, SIP_TLS)
Transform = Callable[[list[Segment]], list[Segment]]


def _data(segs: Sequence[Segment], side: bool, phase: str = "handshake") -> list[int]:
    """Indexes of the payload-carrying segments of one direction in one phase."""
    return [i for i, s in enumerate(segs) if s.from_orig == side and s.payload and s.phase == phase]


def record_starts(stream: bytes) -> list[int]:
    """Offsets where TLS records begin in a byte stream that starts on a record (headers are always clear)."""
    out, pos = [], 0
    while pos + 5 <= len(stream):
        out.append(pos)
        pos += 5 + struct.unpack("!H", stream[pos + 3 : pos + 5])[0]
    return out


def _reorder(segs: list[Segment]) -> list[Segment]:
    """Per direction, the handshake segments are permuted over their capture slots: a segment that starts in
    the middle of a record comes first (what a sensor reading in capture order takes for the stream's start),
    the stream's first segment comes last, the rest shuffled."""
    out = list(segs)
    rng = random.Random("netcond-reorder")
    for side in (True, False):
        slots = _data(out, side)
        ordered = sorted((out[i] for i in slots), key=lambda seg: seg.offset)
        starts = set(record_starts(b"".join(seg.payload for seg in ordered)))
        first, rest = ordered[0], ordered[1:]
        rng.shuffle(rest)
        lead = next(j for j, seg in enumerate(rest) if seg.offset not in starts)
        rest.insert(0, rest.pop(lead))
        for i, seg in zip(slots, [*rest, first], strict=True):
            out[i] = seg
    return out


def _retransmit(different: bool) -> Transform:
    def apply(segs: list[Segment]) -> list[Segment]:
        """Copies of each direction's first data segment after the client's second flight (first copy wins)."""
        firsts = [segs[_data(segs, side)[0]] for side in (True, False)]
        copies = []
        for s in firsts:
            payload = s.payload
            if different:  # a copy that, read instead of the original, would look like plaintext SIP
                payload = (b"NEGOTIATE sip:" + b"x" * len(payload))[: len(payload)]
            copies.append(Segment(s.from_orig, s.seq, s.ack, s.flags, payload, s.offset, s.phase, s.flight))
        at = _data(segs, True)[-1] + 1
        return segs[:at] + copies + segs[at:]

    return apply


def _drop_certificate_request(segs: list[Segment]) -> list[Segment]:
    """Lose the server segment that carries the start of the CertificateRequest (after the whole Certificate)."""
    flight = b"".join(s.payload for s in segs if not s.from_orig and s.flight == 1)
    msgs = {t: (a, b) for t, a, b in handshake_messages(flight)}
    cert_end, req_start = msgs[_HS_CERTIFICATE][1], msgs[_HS_CERTIFICATE_REQUEST][0]
    for i, s in enumerate(segs):
        if not s.from_orig and s.flight == 1 and s.offset <= req_start < s.offset + len(s.payload):
            if s.offset < cert_end:
                raise ValueError("this MSS puts the Certificate's tail in the lost segment: choose another")
            return segs[:i] + segs[i + 1 :]
    raise ValueError("no CertificateRequest in the server flight")


def _drop_after_handshake(segs: list[Segment]) -> list[Segment]:
    i = _data(segs, True, "data")[1]
    return segs[:i] + segs[i + 1 :]


def _truncate_server_flight(keep: int) -> Transform:
    def apply(segs: list[Segment]) -> list[Segment]:
        """The capture ends after `keep` segments of the server's first flight."""
        return segs[: [i for i in _data(segs, False) if segs[i].flight == 1][keep - 1] + 1]

    return apply


def _midstream(segs: list[Segment]) -> list[Segment]:
    """The capture starts at the client's second flight: no SYN, no hellos, no server certificate flight."""
    return segs[_data(segs, True)[1] :]


def _duplicate(segs: list[Segment]) -> list[Segment]:
    return [s for s in segs for _ in range(2)]


def _tcp_case(
    name: str,
    why: str,
    mss: int,
    transform: Transform | None,
    facts: Facts,
    findings: dict[str, str],
    client_cert: bool = True,
) -> Case:
    session = tls_session(client_cert, _sip_over_tls())
    segs = tcp_conversation(session, mss, f"netcond-{name}")
    if transform is not None:
        segs = transform(segs)
    ends = TLS_ENDS
    flow = FlowExpect(ends.orig_h, ends.orig_p, ends.resp_h, ends.resp_p, "tcp", {"app": "tls", **facts}, findings)
    wireshark = dict(facts)
    if mss <= 256 and facts["tls_server_cert"]:
        # the whole Certificate record is reassembled from at least 20 segments
        wireshark["min_certificate_segments"] = 20
    return Case(name, why, tuple(tcp_frames(TLS_ENDS, segs)), (flow,), wireshark)


def tcp_cases() -> list[Case]:
    """Front End -> Front End SIP over MTLS on 5061 (R1's territory) under each TCP condition."""
    complete, mtls_missing = tls_facts(), {"R1": "violation"}
    empty = tls_facts(client_cert=False)
    return [
        _tcp_case("tcp-in-order", "baseline: every segment once, in order", 1460, None, complete, {}),
        _tcp_case("tcp-reordered", "each direction's first segment arrives last", 536, _reorder, complete, {}),
        _tcp_case("tcp-retransmit-same", "first segments retransmitted, same bytes", 536, _retransmit(False),
                  complete, {}),
        _tcp_case(
            "tcp-retransmit-different", "retransmitted copies carry other bytes: first copy wins", 536,
            _retransmit(True), complete, {},
        ),
        _tcp_case(
            "tcp-hole-in-handshake", "the segment with the CertificateRequest is lost: past the hole is unknown", 512,
            _drop_certificate_request, tls_facts(requested=None), {},
        ),
        _tcp_case("tcp-hole-after-handshake", "a data segment after the handshake is lost", 536,
                  _drop_after_handshake, complete, {}),
        _tcp_case("tcp-long-server-flight", "3-certificate chain over 20+ segments (MSS 256)", 256, None, complete, {}),
        _tcp_case("tcp-empty-client-cert", "CertificateRequest answered by an empty Certificate", 1460, None, empty,
                  mtls_missing, client_cert=False),
        _tcp_case(
            "tcp-empty-client-cert-long-flight", "the same behind a 20+ segment server flight", 256, None, empty,
            mtls_missing, client_cert=False,
        ),
        _tcp_case(
            "tcp-truncated-server-flight", "the capture ends 10 segments into the server flight", 256,
            _truncate_server_flight(10), tls_facts(server_cert=None, requested=None, client_cert=None),
            {"R1": "warning"},
        ),
        _tcp_case(
            "tcp-midstream", "picked up at the client's second flight: no SYN, no hellos", 536, _midstream,
            tls_facts(first_byte=None, version=None, cipher=None, server_cert=None, requested=None), {},
        ),
        _tcp_case("tcp-duplicated", "every packet captured twice", 536, _duplicate, complete, {}),
    ]  # fmt: skip


# --- IP fragments: UDP SIP whose SDP (Lync style: audio and video, ICE candidates, SRTP keys) exceeds the MTU ------

EDGE_INT, EDGE_INT_V6 = "10.0.2.10", "fd00:2::10"
SDP_ENCRYPTION = "required"


def lync_sdp(rng: random.Random, ip: str, relay: str, audio: int, video: int) -> bytes:
    """An SDP as Lync 2013 sends it: RTP/AVP with a=crypto and a=encryption, MS-ICE2 candidates, two m= lines."""
    family = "IP6" if ":" in ip else "IP4"
    lines = ["v=0", f"o=- 0 0 IN {family} {ip}", "s=session", f"c=IN {family} {ip}", "b=CT:99980", "t=0 0"]
    lines += ["a=x-mediabw:main-video send=8100;recv=8100", "a=x-devicecaps:audio:send,recv;video:send,recv"]
    for kind, port, pts in (
        ("audio", audio, "117 104 114 9 112 111 0 8 116 115 4 97 13 118 101"),
        ("video", video, "122 121 123"),
    ):
        lines.append(f"m={kind} {port} RTP/AVP {pts}")
        lines.append(f"a=x-ssrc-range:{rng.randrange(1 << 31)}-{rng.randrange(1 << 31)}")
        lines.append("a=rtcp-fb:* x-message app send:dsh recv:dsh")
        lines.append(f"a=rtcp:{port + 1}")
        lines.append(f"a=ice-ufrag:{rng.randbytes(3).hex()}")
        lines.append(f"a=ice-pwd:{rng.randbytes(18).hex()}")
        for component, p in ((1, port), (2, port + 1)):
            lines.append(f"a=candidate:1 {component} UDP 2130706431 {ip} {p} typ host")
            lines.append(f"a=candidate:2 {component} TCP-PASS 174456318 {ip} {p + 20} typ host")
            lines.append(
                f"a=candidate:3 {component} UDP 16648703 {relay} {50000 + p % 1000} typ relay raddr {ip} rport {p}"
            )
            lines.append(
                f"a=candidate:4 {component} TCP-ACT 7076863 {relay} {50500 + p % 1000} typ relay raddr {ip} rport {p}"
            )
        for tag in (1, 2):
            key = rng.randbytes(30).hex()[:40]
            lines.append(f"a=cryptoscale:{tag} client AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:1")
            lines.append(f"a=crypto:{tag} AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:1")
        lines.append(f"a=encryption:{SDP_ENCRYPTION}")
        lines.append(f"a=label:main-{kind}")
        lines += ["a=rtpmap:117 G722/8000/2", "a=rtpmap:104 SILK/16000", "a=rtpmap:114 x-msrta/16000"]
        lines += ["a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(frozen=True)
class SipCall:
    """An INVITE with an offer and its 200 OK with an answer, between two hosts on UDP 5060."""

    caller: str
    callee: str
    invite: bytes
    ok: bytes
    offer_ports: tuple[int, ...]
    answer_ports: tuple[int, ...]


def sip_call(caller: str, callee: str, relay: str, seed: str) -> SipCall:
    """A Lync INVITE with its SDP offer and the 200 OK with the answer, both over UDP 5060; same seed, same bytes."""
    rng = random.Random(seed)
    dialog = sip.Dialog(
        rng,
        "UDP",
        (caller, SIP_UDP),
        (callee, SIP_UDP),
        "sip:fe01@contoso.com",
        "sip:+14255550123@contoso.com;user=phone",
    )
    invite = dialog.request("INVITE", lync_sdp(rng, caller, relay, 50010, 50020), in_dialog=False)
    ok = dialog.respond(invite, 200, "OK", lync_sdp(rng, callee, relay, 49160, 57510))
    return SipCall(caller, callee, invite, ok, (50010, 50020), (49160, 57510))


def fragments(datagram: bytes, size: int, overlap: int = 0) -> list[tuple[int, bytes]]:
    """(offset, bytes) pieces of an IP payload, `size` bytes each (a multiple of 8); overlap > 0 moves the
    second and later pieces back by that many bytes, the first `overlap` bytes of the second piece altered."""
    starts = [0, *range(size - overlap, len(datagram), size)]
    ends = [*starts[1:], len(datagram)]
    ends[0] = size  # the first piece keeps its full size, so the second overlaps it
    pieces = [(a, datagram[a:b]) for a, b in zip(starts, ends, strict=True)]
    if overlap:
        off, data = pieces[1]
        pieces[1] = (off, bytes(b ^ 0x20 for b in data[:overlap]) + data[overlap:])
    return pieces


def _ipv4_fragment(src: bytes, dst: bytes, ident: int, offset: int, more: bool, data: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(data),
        ident,
        (0x2000 if more else 0) | offset // 8,
        64,
        pk.IPPROTO_UDP,
        0,
        src,
        dst,
    )
    return header[:10] + struct.pack("!H", pk.checksum(header)) + header[12:] + data


def _ipv6_fragment(src: bytes, dst: bytes, ident: int, offset: int, more: bool, data: bytes) -> bytes:
    """IPv6 with a Fragment extension header (next header 44, RFC 8200 §4.5)."""
    frag = struct.pack("!BBHI", pk.IPPROTO_UDP, 0, offset | int(more), ident)
    return pk.ipv6(src, dst, 44, frag + data, hop_limit=64)


def fragmented_frames(src_h: str, dst_h: str, payload: bytes, ident: int, mode: str) -> list[bytes]:
    """One UDP datagram (5060 -> 5060) as IP fragments: in-order, reversed, overlap (16 bytes) or incomplete
    (the middle fragment lost). IPv4 at MTU 1500, IPv6 at its minimum MTU, 1280."""
    src, dst = pk.packed(src_h), pk.packed(dst_h)
    v6 = len(src) == 16
    datagram = pk.udp(src, dst, SIP_UDP, SIP_UDP, payload)
    size = 1280 - 40 - 8 if v6 else 1500 - 20
    pieces = fragments(datagram, size, overlap=16 if mode == "overlap" else 0)
    if len(pieces) < 3:
        raise ValueError("the SDP must need at least three fragments")
    build = _ipv6_fragment if v6 else _ipv4_fragment
    packets = [build(src, dst, ident, off, off + len(d) < len(datagram), d) for off, d in pieces]
    if mode == "reversed":
        packets.reverse()
    elif mode == "incomplete":
        del packets[1]
    elif mode not in ("in-order", "overlap"):
        raise ValueError(f"unknown fragment mode {mode!r}")
    ethertype = pk.ETH_IPV6 if v6 else pk.ETH_IPV4
    return [pk.ethernet(pk.mac_for(src_h), pk.mac_for(dst_h), ethertype, p) for p in packets]


def _sdp_facts(ports: Sequence[int]) -> Facts:
    return {
        "sip_plain": True,
        "sdp_protos": ["RTP/AVP"],
        "sdp_crypto": True,
        "sdp_encryption": SDP_ENCRYPTION,
        "sdp_media_ports": sorted(ports),
    }


def fragment_cases() -> list[Case]:
    """Front End -> Mediation SIP over UDP (R2: violation; R17: UDP 5060 is no documented server port), the
    INVITE and the 200 OK each IP-fragmented. Damage (overlap, a lost fragment) is done to the INVITE only:
    the INVITE is then dropped whole (RFC 5722) and the flow holds the 200 OK's answer alone."""
    cases = []
    findings = {"R2": "violation", "R17": "warning"}
    for version, caller, callee, relay in ((4, FE1, MEDIATION, EDGE_INT), (6, FE1_V6, MEDIATION_V6, EDGE_INT_V6)):
        call = sip_call(caller, callee, relay, f"netcond-sip-v{version}")
        for mode in ("in-order", "reversed", "overlap", "incomplete"):
            damaged = mode in ("overlap", "incomplete")
            frames = fragmented_frames(caller, callee, call.invite, 0x3A01, mode)
            frames += fragmented_frames(callee, caller, call.ok, 0x7B02, "in-order" if damaged else mode)
            ports = call.answer_ports if damaged else call.offer_ports + call.answer_ports
            flow = FlowExpect(
                caller,
                SIP_UDP,
                callee,
                SIP_UDP,
                "udp",
                {"app": "sip", **_sdp_facts(ports)},
                findings,
                oriented=not damaged,
            )
            # Wireshark reassembles overlapping fragments (flagging the overlap); it cannot rebuild a lost one.
            seen = call.answer_ports if mode == "incomplete" else call.offer_ports + call.answer_ports
            wireshark = {
                **_sdp_facts(seen),
                "sip_methods": [] if mode == "incomplete" else ["INVITE"],
                "overlap": mode == "overlap",
            }
            why = f"IPv{version} fragments {mode}"
            cases.append(Case(f"frag-v{version}-{mode}", why, tuple(frames), (flow,), wireshark))
    return cases


def all_cases() -> list[Case]:
    """Every network-condition case: TCP conditions, then IP fragments."""
    return tcp_cases() + fragment_cases()
