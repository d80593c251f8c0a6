"""Time the native fact parsers: µs per TLS handshake (both directions) and per SIP INVITE with SDP.

A real OpenSSL TLS 1.2 handshake with mutual authentication and a 3-certificate RSA chain is made
in-process over ssl.MemoryBIO, then parsed N times, as a Front End pool's sessions would be (the same
server certificate in every session, so the name cache is hit after the first).

    .venv/bin/python bench/bench_native_parsers.py [--sessions 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ssl
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sensor.facts import FlowFacts

SDP = (
    b"v=0\r\no=- 0 0 IN IP4 10.0.5.21\r\ns=session\r\nc=IN IP4 10.0.5.21\r\nt=0 0\r\n"
    b"m=audio 50020 RTP/SAVP 114 9 8 0 101\r\na=rtcp:50021\r\n"
    b"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5|2^31|1:1\r\n"
    b"a=encryption:required\r\n" + b"a=candidate:1 1 UDP 2130706431 10.0.5.21 50020 typ host\r\n" * 12
)
INVITE = (
    b"INVITE sip:bob@contoso.com;transport=tls SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.5.21:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@contoso.com>;tag=1\r\nTo: <sip:bob@contoso.com>\r\nCall-ID: 6a1b2c3d4e5f\r\n"
    b"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % len(SDP)
) + SDP


def _chain(d: Path) -> tuple[Path, Path, Path]:
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    names = ["Contoso Root CA", "Contoso Issuing CA", "pool01.contoso.com"]
    now = dt.datetime.now(dt.UTC)
    certs = []
    for i, name in enumerate(names):
        signer = keys[max(i - 1, 0)]
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[max(i - 1, 0)])]))
            .public_key(keys[i].public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=i < 2, path_length=None), critical=True)
        )
        if i == 2:
            sans = [x509.DNSName(n) for n in ("pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com")]
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        certs.append(b.sign(signer, hashes.SHA256()))
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
    (d / "ca.pem").write_bytes(pem[0])
    (d / "chain.pem").write_bytes(pem[2] + pem[1])
    (d / "key.pem").write_bytes(
        keys[2].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return d / "ca.pem", d / "chain.pem", d / "key.pem"


def handshake() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        ca, chain, key = _chain(Path(tmp))
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.maximum_version = ssl.TLSVersion.TLSv1_2
        sctx.load_cert_chain(chain, key)
        sctx.verify_mode = ssl.CERT_REQUIRED
        sctx.load_verify_locations(ca)
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(ca)
        cctx.load_cert_chain(chain, key)
        bios = [ssl.MemoryBIO() for _ in range(4)]
        c = cctx.wrap_bio(bios[0], bios[1], server_hostname="pool01.contoso.com")
        s = sctx.wrap_bio(bios[2], bios[3], server_side=True)
        cw, sw = bytearray(), bytearray()
        for _ in range(10):
            for end in (c, s):
                with contextlib.suppress(ssl.SSLWantReadError):
                    end.do_handshake()
            data = bios[1].read()
            cw += data
            bios[2].write(data)
            data = bios[3].read()
            sw += data
            bios[0].write(data)
        return bytes(cw), bytes(sw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20_000)
    args = ap.parse_args()
    client, server = handshake()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.sessions):
        ff = FlowFacts()
        ff.observe_streams(
            client,
            server,
            client_from_start=True,
            server_from_start=True,
            client_complete=True,
            server_complete=True,
            ts_ns=0,
        )
    tls_s, tls_cpu = time.perf_counter() - t0, time.process_time() - c0
    cols = ff.tls.columns()
    assert cols["tls_client_cert"] is True and cols["tls_cert_names"], cols
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.sessions):
        ff = FlowFacts()
        ff.observe_datagram(INVITE, 0, 0)
    sip_s, sip_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert ff.sip.media and ff.sip.media[0].crypto
    print(f"TLS 1.2 mutual-auth handshake ({len(client)} + {len(server)} bytes, 3-certificate chain):")
    n = args.sessions
    print(f"  {n} sessions: {tls_s:.3f} s wall, {tls_cpu:.3f} s CPU = {tls_cpu / n * 1e6:.1f} µs CPU per handshake")
    print(f"SIP INVITE with SDP ({len(INVITE)} bytes, one UDP datagram):")
    print(f"  {n} messages: {sip_s:.3f} s wall, {sip_cpu:.3f} s CPU = {sip_cpu / n * 1e6:.1f} µs CPU per message")
    print("(CPU time is the honest figure on a shared machine; wall time includes waiting for a core)")


if __name__ == "__main__":
    main()
