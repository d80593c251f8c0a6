"""Native TLS fact parsers on real bytes: OpenSSL handshakes made in-process over ssl.MemoryBIO (the SIP, SDP,
HTTP, STUN, DTLS and SSLv2 cases cut from the shared captures by tshark are in tests/system)."""

from __future__ import annotations

import datetime as dt
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sensor.facts import FlowFacts
from sensor.facts.tls import parse_streams
from sensor.facts.tls_facts import TlsFacts
from sensor.facts.x509names import cert_names
from sensor.fastpath import tls_scan

# ---- certificates and handshakes -----------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_chain: Path  # leaf, intermediate
    server_key: Path
    client_chain: Path
    client_key: Path
    leaf_der: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey, *, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        sans = [x509.DNSName(subject), x509.DNSName("fe01.contoso.com"), x509.DNSName("fe02.contoso.com")]
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    root_k, mid_k, srv_k, cli_k = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root = _cert("Contoso Root CA", "Contoso Root CA", root_k, root_k, ca=True)
    mid = _cert("issuing.contoso.com", "Contoso Root CA", mid_k, root_k, ca=True)
    srv = _cert("pool01.contoso.com", "issuing.contoso.com", srv_k, mid_k, ca=False)
    cli = _cert("fe03.contoso.com", "issuing.contoso.com", cli_k, mid_k, ca=False)

    def pem(*certs: x509.Certificate) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    files = {
        "ca.pem": pem(root),
        "server.pem": pem(srv, mid),
        "server.key": key(srv_k),
        "client.pem": pem(cli, mid),
        "client.key": key(cli_k),
    }
    for n, data in files.items():
        (d / n).write_bytes(data)
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        srv.public_bytes(serialization.Encoding.DER),
    )


def server_ctx(pki: Pki, *, version: ssl.TLSVersion, verify: ssl.VerifyMode = ssl.CERT_NONE) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = version
    ctx.load_cert_chain(pki.server_chain, pki.server_key)
    ctx.verify_mode = verify
    if verify != ssl.CERT_NONE:
        ctx.load_verify_locations(pki.ca)
    return ctx


def client_ctx(pki: Pki, *, cert: bool = False, max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = max_version
    ctx.load_verify_locations(pki.ca)
    if cert:
        ctx.load_cert_chain(pki.client_chain, pki.client_key)
    return ctx


@dataclass
class Wire:
    client: bytes
    server: bytes
    session: ssl.SSLSession | None
    error: str | None


def handshake(
    cctx: ssl.SSLContext, sctx: ssl.SSLContext, sni: str = "pool01.contoso.com", session: ssl.SSLSession | None = None
) -> Wire:
    """A real OpenSSL handshake between two in-memory ends, one application record each way; every byte
    each side wrote, in order."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = cctx.wrap_bio(c_in, c_out, server_hostname=sni, session=session)
    s = sctx.wrap_bio(s_in, s_out, server_side=True)
    cw, sw = bytearray(), bytearray()
    error = None

    def pump() -> None:
        data = c_out.read()
        cw.extend(data)
        s_in.write(data)
        data = s_out.read()
        sw.extend(data)
        c_in.write(data)

    done = [False, False]
    for _ in range(30):
        for i, end in enumerate((c, s)):
            if done[i]:
                continue
            try:
                end.do_handshake()
                done[i] = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLError as exc:
                error = exc.reason
                done = [True, True]
        pump()
        if all(done):
            break
    if error is None:
        c.write(b"GET / HTTP/1.1\r\n\r\n")
        pump()
        s.read(100)
        s.write(b"HTTP/1.1 200 OK\r\n\r\n")
        pump()
        c.read(100)
        pump()
    pump()
    return Wire(bytes(cw), bytes(sw), c.session if error is None else None, error)


def facts(w: Wire, *, client: bytes | None = None, server: bytes | None = None) -> dict[str, object]:
    ff = FlowFacts()
    cb = w.client if client is None else client
    sb = w.server if server is None else server
    ff.observe_streams(
        cb,
        sb,
        client_from_start=True,
        server_from_start=True,
        client_complete=client is None,
        server_complete=server is None,
        ts_ns=1,
    )
    assert ff.tls.seen
    return ff.tls.columns()


def records(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        n = struct.unpack_from("!H", data, pos + 3)[0]
        out.append((data[pos], data[pos : pos + 5 + n]))
        pos += 5 + n
    return out


def refragment(data: bytes, size: int) -> bytes:
    """The same bytes with every plaintext handshake record cut into records of at most `size` bytes, so
    handshake messages span records (RFC 5246 §6.2.1); stops at ChangeCipherSpec."""
    out = bytearray()
    clear = True
    for ct, rec in records(data):
        if ct == 20:
            clear = False
        if ct != 22 or not clear:
            out += rec
            continue
        body = rec[5:]
        for i in range(0, len(body), size):
            part = body[i : i + size]
            out += rec[:3] + struct.pack("!H", len(part)) + part
    return bytes(out)


TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


def test_tls12_without_client_certificate(pki: Pki) -> None:
    w = handshake(client_ctx(pki), server_ctx(pki, version=TLS12))
    assert w.error is None
    cols = facts(w)
    assert cols["tls_version"] == "TLSv12"
    assert cols["tls_record_version"] == "TLSv10"  # OpenSSL's first ClientHello record
    assert cols["tls_client_version"] == "TLSv12"
    assert cols["tls_client_max_version"] == "TLSv13"  # supported_versions offers 1.3
    assert cols["tls_cipher"] == "0xC02C"  # ECDHE-ECDSA-AES256-GCM-SHA384, OpenSSL's first choice
    assert cols["tls_sni"] == "pool01.contoso.com"
    assert cols["tls_server_cert"] is True
    assert cols["tls_cert_requested"] is False  # ServerHelloDone seen without CertificateRequest
    assert cols["tls_client_cert"] is None
    assert cols["tls_resumed"] is False
    assert cols["tls_sslv2_hello"] is False
    assert cols["tls_pseudo"] is False
    assert cols["tls_alert"] is None
    assert cols["tls_cert_names"] == ["pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com"]
    tls, _, _ = parse_streams(w.client, w.server)
    assert tls.server_types == [2, 11, 12, 14, 4]  # ..., ServerHelloDone, NewSessionTicket
    assert tls.client_types == [1, 16]
    assert tls.client_ccs and tls.server_ccs and tls.client_app_data and tls.server_app_data
    assert tls.server_certs is not None and tls.server_certs > 0


def test_tls12_mutual_authentication(pki: Pki) -> None:
    w = handshake(client_ctx(pki, cert=True), server_ctx(pki, version=TLS12, verify=ssl.CERT_REQUIRED))
    assert w.error is None
    cols = facts(w)
    assert cols["tls_cert_requested"] is True
    assert cols["tls_client_cert"] is True
    # the client's own certificate names are not the server's
    assert cols["tls_cert_names"] == ["pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com"]
    tls, _, _ = parse_streams(w.client, w.server)
    assert tls.server_types == [2, 11, 12, 13, 14, 4]
    assert tls.client_types == [1, 11, 16, 15]


def test_certificate_request_answered_by_empty_certificate(pki: Pki) -> None:
    w = handshake(client_ctx(pki), server_ctx(pki, version=TLS12, verify=ssl.CERT_OPTIONAL))
    assert w.error is None
    cols = facts(w)
    assert cols["tls_cert_requested"] is True
    assert cols["tls_client_cert"] is False
    tls, _, _ = parse_streams(w.client, w.server)
    assert tls.client_certs == 0


def test_required_certificate_missing_ends_in_plaintext_alert(pki: Pki) -> None:
    w = handshake(client_ctx(pki), server_ctx(pki, version=TLS12, verify=ssl.CERT_REQUIRED))
    assert w.error is not None
    cols = facts(w)
    assert cols["tls_cert_requested"] is True
    assert cols["tls_client_cert"] is False
    assert cols["tls_alert"] == "40"  # handshake_failure, as tls.alert_message.desc gives it


def test_handshake_messages_spanning_records_and_a_cut_server_flight(pki: Pki) -> None:
    w = handshake(client_ctx(pki, cert=True), server_ctx(pki, version=TLS12, verify=ssl.CERT_REQUIRED))
    whole = facts(w)
    small = refragment(w.server, 64)
    assert len(records(small)) > 20
    assert facts(w, client=refragment(w.client, 50), server=small) == whole
    # The server's bytes end inside its Certificate message: nothing after it is known.
    cert_at = w.server.index(b"\x0b\x00", 5)
    cut = facts(w, server=w.server[: cert_at + 200])
    assert cut["tls_version"] == "TLSv12" and cut["tls_cipher"] == whole["tls_cipher"]
    assert cut["tls_server_cert"] is None
    assert cut["tls_cert_requested"] is None
    assert cut["tls_cert_names"] is None
    # Ends before ServerHelloDone, after the Certificate: the certificate is known, the request is not.
    shd_at = w.server.index(b"\x0e\x00\x00\x00")
    before_done = refragment(w.server, 64)
    before_done = before_done[: before_done.index(b"\x0d\x00")]  # cut where the CertificateRequest starts
    cut2 = facts(w, server=before_done)
    assert shd_at > 0
    assert cut2["tls_server_cert"] is True
    assert cut2["tls_cert_requested"] is None
    assert cut2["tls_client_cert"] is True  # the client's Certificate message is in its bytes


def test_picked_up_mid_stream_after_the_hellos(pki: Pki) -> None:
    """Bytes that begin at a later record: what came before them is unknown, not absent."""
    w = handshake(client_ctx(pki), server_ctx(pki, version=TLS12, verify=ssl.CERT_OPTIONAL))
    s_recs, c_recs = records(w.server), records(w.client)
    assert [r[5] for _, r in c_recs[:3]] == [1, 11, 16]  # ClientHello, empty Certificate, ClientKeyExchange
    ff = FlowFacts()
    ff.observe_streams(
        b"".join(r for _, r in c_recs[2:]),  # from the ClientKeyExchange on: the empty Certificate is missed
        b"".join(r for _, r in s_recs[1:]),  # from the record after the ServerHello
        client_from_start=False,
        server_from_start=False,
        client_complete=True,
        server_complete=True,
        ts_ns=0,
    )
    cols = ff.tls.columns()
    assert ff.tls.seen and cols["tls_version"] is None
    assert cols["tls_resumed"] is None and cols["tls_sslv2_hello"] is None
    assert cols["tls_cert_requested"] is True
    assert cols["tls_client_cert"] is None  # not False: its Certificate may be in the bytes not seen


def test_no_client_bytes_means_no_client_facts(pki: Pki) -> None:
    w = handshake(client_ctx(pki), server_ctx(pki, version=TLS12))
    cols = facts(w, client=b"")
    assert cols["tls_sslv2_hello"] is None and cols["tls_sni"] is None and cols["tls_client_max_version"] is None
    assert cols["tls_version"] == "TLSv12" and cols["tls_cert_requested"] is False


def test_tls13_hides_certificates(pki: Pki) -> None:
    w = handshake(client_ctx(pki, cert=True), server_ctx(pki, version=TLS13, verify=ssl.CERT_REQUIRED))
    assert w.error is None
    cols = facts(w)
    assert cols["tls_version"] == "TLSv13"
    assert cols["tls_cipher"] == "0x1302"  # TLS_AES_256_GCM_SHA384
    assert cols["tls_client_version"] == "TLSv12"  # legacy_version
    assert cols["tls_client_max_version"] == "TLSv13"
    assert cols["tls_cert_requested"] is None  # encrypted in 1.3: unknown, not false
    assert cols["tls_client_cert"] is None
    assert cols["tls_server_cert"] is None
    assert cols["tls_cert_names"] is None
    assert cols["tls_resumed"] is False  # the echoed session id is middlebox compatibility, not resumption
    tls, _, _ = parse_streams(w.client, w.server)
    assert tls.server_types == [2] and tls.client_types == [1]
    assert not tls.hello_retry


def test_tls12_resumption(pki: Pki) -> None:
    sctx = server_ctx(pki, version=TLS12)
    cctx = client_ctx(pki, max_version=TLS12)
    first = handshake(cctx, sctx)
    assert first.session is not None
    again = handshake(cctx, sctx, session=first.session)
    cols = facts(again)
    assert cols["tls_resumed"] is True
    assert cols["tls_server_cert"] is False  # the flight ended in ChangeCipherSpec without a Certificate
    assert cols["tls_cert_requested"] is False
    assert cols["tls_client_cert"] is None
    assert cols["tls_client_max_version"] == "TLSv12"
    assert facts(first)["tls_resumed"] is False


def test_reparse_with_longer_bytes_does_not_double_count(pki: Pki) -> None:
    w = handshake(client_ctx(pki), server_ctx(pki, version=TLS12))
    ff = FlowFacts()
    for n in (100, 2000, len(w.server)):
        ff.observe_streams(
            w.client,
            w.server[:n],
            client_from_start=True,
            server_from_start=True,
            client_complete=True,
            server_complete=n == len(w.server),
            ts_ns=n,
        )
    tls, _, _ = parse_streams(w.client, w.server)
    assert ff.tls.server_types == tls.server_types and ff.tls.client_types == tls.client_types
    assert ff.tls.cert_names == ["pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com"]


def test_certificate_names_are_parsed_once_per_certificate(pki: Pki) -> None:
    from sensor.facts import x509names

    x509names._cache.clear()
    assert cert_names(pki.leaf_der) == ("pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com")
    assert len(x509names._cache) == 1
    assert cert_names(bytes(pki.leaf_der)) is cert_names(pki.leaf_der)
    assert cert_names(b"\x30\x03\x02\x01\x00") == ()  # not a certificate: no names, no exception
    # a damaged version field (cryptography raises InvalidVersion, not ValueError): no names, no exception
    at = pki.leaf_der.index(b"\xa0\x03\x02\x01\x02")
    damaged = pki.leaf_der[: at + 4] + b"\x43" + pki.leaf_der[at + 5 :]
    assert cert_names(damaged) == ()


def test_tls13_hello_retry_request(pki: Pki) -> None:
    """A server that accepts only P-384 makes OpenSSL's client (x25519 key share first) retry."""
    sctx = server_ctx(pki, version=TLS13)
    sctx.set_ecdh_curve("secp384r1")
    w = handshake(client_ctx(pki), sctx)
    assert w.error is None
    tls, _, _ = parse_streams(w.client, w.server)
    assert tls.hello_retry
    assert tls.client_types == [1, 1]  # the second ClientHello after the retry request, in clear
    assert tls.server_types == [2, 2]  # HelloRetryRequest, then the real ServerHello
    cols = facts(w)
    assert cols["tls_version"] == "TLSv13" and cols["tls_cipher"] == "0x1302"
    assert cols["tls_sni"] == "pool01.contoso.com" and cols["tls_cert_requested"] is None


# ---- the compiled TLS scanner (sensor.fastpath.tls_scan) against the Python parser --------------------------


def scan(client: bytes, server: bytes) -> TlsFacts | None:
    """The compiled scanner over one flow's two directions, as the packet path calls it; None where it hands
    the flow back to the Python parser."""
    data = client + server
    meta = np.array([[0, len(client), 0, 0, 0, 0], [len(client), len(server), 0, 0, 0, 0]], np.int64)
    rows = np.empty((2, tls_scan.NT), np.int64)
    types = np.empty((2, tls_scan.MAX_TYPES), np.int64)
    tls_scan.scan_groups(np.frombuffer(data, np.uint8).copy(), meta, np.array([0, 1]), rows, types)
    c, s = rows.tolist()
    status = (c[tls_scan.T_STATUS], s[tls_scan.T_STATUS])
    if tls_scan.FALLBACK in status or tls_scan.HANDLED not in status:
        return None
    return tls_scan.facts_from(
        data, c, types[0, : c[tls_scan.T_NTYPES]].tolist(), s, types[1, : s[tls_scan.T_NTYPES]].tolist()
    )


def cuts(data: bytes) -> list[int]:
    """Where to cut a direction's bytes: around every record boundary and every 37 bytes, and the ends."""
    at = {0, len(data)} | set(range(0, len(data), 37))
    pos = 0
    while pos + 5 <= len(data):
        for d in (-1, 0, 1, 4, 5, 6, 9, 40):
            at.add(min(len(data), max(0, pos + d)))
        pos += 5 + struct.unpack_from("!H", data, pos + 3)[0]
    return sorted(at)


def assert_scanner_agrees(client: bytes, server: bytes) -> int:
    """Every cut of either direction: the scanner gives parse_streams' facts exactly, or hands the flow back.
    Returns how many cuts the scanner took itself."""
    taken = 0
    pairs = [(client[:i], server) for i in cuts(client)] + [(client, server[:i]) for i in cuts(server)]
    for c, s in pairs:
        got = scan(c, s)
        if got is not None:
            assert got == parse_streams(c, s)[0], (len(c), len(s))
            taken += 1
    return taken


def test_scanner_takes_plain_handshakes_and_gives_the_python_parsers_facts(pki: Pki) -> None:
    cases = [
        handshake(client_ctx(pki), server_ctx(pki, version=TLS12)),
        handshake(client_ctx(pki, cert=True), server_ctx(pki, version=TLS12, verify=ssl.CERT_REQUIRED)),
        handshake(client_ctx(pki), server_ctx(pki, version=TLS12, verify=ssl.CERT_OPTIONAL)),
        handshake(client_ctx(pki), server_ctx(pki, version=TLS12, verify=ssl.CERT_REQUIRED)),  # alert 40
        handshake(client_ctx(pki), server_ctx(pki, version=TLS13)),
        handshake(client_ctx(pki, cert=True), server_ctx(pki, version=TLS13, verify=ssl.CERT_REQUIRED)),
    ]
    sctx, cctx = server_ctx(pki, version=TLS12), client_ctx(pki, max_version=TLS12)
    first = handshake(cctx, sctx)
    cases += [first, handshake(cctx, sctx, session=first.session)]  # resumption
    for w in cases:
        whole = scan(w.client, w.server)
        assert whole is not None  # the common case is the compiled one
        assert whole == parse_streams(w.client, w.server)[0]
        assert assert_scanner_agrees(w.client, w.server) > 10


def test_scanner_hands_back_what_only_the_python_parser_reads(pki: Pki) -> None:
    w = handshake(client_ctx(pki, cert=True), server_ctx(pki, version=TLS12, verify=ssl.CERT_REQUIRED))
    # handshake messages spanning records
    assert scan(refragment(w.client, 50), refragment(w.server, 64)) is None
    assert_scanner_agrees(refragment(w.client, 50), refragment(w.server, 64))
    # a HelloRetryRequest
    sctx = server_ctx(pki, version=TLS13)
    sctx.set_ecdh_curve("secp384r1")
    hrr = handshake(client_ctx(pki), sctx)
    assert scan(hrr.client, hrr.server) is None
    assert_scanner_agrees(hrr.client, hrr.server)
    # an SSLv2-format ClientHello, and bytes that are no TLS at all
    v2 = bytes.fromhex("801c01000300030000001000000500000401008000") + bytes(16)
    assert scan(v2, b"") is None
    assert scan(b"OPTIONS sip:a SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n") is None


def test_records_are_the_same_with_and_without_the_scanner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shared capture with TLS, end to end: the flow records the packet path writes with the compiled
    scanner equal the ones from the Python parser alone (the scanner forced to hand every flow back)."""
    from sensor.analyze import Analyzer
    from tests.conftest import capture, default_config

    def analyse(path: Path) -> pa.Table:  # not conftest's analyse, which caches a capture's first analysis
        return Analyzer(default_config()).run([path]).table

    names = [
        "zeek__tls1.2.pcap",
        "zeek__tls1_1.pcap",
        "zeek__client-certificate.pcap",
        "zeek__certificate-request-failed.pcap",
        "zeek__ssl-v2.pcap",
        "arkime__openssl-ssl3.pcap",
        "ndpi__tls_1.3_unidirectional_server.pcapng",
        "heplify__sip_ipv4_tcp.pcap",
    ]
    paths = [capture(n) for n in names]
    compiled = tls_scan.scan_groups
    taken = []

    def counted(d, meta, gdir, rows, types):  # type: ignore[no-untyped-def]
        compiled(d, meta, gdir, rows, types)
        taken.append(int((rows[:, tls_scan.T_STATUS] == tls_scan.HANDLED).sum()))

    monkeypatch.setattr(tls_scan, "scan_groups", counted)
    fast = [analyse(p) for p in paths]
    assert sum(taken) >= 10  # the compiled scanner did read these captures' handshakes

    def hand_back(d, meta, gdir, rows, types):  # type: ignore[no-untyped-def]
        compiled(d, meta, gdir, rows, types)
        rows[:, tls_scan.T_STATUS] = tls_scan.FALLBACK

    monkeypatch.setattr(tls_scan, "scan_groups", hand_back)
    slow = [analyse(p) for p in paths]
    for name, a, b in zip(names, fast, slow, strict=True):
        assert a.num_rows > 0 and a.equals(b), name


def test_scanner_agrees_on_damaged_handshakes(pki: Pki) -> None:
    """Bytes flipped anywhere (record and message lengths, extension blocks, versions): the compiled scanner
    reads no byte outside a direction and gives the Python parser's facts, or hands the flow back."""
    rng = np.random.default_rng(9)
    wires = [
        handshake(client_ctx(pki, cert=True), server_ctx(pki, version=TLS12, verify=ssl.CERT_REQUIRED)),
        handshake(client_ctx(pki), server_ctx(pki, version=TLS13)),
    ]
    compared = 0
    for w in wires:
        for _ in range(400):
            c, s = bytearray(w.client), bytearray(w.server)
            for _ in range(int(rng.integers(1, 4))):
                target = c if rng.random() < 0.5 else s
                # most damage near the start, where the records and hellos are
                at = int(min(len(target) - 1, rng.exponential(300)))
                target[at] = int(rng.integers(0, 256))
            got = scan(bytes(c), bytes(s))
            if got is not None:
                assert got == parse_streams(bytes(c), bytes(s))[0]
                compared += 1
    assert compared > 200
