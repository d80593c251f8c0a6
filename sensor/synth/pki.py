"""Deterministic RSA keys and the site's certificate chain: root -> issuing CA -> Lync pool leaf, and a client leaf.

The keys' primes are drawn from a seeded generator and RSA PKCS#1 v1.5 signatures are deterministic, so every run
builds the same DER (about 6 KB for the server's chain) with `cryptography`.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

POOL = "pool01.contoso.com"

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


def certificate(
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
    root = certificate(root_cn, root_key, root_cn, root_key, 0x1001, ca=True)
    inter = certificate(inter_cn, inter_key, root_cn, root_key, 0x1002, ca=True)
    server = certificate(POOL, server_key, inter_cn, inter_key, 0x2001, ca=False, sans=POOL_SANS)
    client = certificate(
        "fe02.contoso.com", client_key, inter_cn, inter_key, 0x2002, ca=False, sans=("fe02.contoso.com",)
    )
    return Pki(root, inter, server, client, server_key, client_key)
