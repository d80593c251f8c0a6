"""Names a server certificate claims (subject CN and DNS SANs), parsed with `cryptography`, cached by digest."""

from __future__ import annotations

import hashlib
import warnings

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

# A Front End pool presents the same certificate in thousands of sessions: parse each distinct DER once.
CACHE_SIZE = 4096
_cache: dict[bytes, tuple[str, ...]] = {}


def looks_like_host(name: str) -> bool:
    """A CN is a host name only when it looks like one (CAs put 'Contoso Root CA' there)."""
    return "." in name and " " not in name and "@" not in name


def _parse(der: bytes) -> tuple[str, ...]:
    # The bytes come off the wire: damage anywhere in the DER means no names from that part, never an error.
    # cryptography raises more than ValueError for it (InvalidVersion, DuplicateExtension, ...), some of them
    # only when a field is first read.
    try:
        with warnings.catch_warnings():  # "serial number not positive" and the like: damage, said by the result
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
    except Exception:
        return ()
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [n for n in san.get_values_for_type(x509.DNSName) if isinstance(n, str)]
    except Exception:  # ExtensionNotFound, or a damaged extension block
        pass
    try:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except Exception:
        cns = []
    for attr in cns:
        value = attr.value if isinstance(attr.value, str) else attr.value.decode("utf-8", "replace")
        if looks_like_host(value):
            names.append(value)
    return tuple(dict.fromkeys(names))


def cert_names(der: bytes) -> tuple[str, ...]:
    """DNS SANs then the subject CN (when host-like), distinct, in certificate order; () for a bad DER."""
    key = hashlib.sha256(der).digest()
    hit = _cache.get(key)
    if hit is None:
        if len(_cache) >= CACHE_SIZE:
            _cache.pop(next(iter(_cache)))  # oldest first: dicts keep insertion order
        hit = _cache[key] = _parse(der)
    return hit
