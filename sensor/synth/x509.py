"""Hand-built DER X.509 v3 certificates (RSA-2048 shaped, random signature) with a subject CN and DNS SANs."""

from __future__ import annotations

import random
from dataclasses import dataclass

_OID_SHA256_RSA = "1.2.840.113549.1.1.11"
_OID_RSA = "1.2.840.113549.1.1.1"
_OID_CN = "2.5.4.3"
_OID_O = "2.5.4.10"
_OID_C = "2.5.4.6"
_OID_SAN = "2.5.29.17"
_OID_BASIC_CONSTRAINTS = "2.5.29.19"


def tlv(tag: int, value: bytes) -> bytes:
    """One DER type-length-value."""
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + value


def seq(*items: bytes) -> bytes:
    """A DER SEQUENCE of the encoded items."""
    return tlv(0x30, b"".join(items))


def oid(dotted: str) -> bytes:
    """A DER OBJECT IDENTIFIER from its dotted form."""
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


def integer(value: bytes) -> bytes:
    """A positive DER INTEGER from big-endian bytes (a leading zero keeps the sign bit clear)."""
    value = value.lstrip(b"\x00") or b"\x00"
    if value[0] & 0x80:
        value = b"\x00" + value
    return tlv(0x02, value)


def name(cn: str, org: str = "Contoso Ltd", country: str = "US") -> bytes:
    """An X.501 Name: C, O, CN."""
    rdns = (
        (_OID_C, tlv(0x13, country.encode())),
        (_OID_O, tlv(0x0C, org.encode())),
        (_OID_CN, tlv(0x0C, cn.encode())),
    )
    return seq(*(tlv(0x31, seq(oid(o), v)) for o, v in rdns))


@dataclass(frozen=True)
class Certificate:
    """A DER certificate and the identity facts a sensor may extract from it."""

    der: bytes
    subject_cn: str
    dns_names: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        """Subject CN and DNS SANs, distinct and sorted (the tls_cert_names column)."""
        return sorted({self.subject_cn, *self.dns_names})


def certificate(
    rng: random.Random,
    subject_cn: str,
    issuer_cn: str,
    dns_names: tuple[str, ...] = (),
    ca: bool = False,
    not_before: str = "260101000000Z",
    not_after: str = "280101000000Z",
) -> Certificate:
    """A v3 certificate with an RSA-2048 shaped key; the signature is random bytes (never verified here)."""
    algo = seq(oid(_OID_SHA256_RSA), tlv(0x05, b""))
    modulus = bytes([0x80 | rng.randrange(0x80)]) + rng.randbytes(255)
    rsa_key = seq(integer(modulus), integer(b"\x01\x00\x01"))
    spki = seq(seq(oid(_OID_RSA), tlv(0x05, b"")), tlv(0x03, b"\x00" + rsa_key))
    extensions = []
    if ca:
        # basicConstraints: critical, cA TRUE
        critical, ca_true = tlv(0x01, b"\xff"), tlv(0x04, seq(tlv(0x01, b"\xff")))
        extensions.append(seq(oid(_OID_BASIC_CONSTRAINTS), critical, ca_true))
    if dns_names:
        general_names = seq(*(tlv(0x82, d.encode()) for d in dns_names))
        extensions.append(seq(oid(_OID_SAN), tlv(0x04, general_names)))
    tbs_items = [
        tlv(0xA0, integer(b"\x02")),  # [0] EXPLICIT version v3
        integer(rng.randbytes(16)),
        algo,
        name(issuer_cn),
        seq(tlv(0x17, not_before.encode()), tlv(0x17, not_after.encode())),
        name(subject_cn),
        spki,
    ]
    if extensions:
        tbs_items.append(tlv(0xA3, seq(*extensions)))
    signature = tlv(0x03, b"\x00" + rng.randbytes(256))
    der = seq(seq(*tbs_items), algo, signature)
    return Certificate(der, subject_cn, tuple(dns_names))


def chain(rng: random.Random, subject_cn: str, dns_names: tuple[str, ...]) -> list[Certificate]:
    """Leaf, issuing CA and root, as a server sends them (leaf first)."""
    leaf = certificate(rng, subject_cn, "Contoso Issuing CA 01", dns_names)
    issuing = certificate(rng, "Contoso Issuing CA 01", "Contoso Root CA", ca=True)
    root = certificate(rng, "Contoso Root CA", "Contoso Root CA", ca=True)
    return [leaf, issuing, root]
