"""TLS/SSL wire messages: records and handshakes (SSL 3.0 .. TLS 1.3), SSLv2 records, MS-TURN pseudo-TLS."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

# Content types and handshake types (RFC 5246, RFC 8446).
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
CLIENT_HELLO, SERVER_HELLO, CERTIFICATE, SERVER_KEY_EXCHANGE = 1, 2, 11, 12
CERTIFICATE_REQUEST, SERVER_HELLO_DONE, CERTIFICATE_VERIFY, CLIENT_KEY_EXCHANGE, FINISHED = 13, 14, 15, 16, 20

SSL3, TLS10, TLS11, TLS12, TLS13 = 0x0300, 0x0301, 0x0302, 0x0303, 0x0304

# Extension types.
EXT_SERVER_NAME, EXT_SUPPORTED_GROUPS, EXT_EC_POINT_FORMATS, EXT_SIGNATURE_ALGORITHMS = 0, 10, 11, 13
EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE, EXT_RENEGOTIATION_INFO = 43, 51, 0xFF01

SECP256R1, X25519 = 0x0017, 0x001D
SIG_RSA_PKCS1_SHA256 = 0x0401
SIGNATURE_ALGORITHMS = (0x0804, 0x0401, 0x0501, 0x0601, 0x0403, 0x0201)

# What a Windows 8.1 / Server 2012 R2 Schannel client offers, strongest first ([CS81]).
SCHANNEL_SUITES = (
    0xC030,
    0xC02F,
    0xC028,
    0xC027,
    0xC014,
    0xC013,
    0x009F,
    0x009E,
    0x003D,
    0x003C,
    0x0035,
    0x002F,
)
TLS13_SUITES = (0x1301, 0x1302, 0x1303)

# SSLv2 cipher kinds (3 bytes).
SSL2_DES_192_EDE3_CBC_WITH_MD5 = 0x0700C0
SSL2_SUITES = (0x0700C0, 0x010080, 0x030080, 0x060040, 0x020080, 0x040080)
# The fifteen 3-byte codes a Lync client lists in its pseudo-TLS hello (SSLv2 kinds and TLS suites 0x00xxxx).
PSEUDO_TLS_SUITES = (
    0x000010, 0x010080, 0x030080, 0x070000, 0x0700C0, 0x060040, 0x020080, 0x040080,
    0x000004, 0x00FEFF, 0x00000A, 0x00FEFE, 0x000009, 0x000064, 0x000062,
)  # fmt: skip


def record(content_type: int, version: int, body: bytes) -> bytes:
    """One TLS record (no fragmentation: callers keep bodies under 2^14)."""
    return struct.pack("!BHH", content_type, version, len(body)) + body


def handshake(msg_type: int, body: bytes) -> bytes:
    """One handshake message: type, 24-bit length, body."""
    return struct.pack("!B", msg_type) + len(body).to_bytes(3, "big") + body


def _u8_vec(data: bytes) -> bytes:
    return struct.pack("!B", len(data)) + data


def _u16_vec(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _u24_vec(data: bytes) -> bytes:
    return len(data).to_bytes(3, "big") + data


def _u16s(values: Sequence[int]) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def extension(ext_type: int, data: bytes) -> bytes:
    """A TLS extension: type and length-prefixed data."""
    return struct.pack("!H", ext_type) + _u16_vec(data)


def sni(host: str) -> bytes:
    """server_name extension with one host_name entry."""
    entry = struct.pack("!B", 0) + _u16_vec(host.encode())
    return extension(EXT_SERVER_NAME, _u16_vec(entry))


def client_hello(
    rng: random.Random,
    version: int,
    suites: Sequence[int],
    server_name: str | None = None,
    session_id: bytes = b"",
    supported_versions: Sequence[int] = (),
    extensions: bool = True,
) -> bytes:
    """A ClientHello handshake message; supported_versions adds that extension (and a key_share if 1.3)."""
    exts = b""
    if extensions:
        if server_name:
            exts += sni(server_name)
        exts += extension(EXT_SUPPORTED_GROUPS, _u16_vec(_u16s((X25519, SECP256R1))))
        exts += extension(EXT_EC_POINT_FORMATS, _u8_vec(b"\x00"))
        if version >= TLS12:
            exts += extension(EXT_SIGNATURE_ALGORITHMS, _u16_vec(_u16s(SIGNATURE_ALGORITHMS)))
        if supported_versions:
            exts += extension(EXT_SUPPORTED_VERSIONS, _u8_vec(_u16s(supported_versions)))
            if TLS13 in supported_versions:
                share = struct.pack("!H", X25519) + _u16_vec(rng.randbytes(32))
                exts += extension(EXT_KEY_SHARE, _u16_vec(share))
        exts += extension(EXT_RENEGOTIATION_INFO, b"\x00")
    body = (
        struct.pack("!H", version)
        + rng.randbytes(32)
        + _u8_vec(session_id)
        + _u16_vec(_u16s(suites))
        + _u8_vec(b"\x00")
        + (_u16_vec(exts) if extensions else b"")
    )
    return handshake(CLIENT_HELLO, body)


def server_hello(
    rng: random.Random,
    version: int,
    suite: int,
    session_id: bytes,
    selected_version: int | None = None,
    extensions: bool = True,
) -> bytes:
    """A ServerHello; selected_version adds supported_versions (TLS 1.3 style, with a key_share)."""
    exts = b""
    if selected_version is not None:
        exts += extension(EXT_SUPPORTED_VERSIONS, struct.pack("!H", selected_version))
        exts += extension(EXT_KEY_SHARE, struct.pack("!H", X25519) + _u16_vec(rng.randbytes(32)))
    elif extensions:
        exts += extension(EXT_RENEGOTIATION_INFO, b"\x00")
        exts += extension(EXT_EC_POINT_FORMATS, _u8_vec(b"\x00"))
    body = struct.pack("!H", version) + rng.randbytes(32) + _u8_vec(session_id) + struct.pack("!HB", suite, 0)
    if exts:
        body += _u16_vec(exts)
    return handshake(SERVER_HELLO, body)


def certificate(ders: Sequence[bytes]) -> bytes:
    """A Certificate message (TLS 1.2 and earlier); an empty list is the 'no certificate' answer."""
    return handshake(CERTIFICATE, _u24_vec(b"".join(_u24_vec(d) for d in ders)))


def server_key_exchange_ecdhe(rng: random.Random, version: int) -> bytes:
    """ECDHE ServerKeyExchange on secp256r1, RSA-signed (TLS 1.2 adds the signature algorithm)."""
    params = struct.pack("!BH", 3, SECP256R1) + _u8_vec(b"\x04" + rng.randbytes(64))
    algorithm = struct.pack("!H", SIG_RSA_PKCS1_SHA256) if version >= TLS12 else b""
    sig = algorithm + _u16_vec(rng.randbytes(256))
    return handshake(SERVER_KEY_EXCHANGE, params + sig)


def certificate_request(version: int, authorities: Sequence[bytes]) -> bytes:
    """CertificateRequest: rsa_sign and ecdsa_sign, signature algorithms (1.2), acceptable CA names."""
    body = _u8_vec(bytes([1, 64]))
    if version >= TLS12:
        body += _u16_vec(_u16s(SIGNATURE_ALGORITHMS))
    body += _u16_vec(b"".join(_u16_vec(dn) for dn in authorities))
    return handshake(CERTIFICATE_REQUEST, body)


def server_hello_done() -> bytes:
    """A ServerHelloDone handshake message (empty body)."""
    return handshake(SERVER_HELLO_DONE, b"")


def client_key_exchange_ecdhe(rng: random.Random) -> bytes:
    """An ECDHE ClientKeyExchange: a random uncompressed P-256 point."""
    return handshake(CLIENT_KEY_EXCHANGE, _u8_vec(b"\x04" + rng.randbytes(64)))


def client_key_exchange_rsa(rng: random.Random, version: int) -> bytes:
    """RSA-encrypted premaster secret; SSL 3.0 sends it without the 2-byte length."""
    secret = rng.randbytes(256)
    return handshake(CLIENT_KEY_EXCHANGE, secret if version == SSL3 else _u16_vec(secret))


def certificate_verify(rng: random.Random, version: int) -> bytes:
    """A CertificateVerify with a random RSA signature (TLS 1.2 names the algorithm first)."""
    alg = struct.pack("!H", SIG_RSA_PKCS1_SHA256) if version >= TLS12 else b""
    return handshake(CERTIFICATE_VERIFY, alg + _u16_vec(rng.randbytes(256)))


def change_cipher_spec(version: int) -> bytes:
    """A ChangeCipherSpec record."""
    return record(CHANGE_CIPHER_SPEC, version, b"\x01")


def encrypted_finished(rng: random.Random, version: int, length: int = 40) -> bytes:
    """The Finished message after ChangeCipherSpec: encrypted, so random bytes in a handshake record."""
    return record(HANDSHAKE, version, rng.randbytes(length))


def application_data(rng: random.Random, version: int, length: int) -> bytes:
    """An application_data record of random (encrypted-looking) bytes."""
    return record(APPLICATION_DATA, version, rng.randbytes(length))


# SSLv2 (draft-hickman-netscape-ssl-00): 2-byte record header with the high bit set, no padding.
SSL2_CLIENT_HELLO, SSL2_CLIENT_MASTER_KEY, SSL2_SERVER_HELLO = 1, 2, 4


def ssl2_record(body: bytes) -> bytes:
    """An SSLv2 record: 2-byte header with the high bit set, no padding."""
    return struct.pack("!H", 0x8000 | len(body)) + body


def _kinds(codes: Sequence[int]) -> bytes:
    return b"".join(c.to_bytes(3, "big") for c in codes)


def ssl2_client_hello(rng: random.Random, version: int, kinds: Sequence[int], challenge: int = 16) -> bytes:
    """An SSLv2-format CLIENT-HELLO record (version 0x0002 for real SSLv2, 0x0301 for TLS-capable clients)."""
    specs = _kinds(kinds)
    head = struct.pack("!BHHHH", SSL2_CLIENT_HELLO, version, len(specs), 0, challenge)
    return ssl2_record(head + specs + rng.randbytes(challenge))


def ssl2_server_hello(rng: random.Random, cert_der: bytes, kinds: Sequence[int]) -> bytes:
    """SERVER-HELLO: no session hit, X.509 certificate, the cipher kinds the server accepts, connection id."""
    specs = _kinds(kinds)
    conn_id = rng.randbytes(16)
    head = struct.pack("!BBBHHHH", SSL2_SERVER_HELLO, 0, 1, 0x0002, len(cert_der), len(specs), len(conn_id))
    return ssl2_record(head + cert_der + specs + conn_id)


def ssl2_client_master_key(rng: random.Random, kind: int) -> bytes:
    """CLIENT-MASTER-KEY choosing one cipher kind (3DES: 8-byte IV as key argument)."""
    enc_key, key_arg = rng.randbytes(256), rng.randbytes(8)
    body = struct.pack("!B", SSL2_CLIENT_MASTER_KEY) + kind.to_bytes(3, "big")
    body += struct.pack("!HHH", 0, len(enc_key), len(key_arg)) + enc_key + key_arg
    return ssl2_record(body)


def ssl2_encrypted(rng: random.Random, length: int) -> bytes:
    """An encrypted SSLv2 record (MAC + data); lengths are multiples of 8 so no padding byte is needed."""
    return ssl2_record(rng.randbytes(length))


def pseudo_tls_client_hello(rng: random.Random) -> bytes:
    """MS-TURN pseudo-TLS hello as Lync sends it: SSLv2 format, version 0x0301 (80 46 01 03 01 ...)."""
    return ssl2_client_hello(rng, TLS10, PSEUDO_TLS_SUITES)


def pseudo_tls_server_hello(rng: random.Random, suite: int = 0x0004) -> bytes:
    """ServerHello + ServerHelloDone in one TLS 1.0 record, no Certificate ([MS-TURN] 2.1.1).

    A 28-byte session id makes the record 74 bytes long, so it starts 16 03 01 00 4a 02 00 00 42.
    """
    random_and_session = rng.randbytes(32) + _u8_vec(rng.randbytes(28))
    body = struct.pack("!H", TLS10) + random_and_session + struct.pack("!HB", suite, 0)
    return record(HANDSHAKE, TLS10, handshake(SERVER_HELLO, body) + server_hello_done())
